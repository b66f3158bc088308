"""Event-camera recordings: reading files (format detected from header bytes) and framing the
event stream into steps of per-pixel counts (SPEC §3)."""

from eventformer.events.framing import (
    SparseStep,
    SplitBy,
    dense_frames,
    event_sites,
    frame_boundaries,
    frame_events,
    split_by_number,
    split_by_time,
)
from eventformer.events.readers import (
    EVENT_DTYPE,
    Bs2Reader,
    EventFileError,
    EventReader,
    NpyReader,
    NpzReader,
    Recording,
    detect_reader,
    read_events,
    register_reader,
    registered_readers,
    write_npy,
)

__all__ = [
    "EVENT_DTYPE",
    "Bs2Reader",
    "EventFileError",
    "EventReader",
    "NpyReader",
    "NpzReader",
    "Recording",
    "SparseStep",
    "SplitBy",
    "dense_frames",
    "detect_reader",
    "event_sites",
    "frame_boundaries",
    "frame_events",
    "read_events",
    "register_reader",
    "registered_readers",
    "split_by_number",
    "split_by_time",
    "write_npy",
]
