"""`eventformer compare` and the library behind it; shipped models by name (`--weights ds2ta`).

Every run is on the embedded synthetic test set with a few samples. Shipped models other than the
SSA one are stood in for by files in a temporary folder that the registry is pointed at: nothing
is written into weights/.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import one_error_line
from eventformer_cli.main import app

runner = CliRunner()

LIMIT = 3
OPS = ("ac", "mac", "dense_mac", "sop_paper", "energy_uj", "lut", "shift", "compare",
       "attn_entries", "attn_nonzero")


@pytest.fixture(autouse=True)
def no_real_data(monkeypatch):
    """The embedded synthetic set, whatever the machine has."""
    monkeypatch.delenv("EVENTFORMER_DATA", raising=False)
    import eventformer.datasets as datasets

    monkeypatch.setattr(datasets, "find_dvs_gesture", lambda data_dir: None)


def _frames(rng, steps: int, size: int, events: int) -> np.ndarray:
    frames = np.zeros((steps, 2, size, size), np.int64)
    for t in range(steps):
        cx = size / 2 + size / 4 * np.sin(t / 3)
        x = np.clip(cx + rng.normal(0, size / 6, events), 0, size - 1).astype(int)
        y = np.clip(size / 2 + rng.normal(0, size / 5, events), 0, size - 1).astype(int)
        np.add.at(frames[t], (rng.integers(0, 2, events), y, x), 1)
    return frames


def _steps(frames: np.ndarray) -> list:
    out = []
    for frame in frames:
        flat = frame.transpose(1, 2, 0).reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int32)
        out.append((idx, flat[idx].astype(np.int32)))
    return out


@pytest.fixture(scope="module")
def ds2ta_model(tmp_path_factory):
    """A second model: a random DS2TA Spikformer for the synthetic set's 32x32 input and 11
    classes, calibrated so that every layer fires."""
    from eventformer.bench.calibrate import calibrate, random_model
    from eventformer.modelfile import save
    from eventformer.models import SpikformerConfig

    cfg = SpikformerConfig(image_size=32, sps_channels=(16, 32), sps_pool=(True, True), dim=32,
                           heads=4, depth=1, mlp_hidden=64, num_classes=11, steps=8,
                           attention="ds2ta")
    samples = [_steps(_frames(np.random.default_rng(s), cfg.steps, 32, 150)) for s in range(2)]
    model = calibrate(random_model(cfg, 0), samples, 0.2)
    path = tmp_path_factory.mktemp("models") / "random-ds2ta.h5"
    save(path, model)
    return path


@pytest.fixture()
def shipped_folder(tmp_path, monkeypatch, ds2ta_model):
    """The registry's folder in tmp: the real SSA model and a DS2TA stand-in under its name."""
    import eventformer.weights as weights

    ssa = weights.shipped_model_path("ssa")
    folder = tmp_path / "shipped"
    folder.mkdir()
    shutil.copy(ssa, folder / weights.SHIPPED_MODELS["ssa"])
    shutil.copy(ds2ta_model, folder / weights.SHIPPED_MODELS["ds2ta"])
    monkeypatch.setattr(weights, "FOLDER", folder)
    return folder


def _json(args) -> dict:
    r = runner.invoke(app, ["compare", *args, "--json"])
    assert r.exit_code == 0, r.output
    (line,) = r.stdout.splitlines()
    return json.loads(line)


@pytest.fixture(scope="module")
def two_models(ds2ta_model):
    """compare on the shipped SSA model and the DS2TA file, float32 and int8 (the defaults)."""
    import os

    mp = pytest.MonkeyPatch()
    mp.delenv("EVENTFORMER_DATA", raising=False)
    import eventformer.datasets as datasets

    mp.setattr(datasets, "find_dvs_gesture", lambda data_dir: None)
    try:
        assert os.path.isfile(ds2ta_model)
        return _json(["--weights", "ssa", "--weights", str(ds2ta_model), "--limit", str(LIMIT)])
    finally:
        mp.undo()


# --- the comparison ------------------------------------------------------------------------------

