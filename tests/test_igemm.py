"""The integer GEMM (eventformer.kernels.igemm) and the integer modes' dense steps built on it.

The kernel must equal numpy's int64 matmul (wrapped to int32 where a test drives the sums past
it: the instructions wrap, and the layers' load-time bound keeps real sums inside int32) on
random and edge-case inputs; and a model whose every layer fires must give the same integers
(every synaptic current, every spike, the logits) through its dense steps as through its
event-driven ones, in int8 and int16.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_every_layer_fires, record_spikes, uniform_events
from numba import njit
from numba.core import config

from eventformer.bench.calibrate import calibrate, random_model
from eventformer.events import frame_events
from eventformer.fixedpoint import arithmetic
from eventformer.kernels import int_gemm
from eventformer.kernels.igemm import AVX2_DOT, PANEL, ROWS, UINT8_ROW_MAX, VNNI, pack_igemm
from eventformer.layers import PathPolicy, synapses
from eventformer.layers.synapses import SynapticLIF
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.runtime import engine_threads, set_engine_threads

KINDS = {  # rows dtype: (packed weight dtype, rows range, weights range)
    "uint8": (np.int8, (0, UINT8_ROW_MAX), (-128, 127)),  # 255 on VNNI, 127 on AVX2
    "int16": (np.int16, (-32768, 32767), (-32768, 32767)),
}


def _wrapped(a, w) -> np.ndarray:
    """The int64 product reduced modulo 2^32 into int32, as the kernel's wrapping sums are."""
    ref = a.astype(np.int64) @ w.astype(np.int64)
    return ((ref + 2**31) % 2**32 - 2**31).astype(np.int32)


NO_BIAS = np.empty(0, np.int32)


def _run(a, w, kind) -> np.ndarray:
    out = np.full((a.shape[0], w.shape[1]), -7, np.int32)  # every entry must be written
    int_gemm(a, pack_igemm(w, KINDS[kind][0]), out, NO_BIAS)
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("m", [0, 1, ROWS - 1, ROWS, ROWS + 1, 2 * ROWS + 5])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5, 7, 18, 65])
def test_random_inputs_equal_int64_matmul(kind, m, k):
    rng = np.random.default_rng(m * 100 + k)
    _, (alo, ahi), (wlo, whi) = KINDS[kind]
    for n in (1, 15, PANEL, PANEL + 1, 3 * PANEL - 3):
        a = rng.integers(alo, ahi + 1, (m, k)).astype(kind)
        w = rng.integers(wlo, whi + 1, (k, n))
        assert np.array_equal(_run(a, w, kind), _wrapped(a, w)), (m, k, n)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_edge_cases(kind):
    _, (alo, ahi), (wlo, whi) = KINDS[kind]
    m, k, n = 2 * ROWS + 1, 4 * 9 + 3, PANEL + 5  # k not a multiple of 4, odd rows and columns
    rng = np.random.default_rng(3)
    extremes = rng.choice([wlo, whi], (k, n))
    cases = {
        "all-zero rows": (np.zeros((m, k), kind), extremes),
        "all-ones rows": (np.ones((m, k), kind), extremes),
        "largest rows, lowest weights": (np.full((m, k), ahi, kind), np.full((k, n), wlo)),
        "largest rows, highest weights": (np.full((m, k), ahi, kind), np.full((k, n), whi)),
        "smallest rows, lowest weights": (np.full((m, k), alo, kind), np.full((k, n), wlo)),
        "zero weights": (rng.integers(alo, ahi + 1, (m, k)).astype(kind), np.zeros((k, n))),
    }
    for name, (a, w) in cases.items():
        assert np.array_equal(_run(a, w, kind), _wrapped(a, w)), name


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bands_of_rows_fill_their_block_of_the_output(kind):
    """A band of rows (a thread's share) of a larger buffer, into the same rows of ``out``:
    the rest of ``out`` untouched. The last row of the buffer is read to its last byte, not
    beyond (k * itemsize not a multiple of 4)."""
    packed_dtype, (alo, ahi), (wlo, whi) = KINDS[kind]
    rng = np.random.default_rng(4)
    m, k, n = 23, 2 * 9 + 1, 2 * PANEL
    a = rng.integers(alo, ahi + 1, (m, k)).astype(kind)
    w = rng.integers(wlo, whi + 1, (k, n))
    packed = pack_igemm(w, packed_dtype)
    want = _wrapped(a, w)
    for r0, r1 in [(0, 7), (7, 16), (16, 23), (5, 6), (22, 23)]:
        out = np.full((m, n), -7, np.int32)
        int_gemm(a[r0:r1], packed, out[r0:r1], NO_BIAS)
        assert np.array_equal(out[r0:r1], want[r0:r1])
        assert (np.delete(out, np.s_[r0:r1], axis=0) == -7).all()


