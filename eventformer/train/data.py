"""Labelled event samples -> dense training frames, the way the engine frames them.

Framing convention (the engine must reproduce the trainer's predictions, so both sides cut the
same events the same way):

* **clip**: a sample is cut to a clip of fixed duration ``clip_us`` (default 1.45 s, the length
  commonly used for DVS Gesture) starting at its first event: ``ev[t < t0 + clip_us]``. Segments of
  the IBM release last several seconds; a fixed clip keeps the event density per step comparable
  between samples. Validation / test always uses this first clip, so ``eventformer infer`` on the
  same clip events (e.g. written with ``eventformer convert``) sees exactly the trainer's input.
  For training, ``crops > 1`` adds ``crops - 1`` further clips per sample starting at seeded random
  offsets inside the segment (static augmentation, drawn once when the set is built).
* **downsampling**: the 128x128 sensor is mapped onto the model's ``S x S`` input by integer
  division of the coordinates, ``x // f`` with ``f = 128 // S`` -- exactly
  :func:`eventformer.inference.downsample` with :func:`eventformer.inference.downsample_factor`.
* **steps**: ``split_by="number"`` over the clip (:func:`eventformer.events.framing.dense_frames`),
  T steps of per-pixel event counts, channel 0 OFF, channel 1 ON.

Augmentation during training is a random spatial shift of a few pixels (zero fill, no wrap-around).
There is deliberately **no left/right flip**: DVS Gesture has mirrored classes (right vs left hand
wave, right vs left arm rotations), so a flip would turn a sample into another class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import EventformerError
from ..events.framing import clip_events, dense_frames
from ..inference import downsample, downsample_factor

__all__ = [
    "CLIP_US",
    "FrameSet",
    "batches",
    "check_resolution",
    "clip_events",
    "frame_set",
    "shift_frames",
]

#: Default clip duration in microseconds (1.45 s).
CLIP_US = 1_450_000
SENSOR = (128, 128)


def check_resolution(size: int, halvings: int = 3, sensor: tuple[int, int] = SENSOR) -> int:
    """The downsampling factor for a ``size`` x ``size`` model input, or an EventformerError if the
    sensor does not map onto it by an integer factor or the model cannot take it (it halves the
    map ``halvings`` times: Spikformer once per SPS stage, QKFormer in its three pools and its
    patch merging, so ``size`` must be a multiple of ``2 ** halvings``)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise EventformerError(f"resolution must be a positive integer, got {size!r}")
    w, h = sensor
    if size > w or w % size or h % size:
        divisors = [d for d in range(1, w + 1) if w % d == 0 and h % d == 0]
        raise EventformerError(
            f"resolution {size} does not divide the {w}x{h} sensor; use one of "
            f"{', '.join(str(d) for d in divisors if d % 2 ** halvings == 0)}")
    need = 2 ** halvings
    if size % need:
        raise EventformerError(
            f"resolution {size} is too small for the model, which halves its input {halvings} "
            f"times (it must be a multiple of {need})")
    return downsample_factor(sensor, size, "the training data")


