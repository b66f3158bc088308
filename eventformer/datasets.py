"""Datasets on disk -> labelled samples of events (DVS Gesture in its common layouts).

Three layouts of DVS128 Gesture are in use, and results differ with the convention, so every
loaded set says which one it is:

- ``ibm``: the IBM release, AEDAT 3.1 recordings ``userNN_<lighting>.aedat`` with
  ``userNN_<lighting>_labels.csv`` beside them and ``trials_to_train.txt`` /
  ``trials_to_test.txt``. Each label row is a segment [start, end) of its recording
  (SpikingJelly's cut: 1176 train / 288 test samples on the real release).
- ``tonic``: tonic's preprocessed copy, ``ibmGestureTrain|ibmGestureTest/userNN_<lighting>/<label>.npy``
  with rows (x, y, p, t in ms) (1077 / 264 samples; millisecond timestamps).
- ``spikingjelly``: SpikingJelly's ``events_np/train|test/<label>/*.npz`` with t, x, y, p.

Label files are read row by row as they are: a class may appear twice and rows need not be sorted.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .classes import CLASS_SETS, DVS_GESTURE_CLASSES  # noqa: F401  (re-exported)
from .errors import EventformerError
from .events import EVENT_DTYPE, read_events

CONVENTIONS = {
    "ibm": "IBM release cut into labelled segments [start, end) (SpikingJelly's 1176/288 split)",
    "tonic": "tonic preprocessed samples (1077/264 split, millisecond timestamps)",
    "spikingjelly": "SpikingJelly events_np samples (1176/288 split)",
}

DATA_ENV = "EVENTFORMER_DATA"


class DatasetError(EventformerError):
    """A dataset folder that is missing, of an unknown layout, or internally inconsistent."""


@dataclass(frozen=True)
class SampleRef:
    """Where one labelled sample lives: a file, and for the IBM layout a segment of it."""

    source: str
    label: int
    segment: tuple[int, int] | None = None  # [start, end) in microseconds
    index: int = 0  # position of the segment in its recording's label file

    @property
    def name(self) -> str:
        base = os.path.basename(self.source)
        return f"{base}#{self.index}" if self.segment is not None else base


@dataclass
class GestureSet:
    root: Path
    split: str
    layout: str
    samples: list[SampleRef]
    synthetic: bool = False
    class_names: tuple[str, ...] = DVS_GESTURE_CLASSES
    sensor_size: tuple[int, int] = (128, 128)

    @property
    def convention(self) -> str:
        if self.synthetic:
            return "synthetic DVS Gesture in the IBM layout, cut into labelled segments"
        return CONVENTIONS[self.layout]

    def __len__(self) -> int:
        return len(self.samples)

    def iter_events(self, limit: int | None = None) -> Iterator[tuple[SampleRef, np.ndarray]]:
        """(sample, events) in order, reading each recording once for all its segments."""
        refs = self.samples[:limit] if limit else self.samples
        cached_source, cached, ordered = None, None, False
        for ref in refs:
            if ref.segment is None:
                yield ref, _load_sample_file(ref.source, self.layout)
                continue
            if ref.source != cached_source:
                rec = read_events(ref.source)
                cached_source, cached = ref.source, rec.events
                t = cached["t"]
                ordered = bool(np.all(t[1:] >= t[:-1]))
            start, end = ref.segment
            if ordered:
                # time-ordered (as recordings are): a segment is one slice, found by bisection,
                # not a mask over the whole recording per segment (a tenth of a second or more
                # of `infer --dataset`'s run on the embedded test set)
                lo, hi = np.searchsorted(t, [start, end], side="left")
                yield ref, cached[lo:hi].copy()
            else:
                yield ref, cached[(t >= start) & (t < end)]


# --- locating a dataset -------------------------------------------------------------------------

def default_data_dirs(name: str = "dvs-gesture") -> list[Path]:
    """Where to look when no --data-dir is given: $EVENTFORMER_DATA, then the user cache."""
    dirs = []
    if os.environ.get(DATA_ENV):
        env = Path(os.environ[DATA_ENV]).expanduser()
        dirs += [env / name, env]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eventformer" / "data"
    dirs.append(cache / name)
    return dirs


def detect_layout(folder: Path) -> tuple[str, Path] | None:
    """The layout of a DVS Gesture folder and the directory that holds it, or None."""
    for base in (folder, folder / "DvsGesture", folder / "DVSGesture", folder / "DVS128Gesture"):
        if (base / "trials_to_test.txt").is_file() or (base / "trials_to_train.txt").is_file():
            return "ibm", base
        if (base / "ibmGestureTest").is_dir() or (base / "ibmGestureTrain").is_dir():
            return "tonic", base
        if (base / "events_np").is_dir():
            return "spikingjelly", base / "events_np"
    return None


def find_dvs_gesture(data_dir: str | os.PathLike | None) -> tuple[str, Path] | None:
    """Layout and folder of the real dataset: ``data_dir`` if given (an error if unusable),
    else the first default location that holds one; None when there is none."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such data directory")
        found = detect_layout(folder)
        if found is None:
            raise DatasetError(
                f"{folder}: not a DVS Gesture folder (expected the IBM release with "
                "trials_to_test.txt, tonic's ibmGestureTest/, or SpikingJelly's events_np/)")
        return found
    for folder in default_data_dirs():
        if folder.is_dir() and (found := detect_layout(folder)) is not None:
            return found
    return None


