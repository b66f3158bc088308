"""The offline pipeline: on several engine threads ``Spikformer.run`` runs different layers on
different chunks of a sample's steps at once (``runtime.run_pipeline``).

Nothing may change: every layer still sees its steps in time order, so the logits, spikes and op
counts are those of the layer-major run (the pipeline off) on the same threads, exactly in
float64 and the integer modes; and the scheduler never starts a stage's chunk before the stage
before it finished that chunk, or before its own chunk before it.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import (assert_every_layer_fires, calibrated_variants,
                      pipelined_and_layer_major, uniform_events)

import eventformer.models.spikformer as spikformer
from eventformer.events import frame_events
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.runtime import run_parts, run_pipeline

SIZE = 64
STEPS = 8
COUNTS = ("spikes", "ac", "mac", "neuron_updates", "lut", "shift", "compare", "attn_entries",
          "attn_nonzero", "input_events", "input_sites")


# --- the scheduler ---------------------------------------------------------------------------

def _chain(stages: int, log: list, pause: float = 0.0, fail_at=None):
    """Stages that log (stage, a, b, start, end, thread) and sleep ``pause`` (releasing the GIL,
    as the engine's kernels do); ``fail_at``: (stage, a) raises there."""
    lock = threading.Lock()

    def stage(s):
        def run(a, b):
            start = time.perf_counter()
            if fail_at == (s, a):
                raise ValueError(f"stage {s} failed at step {a}")
            time.sleep(pause)
            with lock:
                log.append((s, a, b, start, time.perf_counter(), threading.get_ident()))
        return run

    return [stage(s) for s in range(stages)]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_every_stage_runs_every_chunk_in_order_after_the_stage_before(threads, n_threads):
    threads(n_threads)
    log: list = []
    edges = [0, 2, 5, 6, 9]
    run_pipeline(_chain(5, log, pause=0.02), edges, n_threads)
    assert sorted((s, a, b) for s, a, b, *_ in log) == sorted(
        (s, edges[c], edges[c + 1]) for s in range(5) for c in range(4))
    by = {(s, a): (start, end) for s, a, _, start, end, _ in log}
    for s in range(5):
        for c in range(4):
            start, _ = by[(s, edges[c])]
            if c:  # its own chunk before it had finished
                assert by[(s, edges[c - 1])][1] <= start
            if s:  # the stage before had finished this chunk
                assert by[(s - 1, edges[c])][1] <= start
    # with more than one thread, stages overlapped (on one: never), each thread taking chunks
    overlaps = sum(1 for x in log for y in log
                   if x[:2] < y[:2] and x[3] < y[4] and y[3] < x[4])
    used = {t for *_, t in log}
    if n_threads == 1:
        assert overlaps == 0 and len(used) == 1
    else:
        assert overlaps > 0 and len(used) >= 2


def test_a_stage_that_fails_stops_the_pipeline_and_its_error_reaches_the_caller(threads):
    threads(2)
    log: list = []
    with pytest.raises(ValueError, match="stage 1 failed at step 3"):
        run_pipeline(_chain(4, log, pause=0.005, fail_at=(1, 3)), [0, 3, 6, 9], 2)
    # nothing after the failed chunk of stage 1 ran: not its later chunks, not stage 2's
    assert not any(s == 1 and a > 3 for s, a, *_ in log)
    assert not any(s >= 2 and a >= 3 for s, a, *_ in log)
    # and the engine's threads are free again
    done = []
    run_parts(lambda i: done.append(i), 2)
    assert sorted(done) == [0, 1]


# --- the engine ------------------------------------------------------------------------------

def _config(attention: str) -> SpikformerConfig:
    return SpikformerConfig(image_size=SIZE, sps_channels=(16, 32, 64, 64), dim=64, heads=4,
                            depth=2, mlp_hidden=128, steps=STEPS, attention=attention)


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(7)
    out = [frame_events(uniform_events(rng, n, SIZE), STEPS, SIZE, SIZE)
           for n in (6000, 30000)]  # sparse and busy: scatter, gather and GEMM steps
    empty = (np.empty(0, np.int32), np.empty(0, np.int32))
    out.append([empty if t in (0, 3, 4) else step for t, step in enumerate(out[1])])
    return out


@pytest.fixture(scope="module")
def models(samples):
    return calibrated_variants(_config, samples[:2], seed=2)


@pytest.mark.parametrize("attention", ["ssa", "ds2ta", "ssa_bin", "saformer"])
@pytest.mark.parametrize("dtype", ["float64", "int16", "int8"])
@pytest.mark.parametrize("n_threads", [2, 3])
def test_the_pipelined_run_is_the_layer_major_run(models, samples, attention, dtype, n_threads):
    fired: dict = {}
    for (fast, fast_stats), (slow, slow_stats) in pipelined_and_layer_major(
            models[attention], dtype, samples, threads=n_threads):
        np.testing.assert_array_equal(fast, slow)
        for a, b in zip(fast_stats, slow_stats):
            assert a["name"] == b["name"]
            for key in COUNTS:
                assert a[key] == b[key], (a["name"], key, a[key], b[key])
            fired[a["name"]] = fired.get(a["name"], 0) + a["spikes"]
    assert_every_layer_fires([{"name": k, "spikes": v} for k, v in fired.items()])


def test_float32_pipelined_stays_within_the_float32_spread(models, samples):
    """float32: the pipeline batches a small layer's dense steps per chunk, not per sample, which
    BLAS may round differently; the logits stay within float32's own distance from float64."""
    engine64 = Spikformer(models["ssa"], dtype="float64")
    for steps, ((fast, _), (slow, _)) in zip(
            samples, pipelined_and_layer_major(models["ssa"], "float32", samples)):
        truth = engine64.run(steps)
        spread = np.abs(slow - truth).max()
        assert np.abs(fast - truth).max() <= 2 * spread + 1e-5
        assert np.argmax(fast) == np.argmax(slow)


def test_the_pipeline_runs_only_where_it_pays_and_nothing_watches(models, samples, threads,
                                                                   monkeypatch):
    from eventformer.record import Recorder

    engine = Spikformer(models["ssa"], dtype="int8")
    threads(1)
    assert engine._pipeline_edges(STEPS) is None  # one thread: nothing to overlap
    threads(2)
    assert engine._pipeline_edges(STEPS) is None  # a small network: the hand-offs cost more
    monkeypatch.setattr(spikformer, "PIPELINE_MIN_NEURON_STEPS", 0)
    edges = engine._pipeline_edges(STEPS)
    assert edges[0] == 0 and edges[-1] == STEPS and len(edges) == spikformer.PIPELINE_CHUNKS + 1
    assert engine._pipeline_edges(3) is None  # a chunk holds at least two steps
    assert engine._pipeline_edges(4) == [0, 2, 4]
    # a recorder keeps several layers' steps as they happen: layer-major then
    with Recorder(engine, ["block.0.attn.q_lif"]):
        assert engine._pipeline_edges(STEPS) is None
    assert engine._pipeline_edges(STEPS) == edges


def test_the_profile_books_every_pipeline_thread(models, samples, threads, monkeypatch):
    """Profiled while pipelined: each thread's stages are booked, its idle time as "pipeline
    wait", and the stages add up to the runs' wall time plus the other thread's."""
    from eventformer.bench.profile import Profiler, profile_table

    threads(2)
    monkeypatch.setattr(spikformer, "PIPELINE_MIN_NEURON_STEPS", 0)
    engine = Spikformer(models["ssa"], dtype="int8")
    want = engine.run(samples[1])
    with Profiler(engine) as prof:
        got = engine.run(samples[1])
    np.testing.assert_array_equal(got, want)
    table = profile_table(prof, samples=1)
    assert prof.runs == 1
    assert table["total_ms"] == pytest.approx(sum(s["ms"] for s in table["stages"]), rel=1e-9)
    assert table["total_ms"] == pytest.approx(sum(layer["ms"] for layer in table["layers"]),
                                              rel=1e-9)
    # two threads over the pipeline's length: more than the wall, at most twice it
    assert table["wall_ms"] < table["total_ms"] <= 2 * table["wall_ms"] * (1 + 1e-9)
    stages = {s["stage"] for s in table["stages"]}
    assert {"pipeline wait", "LIF", "attention core", "head"} <= stages
    booked = {layer["layer"] for layer in table["layers"]}
    assert {layer.name for layer in engine.layers} <= booked


def test_a_first_compiles_runs_go_layer_by_layer(models, samples, threads, monkeypatch):
    """``layer_major_runs``: the next runs are layer-major (a first run on an empty Numba cache
    compiles forward while a helper compiles backward), then the pipeline is back."""
    threads(2)
    monkeypatch.setattr(spikformer, "PIPELINE_MIN_NEURON_STEPS", 0)
    engine = Spikformer(models["ssa"], dtype="int8")
    ran = []
    pipelined = engine._run_pipelined
    monkeypatch.setattr(engine, "_run_pipelined",
                        lambda xs, edges: ran.append(edges) or pipelined(xs, edges))
    engine.layer_major_runs = 2
    first = [engine.run(samples[1]) for _ in range(2)]
    assert ran == [] and engine.layer_major_runs == 0
    np.testing.assert_array_equal(engine.run(samples[1]), first[0])
    assert len(ran) == 1