@dataclass
class FrameSet:
    """Dense frames of a labelled set: ``frames [N, T, 2, S, S]`` (counts, uint16 or int32; float
    arrays are accepted too), ``labels [N]`` (int64), sample names, optionally the downsampled
    clip events each frame was made from (``events``, for engine cross-checks), and a JSON-able
    description of where it came from."""

    frames: np.ndarray
    labels: np.ndarray
    names: list[str] = field(default_factory=list)
    events: list[np.ndarray] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64)
        if self.frames.ndim != 5 or self.frames.shape[2] != 2:
            raise ValueError(f"frames must be [N, T, 2, S, S], got {self.frames.shape}")
        if len(self.frames) != len(self.labels):
            raise ValueError(f"{len(self.frames)} frame stacks for {len(self.labels)} labels")
        if not self.names:
            self.names = [str(i) for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def steps(self) -> int:
        return int(self.frames.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.frames.shape[-1])

    def subset(self, index) -> "FrameSet":
        index = np.asarray(index)
        ev = None if self.events is None else [self.events[i] for i in index]
        return FrameSet(self.frames[index], self.labels[index], [self.names[i] for i in index],
                        ev, dict(self.info))


def _compact(frames: np.ndarray) -> np.ndarray:
    if frames.size == 0 or frames.max() <= np.iinfo(np.uint16).max:
        return frames.astype(np.uint16)
    return frames.astype(np.int32)


def frame_set(data, resolution: int, steps: int, *, clip_us: int | None = CLIP_US,
              crops: int = 1, seed: int = 0, limit: int | None = None,
              classes: list[int] | None = None, keep_events: bool = False,
              min_events: int = 1, progress=None) -> FrameSet:
    """Frame a labelled set (anything with ``iter_events()`` yielding ``(ref with .label,
    events)``, e.g. a :class:`eventformer.datasets.GestureSet`) into a :class:`FrameSet`.

    ``crops``: clips per sample (the first clip, plus ``crops - 1`` at seeded random offsets; use
    1 for validation). ``classes``: keep only these labels (relabelled 0..k-1 in that order).
    ``limit``: only the first ``limit`` samples. Samples with fewer than ``min_events`` events in a
    clip are skipped. ``progress(done, total)`` is called after each sample."""
    if crops < 1:
        raise ValueError(f"crops must be at least 1, got {crops}")
    sensor = tuple(getattr(data, "sensor_size", SENSOR) or SENSOR)
    factor = check_resolution(resolution, sensor=sensor)
    rng = np.random.default_rng(seed)
    total = min(len(data), limit) if limit else len(data)
    relabel = None if classes is None else {int(c): i for i, c in enumerate(classes)}
    stacks, labels, names, kept = [], [], [], []
    skipped = 0
    for n, (ref, ev) in enumerate(data.iter_events(limit)):
        label = int(ref.label)
        if relabel is not None:
            if label not in relabel:
                if progress:
                    progress(n + 1, total)
                continue
            label = relabel[label]
        if len(ev) > 1 and np.any(np.diff(ev["t"]) < 0):
            ev = ev[np.argsort(ev["t"], kind="stable")]
        starts: list[int | None] = [None]
        if crops > 1 and len(ev) and clip_us is not None:
            t0, t1 = int(ev["t"][0]), int(ev["t"][-1])
            room = max(0, t1 - t0 - int(clip_us))
            starts += [t0 + int(rng.integers(0, room + 1)) for _ in range(crops - 1)]
        for c, start in enumerate(starts):
            clip = downsample(clip_events(ev, clip_us, start), factor)
            if len(clip) < min_events:
                skipped += 1
                continue
            try:
                stacks.append(dense_frames(clip, steps, resolution, resolution, "number"))
            except ValueError as exc:
                raise EventformerError(f"{getattr(ref, 'name', ref)}: {exc}") from None
            labels.append(label)
            names.append(getattr(ref, "name", str(n)) + (f"@crop{c}" if c else ""))
            if keep_events:
                kept.append(clip)
        if progress:
            progress(n + 1, total)
    if not stacks:
        raise EventformerError("the dataset gave no usable samples (every clip was empty or "
                               "filtered out)")
    frames = _compact(np.stack(stacks))
    info = {"data": str(getattr(data, "root", "")), "split": getattr(data, "split", None),
            "convention": getattr(data, "convention", None),
            "synthetic": bool(getattr(data, "synthetic", False)),
            "resolution": resolution, "downsample_factor": factor, "steps": steps,
            "split_by": "number", "clip_us": clip_us, "crops": crops, "samples": len(labels),
            "skipped_clips": skipped, "classes": list(classes) if classes is not None else None}
    return FrameSet(frames, np.array(labels), names, kept if keep_events else None, info)


def shift_frames(frames: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``frames [..., H, W]`` moved by (dx, dy) pixels, zero fill (no wrap-around)."""
    out = np.zeros_like(frames)
    H, W = frames.shape[-2:]
    if abs(dx) >= W or abs(dy) >= H:
        return out
    src_y = slice(max(0, -dy), H - max(0, dy))
    dst_y = slice(max(0, dy), H - max(0, -dy))
    src_x = slice(max(0, -dx), W - max(0, dx))
    dst_x = slice(max(0, dx), W - max(0, -dx))
    out[..., dst_y, dst_x] = frames[..., src_y, src_x]
    return out


def batches(data: FrameSet, batch: int, rng: np.random.Generator | None = None,
            max_shift: int = 0, dtype=np.float32, start: int = 0,
            order: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Mini-batches ``(frames [T, B, 2, S, S] as dtype, labels [B])``.

    With ``rng``: samples in a random order (``order`` if given, drawn from ``rng`` otherwise) and,
    for ``max_shift > 0``, each sample shifted by a random (dx, dy) in ``[-max_shift, max_shift]``
    drawn from ``rng`` batch by batch. Without ``rng``: in order, unshifted (evaluation). The last
    batch may be smaller. ``start``: skip the first ``start`` batches (resuming mid-epoch; their
    random numbers are not drawn)."""
    n = len(data)
    if order is None:
        order = rng.permutation(n) if rng is not None else np.arange(n)
    for b, lo in enumerate(range(0, n, batch)):
        if b < start:
            continue
        idx = order[lo:lo + batch]
        x = data.frames[idx].astype(dtype)
        if rng is not None and max_shift > 0:
            shifts = rng.integers(-max_shift, max_shift + 1, size=(len(idx), 2))
            for i, (dx, dy) in enumerate(shifts):
                if dx or dy:
                    x[i] = shift_frames(x[i], int(dx), int(dy))
        yield np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4)), data.labels[idx]