def test_json_has_one_run_per_model_and_arithmetic(two_models, ds2ta_model):
    out = two_models
    assert out["samples"] == LIMIT and not out["interrupted"]
    assert out["dataset"]["synthetic"] and out["dataset"]["split"] == "test"
    runs = out["runs"]
    assert [(r["model"], r["attention"], r["dtype"]) for r in runs] == [
        ("ssa", "ssa", "float32"), ("ssa", "ssa", "int8"),
        (ds2ta_model.name, "ds2ta", "float32"), (ds2ta_model.name, "ds2ta", "int8")]
    assert runs[2]["file"] == str(ds2ta_model)
    for r in runs:
        assert r["samples"] == LIMIT and 0.0 <= r["accuracy"] <= 1.0
        assert set(OPS) <= set(r["ops_per_sample"])
        assert r["engine_ms_per_sample"] > 0
        o, e = r["ops_per_sample"], r["energy_table"]
        # the counted ops priced with the run's own arithmetic
        assert e["arithmetic"] == r["dtype"]
        assert o["energy_uj"] == pytest.approx((o["ac"] * e["ac_pj"] + o["mac"] * e["mac_pj"])
                                               * 1e-6)
        assert o["ac"] > 0 and o["attn_entries"] >= o["attn_nonzero"] > 0
    # each operator's own work: DS2TA looks up its NSAD table and shifts, SSA does neither
    assert runs[0]["ops_per_sample"]["lut"] == runs[0]["ops_per_sample"]["shift"] == 0
    assert runs[2]["ops_per_sample"]["lut"] > 0 and runs[2]["ops_per_sample"]["shift"] > 0
    # int8 is priced far below float32
    assert runs[1]["ops_per_sample"]["energy_uj"] < runs[0]["ops_per_sample"]["energy_uj"] / 5


@pytest.mark.parametrize("run_index", [0, 3])
def test_numbers_are_those_infer_gives(two_models, ds2ta_model, run_index):
    run = two_models["runs"][run_index]
    weights = "ssa" if run["model"] == "ssa" else str(ds2ta_model)
    r = runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "--limit", str(LIMIT),
                            "--weights", weights, "--dtype", run["dtype"], "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["summary"] and summary["samples"] == LIMIT
    assert summary["accuracy"] == run["accuracy"] and summary["correct"] == run["correct"]
    assert summary["confusion"] == run["confusion"]
    assert summary["energy_table"] == run["energy_table"]
    for k in OPS:
        assert summary["ops_per_sample"][k] == pytest.approx(run["ops_per_sample"][k],
                                                             rel=1e-12), k
    assert summary["layers_per_sample"] == run["layers_per_sample"]


def test_table_on_stderr_nothing_on_stdout():
    r = runner.invoke(app, ["compare", "--weights", "ssa", "--dtype", "int8", "--limit", "1"])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    for col in ("model", "accuracy", "AC", "MAC", "attn entries", "attn non-zero", "LUT",
                "shift", "compare", "energy uJ", "engine ms"):
        assert col in r.stderr
    assert "int8 0.03/0.3" in r.stderr and "float32" not in r.stderr.split("models:")[0]


def test_default_is_every_shipped_model_installed(shipped_folder):
    out = _json(["--limit", "1", "--dtype", "float32"])
    assert [(r["model"], r["attention"]) for r in out["runs"]] == [("ssa", "ssa"),
                                                                  ("ds2ta", "ds2ta")]
    assert out["runs"][1]["file"] == str(shipped_folder / "spikformer-tiny-ds2ta-synth.h5")


@pytest.mark.parametrize("as_json", [True, False])
def test_ctrl_c_prints_the_samples_every_run_finished(monkeypatch, as_json):
    import eventformer.compare as compare

    real, calls = compare.classify, []

    def classify_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # sample 2, second run: sample 2 is dropped from every row
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "classify", classify_then_interrupt)
    r = runner.invoke(app, ["compare", "--weights", "ssa", "--limit", "3",
                            *(["--json"] if as_json else [])])
    assert r.exit_code == 130, r.output
    assert "interrupted: the table covers 1 of 3 samples" in r.stderr
    if as_json:
        out = json.loads(r.stdout)
        assert out["interrupted"] and out["samples"] == 1
        assert [run["samples"] for run in out["runs"]] == [1, 1]
    else:
        assert "1 sample of the test split" in r.stderr and "engine ms" in r.stderr
        assert r.stdout == ""


