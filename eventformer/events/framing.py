"""Cutting an event stream into T steps of per-pixel counts (SPEC §3).

The boundaries follow SpikingJelly's ``cal_fixed_frames_number_segment_index`` exactly, because
that is what the published checkpoints were trained on; where SpikingJelly crashes (an empty time
frame, one event, zero time span) we return empty frames instead.

Two outputs share one set of boundaries:

* `frame_events` -- sparse steps ``(idx, cnt)``, the engine's input: ``idx`` are flat indices into
  a channel-innermost ``[height, width, 2]`` map, ``idx = (y * width + x) * 2 + p``, sorted
  ascending and unique; ``cnt`` is how many events hit that site in that step.
* `dense_frames` -- ``int32 [T, 2, height, width]``, the layout SpikingJelly / PyTorch models take.

Channel 0 is OFF (p = 0), channel 1 is ON (p = 1). Frames hold counts, not booleans.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "SplitBy",
    "SparseStep",
    "split_by_number",
    "split_by_time",
    "frame_boundaries",
    "event_sites",
    "frame_events",
    "dense_frames",
]

SplitBy = Literal["number", "time"]

#: One step of sparse input: (flat site indices, event counts), both int32 and of equal length.
SparseStep = tuple[np.ndarray, np.ndarray]

_INT32_MAX = np.iinfo(np.int32).max


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {steps!r}")
    return int(steps)


def split_by_number(n_events: int, steps: int) -> np.ndarray:
    """Boundaries ``b`` (int64, shape ``[steps + 1]``) giving each step an equal share of events.

    Step j holds events ``[b[j], b[j+1])`` with ``b[j] = j * (n // steps)`` and ``b[steps] = n``,
    so the remainder ``n % steps`` goes to the last step; with fewer events than steps every step
    but the last is empty. Needs n up front, so it is not causal.
    """
    steps = _check_steps(steps)
    if n_events < 0:
        raise ValueError(f"the number of events cannot be negative, got {n_events}")
    bounds = np.arange(steps + 1, dtype=np.int64) * (int(n_events) // steps)
    bounds[-1] = n_events
    return bounds


def split_by_time(t: np.ndarray, steps: int) -> np.ndarray:
    """Boundaries ``b`` (int64, shape ``[steps + 1]``) giving each step an equal span of time.

    With ``dt = (t[-1] - t[0]) // steps``, step j holds the events with
    ``t[0] + j*dt <= t < t[0] + (j+1)*dt`` and the last step runs to the end (it also takes the
    span left over by the integer division). ``t`` must be sorted ascending.

    Where SpikingJelly would crash we return empty steps: a window with no events is empty, and
    when ``dt == 0`` (zero or one event, all events at one timestamp, or a span shorter than
    ``steps`` microseconds) every event goes into the last step.
    """
    steps = _check_steps(steps)
    t = np.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"timestamps must be a 1-D array, got shape {t.shape}")
    n = len(t)
    bounds = np.zeros(steps + 1, dtype=np.int64)
    bounds[-1] = n
    if n == 0:
        return bounds
    t = t.astype(np.int64, copy=False)
    if n > 1 and np.any(t[1:] < t[:-1]):
        raise ValueError("split_by='time' needs events sorted by timestamp; sort them first "
                         "(np.sort(events, order='t', kind='stable'))")
    dt = (int(t[-1]) - int(t[0])) // steps
    window_starts = int(t[0]) + dt * np.arange(steps, dtype=np.int64)
    bounds[:-1] = np.searchsorted(t, window_starts, side="left")
    return bounds


def frame_boundaries(events: np.ndarray, steps: int, split_by: SplitBy = "number") -> np.ndarray:
    """Step boundaries for ``events`` under either SpikingJelly split rule."""
    if split_by == "number":
        return split_by_number(len(events), steps)
    if split_by == "time":
        return split_by_time(events["t"], steps)
    raise ValueError(f"split_by must be 'number' or 'time', got {split_by!r}")


def event_sites(events: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flat channel-innermost site of every event, ``(y * width + x) * 2 + p`` (int64).

    Refuses events outside the sensor rather than wrapping them into another pixel: a size
    mismatch between recording and model is a user error worth stopping for.
    """
    if height < 1 or width < 1:
        raise ValueError(f"the sensor size must be positive, got height={height}, width={width}")
    if height * width * 2 - 1 > _INT32_MAX:
        raise ValueError(f"a {width}x{height} sensor has too many sites for int32 indices")
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    _check_inside(x, y, p, height, width)
    return (y * width + x) * 2 + p


def _check_inside(x: np.ndarray, y: np.ndarray, p: np.ndarray, height: int, width: int) -> None:
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{int(np.count_nonzero(outside))} event(s) lie outside the {width}x{height} (width x height) "
            f"frame, the first is event {i} at x={int(x[i])}, y={int(y[i])}; pass the recording's "
            "real sensor size or crop the events")
    bad_polarity = (p < 0) | (p > 1)
    if bad_polarity.any():
        i = int(np.flatnonzero(bad_polarity)[0])
        raise ValueError(f"event {i} has polarity {int(p[i])}, but polarity must be 0 (OFF) or 1 (ON)")


