"""What live event cameras put on the wire, decoded (and, for the fake camera, encoded).

UDP datagrams carry no header, so each one is decoded on its own and judged on its own: a datagram
that cannot be events of the chosen layout (a length that is not whole records, a flag where the
layout has none, a pixel outside the sensor the user named) is rejected whole and counted, never
half-decoded. The layouts:

- ``spif`` (aestream, SpiNNaker's SPIF): little-endian u32 words
  ``(x | no_ts << 15) << 16 | (y | p << 15)``. With ``no_ts`` clear the word is followed by a u32
  timestamp in microseconds that wraps every 2^32 us (71.6 min); with it set no time travels, and
  the events get their arrival time (microseconds of the receiver's monotonic clock). aestream
  sends one kind per run; a datagram of the other kind than the stream's first is rejected, so
  camera time and arrival time are never mixed in one stream.
- ``faery-13`` (faery's ``t64_x16_y16_on8``): packed 13-byte records, u64 t, u16 x, u16 y, u8 on.
- ``faery-8`` (faery's ``t32_x16_y15_on1``): packed 8-byte records, u32 t (wrapping), u16 x,
  u16 ``y << 1 | on``.

A wrapping 32-bit clock is unwrapped as faery does it: a step back of more than 2^31 us is the
clock going round, anything smaller is kept as sent (a reordered datagram).

Decoding works on a batch of datagrams at once (the receiver copies them back to back into one
buffer and keeps their lengths): one numpy pass per batch instead of one per datagram, which is
what lets Python keep up with aestream's 512-byte datagrams at millions of events per second.

TCP and standard input carry Prophesee's EVT 2.0 / 3.0 byte streams, decoded by the file
decoders (`eventformer.events.formats`); ``encode_evt2`` / ``encode_evt3`` write them for the fake
camera when its recording is in another format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eventformer.events import EVENT_DTYPE

#: The UDP layouts ``--format`` names, with the bytes of one record (SPIF: a word; 8 with time).
UDP_FORMATS = ("spif", "faery-13", "faery-8")
#: Byte-stream formats (TCP, standard input): the file decoders'.
STREAM_FORMATS = ("evt2", "evt3")

_FAERY13 = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "u1")])  # packed: 13 bytes
_FAERY8 = np.dtype([("t", "<u4"), ("x", "<u2"), ("y_on", "<u2")])
_NO_TS = 0x80000000
_WRAP = 1 << 32
_HALF = 1 << 31


@dataclass
class Batch:
    """Datagrams received back to back: their bytes, each one's length, and each one's arrival
    (microseconds of the receiver's clock, used for SPIF words that carry no time)."""

    data: memoryview
    lengths: np.ndarray
    arrival_us: np.ndarray


@dataclass
class Decoded:
    events: np.ndarray
    rejected_datagrams: int = 0
    rejected_events: int = 0  # records in the rejected datagrams
    reasons: list[str] = field(default_factory=list)


class Unwrapper:
    """Unwraps a 32-bit microsecond clock across datagrams: a step back of more than 2^31 us is
    a wrap (faery's rule), so a reordered datagram keeps its place in time."""

    def __init__(self):
        self.offset = 0
        self.last: int | None = None

    def __call__(self, t32: np.ndarray) -> np.ndarray:
        t = t32.astype(np.int64)
        if not t.shape[0]:
            return t
        prev = np.empty_like(t)
        prev[0] = t[0] if self.last is None else self.last
        prev[1:] = t[:-1]
        wraps = np.cumsum((prev - t) > _HALF)
        out = t + (self.offset + wraps * _WRAP)
        self.offset += int(wraps[-1]) * _WRAP
        self.last = int(t[-1])
        return out


class DatagramDecoder:
    """Decodes batches of datagrams of one UDP layout for a sensor of ``width`` x ``height``."""

    record_bytes = 1
    name = "?"

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height

    def length_ok(self, first_bytes: bytes, n: int) -> bool:
        """A datagram of ``n`` bytes starting with ``first_bytes`` (up to 4) can be records of
        this layout: checked by the receiver before the datagram joins a batch."""
        return n > 0 and n % self.record_bytes == 0

    def decode(self, batch: Batch) -> Decoded:
        out = Decoded(np.empty(0, EVENT_DTYPE))
        if not batch.lengths.shape[0]:
            return out
        events, owner, faults = self._events(batch)
        faults.append((self._outside(events["x"], events["y"]),
                       f"a datagram held a pixel outside the {self.width}x{self.height} sensor "
                       "(--sensor-size)"))
        # a datagram with any bad record is rejected whole: its other records are suspect too
        n = batch.lengths.shape[0]
        bad = np.zeros(n, bool)
        for mask, reason in faults:
            if mask.any():
                bad[owner[mask]] = True
                out.reasons.append(reason)
        if bad.any():
            out.rejected_datagrams = int(bad.sum())
            out.rejected_events = int(np.bincount(owner, minlength=n)[bad].sum())
            events = events[~bad[owner]]
        out.events = self._timed(events)
        return out

    def _events(self, batch: Batch):
        """(events with raw times, each event's datagram, [(bad-event mask, reason)])."""
        raise NotImplementedError

    def _timed(self, events: np.ndarray) -> np.ndarray:
        return events

    def _outside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x < 0) | (y < 0) | (x >= self.width) | (y >= self.height)