def load_dvs_gesture(layout: str, folder: Path, split: str = "test",
                     synthetic: bool = False) -> GestureSet:
    if split not in ("train", "test"):
        raise DatasetError(f"split must be train or test, got {split!r}")
    loader = {"ibm": _ibm_samples, "tonic": _tonic_samples, "spikingjelly": _sj_samples}[layout]
    samples = loader(folder, split)
    synthetic = synthetic or (folder / "SYNTHETIC.json").is_file()  # written by data synth
    if not samples:
        raise DatasetError(f"{folder}: the {split} split of this {layout} layout holds no samples")
    return GestureSet(folder, split, layout, samples, synthetic=synthetic)


# --- layouts ------------------------------------------------------------------------------------

def _ibm_samples(folder: Path, split: str) -> list[SampleRef]:
    trials = folder / f"trials_to_{split}.txt"
    if not trials.is_file():
        raise DatasetError(f"{folder}: missing {trials.name} (IBM DVS Gesture layout)")
    samples = []
    for line in trials.read_text().splitlines():
        name = line.strip()
        if not name:
            continue
        recording = folder / name
        if not recording.is_file():
            raise DatasetError(f"{trials}: lists {name}, which is not in {folder}")
        labels = recording.with_name(recording.stem + "_labels.csv")
        for i, (cls, start, end) in enumerate(read_label_file(labels)):
            samples.append(SampleRef(str(recording), cls, (start, end), i))
    return samples