def test_spike_rows_at_the_models_shapes():
    """0/1 rows at the full-size model's widths, int8 and int16 weights."""
    rng = np.random.default_rng(5)
    for k, n in [(18, 32), (288, 64), (2304, 256), (256, 1024)]:
        a = (rng.random((37, k)) < 0.3).astype(np.uint8)
        w8 = rng.integers(-128, 128, (k, n))
        assert np.array_equal(_run(a, w8, "uint8"), a.astype(np.int64) @ w8)
        w16 = rng.integers(-32767, 32768, (k, n))
        assert np.array_equal(_run(a.astype(np.int16), w16, "int16"),
                              a.astype(np.int64) @ w16)


def test_mismatched_arguments_are_refused():
    a = np.zeros((3, 8), np.uint8)
    packed = pack_igemm(np.zeros((8, 40), np.int64), np.int8)
    with pytest.raises(ValueError):
        int_gemm(a, packed, np.zeros((3, 70), np.int32), NO_BIAS)  # more columns than panels
    with pytest.raises(ValueError):
        int_gemm(np.zeros((3, 12), np.uint8), packed, np.zeros((3, 40), np.int32),
                 NO_BIAS)  # k too long
    with pytest.raises(ValueError):  # a bias not padded to whole panels
        int_gemm(a, packed, np.zeros((3, 40), np.int32), np.zeros(40, np.int32))
    with pytest.raises(ValueError):
        pack_igemm(np.full((2, 2), 128), np.int8)


@pytest.mark.parametrize("isa, here, uint8_ops, int16_ops", [
    ("AVX512-VNNI", VNNI, ["vpdpbusd"], ["vpdpwssd"]),
    ("AVX2 without VNNI", AVX2_DOT, ["vpmaddubsw", "vpmaddwd"], ["vpmaddwd"]),
])
def test_the_kernel_runs_on_the_cpus_dot_products(isa, here, uint8_ops, int16_ops):
    if not here or config.DISABLE_JIT:
        pytest.skip(f"the CPU is not {isa}")
    fresh = njit(nogil=True)(int_gemm.py_func)  # compiled here: the cached code cannot be read
    fresh(np.zeros((1, 4), np.uint8), pack_igemm(np.zeros((4, 1), np.int64), np.int8),
          np.zeros((1, 1), np.int32), NO_BIAS)
    fresh(np.zeros((1, 2), np.int16), pack_igemm(np.zeros((2, 1), np.int64), np.int16),
          np.zeros((1, 1), np.int32), NO_BIAS)
    asm = {str(sig[0].dtype): fresh.inspect_asm(sig) for sig in fresh.signatures}
    assert all(op in asm["uint8"] for op in uint8_ops)
    assert all(op in asm["int16"] for op in int16_ops)
    # the byte products' saturating pairs bound the uint8 rows on AVX2 (UINT8_ROW_MAX)
    assert (UINT8_ROW_MAX, ROWS) == ((127, 3) if AVX2_DOT else (255, 6))


def test_uint8_rows_only_within_the_kernels_exact_range(monkeypatch):
    """A layer whose input values can pass UINT8_ROW_MAX (vpmaddubsw would saturate a pair of
    products above int16 on AVX2) multiplies int16 rows instead; int16 weights always do."""
    monkeypatch.setattr(synapses, "INT_GEMM", True)
    int8, int16 = arithmetic("int8"), arithmetic("int16")
    assert synapses._integer_rows(int8, 1) == np.uint8
    assert synapses._integer_rows(int8, UINT8_ROW_MAX) == np.uint8
    assert synapses._integer_rows(int8, UINT8_ROW_MAX + 1) == np.int16
    assert synapses._integer_rows(int16, 1) == np.int16
    assert synapses._integer_rows(int8, 2**15) is None  # float BLAS
    monkeypatch.setattr(synapses, "INT_GEMM", False)
    assert synapses._integer_rows(int8, 1) is None


# --- the engine: dense steps against event-driven ones ------------------------------------------

SIZE = 32
STEPS = 6


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(11)
    out = []
    for n in (3000, 9000):
        ev = uniform_events(rng, n, SIZE)
        # a hot pixel: raw counts above 255 in one step reach the first layer's dense rows
        hot = uniform_events(rng, 400 * STEPS, SIZE)
        hot["x"], hot["y"], hot["p"] = 5, 7, 1
        ev = np.concatenate([ev, hot])
        ev = ev[np.argsort(ev["t"], kind="stable")]
        out.append(frame_events(ev, STEPS, SIZE, SIZE))
    return out