def _owners(lengths: np.ndarray, record_bytes: int) -> np.ndarray:
    return np.repeat(np.arange(lengths.shape[0]), lengths // record_bytes)


class SpifDecoder(DatagramDecoder):
    record_bytes = 4
    name = "spif"

    def __init__(self, width: int, height: int):
        super().__init__(width, height)
        self.timed: bool | None = None  # the stream's kind, set by its first datagram
        self.unwrap = Unwrapper()

    def length_ok(self, first_bytes: bytes, n: int) -> bool:
        if n <= 0 or n % 4:
            return False
        if len(first_bytes) >= 4 and not first_bytes[3] & 0x80:  # a timed word: pairs
            return n % 8 == 0
        return True

    def _events(self, batch: Batch):
        lengths = batch.lengths
        per = lengths // 4
        words = np.frombuffer(batch.data, "<u4", count=int(per.sum()))
        starts = np.cumsum(per) - per
        timed_dg = (words[starts] & _NO_TS) == 0
        if self.timed is None:
            self.timed = bool(timed_dg[0])
        owner = np.repeat(np.arange(lengths.shape[0]), per)
        if self.timed:  # (word, time) pairs: the even words of each datagram are events
            is_event = ((np.arange(words.shape[0]) - starts[owner]) % 2) == 0
            ev_words, ev_owner = words[is_event], owner[is_event]
        else:
            ev_words, ev_owner = words, owner
        events = np.empty(ev_words.shape[0], EVENT_DTYPE)
        events["x"] = (ev_words >> 16) & 0x7FFF
        events["y"] = ev_words & 0x7FFF
        events["p"] = (ev_words >> 15) & 1
        if self.timed:
            events["t"] = words[~is_event]  # a time word per event word (lengths are pairs)
        else:
            events["t"] = np.repeat(batch.arrival_us, np.bincount(ev_owner,
                                                                  minlength=lengths.shape[0]))
        faults = [((timed_dg != self.timed)[ev_owner],
                   "a datagram of SPIF words without timestamps came in a stream of timed ones"
                   if self.timed else
                   "a datagram of timed SPIF words came in a stream of words without timestamps"),
                  (((ev_words & _NO_TS) == 0) != self.timed,
                   "a datagram's words do not keep SPIF's timestamp flag")]
        return events, ev_owner, faults

    def _timed(self, events):
        if self.timed:
            events["t"] = self.unwrap(events["t"].astype(np.uint32))
        return events


class Faery13Decoder(DatagramDecoder):
    record_bytes = 13
    name = "faery-13"

    def _events(self, batch: Batch):
        raw = np.frombuffer(batch.data, _FAERY13, count=int(batch.lengths.sum()) // 13)
        events = np.empty(raw.shape[0], EVENT_DTYPE)
        events["t"] = raw["t"].astype(np.int64)
        events["x"] = raw["x"].astype(np.int16)  # above 32767: negative, so outside the sensor
        events["y"] = raw["y"].astype(np.int16)
        events["p"] = raw["on"]
        faults = [((raw["on"] > 1) | (raw["t"] >= (1 << 63)),
                   "a datagram held records that are not faery's 13-byte events")]
        return events, _owners(batch.lengths, 13), faults


class Faery8Decoder(DatagramDecoder):
    record_bytes = 8
    name = "faery-8"

    def __init__(self, width: int, height: int):
        super().__init__(width, height)
        self.unwrap = Unwrapper()

    def _events(self, batch: Batch):
        raw = np.frombuffer(batch.data, _FAERY8, count=int(batch.lengths.sum()) // 8)
        events = np.empty(raw.shape[0], EVENT_DTYPE)
        events["t"] = raw["t"]
        events["x"] = raw["x"].astype(np.int16)
        events["y"] = raw["y_on"] >> 1
        events["p"] = raw["y_on"] & 1
        return events, _owners(batch.lengths, 8), []

    def _timed(self, events):
        events["t"] = self.unwrap(events["t"].astype(np.uint32))
        return events


def datagram_decoder(fmt: str, width: int, height: int) -> DatagramDecoder:
    return {"spif": SpifDecoder, "faery-13": Faery13Decoder,
            "faery-8": Faery8Decoder}[fmt](width, height)


# -- encoders (the fake camera's side) -------------------------------------------------------------

def encode_datagram_records(events: np.ndarray, fmt: str, timed: bool = True) -> bytes:
    """``events`` as the bytes of one or more records of a UDP layout, back to back."""
    x = events["x"].astype(np.uint32)
    y = events["y"].astype(np.uint32)
    p = events["p"].astype(np.uint32) & 1
    if fmt == "spif":
        word = ((x & 0x7FFF) << 16) | (y & 0x7FFF) | (p << 15)
        if not timed:
            return (word | _NO_TS).astype("<u4").tobytes()
        pairs = np.empty((events.shape[0], 2), "<u4")
        pairs[:, 0] = word
        pairs[:, 1] = events["t"].astype(np.int64) & 0xFFFFFFFF
        return pairs.tobytes()
    if fmt == "faery-13":
        out = np.empty(events.shape[0], _FAERY13)
        out["t"], out["x"], out["y"], out["on"] = events["t"], x, y, p
        return out.tobytes()
    if fmt == "faery-8":
        out = np.empty(events.shape[0], _FAERY8)
        out["t"] = events["t"].astype(np.int64) & 0xFFFFFFFF
        out["x"] = x
        out["y_on"] = ((y << 1) & 0xFFFF) | p
        return out.tobytes()
    raise ValueError(f"unknown UDP layout {fmt!r}")


def udp_record_bytes(fmt: str, timed: bool = True) -> int:
    return {"spif": 8 if timed else 4, "faery-13": 13, "faery-8": 8}[fmt]


def prophesee_header(fmt: str, width: int | None, height: int | None) -> bytes:
    """The ``%`` header lines a Prophesee ``.raw`` stream of ``fmt`` starts with."""
    lines = [f"% evt {fmt[-1]}.0"]
    if width and height:
        lines.append(f"% geometry {width}x{height}")
        lines.append(f"% format {fmt.upper()};width={width};height={height}")
    lines.append("% end")
    return ("\n".join(lines) + "\n").encode()


def encode_evt2(events: np.ndarray) -> bytes:
    """EVT 2.0 words: an EV_TIME_HIGH word wherever t >> 6 changes, then CD_ON / CD_OFF words.
    Timestamps must be non-negative and below 2^34 us (EVT 2.0's clock)."""
    t = events["t"].astype(np.int64)
    if t.shape[0] and (t.min() < 0 or t.max() >= 1 << 34):
        raise ValueError("EVT 2.0 holds timestamps from 0 to 2^34 us")
    high = t >> 6
    new_high = np.ones(t.shape[0], bool)
    new_high[1:] = high[1:] != high[:-1]
    cd = ((events["p"].astype(np.uint32) & 1) << 28) | ((t & 0x3F).astype(np.uint32) << 22) | \
        ((events["x"].astype(np.uint32) & 0x7FF) << 11) | (events["y"].astype(np.uint32) & 0x7FF)
    n_high = int(new_high.sum())
    words = np.empty(t.shape[0] + n_high, "<u4")
    # each event's CD word sits after the time-high words up to and including its own
    cd_pos = np.arange(t.shape[0]) + np.cumsum(new_high)
    words[cd_pos] = cd
    words[cd_pos[new_high] - 1] = (8 << 28) | (high[new_high] & 0x0FFFFFFF).astype(np.uint32)
    return words.tobytes()


def encode_evt3(events: np.ndarray) -> bytes:
    """EVT 3.0 words, plainly: TIME_HIGH where t >> 12 changes, TIME_LOW where t changes, ADDR_Y
    where y changes, then one ADDR_X per event (no vectors). Timestamps must not go backwards
    (EVT 3.0 keeps only a 24-bit clock and unwraps it forwards)."""
    t = events["t"].astype(np.int64)
    if t.shape[0] and (t.min() < 0 or np.any(np.diff(t) < 0)):
        raise ValueError("EVT 3.0 is written here from non-negative timestamps in order")
    n = t.shape[0]
    high = (t >> 12) & 0xFFF
    # every step of t >> 12 gets a TIME_HIGH word (the decoder counts its wraps from them)
    new_high = np.ones(n, bool)
    new_high[1:] = (t[1:] >> 12) != (t[:-1] >> 12)
    new_low = np.ones(n, bool)
    new_low[1:] = t[1:] != t[:-1]
    y = events["y"].astype(np.int64)
    new_y = np.ones(n, bool)
    new_y[1:] = y[1:] != y[:-1]
    per = new_high.astype(np.int64) + new_low + new_y + 1
    end = np.cumsum(per)
    words = np.empty(int(end[-1]) if n else 0, "<u2")
    pos = end - per
    # a jump of several TIME_HIGH periods (over 8.4 s) must still count each wrap of 2^24 us:
    # the decoder sees a wrap where TIME_HIGH falls by more than half its range
    jumps = np.diff(t >> 12, prepend=(t[0] >> 12) if n else 0)
    if n and np.any(jumps >= 0x800):
        raise ValueError("EVT 3.0 is written here only for recordings without jumps of 8.4 s "
                         "or more between events")
    words[pos[new_high]] = (8 << 12) | high[new_high]
    pos = pos + new_high
    words[pos[new_low]] = (6 << 12) | (t[new_low] & 0xFFF)
    pos = pos + new_low
    words[pos[new_y]] = y[new_y] & 0x7FF
    pos = pos + new_y
    words[pos] = (2 << 12) | ((events["p"].astype(np.int64) & 1) << 11) | \
        (events["x"].astype(np.int64) & 0x7FF)
    return words.tobytes()


# -- iniVation DV's network stream -----------------------------------------------------------------
#
# What dv-processing's NetworkWriter (and DV's network output modules) send to each client: a u32
# length and an IOHeader flatbuffer (identifier "IOHE": the packets' compression, and an XML
# description of the stream: type identifier, sensor size, camera name), then packets of u32
# stream id, u32 size and a payload -- a size-prefixed "EVTS" flatbuffer (a vector of 16-byte
# events: i64 t in us, i16 x, i16 y, u8 polarity, 3 bytes of padding), compressed as the header
# says. It is an AEDAT 4.0 file without its "#!AER-DAT4.0" line and its data table, so the header
# is checked by the AEDAT 4.0 reader's own validation.

#: IOHeader's compression field, as dv-processing numbers it.
DV_COMPRESSIONS = {0: "none", 1: "lz4", 2: "lz4-high", 3: "zstd", 4: "zstd-high"}
DV_COMPRESSION_CODES = {name: code for code, name in DV_COMPRESSIONS.items()}
#: One event in an EVTS packet.
DV_EVENT = np.dtype({"names": ["t", "x", "y", "p"], "formats": ["<i8", "<i2", "<i2", "u1"],
                     "offsets": [0, 8, 10, 12], "itemsize": 16})
_DV_PACKET = (4 + 4)
#: No real header or packet comes near these; larger ones are garbage, refused before waiting.
_DV_MAX_HEADER = 16 << 20
_DV_MAX_PACKET = 1 << 30
LIVE_EXTRA_HINT = "pip install 'eventformer[live]'"


def _dv_codec(compression: str, name: str):
    """(compress, decompress) for a DV compression, or one sentence naming what to install."""
    try:
        if compression.startswith("lz4"):
            import lz4.frame as lz4f

            level = 9 if compression == "lz4-high" else 0
            return (lambda b: lz4f.compress(b, compression_level=level)), lz4f.decompress
        if compression.startswith("zstd"):
            import zstandard

            level = 19 if compression == "zstd-high" else 3
            # a stream's packets are small: one (de)compressor each, reused for every packet
            c, d = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
            return c.compress, lambda b: d.decompress(b, max_output_size=_DV_MAX_PACKET)
    except ImportError:
        from eventformer.errors import EventformerError

        raise EventformerError(f"{name}: the stream is {compression.upper()}-compressed, which "
                               f"needs the optional {compression[:4].rstrip('-')} package: "
                               f"{LIVE_EXTRA_HINT}") from None
    return (lambda b: bytes(b)), (lambda b: bytes(b))


def _flatbuffers():
    try:
        import flatbuffers
    except ImportError:
        from eventformer.errors import EventformerError

        raise EventformerError("a DV network stream needs the optional flatbuffers package: "
                               f"{LIVE_EXTRA_HINT}") from None
    return flatbuffers


def dv_description(width: int, height: int, camera: str, compression: str,
                   stream_id: int = 0) -> str:
    """The XML a DV event stream's IOHeader carries (as dv-processing writes it)."""
    base = f"/outInfo/{stream_id}/"
    return (f'<dv version="2.0">\n    <node name="outInfo" path="/outInfo/">\n'
            f'        <node name="{stream_id}" path="{base}">\n'
            f'            <attr key="compression" type="string">{compression.upper().replace("-", "_")}</attr>\n'
            '            <attr key="originalModuleName" type="string">eventformer</attr>\n'
            '            <attr key="originalOutputName" type="string">events</attr>\n'
            '            <attr key="typeIdentifier" type="string">EVTS</attr>\n'
            f'            <node name="info" path="{base}info/">\n'
            f'                <attr key="sizeX" type="int">{width}</attr>\n'
            f'                <attr key="sizeY" type="int">{height}</attr>\n'
            f'                <attr key="source" type="string">{camera}</attr>\n'
            '            </node>\n        </node>\n    </node>\n</dv>\n')


def encode_dv_header(width: int, height: int, camera: str, compression: str) -> bytes:
    """The u32 length and IOHeader a DV network stream starts with."""
    fb = _flatbuffers()
    builder = fb.Builder(1024)
    text = builder.CreateString(dv_description(width, height, camera, compression))
    builder.StartObject(3)
    builder.PrependInt32Slot(0, DV_COMPRESSION_CODES[compression], -1)  # always written
    builder.PrependInt64Slot(1, -1, 0)  # no data table on a network stream
    builder.PrependUOffsetTRelativeSlot(2, text, 0)
    builder.Finish(builder.EndObject(), file_identifier=b"IOHE")
    table = bytes(builder.Output())
    return len(table).to_bytes(4, "little") + table


def encode_dv_packet(events: np.ndarray, compression: str, stream_id: int = 0,
                     name: str = "<dv>") -> bytes:
    """One packet (stream id, size, payload) holding ``events`` as a size-prefixed EVTS table."""
    fb = _flatbuffers()
    records = np.zeros(events.shape[0], DV_EVENT)
    for key in ("t", "x", "y", "p"):
        records[key] = events[key]
    raw = records.tobytes()
    builder = fb.Builder(len(raw) + 64)
    # a vector of structs: its bytes are the records themselves, 8-byte aligned for the i64
    builder.StartVector(DV_EVENT.itemsize, events.shape[0], 8)
    builder.head -= len(raw)
    builder.Bytes[builder.head:builder.head + len(raw)] = raw
    vector = builder.EndVector()
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, vector, 0)
    builder.FinishSizePrefixed(builder.EndObject(), file_identifier=b"EVTS")
    payload = _dv_codec(compression, name)[0](bytes(builder.Output()))
    return np.array([stream_id, len(payload)], "<u4").tobytes() + payload


def _dv_streams(description: str, name: str) -> list[dict]:
    """The event streams an IOHeader's XML declares: id, width, height, camera."""
    import xml.etree.ElementTree as ET

    from eventformer.errors import EventformerError

    try:
        root = ET.fromstring(description.rstrip("\0"))
    except ET.ParseError:
        raise EventformerError(f"{name}: not a DV event stream (its header's description is not "
                               "XML)") from None
    found = []
    for node in root.iter("node"):
        attrs = {a.get("key"): a.text for a in node.findall("attr")}
        if attrs.get("typeIdentifier") != "EVTS" or not (node.get("name") or "").isdigit():
            continue
        info = next((n for n in node.findall("node") if n.get("name") == "info"), None)
        info_attrs = {a.get("key"): a.text for a in info.findall("attr")} if info is not None \
            else {}
        try:
            size = (int(info_attrs["sizeX"]), int(info_attrs["sizeY"]))
        except (KeyError, TypeError, ValueError):
            size = None
        found.append({"id": int(node.get("name")), "sensor_size": size,
                      "camera": info_attrs.get("source") or ""})
    return sorted(found, key=lambda s: s["id"])


def _dv_decoder_class():
    """`DvStreamDecoder`, built on the file decoders' base (imported late: the events package
    imports this module's users)."""
    from eventformer.events.formats.aedat4 import _io_header_position_field
    from eventformer.events.readers import Decoder, EventFileError, events_from_fields, no_events

    class DvStreamDecoder(Decoder):
        """A DV network stream's bytes in, in pieces of any size; the events of its first event
        stream out. Other streams' packets (frames, IMU, triggers) are skipped and counted."""

        format = "dv"
        record_bytes = _DV_PACKET

        def __init__(self, name: str = "<dv>"):
            super().__init__(name)
            self.compression: str | None = None
            self.camera = ""
            self.stream_id: int | None = None
            self.packets = 0
            self.packets_skipped = 0
            self._decompress = None

        def _garbage(self, what: str) -> EventFileError:
            return EventFileError(f"{self.name}: garbage in the DV stream at byte {self.offset}"
                                  f" ({what})")

        def _parse_header(self, buf: bytearray, final: bool) -> int | None:
            if len(buf) < 8:
                self._wanted = 8
                return None
            length = int.from_bytes(buf[:4], "little")
            if bytes(buf[8:12]) != b"IOHE" and len(buf) >= 12 or length > _DV_MAX_HEADER or \
                    length < 12:
                raise EventFileError(f"{self.name}: not a DV network stream (it does not start "
                                     "with an IOHeader: is the server a DV/dv-processing "
                                     "network output?)")
            if len(buf) < 4 + length:
                self._wanted = 4 + length
                return None
            header = bytes(buf[4:4 + length])
            try:
                _io_header_position_field(header, self.name)  # bounds and text, checked
            except EventFileError as exc:
                raise EventFileError(f"{self.name}: corrupt DV stream header "
                                     f"({str(exc).rsplit('(', 1)[-1]}") from None
            fb = _flatbuffers()
            table = fb.table.Table(bytearray(header), int.from_bytes(header[:4], "little"))
            slot = table.Offset(4)
            code = table.Get(fb.number_types.Int32Flags, slot + table.Pos) if slot else 0
            if code not in DV_COMPRESSIONS:
                raise EventFileError(f"{self.name}: the DV stream's header names compression "
                                     f"{code}, which is not one dv-processing writes (none, "
                                     "LZ4, LZ4 high, Zstd, Zstd high)")
            self.compression = DV_COMPRESSIONS[code]
            slot = table.Offset(8)
            text = table.String(slot + table.Pos).decode() if slot else ""
            streams = _dv_streams(text, self.name)
            if not streams:
                raise EventFileError(f"{self.name}: the DV stream declares no event stream "
                                     "(typeIdentifier EVTS): is it a frame or IMU output?")
            first = streams[0]
            self.stream_id, self.camera = first["id"], first["camera"]
            self.sensor_size = first["sensor_size"]
            if len(streams) > 1:
                self.note(f"only event stream {self.stream_id} is read; the stream has "
                          f"{len(streams)}")
            self._decompress = _dv_codec(self.compression, self.name)[1]
            return 4 + length

        def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
            position, parts = 0, []
            while True:
                if len(buf) - position < _DV_PACKET:
                    self._wanted = _DV_PACKET
                    break
                stream, size = np.frombuffer(buf, "<u4", 2, position)
                if size > _DV_MAX_PACKET or size == 0:
                    raise self._garbage(f"a packet announces {int(size)} bytes")
                if len(buf) - position < _DV_PACKET + size:
                    self._wanted = _DV_PACKET + int(size)
                    break
                payload = buf[position + _DV_PACKET:position + _DV_PACKET + size]
                self.packets += 1
                if stream == self.stream_id:
                    parts.append(self._packet_events(payload))
                else:
                    self.packets_skipped += 1
                position += _DV_PACKET + int(size)
            if not parts:
                return no_events(), position
            raw = np.concatenate(parts) if len(parts) > 1 else parts[0]
            warnings: list[str] = []
            events = events_from_fields(raw["t"], raw["x"], raw["y"], raw["p"], self.name,
                                        warnings)
            for message in warnings:
                self.note(message)
            return events, position

        def _packet_events(self, payload) -> np.ndarray:
            try:
                data = self._decompress(payload)
            except Exception as exc:  # lz4 / zstandard raise their own error types
                raise self._garbage(f"a packet does not decompress as {self.compression}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
                    from None
            # dv-processing size-prefixes its tables; DV's files do not: accept both
            start = 4 if len(data) >= 12 and int.from_bytes(data[:4], "little") == \
                len(data) - 4 and data[8:12] == b"EVTS" else 0
            if len(data) < start + 8 or data[start + 4:start + 8] != b"EVTS":
                raise self._garbage("a packet of the event stream is not an EVTS table")
            try:
                root = start + int.from_bytes(data[start:start + 4], "little")
                vtable = root - int.from_bytes(data[root:root + 4], "little", signed=True)
                vsize = int.from_bytes(data[vtable:vtable + 2], "little")
                field = int.from_bytes(data[vtable + 4:vtable + 6], "little") if vsize >= 6 \
                    else 0
                if not field:
                    return no_events()
                at = root + field
                vector = at + int.from_bytes(data[at:at + 4], "little")
                n = int.from_bytes(data[vector:vector + 4], "little")
                if vector + 4 + 16 * n > len(data) or vtable < 0 or root + 4 > len(data):
                    raise ValueError
                return np.frombuffer(data, DV_EVENT, n, vector + 4).copy()
            except (ValueError, IndexError):
                raise self._garbage("an EVTS table points outside its packet") from None

    return DvStreamDecoder


def dv_stream_decoder(name: str):
    """A decoder of DV's network stream (see `encode_dv_header`)."""
    return _dv_decoder_class()(name)
