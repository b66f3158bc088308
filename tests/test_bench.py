"""`eventformer bench`: interleaved timing, medians and spreads, the scatter/GEMM split of the
counted accumulates, option checking, partial results on Ctrl-C. Tiny models and fake clocks
only: the full-size timings are the bench's job, not the tests'."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
from conftest import one_error_line
from eventformer_cli.main import app
from typer.testing import CliRunner

from eventformer.bench import allocator
from eventformer.bench.accounting import PathMeter
from eventformer.bench.calibrate import calibrate, random_model
from eventformer.bench.run import (
    BenchInterrupted,
    BenchOptions,
    _RateRun,
    bench_config,
    check_options,
    load_samples,
    run_bench,
)
from eventformer.bench.timing import OtherLoad, interleave, spread
from eventformer.errors import EventformerError
from eventformer.events import write_npy
from eventformer.layers import PathPolicy
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.bench.run import BENCH_OPERATORS
from eventformer.runtime import engine_threads

runner = CliRunner()
TINY = SpikformerConfig(image_size=32, sps_channels=(16, 32), sps_pool=(True, True), dim=32,
                        heads=4, depth=1, mlp_hidden=64, num_classes=4, steps=4)


def _events(n=3000, size=32, seed=0):
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = np.sort(rng.integers(0, 50_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, size, n), rng.integers(0, size, n), \
        rng.integers(0, 2, n)
    return ev


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "rec.npy"
    write_npy(path, _events())
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("bench-cache"))


@pytest.fixture(scope="module", autouse=True)
def keep_engine_threads():
    """run_bench pins the engine's and torch's threads process-wide: give the other tests
    theirs back."""
    from eventformer.runtime import set_engine_threads

    before = engine_threads()
    try:
        import torch
    except ImportError:
        torch = None
    torch_before = torch.get_num_threads() if torch is not None else None
    yield
    set_engine_threads(before)
    if torch is not None:
        torch.set_num_threads(torch_before)


class FakeClock:
    """perf_counter stand-in: each timed call lasts the next of ``durations``; raises
    KeyboardInterrupt on call number ``interrupt_at`` (1-based) if given."""

    def __init__(self, durations, interrupt_at=None):
        self.durations = list(durations)
        self.calls = 0
        self.now = 0.0
        self.interrupt_at = interrupt_at

    def __call__(self):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if self.calls % 2 == 0:  # the end of a timed call
            self.now += self.durations.pop(0)
        return self.now


# --- timing ---------------------------------------------------------------------------------------

def test_interleave_runs_engine_then_torch_per_file_and_round():
    calls, recorded = [], []
    sides = {"engine": lambda i: calls.append(("engine", i)),
             "dense": lambda i: calls.append(("dense", i))}
    clock = FakeClock([1, 10, 2, 20, 3, 30, 4, 40])
    interleave(2, sides, 2, lambda *a: recorded.append(a), clock)
    assert calls == [("engine", 0), ("dense", 0), ("engine", 1), ("dense", 1)] * 2
    assert recorded == [("engine", 0, 1), ("dense", 0, 10), ("engine", 1, 2), ("dense", 1, 20),
                        ("engine", 0, 3), ("dense", 0, 30), ("engine", 1, 4), ("dense", 1, 40)]


def test_interleave_keeps_what_was_timed_before_an_interrupt():
    recorded = []

    def dense(i):
        if len(recorded) == 3:
            raise KeyboardInterrupt

    clock = FakeClock([1.0] * 10)
    with pytest.raises(KeyboardInterrupt):
        interleave(1, {"engine": lambda i: None, "dense": dense}, 5,
                   lambda *a: recorded.append(a), clock)
    assert [a[0] for a in recorded] == ["engine", "dense", "engine"]


def test_spread_median_min_max_and_instability():
    s = spread([0.4, 6.9, 0.38])
    assert (s.median, s.min, s.max) == (0.4, 0.38, 6.9)
    assert s.ratio == pytest.approx(6.9 / 0.38)
    assert s.unstable() and s.to_dict()["unstable"]
    assert spread([1.0, 2.0]).median == 1.5
    calm = spread([1.0, 1.2, 1.4])
    assert not calm.unstable() and not calm.to_dict()["unstable"]
    assert calm.unstable(limit=1.3)
    assert not spread([5.0]).unstable()  # one time: no spread to judge
    with pytest.raises(ValueError):
        spread([])


def _fake_rate_run(times_engine, times_dense, other_load=None):
    run = _RateRun(0.05, "m.h5", [object()], 4, dense=True)
    run.rows = [{"file": "a.bs2", "events": 1000, "duration_s": 1.0, "prediction": 0,
                 "ac": 10, "mac": 0, "dense_mac": 99, "ac_scatter": 6, "scatter_s": 0.5,
                 "scatter_ac_per_s": 12.0, "ac_gemm_steps": 4, "firing_rate": 0.05}]
    run.times = {"engine": [list(times_engine)], "dense": [list(times_dense)]}
    run.other_load = other_load
    return run


def test_rate_entry_speedup_is_the_ratio_of_medians_and_flags_spread():
    run = _fake_rate_run([0.1, 0.3, 0.2], [0.38, 6.9, 0.4])
    entry = run.entry(complete=True)
    row = entry["files"][0]
    assert row["engine_s"] == 0.2 and row["dense_s"] == 0.4
    assert row["speedup"] == pytest.approx(2.0)  # not 6.9 / 0.1, not best of either side
    assert row["speedup_pairs"] == pytest.approx([0.4 / 0.2, 6.9 / 0.3])
    assert row["events_per_s"] == pytest.approx(1000 / 0.2)
    assert row["engine"]["unstable"] and row["dense"]["unstable"]  # 3x and 18x
    assert entry["unstable"] == {"engine": True, "dense": True}
    assert len(run.warnings) == 2
    assert all("\n" not in w and w.startswith("warning:") for w in run.warnings)
    assert "torch" in run.warnings[1] and "0.380..6.900" in run.warnings[1]
    calm = _fake_rate_run([0.2, 0.21], [0.4, 0.41]).entry(complete=True)
    assert calm["unstable"] == {"engine": False, "dense": False}


def test_rate_entry_warns_when_other_processes_were_busy():
    run = _fake_rate_run([0.2, 0.21], [0.4, 0.41], other_load=0.9)
    entry = run.entry(complete=True)
    assert entry["busy"] and len(run.warnings) == 1 and "other processes" in run.warnings[0]
    assert not _fake_rate_run([0.2], [0.4], other_load=0.05).entry(True)["busy"]


def test_other_load_is_a_nonnegative_core_count():
    with OtherLoad() as load:
        time.sleep(0.1)
    assert load.cores is None or load.cores >= 0.0


# --- the scatter / GEMM split of counted accumulates ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_and_steps(recording):
    samples = load_samples([str(recording)], TINY.steps, TINY.image_size)
    model = calibrate(random_model(TINY, 1), [s.steps for s in samples], 0.2)
    return model, samples[0].steps


def _metered_run(model, steps, policy):
    engine = Spikformer(model, policy=policy)
    engine.run(steps)
    engine.clear_stats()
    with PathMeter(engine) as meter:
        engine.run(steps)
    stats = engine.layer_stats()
    total = sum(s["ac"] for s in stats)
    split = meter.summary()
    assert not any("_sparse_current" in vars(layer) for layer in engine.layers)  # unwrapped
    return split, total, stats


@pytest.mark.parametrize("mode", ["sparse", "dense", "mixed"])
def test_scatter_accumulates_exclude_gemm_work(tiny_model_and_steps, mode):
    model, steps = tiny_model_and_steps
    # mixed: every conv step runs as a GEMM, every linear step as a scatter
    policy = (PathPolicy(mode=mode) if mode != "mixed"
              else PathPolicy(conv_threshold=0.0, linear_threshold=1.0))
    split, total, stats = _metered_run(model, steps, policy)
    assert split["unmetered_layers"] == []
    parts = split["ac_scatter"] + split["ac_gemm_steps"] + split["ac_attention"] + stats[-1]["ac"]
    assert parts == total  # every counted accumulate is attributed to exactly one path
    dense_mac = sum(s["dense_mac"] for s in stats)
    if mode == "dense":
        assert split["ac_scatter"] == 0 and split["scatter_s"] == 0.0
        assert split["scatter_ac_per_s"] is None  # no scatter: no rate, whatever the GEMMs did
        assert split["ac_gemm_steps"] > 0 and dense_mac > 0
    elif mode == "sparse":
        assert split["ac_gemm_steps"] == 0 and dense_mac == 0
        assert split["ac_scatter"] > 0 and split["scatter_s"] > 0
    else:
        assert split["ac_scatter"] > 0 and split["ac_gemm_steps"] > 0
        assert split["scatter_ac_per_s"] == pytest.approx(split["ac_scatter"] / split["scatter_s"])
        assert split["ac_scatter"] < total


# --- run_bench end to end on a tiny model, with a fake clock --------------------------------------

def _tiny_opts(recording, cache_dir, **kw):
    kw.setdefault("config", TINY)
    kw.setdefault("compiled", False)  # compiling takes minutes: the tests give a stand-in
    return BenchOptions(files=[str(recording)], rates=(0.2,), repeat=3, threads=engine_threads(),
                        cold_start=False, cache_dir=cache_dir, **kw)


def test_run_bench_reports_medians_spreads_and_scatter_rate(recording, cache_dir):
    pytest.importorskip("torch")
    warnings = []
    clock = FakeClock([0.1, 1.0, 0.2, 1.1, 0.9, 1.2])  # engine 0.1/0.2/0.9, torch 1.0/1.1/1.2
    result = run_bench(_tiny_opts(recording, cache_dir), log=lambda m: None,
                       warn=warnings.append, clock=clock)
    json.dumps(result)
    assert result["interrupted"] is False and result["allocator"]["settings"] == \
        allocator.MALLOC_SETTINGS
    entry = result["rates"][0]
    row = entry["files"][0]
    assert row["engine"]["times_s"] == pytest.approx([0.1, 0.2, 0.9])
    assert row["dense"]["times_s"] == pytest.approx([1.0, 1.1, 1.2])
    assert row["speedup"] == pytest.approx(1.1 / 0.2)
    assert row["engine"]["unstable"] and not row["dense"]["unstable"]
    assert result["unstable"] and entry["unstable"] == {"engine": True, "dense": False}
    assert [w for w in warnings if "engine times" in w] and \
        not [w for w in warnings if "torch times" in w]
    assert set(result["warnings"]) == set(warnings)
    # accumulates per second: scatter steps only, per second spent in them
    assert row["ac_unattributed"] == 0
    if row["ac_scatter"]:
        assert row["scatter_ac_per_s"] == pytest.approx(row["ac_scatter"] / row["scatter_s"])
    assert "ac_per_s" not in row  # the old all-AC-over-wall-time figure is gone
    assert result["machine"]["scatter_roofline_ac_per_s"] > 0
    assert result["machine"]["threads"] == result["machine"]["torch_threads"] == engine_threads()


def test_run_bench_interrupted_returns_what_was_measured(recording, cache_dir):
    pytest.importorskip("torch")
    # clock calls: 1-4 round 1 (engine, torch), 5-6 engine of round 2, 7 start of torch, 8 its end
    clock = FakeClock([0.1, 1.0, 0.2, 1.1, 0.3, 1.2], interrupt_at=8)
    with pytest.raises(BenchInterrupted) as info:
        run_bench(_tiny_opts(recording, cache_dir), log=lambda m: None, warn=lambda m: None,
                  clock=clock)
    assert isinstance(info.value, KeyboardInterrupt)
    result = info.value.result
    assert result["interrupted"] is True
    entry = result["rates"][0]
    assert entry["complete"] is False
    row = entry["files"][0]
    assert row["engine"]["times_s"] == pytest.approx([0.1, 0.2])
    assert row["dense"]["times_s"] == pytest.approx([1.0])
    assert row["speedup"] == pytest.approx(1.0 / 0.15)
    json.dumps(result)


# --- the attention operator: the engine against the package's plain-torch model ----------------

@pytest.mark.parametrize("attention", BENCH_OPERATORS)
def test_dense_baseline_is_the_torch_model_for_every_operator(recording, attention):
    """The bench's dense baseline runs the model file through eventformer.torch_model (the tests'
    oracle): on a calibrated tiny model of each operator it predicts what the engine predicts,
    in float32 as the bench times it, and gives the engine's logits in float64."""
    pytest.importorskip("torch")
    from eventformer.bench.dense_torch import build_dense_forward, build_dense_model
    from eventformer.torch_model import SpikformerRef

    config = dataclasses.replace(TINY, attention=attention)
    sample = load_samples([str(recording)], config.steps, config.image_size)[0]
    model = calibrate(random_model(config, 1), [sample.steps], 0.2)
    net = build_dense_model(model)
    assert isinstance(net, SpikformerRef) and not net.training
    assert net.cfg.attention == attention
    for dtype in ("float32", "float64"):
        engine = Spikformer(model, dtype=dtype)
        logits = engine.run(sample.steps)
        spikes = sum(s["spikes"] for s in engine.layer_stats()[:-1])
        assert spikes > 0  # a silent model would make the comparison vacuous
        dense = build_dense_forward(model, dtype)(sample.dense)
        assert dense.shape == (config.num_classes,)
        assert int(np.argmax(dense)) == int(np.argmax(logits)), (dtype, dense, logits)
        if dtype == "float64":
            np.testing.assert_allclose(dense, logits, rtol=0, atol=1e-9)


