"""Prophesee EVT 3.0 ``.raw`` files: ``%`` header lines, then little-endian 16-bit words.

The word type sits in bits 15..12:

====  ============  ===========================================================================
0     ADDR_Y        y = bits 10..0 (bit 11: master/slave, ignored); sets the current row
2     ADDR_X        one event at x = bits 10..0, polarity bit 11, current row and time
3     VECT_BASE_X   base x = bits 10..0 and polarity bit 11 for the vectors that follow
4     VECT_12       12-bit mask: an event at base x + i for each set bit i; then base x += 12
5     VECT_8        8-bit mask, likewise; then base x += 8
6     TIME_LOW      time bits 11..0
8     TIME_HIGH     time bits 23..12
7/10/14/15        CONTINUED_4, EXT_TRIGGER, OTHERS, CONTINUED_12: no CD events, skipped
====  ============  ===========================================================================

t = loops * 2**24 + (time_high << 12) + time_low microseconds, where ``loops`` counts wraps of the
24-bit clock (every 16.8 s): a TIME_HIGH more than half its range below the previous one. Every
other backward step is kept as recorded (sensors emit a few out of order) and shows up as a
"timestamps go backwards" warning.

The decoder is stateful (current row, time, vector base, polarity carry over from word to word and
across chunk boundaries), so it runs word by word in Numba.

Note on expelliarmus: its EVT 3 reader (1.1.x) adds 4096 us whenever TIME_LOW decreases, even when
TIME_HIGH has already announced the carry and for the small out-of-order steps above, so its
timestamps run ahead of the sensor clock (for ``evt3_sample.raw``: 53.9 ms instead of the 8.8 ms the
words encode). x, y, p and the order of events agree exactly; t is decoded per Prophesee's format.
"""

from __future__ import annotations

import numpy as np

from eventformer.events.formats._header import PropheseeRawDecoder, header_lines, prophesee_encoding
from eventformer.events.readers import EVENT_DTYPE, Decoder, EventReader, no_events

from ...jit import kernel

# Decoder state carried across chunks, as one int64 array so the Numba kernel can update it.
_Y, _TIME_HIGH, _TIME_LOW, _LOOPS, _BASE_X, _POLARITY, _UNKNOWN = range(7)
_STATE_SIZE = 7


@kernel
def _count_evt3_events(words):
    """Events the words will produce (ADDR_X words plus the set bits of vector masks)."""
    count = 0
    for i in range(words.size):
        word = np.int64(words[i])
        kind = word >> 12
        if kind == 2:
            count += 1
        elif kind == 4 or kind == 5:
            mask = word & (0xFFF if kind == 4 else 0xFF)
            while mask:
                mask &= mask - 1
                count += 1
    return count


@kernel
def _decode_evt3_words(words, state, t_out, x_out, y_out, p_out):
    """Decode ``words`` into the output columns, starting from and updating ``state``."""
    y = state[_Y]
    time_high = state[_TIME_HIGH]
    time_low = state[_TIME_LOW]
    loops = state[_LOOPS]
    base_x = state[_BASE_X]
    polarity = state[_POLARITY]
    unknown = state[_UNKNOWN]
    t = (loops << 24) + (time_high << 12) + time_low
    n = 0
    for i in range(words.size):
        word = np.int64(words[i])
        kind = word >> 12
        if kind == 0:
            y = word & 0x7FF
        elif kind == 2:
            t_out[n] = t
            x_out[n] = word & 0x7FF
            y_out[n] = y
            p_out[n] = (word >> 11) & 1
            n += 1
        elif kind == 3:
            base_x = word & 0x7FF
            polarity = (word >> 11) & 1
        elif kind == 4 or kind == 5:
            width = 12 if kind == 4 else 8
            mask = word & ((1 << width) - 1)
            for k in range(width):
                if (mask >> k) & 1:
                    t_out[n] = t
                    x_out[n] = (base_x + k) & 0x7FFF
                    y_out[n] = y
                    p_out[n] = polarity
                    n += 1
            base_x = (base_x + width) & 0xFFFF
        elif kind == 6:
            time_low = word & 0xFFF
            t = (loops << 24) + (time_high << 12) + time_low
        elif kind == 8:
            new_high = word & 0xFFF
            if time_high - new_high > 0x800:
                loops += 1
            time_high = new_high
            t = (loops << 24) + (time_high << 12) + time_low
        elif kind != 7 and kind != 10 and kind != 14 and kind != 15:
            unknown += 1
    state[_Y] = y
    state[_TIME_HIGH] = time_high
    state[_TIME_LOW] = time_low
    state[_LOOPS] = loops
    state[_BASE_X] = base_x
    state[_POLARITY] = polarity
    state[_UNKNOWN] = unknown
    return n


class Evt3Decoder(PropheseeRawDecoder):
    """Incremental EVT 3.0 decoder; see the module docstring for the word layout and clock."""

    format = "evt3"
    record_bytes = 2

    header_label = "EVT 3.0 header"

    def __init__(self, name: str = "<stream>") -> None:
        super().__init__(name)
        self._state = np.zeros(_STATE_SIZE, dtype=np.int64)

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        used = len(buf) - len(buf) % 2
        if not used:
            return no_events(), 0
        words = np.frombuffer(buf, dtype="<u2", count=used // 2)
        count = _count_evt3_events(words)
        t = np.empty(count, dtype=np.int64)
        x = np.empty(count, dtype=np.int16)
        y = np.empty(count, dtype=np.int16)
        p = np.empty(count, dtype=np.uint8)
        _decode_evt3_words(words, self._state, t, x, y, p)
        del words
        if self._state[_UNKNOWN]:
            self.note("words of unknown EVT 3.0 types were skipped")
        events = np.empty(count, dtype=EVENT_DTYPE)
        events["t"], events["x"], events["y"], events["p"] = t, x, y, p
        return events, used


class Evt3Reader(EventReader):
    """Prophesee EVT 3.0 (``% evt 3.0`` or ``% format EVT3`` in the header)."""

    name = "evt3"

    def sniff(self, head: bytes, size: int) -> bool:
        return prophesee_encoding(header_lines(head, b"%")) == "evt3"

    def decoder(self, name: str = "<stream>") -> Decoder:
        return Evt3Decoder(name)