# --------------------------------------------------------------------------------------------------
# Where the training data comes from
# --------------------------------------------------------------------------------------------------

#: The generated synthetic training set: other seed than the embedded set (so other subjects),
#: more users than the embedded set's single test user. Bump the version when this changes.
SYNTH_TRAIN_SEED = 1
SYNTH_TRAIN_USERS = 8
SYNTH_TRAIN_VERSION = 1


def synthetic_training_dir(users: int = SYNTH_TRAIN_USERS, seed: int = SYNTH_TRAIN_SEED):
    import os
    from pathlib import Path

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eventformer"
    return cache / f"synthetic-dvs-gesture-train-v{SYNTH_TRAIN_VERSION}-seed{seed}-users{users}"


def synthetic_training_sets(users: int = SYNTH_TRAIN_USERS, seed: int = SYNTH_TRAIN_SEED,
                            log=None):
    """``(train, val)`` GestureSets of synthetic DVS Gesture: train is generated deterministically
    on first use (``users`` users x 2 lightings, all in the train split, cached under
    ``~/.cache/eventformer``); val is the embedded synthetic test set (seed 0, other subjects)
    that ``eventformer infer --dataset dvs-gesture`` falls back to."""
    from ..datasets import embedded_synthetic_set, load_dvs_gesture
    from ..events.synth import write_synthetic_dataset

    folder = synthetic_training_dir(users, seed)
    done = folder / ".complete"
    if not done.is_file():
        if log is not None:
            log(f"generating the synthetic training set ({users} users) into {folder} "
                "(first use, about 4 s per user)")
        folder.mkdir(parents=True, exist_ok=True)
        write_synthetic_dataset(folder, seed=seed, users=users, trials_test_fraction=0.0,
                                gesture_seconds=(2, 3))
        done.write_text("ok\n")
    train = load_dvs_gesture("ibm", folder, "train", synthetic=True)
    val = embedded_synthetic_set("test", log=log)
    return train, val


def training_sets(name: str, data_dir=None, log=None):
    """``(train, validation, class_names)`` of a dataset named as ``eventformer train
    --dataset`` takes it: ``synthetic-gesture`` (a larger generated train set, validated on
    the embedded synthetic test set), ``dvs-gesture`` (the real release: its test split
    validates) or ``tonic:NAME``; an EventformerError when it is missing or unknown."""
    from ..classes import DVS_GESTURE_CLASSES
    from ..datasets import DatasetError, open_dataset

    if name == "synthetic-gesture":
        return (*synthetic_training_sets(log=log), DVS_GESTURE_CLASSES)
    train = open_dataset(name, data_dir, "train")
    val = open_dataset(name, data_dir, "test")
    names = tuple(train.class_names) if train.class_names else ()
    if not names:
        raise DatasetError(f"{name} names no classes; cannot size the classifier head")
    return train, val, names