@pytest.mark.parametrize("attention", ["ds2ta", "saformer"])
def test_run_bench_names_the_attention_operator(recording, cache_dir, attention):
    pytest.importorskip("torch")
    config = dataclasses.replace(TINY, attention=attention)
    clock = FakeClock([0.1, 1.0] * 3)
    result = run_bench(_tiny_opts(recording, cache_dir, config=config), log=lambda m: None,
                       warn=lambda m: None, clock=clock)
    assert result["attention"] == attention
    entry = result["rates"][0]
    assert entry["attention"] == attention and f"-{attention}-" in entry["model"]
    assert entry["files"][0]["same_prediction"] is True
    json.dumps(result)


def test_bench_config_takes_the_attention_option():
    assert bench_config(BenchOptions(files=["a"])).attention == "ssa"
    for name in BENCH_OPERATORS:
        cfg = bench_config(BenchOptions(files=["a"], attention=name))
        assert cfg.attention == name and cfg.dim == 256 and cfg.image_size == 128
    with pytest.raises(EventformerError, match="--attention"):
        check_options(BenchOptions(files=["a"], attention="linear"))
    # the successors' operators belong to their own layouts, not to Spikformer-DVS's blocks
    from eventformer.models.config import ATTENTION_OPERATOR_NAMES

    for name in sorted(set(ATTENTION_OPERATOR_NAMES) - set(BENCH_OPERATORS)):
        with pytest.raises(EventformerError, match="another network's layout"):
            check_options(BenchOptions(files=["a"], attention=name))


