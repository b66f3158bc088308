"""What the text-headed camera formats share: finding the end of a header of ``#``/``%`` lines
across feeds, and reading a sensor size out of it."""

from __future__ import annotations

import re

from eventformer.events.readers import Decoder, EventFileError
from eventformer.events.sensors import plugin_sensor

#: No real header comes near this; a "header" that does is garbage, refused before it eats memory.
MAX_HEADER_BYTES = 16 << 20


class LineHeader:
    """Finds, across any number of feeds, where a header of text lines starting with one marker
    byte ends, keeping its lines.

    Two endings exist: an explicit end line (AEDAT 3's ``#!END-HEADER``, Prophesee's ``% end``),
    and the implicit one (the first line that does not start with the marker, or the end of the
    stream: a file holding only a header is an empty recording, not an error). With
    ``implicit_end=False`` only the end line closes the header, and a line without the marker is
    corruption. Scanning resumes where it stopped, so feeding a long header a byte at a time stays
    linear.
    """

    def __init__(self, marker: bytes, *, end_line: str | None = None, implicit_end: bool = True,
                 label: str = "header") -> None:
        self.marker = marker[0]
        self.end_line = end_line
        self.implicit_end = implicit_end
        self.label = label
        #: The header's lines so far, decoded as Latin-1 (never fails), without line endings.
        self.lines: list[str] = []
        self._scan = 0       # start of the first line not yet taken
        self._searched = 0   # bytes already searched for a newline

    def end(self, buf: bytearray, final: bool, name: str) -> int | None:
        """Header length once ``buf`` shows where it ends, else None (more bytes needed)."""
        size = len(buf)
        while self._scan < size:
            if self._scan > MAX_HEADER_BYTES:
                raise EventFileError(f"{name}: its {self.label} runs past {MAX_HEADER_BYTES >> 20} MiB "
                                     "without ending, so this is not a valid file")
            if buf[self._scan] != self.marker:
                if self.implicit_end:
                    return self._scan
                raise EventFileError(f"{name}: the {self.label} has a line at byte {self._scan} that does not "
                                     f"start with {chr(self.marker)!r}, before its end-of-header line")
            newline = buf.find(b"\n", max(self._scan, self._searched))
            if newline < 0:
                self._searched = size
                if final and self.implicit_end:
                    self._take(buf, size)
                    return size
                return None
            self._take(buf, newline)
            self._scan = newline + 1
            if self.end_line is not None and _normalised(self.lines[-1]) == _normalised(self.end_line):
                return self._scan
        return size if final and self.implicit_end else None

    def _take(self, buf: bytearray, stop: int) -> None:
        self.lines.append(bytes(buf[self._scan:stop]).rstrip(b"\r").decode("latin-1"))

    def value(self, key: str) -> str | None:
        """Text after ``key`` on the first header line holding it (case-insensitive), stripped."""
        wanted = key.lower()
        for line in self.lines:
            found = line.lower().find(wanted)
            if found >= 0:
                return line[found + len(key):].strip(" :\t")
        return None


def _normalised(line: str) -> str:
    """A header line compared without its marker, surrounding blanks or case: writers differ."""
    return line.lstrip("#%").strip().lower()


def header_lines(head: bytes, marker: bytes, limit: int = 64) -> list[str]:
    """The complete marker-led lines at the start of ``head`` (for sniffing), Latin-1 decoded."""
    lines = []
    start = 0
    while len(lines) < limit and head[start:start + 1] == marker:
        newline = head.find(b"\n", start)
        if newline < 0:
            break
        lines.append(head[start:newline].rstrip(b"\r").decode("latin-1"))
        start = newline + 1
    return lines


# Sensor sizes of the chips named in AEDAT headers, (width, height), looked up by substring of the
# lower-cased chip or source name. Longer, more specific names first.
_CHIP_SIZES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("davisrgbw640", (640, 480)),
    ("davisrgb640", (640, 480)),
    ("davis640", (640, 480)),
    ("davis346", (346, 260)),
    ("davis240", (240, 180)),
    ("dvs240", (240, 180)),
    ("davis208", (208, 192)),
    ("davis128", (128, 128)),
    ("dvs128", (128, 128)),
    ("tmpdiff128", (128, 128)),
)


def chip_sensor_size(chip: str | None) -> tuple[int, int] | None:
    """The sensor size of a chip named in a header (``DAVIS240C``, ``DVS128``...), or None."""
    if not chip:
        return None
    key = chip.lower().replace("_", "").replace(" ", "")
    for name, size in _CHIP_SIZES:
        if name in key:
            return size
    return None


_GEOMETRY = re.compile(r"^\s*geometry\s+(\d+)\s*x\s*(\d+)", re.IGNORECASE)
_FORMAT_FIELD = re.compile(r"(width|height)\s*=\s*(\d+)", re.IGNORECASE)
_DAT_FIELD = re.compile(r"^\s*(width|height)\s+(\d+)\s*$", re.IGNORECASE)


def prophesee_sensor_size(lines: list[str]) -> tuple[int, int] | None:
    """Sensor size from Prophesee ``%`` header lines: ``% geometry 1280x720``,
    ``% format EVT3;height=720;width=1280``, or DAT's ``% Width 640`` / ``% Height 480``."""
    fields: dict[str, int] = {}
    for line in lines:
        text = line.lstrip("%")
        match = _GEOMETRY.match(text)
        if match:
            return int(match.group(1)), int(match.group(2))
        if text.strip().lower().startswith("format"):
            fields.update({k.lower(): int(v) for k, v in _FORMAT_FIELD.findall(text)})
        match = _DAT_FIELD.match(text)
        if match:
            fields[match.group(1).lower()] = int(match.group(2))
    if "width" in fields and "height" in fields and fields["width"] > 0 and fields["height"] > 0:
        return fields["width"], fields["height"]
    return None


def prophesee_encoding(lines: list[str]) -> str | None:
    """The event encoding a Prophesee header declares: ``"evt2"``, ``"evt3"``, another lower-cased
    name (``"evt21"``...), or None when it declares none (DAT files)."""
    for line in lines:
        text = line.lstrip("%").strip().lower()
        if text.startswith("evt "):
            return "evt" + text[4:].strip().replace(".0", "").replace(".", "")
        if text.startswith("format "):
            return text[7:].split(";", 1)[0].strip()
    return None


class PropheseeRawDecoder(Decoder):
    """Shared by the EVT 2.0 and EVT 3.0 decoders: a ``%`` text header ending at ``% end`` (or
    at the first binary byte), with the sensor size on its ``% geometry`` line."""

    header_label = "Prophesee header"

    def __init__(self, name: str = "<stream>") -> None:
        super().__init__(name)
        self._header = LineHeader(b"%", end_line="% end", label=self.header_label)

    def _parse_header(self, buf: bytearray, final: bool) -> int | None:
        size = self._header.end(buf, final, self.name)
        if size is not None:
            self.sensor_size = prophesee_sensor_size(self._header.lines)
            plugin = self._header.value("plugin_name")
            named = plugin_sensor(plugin)
            if named is not None:
                self.sensor_hint = (named, f"the header's plugin_name {plugin}")
        return size
