"""Convert a recording in any readable format to ``.npy`` or eventformer's HDF5 event file.

The library side of ``eventformer convert``: the file is read through `EventStream.chunks` (the
same incremental decoding every reader path uses, one chunk in memory at a time for HDF5 output),
optionally cut to a time window ``[start, end)`` and cropped / resized (`SpatialTransform`), and
written beside the output under a temporary name that is renamed over it only when everything
succeeded: a failed conversion leaves an existing output as it was and nothing behind.

Without a window or a transform the output holds exactly the input's events in the input's order.
A window or crop that keeps none of a recording's events is refused (nothing is written): an empty
output would pass for a conversion. Where a crop or scaling needs the sensor size and the file
records none, a well-known sensor holding every event is assumed (one more pass over the file to
find the events' extent) and said, as `eventformer.inference.spatial_plan` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eventformer.errors import EventformerError
from eventformer.events import readers
from eventformer.events.readers import EventFileError, EventStream, no_events, write_npy
from eventformer.events.sensors import Assumption, assume_sensor, extent
from eventformer.events.transforms import SpatialPlan, SpatialTransform

__all__ = ["OUTPUT_FORMATS", "ConversionSummary", "convert_file"]

#: Output formats by file extension.
OUTPUT_FORMATS = {".npy": "npy", ".h5": "h5", ".hdf5": "h5"}


@dataclass
class ConversionSummary:
    """What `convert_file` did. ``events_read`` counts the input's events, ``events_written`` the
    output's; ``sensor_size`` is the output's (cropped / scaled) sensor size when known;
    ``spatial`` describes the crop / resize (None without one); ``warnings`` holds one sentence
    each (reader oddities, a sensor size assumed)."""

    input: str
    output: str
    in_format: str
    out_format: str
    events_read: int = 0
    events_written: int = 0
    sensor_size: tuple[int, int] | None = None
    spatial: str | None = None
    warnings: list[str] = field(default_factory=list)
    t_first: int | None = None
    t_last: int | None = None


def _bound(value: int | None, missing: str) -> str:
    return missing if value is None else str(value)


def _check_paths(input_path: Path, output: Path, force: bool) -> str:
    out_format = OUTPUT_FORMATS.get(output.suffix.lower())
    if out_format is None:
        raise EventformerError(f"{output}: unknown output format {output.suffix or '(no extension)'!r}; "
                               "OUT must end in .npy, .h5 or .hdf5")
    if not input_path.exists():
        raise EventFileError(f"{input_path}: no such file")
    if output.exists():
        if os.path.samefile(input_path, output):
            raise EventformerError(f"{output}: is the input file; refusing to overwrite it")
        if output.is_dir():
            raise EventformerError(f"{output}: is a directory")
        if not force:
            raise EventformerError(f"{output}: already exists; pass --force to overwrite it")
    folder = output.parent
    if not folder.is_dir():
        raise EventformerError(f"{output}: cannot be written (folder {folder} does not exist)")
    if not os.access(folder, os.W_OK):
        raise EventformerError(f"{output}: cannot be written (permission denied)")
    return out_format


def _unwritable(output: Path, exc: OSError) -> EventformerError:
    return EventformerError(f"{output}: cannot be written ({exc.strerror or exc})")


def _assumed_sensor(input_path: Path, transform: SpatialTransform | None, size: int | None,
                    chunk_bytes: int) -> Assumption | None:
    """The sensor to assume for a file that records none, when the crop or scaling asked for
    needs one (a pass over the file for the events' extent); None when the header has a size or
    none is needed."""
    wanted = transform or SpatialTransform()
    if not (wanted.center_crop or (wanted.crop is None and size is not None)):
        return None
    max_x = max_y = -1
    with EventStream(input_path) as stream:
        for events in stream.chunks(chunk_bytes):
            if stream.sensor_size is not None:
                return None
            x, y = extent(events)
            max_x, max_y = max(max_x, x), max(max_y, y)
        if stream.sensor_size is not None:
            return None
        hint, source = (stream.decoder.sensor_hint if stream.decoder is not None else None) \
            or (None, "")
        return assume_sensor(str(input_path), stream.format or "?", max_x, max_y, hint, source)


def convert_file(input: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 start: int | None = None, end: int | None = None, force: bool = False,
                 transform: SpatialTransform | None = None, size: int | None = None,
                 sensor_size: tuple[int, int] | None = None,
                 progress: Callable[[int, int | None], None] | None = None,
                 chunk_bytes: int | None = None) -> ConversionSummary:
    """Convert ``input`` (any readable format) to ``output`` (.npy, or .h5/.hdf5 by extension).

    ``start``/``end`` keep the events with ``start <= t < end`` (microseconds; either may be
    None). ``transform`` crops and ``size`` scales the region onto ``size x size`` (rules in
    `eventformer.events.transforms`; without ``size`` no scaling); ``sensor_size`` is used where
    the input's header records none. ``force`` replaces an existing output. ``progress(done,
    total)`` is called after every chunk with the input's progress; ``chunk_bytes`` defaults to
    `readers.CHUNK_BYTES` (looked up at call time). Every problem is one
    `EventformerError` sentence, and then the output is left as it was.
    """
    input_path, output_path = Path(input), Path(output)
    if start is not None and end is not None and end <= start:
        raise EventformerError(f"--end ({end}) must be greater than --start ({start})")
    if size is not None and size <= 0:
        raise EventformerError(f"--size must be a positive number of pixels, got {size}")
    out_format = _check_paths(input_path, output_path, force)
    transform = transform if transform is not None and transform.crops else None
    spatial = transform is not None or size is not None
    chunk_bytes = chunk_bytes or readers.CHUNK_BYTES
    assumed = _assumed_sensor(input_path, transform, size, chunk_bytes) \
        if spatial and sensor_size is None else None
    if assumed is not None:
        sensor_size = assumed.size
    from eventformer.events.h5events import EventFileWriter  # h5py only when converting

    summary = ConversionSummary(input=str(input_path), output=str(output_path), in_format="?",
                                out_format=out_format)
    plan: SpatialPlan | None = None
    windowed = 0
    parts: list[np.ndarray] = []
    writer = None
    source_note = ""
    # written beside OUT, then renamed over it: a failed conversion leaves OUT as it was
    partial = output_path.with_name(f".{output_path.name}.{os.getpid()}.partial")

    def plan_for(stream: EventStream) -> SpatialPlan | None:
        if not spatial:
            return None
        header = stream.sensor_size
        made = (transform or SpatialTransform()).plan(
            header or sensor_size, size, name=str(input_path), from_header=header is not None,
            assumption=assumed.phrase if assumed is not None and header is None else "")
        if size is not None and made.output_size is None:
            raise EventformerError(f"{input_path}: scaling to --size {size} needs the sensor size, which the "
                                   "file does not record; give it with --sensor-size WxH or crop with --crop")
        return made

    def out_sensor(stream: EventStream) -> tuple[int, int] | None:
        if plan is not None:
            return plan.output_size
        return stream.sensor_size or sensor_size

    def keep(stream: EventStream, events: np.ndarray) -> None:
        nonlocal windowed, writer, plan, source_note
        if not len(events):
            return
        summary.events_read += len(events)
        t = events["t"]
        low, high = int(t.min()), int(t.max())
        summary.t_first = low if summary.t_first is None else min(summary.t_first, low)
        summary.t_last = high if summary.t_last is None else max(summary.t_last, high)
        if start is not None or end is not None:
            inside = np.ones(len(t), dtype=bool)
            if start is not None:
                inside &= t >= start
            if end is not None:
                inside &= t < end
            events = events[inside]
        windowed += len(events)
        if plan is not None:
            events = plan.apply(events)
        if not len(events):
            return
        summary.events_written += len(events)
        if out_format == "npy":
            parts.append(events)
            return
        if writer is None:  # events follow the header: the sensor size is known by now
            writer = EventFileWriter(partial, *(out_sensor(stream) or (None, None)), source=source_note)
        writer.append(events)  # HDF5 output: memory holds one chunk at a time

    try:
        try:  # before any decoding: an output that cannot be written fails at once
            partial.open("wb").close()
        except OSError as exc:
            raise _unwritable(output_path, exc) from None
        with EventStream(input_path) as stream:
            for events in stream.chunks(chunk_bytes):
                if plan is None and spatial:
                    plan = plan_for(stream)
                if not source_note:
                    source_note = f"converted from {input_path.name} ({stream.format})"
                keep(stream, events)
                if progress is not None:
                    progress(stream.offset, stream.total)
            if plan is None and spatial:  # no events at all: still check the options
                plan = plan_for(stream)
            summary.in_format = stream.format or "?"
            summary.warnings = stream.warnings + ([stream.leftover.message]
                                                  if stream.leftover and stream.leftover.message else [])
            summary.sensor_size = out_sensor(stream)
        if (start is not None or end is not None) and summary.events_read and not windowed:
            raise EventformerError(
                f"{input_path}: no events in [{_bound(start, '-inf')}, {_bound(end, 'inf')}) µs (the "
                f"recording spans [{summary.t_first}, {summary.t_last}] µs), so nothing was written")
        if plan is not None and windowed and not summary.events_written:
            raise EventformerError(f"{input_path}: the {plan.describe_crop() or 'scaling'} keeps none "
                                   f"of the {windowed} events, so nothing was written")
        try:
            if out_format == "npy":
                write_npy(partial, np.concatenate(parts) if parts else no_events())
            elif writer is None:
                EventFileWriter(partial, *(summary.sensor_size or (None, None)),
                                source=f"converted from {input_path.name} ({summary.in_format})").close()
            else:
                writer.close()
            os.replace(partial, output_path)
        except OSError as exc:  # a full disk, a folder that vanished
            raise _unwritable(output_path, exc) from None
    finally:
        if writer is not None:
            writer.close()
        if partial.exists():
            partial.unlink()

    if assumed is not None:
        summary.warnings.insert(0, assumed.sentence)
    if plan is not None:
        summary.spatial = plan.describe()
    return summary