# --- errors: one sentence, exit 2 ----------------------------------------------------------------

def test_bad_model_file(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    line = one_error_line(runner.invoke(app, ["compare", "--weights", "ssa", "--weights",
                                              str(junk), "--limit", "1"]))
    assert "junk.h5" in line and "HDF5" in line


@pytest.mark.parametrize("args,words", [
    (["--dataset", "tonic:NMNIST"], "--data-dir"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--split", "val"], "--split"),
])
def test_missing_or_unknown_dataset(args, words):
    line = one_error_line(runner.invoke(app, ["compare", "--weights", "ssa", *args]))
    assert words in line


def test_unknown_arithmetic_is_refused_by_the_option():
    r = runner.invoke(app, ["compare", "--dtype", "int4"])
    assert r.exit_code == 2 and "int4" in r.output


def test_no_shipped_model_installed(tmp_path, monkeypatch):
    import eventformer.weights as weights

    monkeypatch.setattr(weights, "FOLDER", tmp_path)
    line = one_error_line(runner.invoke(app, ["compare", "--limit", "1"]))
    assert "not installed" in line and "--weights" in line


# --- the library ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_test_set():
    from eventformer.datasets import open_dataset

    return open_dataset("synthetic-gesture", None, "test")


def test_library_runs_each_arithmetic_once_in_the_order_given(synthetic_test_set, ds2ta_model):
    from eventformer.compare import compare

    calls = []
    out = compare([("mine", ds2ta_model)], synthetic_test_set, dtypes=("int8", "float32", "int8"),
                  limit=2, on_sample=calls.append)
    assert [r["dtype"] for r in out["runs"]] == ["int8", "float32"]
    assert calls == [1, 2] and out["samples"] == 2
    assert out["runs"][0]["model"] == "mine" and out["runs"][0]["attention"] == "ds2ta"


def test_library_refuses_nothing_to_compare(synthetic_test_set, ds2ta_model):
    from eventformer.compare import compare
    from eventformer.errors import EventformerError

    with pytest.raises(EventformerError, match="no model"):
        compare([], synthetic_test_set)
    with pytest.raises(EventformerError, match="unknown arithmetic 'int4'"):
        compare([("m", ds2ta_model)], synthetic_test_set, dtypes=("int4",))


def test_evaluate_reports_the_attention_counters_per_sample(synthetic_test_set, ds2ta_model):
    from eventformer.evaluate import evaluate
    from eventformer.modelfile import load
    from eventformer.models import Spikformer

    engine = Spikformer(load(ds2ta_model))
    records = []
    s = evaluate(engine, synthetic_test_set, limit=2, on_sample=lambda rec, _r: records.append(rec))
    for k in ("lut", "shift", "compare", "attn_entries", "attn_nonzero"):
        total = sum(r["ops"][k] for r in records)
        assert s["ops_total"][k] == total and s["ops_per_sample"][k] == total / 2
    assert s["ops_per_sample"]["shift"] > 0
    assert s["engine_ms_per_sample"] == pytest.approx(1000 * s["engine_seconds"] / 2)


# --- shipped models by name ----------------------------------------------------------------------

def test_registry_names_every_shipped_model():
    import eventformer.weights as weights

    assert weights.SHIPPED_MODELS["ssa"] == weights.SHIPPED_MODEL == "spikformer-tiny-synth.h5"
    assert set(weights.SHIPPED_MODELS) == {"ssa", "ds2ta", "ssa_bin", "saformer", "qkformer",
                                           "sdt"}
    assert set(weights.installed_models()) == set(weights.SHIPPED_MODELS)
    assert weights.shipped_model_path() == weights.shipped_model_path("ssa")
    assert weights.shipped_model_path("ssa").name == "spikformer-tiny-synth.h5"


def test_weights_by_name(shipped_folder):
    from pathlib import Path

    from eventformer_cli.common import resolve_weights

    assert resolve_weights(Path("ds2ta")) == shipped_folder / "spikformer-tiny-ds2ta-synth.h5"
    assert resolve_weights(Path("ssa")) == shipped_folder / "spikformer-tiny-synth.h5"
    assert resolve_weights(None) == shipped_folder / "spikformer-tiny-synth.h5"


def test_a_path_that_exists_wins_over_a_name(shipped_folder, tmp_path, monkeypatch, ds2ta_model):
    from pathlib import Path

    from eventformer_cli.common import resolve_weights

    monkeypatch.chdir(tmp_path)
    shutil.copy(ds2ta_model, tmp_path / "ssa")
    assert resolve_weights(Path("ssa")) == Path("ssa")


def test_infer_and_stream_take_a_name(shipped_folder, tmp_path):
    from eventformer.events import EVENT_DTYPE, write_npy

    r = runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "--limit", "1", "--weights",
                            "ds2ta", "--json"])
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout.splitlines()[0])
    assert first["attention"] == "ds2ta"
    ev = np.zeros(2000, EVENT_DTYPE)
    rng = np.random.default_rng(0)
    ev["t"] = np.sort(rng.integers(0, 300_000, ev.size))
    ev["x"], ev["y"] = rng.integers(0, 32, ev.size), rng.integers(0, 32, ev.size)
    write_npy(tmp_path / "rec.npy", ev)
    r = runner.invoke(app, ["stream", str(tmp_path / "rec.npy"), "--weights", "ds2ta", "--json"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("command", [["infer", "--dataset", "dvs-gesture"], ["compare"]])
def test_unknown_name_lists_the_names(shipped_folder, command):
    line = one_error_line(runner.invoke(app, [*command, "--weights", "ds2tb"]))
    assert "ds2tb" in line
    assert "ssa, ds2ta, ssa_bin, saformer" in line  # known
    assert "installed: ssa, ds2ta" in line


def test_a_shipped_name_not_installed(shipped_folder):
    line = one_error_line(runner.invoke(app, ["compare", "--weights", "saformer"]))
    assert "saformer" in line and "spikformer-tiny-saformer-synth.h5" in line
    assert "not installed" in line and "installed: ssa, ds2ta" in line


def test_a_missing_path_is_one_sentence(tmp_path):
    line = one_error_line(runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "--weights",
                                              str(tmp_path / "nope.h5")]))
    assert "nope.h5: no such model file" in line


