"""The successor models' attention operators as engine layers, against plain numpy.

QKFormer's token QK attention (``layers.successors.TokenQKAttention``) is checked in float64
against the released code's computation written out in numpy: q, k = LIF(W x + b); per (token,
head) the Q spike count drives the attention LIF (theta 0.5); its spikes mask K; proj = LIF(W s +
b). Weights sit on a dyadic grid so that every sum is exact in float64 whatever its order, and
the test first checks that every LIF fires. Integer modes are held to their agreement with
float (SPEC §6), not to identity.
"""

from __future__ import annotations

import numpy as np
import pytest

from eventformer.layers import PathPolicy
from eventformer.layers.successors import TokenQKAttention
from eventformer.modelfile.format import LayerParams

TOKENS, DIM, HEADS, STEPS = 16, 32, 4, 6


class _Config:
    tokens, dim, heads, scale, grid = TOKENS, DIM, HEADS, 1.0, 4


def _grid(rng, shape, step=1 / 64):
    """Weights on a 1/64 grid: sums of a few hundred stay exact in float64."""
    return np.round(rng.normal(0, 0.3, shape) / step) * step


def _layers(seed=0):
    rng = np.random.default_rng(seed)
    p = "stage1.0.tssa"
    layers = {}
    for name in ("q", "k", "proj"):
        layers[f"{p}.{name}_lif"] = LayerParams(f"{p}.{name}_lif", "linear",
                                                _grid(rng, (DIM, DIM)),
                                                _grid(rng, (DIM,)) + 0.25)
    layers[f"{p}.attn_lif"] = LayerParams(f"{p}.attn_lif", "attention", None, None, theta=0.5)
    return p, layers


def _inputs(seed=1):
    """Integer block inputs (the residual stream: values 1..2) at ~30% of sites."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(STEPS):
        idx = np.flatnonzero(rng.random(TOKENS * DIM) < 0.3).astype(np.int32)
        steps.append((idx, rng.integers(1, 3, idx.shape[0]).astype(np.int32)))
    return steps


def _lif(v, x, theta):
    """SPEC §1 LIF, tau 2, hard reset to 0, decay_input: (spikes, new v)."""
    h = v + (x - v) * 0.5
    s = h >= theta
    return s, np.where(s, 0.0, h)


def _numpy_reference(layers, prefix, steps):
    """The released Token_QK_Attention, step by step, in float64: per-LIF spike maps."""
    def w(name):
        p = layers[f"{prefix}.{name}_lif"]
        return p.weight, p.bias

    d = DIM // HEADS
    v = {name: np.zeros((TOKENS, DIM)) for name in ("q", "k", "proj")}
    v_attn = np.zeros((TOKENS, HEADS))
    out = {name: [] for name in ("q", "k", "attn", "proj")}
    for idx, cnt in steps:
        x = np.zeros(TOKENS * DIM)
        x[idx] = cnt
        x = x.reshape(TOKENS, DIM)
        spikes = {}
        for name in ("q", "k"):
            wt, b = w(name)
            spikes[name], v[name] = _lif(v[name], x @ wt.T + b, 1.0)
        counts = spikes["q"].reshape(TOKENS, HEADS, d).sum(axis=2).astype(np.float64)
        attn, v_attn = _lif(v_attn, counts, 0.5)
        masked = spikes["k"] * np.repeat(attn, d, axis=1)
        wt, b = w("proj")
        spikes["proj"], v["proj"] = _lif(v["proj"], masked @ wt.T + b, 1.0)
        for name in ("q", "k", "proj"):
            out[name].append(np.flatnonzero(spikes[name]))
        out["attn"].append(np.flatnonzero(attn))
    return out


def _engine_spikes(op, steps, offline):
    """Every LIF's spikes per step, recorded from the layers' neurons."""
    names = {id(op.q): "q", id(op.k): "k", id(op.core): "attn", id(op.proj): "proj"}
    got = {name: [] for name in names.values()}
    for layer in op.layers:
        fire = layer.neurons.fire
        name = names[id(layer)]

        def recording(current, counters, fire=fire, name=name):
            spikes = fire(current, counters)
            got[name].append(np.asarray(spikes).copy())
            return spikes

        layer.neurons.fire = recording
    if offline:
        op.run_steps(steps)
    else:
        for idx, cnt in steps:
            op.step(idx, cnt)
    return got


@pytest.mark.parametrize("mode", ["sparse", "gather", "dense", "auto"])
@pytest.mark.parametrize("offline", [False, True])
def test_token_qk_float64_matches_numpy(mode, offline):
    prefix, layers = _layers()
    steps = _inputs()
    ref = _numpy_reference(layers, prefix, steps)
    for name, per_step in ref.items():  # the comparison means something only if all fire
        assert sum(s.shape[0] for s in per_step) > 0, f"{name} never fires"
    op = TokenQKAttention(prefix, layers, _Config, dtype="float64",
                          policy=PathPolicy(mode=mode), multiplicity=2)
    got = _engine_spikes(op, steps, offline)
    for name in ref:
        assert len(got[name]) == STEPS, name
        for t in range(STEPS):
            np.testing.assert_array_equal(got[name][t], ref[name][t], err_msg=f"{name} t={t}")


def test_token_qk_counts_its_work():
    prefix, layers = _layers()
    steps = _inputs()
    op = TokenQKAttention(prefix, layers, _Config, dtype="float64", policy=PathPolicy(),
                          multiplicity=2)
    ref = _numpy_reference(layers, prefix, steps)
    op.run_steps(steps)
    stats = op.core.stats()
    q_spikes = sum(s.shape[0] for s in ref["q"])
    assert stats["ac"] == q_spikes  # one add per Q spike
    assert stats["neurons"] == TOKENS * HEADS
    assert stats["spikes"] == sum(s.shape[0] for s in ref["attn"])
    assert stats["mask"] > 0


@pytest.mark.parametrize("dtype", ["int16", "int8"])
def test_token_qk_integer_modes_agree_with_float(dtype):
    prefix, layers = _layers()
    steps = _inputs()
    ref = _numpy_reference(layers, prefix, steps)
    op = TokenQKAttention(prefix, layers, _Config, dtype=dtype, policy=PathPolicy(),
                          multiplicity=2)
    got = _engine_spikes(op, steps, offline=True)
    for name in ref:
        agree = total = 0
        for t in range(STEPS):
            a = np.zeros(TOKENS * DIM, bool)
            b = np.zeros(TOKENS * DIM, bool)
            a[ref[name][t]] = True
            b[got[name][t]] = True
            agree += int((a == b).sum())
            total += a.size
        assert agree / total >= 0.97, f"{name}: {agree / total:.3f} of sites agree"
