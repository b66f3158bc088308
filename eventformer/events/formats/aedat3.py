"""AEDAT 3.1 files (cAER / DV; the DVS Gesture recordings): ``#`` header lines from ``#!AER-DAT3.1``
to ``#!END-HEADER``, then packets, little-endian.

Each packet is a 28-byte header -- int16 eventType, int16 eventSource, int32 eventSize,
int32 eventTSOffset, int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber,
int32 eventValid -- followed by eventCapacity x eventSize bytes. Only eventType 1 (polarity)
packets carry events; the others (special, frame, IMU...) are stepped over by their size. A
polarity packet holds eventNumber events (the slots past it, up to eventCapacity, are unused),
each uint32 data + int32 timestamp: valid = data & 1, p = (data >> 1) & 1, y = (data >> 2) & 0x1FFF,
x = (data >> 17) & 0x1FFF, t = (eventTSOverflow << 31) | timestamp. Events whose valid bit is off
were invalidated by a filter upstream and are dropped (that is the format's meaning, not data
loss).

Packets are walked one header at a time (a Python loop over packets, not events); the events of a
packet are decoded as one numpy array. The sensor size comes from a ``#Source N: <chip>`` header
line when it names a known chip (DVS128 -> 128x128, DAVIS240 -> 240x180, ...), else it is None.
"""

from __future__ import annotations

import struct

import numpy as np

from eventformer.events.formats._header import LineHeader, chip_sensor_size
from eventformer.events.readers import EVENT_DTYPE, Decoder, EventFileError, EventReader, no_events

_PACKET_HEADER = struct.Struct("<hhiiiiii")
_POLARITY = 1
_POLARITY_EVENT = np.dtype([("data", "<u4"), ("t", "<u4")])
#: No real packet comes near this; a larger one is a corrupt header, refused before waiting for it.
_MAX_PACKET_BYTES = 1 << 30
_MAGIC = b"#!AER-DAT3"


class Aedat3Decoder(Decoder):
    """Incremental AEDAT 3.1 decoder: whole packets are decoded, a cut packet is held back."""

    format = "aedat3"
    record_bytes = _PACKET_HEADER.size

    def __init__(self, name: str = "<stream>") -> None:
        super().__init__(name)
        self._header = LineHeader(b"#", end_line="#!END-HEADER", implicit_end=False,
                                  label="AEDAT 3 header")

    def _parse_header(self, buf: bytearray, final: bool) -> int | None:
        size = self._header.end(buf, final, self.name)
        if size is not None:
            self.sensor_size = chip_sensor_size(self._header.value("Source"))
        return size

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        parts = []
        position = 0
        end = len(buf)
        while end - position >= _PACKET_HEADER.size:
            kind, _source, size, _offset, overflow, capacity, number, _valid = \
                _PACKET_HEADER.unpack_from(buf, position)
            body = self._packet_body_bytes(position, kind, size, overflow, capacity, number)
            if end - position < _PACKET_HEADER.size + body:
                self._wanted = _PACKET_HEADER.size + body
                break
            if kind == _POLARITY and number:
                parts.append(_polarity_events(buf, position + _PACKET_HEADER.size, size, overflow, number))
            position += _PACKET_HEADER.size + body
        else:
            self._wanted = _PACKET_HEADER.size
        if not parts:
            return no_events(), position
        return (np.concatenate(parts) if len(parts) > 1 else parts[0]), position

    def _packet_body_bytes(self, position: int, kind: int, size: int, overflow: int,
                           capacity: int, number: int) -> int:
        """Size of the packet's body, after checking its header is one a writer could produce."""
        where = self.offset + position
        if size <= 0 or capacity < 0 or number < 0 or overflow < 0 or number > capacity:
            raise EventFileError(
                f"{self.name}: corrupt AEDAT 3 packet header at byte {where} (eventType {kind}, eventSize "
                f"{size}, eventCapacity {capacity}, eventNumber {number}, eventTSOverflow {overflow})")
        if kind == _POLARITY and size < _POLARITY_EVENT.itemsize:
            raise EventFileError(f"{self.name}: corrupt AEDAT 3 polarity packet at byte {where} "
                                 f"({size}-byte events; polarity events take 8)")
        body = capacity * size
        if body > _MAX_PACKET_BYTES:
            raise EventFileError(f"{self.name}: corrupt AEDAT 3 packet header at byte {where} "
                                 f"(it announces {body} bytes of events)")
        return body


def _polarity_events(buf: memoryview, start: int, size: int, overflow: int, number: int) -> np.ndarray:
    """The valid events of one polarity packet, as fresh `EVENT_DTYPE` records."""
    records = np.ndarray((number,), dtype=_POLARITY_EVENT, buffer=buf, offset=start, strides=(size,))
    data = records["data"]
    valid = (data & 1).astype(bool)
    data = data[valid]
    events = np.empty(len(data), dtype=EVENT_DTYPE)
    events["t"] = (np.int64(overflow) << 31) | records["t"][valid].astype(np.int64)
    events["x"] = (data >> 17) & 0x1FFF
    events["y"] = (data >> 2) & 0x1FFF
    events["p"] = (data >> 1) & 1
    return events


class Aedat3Reader(EventReader):
    """AEDAT 3.x (``#!AER-DAT3.1``): polarity packets of cAER / DV recordings."""

    name = "aedat3"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(_MAGIC)

    def decoder(self, name: str = "<stream>") -> Decoder:
        return Aedat3Decoder(name)
