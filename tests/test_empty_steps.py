"""Steps without input events: they change what they must, and nothing else.

An empty step is not a no-op: every membrane decays and the folded BatchNorm bias is a constant
current, so neurons fire without input and their spikes travel on. The engine takes cheap paths
for such steps (no scatter and no dense fill: the bias as one period of the current; the
attention kernel skipped when Q or K is empty; a layer whose membranes have reached the fixed
point of that constant current skips its LIF until something else arrives). These tests hold
those paths to the reference (float64, exact), to the plain computation (float32 and float64, bit
for bit), to each other (step() against run()), and check that a quiet model's long run of empty
steps does no synaptic work at all.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import drive, record_spikes, ref_spike_sets, without_paths

from eventformer.bench.calibrate import random_model
from eventformer.kernels import counters as C, ssa_step
from eventformer.layers import PathPolicy
from eventformer.layers.attention import AttentionLIF
from eventformer.modelfile import load
from eventformer.models import Spikformer, SpikformerConfig

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "spikformer-tiny-synth.h5"
GRID = 2.0 ** -8
EMPTY = np.empty(0, np.int32)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------




def plain(engine: Spikformer) -> Spikformer:
    """Turn the empty-step shortcuts off: a probe makes every layer build its dense current (so
    neither the bias period nor the settled-membrane skip applies) and the attention kernel runs
    on every step, empty or not."""
    for layer in engine.layers:
        layer.probe = lambda layer, current: None
        if hasattr(layer, "_nothing_to_attend"):
            layer._nothing_to_attend = lambda nq, nk, nv: False
    return engine


def dense_to_events(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[C, H, W] counts -> the engine's HWC event list."""
    flat = frame.transpose(1, 2, 0).reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int32)
    return idx, flat[idx].astype(np.int32)


def quiet_and_busy_frames(rng, shape, before: int, busy: int, after: int, events: int):
    """``before`` empty steps, ``busy`` steps of ``events`` random counts, ``after`` empty."""
    frames = np.zeros((before + busy + after,) + shape, np.int64)
    c, h, w = shape
    for t in range(before, before + busy):
        np.add.at(frames[t], (rng.integers(0, c, events), rng.integers(0, h, events),
                              rng.integers(0, w, events)), 1)
    return frames


def raised_bias_model(config: SpikformerConfig, firing: set[str], seed: int = 0):
    """Random weights (x3, on the 2^-8 grid) and grid biases below threshold, except in the
    ``firing`` layers: there every 4th channel has bias 1.25 (fires every few steps without any
    input) and the next 0.75 (settles just below threshold)."""
    model = random_model(config, seed)
    rng = np.random.default_rng(seed)
    for name, p in model.layers.items():
        if p.weight is None:
            continue
        p.weight = (np.round(3 * p.weight / GRID) * GRID).astype(np.float32)
        bias = rng.uniform(-0.5, 0.5, p.bias.shape)
        if name in firing:
            bias[0::4] = 1.25
            bias[1::4] = 0.75
        p.bias = (np.round(bias / GRID) * GRID).astype(np.float32)
    return model


TINY = SpikformerConfig(image_size=32, sps_channels=(16, 32), sps_pool=(True, True), dim=32,
                        heads=4, depth=2, mlp_hidden=128, num_classes=5, steps=8)
# block 0: q fires from its bias while k stays quiet (an attention with nothing to pair), proj
# fires into the residual stream, so block 1 sees input on empty steps; the SPS and RPE layers
# stay quiet and settle
FIRING = {"block.0.attn.q_lif", "block.0.attn.proj_lif", "block.1.attn.v_lif",
          "block.1.mlp.fc1_lif"}


# --------------------------------------------------------------------------------------------
# against the torch reference (float64, exact)
# --------------------------------------------------------------------------------------------


def reference_of(model):
    """The plain-torch Spikformer of SPEC §2 (tests/torch_reference.py) carrying the model
    file's folded grid weights exactly: conv weight W', BatchNorm an identity plus bias b'."""
    torch = pytest.importorskip("torch")
    from torch_reference import RefConfig, SpikformerRef, random_state_dict

    cfg = model.config
    rc = RefConfig(image_size=cfg.image_size, sps_channels=cfg.sps_channels, dim=cfg.dim,
                   heads=cfg.heads, depth=cfg.depth, mlp_ratio=cfg.mlp_hidden / cfg.dim,
                   num_classes=cfg.num_classes, scale=cfg.scale)
    ref = SpikformerRef(rc)
    sd = random_state_dict(rc, 0)
    for name, p in model.layers.items():
        if p.weight is None:
            continue
        if name == "head":
            sd["head.weight"] = torch.from_numpy(p.weight)
            sd["head.bias"] = torch.from_numpy(p.bias)
            continue
        w = torch.from_numpy(p.weight)
        sd[f"{p.source}.weight"] = w[:, :, None] if p.kind == "linear" else w
        if f"{p.source}.bias" in sd:
            sd[f"{p.source}.bias"] = torch.zeros_like(sd[f"{p.source}.bias"])
        bn = p.source.replace("_conv", "_bn")
        sd[f"{bn}.weight"] = torch.ones_like(sd[f"{bn}.weight"])
        sd[f"{bn}.bias"] = torch.from_numpy(p.bias)
        sd[f"{bn}.running_mean"] = torch.zeros_like(sd[f"{bn}.running_mean"])
        sd[f"{bn}.running_var"] = torch.ones_like(sd[f"{bn}.running_var"])
    ref.load_state_dict(sd)
    for m in ref.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.eps = 0.0  # (x - 0) / sqrt(1 + 0) * 1 + b == x + b exactly
    return ref.double().eval()




