"""Prophesee DAT files (N-CARS, ATIS recordings): ``%`` header lines, then two bytes (event type,
event size), then fixed-size little-endian records of uint32 t (us) and uint32 data with
x = data & 0x3FFF, y = (data >> 14) & 0x3FFF, p = data >> 28 (any non-zero value is ON).

Records larger than 8 bytes (the event size byte) are read by their first 8 bytes; smaller ones
cannot hold an event and are refused.
"""

from __future__ import annotations

import numpy as np

from eventformer.events.formats._header import LineHeader, header_lines, prophesee_encoding, prophesee_sensor_size
from eventformer.events.readers import EVENT_DTYPE, Decoder, EventFileError, EventReader, no_events


class DatDecoder(Decoder):
    """Incremental DAT decoder: stateless records after the header and its type/size bytes."""

    format = "dat"
    record_bytes = 8

    def __init__(self, name: str = "<stream>") -> None:
        super().__init__(name)
        self._header = LineHeader(b"%", end_line="% end", label="DAT header")
        self._text_bytes: int | None = None

    def _parse_header(self, buf: bytearray, final: bool) -> int | None:
        if self._text_bytes is None:
            self._text_bytes = self._header.end(buf, final, self.name)
            if self._text_bytes is None:
                return None
            self.sensor_size = prophesee_sensor_size(self._header.lines)
        if len(buf) < self._text_bytes + 2:
            if final and len(buf) == self._text_bytes:
                return self._text_bytes  # a header and nothing else: an empty recording
            self._wanted = self._text_bytes + 2
            return None
        event_size = buf[self._text_bytes + 1]
        if event_size < 8:
            raise EventFileError(f"{self.name}: the DAT header announces {event_size}-byte events, "
                                 "too small for a timestamp and an address (8 bytes)")
        self.record_bytes = event_size  # type: ignore[misc]  # per-instance record size
        return self._text_bytes + 2

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        size = self.record_bytes
        count = len(buf) // size
        if not count:
            return no_events(), 0
        words = np.frombuffer(buf, dtype="<u4", count=count * size // 4).reshape(count, size // 4) \
            if size % 4 == 0 else self._records_as_words(buf, count, size)
        t, data = words[:, 0], words[:, 1]
        events = np.empty(count, dtype=EVENT_DTYPE)
        events["t"] = t
        events["x"] = data & 0x3FFF
        events["y"] = (data >> 14) & 0x3FFF
        events["p"] = (data >> 28) != 0
        return events, count * size

    @staticmethod
    def _records_as_words(buf: memoryview, count: int, size: int) -> np.ndarray:
        """The first two uint32 of each record when the record size is not a multiple of 4."""
        raw = np.frombuffer(buf, dtype=np.uint8, count=count * size).reshape(count, size)[:, :8]
        return np.ascontiguousarray(raw).view("<u4")


class DatReader(EventReader):
    """Prophesee DAT: a ``%`` header that declares no EVT encoding but reads like a DAT header
    (``% Data file ...`` or ``% Version ...``)."""

    name = "dat"

    def sniff(self, head: bytes, size: int) -> bool:
        lines = header_lines(head, b"%")
        if not lines or prophesee_encoding(lines) is not None:
            return False
        return any(line.lstrip("% ").lower().startswith(("data file", "version")) for line in lines)

    def decoder(self, name: str = "<stream>") -> Decoder:
        return DatDecoder(name)
