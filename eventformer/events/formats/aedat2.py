"""jAER AEDAT 2.0 files: ``#`` header lines (the first is ``#!AER-DAT2.0``), then big-endian records
of uint32 address + uint32 timestamp (us).

Two address layouts exist and nothing in a record says which, so the header decides:

* DAVIS (``# AEChip: ...davis...``, or ``# HardwareInterface: DAVIS ...``): bit 31 = 1 marks APS
  and IMU samples and bit 10 = 1 external-input (special) events, all skipped; the rest are DVS
  events with x = (a >> 12) & 0x3FF, y = (a >> 22) & 0x1FF, p = (a >> 11) & 1.
  jAER's raw DAVIS addresses are mirrored against image coordinates on BOTH axes: jAER's own
  extractor (DavisBaseCamera) computes x = width - 1 - raw x and keeps y with its origin at the
  bottom of the picture. Image coordinates (origin top-left, as every other format here) are
  therefore x = width - 1 - raw x and y = height - 1 - raw y, which is what this reader returns
  (tonic's DAVIS346 reader does the same). It needs the sensor size, taken from the chip class
  name (DAVIS240 -> 240x180, DAVIS346 -> 346x260, ...); for a chip of unknown size the raw
  coordinates are kept and a warning says so. An event whose raw coordinate lies outside the
  sensor cannot be mirrored and keeps its raw value (the outside-the-sensor warning counts it).
* DVS128 (``# AEChip: ...DVS128``, CIFAR10-DVS): x = (a >> 8) & 0x7F, y = (a >> 1) & 0x7F,
  p = a & 1, as tonic reads CIFAR10-DVS.

Fallback when the header names neither: the DVS128 layout (jAER's original chip, and the files
written by MATLAB's ``saveaerdat``, such as CIFAR10-DVS, name no chip), with a warning; if the
addresses then use bits above bit 15, which DVS128 never sets, a second warning says the file is
probably a DAVIS recording.

The header ends at the first line that does not start with ``#`` (or at a ``#End Of ASCII
Header`` line, which newer jAER writes): a binary record whose first byte is ``#`` right after the
header would be taken for a header line, as in jAER itself.
"""

from __future__ import annotations

import numpy as np

from eventformer.events.formats._header import LineHeader, chip_sensor_size
from eventformer.events.readers import EVENT_DTYPE, Decoder, EventReader, no_events

_RECORD = np.dtype([("address", ">u4"), ("t", ">u4")])
_MAGIC = b"#!AER-DAT2"


class Aedat2Decoder(Decoder):
    """Incremental AEDAT 2.0 decoder; the layout is settled when the header is complete."""

    format = "aedat2"
    record_bytes = 8

    def __init__(self, name: str = "<stream>") -> None:
        super().__init__(name)
        self._header = LineHeader(b"#", end_line="#End Of ASCII Header", label="AEDAT 2.0 header")
        self.layout = "dvs128"
        self._mirror = False

    def _parse_header(self, buf: bytearray, final: bool) -> int | None:
        size = self._header.end(buf, final, self.name)
        if size is not None:
            self._choose_layout()
        return size

    def _choose_layout(self) -> None:
        chip = self._header.value("# AEChip:") or ""
        interface = self._header.value("# HardwareInterface:") or ""
        named = f"{chip} {interface}".lower()
        if "davis" in named:
            self.layout = "davis"
            self.sensor_size = chip_sensor_size(chip) or chip_sensor_size(interface)
            self._mirror = self.sensor_size is not None
            if not self._mirror:
                self.note("the DAVIS chip named in the header has no known sensor size, so raw jAER "
                          "coordinates are kept (not mirrored to image rows and columns)")
        elif "dvs128" in named or "tmpdiff128" in named:
            self.layout = "dvs128"
            self.sensor_size = (128, 128)
        else:
            self.layout = "dvs128"
            self.note("the header names no chip (no '# AEChip:' line), so events are decoded with the "
                      "DVS128 address layout")

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        count = len(buf) // 8
        if not count:
            return no_events(), 0
        records = np.frombuffer(buf, dtype=_RECORD, count=count)
        address = records["address"].astype(np.int64)
        t = records["t"].astype(np.int64)
        del records
        events = self._davis(address, t) if self.layout == "davis" else self._dvs128(address, t)
        return events, count * 8

    def _dvs128(self, address: np.ndarray, t: np.ndarray) -> np.ndarray:
        if np.any(address >> 16):
            self.note("some addresses use bits above bit 15, which DVS128 never sets: this may be a "
                      "DAVIS recording whose header does not say so")
        events = np.empty(len(address), dtype=EVENT_DTYPE)
        events["t"] = t
        events["x"] = (address >> 8) & 0x7F
        events["y"] = (address >> 1) & 0x7F
        events["p"] = address & 1
        return events

    def _davis(self, address: np.ndarray, t: np.ndarray) -> np.ndarray:
        dvs = ((address >> 31) & 1) == 0
        dvs &= ((address >> 10) & 1) == 0
        address = address[dvs]
        x = (address >> 12) & 0x3FF
        y = (address >> 22) & 0x1FF
        if self._mirror:
            assert self.sensor_size is not None
            width, height = self.sensor_size
            x = np.where(x < width, width - 1 - x, x)
            y = np.where(y < height, height - 1 - y, y)
        events = np.empty(len(address), dtype=EVENT_DTYPE)
        events["t"] = t[dvs]
        events["x"] = x
        events["y"] = y
        events["p"] = (address >> 11) & 1
        return events


class Aedat2Reader(EventReader):
    """jAER AEDAT 2.0 (``#!AER-DAT2.0``), DAVIS and DVS128 layouts."""

    name = "aedat2"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(_MAGIC)

    def decoder(self, name: str = "<stream>") -> Decoder:
        return Aedat2Decoder(name)