@pytest.fixture(scope="module")
def model(samples):
    config = SpikformerConfig(image_size=SIZE, sps_channels=(8, 16, 32, 32), dim=32, heads=2,
                              depth=1, mlp_hidden=64, steps=STEPS, attention="ssa")
    return calibrate(random_model(config, seed=2), samples[:1], 0.15)


@pytest.fixture
def one_thread():
    before = engine_threads()
    set_engine_threads(1)
    yield
    set_engine_threads(before)


def _traced(model, dtype, mode, samples):
    """Per sample: every synaptic layer's current per step, every layer's spikes, the logits;
    and the engine's layer stats and synaptic layers."""
    engine = Spikformer(model, dtype=dtype, policy=PathPolicy(mode=mode))
    synaptic = [layer for layer in engine.layers if isinstance(layer, SynapticLIF)]
    currents: dict = {}
    for layer in synaptic:
        layer.probe = lambda lyr, cur: currents.setdefault(lyr.name, []).append(cur.copy())
    spikes = record_spikes(engine)
    logits = [engine.run(steps) for steps in samples]
    return currents, spikes, logits, engine.layer_stats(), synaptic


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("other", ["sparse", "gather"])
def test_dense_steps_equal_event_driven_steps(model, samples, dtype, other, one_thread,
                                              monkeypatch):
    """The integer GEMM is forced on (as on a CPU with VNNI; elsewhere its portable form), so
    the comparison holds on every machine."""
    monkeypatch.setattr(synapses, "INT_GEMM", True)
    currents, spikes, logits, stats, layers = _traced(model, dtype, "dense", samples)
    assert_every_layer_fires(stats)
    names = {layer.name for layer in layers}
    assert all(row["dense_steps"] > 0 and row["sparse_steps"] == 0
               for row in stats if row["name"] in names)
    integer = {layer.name: layer.gemm_dtype for layer in layers if layer.gemm_dtype.kind != "f"}
    # every layer but the int8 first layer (raw counts: its overflow bound lets through counts
    # no int16 row holds, so it stays on float BLAS) runs on the integer GEMM
    on_float = {layers[0].name} if dtype == "int8" else set()
    assert set(integer) == {layer.name for layer in layers} - on_float
    if dtype == "int8":
        assert all(dt == np.uint8 for dt in integer.values())
    else:
        assert all(dt == np.int16 for dt in integer.values())
    ref_currents, ref_spikes, ref_logits, ref_stats, _ = _traced(model, dtype, other, samples)
    assert_every_layer_fires(ref_stats)
    assert currents.keys() == ref_currents.keys()
    for name in currents:
        assert len(currents[name]) == len(ref_currents[name])
        for got, want in zip(currents[name], ref_currents[name]):
            assert got.dtype == np.int32 and np.array_equal(got, want), name
    assert spikes.keys() == ref_spikes.keys()
    for name in spikes:
        assert all(np.array_equal(a, b) for a, b in zip(spikes[name], ref_spikes[name])), name
    for got, want in zip(logits, ref_logits):
        assert np.array_equal(got, want)


def test_raw_counts_above_255_reach_the_dense_rows(samples):
    """The samples' hot pixel carries counts a uint8 row could not hold."""
    assert max(int(cnt.max()) for sample in samples for _, cnt in sample if cnt.size) > 255


@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_without_the_integer_gemm_dense_steps_run_on_float_blas(model, dtype, monkeypatch):
    monkeypatch.setattr(synapses, "INT_GEMM", False)
    engine = Spikformer(model, dtype=dtype, policy=PathPolicy(mode="dense"))
    assert all(layer.gemm_dtype.kind == "f" for layer in engine.layers
               if isinstance(layer, SynapticLIF))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_accumulators_start_from_the_bias(kind):
    """With a bias (padded to whole panels), out = rows @ W + bias, every row and panel: the
    whole 6-row blocks, the rows after them, and a last panel past the channels."""
    packed_dtype, (alo, ahi), (wlo, whi) = KINDS[kind]
    rng = np.random.default_rng(6)
    m, k, n = 17, 4 * 7 + 2, PANEL + 9
    a = rng.integers(alo, ahi + 1, (m, k)).astype(kind)
    w = rng.integers(wlo, whi + 1, (k, n))
    bias = rng.integers(-2**20, 2**20, n).astype(np.int32)
    padded = np.zeros(2 * PANEL, np.int32)
    padded[:n] = bias
    out = np.full((m, n), -7, np.int32)
    int_gemm(a, pack_igemm(w, packed_dtype), out, padded)
    assert np.array_equal(out, _wrapped(a, w) + bias)
