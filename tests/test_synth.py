"""The synthetic DVS Gesture dataset: AEDAT 3.1 files that decode (with an independent decoder
written here) to exactly the generated events, the release's label and trials files, determinism
from the seed, statistics within the range of the real segments, and classes that simple
statistics already tell apart (the trainer issue depends on that)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from eventformer.events.aedat3_writer import write_aedat31, write_labels_csv, write_trials_list
from eventformer.events.synth import (
    GESTURE_CLASSES,
    LIGHTINGS,
    N_CLASSES,
    compare_to_real,
    format_comparison,
    generate_gesture,
    generate_recording,
    segment_stats,
    write_synthetic_dataset,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GESTURE_DIR = SHARED / "data" / "events" / "dvs-gesture"
REAL_SEGMENTS = [GESTURE_DIR / f"{i}.bs2" for i in range(1, 6)]

# a small release: short gestures keep the test file fast; the layout is the full one
DATASET = dict(seed=3, users=4, lightings=("fluorescent", "natural"), trials_test_fraction=0.25,
               gesture_seconds=(1.5, 2.0), gap_seconds=(0.3, 0.6))
SHORT = dict(gesture_seconds=(1.5, 2.0), gap_seconds=(0.3, 0.6))
RAMP_US = 300_000  # gestures blend in and out of the rest pose over this long


def need_real_segments() -> list[Path]:
    if not GESTURE_DIR.is_dir():
        pytest.skip(f"real DVS Gesture segments not found at {GESTURE_DIR} (../shared is absent)")
    return REAL_SEGMENTS


# --------------------------------------------------------------------------------------------------
# An independent AEDAT 3.1 decoder, straight from the layout in the data README
# --------------------------------------------------------------------------------------------------


def decode_aedat31(path: Path) -> tuple[list[bytes], np.ndarray, list[tuple[int, ...]]]:
    """(header lines, events as (t, x, y, p, valid) columns, packet headers)."""
    raw = path.read_bytes()
    lines, pos = [], 0
    while raw.startswith(b"#", pos):
        end = raw.index(b"\r\n", pos) + 2
        lines.append(raw[pos:end])
        pos = end
        if lines[-1] == b"#!END-HEADER\r\n":
            break
    assert lines and lines[-1] == b"#!END-HEADER\r\n", "header must end with #!END-HEADER\\r\\n"
    cols: list[list[np.ndarray]] = [[], [], [], [], []]
    packets = []
    while pos < len(raw):
        hdr = struct.unpack_from("<hhiiiiii", raw, pos)
        etype, _source, size, _tsoff, overflow, capacity, _number, _valid = hdr
        packets.append(hdr)
        pos += 28
        body = raw[pos:pos + capacity * size]
        assert len(body) == capacity * size, "truncated packet"
        pos += capacity * size
        if etype != 1:
            continue
        rec = np.frombuffer(body, dtype=np.dtype([("data", "<u4"), ("ts", "<i4")]))
        data = rec["data"].astype(np.int64)
        cols[0].append((np.int64(overflow) << 31) | rec["ts"].astype(np.int64))
        cols[1].append((data >> 17) & 0x1FFF)
        cols[2].append((data >> 2) & 0x1FFF)
        cols[3].append((data >> 1) & 1)
        cols[4].append(data & 1)
    out = np.empty(sum(len(c) for c in cols[0]),
                   dtype=[("t", "i8"), ("x", "i8"), ("y", "i8"), ("p", "i8"), ("valid", "i8")])
    for name, col in zip(out.dtype.names, cols):
        out[name] = np.concatenate(col) if col else np.zeros(0, np.int64)
    return lines, out, packets


def same_events(decoded: np.ndarray, events: np.ndarray) -> bool:
    return len(decoded) == len(events) and all(
        np.array_equal(decoded[f], events[f].astype(np.int64)) for f in ("t", "x", "y", "p"))


def read_labels(path: Path) -> np.ndarray:
    text = path.read_text()
    assert text.startswith("class,startTime_usec,endTime_usec\n")
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)


# --------------------------------------------------------------------------------------------------
# The dataset shared by most tests
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic-dvs-gesture")
    summary = write_synthetic_dataset(out, workers=2, **DATASET)
    return out, summary


@pytest.fixture(scope="module")
def decoded(dataset):
    out, summary = dataset
    return {r.name: decode_aedat31(out / r.name)[1] for r in summary.recordings}


def test_release_layout(dataset):
    out, summary = dataset
    names = {f"user{u:02d}_{light}" for u in range(1, 5) for light in DATASET["lightings"]}
    expected = {f"{n}.aedat" for n in names} | {f"{n}_labels.csv" for n in names}
    expected |= {"trials_to_train.txt", "trials_to_test.txt", "gesture_mapping.csv",
                 "SYNTHETIC.json"}
    assert {p.name for p in out.iterdir()} == expected
    assert len(summary.recordings) == 8 and summary.n_events == sum(r.n_events for r in summary.recordings)
    mapping = (out / "gesture_mapping.csv").read_text().splitlines()
    assert mapping[0] == "action,label"
    assert [line.rsplit(",", 1)[0].strip() for line in mapping[1:]] == list(GESTURE_CLASSES)
    real_mapping = GESTURE_DIR / "gesture_mapping.csv"
    if real_mapping.is_file():
        assert (out / "gesture_mapping.csv").read_bytes() == real_mapping.read_bytes()


def test_aedat_files_decode_to_the_generated_events(dataset, decoded):
    out, summary = dataset
    rec = summary.recordings[0]
    events, labels, _span = generate_recording(DATASET["seed"], rec.user, rec.lighting, **SHORT)
    lines, dec, packets = decode_aedat31(out / rec.name)
    assert lines[0] == b"#!AER-DAT3.1\r\n"
    assert b"#Format: RAW\r\n" in lines and b"#Source 1: DVS128\r\n" in lines
    assert any(line.startswith(b"#Start-Time: ") for line in lines)
    assert same_events(dec, events) and (dec["valid"] == 1).all()
    assert [tuple(s) for s in labels] == list(rec.segments)
    for etype, source, size, tsoff, overflow, capacity, number, valid in packets:
        assert (etype, source, size, tsoff, overflow) == (1, 1, 8, 4, 0)
        assert capacity == number == valid and 0 < capacity <= 4096
    for r in summary.recordings:  # every file: sorted, on the sensor, polarity 0/1
        d = decoded[r.name]
        assert len(d) == r.n_events > 100_000
        assert (np.diff(d["t"]) >= 0).all() and (d["valid"] == 1).all()
        assert d["x"].max() <= 127 and d["y"].max() <= 127 and set(np.unique(d["p"])) == {0, 1}


def test_project_reader_agrees(dataset, decoded):
    from eventformer.events import EventFileError, read_events

    out, summary = dataset
    name = summary.recordings[-1].name
    try:
        recording = read_events(out / name)
    except EventFileError as exc:
        pytest.skip(f"eventformer.events.read_events cannot read AEDAT 3.1 yet ({exc})")
    assert same_events(decoded[name], recording.events)
    if recording.sensor_size is not None:
        assert tuple(recording.sensor_size) == (128, 128)


def test_timestamp_overflow_and_packets(tmp_path):
    rng = np.random.default_rng(0)
    n = 10_000
    events = np.zeros(n, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    around = np.repeat([1 << 31, 1 << 32], n // 2)  # events on both sides of two wraps
    events["t"] = np.sort(around + rng.integers(-5_000, 5_000, n))
    events["t"][n // 4:n // 4 + 3] = (1 << 31) - 1  # the last tick of epoch 0
    events["t"].sort()
    events["x"] = rng.integers(0, 128, n)
    events["y"] = rng.integers(0, 128, n)
    events["p"] = rng.integers(0, 2, n)
    path = tmp_path / "overflow.aedat"
    size = write_aedat31(path, events, packet_events=1000)
    assert size == path.stat().st_size
    _lines, dec, packets = decode_aedat31(path)
    assert same_events(dec, events)
    epochs = [p[4] for p in packets]
    assert epochs == sorted(epochs) and set(epochs) == {0, 1, 2}
    assert all(p[5] <= 1000 for p in packets)
    # a packet never straddles an epoch: counting events per epoch gives the packet split back
    per_epoch = np.bincount(events["t"] >> 31)
    for e in range(3):
        assert sum(p[5] for p in packets if p[4] == e) == per_epoch[e]


def test_writer_edge_cases(tmp_path):
    empty = np.zeros(0, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    write_aedat31(tmp_path / "empty.aedat", empty)
    lines, dec, packets = decode_aedat31(tmp_path / "empty.aedat")
    assert len(dec) == 0 and packets == [] and lines[-1] == b"#!END-HEADER\r\n"
    ev = np.zeros(3, dtype=empty.dtype)
    ev["t"] = [5, 3, 9]
    with pytest.raises(ValueError, match="sorted"):
        write_aedat31(tmp_path / "bad.aedat", ev)
    ev["t"] = [1, 2, 3]
    ev["x"] = [0, 128, 0]
    with pytest.raises(ValueError, match="x outside"):
        write_aedat31(tmp_path / "bad.aedat", ev)
    ev["x"] = 0
    ev["t"][0] = -1
    with pytest.raises(ValueError, match="non-negative"):
        write_aedat31(tmp_path / "bad.aedat", ev)
    with pytest.raises(ValueError, match="ends before"):
        write_labels_csv(tmp_path / "l.csv", [(1, 10, 5)])
    write_trials_list(tmp_path / "t.txt", ["a.aedat", "b.aedat"])
    assert (tmp_path / "t.txt").read_text() == "a.aedat\nb.aedat\n"


def test_labels_lie_inside_recordings_and_cover_every_class(dataset, decoded):
    out, summary = dataset
    for rec in summary.recordings:
        rows = read_labels(out / rec.name.replace(".aedat", "_labels.csv"))
        assert [tuple(int(v) for v in r) for r in rows] == [(c + 1, a, b) for c, a, b in rec.segments]
        t = decoded[rec.name]["t"]
        assert rows[:, 0].min() >= 1 and rows[:, 0].max() <= N_CLASSES
        assert set(rows[:, 0]) == set(range(1, N_CLASSES + 1)), "every class in every recording"
        assert (rows[:, 1] < rows[:, 2]).all()
        assert rows[0, 1] >= t[0] and rows[-1, 2] <= t[-1]
        assert (rows[1:, 1] > rows[:-1, 2]).all(), "segments in time order with gaps between"
        lengths = (rows[:, 2] - rows[:, 1]) / 1e6
        assert lengths.min() >= DATASET["gesture_seconds"][0] and lengths.max() <= DATASET["gesture_seconds"][1]
        assert t[0] > 0, "recordings do not start at time zero (the release's clocks do not)"


def test_trials_lists(dataset):
    out, summary = dataset
    train = (out / "trials_to_train.txt").read_text().split()
    test = (out / "trials_to_test.txt").read_text().split()
    assert train and test and not set(train) & set(test)
    assert sorted(train + test) == sorted(p.name for p in out.glob("*.aedat"))
    users = lambda names: {n.split("_")[0] for n in names}  # noqa: E731
    assert not users(train) & users(test), "a user is never in both splits"
    assert users(test) == {"user04"}
    assert tuple(train) == summary.train and tuple(test) == summary.test


def test_same_seed_same_bytes_different_seed_different(dataset, tmp_path):
    out, _summary = dataset
    # one recording again, alone and single-threaded: identical bytes (a recording depends only on
    # seed, user and lighting, never on the rest of the dataset or on the thread count)
    args = dict(seed=DATASET["seed"], users=[2], lightings=["natural"], workers=1, **SHORT)
    write_synthetic_dataset(tmp_path / "again", **args)
    for name in ("user02_natural.aedat", "user02_natural_labels.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    write_synthetic_dataset(tmp_path / "other", **{**args, "seed": DATASET["seed"] + 1})
    assert (tmp_path / "other" / "user02_natural.aedat").read_bytes() != (out / "user02_natural.aedat").read_bytes()
    assert (tmp_path / "other" / "user02_natural_labels.csv").read_bytes() != \
        (out / "user02_natural_labels.csv").read_bytes()
    # one clip: same generator seed, same events
    a, b, c = (generate_gesture(4, s, duration_us=300_000) for s in (11, 11, 12))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_generate_gesture_clip():
    ev = generate_gesture(3, np.random.default_rng(5), duration_us=500_000, t0_us=1_000_000)
    assert ev.dtype.names == ("t", "x", "y", "p")
    assert (np.diff(ev["t"]) >= 0).all()
    assert ev["t"].min() >= 1_000_000 and ev["t"].max() < 1_500_000
    assert ev["x"].min() >= 0 and ev["x"].max() < 128 and ev["y"].min() >= 0 and ev["y"].max() < 128
    quiet = generate_gesture(3, 5, duration_us=500_000, noise=False)
    assert 0 < len(quiet) < len(ev)
    with pytest.raises(ValueError):
        generate_gesture(N_CLASSES, 0)
    with pytest.raises(ValueError, match="lighting"):
        generate_gesture(0, 0, lighting="candle")


# --------------------------------------------------------------------------------------------------
# Against the real segments
# --------------------------------------------------------------------------------------------------


def test_statistics_within_the_range_of_real_segments():
    real = need_real_segments()
    clips = [generate_gesture(c, 1000 * c + k, lighting=list(LIGHTINGS)[(c + k) % len(LIGHTINGS)])
             for c in range(N_CLASSES) for k in range(2)]
    result = compare_to_real(real, clips)
    table = format_comparison(result)
    assert "rate_eps" in table and "synthetic" in table
    lo = {k: v["min"] for k, v in result["real"]["summary"].items()}
    hi = {k: v["max"] for k, v in result["real"]["summary"].items()}
    assert 40_000 < lo["rate_eps"] < hi["rate_eps"] < 130_000  # the README's 44-125 k events/s
    for clip, s in zip(clips, result["synthetic"]["segments"]):
        assert 0.5 * lo["rate_eps"] <= s["rate_eps"] <= 2 * hi["rate_eps"], table
        assert 0.35 <= s["on_fraction"] <= 0.65, table
        assert 20 <= s["x_mean"] <= 108 and 20 <= s["y_mean"] <= 108, table  # central part of the frame
        assert 0.5 * lo["x_std"] <= s["x_std"] <= 2 * hi["x_std"], table
        assert 0.5 * lo["y_std"] <= s["y_std"] <= 2 * hi["y_std"], table
        assert 0.5 * lo["active_fraction"] <= s["active_fraction"] <= min(2 * hi["active_fraction"], 1), table
    syn = result["synthetic"]["summary"]
    assert lo["rate_eps"] * 0.7 <= syn["rate_eps"]["mean"] <= hi["rate_eps"] * 1.3, table
    # the real 1.45 s cuts and the clips cover the same part of the frame on average
    for key in ("x_mean", "y_mean"):
        assert abs(syn[key]["mean"] - result["real"]["summary"][key]["mean"]) < 20, table


def test_segment_stats_by_hand():
    ev = np.zeros(4, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = [0, 1, 2, 1_000_000]
    ev["x"] = [0, 2, 2, 4]
    ev["y"] = [1, 1, 1, 1]
    ev["p"] = [1, 0, 1, 1]
    s = segment_stats(ev, width=8, height=2)
    assert s["rate_eps"] == 4 and s["on_fraction"] == 0.75 and s["x_mean"] == 2.0
    assert s["y_std"] == 0.0 and s["active_fraction"] == 3 / 16


# --------------------------------------------------------------------------------------------------
# The classes are learnable from simple statistics
# --------------------------------------------------------------------------------------------------


def _cut(events: np.ndarray, start: int, end: int) -> np.ndarray:
    lo, hi = np.searchsorted(events["t"], [start + RAMP_US, end - RAMP_US])
    return events[lo:hi]


def _rotation_sense(seg: np.ndarray, bin_us: int = 50_000) -> float:
    """Signed area swept by the event centroid per unit of its spread: > 0 for clockwise on screen
    (y points down), < 0 for counter-clockwise, about 0 for back-and-forth motion."""
    k = (seg["t"] - seg["t"][0]) // bin_us
    n = np.bincount(k)
    ok = n > 50
    cx = (np.bincount(k, seg["x"].astype(float)) / np.maximum(n, 1))[ok]
    cy = (np.bincount(k, seg["y"].astype(float)) / np.maximum(n, 1))[ok]
    rx, ry = cx[:-1] - cx.mean(), cy[:-1] - cy.mean()
    return float((rx * np.diff(cy) - ry * np.diff(cx)).sum() / max((rx**2 + ry**2).sum(), 1e-9))


def _features(seg: np.ndarray) -> np.ndarray:
    """An 8x8 grid of event counts per polarity (normalised) and the rotation sense."""
    hist = [np.histogram2d(seg["y"][seg["p"] == p], seg["x"][seg["p"] == p], bins=8,
                           range=[[0, 128], [0, 128]])[0].ravel() for p in (0, 1)]
    h = np.concatenate(hist)
    return np.append(h / max(h.sum(), 1.0), 0.5 * _rotation_sense(seg))


def test_nearest_centroid_tells_the_classes_apart(dataset, decoded):
    _out, summary = dataset
    data = {"train": ([], []), "test": ([], [])}
    for rec in summary.recordings:
        for cls, start, end in rec.segments:
            seg = _cut(decoded[rec.name], start, end)
            data[rec.split][0].append(_features(seg))
            data[rec.split][1].append(cls)
            if cls in (3, 4, 5, 6):  # the arm circles turn the way their names say
                sense = _rotation_sense(seg)
                assert (sense > 0.05) if cls in (3, 5) else (sense < -0.05), (rec.name, cls, sense)
    x_train, y_train = (np.array(v) for v in data["train"])
    x_test, y_test = (np.array(v) for v in data["test"])
    assert set(y_train) == set(y_test) == set(range(N_CLASSES))
    centroids = np.array([x_train[y_train == c].mean(0) for c in range(N_CLASSES)])
    pred = np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = float((pred == y_test).mean())
    assert accuracy >= 0.6, f"held-out nearest-centroid accuracy {accuracy:.2f} (chance {1 / N_CLASSES:.2f})"
