"""eventformer's own HDF5 event file, the writing side: `EventFileWriter` appends events that
readers may follow as they arrive (HDF5's single-writer/multiple-reader mode), and
`write_events_h5` saves a whole recording. The file's layout and its reader (`H5Reader`,
`H5EventSource`, re-exported here) are in `eventformer.events.formats.h5`. h5py is imported only
when a file is really written.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Self

import numpy as np

from eventformer.events.formats.h5 import (
    _COUNT,
    _FIELD_DTYPES,
    _FIELDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    HDF5_SIGNATURE,
    H5EventSource,
    H5Reader,
    _h5py,
)
from eventformer.events.readers import (EVENT_DTYPE, events_from_fields,
                                        open_for_writing)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HDF5_SIGNATURE",
    "EventFileWriter",
    "H5EventSource",
    "H5Reader",
    "write_events_h5",
]

#: Events per HDF5 chunk of each field (t: 128 KiB per chunk). HDF5 allocates whole chunks, so
#: this is also about the smallest file size (200 KiB); `write_events_h5` sizes it to the events.
CHUNK_EVENTS = 1 << 14


def _as_events(events: np.ndarray, what: str) -> np.ndarray:
    """``events`` as a 1-D `EVENT_DTYPE` array (fields validated when converted)."""
    events = np.asarray(events)
    if events.dtype == EVENT_DTYPE:
        return events.reshape(-1)
    if events.dtype.names is None or any(f not in events.dtype.names for f in _FIELDS):
        raise ValueError(f"{what} needs a structured array with fields t, x, y, p, got dtype "
                         f"{events.dtype}")
    flat = events.reshape(-1)
    return events_from_fields(flat["t"], flat["x"], flat["y"], flat["p"], what, [])


class EventFileWriter:
    """Create an eventformer HDF5 event file and append events to it while others read it.

    The file is created (replacing any file at ``path``) with its attributes and empty datasets,
    then switched to SWMR mode, from which point readers (`EventStream`, `read_events`) may open
    it. Every `append` is committed and flushed before it returns: a reader then sees all of it or,
    if it looked earlier, none of it. Use it as a context manager, or call `close`.
    """

    def __init__(self, path: str | os.PathLike[str], width: int | None = None,
                 height: int | None = None, source: str = "", *,
                 chunk_events: int = CHUNK_EVENTS) -> None:
        h5py = _h5py()
        self.path = os.fspath(path)
        for name, value in (("width", width), ("height", height)):
            if value is not None and not 0 <= int(value) <= np.iinfo(np.int16).max + 1:
                raise ValueError(f"{name} must be between 0 and 32768, got {value}")
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be positive, got {chunk_events}")
        self._file = open_for_writing(self.path, lambda p: h5py.File(p, "w", libver="latest"))
        try:
            f = self._file
            # fixed-length strings: a variable-length one lives in a global heap, which libhdf5
            # reads in an endless loop when one byte of it is damaged
            _fixed_text(f, "format", FORMAT_NAME)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["width"] = int(width or 0)
            f.attrs["height"] = int(height or 0)
            _fixed_text(f, "source", str(source))
            group = f.create_group("events")
            self._fields = {name: group.create_dataset(name, shape=(0,), maxshape=(None,),
                                                       dtype=dtype, chunks=(chunk_events,))
                            for name, dtype in _FIELD_DTYPES.items()}
            self._count = group.create_dataset(_COUNT, shape=(), dtype="<i8", data=0)
            # no new objects or attributes from here on; readers may open the file
            f.swmr_mode = True
        except BaseException:
            self._file.close()
            raise
        #: Events committed so far.
        self.count = 0

    def append(self, events: np.ndarray) -> None:
        """Append ``events`` (`EVENT_DTYPE`, or any structured array with integer fields t, x, y,
        p) after those already written, and make them visible to readers."""
        if self._file is None:
            raise ValueError(f"{self.path}: append() on a closed EventFileWriter")
        events = _as_events(events, "EventFileWriter.append")
        if not len(events):
            return
        new = self.count + len(events)
        for name, dataset in self._fields.items():
            dataset.resize((new,))
            dataset[self.count:new] = events[name]
        for dataset in self._fields.values():
            dataset.flush()
        # committed last: a reader that sees the new count finds every field already this long
        self._count[()] = new
        self._count.flush()
        self.count = new

    def close(self) -> None:
        """Close the file (idempotent); every appended event is already committed."""
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _fixed_text(f, name: str, text: str) -> None:
    h5py = _h5py()
    data = text.encode("utf-8")
    f.attrs.create(name, np.bytes_(data), dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def write_events_h5(path: str | os.PathLike[str], events: np.ndarray, width: int | None = None,
                    height: int | None = None, source: str = "") -> None:
    """Save events as an eventformer HDF5 event file (`read_events` reads them back exactly)."""
    chunk_events = min(CHUNK_EVENTS, max(len(events), 1))
    with EventFileWriter(path, width, height, source, chunk_events=chunk_events) as writer:
        writer.append(events)

