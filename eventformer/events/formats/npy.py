"""numpy ``.npy`` event files: one structured array with integer fields t, x, y, p (any order,
any integer width), read record by record after its header. Also the ``.npy`` parsing and
structured-array checks that ``.npz`` archives (whose members are ``.npy`` files) reuse.
`write_npy`, the writer, is in `eventformer.events.readers`.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np

from eventformer.events.readers import (
    _EVENT_FIELDS,
    Decoder,
    EventFileError,
    EventReader,
    _check_integer_field,
    _first_line,
    events_from_fields,
    no_events,
)

_NPY_MAGIC = b"\x93NUMPY"
_NPY_CORRUPT = ("not a valid numpy .npy file (its header is corrupt, cut short, "
                "or from an unsupported .npy version)")


def _parse_npy_header(fp: BinaryIO, path: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fp)
        return np.lib.format.read_array_header_2_0(fp)
    except Exception:  # numpy raises ValueError, SyntaxError, EOFError... for bad headers
        raise EventFileError(f"{path}: {_NPY_CORRUPT}") from None


def _check_npy_header(shape: tuple[int, ...], dtype: np.dtype, path: str) -> None:
    if dtype.hasobject:
        raise EventFileError(f"{path}: holds Python objects (dtype {dtype}), which are not loaded "
                             "for safety")
    if any(d < 0 for d in shape):
        raise EventFileError(f"{path}: not a valid numpy .npy file (negative shape {shape} in its "
                             "header)")


def _load_npy_stream(fp: BinaryIO, available: int, path: str) -> np.ndarray:
    """Read one .npy array from ``fp``, checking its header against the bytes really there.

    numpy would otherwise allocate whatever shape a corrupt header claims before noticing the data
    is missing; this turns both cases into one clear sentence.
    """
    shape, fortran_order, dtype = _parse_npy_header(fp, path)
    _check_npy_header(shape, dtype, path)
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


def _events_from_structured(array: np.ndarray, path: str, warnings: list[str],
                            seen_polarity: set[int] | None = None) -> np.ndarray:
    _check_event_dtype(array.dtype, array.shape, path)
    if array.ndim != 1:
        array = array.reshape(-1)
    return events_from_fields(array["t"], array["x"], array["y"], array["p"], path, warnings,
                              seen_polarity=seen_polarity)


def _check_event_dtype(dtype: np.dtype, shape: tuple[int, ...], path: str) -> None:
    names = dtype.names
    if names is None:
        raise EventFileError(f"{path}: holds a plain {dtype} array of shape {shape}, "
                             "not a structured array with fields t, x, y, p")
    missing = [f for f in _EVENT_FIELDS if f not in names]
    if missing:
        raise EventFileError(f"{path}: the structured array lacks field(s) {', '.join(missing)} "
                             f"(it has {', '.join(names)}; events need t, x, y, p)")


class NpyDecoder(Decoder):
    """numpy ``.npy``, decoded record by record after its header.

    The header announces the array's size, so unlike the camera formats a short file is known to
    be cut: `finish` raises for it instead of warning. Records are decoded in storage order (for a
    multi-dimensional Fortran-order array that is column-major, the order the bytes are written).
    """

    format = "npy"

    def __init__(self, name: str = "<stream>") -> None:
        super().__init__(name)
        self._dtype: np.dtype | None = None
        self._remaining = 0
        self._announced = 0
        self._seen_polarity: set[int] = set()

    def _parse_header(self, buf: bytearray, final: bool) -> int | None:
        if len(buf) < 12:
            if final:
                raise EventFileError(f"{self.name}: {_NPY_CORRUPT}")
            self._wanted = 12
            return None
        if bytes(buf[:6]) != _NPY_MAGIC:
            raise EventFileError(f"{self.name}: {_NPY_CORRUPT}")
        major = buf[6]
        length = (10 + int.from_bytes(buf[8:10], "little") if major == 1
                  else 12 + int.from_bytes(buf[8:12], "little"))
        if len(buf) < length:
            if final:
                raise EventFileError(f"{self.name}: {_NPY_CORRUPT}")
            self._wanted = length
            return None
        shape, _, dtype = _parse_npy_header(io.BytesIO(bytes(buf[:length])), self.name)
        _check_npy_header(shape, dtype, self.name)
        _check_event_dtype(dtype, shape, self.name)
        for name in _EVENT_FIELDS:
            _check_integer_field(name, np.empty(0, dtype=dtype[name]), self.name)
        if dtype.itemsize == 0:
            raise EventFileError(f"{self.name}: not a valid numpy .npy file (its records are 0 "
                                 "bytes long)")
        self._dtype = dtype
        self._announced = self._remaining = int(np.prod(shape, dtype=object))
        self.record_bytes = dtype.itemsize  # type: ignore[misc]  # per-instance record size
        return length

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        assert self._dtype is not None
        count = min(len(buf) // self._dtype.itemsize, self._remaining)
        if count == 0:
            if self._remaining == 0:
                self._wanted = len(buf) + 1  # trailing bytes after the array: ignored at finish
            return no_events(), 0
        records = np.frombuffer(buf, dtype=self._dtype, count=count)
        warnings: list[str] = []
        events = events_from_fields(records["t"], records["x"], records["y"], records["p"],
                                    self.name, warnings, seen_polarity=self._seen_polarity)
        for message in warnings:
            self.note(message)
        del records
        self._remaining -= count
        return events, count * self._dtype.itemsize

    def _final_events(self) -> np.ndarray:
        if self.header_complete and self._remaining:
            assert self._dtype is not None
            needed = self._announced * self._dtype.itemsize
            got = (self._announced - self._remaining) * self._dtype.itemsize + len(self._pending)
            raise EventFileError(f"{self.name}: truncated: the .npy header announces {needed} data "
                                 f"bytes but only {got} follow")
        self._pending.clear()  # bytes after the announced array are not a torn record
        return no_events()


class NpyReader(EventReader):
    """numpy ``.npy`` structured arrays with integer fields t, x, y, p (any order, any int
    width)."""

    name = "npy"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(_NPY_MAGIC)

    def decoder(self, name: str = "<stream>") -> Decoder:
        return NpyDecoder(name)
