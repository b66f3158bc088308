"""eventformer's own HDF5 event file, the reading side: its layout, the reader `H5Reader`
(format ``"h5"``) and `H5EventSource`, which follows a file while one writer appends to it (SWMR).
The writer, `EventFileWriter`, is in `eventformer.events.h5events`.

Layout (``format_version`` 1)::

    /          attrs: format="eventformer-events", format_version=1,
                      width, height (sensor size; 0 when unknown), source (free text)
    /events/   t (int64, us), x (int16), y (int16), p (uint8, 1 = ON): 1-D, chunked, resizable
               (maxshape None), one value per event, stored in the order appended (time order
               expected; readers warn, never re-sort, when it goes backwards)
               n_valid (int64 scalar): the number of committed events

``n_valid`` is the count, not the datasets' length. The writer (`EventFileWriter`) runs in HDF5's
single-writer/multiple-reader mode (``libver="latest"``, ``swmr_mode``): each append grows and
fills t, x, y, p, flushes them, and only then writes and flushes ``n_valid``. A reader refreshes
``n_valid`` first and then the fields, and reads events up to ``n_valid`` only, so it never sees
half of an append (t already longer than p, say), whatever moment it looks. A file without
``n_valid`` (written by another tool, not for following) is read up to the common length of its
fields, which must then be equal.

`H5Reader` is registered as format ``"h5"``. It claims every file that starts with the
HDF5 signature (a model file or any other HDF5 file must not fall through to the headerless bs2
reader and be decoded as garbage), then checks the ``format`` attribute when it opens the file,
so a model file given as events gets "is an eventformer model file, not events". HDF5 is not a
byte stream: its library reads the file itself, so instead of a `Decoder` the reader offers
``open_incremental(path)``, an `H5EventSource` that `EventStream` uses to follow a growing file.
h5py is imported only when an HDF5 file is really read or written.
"""

from __future__ import annotations

import errno
import os
from typing import Any, ClassVar

import numpy as np

from eventformer.events.readers import (
    CHUNK_BYTES,
    EVENT_DTYPE,
    Decoder,
    EventFileError,
    EventReader,
    IncrementalSource,
    Leftover,
    Recording,
    _check_regular_file,
    _first_line,
    _open_problem,
    events_from_fields,
    no_events,
)
from eventformer.events.sensors import check_sensor_size

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HDF5_SIGNATURE",
    "H5EventSource",
    "H5Reader",
]

FORMAT_NAME = "eventformer-events"
FORMAT_VERSION = 1
#: The HDF5 superblock signature; it sits at byte 0, or at 512, 1024, 2048... after a user block.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_MODEL_FORMAT = "eventformer"  # eventformer.modelfile.format.FORMAT_NAME, not imported (heavy)
_FIELDS = ("t", "x", "y", "p")
_FIELD_DTYPES = {name: EVENT_DTYPE[name] for name in _FIELDS}
_STORED_EVENT_BYTES = sum(dt.itemsize for dt in _FIELD_DTYPES.values())  # 13
_COUNT = "n_valid"


def _h5py() -> Any:
    import h5py

    return h5py


def _held_by_writer(exc: BaseException) -> str | None:
    """Why HDF5 refused to open the file, when the reason is a writer not in SWMR mode (worth
    retrying while following: it may be a writer still creating the file), else None."""
    text = str(exc)
    if "unable to lock file" in text and (f"errno = {errno.EAGAIN}" in text or
                                          f"errno = {errno.EWOULDBLOCK}" in text):
        return ("is held by an HDF5 writer that has not switched to SWMR mode, so it cannot be "
                "read yet")
    if "already open for write" in text or "not already open for SWMR writing" in text:
        return ("is marked as open by an HDF5 writer not in SWMR mode (still writing, or it "
                "crashed: `h5clear -s` removes the mark), so it cannot be read")
    return None


class _Notes(Decoder):
    """The warning bookkeeping of a `Decoder` (time order across reads, coordinates outside the
    sensor, notes said once), so HDF5 reads warn in the same words as every other format. It is
    never fed bytes."""

    format = "h5"

    def take(self, events: np.ndarray, warnings: list[str]) -> None:
        """Account for ``events`` just read, and the warning sentences their conversion gave."""
        for message in warnings:
            self.note(message)
        self._observe(events)
        self.decoded += len(events)

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:  # pragma: no cover
        raise TypeError("HDF5 event files are not decoded from bytes")


