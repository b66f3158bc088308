"""The offline engine on several threads: layers run in bands of output rows (conv rows, tokens),
each band through every step of a sample, and attention cores form their steps' Y at once.

Nothing may change: ``Spikformer.run`` on 2 or 3 engine threads (banded) gives the spikes,
logits and op counts of ``Spikformer.step`` called step by step on the same thread count (the
same path choices, so float32 too), for every attention operator and arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_every_layer_fires, calibrated_variants, uniform_events

from eventformer.events import frame_events
from eventformer.layers import PathPolicy
from eventformer.layers.synapses import SynapticLIF
from eventformer.models import Spikformer, SpikformerConfig

SIZE = 64
STEPS = 8


def _config(attention: str) -> SpikformerConfig:
    return SpikformerConfig(image_size=SIZE, sps_channels=(16, 32, 64, 64), dim=64, heads=4,
                            depth=1, mlp_hidden=128, steps=STEPS, attention=attention)


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(5)
    out = []
    for n in (6000, 20000, 45000):  # sparse to busy inputs: scatter, gather and GEMM steps
        ev = uniform_events(rng, n, SIZE)
        # a busier stripe of rows, so that balanced bands are not simply halves
        ev["y"][: n // 3] = rng.integers(SIZE // 2, SIZE // 2 + 6, n // 3)
        ev = ev[np.argsort(ev["t"], kind="stable")]
        out.append(frame_events(ev, STEPS, SIZE, SIZE))
    # the busy sample with steps 2, 3 and 5 empty: quiet steps between busy ones
    empty = (np.empty(0, np.int32), np.empty(0, np.int32))
    out.append([empty if t in (2, 3, 5) else step for t, step in enumerate(out[2])])
    return out


@pytest.fixture(scope="module")
def models(samples):
    return calibrated_variants(_config, samples[:2], seed=1)


def _stepwise(engine, steps, monkeypatch=None):
    """The engine step by step; with ``monkeypatch`` every layer on this thread alone (no
    bands), the reference the bands must equal."""
    if monkeypatch is not None:
        original = SynapticLIF._band_bounds
        monkeypatch.setattr(SynapticLIF, "_band_bounds", lambda self, inputs, dense=None: None)
    engine.reset()
    for idx, cnt in steps:
        engine.step(np.asarray(idx, np.int32), np.asarray(cnt, np.int32))
    if monkeypatch is not None:
        monkeypatch.setattr(SynapticLIF, "_band_bounds", original)
    return engine.logits()


@pytest.mark.parametrize("attention", ["ssa", "ds2ta", "ssa_bin", "saformer"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int16", "int8"])
@pytest.mark.parametrize("n_threads", [2, 3])
def test_banded_run_equals_step_by_step(models, samples, threads, attention, dtype, n_threads,
                                        monkeypatch):
    import eventformer.layers.synapses as synapses

    threads(n_threads)
    # this small model's layers are below the work that pays for bands: band them all anyway
    monkeypatch.setattr(synapses, "BAND_MIN_OPS", 0)
    engine = Spikformer(models[attention], dtype=dtype, policy=PathPolicy())
    banded = []
    original = SynapticLIF._run_banded

    def spy(self, inputs, bounds, dense=None):
        banded.append((self.name, tuple(bounds)))
        return original(self, inputs, bounds, dense)

    SynapticLIF._run_banded = spy
    fired: dict = {}
    try:
        for steps in samples:
            engine.clear_stats()
            fast = engine.run(steps)
            fast_stats = engine.layer_stats()
            engine.clear_stats()
            slow = _stepwise(engine, steps, monkeypatch)
            slow_stats = engine.layer_stats()
            for row in slow_stats:
                fired[row["name"]] = fired.get(row["name"], 0) + row["spikes"]
            np.testing.assert_array_equal(fast, slow)
            for a, b in zip(fast_stats, slow_stats):
                # a step may batch its GEMM with others offline: the path tallies may differ,
                # never the spikes or the ops
                for key in ("spikes", "ac", "mac", "neuron_updates", "lut", "shift", "compare",
                            "attn_entries", "attn_nonzero", "input_events", "input_sites"):
                    assert a[key] == b[key], (a["name"], key, a[key], b[key])
    finally:
        SynapticLIF._run_banded = original
    assert_every_layer_fires([{"name": k, "spikes": v} for k, v in fired.items()])
    names = {name for name, _ in banded}
    # every SPS stage and the RPE ran banded, and so did the plain linear layers
    assert {"patch_embed.proj_lif", "patch_embed.proj_lif3", "patch_embed.rpe_lif",
            "block.0.mlp.fc1_lif", "block.0.mlp.fc2_lif"} <= names
    assert any(len(b) - 1 == n_threads for _, b in banded), "no layer split into every thread"


def test_one_thread_runs_unbanded(models, samples, threads):
    threads(1)
    engine = Spikformer(models["ssa"], dtype="int8", policy=PathPolicy())
    assert all(layer._band_bounds(samples[0]) is None
               for layer in engine.layers if isinstance(layer, SynapticLIF))


def test_bands_balance_the_busy_rows(models, samples, threads, monkeypatch):
    """Band edges follow the work: with a busy stripe in the lower half of the sensor, the first
    band of the first convolution takes more than half of its rows."""
    monkeypatch.setattr("eventformer.layers.synapses.BAND_MIN_OPS", 0)
    threads(2)
    engine = Spikformer(models["ssa"], dtype="int8", policy=PathPolicy())
    first = engine.sps[0]
    bounds = first._band_bounds(samples[2])
    assert bounds[0] == 0 and bounds[-1] == first.out_h and len(bounds) == 3
    assert bounds[1] > first.out_h // 2


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_streaming_steps_run_in_bands_and_equal_one_thread(models, samples, threads, dtype,
                                                           monkeypatch):
    """A streaming step with enough work runs in bands (here every step: the threshold set to
    zero) and gives what the unbanded step gives, spikes and counts included."""
    import eventformer.layers.synapses as synapses

    threads(2)
    engine = Spikformer(models["ssa_bin"], dtype=dtype, policy=PathPolicy())
    steps = samples[1]
    engine.clear_stats()
    slow = _stepwise(engine, steps, monkeypatch)
    slow_stats = engine.layer_stats()
    banded = []
    original = SynapticLIF._run_banded

    def spy(self, inputs, bounds, dense=None):
        banded.append(len(inputs))
        return original(self, inputs, bounds, dense)

    monkeypatch.setattr(synapses, "BAND_STEP_MIN_OPS", 0)
    monkeypatch.setattr(SynapticLIF, "_run_banded", spy)
    engine.clear_stats()
    fast = _stepwise(engine, steps)
    assert banded and set(banded) == {1}
    assert_every_layer_fires(slow_stats)
    np.testing.assert_array_equal(fast, slow)
    assert engine.layer_stats() == slow_stats


def test_small_layers_run_whole_and_q_k_v_side_by_side(models, samples, threads, monkeypatch):
    """Below BAND_MIN_OPS a layer is not split (its bands would cost more than they save); q, k
    and v, which read the same input, then run at once, each whole on one thread, handed to the
    threads together (three layers on two threads: the first thread free takes the third)."""
    import threading

    threads(2)
    engine = Spikformer(models["ssa"], dtype="int8", policy=PathPolicy())
    banded = []
    monkeypatch.setattr(SynapticLIF, "_run_banded",
                        lambda self, inputs, bounds: banded.append(self.name))
    seen = {}
    attn = engine.blocks[0].attn
    for layer in (attn.q, attn.k, attn.v):
        original = layer.run_steps

        def run(inputs, _run=original, _name=layer.name):
            seen[_name] = threading.current_thread().name
            return _run(inputs)

        monkeypatch.setattr(layer, "run_steps", run)
    import eventformer.layers.attention as attention

    handed = []
    run_dynamic = attention.run_dynamic

    def watched(part, parts):
        handed.append(parts)
        run_dynamic(part, parts)

    monkeypatch.setattr(attention, "run_dynamic", watched)
    engine.run(samples[2])
    assert not banded
    assert len(seen) == 3 and handed == [3], (seen, handed)


def test_run_dynamic_calls_every_part_once(threads):
    """The threads take parts as they come free: every part runs once, whatever its cost; from
    inside a part (the threads all taken) the parts run serially on the caller."""
    import time

    from eventformer.runtime import in_part, run_dynamic

    threads(2)
    calls = []

    def part(i):
        time.sleep(0.002 * (i % 3))  # unequal parts
        calls.append((i, in_part()))

    run_dynamic(part, 7)
    assert sorted(i for i, _ in calls) == list(range(7))
    assert all(inside for _, inside in calls)
    nested = []
    run_dynamic(lambda i: run_dynamic(lambda j: nested.append((i, j)), 3), 2)
    assert sorted(nested) == [(i, j) for i in range(2) for j in range(3)]
    threads(1)
    calls.clear()
    run_dynamic(part, 3)
    assert [i for i, _ in calls] == [0, 1, 2]
