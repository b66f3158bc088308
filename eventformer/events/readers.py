"""Event-camera recordings on disk -> one structured array in memory.

Every reader sits behind the same small interface (`EventReader`) and is found through a registry,
so new formats (AEDAT, EVT2/EVT3, DAT, ...) slot in without touching callers. The format of a file is
decided from its first bytes, never its extension: recordings get renamed, and datasets reuse ``.bin``
and ``.raw`` for unrelated layouts.

Every user mistake (missing file, unknown or corrupt format, bad fields) surfaces as one
`EventFileError` whose message is a single sentence naming the file and the problem, so a command
line front end can print it as is.
"""

from __future__ import annotations

import io
import os
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from eventformer.errors import EventformerError

__all__ = [
    "EVENT_DTYPE",
    "EventFileError",
    "Recording",
    "EventReader",
    "NpyReader",
    "NpzReader",
    "Bs2Reader",
    "register_reader",
    "registered_readers",
    "detect_reader",
    "read_events",
    "write_npy",
    "events_from_fields",
]

#: One event: timestamp in microseconds, pixel column, pixel row, polarity (1 = ON, 0 = OFF).
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])

#: How many leading bytes a reader gets to recognise its format.
HEAD_BYTES = 4096

_EVENT_FIELDS = ("t", "x", "y", "p")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_BS2_EVENT_BYTES = 5


class EventFileError(EventformerError):
    """A recording could not be read; the message is one sentence naming the file and the problem."""


@dataclass
class Recording:
    """The events of one file, as stored (not re-sorted), plus what the reader noticed on the way.

    ``sensor_size`` is ``(width, height)`` when the format records it and ``None`` when it has no
    header (bs2, npy): callers must then be told the size, since the largest coordinate seen is only
    a lower bound. ``warnings`` holds one sentence per oddity that did not stop the read (for
    example timestamps that go backwards).
    """

    path: str
    format: str
    events: np.ndarray
    sensor_size: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_us(self) -> int:
        """Time spanned by the events in microseconds; 0 for fewer than two events."""
        if len(self.events) < 2:
            return 0
        t = self.events["t"]
        return int(t.max() - t.min())

    def __len__(self) -> int:
        return len(self.events)


# --------------------------------------------------------------------------------------------------
# The reader interface and registry
# --------------------------------------------------------------------------------------------------


class EventReader(ABC):
    """One on-disk format.

    ``sniff`` looks only at the first `HEAD_BYTES` bytes (fewer for short files) and the file size,
    so detection is cheap and never depends on the extension. ``read`` decodes the whole file and
    raises `EventFileError` for anything wrong with it.
    """

    name: ClassVar[str]

    @abstractmethod
    def sniff(self, head: bytes, size: int) -> bool:
        """True when the file starting with ``head`` (total ``size`` bytes) is in this format."""

    @abstractmethod
    def read(self, path: str | os.PathLike[str]) -> Recording:
        """Decode the file into a `Recording`."""


_readers: list[EventReader] = []
_fallback_readers: list[EventReader] = []


def register_reader(reader: EventReader, *, fallback: bool = False) -> None:
    """Add a reader. Fallback readers (headerless formats) are consulted only after every reader
    that recognises a magic number has declined, so a format with a signature always wins."""
    if any(r.name == reader.name for r in (*_readers, *_fallback_readers)):
        raise ValueError(f"an event reader named {reader.name!r} is already registered")
    (_fallback_readers if fallback else _readers).append(reader)


def registered_readers() -> tuple[EventReader, ...]:
    """All readers in the order they are consulted."""
    return (*_readers, *_fallback_readers)


def _reader_by_name(name: str, path: str) -> EventReader:
    for reader in registered_readers():
        if reader.name == name:
            return reader
    known = ", ".join(r.name for r in registered_readers())
    raise EventFileError(f"{path}: cannot force unknown event format {name!r} (known formats: {known})")


def detect_reader(path: str | os.PathLike[str]) -> EventReader:
    """The reader whose ``sniff`` claims the file, judged from its header bytes."""
    shown = os.fspath(path)
    head, size = _read_head(path)
    for reader in registered_readers():
        if reader.sniff(head, size):
            return reader
    raise EventFileError(f"{shown}: unknown event file format ({_describe_head(head)}; "
                         f"readable formats: {', '.join(r.name for r in registered_readers())})")


def read_events(path: str | os.PathLike[str], format: str | None = None) -> Recording:
    """Read a recording, detecting its format from its first bytes.

    ``format`` forces a reader by name (e.g. ``"bs2"``), for the rare headerless recording whose
    first event happens to spell another format's magic number.
    """
    shown = os.fspath(path)
    if format is None:
        reader = detect_reader(path)
    else:
        _read_head(path)  # same checks and messages for missing files and directories
        reader = _reader_by_name(format, shown)
    return reader.read(path)


