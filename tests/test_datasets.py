"""DVS Gesture layouts on disk -> labelled samples; dataset inference through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from eventformer.datasets import (DatasetError, detect_layout, find_dvs_gesture,
                                  load_dvs_gesture, read_label_file)

runner = CliRunner()


def _events(rng, n, t0=0):
    ev = np.zeros(n, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = t0 + np.sort(rng.integers(0, 1_000_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    return ev


def make_tonic(root, rng):
    for split, users in (("ibmGestureTrain", ("user01_led",)), ("ibmGestureTest", ("user24_led",
                                                                                   "user25_lab"))):
        for user in users:
            d = root / "DVSGesture" / split / user
            d.mkdir(parents=True)
            for label in range(11):
                ev = _events(rng, 500)
                rows = np.stack([ev["x"], ev["y"], ev["p"], ev["t"] / 1000.0], axis=1)
                np.save(d / f"{label}.npy", rows)
    return root / "DVSGesture"


def make_spikingjelly(root, rng):
    for split in ("train", "test"):
        for label in range(11):
            d = root / "DVS128Gesture" / "events_np" / split / str(label)
            d.mkdir(parents=True)
            ev = _events(rng, 400)
            np.savez(d / f"user24_led_{label}.npz", t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
    return root / "DVS128Gesture" / "events_np"


def test_tonic_layout(tmp_path):
    base = make_tonic(tmp_path, np.random.default_rng(0))
    layout, folder = detect_layout(tmp_path)
    assert (layout, folder) == ("tonic", base)
    data = load_dvs_gesture(layout, folder, "test")
    assert len(data) == 22 and "1077/264" in data.convention
    ref, ev = next(data.iter_events())
    assert ref.label == 0 and len(ev) == 500 and ev["t"].max() > 1000  # ms -> us


def test_spikingjelly_layout(tmp_path):
    make_spikingjelly(tmp_path, np.random.default_rng(1))
    layout, folder = find_dvs_gesture(tmp_path)
    data = load_dvs_gesture(layout, folder, "train")
    assert layout == "spikingjelly" and len(data) == 11
    assert sorted(r.label for r in data.samples) == list(range(11))


def test_label_file_rows_kept_as_written(tmp_path):
    f = tmp_path / "user01_natural_labels.csv"
    f.write_text("class,startTime_usec,endTime_usec\n1,10,20\n8,30,40\n5,50,60\n4,70,80\n8,90,99\n")
    assert read_label_file(f) == [(0, 10, 20), (7, 30, 40), (4, 50, 60), (3, 70, 80), (7, 90, 99)]


def test_real_label_file_parses():
    from conftest import GESTURE_DIR

    f = GESTURE_DIR / "user01_natural_labels.csv"
    if not f.is_file():
        pytest.skip("real label file not found (../shared is absent)")
    rows = read_label_file(f)
    assert rows and all(0 <= c < 11 and s < e for c, s, e in rows)


@pytest.mark.parametrize("content, message", [
    ("start,end\n1,2\n", "not a DVS Gesture label file"),
    ("class,startTime_usec,endTime_usec\n12,1,2\n", "class 12"),
    ("class,startTime_usec,endTime_usec\n3,5,2\n", "ends before it starts"),
])
def test_bad_label_files(tmp_path, content, message):
    f = tmp_path / "x_labels.csv"
    f.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_label_file(f)


def test_wrong_layout_and_missing_pieces(tmp_path):
    with pytest.raises(DatasetError, match="not a DVS Gesture folder"):
        find_dvs_gesture(tmp_path)
    with pytest.raises(DatasetError, match="no such data directory"):
        find_dvs_gesture(tmp_path / "nope")
    (tmp_path / "trials_to_test.txt").write_text("user01_led.aedat\n")
    with pytest.raises(DatasetError, match="lists user01_led.aedat"):
        load_dvs_gesture("ibm", tmp_path, "test")


@pytest.fixture(scope="module")
def gesture_model(tmp_path_factory):
    """A tiny model calibrated on this file's kind of samples (500 uniform events on 128x128, 4
    steps) so that every layer fires on them."""
    pytest.importorskip("torch")
    from conftest import calibrated_checkpoint
    from eventformer_cli.main import app
    from torch_reference import RefConfig

    d = tmp_path_factory.mktemp("gmodel")
    cfg = RefConfig(image_size=128, sps_channels=(8, 8, 16, 16), dim=16, heads=2, depth=1)
    rng = np.random.default_rng(3)
    calibrated_checkpoint(d / "g.pth", cfg, [_events(rng, 500) for _ in range(4)], 4, seed=0)
    r = runner.invoke(app, ["export", str(d / "g.pth"), "-o", str(d / "g.h5"), "--heads", "2",
                            "--steps", "4", "--classes", "dvs-gesture"])
    assert r.exit_code == 0, r.output
    return d / "g.h5"


def test_infer_dataset_json_and_summary(tmp_path, gesture_model):
    from conftest import assert_every_layer_fires
    from eventformer_cli.main import app

    make_tonic(tmp_path, np.random.default_rng(2))
    r = runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "--data-dir", str(tmp_path),
                            "-w", str(gesture_model), "--limit", "5", "--json"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 6
    assert all({"label", "sample", "prediction", "logits", "layers", "ops"} <= set(x)
               for x in lines[:5])
    for x in lines[:5]:
        assert_every_layer_fires(x["layers"])
    summary = lines[-1]
    assert summary["samples"] == 5 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["split_convention"].startswith("tonic")
    assert sum(map(sum, summary["confusion"])) == 5
    human = runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "--data-dir", str(tmp_path),
                                "-w", str(gesture_model), "--limit", "3"])
    assert human.exit_code == 0 and "confusion matrix" in human.stderr


def test_embedded_synthetic_default(tmp_path, monkeypatch, gesture_model):
    """No data anywhere: infer --dataset runs on the generated synthetic set and says so."""
    from eventformer_cli.main import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("EVENTFORMER_DATA", raising=False)
    r = runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "-w", str(gesture_model),
                            "--limit", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert "embedded synthetic test set" in r.stderr and "not the real dataset" in r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["synthetic"] and summary["samples"] == 2
    assert summary["split_convention"].startswith("synthetic")


def _tarball(tmp_path):
    import tarfile

    src = tmp_path / "src" / "ibmGestureTest" / "user24_led"
    src.mkdir(parents=True)
    np.save(src / "3.npy", np.array([[1, 2, 1, 5.0]]))
    archive = tmp_path / "ibmGestureTest.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "ibmGestureTest", arcname="ibmGestureTest")
    return archive


def test_fetch_verifies_md5_and_extracts(tmp_path):
    from eventformer.fetch import Archive, fetch_dvs_gesture, md5sum

    archive = _tarball(tmp_path)
    good = {"test": Archive(archive.as_uri(), archive.name, md5sum(archive))}
    out = fetch_dvs_gesture(tmp_path / "data", ("test",), archives=good)
    layout, folder = find_dvs_gesture(out)
    assert layout == "tonic" and len(load_dvs_gesture(layout, folder, "test")) == 1
    bad = {"test": Archive(archive.as_uri(), "other.tar.gz", "0" * 32)}
    from eventformer.errors import EventformerError

    with pytest.raises(EventformerError, match="does not match"):
        fetch_dvs_gesture(tmp_path / "data2", ("test",), archives=bad)
    assert not (tmp_path / "data2" / "other.tar.gz.part").exists()


def test_fetch_offline_is_one_sentence_with_manual_steps(tmp_path):
    from eventformer.errors import EventformerError
    from eventformer.fetch import Archive, fetch_dvs_gesture

    closed = {"test": Archive("http://127.0.0.1:9/ibmGestureTest.tar.gz", "ibmGestureTest.tar.gz",
                              "0" * 32)}
    with pytest.raises(EventformerError, match="cannot download .* by hand"):
        fetch_dvs_gesture(tmp_path, ("test",), archives=closed)


def test_tonic_dataset_names_and_options(tmp_path, gesture_model):
    from eventformer_cli.main import app

    r = runner.invoke(app, ["infer", "--dataset", "tonic:NoSuchSet", "--data-dir", str(tmp_path),
                            "-w", str(gesture_model)])
    assert r.exit_code == 2 and "tonic has no dataset 'NoSuchSet'" in r.stderr
    assert "NMNIST" in r.stderr
    r = runner.invoke(app, ["infer", "--dataset", "tonic:NMNIST", "-w", str(gesture_model)])
    assert r.exit_code == 2 and "needs --data-dir" in r.stderr
    r = runner.invoke(app, ["infer", "--dataset", "mnist", "-w", str(gesture_model)])
    assert r.exit_code == 2 and "unknown dataset" in r.stderr


@pytest.mark.parametrize("ordered", [True, False])
def test_segments_of_a_recording_are_its_events_in_each_window(monkeypatch, ordered):
    """The IBM layout's samples are [start, end) windows of one recording: each gets exactly
    the events whose t lies in it, in the recording's order, whether the recording is
    time-ordered (found by bisection) or not (a mask), with windows that share a boundary
    timestamp, start before the first event or end after the last."""
    from types import SimpleNamespace

    import eventformer.datasets as ds

    rng = np.random.default_rng(3)
    ev = _events(rng, 5000)
    ev["t"] //= 1000  # many events share a timestamp
    if not ordered:
        ev = ev[rng.permutation(ev.shape[0])]
    monkeypatch.setattr(ds, "read_events", lambda source: SimpleNamespace(events=ev))
    t = np.sort(ev["t"])
    a, b, c, last = int(t[10]), int(t[2000]), int(t[4000]), int(t[-1])
    windows = [(-5, a), (a, b), (b, b + 1), (b + 1, c), (c, last + 100), (last + 5, last + 9)]
    samples = [ds.SampleRef("rec.aedat", label, w, label) for label, w in enumerate(windows)]
    data = ds.GestureSet(root=None, split="test", layout="ibm", samples=samples)
    got = list(data.iter_events())
    assert [ref.segment for ref, _ in got] == windows
    for (start, end), (_, events) in zip(windows, got):
        expect = ev[(ev["t"] >= start) & (ev["t"] < end)]
        np.testing.assert_array_equal(events, expect)
    assert sum(len(e) for _, e in got[:5]) == ev.shape[0]  # every event in one window
    assert len(got[2][1]) > 1 and len(got[5][1]) == 0
