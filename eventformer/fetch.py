"""Downloading DVS Gesture (tonic's preprocessed archives): resumable, md5-verified.

Only used by ``eventformer data fetch``; the engine never touches the network. The archives are
tonic's published copies (the IBM originals sit behind a login page): the test and train sets of
``ibmGestureTest|ibmGestureTrain/userNN_<lighting>/<label>.npy``.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import EventformerError


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    md5: str


DVS_GESTURE_ARCHIVES = {
    "test": Archive("https://figshare.com/ndownloader/files/38020584", "ibmGestureTest.tar.gz",
                    "56070e45dadaa85fff82e0fbfbc06de5"),
    "train": Archive("https://figshare.com/ndownloader/files/38022171", "ibmGestureTrain.tar.gz",
                     "3a8f0d4120a166bac7591f77409cb105"),
}

MANUAL_STEPS = ("download {names} from the tonic DVSGesture links (figshare) or the IBM release "
                "on another machine, then extract them into {folder} (or pass --data-dir)")


def md5sum(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def download(archive: Archive, folder: Path, progress=None, timeout: float = 30.0) -> Path:
    """Fetch ``archive`` into ``folder``, resuming a partial ``.part`` file; verify its md5."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / archive.filename
    if final.is_file() and md5sum(final) == archive.md5:
        return final
    part = folder / (archive.filename + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(archive.url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total else None
        with open(part, "ab" if have else "wb") as out:
            done = have
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    digest = md5sum(part)
    if digest != archive.md5:
        part.unlink()
        raise EventformerError(f"{archive.filename}: md5 {digest} does not match {archive.md5}; "
                               "the partial download was removed, run the command again")
    os.replace(part, final)
    return final


def fetch_dvs_gesture(folder: Path, splits=("test", "train"), progress=None,
                      archives: dict[str, Archive] | None = None) -> Path:
    """Download and extract DVS Gesture into ``folder``; one clear sentence when offline."""
    archives = archives or DVS_GESTURE_ARCHIVES
    for split in splits:
        archive = archives[split]
        try:
            path = download(archive, folder, progress=progress)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            names = " and ".join(archives[s].filename for s in splits)
            raise EventformerError(
                f"cannot download {archive.filename} ({reason}); to install by hand, "
                + MANUAL_STEPS.format(names=names, folder=folder)) from None
        with tarfile.open(path) as tar:
            tar.extractall(folder, filter="data")
    return folder
