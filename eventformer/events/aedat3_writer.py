"""Writing recordings in the IBM DVS128 Gesture release layout: AEDAT 3.1 event files, the
``_labels.csv`` beside each one, and the ``trials_to_train.txt`` / ``trials_to_test.txt`` lists.

AEDAT 3.1 (little-endian), as cAER wrote the DVS Gesture recordings:

* ASCII header lines starting with ``#`` and ending with ``\\r\\n``; the first is ``#!AER-DAT3.1``
  and the last ``#!END-HEADER``;
* then packets, each a 28-byte header -- int16 eventType, int16 eventSource, int32 eventSize,
  int32 eventTSOffset, int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber,
  int32 eventValid -- followed by eventCapacity x eventSize bytes of events;
* a polarity event (eventType 1, eventSize 8) is uint32 data + int32 timestamp (us), with
  valid = bit 0, p = bit 1, y = bits 2.., x = bits 17..; the full time is
  ``(eventTSOverflow << 31) | timestamp``, so a packet never mixes two overflow epochs.

Everything is vectorised: the whole file is laid out in one int32 buffer (28 and 8 are both
multiples of 4), so writing millions of events costs a few numpy passes.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "POLARITY_EVENT",
    "PACKET_HEADER_BYTES",
    "POLARITY_EVENT_BYTES",
    "aedat31_header",
    "write_aedat31",
    "write_labels_csv",
    "write_trials_list",
]

#: eventType of polarity packets (the only type written).
POLARITY_EVENT = 1
PACKET_HEADER_BYTES = 28
POLARITY_EVENT_BYTES = 8
#: Timestamps are 31-bit; eventTSOverflow counts the wraps.
_TS_BITS = 31
_TS_MASK = (1 << _TS_BITS) - 1
_COORD_MAX = 0x1FFF  # 13 bits each for x and y
_DEFAULT_START = _dt.datetime(2017, 1, 1, 12, 0, 0, tzinfo=_dt.timezone(_dt.timedelta(hours=1)))


def aedat31_header(*, source_name: str = "DVS128", source_id: int = 1,
                   start_time: _dt.datetime | str | None = None) -> bytes:
    """The ASCII header of an AEDAT 3.1 file, ``#!END-HEADER\\r\\n`` included.

    ``start_time`` defaults to a fixed date so that the same events always give the same bytes.
    """
    if start_time is None:
        start_time = _DEFAULT_START
    if isinstance(start_time, _dt.datetime):
        offset = start_time.strftime("%z") or "+0000"
        start_text = start_time.strftime("%Y-%m-%d %H:%M:%S") + f" (TZ{offset})"
    else:
        start_text = str(start_time)
    for text in (source_name, start_text):
        if any(c in text for c in "\r\n") or not text.isascii():
            raise ValueError(f"AEDAT header fields must be single-line ASCII, got {text!r}")
    lines = [
        "#!AER-DAT3.1",
        "#Format: RAW",
        f"#Source {int(source_id)}: {source_name}",
        f"#Start-Time: {start_text}",
        "#!END-HEADER",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _packet_starts(t: np.ndarray, packet_events: int) -> np.ndarray:
    """Start index of every packet: a new one every ``packet_events`` events and wherever the
    timestamp overflow epoch changes (events must be sorted by time for that to be one cut)."""
    n = len(t)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    epoch = t >> _TS_BITS
    cuts = np.flatnonzero(np.diff(epoch)) + 1  # epoch changes
    bounds = np.concatenate(([0], cuts, [n]))
    starts = [np.arange(a, b, packet_events, dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.concatenate(starts) if len(starts) > 1 else starts[0]


def write_aedat31(path: str | os.PathLike[str], events: np.ndarray, *, width: int = 128,
                  height: int = 128, source_name: str = "DVS128", source_id: int = 1,
                  packet_events: int = 4096,
                  start_time: _dt.datetime | str | None = None) -> int:
    """Write ``events`` (structured array with fields t [us], x, y, p) as an AEDAT 3.1 file of
    polarity packets; returns the number of bytes written.

    Events must be sorted by time with ``t >= 0``; timestamps beyond ``2**31 - 1`` us go into
    ``eventTSOverflow`` (packets are cut where the overflow epoch changes). ``width``/``height``
    only validate the coordinates (AEDAT 3.1 headers do not record the sensor size; the source
    name, e.g. ``DVS128``, implies it). Every event is written valid.
    """
    events = np.asarray(events)
    names = events.dtype.names or ()
    missing = [f for f in ("t", "x", "y", "p") if f not in names]
    if missing:
        raise ValueError(f"write_aedat31 needs a structured array with fields t, x, y, p; "
                         f"missing {', '.join(missing)}")
    if packet_events < 1:
        raise ValueError(f"packet_events must be at least 1, got {packet_events}")
    events = events.reshape(-1)
    t = events["t"].astype(np.int64)
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    n = len(t)
    if n:
        if t.min() < 0:
            raise ValueError("AEDAT 3.1 timestamps must be non-negative")
        if np.any(np.diff(t) < 0):
            raise ValueError("events must be sorted by time to be written as AEDAT 3.1")
        if x.min() < 0 or x.max() >= min(width, _COORD_MAX + 1):
            raise ValueError(f"x outside 0..{width - 1}")
        if y.min() < 0 or y.max() >= min(height, _COORD_MAX + 1):
            raise ValueError(f"y outside 0..{height - 1}")
        if not np.isin(p, (0, 1)).all():
            raise ValueError("polarity must be 0 (OFF) or 1 (ON)")
        if (t.max() >> _TS_BITS) > np.iinfo(np.int32).max:
            raise ValueError("timestamps too large for a 32-bit overflow counter")

    starts = _packet_starts(t, packet_events)
    counts = np.diff(np.append(starts, n)).astype(np.int64)
    n_packets = len(starts)
    words_per_header = PACKET_HEADER_BYTES // 4
    buf = np.zeros(n_packets * words_per_header + 2 * n, dtype="<i4")
    if n_packets:
        # word offset of every packet header: all earlier headers plus all earlier events
        head = np.arange(n_packets, dtype=np.int64) * words_per_header + 2 * starts
        buf[head + 0] = POLARITY_EVENT | (int(source_id) << 16)  # int16 type, int16 source
        buf[head + 1] = POLARITY_EVENT_BYTES
        buf[head + 2] = 4  # eventTSOffset: the timestamp is the event's second word
        buf[head + 3] = (t[starts] >> _TS_BITS).astype(np.int32)
        buf[head + 4] = counts  # capacity
        buf[head + 5] = counts  # number
        buf[head + 6] = counts  # valid
        packet_of = np.repeat(np.arange(n_packets, dtype=np.int64), counts)
        word = (packet_of + 1) * words_per_header + 2 * np.arange(n, dtype=np.int64)
        data = (x << 17) | (y << 2) | (p << 1) | 1
        buf[word] = data.astype(np.uint32).view(np.int32)
        buf[word + 1] = (t & _TS_MASK).astype(np.int32)
    header = aedat31_header(source_name=source_name, source_id=source_id, start_time=start_time)
    with open(path, "wb") as f:
        f.write(header)
        f.write(buf.tobytes())
    return len(header) + buf.nbytes


def write_labels_csv(path: str | os.PathLike[str], rows: Iterable[Sequence[int]]) -> None:
    """Write a DVS Gesture ``_labels.csv``: header ``class,startTime_usec,endTime_usec`` and one
    ``class,start,end`` line per row, as given (classes are 1-based in the release: convert
    0-based labels before calling). Lines end with ``\\n`` as in the real files."""
    lines = ["class,startTime_usec,endTime_usec"]
    for row in rows:
        cls, start, end = (int(v) for v in row)
        if end < start:
            raise ValueError(f"label segment ends before it starts: {cls},{start},{end}")
        lines.append(f"{cls},{start},{end}")
    with open(path, "w", newline="\n", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")


def write_trials_list(path: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Write ``trials_to_train.txt`` / ``trials_to_test.txt``: one recording file name per line."""
    names = [str(n) for n in names]
    for name in names:
        if not name or any(c in name for c in "\r\n"):
            raise ValueError(f"invalid recording name {name!r}")
    with open(path, "w", newline="\n", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in names))