@pytest.fixture(scope="module")
def grid_case():
    model = raised_bias_model(TINY, FIRING)
    ref = reference_of(model)
    rng = np.random.default_rng(5)
    # empty steps from rest, a burst of events, then long enough for float64 membranes to settle;
    # 128 steps in all, so that the mean over steps is exact (as the reference's)
    frames = quiet_and_busy_frames(rng, (2, 32, 32), before=20, busy=3, after=105, events=300)
    return model, ref, frames


@pytest.mark.parametrize("path", ["run", "step"])
@pytest.mark.parametrize("mode", ["auto", "sparse"])
def test_empty_steps_match_reference_float64(grid_case, mode, path):
    torch = pytest.importorskip("torch")
    model, ref, frames = grid_case
    with torch.no_grad():
        ref_logits, spikes = ref(torch.from_numpy(frames).double()[:, None], record=True)
    engine = Spikformer(model, dtype="float64", policy=PathPolicy(mode=mode))
    store = record_spikes(engine)
    logits = drive(engine, [dense_to_events(f) for f in frames], path)
    T = frames.shape[0]
    fired_empty, quiet = set(), set()
    for layer in engine.layers:
        want = ref_spike_sets(spikes, layer.name)
        got = store[layer.name]
        assert len(got) == len(want) == T
        for t in range(T):
            np.testing.assert_array_equal(got[t], want[t], err_msg=f"{layer.name} step {t}")
        (fired_empty if any(len(w) for w in want[:20]) else quiet).add(layer.name)
    np.testing.assert_array_equal(logits, ref_logits[0].numpy())
    # not vacuous: layers fire on empty steps, others stay quiet and their membranes settle
    assert {"block.0.attn.q_lif", "block.0.attn.proj_lif", "block.0.mlp.fc1_lif"} <= fired_empty
    assert {"patch_embed.proj_lif", "block.0.attn.k_lif", "block.0.attn.attn_lif"} <= quiet
    # ... and the first layer's membranes settled, so its last steps were skipped (a zero bias
    # takes ~1000 float64 steps of halving to settle, so not every quiet layer gets there)
    assert engine.sps[0].neurons._settled


# --------------------------------------------------------------------------------------------
# against the plain computation (float32 and float64, bit for bit), step() against run()
# --------------------------------------------------------------------------------------------