def _count_sites(sites: np.ndarray, n_sites: int) -> SparseStep:
    """Unique sites (sorted) and their multiplicities.

    ``bincount`` costs O(n_sites) whatever the number of events, which dominates for short
    windows on big sensors; there a sort of the few events is cheaper. Both give the same answer.
    """
    if len(sites) == 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32)
    if len(sites) * 16 < n_sites:
        idx, cnt = np.unique(sites, return_counts=True)
        return idx.astype(np.int32), cnt.astype(np.int32)
    counts = np.bincount(sites, minlength=n_sites)
    idx = np.flatnonzero(counts)
    return idx.astype(np.int32), counts[idx].astype(np.int32)


def frame_events(events: np.ndarray, steps: int, height: int, width: int,
                 split_by: SplitBy = "number") -> list[SparseStep]:
    """``steps`` sparse steps ``(idx, cnt)`` of the events (see the module docstring).

    Empty steps are two empty int32 arrays, never ``None``, so consumers need no special case.
    """
    bounds = frame_boundaries(events, steps, split_by)
    sites = event_sites(events, height, width)
    n_sites = height * width * 2
    return [_count_sites(sites[lo:hi], n_sites) for lo, hi in zip(bounds[:-1], bounds[1:])]


def dense_frames(events: np.ndarray, steps: int, height: int, width: int,
                 split_by: SplitBy = "number") -> np.ndarray:
    """Event counts as ``int32 [steps, 2, height, width]`` from the same boundaries as `frame_events`.

    One bincount over ``(step, channel, y, x)`` keys builds all steps at once.
    """
    bounds = frame_boundaries(events, steps, split_by)
    event_sites(events, height, width)  # same validation and messages as the sparse path
    step_of_event = np.repeat(np.arange(steps, dtype=np.int64), np.diff(bounds))
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    keys = ((step_of_event * 2 + p) * height + y) * width + x
    counts = np.bincount(keys, minlength=steps * 2 * height * width)
    return counts.astype(np.int32).reshape(steps, 2, height, width)


def sparse_steps(dense: np.ndarray) -> list[SparseStep]:
    """The engine's sparse steps ``(idx, cnt)`` of dense counts ``[steps, C, H, W]`` (PyTorch's
    layout, e.g. frames a framework was fed): the inverse of `dense_frames` for C = 2."""
    out = []
    for frame in np.asarray(dense):
        hwc = frame.transpose(1, 2, 0).reshape(-1)
        idx = np.flatnonzero(hwc).astype(np.int32)
        out.append((idx, hwc[idx].astype(np.int32)))
    return out


def clip_events(events: np.ndarray, clip_us: int | None, start_us: int | None = None
                ) -> np.ndarray:
    """Events in ``[start, start + clip_us)`` (start: the first event's time by default); the
    whole sample when ``clip_us`` is None. Events are assumed sorted by time.

    Models trained on fixed-length clips (e.g. 1.45 s of a DVS Gesture segment) must see the same
    clip at inference, or split_by="number" spreads a longer sample over the same steps.
    """
    if clip_us is None or len(events) == 0:
        return events
    t = events["t"]
    t0 = int(t[0]) if start_us is None else int(start_us)
    lo = np.searchsorted(t, t0, side="left")
    hi = np.searchsorted(t, t0 + int(clip_us), side="left")
    return events[lo:hi]