# --------------------------------------------------------------------------------------------------
# File access with user-facing errors
# --------------------------------------------------------------------------------------------------


def _open_problem(path: str | os.PathLike[str], exc: OSError) -> EventFileError:
    shown = os.fspath(path)
    if isinstance(exc, FileNotFoundError):
        return EventFileError(f"{shown}: no such file")
    if isinstance(exc, IsADirectoryError) or os.path.isdir(path):
        return EventFileError(f"{shown}: is a directory, not an event file")
    if isinstance(exc, PermissionError):
        return EventFileError(f"{shown}: cannot be read (permission denied)")
    return EventFileError(f"{shown}: cannot be read ({exc.strerror or exc})")


def _check_regular_file(path: str | os.PathLike[str]) -> None:
    """Refuse directories and special files (FIFOs, devices) before opening: reading those would
    fail obscurely or never end."""
    shown = os.fspath(path)
    if os.path.isdir(path):
        raise EventFileError(f"{shown}: is a directory, not an event file")
    if os.path.exists(path) and not os.path.isfile(path):
        raise EventFileError(f"{shown}: is not a regular file")


def _read_head(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """First `HEAD_BYTES` bytes and the size of a regular file."""
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise _open_problem(path, exc) from None
    return head, size


def _read_all(path: str | os.PathLike[str]) -> bytes:
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _open_problem(path, exc) from None


def _describe_head(head: bytes) -> str:
    if not head:
        return "the file is empty"
    first_line = head.split(b"\n", 1)[0][:40].rstrip(b"\r")
    if _is_printable_ascii(first_line):
        return f"it starts with the text line {first_line.decode('ascii')!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def _is_printable_ascii(data: bytes) -> bool:
    return all(0x20 <= b < 0x7F or b == 0x09 for b in data)


def _starts_with_text_header(head: bytes) -> bool:
    """True for files opening with a ``#``/``%`` text header line (AEDAT, EVT2/3, DAT and kin).

    Those formats have readers of their own; decoding their ASCII header as 5-byte bs2 events
    would produce plausible-looking garbage, so the bs2 fallback refuses them. A real bs2 file
    matches only if its first events happen to be printable bytes ending in a newline.
    """
    if not head or head[:1] not in (b"#", b"%"):
        return False
    end = head.find(b"\n", 0, 256)
    if end < 4:
        return False
    return _is_printable_ascii(head[:end].rstrip(b"\r"))


# --------------------------------------------------------------------------------------------------
# Normalising arrays from any source into EVENT_DTYPE
# --------------------------------------------------------------------------------------------------


def _check_integer_field(name: str, values: np.ndarray, path: str) -> None:
    if values.dtype.kind not in "iub":
        raise EventFileError(
            f"{path}: field {name!r} has dtype {values.dtype}, but events need integer (or bool) fields")


def _check_range(name: str, values: np.ndarray, low: int, high: int, path: str) -> None:
    if values.size == 0:
        return
    vmin, vmax = int(values.min()), int(values.max())
    if vmin < low or vmax > high:
        bad = vmin if vmin < low else vmax
        raise EventFileError(f"{path}: field {name!r} holds {bad}, outside the allowed range {low}..{high}")


def _polarity_to_on_off(p: np.ndarray, path: str, warnings: list[str]) -> np.ndarray:
    """Polarity as 0 (OFF) / 1 (ON); -1 is accepted as OFF since several datasets store it so."""
    if p.dtype.kind == "b" or p.size == 0:
        return p.astype(np.uint8)
    values = np.unique(p)
    if not np.isin(values, (-1, 0, 1)).all():
        bad = int(values[~np.isin(values, (-1, 0, 1))][0])
        raise EventFileError(f"{path}: field 'p' holds {bad}, but polarity must be 0/1 (or -1/1)")
    if (values == -1).any():
        if (values == 0).any():
            raise EventFileError(f"{path}: field 'p' mixes -1, 0 and 1, so OFF events are ambiguous")
        warnings.append("polarity -1 was read as OFF (0)")
    return (p > 0).astype(np.uint8)


def events_from_fields(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray,
                       path: str, warnings: list[str]) -> np.ndarray:
    """Validate four parallel 1-D arrays and pack them into `EVENT_DTYPE`.

    Negative or oversized coordinates are refused here, once, so every reader and every framer
    downstream can rely on them; non-integer fields are refused rather than silently truncated.
    """
    columns = {"t": np.asarray(t), "x": np.asarray(x), "y": np.asarray(y), "p": np.asarray(p)}
    lengths = {name: col.shape for name, col in columns.items()}
    if any(col.ndim != 1 for col in columns.values()) or len({s for s in lengths.values()}) != 1:
        raise EventFileError(f"{path}: fields t, x, y, p must be 1-D arrays of one length, got shapes "
                             + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    for name, col in columns.items():
        _check_integer_field(name, col, path)
    _check_range("x", columns["x"], 0, np.iinfo(np.int16).max, path)
    _check_range("y", columns["y"], 0, np.iinfo(np.int16).max, path)
    if columns["t"].dtype == np.uint64:
        _check_range("t", columns["t"], 0, np.iinfo(np.int64).max, path)
    events = np.empty(len(columns["t"]), dtype=EVENT_DTYPE)
    events["t"] = columns["t"]
    events["x"] = columns["x"]
    events["y"] = columns["y"]
    events["p"] = _polarity_to_on_off(columns["p"], path, warnings)
    return events


def _note_time_order(events: np.ndarray, warnings: list[str]) -> None:
    """Record (not fix) timestamps that go backwards: re-sorting would hide a wrapped clock."""
    if len(events) < 2:
        return
    backwards = int(np.count_nonzero(np.diff(events["t"]) < 0))
    if backwards:
        warnings.append(f"timestamps go backwards {backwards} time(s); events are kept in stored order")


def _events_from_structured(array: np.ndarray, path: str, warnings: list[str]) -> np.ndarray:
    names = array.dtype.names
    if names is None:
        raise EventFileError(f"{path}: holds a plain {array.dtype} array of shape {array.shape}, "
                             "not a structured array with fields t, x, y, p")
    missing = [f for f in _EVENT_FIELDS if f not in names]
    if missing:
        raise EventFileError(f"{path}: the structured array lacks field(s) {', '.join(missing)} "
                             f"(it has {', '.join(names)}; events need t, x, y, p)")
    if array.ndim != 1:
        array = array.reshape(-1)
    return events_from_fields(array["t"], array["x"], array["y"], array["p"], path, warnings)


def _finish(path: str, fmt: str, events: np.ndarray, warnings: list[str],
            sensor_size: tuple[int, int] | None = None) -> Recording:
    _note_time_order(events, warnings)
    return Recording(path=path, format=fmt, events=events, sensor_size=sensor_size, warnings=warnings)


# --------------------------------------------------------------------------------------------------
# numpy .npy / .npz
# --------------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def _load_npy_stream(fp: BinaryIO, available: int, path: str) -> np.ndarray:
    """Read one .npy array from ``fp``, checking its header against the bytes really there.

    numpy would otherwise allocate whatever shape a corrupt header claims before noticing the data
    is missing; this turns both cases into one clear sentence.
    """
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
    except Exception:  # numpy raises ValueError, SyntaxError, EOFError... for bad headers
        raise EventFileError(f"{path}: not a valid numpy .npy file (its header is corrupt, cut short, "
                             "or from an unsupported .npy version)") from None
    if dtype.hasobject:
        raise EventFileError(f"{path}: holds Python objects (dtype {dtype}), which are not loaded for safety")
    if any(d < 0 for d in shape):
        raise EventFileError(f"{path}: not a valid numpy .npy file (negative shape {shape} in its header)")
    count = int(np.prod(shape, dtype=object))
    needed = count * dtype.itemsize
    remaining = available - fp.tell()
    if needed > remaining:
        raise EventFileError(f"{path}: truncated: the .npy header announces {needed} data bytes "
                             f"but only {max(remaining, 0)} follow")
    data = fp.read(needed)
    if len(data) != needed:
        raise EventFileError(f"{path}: truncated: expected {needed} data bytes, read {len(data)}")
    try:
        array = np.frombuffer(data, dtype=dtype, count=count)
        return array.reshape(shape, order="F" if fortran_order else "C")
    except Exception as exc:  # e.g. zero-size dtypes numpy cannot lay out
        raise EventFileError(f"{path}: not a valid numpy .npy file ({_first_line(exc)})") from None


class NpyReader(EventReader):
    """numpy ``.npy`` structured arrays with integer fields t, x, y, p (any order, any int width)."""

    name = "npy"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(_NPY_MAGIC)

    def read(self, path: str | os.PathLike[str]) -> Recording:
        shown = os.fspath(path)
        data = _read_all(path)
        array = _load_npy_stream(io.BytesIO(data), len(data), shown)
        warnings: list[str] = []
        events = _events_from_structured(array, shown, warnings)
        return _finish(shown, self.name, events, warnings)


class NpzReader(EventReader):
    """numpy ``.npz`` archives: a single structured array, or separate arrays named t, x, y, p."""

    name = "npz"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(_ZIP_MAGIC)

    def read(self, path: str | os.PathLike[str]) -> Recording:
        shown = os.fspath(path)
        arrays = self._load_members(_read_all(path), shown)
        warnings: list[str] = []
        if all(name in arrays for name in _EVENT_FIELDS):
            events = events_from_fields(*(arrays[n] for n in _EVENT_FIELDS), path=shown, warnings=warnings)
        elif len(arrays) == 1:
            events = _events_from_structured(next(iter(arrays.values())), shown, warnings)
        else:
            listed = ", ".join(sorted(arrays)) or "none"
            raise EventFileError(f"{shown}: the .npz archive holds arrays {listed}, but events need either "
                                 "one structured array or arrays named t, x, y, p")
        return _finish(shown, self.name, events, warnings)

    @staticmethod
    def _load_members(data: bytes, path: str) -> dict[str, np.ndarray]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = [info for info in archive.infolist() if not info.is_dir()]
            arrays: dict[str, np.ndarray] = {}
            for info in members:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as fp:
                    arrays[name] = _load_npy_stream(fp, info.file_size, f"{path} (member {info.filename})")
        except EventFileError:
            raise
        except Exception as exc:  # zipfile/zlib raise many types for corrupt archives
            raise EventFileError(f"{path}: starts like a zip/.npz archive but cannot be read as one "
                                 f"({_first_line(exc)}); pass format='bs2' if it is a headerless "
                                 "recording") from None
        return arrays


# --------------------------------------------------------------------------------------------------
# bs2 / N-MNIST .bin
# --------------------------------------------------------------------------------------------------


def decode_bs2(raw: np.ndarray) -> np.ndarray:
    """Decode whole 5-byte bs2 records (uint8, length a multiple of 5) into `EVENT_DTYPE`.

    Layout (N-MNIST .bin, SLAYER bs2): byte 0 = x, byte 1 = y, byte 2 bit 7 = polarity (1 = ON),
    t = ((b2 & 0x7F) << 16) | (b3 << 8) | b4 microseconds. The 23-bit clock is decoded as is,
    never unwrapped: N-MNIST's y == 240 overflow markers are not part of this format.
    """
    records = raw.reshape(-1, _BS2_EVENT_BYTES)
    b2 = records[:, 2].astype(np.int64)
    events = np.empty(len(records), dtype=EVENT_DTYPE)
    events["x"] = records[:, 0]
    events["y"] = records[:, 1]
    events["p"] = records[:, 2] >> 7
    events["t"] = ((b2 & 0x7F) << 16) | (records[:, 3].astype(np.int64) << 8) | records[:, 4]
    return events


class Bs2Reader(EventReader):
    """Headerless 5-byte events (N-MNIST ``.bin``, SLAYER ``.bs2``), the fallback format.

    Having no magic number, it claims any file no other reader recognised, except files that open
    with a ``#``/``%`` text header (those belong to formats with readers of their own).
    """

    name = "bs2"

    def sniff(self, head: bytes, size: int) -> bool:
        return not _starts_with_text_header(head)

    def read(self, path: str | os.PathLike[str]) -> Recording:
        shown = os.fspath(path)
        data = _read_all(path)
        complete, stray = divmod(len(data), _BS2_EVENT_BYTES)
        if stray:
            raise EventFileError(f"{shown}: truncated: {complete} complete {_BS2_EVENT_BYTES}-byte events "
                                 f"followed by {stray} stray byte{'s' if stray > 1 else ''}")
        events = decode_bs2(np.frombuffer(data, dtype=np.uint8))
        return _finish(shown, self.name, events, [])


register_reader(NpyReader())
register_reader(NpzReader())
register_reader(Bs2Reader(), fallback=True)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_npy(path: str | os.PathLike[str], events: np.ndarray) -> None:
    """Save events as an `EVENT_DTYPE` .npy file (the format ``read_events`` reads back exactly).

    Writes through an open file handle so numpy does not append ``.npy`` to the name.
    """
    events = np.asarray(events)
    if events.dtype != EVENT_DTYPE:
        if events.dtype.names is None or any(f not in events.dtype.names for f in _EVENT_FIELDS):
            raise ValueError(f"write_npy needs a structured array with fields t, x, y, p, got dtype {events.dtype}")
        converted = np.empty(events.shape, dtype=EVENT_DTYPE)
        for name in _EVENT_FIELDS:
            converted[name] = events[name]
        events = converted
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(events.reshape(-1)), allow_pickle=False)
