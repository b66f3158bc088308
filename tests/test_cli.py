"""The command line as a user meets it: JSON shape, the golden acceptance test, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import (GOLDEN, OFFICIAL_CKPT, assert_every_layer_fires, need_gesture,
                      need_official, one_error_line)
from eventformer.events import write_npy

from eventformer_cli.main import app

runner = CliRunner()
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny model calibrated on this file's kind of input (uniform 32x32 events, 4 steps of 500
    to 750 events) so that every layer fires: comparisons on it are not of two silent nets."""
    from conftest import calibrated_checkpoint, uniform_events
    from torch_reference import RefConfig

    d = tmp_path_factory.mktemp("model")
    cfg = RefConfig(image_size=32, sps_channels=(16, 32), dim=32, heads=4, depth=1, num_classes=4)
    rng = np.random.default_rng(7)
    calibrated_checkpoint(d / "tiny.pth", cfg, [uniform_events(rng, n, 32) for n in (3000, 2000)],
                          4, seed=3)
    r = runner.invoke(app, ["export", str(d / "tiny.pth"), "-o", str(d / "tiny.h5"), "--heads",
                            "4", "--steps", "4", "--classes", "a,b,c,d"])
    assert r.exit_code == 0, r.output
    return d / "tiny.h5"


@pytest.fixture()
def recording(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    ev = np.zeros(n, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = np.sort(rng.integers(0, 50_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 32, n), rng.integers(0, 32, n), rng.integers(0, 2, n)
    write_npy(tmp_path / "rec.npy", ev)
    return tmp_path / "rec.npy"


def test_infer_json_shape(tiny_model, recording):
    r = runner.invoke(app, ["infer", str(recording), "-w", str(tiny_model), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) >= {"file", "events", "steps", "prediction", "class_name", "logits", "layers",
                        "ops", "seconds"}
    assert out["events"] == 3000 and out["steps"] == 4 and len(out["logits"]) == 4
    assert out["class_name"] == "abcd"[out["prediction"]]
    names = [x["name"] for x in out["layers"]]
    assert names[:3] == ["patch_embed.proj_lif", "patch_embed.proj_lif1", "patch_embed.rpe_lif"]
    assert "block.0.attn.attn_lif" in names and names[-1] == "head"
    for key in ("neurons", "spikes", "ac", "mac"):
        assert all(isinstance(x[key], int) for x in out["layers"])
    assert_every_layer_fires(out["layers"])
    assert set(out["ops"]) >= {"ac", "mac", "sop_paper", "energy_uj"}
    assert out["ops"]["mac"] > 0 and out["ops"]["ac"] > 0


def test_infer_human_table(tiny_model, recording):
    r = runner.invoke(app, ["infer", str(recording), "-w", str(tiny_model)])
    assert r.exit_code == 0
    assert "rec.npy" in r.stderr and "patch_embed.proj_lif" in r.stderr
    assert r.stdout == ""  # human output goes to stderr


def test_empty_file_is_not_classified(tiny_model, tmp_path):
    empty = tmp_path / "empty.bs2"
    empty.write_bytes(b"")
    line = one_error_line(runner.invoke(app, ["infer", str(empty), "-w", str(tiny_model)]))
    assert line == f"error: {empty}: empty file: no header and no events"


def test_recording_without_events_is_not_classified(tiny_model, tmp_path):
    write_npy(tmp_path / "none.npy", np.zeros(0, dtype=[("t", "<i8"), ("x", "<i2"),
                                                        ("y", "<i2"), ("p", "u1")]))
    line = one_error_line(runner.invoke(app, ["infer", str(tmp_path / "none.npy"), "-w",
                                              str(tiny_model)]))
    assert "none.npy" in line and "no events" in line


def test_text_is_not_read_as_events(tiny_model, tmp_path):
    for name in ("hello.bs2", "hello.txt"):
        (tmp_path / name).write_text("hello world, this is not an event recording\n" * 3)
        line = one_error_line(runner.invoke(app, ["infer", str(tmp_path / name), "-w",
                                                  str(tiny_model)]))
        assert name in line and ("text" in line if name.endswith(".bs2") else "unknown" in line)


def test_missing_file(tiny_model, tmp_path):
    line = one_error_line(runner.invoke(app, ["infer", str(tmp_path / "nope.bs2"), "-w",
                                              str(tiny_model)]))
    assert "nope.bs2" in line


def test_truncated_recording_is_read_with_a_warning(tiny_model, tmp_path):
    bad = tmp_path / "cut.bs2"
    bad.write_bytes(bytes(5 * 10 + 3))  # ten events and a torn one
    r = runner.invoke(app, ["infer", str(bad), "-w", str(tiny_model), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["events"] == 10
    assert "cut.bs2" in r.stderr and "incomplete record" in r.stderr


def test_unknown_format(tiny_model, tmp_path):
    bad = tmp_path / "x.aedat"
    bad.write_bytes(b"#!AER-DAT9.9\r\n# header\r\n" + bytes(17))
    line = one_error_line(runner.invoke(app, ["infer", str(bad), "-w", str(tiny_model)]))
    assert "unknown" in line


def test_events_outside_the_sensor(tiny_model, tmp_path):
    ev = np.zeros(3, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["x"] = [1, 2, 100]
    write_npy(tmp_path / "big.npy", ev)
    line = one_error_line(runner.invoke(app, ["infer", str(tmp_path / "big.npy"), "-w",
                                              str(tiny_model)]))
    assert "big.npy" in line


def test_wrong_model_file(recording, tmp_path):
    (tmp_path / "m.h5").write_bytes(b"nonsense")
    line = one_error_line(runner.invoke(app, ["infer", str(recording), "-w",
                                              str(tmp_path / "m.h5")]))
    assert "not an HDF5 file" in line


def test_no_weights_and_no_shipped_model(recording, monkeypatch):
    import eventformer.weights

    monkeypatch.setattr(eventformer.weights, "shipped_model_path", lambda name=None: None)
    assert "--weights" in one_error_line(runner.invoke(app, ["infer", str(recording)]))
    line = one_error_line(runner.invoke(app, ["infer", "--dataset", "dvs-gesture"]))
    assert "--weights" in line


def test_export_bad_checkpoint(tmp_path):
    (tmp_path / "c.pth").write_bytes(b"\x00" * 10)
    line = one_error_line(runner.invoke(app, ["export", str(tmp_path / "c.pth"), "-o",
                                              str(tmp_path / "o.h5")]))
    assert "c.pth" in line


def test_inspect(tiny_model):
    r = runner.invoke(app, ["inspect", str(tiny_model), "--json"])
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["config"]["dim"] == 32 and info["parameters"] > 0
    assert info["provenance"]["source_checkpoint"] == "tiny.pth"


@pytest.mark.slow
def test_golden_acceptance_end_to_end(tmp_path, official):
    """export of the official checkpoint + `infer --json` on the real segments, in a fresh
    process as a user runs it: in float64 the float64 reference exactly (logits to 1e-9, every
    layer's spike count), in float32 (the default) within the reference's own float32 spread
    around float64 (conftest `official`), and the golden predictions (the official code's, on
    another machine) are float64's."""
    from torch_reference import Outputs

    need_official()
    gestures = need_gesture()
    model = tmp_path / "spikformer-dvs.h5"
    cli = [sys.executable, "-m", "eventformer_cli.main"]
    subprocess.run(cli + ["export", str(OFFICIAL_CKPT), "-o", str(model), "--classes",
                          "dvs-gesture"], check=True, capture_output=True)
    files = [gestures / name for name in official.names]
    golden = json.loads(GOLDEN.read_text())
    results = {}
    for dtype in ("float64", "float32"):
        proc = subprocess.run(cli + ["infer", *map(str, files), "-w", str(model), "--json",
                                     "--dtype", dtype], check=True, capture_output=True, text=True)
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [x["file"].rsplit("/", 1)[-1] for x in lines] == official.names
        for x in lines:
            assert_every_layer_fires(x["layers"])
        results[dtype] = [Outputs.of(x["logits"], {y["name"]: y["spikes"] for y in x["layers"]})
                          for x in lines]
    for name, got, truth in zip(official.names, results["float64"], official.truth):
        np.testing.assert_allclose(got.logits.numpy(), truth.logits.numpy(), rtol=0, atol=1e-9)
        assert got.counts == truth.counts, name
        assert golden[name]["prediction"] == got.prediction, name
    official.spread.check(results["float32"], "infer --dtype float32")


def test_larger_sensor_is_downsampled_to_the_model_input(tiny_model, tmp_path):
    """tiny_model takes 32x32: a 128x128 recording without a header (npy) is taken as the DVS128's,
    said, or as --sensor-size says."""
    rng = np.random.default_rng(4)
    ev = np.zeros(2000, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = np.sort(rng.integers(0, 10**6, 2000))
    ev["x"], ev["y"] = rng.integers(0, 128, 2000), rng.integers(0, 128, 2000)
    ev["p"] = rng.integers(0, 2, 2000)
    write_npy(tmp_path / "dvs.npy", ev)
    assumed = runner.invoke(app, ["infer", str(tmp_path / "dvs.npy"), "-w", str(tiny_model), "--json"])
    assert assumed.exit_code == 0, assumed.output
    assert "assumed 128x128 (DVS128" in assumed.stderr
    r = runner.invoke(app, ["infer", str(tmp_path / "dvs.npy"), "-w", str(tiny_model),
                            "--sensor-size", "128x128", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(assumed.stdout)["logits"] == json.loads(r.stdout)["logits"]
    # the same events divided by 4 give the same answer, on a model that fires in every layer
    small = ev.copy()
    small["x"] //= 4
    small["y"] //= 4
    write_npy(tmp_path / "small.npy", small)
    r2 = runner.invoke(app, ["infer", str(tmp_path / "small.npy"), "-w", str(tiny_model), "--json"])
    assert r2.exit_code == 0, r2.output
    big, little = json.loads(r.stdout), json.loads(r2.stdout)
    assert_every_layer_fires(big["layers"])
    assert big["logits"] == little["logits"]
    assert [x["spikes"] for x in big["layers"]] == [x["spikes"] for x in little["layers"]]
    bad = runner.invoke(app, ["infer", str(tmp_path / "dvs.npy"), "-w", str(tiny_model),
                              "--sensor-size", "100x128"])
    assert "outside the given 100x128 sensor size" in one_error_line(bad)  # a wrong size is refused
    r3 = runner.invoke(app, ["stream", str(tmp_path / "dvs.npy"), "-w", str(tiny_model),
                             "--sensor-size", "128x128", "--window-events", "500", "--json"])
    assert r3.exit_code == 0, r3.output
    assert json.loads(r3.stdout.splitlines()[-1])["events"] == 2000
