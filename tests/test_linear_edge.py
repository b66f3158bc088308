"""Offline, a linear layer's dense steps share one GEMM, so run_steps takes the dense path from
a lower input density (layers.base.LINEAR_DENSE_ABOVE) than a step on its own does; the results
are the same either way (float64 bit for bit, integers exactly)."""

import numpy as np
import pytest

from eventformer.kernels import counters as C
from eventformer.layers import PathPolicy
from eventformer.layers.base import GATHER_BAND, LINEAR_DENSE_ABOVE
from eventformer.layers.synapses import LinearLIF
from eventformer.modelfile import load
from eventformer.runtime import engine_threads
from eventformer.weights import shipped_model_path


def _inputs(rng, tokens: int, dim: int, density: float, steps: int) -> list:
    sites = tokens * dim
    out = []
    for _ in range(steps):
        idx = np.sort(rng.choice(sites, int(density * sites), replace=False)).astype(np.int32)
        out.append((idx, rng.integers(1, 4, idx.shape[0]).astype(np.int32)))
    return out


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
    assert offline.counters[C.DENSE_STEPS] == len(steps)
    assert stepped.counters[C.DENSE_STEPS] == 0 and stepped.gather_steps == len(steps)
    assert sum(s[0].shape[0] for s in want) > 0  # the layer fires
    for (a, _), (b, _) in zip(got, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(offline.neurons.v, stepped.neurons.v)