@pytest.mark.parametrize("name", ["linear", "SSA", ""])
def test_unknown_attention_is_one_sentence_and_exit_2(recording, name, no_reexec):
    r = runner.invoke(app, ["bench", str(recording), "--rates", "0.1", "--attention", name])
    line = one_error_line(r)
    assert "--attention" in line and "ssa_bin" in line and "internal error" not in line


# --- the command line -----------------------------------------------------------------------------

@pytest.fixture()
def no_reexec(monkeypatch):
    monkeypatch.setattr(allocator, "reexec_argv", lambda *a, **k: None)


@pytest.mark.parametrize("rates", ["1.5", "0", "-0.1", "1", "nan", "inf", "0.1,0.1", "abc", "",
                                   "0.1,", "0.05;0.1"])
def test_bad_rates_are_one_sentence_and_exit_2(recording, rates, no_reexec):
    r = runner.invoke(app, ["bench", str(recording), "--rates", rates])
    line = one_error_line(r)
    assert "--rates" in line and "internal error" not in line


@pytest.mark.parametrize("args,word", [(["--steps", "0"], "--steps"), (["-T", "-3"], "--steps"),
                                       (["--repeat", "0"], "--repeat"),
                                       (["--threads", "0"], "--threads"),
                                       (["--seed", "-1"], "--seed")])
def test_bad_numeric_options_are_one_sentence_and_exit_2(recording, args, word, no_reexec):
    r = runner.invoke(app, ["bench", str(recording), "--rates", "0.1", *args])
    line = one_error_line(r)
    assert word in line and "internal error" not in line


def test_bad_recordings_are_one_sentence_and_exit_2(tmp_path, no_reexec):
    outside = _events(size=200)
    write_npy(tmp_path / "wide.npy", outside)
    empty = _events(n=0)
    write_npy(tmp_path / "empty.npy", empty)
    for path, word in ((tmp_path / "missing.bs2", "missing.bs2"),
                       (tmp_path / "wide.npy", "outside"), (tmp_path / "empty.npy", "no events")):
        r = runner.invoke(app, ["bench", str(path), "--rates", "0.1", "--no-start", "--no-dense"])
        assert word in one_error_line(r)


def test_ctrl_c_prints_partial_results_and_exits_130(monkeypatch, recording, cache_dir,
                                                     no_reexec):
    pytest.importorskip("torch")
    clock = FakeClock([0.1, 1.0, 0.2, 1.1, 0.3], interrupt_at=7)
    with pytest.raises(BenchInterrupted) as info:
        run_bench(_tiny_opts(recording, cache_dir), log=lambda m: None, warn=lambda m: None,
                  clock=clock)
    partial = info.value.result

    import eventformer.bench.run as bench_run

    def fake_run_bench(opts, log=print, warn=None, **kw):
        raise BenchInterrupted(partial)

    monkeypatch.setattr(bench_run, "run_bench", fake_run_bench)
    r = runner.invoke(app, ["bench", str(recording), "--rates", "0.2", "--json"])
    assert r.exit_code == 130, r.output
    out = json.loads(r.stdout)
    assert out["interrupted"] is True
    assert out["rates"][0]["files"][0]["engine"]["times_s"] == pytest.approx([0.1, 0.2])
    assert "interrupted" in r.stderr and "partial" in r.stderr
    assert "Traceback" not in r.output


