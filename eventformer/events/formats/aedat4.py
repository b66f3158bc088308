"""AEDAT 4.0 files (iniVation DV): ``#!AER-DAT4.0\\r\\n``, a uint32 length and a FlatBuffers
``IOHeader`` (compression, data-table position, XML description of the streams), then packets of
int32 stream id + uint32 size + a FlatBuffers payload, LZ4- or Zstd-compressed as the header says,
then (in a finished file) a data table from the header's data-table position on.

Decompressing and parsing the payloads is left to the optional ``aedat`` package
(``pip install 'eventformer[aedat4]'``), which reads only from a path. So this decoder does the
framing itself -- it knows where each packet ends, holds back a packet cut in half, and stops at
the data table -- and hands each run of complete packets to ``aedat`` as a small temporary file
made of the file's own header (its data-table position cleared, so ``aedat`` reads to the end of
the piece) and those packets. Memory stays bounded by the packets of one chunk, and a file still
being written can be followed packet by packet.

The events of the first event stream (lowest id) are returned; other event streams (a second
camera) are ignored with a warning. Timestamps are DV's absolute Unix-epoch microseconds.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any

import numpy as np

from eventformer.events.readers import Decoder, EventFileError, EventReader, events_from_fields, no_events

_MAGIC = b"#!AER-DAT4.0\r\n"
_PACKET = struct.Struct("<iI")
_PREAMBLE = len(_MAGIC) + 4
#: No real IOHeader or packet comes near this; larger ones are corrupt, refused before waiting for them.
_MAX_HEADER_BYTES = 64 << 20
_MAX_PACKET_BYTES = 1 << 30
INSTALL_HINT = "pip install 'eventformer[aedat4]'"


def _aedat_module(name: str) -> Any:
    try:
        import aedat  # type: ignore[import-not-found]
    except ImportError:
        raise EventFileError(f"{name}: is an AEDAT 4.0 recording, which needs the optional 'aedat' package "
                             f"to decompress its packets: {INSTALL_HINT}") from None
    return aedat


def aedat4_available() -> bool:
    """True when the optional ``aedat`` package is installed."""
    try:
        import aedat  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def _io_header_position_field(header: bytes, name: str) -> int | None:
    """Where the IOHeader keeps its data-table position (an offset into ``header``), or None when
    the field is absent (its default, -1, then applies).

    Also checks the whole table is well formed -- root and vtable inside the buffer, each field
    inside it, the description a length-prefixed UTF-8 string inside it -- because ``aedat`` reads
    the IOHeader without verification, and a corrupt one must be refused here, as a sentence.
    """
    def corrupt(what: str) -> EventFileError:
        return EventFileError(f"{name}: corrupt AEDAT 4.0 header ({what})")

    def scalar(fmt: str, at: int) -> int:
        if at < 0 or at + struct.calcsize(fmt) > len(header):
            raise corrupt("its IOHeader table points outside itself")
        return struct.unpack_from(fmt, header, at)[0]

    table = scalar("<I", 0)
    vtable = table - scalar("<i", table)
    vtable_size, table_size = scalar("<H", vtable), scalar("<H", vtable + 2)
    if vtable_size < 4 or vtable_size % 2 or table + table_size > len(header):
        raise corrupt("its IOHeader table has an impossible layout")
    fields = [scalar("<H", vtable + 4 + 2 * i) if 4 + 2 * i + 2 <= vtable_size else 0 for i in range(3)]
    for index, width in ((0, 4), (1, 8), (2, 4)):
        if fields[index] and fields[index] + width > table_size:
            raise corrupt("an IOHeader field lies outside its table")
    if fields[2]:
        text_at = table + fields[2] + scalar("<I", table + fields[2])
        length = scalar("<I", text_at)
        if text_at + 4 + length + 1 > len(header):
            raise corrupt("its stream description runs past the header")
        try:
            header[text_at + 4:text_at + 4 + length].decode("utf-8")
        except UnicodeDecodeError:
            raise corrupt("its stream description is not UTF-8 text") from None
    return table + fields[1] if fields[1] else None


class Aedat4Decoder(Decoder):
    """Incremental AEDAT 4.0 framing; payloads decoded by ``aedat`` (see the module docstring)."""

    format = "aedat4"
    record_bytes = _PACKET.size

    def __init__(self, name: str = "<stream>") -> None:
        self._aedat = _aedat_module(name)
        super().__init__(name)
        self._preamble = b""       # magic + length + IOHeader, with the data-table position cleared
        self._data_table = -1      # absolute offset where packets end (-1: until the end of the file)
        self._stream_id: int | None = None
        self._in_data_table = False

    # -- header ----------------------------------------------------------------------------------

    def _parse_header(self, buf: bytearray, final: bool) -> int | None:
        if len(buf) < _PREAMBLE:
            self._wanted = _PREAMBLE
            return None
        if bytes(buf[:len(_MAGIC)]) != _MAGIC:
            raise EventFileError(f"{self.name}: not an AEDAT 4.0 file (it does not start with '#!AER-DAT4.0')")
        length = struct.unpack_from("<I", buf, len(_MAGIC))[0]
        if length > _MAX_HEADER_BYTES:
            raise EventFileError(f"{self.name}: corrupt AEDAT 4.0 header (it announces {length} bytes)")
        if len(buf) < _PREAMBLE + length:
            self._wanted = _PREAMBLE + length
            return None
        header = bytearray(buf[_PREAMBLE:_PREAMBLE + length])
        position_at = _io_header_position_field(bytes(header), self.name)
        if position_at is not None:
            self._data_table = struct.unpack_from("<q", header, position_at)[0]
            struct.pack_into("<q", header, position_at, -1)
        self._preamble = bytes(buf[:_PREAMBLE]) + bytes(header)
        self._choose_stream()
        return _PREAMBLE + length

    def _choose_stream(self) -> None:
        streams = self._run_aedat(b"", lambda decoder: decoder.id_to_stream())
        event_ids = sorted(i for i, s in streams.items() if s.get("type") == "events")
        if not event_ids:
            self.note("the file declares no event stream, so it holds no events")
            return
        self._stream_id = event_ids[0]
        chosen = streams[self._stream_id]
        if chosen.get("width") and chosen.get("height"):
            self.sensor_size = (int(chosen["width"]), int(chosen["height"]))
        if len(event_ids) > 1:
            self.note(f"only event stream {self._stream_id} is read; the file has {len(event_ids)} "
                      f"(ids {', '.join(map(str, event_ids))})")

    # -- packets ---------------------------------------------------------------------------------

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        if self._in_data_table:
            self._wanted = 1
            return no_events(), len(buf)
        position = self._complete_packets(buf)
        if position == 0:
            return no_events(), 0
        if self._in_data_table:
            end = self._data_table - self.offset
            events = self._decode_packets(bytes(buf[:end])) if end > 0 else no_events()
            return events, len(buf)
        return self._decode_packets(bytes(buf[:position])), position

    def _complete_packets(self, buf: memoryview) -> int:
        """Bytes of ``buf`` made of whole packets (noting when the data table is reached)."""
        position = 0
        end = len(buf)
        while True:
            if 0 <= self._data_table <= self.offset + position:
                self._in_data_table = True
                self._wanted = 1
                return end
            if end - position < _PACKET.size:
                self._wanted = _PACKET.size
                return position
            _stream, size = _PACKET.unpack_from(buf, position)
            if size > _MAX_PACKET_BYTES:
                raise EventFileError(f"{self.name}: corrupt AEDAT 4.0 packet at byte {self.offset + position} "
                                     f"(it announces {size} bytes)")
            if end - position < _PACKET.size + size:
                self._wanted = _PACKET.size + size
                return position
            position += _PACKET.size + size

    def _decode_packets(self, packets: bytes) -> np.ndarray:
        if self._stream_id is None or not packets:
            return no_events()
        arrays = self._run_aedat(packets, self._events_of_stream)
        if not arrays:
            return no_events()
        raw = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        warnings: list[str] = []
        events = events_from_fields(raw["t"], raw["x"], raw["y"], raw["p"].astype(np.uint8), self.name, warnings)
        for message in warnings:
            self.note(message)
        return events

    def _events_of_stream(self, decoder: Any) -> list[np.ndarray]:
        return [packet["events"] for packet in decoder
                if packet.get("stream_id") == self._stream_id and "events" in packet]

    def _run_aedat(self, packets: bytes, use: Any) -> Any:
        """Run ``use(aedat.Decoder)`` on a temporary file of this file's header plus ``packets``."""
        handle, path = tempfile.mkstemp(suffix=".aedat4", prefix="eventformer-")
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(self._preamble)
                f.write(packets)
            try:
                return use(self._aedat.Decoder(path))
            except (KeyboardInterrupt, SystemExit, MemoryError):
                raise
            except BaseException as exc:  # noqa: BLE001  Rust errors, and Rust panics (pyo3 raises those as BaseException)
                text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                where = "header" if not packets else "packets"
                raise EventFileError(f"{self.name}: corrupt AEDAT 4.0 {where} ({text})") from None
        finally:
            os.unlink(path)


class Aedat4Reader(EventReader):
    """AEDAT 4.0 (``#!AER-DAT4.0``) through the optional ``aedat`` package."""

    name = "aedat4"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(_MAGIC[:12])

    def decoder(self, name: str = "<stream>") -> Decoder:
        return Aedat4Decoder(name)
