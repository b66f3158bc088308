"""Event-camera recordings: reading files (format detected from header bytes; headerless bs2 by
its extension), cropping / resizing the focal plane onto a model's input, converting files, and
framing the event stream into steps of per-pixel counts (SPEC §3).

This package re-exports the public names of its modules; importing it imports
`eventformer.events.formats`, which registers every reader with `eventformer.events.readers`."""

from eventformer.events.convert import (
    ConversionSummary,
    convert_file,
)
from eventformer.events.formats import Bs2Reader, NpyReader, NpzReader
from eventformer.events.framing import (
    SparseStep,
    SplitBy,
    dense_frames,
    event_sites,
    frame_boundaries,
    frame_events,
    sparse_steps,
    split_by_number,
    split_by_time,
)
from eventformer.events.h5events import EventFileWriter, write_events_h5
from eventformer.events.readers import (
    CHUNK_BYTES,
    EVENT_DTYPE,
    Decoder,
    EventFileError,
    EventReader,
    EventStream,
    Leftover,
    Recording,
    detect_reader,
    read_events,
    register_reader,
    registered_readers,
    write_npy,
)
from eventformer.events.transforms import SpatialPlan, SpatialTransform, parse_crop

__all__ = [
    "CHUNK_BYTES",
    "EVENT_DTYPE",
    "Bs2Reader",
    "ConversionSummary",
    "Decoder",
    "EventFileError",
    "EventFileWriter",
    "EventReader",
    "EventStream",
    "Leftover",
    "NpyReader",
    "NpzReader",
    "Recording",
    "SparseStep",
    "SpatialPlan",
    "SpatialTransform",
    "SplitBy",
    "convert_file",
    "dense_frames",
    "detect_reader",
    "event_sites",
    "frame_boundaries",
    "frame_events",
    "parse_crop",
    "read_events",
    "register_reader",
    "registered_readers",
    "sparse_steps",
    "split_by_number",
    "split_by_time",
    "write_events_h5",
    "write_npy",
]