def _models():
    yield "shipped", load(str(SHIPPED))
    yield "raised", raised_bias_model(TINY, FIRING, seed=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("which", ["shipped", "raised"])
def test_shortcuts_equal_plain_computation(which, dtype):
    model = dict(_models())[which]
    rng = np.random.default_rng(2)
    size = model.config.image_size
    xs = [(EMPTY, EMPTY)] * 70
    for k in (1, 3, 10, 400):  # near-empty steps, then a busy one
        f = np.zeros((2, size, size), np.int64)
        np.add.at(f, (rng.integers(0, 2, k), rng.integers(0, size, k),
                      rng.integers(0, size, k)), 1)
        xs.append(dense_to_events(f))
    xs += [(EMPTY, EMPTY)] * 90
    runs = {}
    for variant in ("fast", "plain"):
        for path in ("run", "step"):
            engine = Spikformer(model, dtype=dtype)
            if variant == "plain":
                plain(engine)
            store = record_spikes(engine)
            logits = drive(engine, xs, path)
            runs[variant, path] = (logits, store, engine.layer_stats(),
                                   {layer.name: layer.neurons.v.copy() for layer in engine.layers})
    fired = 0
    for key, (logits, store, stats, v) in runs.items():
        # the shortcuts against the plain computation on the same path, bit for bit; run()
        # against step() only in float64: offline, small dense layers batch their steps into one
        # GEMM, whose float32 rounding depends on the BLAS kernel and thread count
        want = ("plain", key[1]) if dtype == "float32" else ("plain", "step")
        want_logits, want_spikes, want_stats, want_v = runs[want]
        assert logits.tobytes() == want_logits.tobytes(), key
        if key[1] == want[1]:
            assert stats == want_stats, key
        else:  # the same work and spikes, but offline a linear layer's dense steps share one
            #   GEMM, so run() takes the dense path from a lower density than step()
            assert without_paths(stats) == without_paths(want_stats), key
        for name, steps in want_spikes.items():
            assert len(store[name]) == len(steps) == len(xs)
            for t, (a, b) in enumerate(zip(store[name], steps)):
                np.testing.assert_array_equal(a, b, err_msg=f"{key} {name} step {t}")
            fired += sum(len(s) for s in steps[:70])
            assert v[name].tobytes() == want_v[name].tobytes(), (key, name)
    assert fired > 0  # neurons fire on the empty steps themselves


# --------------------------------------------------------------------------------------------
# a quiet model's long run of empty steps does no synaptic work
# --------------------------------------------------------------------------------------------


QUIET = SpikformerConfig(image_size=32, sps_channels=(16, 32, 64), sps_pool=(True, True, True),
                         dim=64, heads=4, depth=1, mlp_hidden=128, num_classes=5, steps=8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_long_empty_run_counts_no_synaptic_ops(dtype):
    """Biases below threshold (random_model's are at most 1/sqrt(fan_in)): nothing ever fires,
    so 1000 empty steps cost no accumulate and no multiply anywhere; yet every membrane is
    updated every step, and the logits are the head's bias (features all zero)."""
    model = random_model(QUIET, seed=0)
    engine = Spikformer(model, dtype=dtype)
    steps = 1000
    engine.reset()
    for _ in range(steps):
        engine.step(EMPTY, EMPTY)
    before_logits = engine.layer_stats()
    for s, layer in zip(before_logits, engine.layers):
        assert s["ac"] == s["mac"] == s["dense_mac"] == 0, s["name"]
        assert s["attn_entries"] == s["attn_nonzero"] == s["input_events"] == 0, s["name"]
        assert s["spikes"] == 0 and s["dense_steps"] == 0, s["name"]
        assert s["neuron_updates"] == layer.n_neurons * steps, s["name"]
        assert s["sparse_steps"] == steps, s["name"]
    head = before_logits[-1]
    assert head["ac"] == head["mac"] == 0
    logits = engine.logits()
    np.testing.assert_array_equal(logits, engine.head.bias)
    assert engine.layer_stats()[-1]["mac"] == engine.head.weight.size  # the one GEMV
    # the offline path counts the same
    offline = Spikformer(model, dtype=dtype)
    np.testing.assert_array_equal(offline.run([(EMPTY, EMPTY)] * steps), logits)
    assert offline.layer_stats() == engine.layer_stats()
    assert all(layer.neurons._settled for layer in engine.layers)


# --------------------------------------------------------------------------------------------
# the attention shortcut counts what the kernel counts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_without_pairs_counts_what_the_kernel_counts(order, dtype):
    """Every combination of empty and non-empty Q, K, V, over several steps: the layer that may
    skip the kernel (Y = 0 when nothing pairs) and the one that always runs it agree on spikes,
    membranes, counters and the orders reported per head."""
    tokens, dim, heads = 16, 32, 4
    params = SimpleNamespace(name="attn", tau=2.0, theta=0.5, v_reset=0.0, decay_input=True)
    fast = AttentionLIF(params, tokens, dim, heads, 0.25, dtype=dtype, order=order)
    full = AttentionLIF(params, tokens, dim, heads, 0.25, dtype=dtype, order=order)
    full._nothing_to_attend = lambda nq, nk, nv: False
    rng = np.random.default_rng(order)
    skipped = 0
    for step in range(24):
        lists = []
        for m in range(3):
            if (step >> m) & 1:
                lists.append(EMPTY)
            else:
                n = int(rng.integers(1, 40))
                lists.append(np.sort(rng.choice(tokens * dim, n, replace=False)).astype(np.int32))
        skipped += fast._nothing_to_attend(*(x.shape[0] for x in lists))
        a = fast.attend(*lists)
        b = full.attend(*lists)
        np.testing.assert_array_equal(a, b)
        assert fast.neurons.v.tobytes() == full.neurons.v.tobytes()
        np.testing.assert_array_equal(fast.counters, full.counters)
        np.testing.assert_array_equal(fast.orders_used, full.orders_used)
    assert skipped > 0
    # and the kernel itself, on an empty Q or K, forms nothing
    out = np.full(tokens * dim, 7.0, dtype)
    counters = np.zeros(C.N_COUNTERS, np.int64)
    q = np.arange(0, tokens * dim, 3, dtype=np.int32)
    ssa_step(q, EMPTY, q, tokens, dim, heads, np.array([0.25], dtype), out, counters, 1)
    assert not out.any() and counters[C.AC] == counters[C.ATTN_ENTRIES] == 0
