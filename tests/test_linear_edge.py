"""Offline, a linear layer's dense steps share one GEMM, so run_steps takes the dense path from
a lower input density (layers.base.LINEAR_DENSE_ABOVE) than a step on its own does, and an
integer convolution's dense steps run in its bands, from layers.base.CONV_DENSE_ABOVE; the
results are the same either way (float64 bit for bit, integers exactly)."""

import numpy as np
import pytest

from eventformer.kernels import counters as C
from eventformer.layers import PathPolicy
from eventformer.layers.base import CONV_DENSE_ABOVE, GATHER_BAND, LINEAR_DENSE_ABOVE
from eventformer.layers.synapses import Conv2dLIF, LinearLIF
from eventformer.modelfile import load
from eventformer.runtime import engine_threads, set_engine_threads
from eventformer.weights import shipped_model_path


def _inputs(rng, tokens: int, dim: int, density: float, steps: int) -> list:
    sites = tokens * dim
    out = []
    for _ in range(steps):
        idx = np.sort(rng.choice(sites, int(density * sites), replace=False)).astype(np.int32)
        out.append((idx, rng.integers(1, 4, idx.shape[0]).astype(np.int32)))
    return out


def _assert_dense_offline_same(offline, stepped, got, want):
    """Every step ran dense offline and gathered step by step, and both gave the same spikes,
    membranes and op counts (the path's own counters apart); the layer fired."""
    steps = len(want)
    assert offline.counters[C.DENSE_STEPS] == steps
    assert stepped.counters[C.DENSE_STEPS] == 0 and stepped.gather_steps == steps
    assert sum(s[0].shape[0] for s in want) > 0  # the layer fires
    for (a, _), (b, _) in zip(got, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(offline.neurons.v, stepped.neurons.v)
    for i in (C.AC, C.INPUT_EVENTS, C.INPUT_SITES, C.NEURON_UPDATES):
        assert offline.counters[i] == stepped.counters[i], C.NAMES[i]


@pytest.mark.parametrize("dtype", ["float64", "int8", "int16"])
def test_run_steps_goes_dense_from_the_lower_edge_with_the_same_spikes(dtype):
    model = load(str(shipped_model_path()))
    params = model.layers["block.0.mlp.fc1_lif"]  # the residual stream in: integers 1..3
    tokens = model.config.tokens
    arith = "float" if dtype.startswith("float") else dtype
    hi = GATHER_BAND[arith][min(engine_threads(), 2)][1]
    density = (LINEAR_DENSE_ABOVE + hi) / 2  # dense offline, gathered step by step
    assert LINEAR_DENSE_ABOVE < density < hi

    def layer():
        return LinearLIF(params, tokens, dtype=dtype, input_kind="integers",
                         policy=PathPolicy(), multiplicity=3)

    rng = np.random.default_rng(0)
    dim = params.weight.shape[1]  # [out, in]
    steps = _inputs(rng, tokens, dim, density, 8)
    offline, stepped = layer(), layer()
    got = offline.run_steps(steps)
    want = [stepped.step(idx, cnt) for idx, cnt in steps]
    _assert_dense_offline_same(offline, stepped, got, want)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_a_convolution_goes_dense_offline_from_its_edge_with_the_same_spikes(dtype, n_threads):
    """Between CONV_DENSE_ABOVE and the per-step edge a sample's steps run dense (whole on one
    thread, in bands, each band's own im2col rows, on two), a step on its own gathers: the same
    spikes, membranes and op counts (not the path's)."""
    if dtype not in CONV_DENSE_ABOVE:
        pytest.skip(f"{dtype} has no offline convolution edge on this CPU: it gathers up to "
                    "the per-step edge")
    model = load(str(shipped_model_path()))
    params = model.layers["patch_embed.proj_lif2"]  # 32 -> 64 channels, 3x3, stride 1
    cin = params.weight.shape[1]
    in_shape = (16, 16, cin)
    lo = CONV_DENSE_ABOVE[dtype]
    density = (lo + GATHER_BAND[dtype][2][1]) / 2  # dense offline, gathered step by step
    before = engine_threads()
    set_engine_threads(n_threads)
    try:
        def layer():
            return Conv2dLIF(params, in_shape, dtype=dtype, input_kind="spikes", pool=None,
                             policy=PathPolicy())

        rng = np.random.default_rng(1)
        sites = int(np.prod(in_shape))
        steps = []
        for _ in range(6):
            idx = np.sort(rng.choice(sites, int(density * sites), replace=False))
            steps.append((idx.astype(np.int32), np.ones(idx.shape[0], np.int32)))
        offline, stepped = layer(), layer()
        if n_threads > 1:  # bands, even below the work that would split it unasked
            offline._band_bounds = lambda inputs, dense=None: [0, 7, in_shape[0]]
        got = offline.run_steps(steps)
        want = [stepped.step(idx, cnt) for idx, cnt in steps]
    finally:
        set_engine_threads(before)
    _assert_dense_offline_same(offline, stepped, got, want)