# --- the allocator settings for torch -------------------------------------------------------------

def test_reexec_only_from_the_eventformer_command_and_never_twice():
    argv = ["/venv/bin/eventformer", "bench", "--rates", "0.1"]
    exe, new_argv, env = allocator.reexec_argv(argv, {"PATH": "/bin"}, "linux")
    assert new_argv[1] == "-c" and new_argv[3:] == ["bench", "--rates", "0.1"]
    assert "import run; run()" in new_argv[2]  # the console script's entry, not the bare app
    assert all(env[k] == v for k, v in allocator.MALLOC_SETTINGS.items())
    assert env[allocator.REEXEC_GUARD] == "1" and env["PATH"] == "/bin"
    assert allocator.reexec_argv(argv, env, "linux") is None  # settings there: no loop
    assert allocator.reexec_argv(argv, {allocator.REEXEC_GUARD: "1"}, "linux") is None
    assert allocator.reexec_argv(argv, {}, "darwin") is None
    assert allocator.reexec_argv(["/venv/bin/pytest", "tests", "bench"], {}, "linux") is None
    assert allocator.reexec_argv(["/x/cli/main.py", "bench"], {}, "linux") is not None


def test_allocator_status_says_how_the_settings_came():
    assert not allocator.allocator_status({})["applied"]
    s = allocator.allocator_status(dict(allocator.MALLOC_SETTINGS))
    assert s["applied"] and "already set" in s["how"]
    s = allocator.allocator_status({**allocator.MALLOC_SETTINGS, allocator.REEXEC_GUARD: "1"})
    assert s["applied"] and "re-executing" in s["how"]


# --- torch eager and torch.compile: the faster one is the baseline -------------------------------

def _side(median):
    return {"median_s": median, "min_s": median, "max_s": median, "times_s": [median],
            "spread": 1.0, "unstable": False}


def test_faster_dense_is_the_smaller_sum_of_medians():
    from eventformer.bench.run import faster_dense

    rows = [{"dense": _side(1.0), "compiled": _side(0.7)}, {"dense": _side(1.0),
                                                            "compiled": _side(0.9)}]
    assert faster_dense(rows) == "compiled"
    rows[1]["compiled"] = _side(1.4)  # 2.0 against 2.1 in all: eager
    assert faster_dense(rows) == "dense"
    assert faster_dense([{"dense": _side(1.0)}]) == "dense"
    assert faster_dense([{"engine": _side(1.0)}]) is None
    # interrupted: the comparison is made on the files timed on both sides only
    partial = [{"dense": _side(1.0), "compiled": _side(0.8)}, {"dense": _side(0.1)}]
    assert faster_dense(partial) == "compiled"


def _three_sided_run(engine, eager, compiled):
    run = _RateRun(0.05, "m.h5", [object()], 4, dense=True, compiled=True)
    run.rows = [{"file": "a.bs2", "events": 1000, "duration_s": 1.0, "prediction": 0,
                 "ac": 10, "mac": 0, "dense_mac": 99, "ac_scatter": 6, "scatter_s": 0.5,
                 "scatter_ac_per_s": 12.0, "ac_gemm_steps": 4, "firing_rate": 0.05}]
    run.times = {"engine": [list(engine)], "dense": [list(eager)], "compiled": [list(compiled)]}
    run.compile_s = 123.0
    return run


def test_speedup_is_quoted_against_the_faster_dense_side():
    entry = _three_sided_run([0.1, 0.1, 0.1], [0.4, 0.4, 0.4], [0.3, 0.2, 0.25]).entry(True)
    row = entry["files"][0]
    assert entry["baseline"] == "compiled" and entry["baseline_label"] == "torch.compile"
    assert row["speedup"] == pytest.approx(0.25 / 0.1)
    assert row["speedup_eager"] == pytest.approx(4.0)
    assert row["speedup_compiled"] == pytest.approx(2.5)
    assert row["speedup_pairs"] == pytest.approx([2.0, 3.0])
    assert entry["compile_s"] == 123.0
    assert entry["speedup_geomean"] == pytest.approx(2.5)
    assert entry["speedup_geomean_eager"] == pytest.approx(4.0)
    slow = _three_sided_run([0.1], [0.2], [0.5]).entry(True)
    assert slow["baseline"] == "dense" and slow["files"][0]["speedup"] == pytest.approx(2.0)
    noisy = _three_sided_run([0.1, 0.1], [0.2, 0.2], [0.1, 0.9])
    noisy.entry(True)
    assert any("torch.compile times" in w for w in noisy.warnings)


class _StandInCompile:
    """torch.compile's place in tests: the eager forward, counting its first call apart."""

    def __init__(self, fail_with=None):
        self.fail_with = fail_with
        self.models = 0

    def __call__(self, model):
        from eventformer.bench.dense_torch import build_dense_forward

        self.models += 1
        forward = build_dense_forward(model)
        state = {"calls": 0}

        def compiled(frames):
            state["calls"] += 1
            if self.fail_with is not None:
                raise self.fail_with
            return forward(frames)

        compiled.state = state
        return compiled