def read_label_file(path: Path) -> list[tuple[int, int, int]]:
    """Rows (0-based class, start_us, end_us) of an IBM label file, in file order."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing label file for {path.name.replace('_labels.csv', '.aedat')}")
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["class", "startTime_usec",
                                                                  "endTime_usec"]:
            raise DatasetError(f"{path}: not a DVS Gesture label file (expected the header "
                               "class,startTime_usec,endTime_usec)")
        for n, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            try:
                cls, start, end = int(row[0]), int(row[1]), int(row[2])
            except (ValueError, IndexError):
                raise DatasetError(f"{path}: line {n} is not class,start,end: {','.join(row)}") \
                    from None
            if not 1 <= cls <= len(DVS_GESTURE_CLASSES):
                raise DatasetError(f"{path}: line {n} has class {cls}, expected 1..11")
            if end <= start:
                raise DatasetError(f"{path}: line {n} ends before it starts ({start} >= {end})")
            rows.append((cls - 1, start, end))
    return rows


def _tonic_samples(folder: Path, split: str) -> list[SampleRef]:
    base = folder / ("ibmGestureTrain" if split == "train" else "ibmGestureTest")
    if not base.is_dir():
        raise DatasetError(f"{folder}: missing {base.name}/ (tonic DVSGesture layout)")
    samples = []
    for rec_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for f in sorted(rec_dir.glob("*.npy"), key=lambda p: (len(p.stem), p.stem)):
            if f.stem.isdigit():
                samples.append(SampleRef(str(f), int(f.stem)))
    return samples


def _sj_samples(folder: Path, split: str) -> list[SampleRef]:
    base = folder / split
    if not base.is_dir():
        raise DatasetError(f"{folder}: missing {split}/ (SpikingJelly events_np layout)")
    samples = []
    for label_dir in sorted((p for p in base.iterdir() if p.is_dir() and p.name.isdigit()),
                            key=lambda p: int(p.name)):
        for f in sorted(label_dir.glob("*.npz")):
            samples.append(SampleRef(str(f), int(label_dir.name)))
    return samples


def _load_sample_file(path: str, layout: str) -> np.ndarray:
    if layout == "tonic":  # rows (x, y, p, t_ms): a plain 2-D array, not a recording format
        try:
            raw = np.load(path)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: unreadable tonic sample ({exc})") from None
        if raw.ndim != 2 or raw.shape[1] < 4:
            raise DatasetError(f"{path}: expected rows of (x, y, p, t), got shape {raw.shape}")
        ev = np.empty(raw.shape[0], EVENT_DTYPE)
        ev["x"], ev["y"] = raw[:, 0], raw[:, 1]
        ev["p"] = raw[:, 2] > 0
        ev["t"] = np.rint(raw[:, 3] * 1000).astype(np.int64)
        return ev
    return read_events(path).events


# --- the embedded default -----------------------------------------------------------------------

EMBEDDED_SEED = 0
EMBEDDED_VERSION = 1  # bump when the generator's output changes, so caches are rebuilt


def embedded_synthetic_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eventformer"
    return cache / f"synthetic-dvs-gesture-v{EMBEDDED_VERSION}-seed{EMBEDDED_SEED}"


def embedded_synthetic_set(split: str = "test", log=None) -> GestureSet:
    """The synthetic DVS Gesture set used when no real data is found.

    It is generated deterministically from a fixed seed on first use (a few seconds) and
    cached, rather than shipped as data files; it is written in the IBM layout, so it runs
    through the same loader as the real release.
    """
    folder = embedded_synthetic_dir()
    done = folder / ".complete"
    if not done.is_file():
        from .events.synth import write_synthetic_dataset

        if log is not None:
            log(f"generating the embedded synthetic DVS Gesture set into {folder} (first use: "
                "some 10-30 s, cached afterwards)")
        folder.mkdir(parents=True, exist_ok=True)
        # small on purpose: two users (one for test), short gestures -> tens of MB, seconds
        write_synthetic_dataset(folder, seed=EMBEDDED_SEED, users=2, trials_test_fraction=0.5,
                                gesture_seconds=(2, 3))
        done.write_text("ok\n")
    return load_dvs_gesture("ibm", folder, split, synthetic=True)


# --- other tonic datasets, read from disk -------------------------------------------------------

class TonicSet:
    """Any tonic dataset that tonic can read from ``data_dir`` (``--dataset tonic:NAME``).

    tonic downloads a missing dataset on construction; offline that fails, so the failure is
    turned into one sentence saying where the files are expected.
    """

    layout = "tonic-dataset"
    synthetic = False

    def __init__(self, name: str, data_dir: str | os.PathLike, split: str):
        import inspect

        import tonic.datasets

        cls = getattr(tonic.datasets, name, None)
        if cls is None or not isinstance(cls, type):
            known = sorted(n for n in dir(tonic.datasets) if n[:1].isupper())
            raise DatasetError(f"tonic has no dataset {name!r}; it has {', '.join(known)}")
        kwargs = {"save_to": str(data_dir)}
        if "train" in inspect.signature(cls.__init__).parameters:
            kwargs["train"] = split == "train"
        try:
            self.dataset = cls(**kwargs)
        except Exception as exc:  # tonic raises whatever its download or parser raises
            raise DatasetError(
                f"tonic could not read {name} from {data_dir} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}); put the "
                "dataset there in tonic's layout") from None
        self.name = name
        self.root = Path(data_dir)
        self.split = split
        size = getattr(cls, "sensor_size", None) or (0, 0)
        self.sensor_size = (int(size[0]), int(size[1]))
        self.class_names = tuple(str(c) for c in getattr(cls, "classes", ()) or ())
        self.samples = list(range(len(self.dataset)))

    @property
    def convention(self) -> str:
        return f"tonic {self.name} ({self.split} split as tonic defines it)"

    def __len__(self) -> int:
        return len(self.samples)

    def iter_events(self, limit: int | None = None):
        for i in self.samples[:limit] if limit else self.samples:
            yield self.read_sample(i)

    def read_sample(self, i: int) -> tuple[SampleRef, np.ndarray]:
        """(SampleRef, events) of sample ``i`` (its label is known once it is read)."""
        raw, target = self.dataset[i]
        names = raw.dtype.names or ()
        if not {"x", "y", "p", "t"} <= set(names):
            raise DatasetError(f"tonic {self.name} sample {i} has fields {names}, "
                               "expected x, y, p, t")
        ev = np.empty(raw.shape[0], EVENT_DTYPE)
        ev["t"] = np.asarray(raw["t"]).astype(np.int64)
        ev["x"], ev["y"] = raw["x"], raw["y"]
        ev["p"] = np.asarray(raw["p"]) > 0
        label = int(np.asarray(target).reshape(-1)[0])
        return SampleRef(f"{self.name}[{i}]", label), ev


# --- a dataset by the name a user gives ---------------------------------------------------------

#: Names ``--dataset`` takes, for error messages.
DATASET_NAMES = "dvs-gesture, synthetic-gesture, tonic:NAME (e.g. tonic:NMNIST)"


def open_dataset(name: str, data_dir: str | os.PathLike | None, split: str, *,
                 synthetic_fallback: bool = False, log=None) -> GestureSet | TonicSet:
    """The labelled ``split`` of a dataset named as on the command line.

    ``dvs-gesture``: the real release in ``data_dir``, ``$EVENTFORMER_DATA`` or the cache (any of
    its three layouts); when none is found, the embedded synthetic set if ``synthetic_fallback``
    (``log`` is told so), else a DatasetError. ``synthetic-gesture``: the embedded synthetic set.
    ``tonic:NAME``: a tonic dataset read from ``data_dir``.
    """
    if split not in ("test", "train"):
        raise DatasetError(f"the split must be test or train, got {split!r}")
    if name.startswith("tonic:"):
        if data_dir is None:
            raise DatasetError(f"--dataset {name} needs --data-dir (where tonic's files for it "
                               "are)")
        return TonicSet(name.split(":", 1)[1], data_dir, split)
    if name == "synthetic-gesture":
        return embedded_synthetic_set(split, log=log)
    if name != "dvs-gesture":
        raise DatasetError(f"unknown dataset {name!r}; known: {DATASET_NAMES}")
    found = find_dvs_gesture(data_dir)
    if found is not None:
        return load_dvs_gesture(*found, split)
    if not synthetic_fallback:
        raise DatasetError("no DVS Gesture data found: give --data-dir, set EVENTFORMER_DATA or "
                           "run `eventformer data fetch dvs-gesture`")
    if log is not None:
        log("no DVS Gesture data found (give --data-dir or set EVENTFORMER_DATA)")
    data = embedded_synthetic_set(split, log=log)
    if log is not None:
        log(f"running on the embedded synthetic {split} set ({len(data)} samples), not the real "
            "dataset")
    return data