class H5EventSource(IncrementalSource):
    """The events of one eventformer HDF5 event file, read from where the last read stopped.

    With ``wait=True`` (following a file being written) a file still locked by a writer that has
    not switched to SWMR mode reads as empty until it has; with ``wait=False`` that is an error
    at once. Everything else wrong with the file is an `EventFileError` sentence at the first read.
    ``offset`` counts the events returned so far and ``total`` the events committed now.
    """

    def __init__(self, path: str | os.PathLike[str], wait: bool = True) -> None:
        self.path = os.fspath(path)
        self.wait = wait
        self.offset = 0
        self.sensor_size: tuple[int, int] | None = None
        self._file: Any = None
        self._fields: dict[str, Any] = {}
        self._count: Any = None
        self._committed = 0
        self._closed = False
        #: Whether the file is read in SWMR mode (a writer was appending when it was opened).
        self._swmr = False
        self._notes = _Notes(self.path)
        self._seen_polarity: set[int] = set()

    # -- IncrementalSource -----------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        return self._committed if self._file is not None else None

    @property
    def warnings(self) -> list[str]:
        return self._notes.warnings

    def read(self, max_bytes: int = CHUNK_BYTES) -> np.ndarray:
        if self._closed:
            raise ValueError(f"{self.path}: read() on a closed HDF5 event source")
        if self._file is None and not self._open():
            return no_events()
        committed = self._refresh()
        stop = min(committed, self.offset + max(1, max_bytes // _STORED_EVENT_BYTES))
        if stop <= self.offset:
            return no_events()
        columns = {name: self._read_field(name, self.offset, stop) for name in _FIELDS}
        warnings: list[str] = []
        events = events_from_fields(columns["t"], columns["x"], columns["y"], columns["p"],
                                    self.path, warnings, seen_polarity=self._seen_polarity)
        self._notes.take(events, warnings)
        self.offset = stop
        return events

    def read_all(self) -> np.ndarray:
        """Every committed event not read yet, a chunk at a time."""
        parts = []
        while len(events := self.read()):
            parts.append(events)
        return np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else no_events())

    def finish(self) -> Leftover:
        if self._closed:
            raise ValueError(f"{self.path}: finish() on a closed HDF5 event source")
        try:
            if self._file is None:
                self.wait = False
                self._open()
            committed = self._refresh()
            extra = max(len(dataset) for dataset in self._fields.values()) - committed
            if extra > 0:
                self._notes.note(f"{extra} stored value(s) beyond the {committed} committed events "
                                 "were ignored (an append still in progress, or cut short)")
        finally:
            self.close()
        return Leftover(events=no_events(), decoded=self.offset, torn_bytes=0, header_complete=True)

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    # -- opening and checking --------------------------------------------------------------------

    def _open(self) -> bool:
        """Open and check the file; False while a writer is still creating it (with ``wait``)."""
        h5py = _h5py()
        _check_regular_file(self.path)
        try:
            f = self._open_file(h5py)
        except FileNotFoundError:
            raise EventFileError(f"{self.path}: no such file") from None
        except OSError as exc:
            held = _held_by_writer(exc)
            if held is not None:
                if self.wait:
                    return False
                raise EventFileError(f"{self.path}: {held}") from None
            if isinstance(exc, (PermissionError, IsADirectoryError)):
                raise _open_problem(self.path, exc) from None
            raise EventFileError(f"{self.path}: starts like an HDF5 file but cannot be opened as "
                                 f"one ({_first_line(exc)})") from None
        except Exception as exc:  # h5py raises RuntimeError and others for corrupt files
            raise EventFileError(f"{self.path}: starts like an HDF5 file but cannot be opened as "
                                 f"one ({_first_line(exc)})") from None
        try:
            self._check(f)
        except EventFileError:
            f.close()
            raise
        except Exception as exc:  # a damaged object header or link surfaces as KeyError, OSError...
            f.close()
            raise self._damaged(exc) from None
        except BaseException:
            f.close()
            raise
        self._file = f
        return True

    def _open_file(self, h5py: Any) -> Any:
        """The file opened for reading: in SWMR mode only while a writer is appending to it.

        A file no writer holds is opened plainly, because under SWMR libhdf5 retries a read
        whose metadata checksum fails (a torn write may yet complete), sleeping between tries,
        so one flipped byte in a finished file would hang the reader instead of failing. While a
        SWMR writer is at work the plain open is refused ("already open for write"), and the
        file is followed in SWMR mode."""
        try:
            f = h5py.File(self.path, "r", locking="best-effort")
        except OSError as exc:
            if "already open for write" not in str(exc):
                raise
        else:
            self._swmr = False
            return f
        self._swmr = True
        return h5py.File(self.path, "r", swmr=True, locking="best-effort")

    def _check(self, f: Any) -> None:
        """Check the layout of an open file (see the module docstring); one sentence per problem."""
        h5py = _h5py()
        path = self.path
        fmt = _text_attr(f.attrs.get("format"))
        if fmt == _MODEL_FORMAT:
            raise EventFileError(f"{path}: is an eventformer model file, not events")
        if fmt != FORMAT_NAME:
            what = "has no format attribute" if fmt is None else f"its format attribute is {fmt!r}"
            raise EventFileError(f"{path}: an HDF5 file but not an eventformer event file ({what}; "
                                 f"expected {FORMAT_NAME!r})")
        version = _int_attr(f.attrs.get("format_version"))
        if version is None:
            raise EventFileError(f"{path}: an eventformer event file without an integer "
                                 "format_version attribute")
        if version != FORMAT_VERSION:
            raise EventFileError(f"{path}: event file format version {version}, this eventformer "
                                 f"reads version {FORMAT_VERSION}")
        width, height = _int_attr(f.attrs.get("width", 0)), _int_attr(f.attrs.get("height", 0))
        if width is None or height is None or width < 0 or height < 0:
            raise EventFileError(f"{path}: the width and height attributes must be non-negative "
                                 "integers")
        self.sensor_size = check_sensor_size((width, height), f"{path}: its width and height "
                                             "attributes", EventFileError) \
            if width > 0 and height > 0 else None
        self._notes.sensor_size = self.sensor_size
        group = f.get("events")
        if not isinstance(group, h5py.Group):
            raise EventFileError(f"{path}: has no 'events' group (an eventformer event file stores "
                                 "t, x, y, p there)")
        missing = [name for name in _FIELDS if not isinstance(group.get(name), h5py.Dataset)]
        if missing:
            raise EventFileError(f"{path}: the 'events' group lacks dataset(s) "
                                 f"{', '.join(missing)} (events need t, x, y, p)")
        for name in _FIELDS:
            dataset = group[name]
            if dataset.ndim != 1:
                raise EventFileError(f"{path}: dataset 'events/{name}' has shape {dataset.shape}, "
                                     "but event fields must be 1-D")
            if dataset.dtype.kind not in "iub":
                raise EventFileError(f"{path}: dataset 'events/{name}' has dtype {dataset.dtype}, "
                                     "but events need integer fields (t int64, x and y int16, p "
                                     "uint8)")
            self._fields[name] = dataset
        count = group.get(_COUNT)
        if count is not None:
            if (not isinstance(count, h5py.Dataset) or count.shape != ()
                    or count.dtype.kind not in "iu"):
                raise EventFileError(f"{path}: 'events/{_COUNT}' must be a scalar integer dataset")
            self._count = count

    def _damaged(self, exc: BaseException) -> EventFileError:
        return EventFileError(f"{self.path}: an eventformer event file whose HDF5 structure is damaged "
                              f"({_first_line(exc)})")

    def _refresh(self) -> int:
        """Re-read the committed count (then the fields' lengths) as the writer left them now."""
        try:
            return self._refresh_counts()
        except EventFileError:
            raise
        except Exception as exc:
            raise self._damaged(exc) from None

    def _refresh_counts(self) -> int:
        if self._count is not None:
            if self._swmr:
                self._count.refresh()
            committed = int(self._count[()])
            if self._swmr:
                for dataset in self._fields.values():
                    dataset.refresh()
            if committed < 0:
                raise EventFileError(f"{self.path}: 'events/{_COUNT}' is negative ({committed})")
            short = [(name, len(d)) for name, d in self._fields.items() if len(d) < committed]
            if short:
                name, length = short[0]
                raise EventFileError(f"{self.path}: 'events/{_COUNT}' says {committed} events, but "
                                     f"'events/{name}' holds only {length} values")
        else:
            if self._swmr:
                for dataset in self._fields.values():
                    dataset.refresh()
            lengths = {name: len(d) for name, d in self._fields.items()}
            if len(set(lengths.values())) != 1:
                raise EventFileError(f"{self.path}: the event fields have unequal lengths "
                                     + ", ".join(f"{k}={v}" for k, v in lengths.items()))
            committed = lengths["t"]
        if committed < self._committed:
            raise EventFileError(f"{self.path}: the file shrank from {self._committed} to "
                                 f"{committed} events while being read")
        self._committed = committed
        return committed

    def _read_field(self, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._fields[name][start:stop]
        except Exception as exc:  # corrupt chunks surface as OSError or RuntimeError
            raise EventFileError(f"{self.path}: dataset 'events/{name}' cannot be read "
                                 f"({_first_line(exc)})") from None


def _text_attr(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "SUO":
        return _text_attr(value[()])
    return value if isinstance(value, str) else (None if value is None else str(value))


def _int_attr(value: Any) -> int | None:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return None


class H5Reader(EventReader):
    """eventformer's HDF5 event file (see the module docstring). Claims every HDF5 file, so other
    HDF5 files (a model file, say) get a sentence saying what they are instead of bs2 garbage."""

    name: ClassVar[str] = "h5"

    def sniff(self, head: bytes, size: int) -> bool:
        return any(head[at:at + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE
                   for at in (0, 512, 1024, 2048))

    def decoder(self, name: str = "<stream>") -> Decoder:
        raise EventFileError(f"{name}: HDF5 event files cannot be decoded from bytes; read them "
                             "with read_events or EventStream")

    def open_incremental(self, path: str | os.PathLike[str]) -> H5EventSource:
        return H5EventSource(path, wait=True)

    def read(self, path: str | os.PathLike[str]) -> Recording:
        source = H5EventSource(path, wait=False)
        try:
            events = source.read_all()
        except BaseException:
            source.close()
            raise
        end = source.finish()
        assert end.message is None
        return Recording(path=source.path, format=self.name, events=events,
                         sensor_size=source.sensor_size, warnings=source.warnings)