def test_run_bench_times_engine_eager_and_compiled_interleaved(recording, cache_dir):
    pytest.importorskip("torch")
    stand_in = _StandInCompile()
    order = []
    clock = FakeClock([0.1, 1.0, 0.5, 0.2, 1.1, 0.6, 0.15, 1.2, 0.4])
    progress = []
    result = run_bench(_tiny_opts(recording, cache_dir, compiled=True), log=lambda m: None,
                       warn=lambda m: None, clock=clock, compile_forward=stand_in,
                       progress=lambda *a: progress.append(a))
    json.dumps(result)
    assert stand_in.models == 1 and result["compiled"]["available"] is True
    entry = result["rates"][0]
    row = entry["files"][0]
    assert row["engine"]["times_s"] == pytest.approx([0.1, 0.2, 0.15])
    assert row["dense"]["times_s"] == pytest.approx([1.0, 1.1, 1.2])
    assert row["compiled"]["times_s"] == pytest.approx([0.5, 0.6, 0.4])
    assert entry["baseline"] == "compiled"
    assert row["speedup"] == pytest.approx(0.5 / 0.15)
    assert entry["compile_s"] is not None and entry["compile_s"] >= 0
    assert "compiled_max_logit_diff" in row
    # progress: the timing task counts every timed run up to its total, and compiling is told
    timing = [p for p in progress if p[0].startswith("timing")]
    assert timing[0][1:] == (0, 9) and timing[-1][1:] == (9, 9)
    assert any(p[0].startswith("compiling") and p[2] is None for p in progress)


def test_run_bench_goes_on_eager_only_when_compile_fails(recording, cache_dir):
    pytest.importorskip("torch")
    warnings = []
    clock = FakeClock([0.1, 1.0] * 3)
    result = run_bench(_tiny_opts(recording, cache_dir, compiled=True), log=lambda m: None,
                       warn=warnings.append, clock=clock,
                       compile_forward=_StandInCompile(RuntimeError("no cl.exe\nmore lines")))
    assert result["compiled"]["available"] is False
    assert "torch.compile failed" in result["compiled"]["reason"]
    assert "no cl.exe" in result["compiled"]["reason"] and "more" not in \
        result["compiled"]["reason"]
    line = [w for w in warnings if "torch.compile" in w]
    assert len(line) == 1 and "\n" not in line[0] and "eager only" in line[0]
    row = result["rates"][0]["files"][0]
    assert "compiled" not in row and row["speedup"] == pytest.approx(1.0 / 0.1)
    assert result["rates"][0]["baseline"] == "dense"


def test_compile_needs_a_cxx_compiler(monkeypatch):
    pytest.importorskip("torch")
    import shutil

    from eventformer.bench import dense_torch

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = dense_torch.compile_prerequisite()
    assert "C++ compiler" in reason
    with pytest.raises(dense_torch.CompileUnavailable, match="C\\+\\+ compiler"):
        dense_torch.build_compiled_forward(random_model(TINY, 0))


# --- what to time when no files are given ---------------------------------------------------------

