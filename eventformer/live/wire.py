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
