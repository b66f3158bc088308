"""The command line as a user meets it: JSON shape, the golden acceptance test, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import GOLDEN, OFFICIAL_CKPT, need_gesture, need_official, one_error_line
from eventformer.events import write_npy

from eventformer_cli.main import app

runner = CliRunner()
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from torch_reference import RefConfig, random_state_dict

    d = tmp_path_factory.mktemp("model")
    cfg = RefConfig(image_size=32, sps_channels=(16, 32), dim=32, heads=4, depth=1, num_classes=4)
    torch.save({"model": random_state_dict(cfg, 3)}, d / "tiny.pth")
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
    assert set(out["ops"]) >= {"ac", "mac", "sop_paper", "energy_uj"}
    assert out["ops"]["mac"] > 0 and out["ops"]["ac"] > 0


def test_infer_human_table(tiny_model, recording):
    r = runner.invoke(app, ["infer", str(recording), "-w", str(tiny_model)])
    assert r.exit_code == 0
    assert "rec.npy" in r.stderr and "patch_embed.proj_lif" in r.stderr
    assert r.stdout == ""  # human output goes to stderr


def test_empty_recording_is_valid(tiny_model, tmp_path):
    empty = tmp_path / "empty.bs2"
    empty.write_bytes(b"")
    r = runner.invoke(app, ["infer", str(empty), "-w", str(tiny_model), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["events"] == 0 and len(out["logits"]) == 4
    assert all(x["ac"] == 0 for x in out["layers"] if x["name"] == "patch_embed.proj_lif")


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
    import eventformer_cli.main as cli

    monkeypatch.setattr(cli, "SHIPPED_MODEL", "no-such-model.h5")
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
def test_golden_acceptance_end_to_end(tmp_path):
    """export of the official checkpoint + `infer --json` on the real segments, in a fresh
    process as a user runs it, gives the official forward's predictions and spike counts."""
    need_official()
    gestures = need_gesture()
    model = tmp_path / "spikformer-dvs.h5"
    cli = [sys.executable, "-m", "eventformer_cli.main"]
    subprocess.run(cli + ["export", str(OFFICIAL_CKPT), "-o", str(model), "--classes",
                          "dvs-gesture"], check=True, capture_output=True)
    files = sorted(gestures.glob("*.bs2"))
    proc = subprocess.run(cli + ["infer", *map(str, files), "-w", str(model), "--json"],
                          check=True, capture_output=True, text=True)
    golden = json.loads(GOLDEN.read_text())
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(files)
    for res in results:
        want = golden[res["file"].rsplit("/", 1)[-1]]
        assert res["prediction"] == want["prediction"]
        np.testing.assert_allclose(res["logits"], want["logits"], atol=1e-3)
        spikes = {x["name"]: x["spikes"] for x in res["layers"]}
        for name, count in want["spikes"].items():
            assert abs(spikes[name] - count) <= max(2, 1e-3 * count), (name, spikes[name], count)


def test_larger_sensor_is_downsampled_to_the_model_input(tiny_model, tmp_path):
    """tiny_model takes 32x32: a 128x128 recording needs its sensor size (no header in npy)."""
    rng = np.random.default_rng(4)
    ev = np.zeros(2000, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = np.sort(rng.integers(0, 10**6, 2000))
    ev["x"], ev["y"] = rng.integers(0, 128, 2000), rng.integers(0, 128, 2000)
    write_npy(tmp_path / "dvs.npy", ev)
    line = one_error_line(runner.invoke(app, ["infer", str(tmp_path / "dvs.npy"), "-w",
                                              str(tiny_model)]))
    assert "--sensor-size" in line
    r = runner.invoke(app, ["infer", str(tmp_path / "dvs.npy"), "-w", str(tiny_model),
                            "--sensor-size", "128x128", "--json"])
    assert r.exit_code == 0, r.output
    # the same events divided by 4 give the same answer
    small = ev.copy()
    small["x"] //= 4
    small["y"] //= 4
    write_npy(tmp_path / "small.npy", small)
    r2 = runner.invoke(app, ["infer", str(tmp_path / "small.npy"), "-w", str(tiny_model), "--json"])
    assert json.loads(r.stdout)["logits"] == json.loads(r2.stdout)["logits"]
    bad = runner.invoke(app, ["infer", str(tmp_path / "dvs.npy"), "-w", str(tiny_model),
                              "--sensor-size", "100x128"])
    assert "integer downsampling factor" in one_error_line(bad)
    r3 = runner.invoke(app, ["stream", str(tmp_path / "dvs.npy"), "-w", str(tiny_model),
                             "--sensor-size", "128x128", "--window-events", "500", "--json"])
    assert r3.exit_code == 0, r3.output
    assert json.loads(r3.stdout.splitlines()[-1])["events"] == 2000
