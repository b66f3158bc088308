"""`eventformer convert`: any event format to .npy or the HDF5 event file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err, parse_size, progress_bar
from .errors import user_errors


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
    crop: Optional[str] = typer.Option(None, "--crop", metavar="X,Y,W,H",
                                       help="Keep only the events inside this rectangle of the "
                                            "sensor, shifted to start at (0,0)."),
    center_crop: bool = typer.Option(False, "--center-crop",
                                     help="Keep the centred square of side min(width, height) "
                                          "of the sensor."),
    size: Optional[int] = typer.Option(None, "--size", metavar="S",
                                       help="Scale the (cropped) sensor onto S x S, one factor "
                                            "for both axes (x // f when exact, else tonic's "
                                            "floor(x * S / max(w, h))).",
                                       show_default="no scaling"),
    sensor_size: Optional[str] = typer.Option(None, "--sensor-size", metavar="WxH",
                                              help="Sensor size for formats whose header has "
                                                   "none (used by --center-crop and --size).",
                                              show_default="the header's; else the smallest "
                                                           "well-known sensor holding every "
                                                           "event, said"),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
):
    """Convert an event recording to .npy or eventformer's HDF5 event file, exactly.

    Same events in the same order, optionally cut to [--start, --end) microseconds, cropped
    (--crop, --center-crop) and scaled (--size)."""
    from eventformer.events.convert import convert_file
    from eventformer.events.transforms import SpatialTransform

    transform = SpatialTransform.from_options(crop, center_crop)
    with progress_bar(err.is_terminal) as progress:
        task = progress.add_task("converting", total=None) if progress else None

        def advance(done, total):
            progress.update(task, completed=done, total=total)

        summary = convert_file(input_path, output, start=start, end=end, force=force,
                               transform=transform, size=size,
                               sensor_size=parse_size(sensor_size),
                               progress=advance if progress else None)
    for w in summary.warnings:
        err.print(f"warning: {input_path}: {w}", markup=False, highlight=False, soft_wrap=True)
    spatial = f", {summary.spatial}" if summary.spatial else ""
    err.print(f"converted {summary.events_written} events (format {summary.in_format} -> "
              f"{summary.out_format}){spatial}", markup=False, highlight=False, soft_wrap=True)
