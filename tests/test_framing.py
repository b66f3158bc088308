"""Framing events into steps: checked against an independent, naive re-implementation of
SpikingJelly's ``integrate_events_by_fixed_frames_number`` on the real DVS Gesture recordings, and
by property tests on random streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventformer.events import (
    EVENT_DTYPE,
    dense_frames,
    frame_events,
    read_events,
    split_by_number,
    split_by_time,
)

EVENTS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "events"
GESTURE_FILES = [EVENTS_DIR / "dvs-gesture" / f"{i}.bs2" for i in range(1, 6)]


def _gesture_events(path: Path) -> np.ndarray:
    if not EVENTS_DIR.is_dir():
        pytest.skip(f"real recordings not available: {EVENTS_DIR} is absent (CI has it; a fresh clone does not)")
    return read_events(path).events


# --------------------------------------------------------------------------------------------------
# Naive references, written from SpikingJelly's description, sharing no code with the package
# --------------------------------------------------------------------------------------------------


def naive_segments_by_number(n: int, frames_num: int) -> list[tuple[int, int]]:
    """SpikingJelly ``cal_fixed_frames_number_segment_index``, split_by='number', loop for loop."""
    j_l = [0] * frames_num
    j_r = [0] * frames_num
    di = n // frames_num
    for i in range(frames_num):
        j_l[i] = i * di
        j_r[i] = j_l[i] + di
    j_r[-1] = n
    return list(zip(j_l, j_r))


def naive_frames_by_number(events: np.ndarray, frames_num: int, height: int, width: int) -> np.ndarray:
    """``integrate_events_by_fixed_frames_number`` (split_by='number'): frame[p, y, x] += 1."""
    x, y, p = events["x"].tolist(), events["y"].tolist(), events["p"].tolist()
    frames = []
    for lo, hi in naive_segments_by_number(len(x), frames_num):
        flat = [0] * (2 * height * width)
        for i in range(lo, hi):
            flat[(p[i] * height + y[i]) * width + x[i]] += 1
        frames.append(flat)
    return np.array(frames, dtype=np.int64).reshape(frames_num, 2, height, width)


def naive_frames_by_time(events: np.ndarray, frames_num: int, height: int, width: int) -> np.ndarray:
    """split_by='time' per event: window j holds t0 + j*dt <= t < t0 + (j+1)*dt, the last runs on.

    Written per event (frame = (t - t0) // dt, clipped) rather than per window, so it shares no
    searchsorted logic with the implementation; dt == 0 puts everything in the last frame.
    """
    t, x, y, p = (events[k].tolist() for k in ("t", "x", "y", "p"))
    frames = [[0] * (2 * height * width) for _ in range(frames_num)]
    if t:
        dt = (t[-1] - t[0]) // frames_num
        for i in range(len(t)):
            j = frames_num - 1 if dt == 0 else min((t[i] - t[0]) // dt, frames_num - 1)
            frames[j][(p[i] * height + y[i]) * width + x[i]] += 1
    return np.array(frames, dtype=np.int64).reshape(frames_num, 2, height, width)


def sparse_to_dense(steps: list[tuple[np.ndarray, np.ndarray]], height: int, width: int) -> np.ndarray:
    """Scatter sparse (idx, cnt) steps back to [T, 2, H, W] through the channel-innermost layout."""
    dense = np.zeros((len(steps), height, width, 2), dtype=np.int64)
    for j, (idx, cnt) in enumerate(steps):
        dense[j].reshape(-1)[idx] += cnt
    return dense.transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------
# Real recordings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GESTURE_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("steps", [16, 10])
def test_number_split_matches_spikingjelly_on_real_gestures(path: Path, steps: int) -> None:
    events = _gesture_events(path)
    expected = naive_frames_by_number(events, steps, 128, 128)
    dense = dense_frames(events, steps, 128, 128, split_by="number")
    assert dense.dtype == np.int32 and dense.shape == (steps, 2, 128, 128)
    np.testing.assert_array_equal(dense, expected)
    np.testing.assert_array_equal(sparse_to_dense(frame_events(events, steps, 128, 128), 128, 128), expected)


@pytest.mark.parametrize("path", GESTURE_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("steps", [16, 10])
def test_time_split_matches_naive_windows_on_real_gestures(path: Path, steps: int) -> None:
    events = _gesture_events(path)
    expected = naive_frames_by_time(events, steps, 128, 128)
    np.testing.assert_array_equal(dense_frames(events, steps, 128, 128, split_by="time"), expected)
    sparse = frame_events(events, steps, 128, 128, split_by="time")
    np.testing.assert_array_equal(sparse_to_dense(sparse, 128, 128), expected)


def test_sparse_steps_have_the_documented_layout() -> None:
    events = np.array([(0, 3, 1, 1), (1, 3, 1, 1), (2, 0, 0, 0), (3, 4, 2, 0)], dtype=EVENT_DTYPE)
    (idx, cnt), = frame_events(events, 1, height=3, width=5)
    assert idx.dtype == np.int32 and cnt.dtype == np.int32
    # (y * width + x) * 2 + p
    assert idx.tolist() == [0, (1 * 5 + 3) * 2 + 1, (2 * 5 + 4) * 2 + 0]
    assert cnt.tolist() == [1, 2, 1]


# --------------------------------------------------------------------------------------------------
# Boundaries
# --------------------------------------------------------------------------------------------------


def test_split_by_number_gives_remainder_to_last_step() -> None:
    assert split_by_number(10, 3).tolist() == [0, 3, 6, 10]
    assert split_by_number(2, 4).tolist() == [0, 0, 0, 0, 2]
    assert split_by_number(0, 2).tolist() == [0, 0, 0]
    assert split_by_number(10, 3).dtype == np.int64


def test_split_by_time_windows_and_degenerate_spans() -> None:
    t = np.array([0, 1, 2, 5, 9, 10])
    # dt = 10 // 3 = 3: [0,3) [3,6) [6, end]
    assert split_by_time(t, 3).tolist() == [0, 3, 4, 6]
    # an empty middle window does not crash (SpikingJelly does)
    assert split_by_time(np.array([0, 1, 100]), 3).tolist() == [0, 2, 2, 3]
    # dt == 0: everything in the last step
    assert split_by_time(np.array([7, 7, 7]), 4).tolist() == [0, 0, 0, 0, 3]
    assert split_by_time(np.array([5]), 2).tolist() == [0, 0, 1]
    assert split_by_time(np.array([], dtype=np.int64), 2).tolist() == [0, 0, 0]


def test_split_by_time_refuses_unsorted_timestamps() -> None:
    with pytest.raises(ValueError, match="sorted"):
        split_by_time(np.array([3, 1, 2]), 2)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_steps_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="steps"):
        split_by_number(10, bad)  # type: ignore[arg-type]


def test_unknown_split_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="split_by"):
        dense_frames(np.zeros(1, dtype=EVENT_DTYPE), 2, 4, 4, split_by="bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("x, y", [(5, 0), (0, 3), (-1, 0), (0, -2)])
def test_events_outside_the_frame_are_refused(x: int, y: int) -> None:
    events = np.array([(0, 0, 0, 1), (1, x, y, 0)], dtype=EVENT_DTYPE)
    for framer in (frame_events, dense_frames):
        with pytest.raises(ValueError, match=r"outside the 5x3 \(width x height\)"):
            framer(events, 2, 3, 5)


def test_bad_polarity_is_refused() -> None:
    events = np.array([(0, 0, 0, 2)], dtype=EVENT_DTYPE)
    with pytest.raises(ValueError, match="polarity"):
        frame_events(events, 1, 2, 2)


def test_zero_events_give_empty_steps() -> None:
    events = np.zeros(0, dtype=EVENT_DTYPE)
    for split_by in ("number", "time"):
        steps = frame_events(events, 3, 4, 4, split_by=split_by)
        assert len(steps) == 3
        for idx, cnt in steps:
            assert idx.dtype == np.int32 and cnt.dtype == np.int32 and idx.size == cnt.size == 0
        assert dense_frames(events, 3, 4, 4, split_by=split_by).shape == (3, 2, 4, 4)


# --------------------------------------------------------------------------------------------------
# Properties on random streams
# --------------------------------------------------------------------------------------------------


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[np.ndarray, int, int, int]:
    """Time-sorted random events on a small sensor, including empty, tiny and one-timestamp streams."""
    height = draw(st.integers(1, 6))
    width = draw(st.integers(1, 6))
    steps = draw(st.integers(1, 12))
    n = draw(st.integers(0, 60))
    coords = st.tuples(st.integers(0, width - 1), st.integers(0, height - 1), st.integers(0, 1))
    xyp = draw(st.lists(coords, min_size=n, max_size=n))
    same_time = draw(st.booleans())
    gaps = draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    events = np.zeros(n, dtype=EVENT_DTYPE)
    if n:
        events["x"], events["y"], events["p"] = np.array(xyp).T
        events["t"] = 1000 if same_time else 1000 + np.cumsum(gaps)
    return events, steps, height, width


@settings(max_examples=150, deadline=None)
@given(stream=event_streams(), split_by=st.sampled_from(["number", "time"]))
def test_every_event_lands_in_exactly_one_step(stream: tuple[np.ndarray, int, int, int], split_by: str) -> None:
    events, steps, height, width = stream
    sparse = frame_events(events, steps, height, width, split_by=split_by)
    assert len(sparse) == steps
    assert sum(int(cnt.sum()) for _, cnt in sparse) == len(events)
    for idx, cnt in sparse:
        assert idx.dtype == np.int32 and cnt.dtype == np.int32 and idx.shape == cnt.shape
        assert np.all(np.diff(idx) > 0), "idx must be sorted and unique"
        assert np.all(cnt >= 1)
        assert np.all((idx >= 0) & (idx < height * width * 2))

    dense = dense_frames(events, steps, height, width, split_by=split_by)
    np.testing.assert_array_equal(sparse_to_dense(sparse, height, width), dense)
    naive = (naive_frames_by_number(events, steps, height, width) if split_by == "number"
             else naive_frames_by_time(events, steps, height, width))
    np.testing.assert_array_equal(dense, naive)


@settings(max_examples=100, deadline=None)
@given(stream=event_streams(), split_by=st.sampled_from(["number", "time"]))
def test_boundaries_partition_the_stream(stream: tuple[np.ndarray, int, int, int], split_by: str) -> None:
    events, steps, _, _ = stream
    bounds = split_by_number(len(events), steps) if split_by == "number" else split_by_time(events["t"], steps)
    assert bounds.shape == (steps + 1,) and bounds.dtype == np.int64
    assert bounds[0] == 0 and bounds[-1] == len(events)
    assert np.all(np.diff(bounds) >= 0)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 30), steps=st.integers(1, 40))
def test_fewer_events_than_steps_fill_only_the_last_step(n: int, steps: int) -> None:
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["t"] = np.arange(n)
    sparse = frame_events(events, steps, 1, 1)
    if n < steps:
        assert all(idx.size == 0 for idx, _ in sparse[:-1])
        assert int(sparse[-1][1].sum()) == n


def test_sparse_steps_invert_dense_frames():
    from eventformer.events import sparse_steps

    rng = np.random.default_rng(0)
    n = 500
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 10_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 6, n), rng.integers(0, 5, n), rng.integers(0, 2, n)
    dense = dense_frames(ev, 4, 5, 6)
    for (idx, cnt), (want_idx, want_cnt) in zip(sparse_steps(dense), frame_events(ev, 4, 5, 6)):
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(cnt, want_cnt)
