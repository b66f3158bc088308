"""numpy ``.npz`` (zip) event archives: a single structured array, or separate arrays named t, x,
y, p. Nothing decodes before the whole archive has arrived (a zip's table of contents is at its
end); the members are ``.npy`` files, parsed as in `eventformer.events.formats.npy`.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from eventformer.events.formats.npy import _events_from_structured, _load_npy_stream
from eventformer.events.readers import (
    _EVENT_FIELDS,
    Decoder,
    EventFileError,
    EventReader,
    _first_line,
    events_from_fields,
    no_events,
)

_ZIP_MAGIC = b"PK\x03\x04"


class NpzDecoder(Decoder):
    """numpy ``.npz`` (zip) archives. A zip's table of contents sits at its end, so nothing can be
    decoded before the whole archive has arrived: bytes are held, and decoded by `finish`."""

    format = "npz"

    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        self._wanted = len(buf) + 1
        return no_events(), 0

    def _final_events(self) -> np.ndarray:
        data = bytes(self._pending)
        self._pending.clear()
        arrays = NpzReader._load_members(data, self.name)
        warnings: list[str] = []
        if all(name in arrays for name in _EVENT_FIELDS):
            events = events_from_fields(*(arrays[n] for n in _EVENT_FIELDS), path=self.name,
                                        warnings=warnings)
        elif len(arrays) == 1:
            events = _events_from_structured(next(iter(arrays.values())), self.name, warnings)
        else:
            listed = ", ".join(sorted(arrays)) or "none"
            raise EventFileError(f"{self.name}: the .npz archive holds arrays {listed}, but events "
                                 "need either one structured array or arrays named t, x, y, p")
        for message in warnings:
            self.note(message)
        self.decoded += len(events)
        return events


class NpzReader(EventReader):
    """numpy ``.npz`` archives: a single structured array, or separate arrays named t, x, y, p."""

    name = "npz"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(_ZIP_MAGIC)

    def decoder(self, name: str = "<stream>") -> Decoder:
        return NpzDecoder(name)

    @staticmethod
    def _load_members(data: bytes, path: str) -> dict[str, np.ndarray]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = [info for info in archive.infolist() if not info.is_dir()]
            arrays: dict[str, np.ndarray] = {}
            for info in members:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as fp:
                    arrays[name] = _load_npy_stream(fp, info.file_size,
                                                    f"{path} (member {info.filename})")
        except EventFileError:
            raise
        except Exception as exc:  # zipfile/zlib raise many types for corrupt archives
            raise EventFileError(f"{path}: starts like a zip/.npz archive but cannot be read as "
                                 f"one ({_first_line(exc)}); pass format='bs2' if it is a "
                                 "headerless recording") from None
        return arrays

