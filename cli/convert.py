"""`eventformer convert`: any event format to .npy or the HDF5 event file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .common import (err, progress_bar)
from .errors import fail, user_errors


@user_errors
def convert(
    input_path: Path = typer.Argument(..., metavar="IN", help="Event recording in any readable "
                                                               "format (detected from its bytes)."),
    output: Path = typer.Argument(..., metavar="OUT", help="File to write: .npy (structured t, x, "
                                                           "y, p) or .h5/.hdf5 (eventformer HDF5 "
                                                           "event file), by extension."),
    start: Optional[int] = typer.Option(None, "--start", help="Keep only events with t >= START "
                                                              "(microseconds)."),
    end: Optional[int] = typer.Option(None, "--end", help="Keep only events with t < END "
                                                          "(microseconds)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
):
    """Convert an event recording to .npy or eventformer's HDF5 event file, exactly.

    Same events in the same order, optionally cut to [--start, --end) microseconds."""
    import numpy as np

    from eventformer.events import EventFileError, EventStream, detect_reader, write_npy
    from eventformer.events.h5events import EventFileWriter
    from eventformer.events.readers import CHUNK_BYTES, no_events

    out_format = {".npy": "npy", ".h5": "h5", ".hdf5": "h5"}.get(output.suffix.lower())
    if out_format is None:
        fail(f"{output}: unknown output format {output.suffix or '(no extension)'!r}; "
             "OUT must end in .npy, .h5 or .hdf5")
    if start is not None and end is not None and end <= start:
        fail(f"--end ({end}) must be greater than --start ({start})")
    if not input_path.exists():
        fail(f"{input_path}: no such file")
    if output.exists():
        if os.path.samefile(input_path, output):
            fail(f"{output}: is the input file; refusing to overwrite it")
        if output.is_dir():
            fail(f"{output}: is a directory")
        if not force:
            fail(f"{output}: already exists; pass --force to overwrite it")
    folder = output.parent
    if not folder.is_dir():
        fail(f"{output}: cannot be written (folder {folder} does not exist)")
    if not os.access(folder, os.W_OK):
        fail(f"{output}: cannot be written (permission denied)")

    def in_range(events):
        if start is None and end is None:
            return events
        t = events["t"]
        keep = np.ones(len(t), dtype=bool)
        if start is not None:
            keep &= t >= start
        if end is not None:
            keep &= t < end
        return events[keep]

    # written beside OUT, then renamed over it: a failed conversion leaves OUT as it was
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    writer, parts, count, warnings = None, [], 0, []
    try:
        with EventStream(input_path) as stream, progress_bar(err.is_terminal) as progress:
            task = progress.add_task("converting", total=stream.total) if progress else None

            def keep(events):
                nonlocal writer, count
                events = in_range(events)
                if not len(events):
                    return
                count += len(events)
                if out_format == "npy":
                    parts.append(events)
                    return
                if writer is None:  # events follow the header: the sensor size is known by now
                    writer = EventFileWriter(partial, *(stream.sensor_size or (None, None)),
                                             source=f"converted from {input_path.name} "
                                                    f"({stream.format})")
                writer.append(events)  # HDF5 output: memory holds one chunk at a time

            while True:
                before = stream.offset
                keep(stream.read(CHUNK_BYTES))
                if progress:
                    progress.update(task, completed=stream.offset, total=stream.total)
                if stream.offset == before:
                    break
            in_format = stream.format
            leftover = stream.finish()
            if not leftover.header_complete:
                raise EventFileError(f"{input_path}: truncated inside its {in_format} header "
                                     f"({leftover.torn_bytes} bytes and no end of header)")
            keep(leftover.events)
            warnings = stream.warnings + ([leftover.message] if leftover.message else [])
            sensor_size = stream.sensor_size
        if in_format is None:  # an empty file: name it as `read_events` would
            in_format = detect_reader(input_path).name
        if out_format == "npy":
            write_npy(partial, np.concatenate(parts) if parts else no_events())
        elif writer is None:
            EventFileWriter(partial, *(sensor_size or (None, None)),
                            source=f"converted from {input_path.name} ({in_format})").close()
        else:
            writer.close()
        os.replace(partial, output)
    finally:
        if writer is not None:
            writer.close()
        if partial.exists():
            partial.unlink()
    for w in warnings:
        err.print(f"warning: {input_path}: {w}", markup=False, highlight=False)
    err.print(f"converted {count} events (format {in_format} -> {out_format})", markup=False,
              highlight=False)
