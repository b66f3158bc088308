"""Writing AEDAT 4.0 files (iniVation DV), events only, as dv-processing's writers lay them out.

A file is:

* the line ``#!AER-DAT4.0\\r\\n``;
* a u32 length and an ``IOHeader`` flatbuffer (identifier "IOHE": the packets' compression, the
  data table's position, an XML description of the stream: type ``EVTS``, sensor size, camera);
* packets of i32 stream id, u32 size and a payload: a size-prefixed "EVTS" flatbuffer of 16-byte
  events (i64 t in us, i16 x, i16 y, u8 polarity, 3 bytes of padding), compressed as the header
  says -- byte for byte the packets of DV's network stream, so they are made by the same encoder
  (`eventformer.live.wire.encode_dv_packet`);
* at `close`, the data table: a size-prefixed "FTAB" flatbuffer (per packet: its payload's byte
  offset, stream id and size, event count, first and last timestamp), compressed like the packets; the
  header's data-table position is then rewritten in place to point at it.

Until `close` the header says "no data table" (position -1), so a recording cut short by a crash
or a killed process is still a valid file that readers read to its last whole packet.
"""

from __future__ import annotations

import os

import numpy as np

from eventformer.errors import EventformerError
from eventformer.events.readers import open_for_writing

MAGIC = b"#!AER-DAT4.0\r\n"
#: Events per packet: about what a DVXplorer sends per packet at a few M events/s; each packet
#: is decompressed whole by readers, so a recording's memory per packet stays small.
PACKET_EVENTS = 8192
#: DV's default for recordings.
DEFAULT_COMPRESSION = "lz4"
_SENSOR_MAX = 65535  # sizeX / sizeY are u16 for AEDAT 4.0 readers


def check_aedat4_writable(compression: str = DEFAULT_COMPRESSION, name: str = "AEDAT 4") -> None:
    """One sentence naming what to install when the packages an AEDAT 4 writer needs are missing
    (flatbuffers, and lz4 or zstandard for those compressions): said before any work."""
    from eventformer.live.wire import DV_COMPRESSION_CODES, _dv_codec, _flatbuffers

    if compression not in DV_COMPRESSION_CODES:
        raise EventformerError(f"{name}: the compression must be one of "
                               f"{', '.join(DV_COMPRESSION_CODES)}, got {compression!r}")
    _flatbuffers()
    _dv_codec(compression, name)


class Aedat4Writer:
    """Create an AEDAT 4.0 file of one event stream (id 0) and append events to it.

    Every `append` is written through to the file (whole packets, none held back); `close`
    writes the data table. Use it as a context manager, or call `close`.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, *,
                 compression: str = DEFAULT_COMPRESSION, camera: str = "eventformer",
                 packet_events: int = PACKET_EVENTS) -> None:
        from eventformer.live.wire import _dv_codec, encode_dv_header

        self.path = os.fspath(path)
        for what, value in (("width", width), ("height", height)):
            if value is None or not 1 <= int(value) <= _SENSOR_MAX:
                raise EventformerError(f"{self.path}: an AEDAT 4 file needs the sensor's {what} "
                                       f"(1 to {_SENSOR_MAX}), got {value}")
        if packet_events < 1:
            raise ValueError(f"packet_events must be positive, got {packet_events}")
        check_aedat4_writable(compression, self.path)
        self.compression = compression
        self.packet_events = packet_events
        self.events = 0
        self._compress = _dv_codec(compression, self.path)[0]
        self._table: list[tuple[int, int, int, int, int]] = []  # offset, size, n, t first, last
        header = encode_dv_header(int(width), int(height), camera, compression)
        self._file = open_for_writing(self.path, lambda p: open(p, "wb"))
        self._file.write(MAGIC + header)
        self._header_at = len(MAGIC) + 4  # where the IOHeader table starts
        self._header = header[4:]
        self._offset = len(MAGIC) + len(header)
        self._file.flush()

    def append(self, events: np.ndarray) -> None:
        """Write ``events`` (EVENT_DTYPE) as whole packets of at most ``packet_events``."""
        from eventformer.live.wire import encode_dv_packet

        if self._file is None:
            raise ValueError(f"{self.path}: the AEDAT 4 writer is closed")
        parts = []
        for start in range(0, events.shape[0], self.packet_events):
            chunk = events[start:start + self.packet_events]
            packet = encode_dv_packet(chunk, self.compression, 0, self.path)
            # the table points at the payload, past the packet's stream id and size
            self._table.append((self._offset + 8, len(packet) - 8, chunk.shape[0],
                                int(chunk["t"][0]), int(chunk["t"][-1])))
            self._offset += len(packet)
            parts.append(packet)
        if parts:
            self._file.write(b"".join(parts))
            self._file.flush()
            self.events += events.shape[0]

    def close(self) -> None:
        """Write the data table and point the header at it."""
        if self._file is None:
            return
        from eventformer.events.formats.aedat4 import _io_header_position_field

        try:
            self._file.write(self._compress(self._data_table()))
            at = _io_header_position_field(self._header, self.path)
            if at is None:  # encode_dv_header always writes the field: never absent
                raise AssertionError("the IOHeader lost its data-table position field")
            self._file.seek(self._header_at + at)
            self._file.write(int(self._offset).to_bytes(8, "little", signed=True))
        finally:
            self._file.close()
            self._file = None

    def _data_table(self) -> bytes:
        """The size-prefixed FTAB flatbuffer of the packets written."""
        from eventformer.live.wire import _flatbuffers

        fb = _flatbuffers()
        builder = fb.Builder(64 + 64 * len(self._table))
        entries = []
        for offset, size, n, first, last in self._table:
            builder.StartObject(5)
            builder.PrependInt64Slot(4, last, 0)
            builder.PrependInt64Slot(3, first, 0)
            builder.PrependInt64Slot(2, n, 0)
            builder.PrependInt64Slot(0, offset, 0)
            # PacketInfo is a struct (i32 stream id, i32 size), stored inline in the table
            builder.Prep(4, 8)
            builder.PrependInt32(size)
            builder.PrependInt32(0)
            builder.PrependStructSlot(1, builder.Offset(), 0)
            entries.append(builder.EndObject())
        builder.StartVector(4, len(entries), 4)
        for entry in reversed(entries):
            builder.PrependUOffsetTRelative(entry)
        vector = builder.EndVector()
        builder.StartObject(1)
        builder.PrependUOffsetTRelativeSlot(0, vector, 0)
        builder.FinishSizePrefixed(builder.EndObject(), file_identifier=b"FTAB")
        return bytes(builder.Output())

    def __enter__(self) -> "Aedat4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_aedat4(path: str | os.PathLike[str], events: np.ndarray, width: int, height: int, *,
                 compression: str = DEFAULT_COMPRESSION, camera: str = "eventformer") -> int:
    """Write ``events`` to an AEDAT 4.0 file; returns the number of events written."""
    with Aedat4Writer(path, width, height, compression=compression, camera=camera) as writer:
        writer.append(events)
    return writer.events
