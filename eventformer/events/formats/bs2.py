"""Headerless bs2 / N-MNIST ``.bin`` files: bare 5-byte events, no magic number, so the registry
takes them only as a fallback, by extension (see `eventformer.events.formats`). Also
`FixedRecordDecoder`, the base of decoders for headerless fixed-size records.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from eventformer.events.readers import (
    EVENT_DTYPE,
    Decoder,
    EventReader,
    _is_printable_ascii,
    no_events,
)

_BS2_EVENT_BYTES = 5


class FixedRecordDecoder(Decoder):
    """Headerless formats of fixed-size records: decode as many whole records as are held."""

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        used = len(buf) - len(buf) % self.record_bytes
        if not used:
            return no_events(), 0
        return self._decode_records(np.frombuffer(buf, dtype=np.uint8, count=used)), used

    @abstractmethod
    def _decode_records(self, raw: np.ndarray) -> np.ndarray:
        """Decode ``raw`` (uint8, a whole number of records) into fresh `EVENT_DTYPE` events."""


def _starts_with_text_header(head: bytes) -> bool:
    """True for files opening with a ``#``/``%`` text header line (AEDAT, EVT2/3, DAT and kin).

    Those formats have readers of their own; decoding their ASCII header as 5-byte bs2 events
    would produce plausible-looking garbage, so the bs2 fallback refuses them. A real bs2 file
    matches only if its first events happen to be printable bytes ending in a newline.
    """
    if not head or head[:1] not in (b"#", b"%"):
        return False
    end = head.find(b"\n", 0, 256)
    if end < 4:
        return False
    return _is_printable_ascii(head[:end].rstrip(b"\r"))


def _is_text(head: bytes) -> bool:
    """True for a file whose first bytes are all printable text (a note, a CSV, a log).

    Half of a real recording's events are ON events, whose third byte has bit 7 set, so a few
    records of bs2 data are never all printable ASCII.
    """
    sample = head[:20 * _BS2_EVENT_BYTES]
    return len(sample) >= 2 * _BS2_EVENT_BYTES and \
        _is_printable_ascii(sample.replace(b"\n", b" ").replace(b"\r", b" "))


def decode_bs2(raw: np.ndarray) -> np.ndarray:
    """Decode whole 5-byte bs2 records (uint8, length a multiple of 5) into `EVENT_DTYPE`.

    Layout (N-MNIST .bin, SLAYER bs2): byte 0 = x, byte 1 = y, byte 2 bit 7 = polarity (1 = ON),
    t = ((b2 & 0x7F) << 16) | (b3 << 8) | b4 microseconds. The 23-bit clock is decoded as is,
    never unwrapped: N-MNIST's y == 240 overflow markers are not part of this format.
    """
    records = raw.reshape(-1, _BS2_EVENT_BYTES)
    b2 = records[:, 2].astype(np.int64)
    events = np.empty(len(records), dtype=EVENT_DTYPE)
    events["x"] = records[:, 0]
    events["y"] = records[:, 1]
    events["p"] = records[:, 2] >> 7
    events["t"] = ((b2 & 0x7F) << 16) | (records[:, 3].astype(np.int64) << 8) | records[:, 4]
    return events


class Bs2Decoder(FixedRecordDecoder):
    format = "bs2"
    record_bytes = _BS2_EVENT_BYTES
    # no magic number: content that is not bs2 records is refused by its clock going backwards
    max_backwards_fraction = 0.1

    def _decode_records(self, raw: np.ndarray) -> np.ndarray:
        return decode_bs2(raw)


class Bs2Reader(EventReader):
    """Headerless 5-byte events (N-MNIST ``.bin``, SLAYER ``.bs2``), the fallback format.

    Having no magic number, it is recognised only by the extension ``.bs2`` or ``.bin``, and only
    for files no reader with a magic number claimed (any bytes decode as bs2 events, so content
    alone never selects it); even then a file that opens with a ``#``/``%`` text header (the
    header of a format without a reader) or whose first bytes are all text is refused. ``read_events(path, format="bs2")``
    reads a bs2 recording of any name.
    """

    name = "bs2"
    extensions = (".bs2", ".bin")

    def sniff(self, head: bytes, size: int) -> bool:
        return not (_starts_with_text_header(head) or _is_text(head))

    def decoder(self, name: str = "<stream>") -> Decoder:
        return Bs2Decoder(name)