def test_the_shipped_model_is_announced_by_any_name(shipped_folder):
    r = runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "--limit", "1", "--weights",
                            "ds2ta"])
    assert r.exit_code == 0, r.output
    assert "model: the shipped spikformer-tiny-ds2ta-synth.h5 (ds2ta" in r.stderr


def test_default_arithmetics_skip_an_integer_mode_a_model_refuses(ds2ta_model, tmp_path):
    """A model an integer mode refuses (here a tau that is not a power of two: its decay is no
    shift) runs in compare's default arithmetics in float32 only, said in one line; int8 asked
    for on purpose is refused (exit 2)."""
    from eventformer.modelfile import load, save

    model = load(ds2ta_model)
    model.layers["block.0.mlp.fc1_lif"].tau = 3.0
    path = tmp_path / "tau3.h5"
    save(path, model)
    out = _json(["--weights", str(path), "--weights", "ssa", "--limit", "1"])
    assert [(r["model"], r["dtype"]) for r in out["runs"]] == [
        (path.name, "float32"), ("ssa", "float32"), ("ssa", "int8")]
    (line,) = out["skipped"]
    assert line.startswith(f"{path.name} not run in int8: block.0.mlp.fc1_lif: ") and \
        "power of two" in line
    r = runner.invoke(app, ["compare", "--weights", str(path), "--dtype", "int8", "--limit",
                            "1"])
    assert r.exit_code == 2
    one_error_line(r)


def test_every_shipped_model_runs_in_int8():
    """The default models (every shipped one) in int8: none skipped, the Spike-driven
    Transformer included (its membrane stream in one shared unit per channel)."""
    from eventformer.weights import installed_models

    out = _json(["--dtype", "int8", "--limit", "1"])
    assert out["skipped"] == []
    assert [r["model"] for r in out["runs"]] == list(installed_models())
    assert "sdt" in {r["model"] for r in out["runs"]}