def test_default_inputs_prefer_the_shared_segments(monkeypatch, tmp_path):
    import eventformer.bench.run as bench_run

    for name in ("2.bs2", "1.bs2"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(bench_run, "default_gesture_dir", lambda: tmp_path)
    loaded = []
    monkeypatch.setattr(bench_run, "load_samples",
                        lambda files, steps, size: loaded.append(files) or ["s1", "s2"])
    inputs = bench_run.default_inputs(4, 32)
    assert loaded == [[str(tmp_path / "1.bs2"), str(tmp_path / "2.bs2")]]
    assert inputs.source == "shared segments" and "2 real DVS Gesture segments" in \
        inputs.description


class _FakeGestureSet:
    synthetic = True
    root = "/nowhere"

    def __init__(self, n):
        self.n = n

    def iter_events(self, limit=None):
        from eventformer.datasets import SampleRef

        for i in range(min(self.n, limit or self.n)):
            yield SampleRef(f"/cache/user{i}.aedat", 0, (0, 50_000), i), _events(seed=i)


def test_default_inputs_fall_back_to_the_embedded_synthetic_set(monkeypatch):
    import eventformer.bench.run as bench_run
    import eventformer.datasets as datasets

    monkeypatch.setattr(bench_run, "default_gesture_dir", lambda: None)
    asked = []

    def fake_open(name, data_dir, split, *, synthetic_fallback=False, log=None):
        asked.append((name, split, synthetic_fallback))
        return _FakeGestureSet(9)

    monkeypatch.setattr(datasets, "open_dataset", fake_open)
    inputs = bench_run.default_inputs(TINY.steps, TINY.image_size, count=3)
    assert asked == [("dvs-gesture", "test", True)]
    assert inputs.source == "synthetic" and "embedded synthetic" in inputs.description
    assert [s.path for s in inputs.samples] == ["user0.aedat#0", "user1.aedat#1",
                                                "user2.aedat#2"]
    s = inputs.samples[0]
    assert s.events == 3000 and len(s.steps) == TINY.steps and s.recording is not None
    assert s.dense.shape == (TINY.steps, 2, TINY.image_size, TINY.image_size)
    real = _FakeGestureSet(2)
    real.synthetic = False
    monkeypatch.setattr(datasets, "open_dataset", lambda *a, **k: real)
    inputs = bench_run.default_inputs(TINY.steps, TINY.image_size, count=5)
    assert inputs.source == "dvs-gesture" and len(inputs.samples) == 2


def test_bench_without_files_says_what_it_times(monkeypatch, recording, cache_dir, no_reexec):
    """No ../shared here: the command times the embedded synthetic set and says so."""
    pytest.importorskip("torch")
    import eventformer.bench.run as bench_run
    import eventformer.datasets as datasets

    tiny = run_bench(_tiny_opts(recording, cache_dir), log=lambda m: None,
                     warn=lambda m: None, clock=FakeClock([0.1, 1.0] * 3))
    monkeypatch.setattr(bench_run, "default_gesture_dir", lambda: None)
    monkeypatch.setattr(datasets, "open_dataset", lambda *a, **k: _FakeGestureSet(9))
    seen = {}

    def fake_run_bench(opts, log=print, warn=None, samples=None, **kw):
        seen.update(files=list(opts.files), samples=samples)
        return tiny

    monkeypatch.setattr(bench_run, "run_bench", fake_run_bench)
    r = runner.invoke(app, ["bench", "--rates", "0.2", "--no-start", "--json"])
    assert r.exit_code == 0, r.output
    assert "was not found" not in r.stderr
    assert "inputs: 5 samples of the embedded synthetic DVS Gesture test set" in \
        " ".join(r.stderr.split())
    assert seen["files"] == [f"user{i}.aedat#{i}" for i in range(5)]
    assert json.loads(r.stdout)["inputs"].startswith("5 samples of the embedded synthetic")


def test_roofline_ratio_is_explained_not_a_bare_percentage(monkeypatch, recording, cache_dir,
                                                           no_reexec):
    pytest.importorskip("torch")
    import eventformer.bench.run as bench_run

    tiny = run_bench(_tiny_opts(recording, cache_dir, config=TINY), log=lambda m: None,
                     warn=lambda m: None, clock=FakeClock([0.1, 1.0] * 3))
    tiny["rates"][0]["scatter_ac_per_s"] = 3 * tiny["machine"]["scatter_roofline_ac_per_s"]
    monkeypatch.setattr(bench_run, "run_bench", lambda *a, **k: tiny)
    r = runner.invoke(app, ["bench", str(recording), "--rates", "0.2", "--no-start"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())
    assert "300%" not in text and "3.00x the scatter-add roofline" in text
    assert "a ratio above 1x means" in text


# --- --profile: where the time goes -------------------------------------------------------------

class StepClock:
    """A clock that advances by one second per reading: deterministic self times."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("mode", ["sparse", "dense", "mixed"])
def test_profile_stages_add_up_and_book_the_work_done(tiny_model_and_steps, mode):
    from eventformer.bench.profile import Profiler, profile_table
    from eventformer.kernels import counters as C

    model, steps = tiny_model_and_steps
    policy = (PathPolicy(mode=mode) if mode != "mixed"
              else PathPolicy(conv_threshold=0.0, linear_threshold=1.0))
    engine = Spikformer(model, policy=policy, dtype="int8")
    engine.run(steps)
    engine.clear_stats()
    plain = engine.run(steps)
    plain_stats = engine.layer_stats()
    engine.clear_stats()
    classes = {id(layer): type(layer) for layer in engine.layers}
    with Profiler(engine, clock=StepClock()) as prof:
        profiled = engine.run(steps)
        engine.run(steps)
        # the profiler is invisible to the engine's own checks
        assert not any(k in vars(layer) for layer in engine.layers
                       for k in ("synapse", "_scatter", "emit"))
        assert not any("fire" in vars(layer.neurons) for layer in engine.layers)
    assert all(type(layer) is classes[id(layer)] for layer in engine.layers)  # unwrapped
    np.testing.assert_array_equal(profiled, plain)  # int8: the same integers, the same path
    stats = engine.layer_stats()
    for before, after in zip(plain_stats, stats):  # two runs: twice the counts of one
        assert {k: after[k] for k in C.NAMES} == {k: 2 * before[k] for k in C.NAMES}
    table = profile_table(prof, samples=2)
    assert prof.runs == 2
    # the fake clock: every wrapped call's self time is a whole number of seconds
    assert table["total_ms"] == pytest.approx(sum(s["ms"] for s in table["stages"]), abs=1e-6)
    assert table["total_ms"] == pytest.approx(sum(layer["ms"] for layer in table["layers"]),
                                              abs=1e-6)
    by_stage = {s["stage"]: s for s in table["stages"]}
    assert "other" in by_stage and by_stage["other"]["ms"] > 0
    assert "LIF" in by_stage and "attention core" in by_stage and "head" in by_stage
    # the work booked per stage is what the layers' counters say was done (per sample)
    updates = sum(s["neuron_updates"] for s in stats)
    assert by_stage["LIF"]["work"] == updates / 2
    event_work = sum(by_stage[s]["work"] for s in ("scatter", "gather") if s in by_stage)
    gemm_work = by_stage["GEMM"]["work"] if "GEMM" in by_stage else 0
    dense_mac = sum(s["dense_mac"] for s in stats)
    assert gemm_work == dense_mac / 2
    metered = Spikformer(model, policy=policy, dtype="int8")
    with PathMeter(metered) as meter:
        metered.run(steps)
    split = meter.summary()
    assert event_work == split["ac_scatter"] + split["mac_scatter"]
    assert by_stage["attention core"]["work"] == sum(
        s["ac"] for s in stats if s["kind"] == "attention") / 2
    if mode == "dense":
        assert event_work == 0 and gemm_work > 0
    if mode == "sparse":
        assert gemm_work == 0 and event_work > 0


def test_profile_table_reports_rates_against_peaks_and_skips_missing_methods(
        tiny_model_and_steps):
    from eventformer.bench.profile import STAGE_TABLE, Hook, Profiler, profile_table

    model, steps = tiny_model_and_steps
    engine = Spikformer(model, policy=PathPolicy(mode="sparse"))
    engine.run(steps)
    table = STAGE_TABLE + (Hook("layer", "no_such_method", "scatter"),)
    with Profiler(engine, table=table) as prof:
        engine.run(steps)
    assert "no_such_method" not in {m for _, m in prof.timed}
    assert "_scatter" in {m for _, m in prof.timed}
    out = profile_table(prof, 1, peaks={"scatter": {"ops_per_s": 1e6}})
    scatter = next(s for s in out["stages"] if s["stage"] == "scatter")
    assert scatter["peak_ops_per_s"] == 1e6
    assert scatter["of_peak"] == pytest.approx(scatter["ops_per_s"] / 1e6)
    lif = next(s for s in out["stages"] if s["stage"] == "LIF")
    assert lif["of_peak"] is None and lif["unit"] == "update"
    assert out["total_ms"] == pytest.approx(sum(s["ms"] for s in out["stages"]))
    assert set(out["stage_meaning"]) == {s["stage"] for s in out["stages"]}


def test_kernel_peaks_cover_the_models_kernels(tiny_model_and_steps, monkeypatch):
    from eventformer.bench import peaks

    monkeypatch.setattr(peaks, "MIN_SECONDS", 0.001)
    engine = Spikformer(tiny_model_and_steps[0], dtype="int8")
    out = peaks.kernel_peaks(engine)
    assert set(out) == {"scatter", "gather", "gemm"}
    assert all(p["ops_per_s"] > 0 for p in out.values())
    assert out["gemm"]["unit"] == "MAC" and out["scatter"]["threads"] == 1
    assert set(out["scatter"]["by_width"]) == {16, 32, 64}


def test_bench_profile_prints_the_stage_table_and_puts_it_in_json(monkeypatch, recording,
                                                                   cache_dir, no_reexec):
    pytest.importorskip("torch")
    import eventformer.bench.peaks as peaks
    import eventformer.bench.run as bench_run

    monkeypatch.setattr(peaks, "MIN_SECONDS", 0.001)
    result = run_bench(_tiny_opts(recording, cache_dir, profile=True), log=lambda m: None,
                       warn=lambda m: None, clock=FakeClock([0.1, 1.0] * 3))
    prof = result["rates"][0]["profile"]
    assert prof["samples"] == 1 and prof["timed_engine_ms"] == pytest.approx(100.0)
    assert prof["check_ms"] == pytest.approx(prof["total_ms"])
    assert set(result["machine"]["kernel_peaks"]) >= {"scatter", "gemm"}
    monkeypatch.setattr(bench_run, "run_bench", lambda *a, **k: result)
    monkeypatch.setenv("COLUMNS", "100")
    r = runner.invoke(app, ["bench", str(recording), "--rates", "0.2", "--profile", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rates"][0]["profile"]["stages"]
    assert "by stage" in r.stderr and "by layer and stage" in r.stderr
    assert "kernel peaks on this machine" in r.stderr and "above 1x" in r.stderr
    assert "…" not in r.stderr


# --- the successors: QKFormer and the Spike-driven Transformer (--model) ------------------------

# 64x64: QKFormer's stage 2 runs on 4x4 tokens, where its v_bn can still set attn_lif's rate
SUCCESSOR_SIZE = 64


def _tiny_reference(name):
    from eventformer.torch_successors import QKFormerConfig, SDTConfig

    if name == "qkformer":
        return QKFormerConfig(image_size=SUCCESSOR_SIZE, dim=64, heads=4, steps=4)
    return SDTConfig(image_size=SUCCESSOR_SIZE, dim=32, heads=4, depth=1, steps=4)


@pytest.fixture(scope="module")
def recording64(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec64") / "rec64.npy"
    write_npy(path, _events(4000, size=SUCCESSOR_SIZE))
    return path


def _successor_opts(name, recording, cache_dir, **kw):
    kw.setdefault("compiled", True)
    return _tiny_opts(recording, cache_dir, model=name, config=_tiny_reference(name), **kw)


def test_successor_networks_are_their_released_gesture_presets():
    pytest.importorskip("torch")
    from eventformer.bench.run import bench_network
    from eventformer.models.presets import qkformer_gesture, sdt_gesture
    from eventformer.torch_successors import QKFormerConfig, SDTConfig

    qk = bench_network(BenchOptions(files=["a"], model="qkformer"))
    assert qk.config == qkformer_gesture() and qk.reference == QKFormerConfig.gesture()
    assert qk.operators == "token_qk, ssa"
    sdt = bench_network(BenchOptions(files=["a"], model="sdt"))
    assert sdt.config == sdt_gesture() and sdt.reference == SDTConfig.gesture()
    assert sdt.operators == "sdsa" and not sdt.reference.dvs  # no Erode, as train.py runs it
    short = bench_network(BenchOptions(files=["a"], model="sdt", steps=8))
    assert short.config == sdt_gesture(steps=8) and short.reference.steps == 8
    assert bench_network(BenchOptions(files=["a"])).config == SpikformerConfig(steps=16)


@pytest.fixture(scope="module")
def successor_runs(recording64, tmp_path_factory):
    """run_bench on a tiny QKFormer and a tiny Spike-driven Transformer (float32, profiled),
    torch.compile's place taken by the eager forward: (result, options) per model."""
    pytest.importorskip("torch")
    import eventformer.bench.peaks as peaks

    cache = str(tmp_path_factory.mktemp("successor-cache"))
    saved, peaks.MIN_SECONDS = peaks.MIN_SECONDS, 0.001
    try:
        runs = {}
        for name in ("qkformer", "sdt"):
            opts = _successor_opts(name, recording64, cache, profile=True)
            runs[name] = (run_bench(opts, log=lambda m: None, warn=lambda m: None,
                                    clock=FakeClock([0.1, 1.0, 0.5] * 3),
                                    compile_forward=_StandInCompile()), opts)
    finally:
        peaks.MIN_SECONDS = saved
    return runs


@pytest.mark.parametrize("name", ["qkformer", "sdt"])
def test_run_bench_times_a_successor_against_its_torch_reference(successor_runs, recording64,
                                                                 name):
    """The engine runs the model file built from the state_dict the torch reference holds: on
    the calibrated tiny network every LIF fires (in the reference and in the engine) and the
    three sides predict alike."""
    import torch

    from eventformer.bench.networks import SuccessorWeights, model_file, weights_path
    from eventformer.bench.run import bench_network
    from eventformer.modelfile import load
    from eventformer.torch_successors import successor_lif_names

    result, opts = successor_runs[name]
    json.dumps(result)
    network = bench_network(opts)
    assert result["model"] == name and result["attention"] == network.operators
    assert "torch_successors" in result["dense_baseline"] and "skipped" not in result
    entry = result["rates"][0]
    # the reference, with the cached state_dict, on the bench's own input: every LIF fires
    weights = SuccessorWeights.load(network.reference, weights_path(entry["model"]))
    sample = load_samples([str(recording64)], network.config.steps, SUCCESSOR_SIZE)[0]
    with torch.no_grad():
        _, spikes = weights.torch_model(torch.float32)(
            torch.from_numpy(sample.dense).float()[:, None], record=True)
    assert set(spikes) == set(successor_lif_names(network.reference))
    silent = [n for n, s in spikes.items() if not s.any()]
    assert not silent, silent
    # ... and in the engine: every layer with a LIF fired near the target somewhere
    lifs = [layer for layer in entry["layers"] if layer["firing_rate"] is not None]
    assert len(lifs) == len(spikes)
    assert all(layer["firing_rate"] > 0 for layer in lifs), entry["layers"]
    if name == "sdt":  # proj, fc1 and fc2 add real currents to the stream: no LIF of their own
        assert any(layer["firing_rate"] is None for layer in entry["layers"])
    row = entry["files"][0]
    assert abs(row["firing_rate"] - opts.rates[0]) < 0.1
    assert row["same_prediction"] is True
    assert row["compiled_prediction"] == row["prediction"]
    # the model file is the one builder's, from that very state_dict
    built = model_file(network, weights.state_dict, source="check")
    cached = load(entry["model"])
    assert built.config == cached.config == network.config
    for layer_name, layer in built.layers.items():
        if layer.weight is not None:
            np.testing.assert_array_equal(layer.weight, cached.layers[layer_name].weight)
            np.testing.assert_array_equal(layer.bias, cached.layers[layer_name].bias)
    # timed interleaved like Spikformer's, the profile booked
    assert row["engine"]["times_s"] == pytest.approx([0.1] * 3)
    assert row["speedup"] == pytest.approx(5.0) and entry["baseline"] == "compiled"
    prof = entry["profile"]
    assert prof["total_ms"] == pytest.approx(sum(s["ms"] for s in prof["stages"]))


def test_qkformer_runs_in_int8(recording64, cache_dir):
    pytest.importorskip("torch")
    opts = _successor_opts("qkformer", recording64, cache_dir, dtype="int8", compiled=False)
    result = run_bench(opts, log=lambda m: None, warn=lambda m: None,
                       clock=FakeClock([0.1, 1.0] * 3))
    entry = result["rates"][0]
    assert result["dtype"] == "int8" and "skipped" not in result
    assert all(layer["firing_rate"] > 0 for layer in entry["layers"]
               if layer["firing_rate"] is not None)
    assert entry["files"][0]["engine"]["times_s"] == pytest.approx([0.1] * 3)


def _refusing_integers(monkeypatch):
    """The engine refusing every integer mode, as it refuses a network it cannot run in one."""
    import eventformer.bench.networks as networks

    def engine(model, dtype="float32", **kw):
        if dtype.startswith("int"):
            raise EventformerError(f"{dtype}: the membrane residual stream cannot be held in "
                                   "integers; run it in a float --dtype")
        return Spikformer(model, dtype=dtype, **kw)

    monkeypatch.setattr(networks, "Spikformer", engine)


def test_an_integer_mode_the_engine_refuses_is_refused_in_one_sentence(monkeypatch, recording64,
                                                                        tmp_path):
    pytest.importorskip("torch")
    _refusing_integers(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(EventformerError) as err:
        run_bench(_successor_opts("sdt", recording64, str(cache), dtype="int8"),
                  log=lambda m: None, warn=lambda m: None)
    line = str(err.value)
    assert "\n" not in line and "Spike-driven Transformer" in line and "int8" in line
    assert not cache.exists()  # said before any calibration


def test_bench_model_sdt_int8_refused_by_the_engine_says_so_and_exits_2(monkeypatch, recording,
                                                                       no_reexec, tmp_path):
    pytest.importorskip("torch")
    _refusing_integers(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    r = runner.invoke(app, ["bench", str(recording), "--model", "sdt", "--dtype", "int8",
                            "--rates", "0.05", "--no-start", "--json"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.stdout == ""
    assert "the engine does not run the Spike-driven Transformer in int8" in \
        " ".join(r.stderr.split())


def test_bench_prints_the_successor_it_times(monkeypatch, successor_runs, recording64,
                                             no_reexec):
    import eventformer.bench.run as bench_run

    result, _ = successor_runs["sdt"]
    monkeypatch.setattr(bench_run, "run_bench", lambda *a, **k: result)
    monkeypatch.setenv("COLUMNS", "160")
    r = runner.invoke(app, ["bench", str(recording64), "--model", "sdt", "--rates", "0.2",
                            "--no-start", "--profile", "--json"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())
    assert "full-size Spike-driven Transformer (the DVS Gesture release: 2x128x128, D 256, " \
           "8 heads, 2 block(s), sdsa attention" in text
    assert "calibrated in torch" in text and "by layer and stage" in text
    assert json.loads(r.stdout)["rates"][0]["profile"]["stages"]


@pytest.mark.parametrize("args,words", [
    (["--model", "qkformer", "--attention", "ssa"], ["--attention", "token_qk, ssa"]),
    (["--model", "sdt", "--attention", "ds2ta"], ["--attention", "sdsa"]),
    (["--attention", "token_qk"], ["another network's layout", "--model qkformer"]),
    (["--attention", "sdsa"], ["another network's layout", "--model sdt"]),
    (["--model", "resnet"], ["--model", "qkformer", "sdt"]),
])
def test_model_and_attention_mismatches_are_one_sentence_and_exit_2(recording, args, words,
                                                                    no_reexec):
    r = runner.invoke(app, ["bench", str(recording), "--rates", "0.1", *args])
    line = one_error_line(r)
    assert all(w in line for w in words), line
    assert "internal error" not in line


def test_random_model_takes_the_descriptions_weight_shapes():
    """Checkpoint layouts other than Conv1d k1 (nn.Linear, Conv2d k1) and blocks of several
    operators: the random tensors go through the builder as such a checkpoint holds them."""
    from eventformer.modelfile import layer_specs
    from eventformer.models.presets import qkformer_gesture, sdt_gesture, spikformer_cifar10

    for config in (spikformer_cifar10(dim=64, heads=4, depth=1, image_size=32),
                   qkformer_gesture(dim=64, heads=4, image_size=64, steps=4),
                   sdt_gesture(dim=32, heads=4, depth=1, image_size=64, steps=4)):
        model = random_model(config, 0)
        assert model.config == config
        assert list(model.layers) == [spec.name for spec in layer_specs(config)]
        Spikformer(model)  # the engine takes it
