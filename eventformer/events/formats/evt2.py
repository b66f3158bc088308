"""Prophesee EVT 2.0 ``.raw`` files: ``%`` header lines, then little-endian 32-bit words.

The word type sits in bits 31..28: 0 CD_OFF and 1 CD_ON (t_low in bits 27..22, x in 21..11, y in
10..0), 8 EV_TIME_HIGH (bits 27..0 are the timestamp's upper 28 bits), 10 EXT_TRIGGER, 14 OTHERS,
15 CONTINUED. t = (time_high << 6) | t_low microseconds: a 34-bit clock, about 4.8 hours, so no
unwrapping is needed. Decoding is vectorised over a whole chunk; the only state crossing chunk
boundaries is the last time_high.
"""

from __future__ import annotations

import numpy as np

from eventformer.events.formats._header import (PropheseeRawDecoder, header_lines,
                                                 prophesee_encoding)
from eventformer.events.readers import EVENT_DTYPE, Decoder, EventReader, no_events

_CD_OFF, _CD_ON, _TIME_HIGH = 0, 1, 8
_KNOWN_TYPES = (0, 1, 8, 10, 14, 15)


class Evt2Decoder(PropheseeRawDecoder):
    """Incremental EVT 2.0 decoder. Events before the first EV_TIME_HIGH word get time_high 0, as
    in Prophesee's and expelliarmus's decoders; they are kept, not dropped."""

    format = "evt2"
    record_bytes = 4

    header_label = "EVT 2.0 header"

    def __init__(self, name: str = "<stream>") -> None:
        super().__init__(name)
        self._time_high = 0

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        used = len(buf) - len(buf) % 4
        if not used:
            return no_events(), 0
        words = np.frombuffer(buf, dtype="<u4", count=used // 4)
        kind = words >> 28
        time_high = self._forward_filled_time_high(words, kind)
        cd = kind <= _CD_ON
        cd_words = words[cd]
        events = np.empty(len(cd_words), dtype=EVENT_DTYPE)
        events["t"] = (time_high[cd] << 6) | ((cd_words >> 22) & 0x3F).astype(np.int64)
        events["x"] = (cd_words >> 11) & 0x7FF
        events["y"] = cd_words & 0x7FF
        events["p"] = kind[cd]
        unknown = int(np.count_nonzero(~np.isin(kind, _KNOWN_TYPES)))
        if unknown:
            self.note("words of unknown EVT 2.0 types were skipped")
        return events, used

    def _forward_filled_time_high(self, words: np.ndarray, kind: np.ndarray) -> np.ndarray:
        """Each word's current time_high: that of the last EV_TIME_HIGH at or before it, or the
        state carried over from the previous chunk."""
        is_high = kind == _TIME_HIGH
        index = np.where(is_high, np.arange(len(words)), -1)
        np.maximum.accumulate(index, out=index)
        values = (words & 0x0FFFFFFF).astype(np.int64)
        time_high = np.where(index >= 0, values[np.maximum(index, 0)], self._time_high)
        if is_high.any():
            self._time_high = int(time_high[-1])
        return time_high


class Evt2Reader(EventReader):
    """Prophesee EVT 2.0 (``% evt 2.0`` or ``% format EVT2`` in the header)."""

    name = "evt2"

    def sniff(self, head: bytes, size: int) -> bool:
        return prophesee_encoding(header_lines(head, b"%")) == "evt2"

    def decoder(self, name: str = "<stream>") -> Decoder:
        return Evt2Decoder(name)
