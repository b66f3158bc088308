"""Every Numba kernel against its naive numpy twin (tests/kernel_twins.py), on random inputs.

Hypothesis draws the shapes and a seed; numpy draws the arrays from the seed. Weights and biases
sit on a 2^-8 grid and inputs are small integers, so every float sum is exact in float32 and
float64 whatever the summation order: results must be EQUAL, not close. The LIF test is the
exception that proves the rule: arbitrary float currents, compared bit for bit, because the kernel
must evaluate the charge in exactly the documented order.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numba.core.caching import NullCache

import kernel_twins as twin
from eventformer.kernels.sparse import _maxpool_kernel
from eventformer.kernels.conv import densify_taps, scatter_taps, tap_table
from eventformer.kernels import (
    channel_sums,
    conv2d_gather,
    conv2d_scatter,
    counters as C,
    densify_padded,
    depthwise3x3_scatter,
    im2col_padded,
    int_gemm,
    lif_fixed_kernels,
    lif_kernels,
    lif_params,
    lif_quiet_step,
    lif_step,
    lif_step_flags,
    linear_event_ops,
    linear_scatter,
    maxpool_flags,
    merge_add,
    nsad_step,
    saformer_step,
    scatter_dense,
    ssa_bin_step,
    ssa_step,
    tasa_current,
)

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = st.sampled_from([np.float32, np.float64])
SEEDS = st.integers(0, 2**32 - 1)
# how events are laid out: none at all, a random scatter, only the border ring, (nearly) everything
MODES = st.sampled_from(["empty", "random", "border", "full"])


def grid(rng, shape, dtype):
    """Values on a 2^-8 grid in [-1, 1): sums of a few hundred of them are exact in float32."""
    return (rng.integers(-256, 256, size=shape) / 256).astype(dtype)


def counter_start(rng):
    """A counter array that already holds work: kernels must add to it, not overwrite it."""
    return rng.integers(0, 1000, size=C.N_COUNTERS).astype(np.int64)


def count_map(rng, shape, mode, max_mult, border_axes=None):
    """Dense non-negative int64 map of ``shape`` with the event pattern ``mode``.

    ``border_axes`` are the two spatial axes whose first/last rows and columns form the border.
    """
    if mode == "empty":
        return np.zeros(shape, np.int64)
    if mode == "full":
        active = rng.random(shape) < 0.95
    else:
        active = rng.random(shape) < rng.uniform(0.05, 0.6)
    if mode == "border":
        ay, ax = border_axes
        ring = np.zeros(shape, bool)
        sl = [slice(None)] * len(shape)
        for axis in (ay, ax):
            for pos in (0, shape[axis] - 1):
                s = list(sl)
                s[axis] = pos
                ring[tuple(s)] = True
        active = ring & (rng.random(shape) < 0.8)
        # the four corners of every channel, always
        corner = [slice(None)] * len(shape)
        for py in (0, shape[ay] - 1):
            for px in (0, shape[ax] - 1):
                corner[ay], corner[ax] = py, px
                active[tuple(corner)] = True
    mult = rng.integers(1, max_mult + 1, size=shape)
    return np.where(active, mult, 0).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# convolution: scatter and the dense (densify + im2col + GEMM) path
# ---------------------------------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.sampled_from([1, 2]))
    pad = draw(st.sampled_from([0, 1]))
    h = draw(st.integers(max(1, k - 2 * pad), 7))
    w = draw(st.integers(max(1, k - 2 * pad), 7))
    return dict(
        k=k, stride=stride, pad=pad, h=h, w=w,
        cin=draw(st.integers(1, 4)), cout=draw(st.integers(1, 5)),
        dtype=draw(DTYPES), mode=draw(MODES), max_mult=draw(st.sampled_from([1, 1, 3, 7])),
        weighted=draw(st.booleans()), seed=draw(SEEDS),
    )


def _conv_setup(case):
    rng = np.random.default_rng(case["seed"])
    k, s, p, h, w = case["k"], case["stride"], case["pad"], case["h"], case["w"]
    cin, cout, dt = case["cin"], case["cout"], case["dtype"]
    x = count_map(rng, (cin, h, w), case["mode"], case["max_mult"], border_axes=(1, 2))
    weight = grid(rng, (cout, cin, k, k), dt)
    bias = grid(rng, (cout,), dt)
    ho, wo = twin.conv_out_size(h, k, s, p), twin.conv_out_size(w, k, s, p)
    idx, cnt = twin.chw_to_events(x)
    expect = twin.conv2d(x, weight, s, p, bias)
    ops = twin.conv2d_ops(x, k, k, cout, s, p, case["weighted"])
    return rng, x, weight, bias, ho, wo, idx, cnt, expect, ops


def _expected_counters(start, case, ops, n_events):
    exp = start.copy()
    exp[C.MAC if case["weighted"] else C.AC] += ops
    exp[C.INPUT_EVENTS] += n_events
    return exp


@SETTINGS
@given(conv_cases())
def test_conv2d_scatter_matches_twin(case):
    rng, x, weight, bias, ho, wo, idx, cnt, expect, ops = _conv_setup(case)
    k, cout, dt = case["k"], case["cout"], case["dtype"]
    out = np.tile(bias, ho * wo)  # HWC current initialised with the bias
    counters = counter_start(rng)
    start = counters.copy()
    rows = twin.conv_weight_scatter_rows(weight)
    conv2d_scatter(idx, cnt, case["w"], case["cin"], rows, k, k, case["stride"], case["pad"], ho,
                   wo, 0, ho, out, counters, case["weighted"])
    assert out.dtype == dt
    got = out.reshape(ho, wo, cout).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(counters, _expected_counters(start, case, ops, idx.shape[0]))
    # two bands of output rows (as two threads run them) give the whole map and its ops
    cut = int(rng.integers(0, ho + 1))
    band_out, band_ops = [], 0
    for r0, r1 in ((0, cut), (cut, ho)):
        part = np.tile(bias, (r1 - r0) * wo)
        c = np.zeros(C.N_COUNTERS, np.int64)
        conv2d_scatter(idx, cnt, case["w"], case["cin"], rows, k, k, case["stride"], case["pad"],
                       ho, wo, r0, r1, part, c, case["weighted"])
        band_out.append(part)
        band_ops += c[C.MAC if case["weighted"] else C.AC]
    np.testing.assert_array_equal(np.concatenate(band_out), out)
    assert band_ops == ops


@pytest.mark.parametrize("in_size,k,stride,pad,out_size", [
    (8, 3, 1, 1, 8), (9, 3, 2, 1, 5), (7, 5, 2, 2, 4), (5, 1, 1, 0, 5), (1, 3, 1, 1, 1),
    (12, 3, 2, 1, 6), (6, 4, 3, 0, 1)])
def test_tap_table_is_the_division_it_replaces(in_size, k, stride, pad, out_size):
    """The scatter's tap tables (numpy, once per geometry) against the division the event loop
    would otherwise do per event and tap."""
    table, valid = tap_table(in_size, k, stride, pad, out_size)
    for pos in range(in_size):
        reached = []
        for tap in range(k):
            num = pos + pad - tap
            o = num // stride
            reached.append(o if num >= 0 and o * stride == num and o < out_size else -1)
        assert list(table[pos * k:(pos + 1) * k]) == reached
        assert valid[pos] == sum(o >= 0 for o in reached)
    assert not table.flags.writeable and tap_table(in_size, k, stride, pad, out_size)[0] is table


@SETTINGS
@given(conv_cases())
def test_conv_dense_path_matches_twin(case):
    rng, x, weight, bias, ho, wo, idx, cnt, expect, ops = _conv_setup(case)
    k, s, p, cin, cout, dt = (case[n] for n in ("k", "stride", "pad", "cin", "cout", "dtype"))
    padded = np.full((case["h"] + 2 * p, case["w"] + 2 * p, cin), np.nan, dt)  # must be cleared
    counters = counter_start(rng)
    start = counters.copy()
    densify_padded(idx, cnt, case["w"], cin, cout, k, k, s, p, ho, wo, padded, counters,
                   case["weighted"])
    np.testing.assert_array_equal(counters, _expected_counters(start, case, ops, idx.shape[0]))
    inner = padded[p:p + case["h"], p:p + case["w"], :].transpose(2, 0, 1)
    np.testing.assert_array_equal(inner, x.astype(dt))
    assert np.count_nonzero(padded) == np.count_nonzero(x)  # the pad ring is zero
    cols = np.full((ho * wo, k * k * cin), np.nan, dt)
    im2col_padded(padded, k, k, s, ho, wo, cols)
    dense = cols @ twin.conv_weight_dense_rows(weight) + bias
    assert dense.dtype == dt
    np.testing.assert_array_equal(dense.reshape(ho, wo, cout).transpose(2, 0, 1), expect)


@st.composite
def gather_cases(draw):
    """Stride 1, padding k // 2 (the gather's geometry), odd k up to 5, channel counts that
    cross the kernel's accumulator block (64)."""
    k = draw(st.sampled_from([1, 3, 3, 5]))
    return dict(
        k=k, stride=1, pad=k // 2, h=draw(st.integers(1, 7)), w=draw(st.integers(1, 7)),
        cin=draw(st.integers(1, 4)), cout=draw(st.sampled_from([1, 3, 5, 64, 70, 192])),
        dtype=draw(DTYPES), mode=draw(MODES), max_mult=draw(st.sampled_from([1, 1, 3, 7])),
        weighted=draw(st.booleans()), seed=draw(SEEDS),
    )


@SETTINGS
@given(gather_cases())
def test_conv2d_gather_matches_twin(case):
    rng, x, weight, bias, ho, wo, idx, cnt, expect, ops = _conv_setup(case)
    k, cout, dt = case["k"], case["cout"], case["dtype"]
    assert (ho, wo) == (case["h"], case["w"])
    out = np.full(ho * wo * cout, np.nan, dt)  # overwritten in full, bias included
    counters = counter_start(rng)
    start = counters.copy()
    rows = twin.conv_weight_dense_rows(weight)
    conv2d_gather(idx, cnt, case["h"], case["w"], case["cin"], rows, bias, k, 0, ho, out,
                  counters, case["weighted"])
    assert out.dtype == dt
    got = out.reshape(ho, wo, cout).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(counters, _expected_counters(start, case, ops, idx.shape[0]))
    # two bands of output rows (as two threads run them) give the whole map and its ops
    cut = int(rng.integers(0, ho + 1))
    band_out, band_ops = [], 0
    for r0, r1 in ((0, cut), (cut, ho)):
        part = np.full((r1 - r0) * wo * cout, np.nan, dt)
        c = np.zeros(C.N_COUNTERS, np.int64)
        conv2d_gather(idx, cnt, case["h"], case["w"], case["cin"], rows, bias, k, r0, r1, part,
                      c, case["weighted"])
        band_out.append(part)
        band_ops += c[C.MAC if case["weighted"] else C.AC]
    np.testing.assert_array_equal(np.concatenate(band_out), out)
    assert band_ops == ops


def test_conv2d_gather_vectorises():
    """The gather's float32 channel-block adds compile to ymm/zmm ``vaddps`` (PERF-NOTES: a hot
    kernel that scalarises runs several times slower and nothing else would notice)."""
    import re

    from numba import njit
    from numba.core import config

    if config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT=1: nothing is compiled")
    import llvmlite.binding as llvm

    if "+avx" not in llvm.get_host_cpu_features().flatten().split(","):
        pytest.skip("the CPU has no AVX")
    from eventformer.jit import OPTIONS

    from eventformer.kernels.gather import _GATHERS

    # a fresh, uncached compile of the kernel conv2d_gather calls for Cout 64: cached machine
    # code cannot be inspected
    fresh = njit(**{**OPTIONS, "cache": False})(_GATHERS[False, "whole"].py_func)
    f32 = np.float32
    fresh(np.array([0, 5], np.int32), np.ones(2, np.int32), 2, 2, 2, np.zeros((18, 64), f32),
          np.zeros(64, f32), 3, 0, 2, np.zeros(4 * 64, f32), np.zeros(C.N_COUNTERS, np.int64),
          False)
    asm = fresh.inspect_asm(fresh.signatures[0])
    assert re.search(r"vaddps\s[^\n]*%[yz]mm", asm), "conv2d_gather's float32 adds scalarised"


# ---------------------------------------------------------------------------------------------
# the integer gather (SPEC §6): int8 weights in int16 lanes, int16 weights in int32
# ---------------------------------------------------------------------------------------------


@st.composite
def gather_int_cases(draw):
    """The gather's geometry with int8 or int16 weights over their whole range, channel counts
    around the kernel's blocks (128, then 64, then a partial one), and multiplicities past the
    int16 lanes' budget of 256 unit adds (an event of m > 256 goes straight to int32). Sums stay
    within int32: at most 25 taps x 4 channels x 300 x 32768 < 2^30."""
    k = draw(st.sampled_from([1, 3, 3, 5]))
    return dict(
        k=k, stride=1, pad=k // 2, h=draw(st.integers(1, 6)), w=draw(st.integers(1, 6)),
        cin=draw(st.integers(1, 4)),
        cout=draw(st.sampled_from([1, 5, 64, 70, 128, 131, 192, 200])),
        wdtype=draw(st.sampled_from([np.int8, np.int16])), mode=draw(MODES),
        max_mult=draw(st.sampled_from([1, 1, 3, 257, 300])), weighted=draw(st.booleans()),
        seed=draw(SEEDS),
    )


def _gather_int_setup(case):
    """Inputs of the integer gather and what the twin says, computed in int64."""
    rng = np.random.default_rng(case["seed"])
    k, p, cin, cout = case["k"], case["pad"], case["cin"], case["cout"]
    x = count_map(rng, (cin, case["h"], case["w"]), case["mode"], case["max_mult"],
                  border_axes=(1, 2))
    info = np.iinfo(case["wdtype"])
    weight = rng.integers(info.min, info.max + 1, size=(cout, cin, k, k)).astype(case["wdtype"])
    bias = rng.integers(-2**20, 2**20, size=cout).astype(np.int32)
    idx, cnt = twin.chw_to_events(x)
    expect = twin.conv2d(x, weight.astype(np.int64), 1, p, bias.astype(np.int64))
    ops = twin.conv2d_ops(x, k, k, cout, 1, p, case["weighted"])
    return rng, weight, bias, idx, cnt, expect, ops


def _run_gather_int(case, weight, bias, idx, cnt, counters):
    from eventformer.kernels import conv2d_gather_int

    h, w, cout = case["h"], case["w"], case["cout"]
    rows = twin.conv_weight_dense_rows(weight)
    out = np.full(h * w * cout, -12345, np.int32)  # overwritten in full, bias included
    booked = C.MAC if case["weighted"] else C.AC
    before = int(counters[booked])
    conv2d_gather_int(idx, cnt, h, w, case["cin"], rows, bias, case["k"], 0, h, out, counters,
                      case["weighted"])
    assert out.dtype == np.int32
    # two bands of output rows (as two threads run them) give the whole map and its ops
    cut = h // 3
    band_out, band_ops = [], 0
    for r0, r1 in ((0, cut), (cut, h)):
        part = np.full((r1 - r0) * w * cout, -12345, np.int32)
        c = np.zeros(C.N_COUNTERS, np.int64)
        conv2d_gather_int(idx, cnt, h, w, case["cin"], rows, bias, case["k"], r0, r1, part, c,
                          case["weighted"])
        band_out.append(part)
        band_ops += c[booked]
    np.testing.assert_array_equal(np.concatenate(band_out), out)
    assert band_ops == counters[booked] - before
    return out.reshape(h, w, cout).transpose(2, 0, 1)


@SETTINGS
@given(gather_int_cases())
def test_conv2d_gather_int_matches_twin(case):
    rng, weight, bias, idx, cnt, expect, ops = _gather_int_setup(case)
    counters = counter_start(rng)
    start = counters.copy()
    got = _run_gather_int(case, weight, bias, idx, cnt, counters)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(counters, _expected_counters(start, case, ops, idx.shape[0]))


@pytest.mark.parametrize("fill", [127, -128])
@pytest.mark.parametrize("mult", ["1", "255", "256", "257", "20000", "mixed"])
def test_conv2d_gather_int_int8_lanes_never_overflow(fill, mult):
    """int8 weights at either end of their range on a full 64-channel input: an interior 3x3
    output sums 576 events (576 x 127 = 73152 and 576 x -128 = -73728 do not fit an int16), so
    the lanes must be flushed into int32 in time, also around multiplicities of 255-257 (the
    budget's edge) and far past it (straight to int32), in all three block kinds (128, 64,
    partial: Cout = 198)."""
    from eventformer.kernels import conv2d_gather_int

    h = w = 4
    cin, cout, k = 64, 198, 3
    rng = np.random.default_rng(abs(fill))
    if mult == "mixed":
        x = rng.choice([1, 2, 255, 256, 257], size=(cin, h, w)).astype(np.int64)
    else:
        x = np.full((cin, h, w), int(mult), np.int64)
    weight = np.full((cout, cin, k, k), fill, np.int8)
    weight[:, :, 0, 0] = rng.integers(-128, 128, size=(cout, cin))  # not all alike
    bias = rng.integers(-1000, 1000, size=cout).astype(np.int32)
    idx, cnt = twin.chw_to_events(x)
    expect = twin.conv2d(x, weight.astype(np.int64), 1, 1, bias.astype(np.int64))
    assert np.abs(expect).max() > 2 * 32767  # far beyond an int16 lane
    out = np.empty(h * w * cout, np.int32)
    counters = np.zeros(C.N_COUNTERS, np.int64)
    conv2d_gather_int(idx, cnt, h, w, cin, twin.conv_weight_dense_rows(weight), bias, k, 0, h,
                      out, counters, False)
    np.testing.assert_array_equal(out.reshape(h, w, cout).transpose(2, 0, 1), expect)
    assert counters[C.AC] == twin.conv2d_ops(x, k, k, cout, 1, 1, False)


@pytest.mark.parametrize("wdtype, add", [(np.int8, "vpaddw"), (np.int16, "vpaddd")])
def test_conv2d_gather_int_vectorises(wdtype, add):
    """The integer gather's channel-block adds compile to ymm/zmm vector adds: int8 weights as
    int16 lanes (``vpaddw``), int16 weights as int32 (``vpaddd``) (PERF-NOTES: a 32-channel
    block was once unrolled into scalar adds)."""
    import re

    from numba import njit
    from numba.core import config

    from eventformer.kernels.gather import _GATHERS

    if config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT=1: nothing is compiled")
    import llvmlite.binding as llvm

    if "+avx" not in llvm.get_host_cpu_features().flatten().split(","):
        pytest.skip("the CPU has no AVX")
    from eventformer.jit import OPTIONS

    # a fresh, uncached compile of the kernel conv2d_gather_int calls for these weights
    fresh = njit(**{**OPTIONS, "cache": False})(_GATHERS[wdtype == np.int8, "whole"].py_func)
    fresh(np.array([0, 5], np.int32), np.ones(2, np.int32), 2, 2, 2, np.zeros((18, 64), wdtype),
          np.zeros(64, np.int32), 3, 0, 2, np.zeros(4 * 64, np.int32),
          np.zeros(C.N_COUNTERS, np.int64), False)
    asm = fresh.inspect_asm(fresh.signatures[0])
    assert re.search(rf"{add}\s[^\n]*%[yz]mm", asm), (
        f"conv2d_gather_int's {np.dtype(wdtype).name}-weight adds scalarised")


def test_conv_twin_agrees_with_torch():
    """The twin itself against torch's conv2d (exact on the grid), so the twin is no tautology."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    for k, s, p, h, w in [(3, 1, 1, 5, 7), (3, 2, 1, 6, 5), (1, 2, 0, 4, 3), (3, 2, 0, 7, 4)]:
        x = rng.integers(0, 4, size=(3, h, w))
        weight = grid(rng, (4, 3, k, k), np.float64)
        bias = grid(rng, (4,), np.float64)
        ref = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64))[None],
                                         torch.from_numpy(weight), torch.from_numpy(bias),
                                         stride=s, padding=p)[0].numpy()
        np.testing.assert_array_equal(twin.conv2d(x, weight, s, p, bias), ref)
        # fan-out: ac of an all-ones map = number of (output, tap) pairs that land in the input
        ones = np.ones((1, h, w), np.int64)
        valid = torch.nn.functional.conv2d(torch.ones(1, 1, h, w, dtype=torch.float64),
                                           torch.ones(1, 1, k, k, dtype=torch.float64),
                                           stride=s, padding=p).sum().item()
        assert twin.conv2d_ops(ones, k, k, 1, s, p, weighted=False) == int(valid)


# ---------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(n=st.integers(1, 9), cin=st.integers(1, 8), cout=st.integers(1, 6), dtype=DTYPES,
       mode=MODES, max_mult=st.sampled_from([1, 1, 4]), weighted=st.booleans(), seed=SEEDS)
def test_linear_scatter_matches_dense(n, cin, cout, dtype, mode, max_mult, weighted, seed):
    rng = np.random.default_rng(seed)
    x = count_map(rng, (n, cin), mode, max_mult, border_axes=(0, 1))
    idx, cnt = twin.tokens_to_events(x)
    weight = grid(rng, (cin, cout), dtype)
    bias = grid(rng, (cout,), dtype)
    out = np.tile(bias, n)
    counters = counter_start(rng)
    start = counters.copy()
    linear_scatter(idx, cnt, cin, weight, out, counters, weighted)
    np.testing.assert_array_equal(out.reshape(n, cout), twin.linear(x, weight) + bias)
    np.testing.assert_array_equal(out.reshape(n, cout), x.astype(dtype) @ weight + bias)
    exp = start.copy()
    exp[C.MAC if weighted else C.AC] += twin.linear_ops(cnt, cout, weighted)
    exp[C.INPUT_EVENTS] += idx.shape[0]
    np.testing.assert_array_equal(counters, exp)
    # the dense fallback's counters are the scatter's
    c2 = start.copy()
    linear_event_ops(cnt, cout, c2, weighted)
    np.testing.assert_array_equal(c2, counters)


# ---------------------------------------------------------------------------------------------
# LIF
# ---------------------------------------------------------------------------------------------


def _currents(rng, n, dtype, theta, tau):
    """Arbitrary floats, grid values, and values that land H exactly on theta."""
    kind = rng.integers(0, 4, size=n)
    arb = rng.uniform(-1.0, 3.0, size=n).astype(dtype)
    on_grid = (rng.integers(-512, 1024, size=n) / 256).astype(dtype)
    at_theta = np.full(n, theta, dtype)
    from_rest = np.full(n, theta * tau, dtype)  # V = 0: H = theta*tau/tau
    return np.choose(kind, [arb, on_grid, at_theta, from_rest]).astype(dtype)


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@SETTINGS
@given(n=st.integers(0, 40), steps=st.integers(1, 6), dtype=DTYPES,
       tau=st.sampled_from([2.0, 3.0]), theta=st.sampled_from([1.0, 0.5]),
       hard_reset=st.booleans(), decay_input=st.booleans(),
       v_reset=st.sampled_from([0.0, 0.0, -0.25]), seed=SEEDS)
def test_lif_step_bit_identical(n, steps, dtype, tau, theta, hard_reset, decay_input, v_reset,
                                seed):
    rng = np.random.default_rng(seed)
    params = lif_params(tau, theta, v_reset if hard_reset else None, dtype)
    assert params.dtype == dtype
    tau_inv = dtype(1.0) / dtype(tau)
    v = np.zeros(n, dtype)
    v_twin = v.copy()
    counters = counter_start(rng)
    start = counters.copy()
    for _ in range(steps):
        x = _currents(rng, n, dtype, theta, tau)
        spikes = np.full(n, -7, np.int32)
        count = lif_step(v, x, params, hard_reset, decay_input, spikes, counters)
        v_twin, s_twin, _ = twin.lif(v_twin, x, tau_inv, theta, v_reset if hard_reset else 0.0,
                                     hard_reset, decay_input)
        assert v.dtype == dtype
        np.testing.assert_array_equal(_bits(v), _bits(v_twin))
        np.testing.assert_array_equal(spikes[:count], np.flatnonzero(s_twin))
        assert np.all(np.diff(spikes[:count]) > 0)
    exp = start.copy()
    exp[C.NEURON_UPDATES] += n * steps
    np.testing.assert_array_equal(counters, exp)


@SETTINGS
@given(c=st.integers(1, 12), reps=st.integers(0, 8), steps=st.integers(1, 6), dtype=DTYPES,
       tau=st.sampled_from([2.0, 3.0]), theta=st.sampled_from([1.0, 0.5]),
       hard_reset=st.booleans(), decay_input=st.booleans(),
       v_reset=st.sampled_from([0.0, 0.0, -0.25]), seed=SEEDS)
def test_lif_periodic_current_bit_identical(c, reps, steps, dtype, tau, theta, hard_reset,
                                            decay_input, v_reset, seed):
    """A current given as one period [C] of a current repeating over v.size = C x reps neurons
    (a step without input: the bias alone) gives what the dense current gives, bit for bit, in
    lif_step, lif_step_flags and lif_quiet_step, and lif_quiet_step says when the step was still."""
    rng = np.random.default_rng(seed)
    n = c * reps
    vr = v_reset if hard_reset else None
    params = lif_params(tau, theta, vr, dtype)
    tau_inv = dtype(1.0) / dtype(tau)
    vs = [np.zeros(n, dtype) for _ in range(4)]
    v_twin = np.zeros(n, dtype)
    counters = [counter_start(rng) for _ in range(4)]
    starts = [k.copy() for k in counters]
    period = _currents(rng, c, dtype, theta, tau)
    for t in range(steps):
        if t % 2:  # sometimes the same period again (as quiet steps repeat), sometimes new
            period = _currents(rng, c, dtype, theta, tau)
        v_twin, s_twin, _, still_twin = twin.lif_periodic(v_twin, period, tau_inv, theta,
                                                          v_reset, hard_reset, decay_input)
        want = np.flatnonzero(s_twin)
        spikes = np.full(n, -7, np.int32)
        count = lif_step(vs[0], period, params, hard_reset, decay_input, spikes, counters[0])
        np.testing.assert_array_equal(spikes[:count], want)
        flags = np.full(n, 9, np.uint8)
        count = lif_step_flags(vs[1], period, params, hard_reset, decay_input, flags,
                               counters[1])
        assert count == want.size
        np.testing.assert_array_equal(flags, s_twin.astype(np.uint8))
        for k, out in ((2, np.full(n, -7, np.int32)), (3, np.empty(0, np.int32))):
            flags = np.full(n, 9, np.uint8)
            count, still = lif_quiet_step(vs[k], period, params, hard_reset, decay_input, flags,
                                          out, counters[k])
            assert count == want.size and still == still_twin
            np.testing.assert_array_equal(flags, s_twin.astype(np.uint8))
            if out.size:
                np.testing.assert_array_equal(out[:count], want)
        for v in vs:
            np.testing.assert_array_equal(_bits(v), _bits(v_twin))
    for k, start in zip(counters, starts):
        exp = start.copy()
        exp[C.NEURON_UPDATES] += n * steps
        np.testing.assert_array_equal(k, exp)


@SETTINGS
@given(c=st.integers(1, 40), reps=st.integers(1, 6), dtype=DTYPES, tau=st.sampled_from([2.0, 3.0]),
       hard_reset=st.booleans(), decay_input=st.booleans(), fire=st.booleans(), seed=SEEDS)
def test_lif_quiet_step_still_is_a_fixed_point(c, reps, dtype, tau, hard_reset, decay_input,
                                               fire, seed):
    """Under a constant current the membranes settle (below threshold) and lif_quiet_step says
    so; from then on a step changes no bit and fires nothing, which is what lets a layer skip
    it. A neuron that keeps firing keeps the population from ever being still."""
    rng = np.random.default_rng(seed)
    theta = 1.0
    n = c * reps
    params = lif_params(tau, theta, 0.0 if hard_reset else None, dtype)
    tau_inv = dtype(1.0) / dtype(tau)
    # fixed points: v = x (decay_input) or v = tau x (not): keep them below theta
    top = theta if decay_input else theta / tau
    period = rng.uniform(-1.0, 0.9 * top, size=c).astype(dtype)
    if fire:
        period[rng.integers(c)] = dtype(2.0 * top)  # fires again and again
    v = rng.uniform(-1.0, 1.0, size=n).astype(dtype)
    v_twin = v.copy()
    counters = np.zeros(C.N_COUNTERS, np.int64)
    flags = np.empty(n, np.uint8)
    spikes = np.empty(n, np.int32)
    was_still = False
    for _ in range(200):
        count, still = lif_quiet_step(v, period, params, hard_reset, decay_input, flags, spikes,
                                      counters)
        v_twin, s_twin, _, still_twin = twin.lif_periodic(v_twin, period, tau_inv, theta, 0.0,
                                                          hard_reset, decay_input)
        assert still == still_twin and count == s_twin.sum()
        np.testing.assert_array_equal(_bits(v), _bits(v_twin))
        if was_still:  # a still step is followed by another, identical to the bit
            assert still and count == 0
            np.testing.assert_array_equal(_bits(v), _bits(before))
        if still:
            if was_still:
                break
            was_still = True
            before = v.copy()
    assert was_still != fire


def test_lif_threshold_is_inclusive():
    for dtype in (np.float32, np.float64):
        params = lif_params(2.0, 1.0, 0.0, dtype)
        v = np.zeros(3, dtype)
        x = np.array([2.0, np.nextafter(dtype(2.0), dtype(0.0)), 4.0], dtype)  # H = 1, < 1, 2
        spikes = np.empty(3, np.int32)
        count = lif_step(v, x, params, True, True, spikes, np.zeros(C.N_COUNTERS, np.int64))
        assert list(spikes[:count]) == [0, 2]
        assert v[0] == 0 and v[2] == 0 and 0 < v[1] < 1


def test_lif_twin_agrees_with_spikingjelly_formula_in_torch():
    """The twin's float32 charge H = V + (X - V) * (1/tau) against the same ops in torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    v = np.zeros(500, np.float32)
    tv = torch.zeros(500, dtype=torch.float32)
    for _ in range(5):
        x = rng.uniform(-1, 3, size=500).astype(np.float32)
        v, s, _ = twin.lif(v, x, np.float32(0.5), 1.0, 0.0, True, True)
        h = tv + (torch.from_numpy(x) - tv) * (1.0 / 2.0)
        ts = h >= 1.0
        tv = torch.where(ts, torch.zeros_like(h), h)
        np.testing.assert_array_equal(s, ts.numpy())
        np.testing.assert_array_equal(_bits(v), _bits(tv.numpy()))


# ---------------------------------------------------------------------------------------------
# max-pool, merge, channel sums, scatter_dense
# ---------------------------------------------------------------------------------------------


def test_maxpool_twin_agrees_with_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    for k, s, p in [(3, 2, 1), (2, 2, 0)]:
        for h, w in [(2, 3), (5, 8), (9, 4)]:
            x = (rng.random((3, h, w)) < 0.3).astype(np.float64)
            ref = torch.nn.functional.max_pool2d(torch.from_numpy(x)[None], k, s, p)[0].numpy()
            np.testing.assert_array_equal(twin.maxpool2d(x, k, s, p), ref)


def _random_events(rng, size, density, max_mult):
    active = np.flatnonzero(rng.random(size) < density).astype(np.int32)
    return active, rng.integers(1, max_mult + 1, size=active.shape[0]).astype(np.int32)


@SETTINGS
@given(size=st.integers(1, 80), da=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       db=st.sampled_from([0.0, 0.1, 0.5, 1.0]), max_mult=st.sampled_from([1, 5]), seed=SEEDS)
def test_merge_add_matches_dense_sum(size, da, db, max_mult, seed):
    rng = np.random.default_rng(seed)
    ia, ca = _random_events(rng, size, da, max_mult)
    ib, cb = _random_events(rng, size, db, max_mult)
    oi, oc = merge_add(ia, ca, ib, cb)
    ei, ec = twin.merge_add(size, ia, ca, ib, cb)
    assert oi.dtype == np.int32 and oc.dtype == np.int32
    np.testing.assert_array_equal(oi, ei)
    np.testing.assert_array_equal(oc, ec)
    assert np.all(np.diff(oi) > 0)
    assert np.all(oc > 0)


@SETTINGS
@given(n=st.integers(1, 12), dim=st.integers(1, 10), mode=MODES, max_mult=st.sampled_from([1, 6]),
       sums_dtype=st.sampled_from([np.int64, np.float64, np.float32]), seed=SEEDS)
def test_channel_sums_matches_column_sums(n, dim, mode, max_mult, sums_dtype, seed):
    rng = np.random.default_rng(seed)
    x = count_map(rng, (n, dim), mode, max_mult, border_axes=(0, 1))
    idx, cnt = twin.tokens_to_events(x)
    start = rng.integers(0, 50, size=dim).astype(sums_dtype)
    sums = start.copy()
    channel_sums(idx, cnt, dim, sums)
    np.testing.assert_array_equal(sums, start + twin.channel_sums(x).astype(sums_dtype))


@SETTINGS
@given(size=st.integers(1, 60), density=st.sampled_from([0.0, 0.3, 1.0]),
       dtype=st.sampled_from([np.float32, np.float64, np.int32]), seed=SEEDS)
def test_scatter_dense(size, density, dtype, seed):
    rng = np.random.default_rng(seed)
    idx, cnt = _random_events(rng, size, density, 4)
    dense = np.full(size, 99, dtype)
    scatter_dense(idx, cnt, dense)
    expect = twin.scatter_dense(size, idx, cnt, dtype)
    np.testing.assert_array_equal(dense, expect)


# ---------------------------------------------------------------------------------------------
# spiking self-attention
# ---------------------------------------------------------------------------------------------

DENSITIES = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))


@st.composite
def ssa_cases(draw):
    dim = draw(st.sampled_from([4, 16, 32]))
    heads = draw(st.sampled_from([h for h in (1, 2, 4, 8, 16) if dim % h == 0]))
    return dict(
        n=draw(st.sampled_from([1, 4, 9, 64])), dim=dim, heads=heads,
        dq=draw(DENSITIES), dk=draw(DENSITIES), dv=draw(DENSITIES),
        scale=draw(st.sampled_from([0.25, 0.125])), dtype=draw(DTYPES), seed=draw(SEEDS),
    )


@SETTINGS
@given(ssa_cases())
def test_ssa_step_all_orders_match_twin(case):
    rng = np.random.default_rng(case["seed"])
    n, dim, heads, dt = case["n"], case["dim"], case["heads"], case["dtype"]
    q = (rng.random((n, dim)) < case["dq"]).astype(np.int64)
    k = (rng.random((n, dim)) < case["dk"]).astype(np.int64)
    v = (rng.random((n, dim)) < case["dv"]).astype(np.int64)
    qi, _ = twin.tokens_to_events(q)
    ki, _ = twin.tokens_to_events(k)
    vi, _ = twin.tokens_to_events(v)
    expect, maps = twin.ssa(q, k, v, heads, case["scale"], dt)
    nonzero_per_head = np.count_nonzero(maps.reshape(heads, -1), axis=1)
    scale_arr = np.array([case["scale"]], dt)
    for order in (0, 1, 2):
        out = np.full(n * dim, np.nan, dt)  # fully overwritten
        counters = counter_start(rng)
        start = counters.copy()
        used = ssa_step(qi, ki, vi, n, dim, heads, scale_arr, out, counters, order)
        assert out.dtype == dt
        np.testing.assert_array_equal(out.reshape(n, dim), expect, err_msg=f"order {order}")
        used = np.asarray(used)
        assert used.shape == (heads,)
        assert set(used.tolist()) <= {1, 2}
        if order == 1:
            assert np.all(used == 1)
        if order == 2:
            assert np.all(used == 2)
        entries = int(nonzero_per_head[used == 1].sum())
        if order == 1:
            assert entries == np.count_nonzero(maps)
        exp = start.copy()
        exp[C.ATTN_ENTRIES] += entries
        exp[C.ATTN_NONZERO] += entries
        exp[C.AC] += twin.ssa_ops(q, k, v, heads, used)
        exp[C.INPUT_EVENTS] += qi.shape[0] + ki.shape[0] + vi.shape[0]
        np.testing.assert_array_equal(counters, exp, err_msg=f"order {order}")


def test_ssa_twin_agrees_with_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    n, dim, heads = 9, 16, 4
    q, k, v = ((rng.random((n, dim)) < 0.4).astype(np.float32) for _ in range(3))
    expect, _ = twin.ssa(q, k, v, heads, 0.125, np.float32)
    tq, tk, tv = (torch.from_numpy(a).reshape(n, heads, dim // heads).transpose(0, 1)
                  for a in (q, k, v))
    ref = ((tq @ tk.transpose(-2, -1)) @ tv * 0.125).transpose(0, 1).reshape(n, dim).numpy()
    np.testing.assert_array_equal(expect, ref)


# ---------------------------------------------------------------------------------------------
# the attention variants (SPEC §4): SSA_Bin, NSAD, TASA, SAFormer
# ---------------------------------------------------------------------------------------------


def _qkv(case, rng):
    n, dim = case["n"], case["dim"]
    q, k, v = ((rng.random((n, dim)) < case[d]).astype(np.int64) for d in ("dq", "dk", "dv"))
    return q, k, v, *(twin.tokens_to_events(m)[0] for m in (q, k, v))


def _mapped_counters(start, ops, slot, qi, ki, vi):
    exp = start.copy()
    exp[C.AC] += ops["ac"]
    exp[C.ATTN_ENTRIES] += ops["entries"]
    exp[slot] += ops["entries"]
    exp[C.ATTN_NONZERO] += ops["nonzero"]
    exp[C.INPUT_EVENTS] += qi.shape[0] + ki.shape[0] + vi.shape[0]
    return exp


@SETTINGS
@given(ssa_cases(), st.integers(0, 2**32 - 1))
def test_ssa_bin_step_matches_twin(case, seed2):
    rng = np.random.default_rng(case["seed"])
    n, dim, heads, dt = case["n"], case["dim"], case["heads"], case["dtype"]
    d = dim // heads
    q, k, v, qi, ki, vi = _qkv(case, rng)
    r2 = np.random.default_rng(seed2)
    delta = r2.integers(0, d + 1, size=heads).astype(np.int32)  # d: nothing can pass
    vbar = grid(r2, (dim,), dt)
    expect, binary = twin.ssa_bin(q, k, v, heads, delta, vbar, case["scale"], dt)
    out = np.full(n * dim, np.nan, dt)  # fully overwritten
    counters = counter_start(rng)
    start = counters.copy()
    ssa_bin_step(qi, ki, vi, n, dim, heads, delta, vbar, np.array([case["scale"]], dt), out,
                 counters)
    assert out.dtype == dt
    np.testing.assert_array_equal(out.reshape(n, dim), expect)
    ops = twin.mapped_attention_ops(q, k, v, heads, binary)
    np.testing.assert_array_equal(counters, _mapped_counters(start, ops, C.COMPARE, qi, ki, vi))
    if qi.shape[0] == 0 or ki.shape[0] == 0:  # nothing pairs: Y = -vbar * scale, nothing counted
        assert ops["entries"] == ops["ac"] == 0
        np.testing.assert_array_equal(out.reshape(n, dim)[0], (dt(0) - vbar) * dt(case["scale"]))


@SETTINGS
@given(ssa_cases(), st.integers(0, 2**32 - 1))
def test_nsad_step_matches_twin(case, seed2):
    rng = np.random.default_rng(case["seed"])
    n, dim, heads, dt = case["n"], case["dim"], case["heads"], case["dtype"]
    d = dim // heads
    q, k, v, qi, ki, vi = _qkv(case, rng)
    table = np.random.default_rng(seed2).integers(-3, 21, size=(heads, d + 1)).astype(np.int32)
    table[:, 0] = 0
    table[:, 1] = 0 if seed2 % 2 else table[:, 1]  # denoised single-channel pairs, sometimes
    expect, mapped = twin.nsad(q, k, v, heads, table, case["scale"], dt)
    out = np.full(n * dim, np.nan, dt)
    counters = counter_start(rng)
    start = counters.copy()
    nsad_step(qi, ki, vi, n, dim, heads, table, np.array([case["scale"]], dt), out, counters)
    assert out.dtype == dt
    np.testing.assert_array_equal(out.reshape(n, dim), expect)
    ops = twin.mapped_attention_ops(q, k, v, heads, mapped)
    np.testing.assert_array_equal(counters, _mapped_counters(start, ops, C.LUT, qi, ki, vi))
    # the identity table above 0 is SSA: the same Y and, per the multiplicity convention, ac
    ident = np.tile(np.arange(d + 1, dtype=np.int32), (heads, 1))
    out2 = np.full(n * dim, np.nan, dt)
    c2 = np.zeros(C.N_COUNTERS, np.int64)
    nsad_step(qi, ki, vi, n, dim, heads, ident, np.array([case["scale"]], dt), out2, c2)
    out3 = np.full(n * dim, np.nan, dt)
    c3 = np.zeros(C.N_COUNTERS, np.int64)
    ssa_step(qi, ki, vi, n, dim, heads, np.array([case["scale"]], dt), out3, c3, 1)
    np.testing.assert_array_equal(out2, out3)
    assert c2[C.AC] == c3[C.AC] and c2[C.ATTN_ENTRIES] == c3[C.ATTN_ENTRIES]


@SETTINGS
@given(steps=st.integers(1, 9), size=st.integers(1, 24), taw=st.integers(1, 4),
       tau=st.integers(0, 3), dtype=DTYPES, seed=SEEDS)
def test_tasa_current_matches_twin(steps, size, taw, tau, dtype, seed):
    """Driven over a sample the way a layer drives it (a ring of the last T_AW - 1 currents,
    steps without input left out), arbitrary float currents, bit for bit against the twin."""
    rng = np.random.default_rng(seed)
    live = rng.random(steps) < 0.7
    currents = np.where(live[:, None], rng.uniform(-2, 2, (steps, size)), 0).astype(dtype)
    reps = int(rng.integers(1, 4))
    period = rng.uniform(-1, 1, size).astype(dtype)
    bias_full = np.tile(period, reps)
    currents = np.tile(currents, (1, reps))
    expect, shifts = twin.tasa(currents, tau, taw, bias_full, dtype)
    ring = np.full((max(taw - 1, 1), size * reps), np.nan, dtype)
    ring_live = np.zeros(max(taw - 1, 1), bool)
    counters = counter_start(rng)
    start = counters.copy()
    for t in range(steps):
        slots, factors = [], []
        for m in range(1, taw):
            slot = (t - m) % (taw - 1)
            if t - m >= 0 and ring_live[slot]:
                slots.append(slot)
                factors.append(2.0 ** (-tau * m))
        out = np.full(size * reps, np.nan, dtype)
        cur = currents[t].copy()
        same = t % 2 == 0  # in place, sometimes
        tasa_current(cur, ring, np.array(slots, np.int64), np.array(factors, dtype), period,
                     cur if same else out, counters)
        got = cur if same else out
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.view(np.uint8), expect[t].view(np.uint8))
        if taw > 1:
            ring[t % (taw - 1)] = currents[t]
            ring_live[t % (taw - 1)] = live[t]
    exp = start.copy()
    exp[C.SHIFT] += shifts
    np.testing.assert_array_equal(counters, exp)


@SETTINGS
@given(h=st.integers(1, 7), w=st.integers(1, 7), dim=st.integers(1, 5),
       k=st.sampled_from([1, 3, 3, 5]), dtype=DTYPES, mode=MODES, seed=SEEDS)
def test_depthwise3x3_scatter_matches_twin(h, w, dim, k, dtype, mode, seed):
    rng = np.random.default_rng(seed)
    x = count_map(rng, (dim, h, w), mode, 1, border_axes=(1, 2))
    idx, _ = twin.chw_to_events(x)  # HWC = [token, channel], token y * w + x
    weight = grid(rng, (dim, k, k), dtype)
    bias = grid(rng, (dim,), dtype)
    out = np.tile(bias, h * w)
    counters = counter_start(rng)
    start = counters.copy()
    depthwise3x3_scatter(idx, h, w, dim, weight, out, counters)
    assert out.dtype == dtype
    got = out.reshape(h, w, dim).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, twin.depthwise_conv(x, weight, bias))
    exp = start.copy()
    exp[C.AC] += twin.depthwise_ops(x, k, k)
    exp[C.INPUT_EVENTS] += idx.shape[0]
    np.testing.assert_array_equal(counters, exp)


@SETTINGS
@given(side=st.sampled_from([1, 2, 3, 4, 8]), dim=st.sampled_from([1, 3, 8]),
       rows=st.integers(1, 6), dq=DENSITIES, dk=DENSITIES, scale=st.sampled_from([0.25, 0.125]),
       dtype=DTYPES, seed=SEEDS)
def test_saformer_step_matches_twin(side, dim, rows, dq, dk, scale, dtype, seed):
    n = side * side
    # float32 is compared exactly where the pooled averages are (power-of-two row sizes)
    widths = {-((-(r + 1) * n) // rows) - (r * n) // rows for r in range(rows)}
    assume(dtype == np.float64 or all(wd & (wd - 1) == 0 for wd in widths))
    rng = np.random.default_rng(seed)
    q = (rng.random((n, dim)) < dq).astype(np.int64)
    k = (rng.random((n, dim)) < dk).astype(np.int64)
    qi, _ = twin.tokens_to_events(q)
    ki, _ = twin.tokens_to_events(k)
    weight = grid(rng, (dim, 3, 3), dtype)
    bias = grid(rng, (dim,), dtype)
    out = np.full(n * dim, np.nan, dtype)
    counters = counter_start(rng)
    start = counters.copy()
    saformer_step(qi, ki, n, dim, side, rows, weight, bias, np.array([scale], dtype), out,
                  counters)
    assert out.dtype == dtype
    expect = twin.saformer(q, k, side, rows, weight, bias, scale, dtype)
    np.testing.assert_array_equal(out.reshape(n, dim), expect)
    ac, mac = twin.saformer_ops(q, k, side, rows, 3, 3)
    exp = start.copy()
    exp[C.AC] += ac
    exp[C.MAC] += mac
    exp[C.INPUT_EVENTS] += qi.shape[0] + ki.shape[0]
    np.testing.assert_array_equal(counters, exp)


def test_variant_twins_agree_with_torch():
    """The pooling, depthwise-conv and map twins against torch's own operators."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    for n, rows in [(64, 4), (9, 4), (16, 3), (3, 5), (7, 1)]:
        x = (rng.random((n, 6)) < 0.4).astype(np.float64)
        ref = F.adaptive_avg_pool1d(torch.from_numpy(x.T)[None], rows)[0].numpy().T
        np.testing.assert_allclose(twin.adaptive_avg_pool_tokens(x, rows), ref, rtol=0,
                                   atol=1e-15)
    for h, w, k in [(8, 8, 3), (3, 5, 3), (1, 1, 3), (4, 6, 5)]:
        x = (rng.random((4, h, w)) < 0.5).astype(np.float64)
        weight = grid(rng, (4, k, k), np.float64)
        bias = grid(rng, (4,), np.float64)
        ref = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight)[:, None],
                       torch.from_numpy(bias), padding=k // 2, groups=4)[0].numpy()
        np.testing.assert_array_equal(twin.depthwise_conv(x, weight, bias), ref)
    q, k, v = ((rng.random((9, 16)) < 0.5).astype(np.float64) for _ in range(3))
    tq, tk, tv = (torch.from_numpy(a).reshape(9, 4, 4).transpose(0, 1) for a in (q, k, v))
    counts = tq @ tk.transpose(-2, -1)
    vbar = grid(rng, (16,), np.float64)
    delta = np.array([0, 1, 2, 0])
    b = (counts > torch.from_numpy(delta)[:, None, None]).double()
    ref = ((b @ tv).transpose(0, 1).reshape(9, 16) - torch.from_numpy(vbar)) * 0.25
    np.testing.assert_array_equal(twin.ssa_bin(q, k, v, 4, delta, vbar, 0.25, np.float64)[0],
                                  ref.numpy())
    table = rng.integers(-3, 9, size=(4, 5))
    table[:, 0] = 0
    a = torch.gather(torch.from_numpy(table)[:, None, :].expand(4, 9, 5), 2,
                     counts.long()).double()
    ref = ((a @ tv) * 0.125).transpose(0, 1).reshape(9, 16)
    np.testing.assert_array_equal(twin.nsad(q, k, v, 4, table, 0.125, np.float64)[0], ref.numpy())


# ---------------------------------------------------------------------------------------------
# no hidden state; compiled with cache=True
# ---------------------------------------------------------------------------------------------


def test_kernels_are_pure_functions_of_their_inputs():
    rng = np.random.default_rng(1)
    cin, cout, h, w, k = 3, 4, 6, 5, 3
    x = count_map(rng, (cin, h, w), "random", 3, border_axes=(1, 2))
    idx, cnt = twin.chw_to_events(x)
    rows = twin.conv_weight_scatter_rows(grid(rng, (cout, cin, k, k), np.float32))
    outs = []
    for _ in range(2):
        out = np.zeros(3 * 3 * cout, np.float32)
        counters = np.zeros(C.N_COUNTERS, np.int64)
        conv2d_scatter(idx, cnt, w, cin, rows, k, k, 2, 1, 3, 3, 0, 3, out, counters, False)
        outs.append((out, counters))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])

    flags = (x > 0).transpose(1, 2, 0).reshape(-1).astype(np.uint8)  # HWC 0/1 map
    pooled = [np.empty(3 * 3 * cin, np.int32) for _ in range(2)]
    na = maxpool_flags(flags, h, w, cin, 3, 2, 1, 3, 3, 0, 3, pooled[0])
    nb = maxpool_flags(flags, h, w, cin, 3, 2, 1, 3, 3, 0, 3, pooled[1])
    np.testing.assert_array_equal(pooled[0][:na], pooled[1][:nb])

    q, kk, v = ((rng.random((9, 16)) < 0.5).astype(np.int64) for _ in range(3))
    qi, ki, vi = (twin.tokens_to_events(m)[0] for m in (q, kk, v))
    res = []
    for _ in range(2):
        out = np.zeros(9 * 16, np.float64)
        counters = np.zeros(C.N_COUNTERS, np.int64)
        used = ssa_step(qi, ki, vi, 9, 16, 2, np.array([0.25]), out, counters, 0)
        res.append((out, counters, np.asarray(used)))
    for r0, r1 in zip(res[0], res[1]):
        np.testing.assert_array_equal(r0, r1)

    params = lif_params(2.0, 1.0, 0.0, np.float32)
    cur = rng.uniform(0, 3, size=20).astype(np.float32)
    runs = []
    for _ in range(2):
        vm = np.zeros(20, np.float32)
        sp = np.empty(20, np.int32)
        cnt_ = lif_step(vm, cur, params, True, True, sp, np.zeros(C.N_COUNTERS, np.int64))
        runs.append((vm, sp[:cnt_].copy()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("kernel", [
    scatter_taps, densify_taps, im2col_padded, linear_scatter, linear_event_ops,
    _maxpool_kernel(True), _maxpool_kernel(False), merge_add, channel_sums, scatter_dense,
    ssa_step, ssa_bin_step, nsad_step, tasa_current, depthwise3x3_scatter, saformer_step,
], ids=lambda f: f.py_func.__name__)
def test_kernel_compiled_with_cache(kernel):
    assert not isinstance(kernel._cache, NullCache)
    assert kernel.targetoptions.get("nogil") is True


@pytest.mark.parametrize("rules", [lif_kernels, lif_fixed_kernels], ids=lambda f: f.__name__)
@pytest.mark.parametrize("hard_reset", [True, False])
@pytest.mark.parametrize("decay_input", [True, False])
def test_lif_rule_kernels_compiled_with_cache(rules, hard_reset, decay_input):
    """Each LIF rule's kernels (closures over the arithmetic's and the rule's bools, and in
    fixed point the decay shift) are cached, and their cache key can hit in another process:
    it holds the closure cells, which are plain bools and a plain int."""
    fixed = rules is lif_fixed_kernels
    shift = 3 if fixed and decay_input else -1  # only there a constant of the kernels
    made = rules(hard_reset, decay_input, 3) if fixed else rules(hard_reset, decay_input)
    for kernel in [made.step_flags]:  # the rule's one kernel (step and quiet are made of it)
        assert not isinstance(kernel._cache, NullCache)
        assert kernel.targetoptions.get("nogil") is True
        cells = dict(zip(kernel.py_func.__code__.co_freevars,
                         (c.cell_contents for c in kernel.py_func.__closure__)))
        assert cells == {"fixed": fixed, "hard_reset": hard_reset,
                         "decay_input": decay_input, "shift": shift, "constant": shift >= 0}
        assert all(type(c) is (int if k == "shift" else bool) for k, c in cells.items())
    if fixed:
        assert rules(np.bool_(hard_reset), int(decay_input), np.int64(3)) is made
        # a kernel per shift where it is a constant, one for every shift elsewhere
        assert (rules(hard_reset, decay_input, 1) is made) == (not decay_input)
    else:
        assert rules(np.bool_(hard_reset), int(decay_input)) is made


def test_lif_rule_kernels_load_from_the_cache_in_a_new_process(tmp_path):
    """A rule's kernels compiled in one process load from Numba's cache in the next (the
    closure's key must come out the same), and runtime.kernels_cached says so for that
    arithmetic only: False on the empty cache, True after a run, still False for another."""
    import os
    import subprocess
    import sys

    from numba.core import config

    if config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT=1: nothing is compiled")
    script = """
import sys
import numpy as np
from eventformer.kernels import lif_kernels, lif_params
from eventformer.runtime import kernels_cached
rule = lif_kernels(False, True)
print(kernels_cached("float32"), kernels_cached("int8"))
v = np.zeros(6, np.float32)
rule.step(v, np.ones(3, np.float32), lif_params(2.0, 1.0, None, np.float32), 0,
          np.empty(6, np.int32), np.zeros(16, np.int64))
print(len(rule.step_flags.stats.cache_hits), len(rule.step_flags.stats.cache_misses))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["False", "False", "0", "1"]  # compiled (a miss), then saved
    assert runs[1] == ["True", "False", "1", "0"]  # loaded (a hit), nothing compiled


@SETTINGS
@given(pool=st.sampled_from([(3, 2, 1), (2, 2, 0), (3, 1, 1)]),
       c=st.sampled_from([1, 2, 3, 5, 8, 16, 24]),  # multiples of 8 pool eight channels a word
       h=st.integers(1, 9), w=st.integers(1, 9), density=st.sampled_from([0.0, 0.2, 1.0]),
       seed=st.integers(0, 2**31))
def test_maxpool_flags_matches_twin(pool, c, h, w, density, seed):
    from eventformer.kernels import maxpool_flags

    k, s, p = pool
    out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    assume(out_h > 0 and out_w > 0)
    rng = np.random.default_rng(seed)
    flags = (rng.random(h * w * c) < density).astype(np.uint8)
    out = np.full(out_h * out_w * c, -1, np.int32)
    n = maxpool_flags(flags, h, w, c, k, s, p, out_h, out_w, 0, out_h, out)
    chw = flags.reshape(h, w, c).transpose(2, 0, 1).astype(np.float64)
    want, _ = twin.chw_to_events(twin.maxpool2d(chw, k, s, p))
    np.testing.assert_array_equal(out[:n], want)
    # bands of pooled rows, in order, give the whole map's events
    cut = int(rng.integers(0, out_h + 1))
    bands = []
    for r0, r1 in ((0, cut), (cut, out_h)):
        part = np.full(max(r1 - r0, 0) * out_w * c, -1, np.int32)
        m = maxpool_flags(flags, h, w, c, k, s, p, out_h, out_w, r0, r1, part)
        bands.append(part[:m])
    np.testing.assert_array_equal(np.concatenate(bands), want)


@SETTINGS
@given(n=st.integers(0, 50), hard=st.booleans(), decay=st.booleans(), seed=st.integers(0, 2**31))
def test_lif_step_flags_agrees_with_lif_step(n, hard, decay, seed):
    from eventformer.kernels import lif_params, lif_step, lif_step_flags
    from eventformer.kernels.counters import N_COUNTERS

    rng = np.random.default_rng(seed)
    params = lif_params(2.0, 1.0, 0.0 if hard else None, np.float32)
    v1 = np.zeros(n, np.float32)
    v2 = v1.copy()
    c1 = np.zeros(N_COUNTERS, np.int64)
    c2 = c1.copy()
    for _ in range(4):
        cur = (rng.random(n) * 3).astype(np.float32)
        spikes = np.empty(n, np.int32)
        m = lif_step(v1, cur, params, hard, decay, spikes, c1)
        flags = np.empty(n, np.uint8)
        count = lif_step_flags(v2, cur, params, hard, decay, flags, c2)
        assert count == m
        np.testing.assert_array_equal(np.flatnonzero(flags), spikes[:m])
        np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(c1, c2)


# --------------------------------------------------------------------------------------------
# the integer engine's kernels (SPEC §6) against their Python-integer twins
# --------------------------------------------------------------------------------------------

from eventformer.kernels import (  # noqa: E402
    lif_fixed_quiet_step,
    lif_fixed_step,
    lif_fixed_step_flags,
    saformer_step_fixed,
    ssa_bin_step_fixed,
    tasa_fixed_current,
)


def _fixed_lif_case(rng, n_period, reps):
    """Membranes and currents around a per-channel integer threshold, extremes included."""
    n = n_period * reps
    theta = rng.integers(1, 40000, n_period).astype(np.int32)
    v = rng.integers(-60000, 60000, n).astype(np.int32)
    v[::7] = np.tile(theta, reps)[::7]  # exactly at threshold
    x = rng.integers(-90000, 90000, n).astype(np.int32)
    x[::5] = 2**30 - 1  # the largest current the load-time bound admits
    x[1::9] = -(2**30)
    return v, x, theta, n


@SETTINGS
@given(n_period=st.integers(1, 40), reps=st.integers(1, 5),
       shift=st.sampled_from([0, 1, 4]),  # decay_input's kernels compile once per shift
       hard=st.booleans(), decay=st.booleans(), periodic=st.booleans(), seed=SEEDS)
def test_lif_fixed_step_matches_twin(n_period, reps, shift, hard, decay, periodic, seed):
    rng = np.random.default_rng(seed)
    v, x, theta, n = _fixed_lif_case(rng, n_period, reps)
    current = x[:n_period].copy() if periodic else x
    dense_x = np.tile(current, reps) if periodic else x
    want_v, want_s, updates = twin.lif_fixed(v, dense_x, np.tile(theta, reps), shift, hard, decay)
    for kernel in ("step", "flags", "quiet"):
        vv = v.copy()
        counters = counter_start(rng)
        start = counters.copy()
        out = np.full(n, -1, np.int32)
        if kernel == "step":
            count = lif_fixed_step(vv, current, theta, shift, hard, decay, out, counters)
            np.testing.assert_array_equal(out[:count], np.flatnonzero(want_s))
        elif kernel == "flags":
            flags = np.zeros(n, np.uint8)
            count = lif_fixed_step_flags(vv, current, theta, shift, hard, decay, flags, counters)
            np.testing.assert_array_equal(flags.astype(bool), want_s)
        else:
            flags = np.zeros(n, np.uint8)
            count, still = lif_fixed_quiet_step(vv, current, theta, shift, hard, decay, flags,
                                                out, counters)
            np.testing.assert_array_equal(flags.astype(bool), want_s)
            if count:
                np.testing.assert_array_equal(out[:count], np.flatnonzero(want_s))
            assert still == (not want_s.any() and np.array_equal(want_v, v))
        assert count == int(want_s.sum())
        np.testing.assert_array_equal(vv, want_v)
        exp = start.copy()
        exp[C.NEURON_UPDATES] += updates
        np.testing.assert_array_equal(counters, exp)


def test_lif_fixed_decay_is_exact_at_the_int32_extremes():
    """decay_input membranes and currents near both ends of int32, where x - v leaves int32
    (the decay runs in 32-bit lanes for shifts below 31), at shifts from 0 to beyond 31: the
    twin's unbounded membranes and spikes, hard and soft reset. (Without decay_input
    H = V - (V >> k) + X itself can leave int32 from such values: that rule stays in int64.)"""
    lo, hi = -(2**31), 2**31 - 1
    edge = np.array([lo, lo + 1, lo + 3, -5, -1, 0, 1, 6, hi - 2, hi], np.int32)
    v0, x = np.repeat(edge, edge.size), np.tile(edge, edge.size)
    theta = np.array([hi], np.int32)  # only a membrane reaching int32's top spikes
    for shift, hard in [(0, True), (1, True), (1, False), (30, True), (33, True)]:
        want_v, want_s, _ = twin.lif_fixed(v0, x, np.full(x.size, hi), shift, hard, True)
        assert ((want_v >= lo) & (want_v <= hi)).all()
        v = v0.copy()
        flags = np.zeros(x.size, np.uint8)
        lif_fixed_step_flags(v, x, theta, shift, hard, True, flags,
                             np.zeros(C.N_COUNTERS, np.int64))
        np.testing.assert_array_equal(v, want_v)
        np.testing.assert_array_equal(flags.astype(bool), want_s)


def test_lif_fixed_shift_is_floor_division():
    """The decay rounds towards minus infinity (an arithmetic shift), for both signs."""
    theta = np.array([1000], np.int32)
    for v0, x0 in [(0, -3), (0, 3), (-5, 0), (5, 0), (-1, 0)]:
        v = np.array([v0], np.int32)
        lif_fixed_step(v, np.array([x0], np.int32), theta, 1, True, True,
                       np.empty(1, np.int32), np.zeros(C.N_COUNTERS, np.int64))
        assert v[0] == v0 + (x0 - v0) // 2


@SETTINGS
@given(steps=st.integers(1, 9), size=st.integers(1, 24), taw=st.integers(1, 4),
       tau=st.integers(0, 3), seed=SEEDS)
def test_tasa_fixed_current_matches_twin(steps, size, taw, tau, seed):
    """Driven over a sample as the layer drives it (a ring, steps without input left out),
    against the integer twin: each stored current shifted right by tau k bits."""
    rng = np.random.default_rng(seed)
    live = rng.random(steps) < 0.7
    currents = np.where(live[:, None], rng.integers(-70000, 70000, (steps, size)), 0)
    currents = currents.astype(np.int32)
    reps = int(rng.integers(1, 4))
    period = rng.integers(-5000, 5000, size).astype(np.int32)
    currents = np.tile(currents, (1, reps))
    expect, shifts = twin.tasa_fixed(currents, tau, taw, np.tile(period, reps))
    ring = np.zeros((max(taw - 1, 1), size * reps), np.int32)
    ring_live = np.zeros(max(taw - 1, 1), bool)
    counters = counter_start(rng)
    start = counters.copy()
    for t in range(steps):
        slots, sh = [], []
        for m in range(1, taw):
            slot = (t - m) % (taw - 1)
            if t - m >= 0 and ring_live[slot]:
                slots.append(slot)
                sh.append(tau * m)
        out = np.full(size * reps, -1, np.int32)
        cur = currents[t].copy()
        same = t % 2 == 0
        tasa_fixed_current(cur, ring, np.array(slots, np.int64), np.array(sh, np.int64), period,
                           cur if same else out, counters)
        np.testing.assert_array_equal(cur if same else out, expect[t])
        if taw > 1:
            ring[t % (taw - 1)] = currents[t]
            ring_live[t % (taw - 1)] = live[t]
    exp = start.copy()
    exp[C.SHIFT] += shifts
    np.testing.assert_array_equal(counters, exp)


@SETTINGS
@given(ssa_cases(), st.integers(0, 2**32 - 1))
def test_ssa_bin_step_fixed_matches_twin(case, seed2):
    rng = np.random.default_rng(case["seed"])
    n, dim, heads = case["n"], case["dim"], case["heads"]
    d = dim // heads
    q, k, v, qi, ki, vi = _qkv(case, rng)
    r2 = np.random.default_rng(seed2)
    delta = r2.integers(0, d + 1, size=heads).astype(np.int32)
    vbar_q = r2.integers(-300, 700, dim).astype(np.int64)
    unit = 256
    out = np.full(n * dim, -7, np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    ssa_bin_step_fixed(qi, ki, vi, n, dim, heads, delta, vbar_q, unit, out, counters)
    np.testing.assert_array_equal(out.reshape(n, dim),
                                  twin.ssa_bin_fixed(q, k, v, heads, delta, vbar_q, unit))
    _, binary = twin.ssa_bin(q, k, v, heads, delta, np.zeros(dim), 1.0, np.float64)
    ops = twin.mapped_attention_ops(q, k, v, heads, binary)
    np.testing.assert_array_equal(counters, _mapped_counters(start, ops, C.COMPARE, qi, ki, vi))


@SETTINGS
@given(side=st.sampled_from([1, 2, 4, 8]), dim=st.sampled_from([1, 3, 8]),
       rows=st.sampled_from([1, 2, 4]), dq=DENSITIES, dk=DENSITIES, seed=SEEDS)
def test_saformer_step_fixed_matches_twin(side, dim, rows, dq, dk, seed):
    n = side * side
    assume(n % rows == 0)
    rng = np.random.default_rng(seed)
    q = (rng.random((n, dim)) < dq).astype(np.int64)
    k = (rng.random((n, dim)) < dk).astype(np.int64)
    qi, _ = twin.tokens_to_events(q)
    ki, _ = twin.tokens_to_events(k)
    weight = rng.integers(-127, 128, (dim, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, dim).astype(np.int32)
    mult = rng.integers(0, 2**20, dim).astype(np.int64)
    out = np.full(n * dim, -7, np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    saformer_step_fixed(qi, ki, n, dim, side, rows, weight, bias, mult, 16, out, counters)
    expect = twin.saformer_fixed(q, k, side, rows, weight, bias, mult, 16)
    np.testing.assert_array_equal(out.reshape(n, dim), expect)
    ac, _ = twin.saformer_ops(q, k, side, rows, 3, 3)
    exp = start.copy()
    exp[C.AC] += ac
    exp[C.MAC] += (rows * dim + dim) if (q.any() and k.any()) else 0
    exp[C.INPUT_EVENTS] += qi.shape[0] + ki.shape[0]
    np.testing.assert_array_equal(counters, exp)


# ---------------------------------------------------------------------------------------------
# neurons of NIR-imported networks and sum pooling (kernels/snn.py)
# ---------------------------------------------------------------------------------------------

from eventformer.kernels import (  # noqa: E402
    norse_step,
    norse_step_fixed,
    sinabs_step,
    sinabs_step_fixed,
    snntorch_step,
    snntorch_step_fixed,
    sumpool_events,
)
from eventformer.kernels import snn as K  # noqa: E402


def _framework_case(rng, c, reps, dtype, periodic):
    """Membranes, thresholds and currents of a few steps (dense or periodic currents), some
    membranes exactly at threshold, some currents negative."""
    n = c * reps
    theta = rng.choice([0.5, 1.0, 1.25, 2.0], n).astype(dtype)
    v = rng.normal(0, 1.5, n).astype(dtype)
    v[::5] = theta[::5]
    xs = []
    for _ in range(4):
        x = rng.normal(0.3, 2.0, c if periodic else n).astype(dtype)
        xs.append(x)
    return n, theta, v, xs


def _dense(x, n):
    return np.tile(x, n // x.shape[0])


@SETTINGS
@given(c=st.integers(1, 24), reps=st.integers(1, 4), dtype=DTYPES, periodic=st.booleans(),
       synaptic=st.booleans(), norm=st.booleans(), multi=st.sampled_from([0, 1, 2]),
       cap=st.sampled_from([0, 1, 3]), subtract=st.booleans(), floor=st.booleans(), seed=SEEDS)
def test_sinabs_step_matches_twin(c, reps, dtype, periodic, synaptic, norm, multi, cap,
                                  subtract, floor, seed):
    rng = np.random.default_rng(seed)
    n, theta, v, xs = _framework_case(rng, c, reps, dtype, periodic)
    alpha = rng.choice([1.0, 0.875, 0.9], n).astype(dtype)
    alpha_syn = rng.uniform(0.5, 0.95, n).astype(dtype)
    min_v = -theta
    reset_value = rng.choice([0.0, 0.25], n).astype(dtype)
    params = np.stack([alpha, alpha_syn, theta, min_v, reset_value, alpha]).astype(dtype)
    params[K.SINABS_INPUT_GAIN] = dtype(1) - alpha
    options = np.array([synaptic, norm, multi, cap, subtract, floor], np.int64)
    i_syn = np.zeros(n if synaptic else 0, dtype)
    want_v, want_i = v.copy(), np.zeros(n, dtype)
    counters = counter_start(rng)
    start = counters.copy()
    for x in xs:
        want_v, want_i, s = twin.sinabs_neurons(want_v, want_i, _dense(x, n), alpha, alpha_syn,
                                                theta, min_v, reset_value, synaptic, norm,
                                                multi, cap, subtract, floor)
        idx, cnt = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
        k = sinabs_step(v, i_syn, x, params, options, idx, cnt, counters)
        np.testing.assert_array_equal(idx[:k], np.flatnonzero(s))
        np.testing.assert_array_equal(cnt[:k], s[s > 0])
        np.testing.assert_array_equal(v, want_v)
        if synaptic:
            np.testing.assert_array_equal(i_syn, want_i)
    assert counters[C.NEURON_UPDATES] - start[C.NEURON_UPDATES] == 4 * n


@SETTINGS
@given(c=st.integers(1, 24), reps=st.integers(1, 4), dtype=DTYPES, periodic=st.booleans(),
       reset=st.sampled_from(["subtract", "zero", "none"]), seed=SEEDS)
def test_snntorch_step_matches_twin(c, reps, dtype, periodic, reset, seed):
    rng = np.random.default_rng(seed)
    n, theta, v, xs = _framework_case(rng, c, reps, dtype, periodic)
    beta = rng.choice([0.8, 0.9, 0.95, 1.0], n).astype(dtype)
    params = np.stack([beta, theta]).astype(dtype)
    want_v = v.copy()
    counters = counter_start(rng)
    for x in xs:
        want_v, s = twin.snntorch_leaky(want_v, _dense(x, n), beta, theta, reset)
        idx, cnt = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
        k = snntorch_step(v, x, params, K.RESET_SUBTRACT if reset == "subtract" else
                          K.RESET_ZERO if reset == "zero" else K.RESET_NONE, idx, cnt, counters)
        np.testing.assert_array_equal(idx[:k], np.flatnonzero(s))
        assert np.all(cnt[:k] == 1)
        np.testing.assert_array_equal(v, want_v)


@SETTINGS
@given(c=st.integers(1, 24), reps=st.integers(1, 4), dtype=DTYPES, periodic=st.booleans(),
       kind=st.sampled_from(["iaf", "box", "cuba"]), subtract=st.booleans(), seed=SEEDS)
def test_norse_step_matches_twin(c, reps, dtype, periodic, kind, subtract, seed):
    rng = np.random.default_rng(seed)
    n, theta, v, xs = _framework_case(rng, c, reps, dtype, periodic)
    a = (dtype(1e-3) * rng.choice([50.0, 100.0, 200.0], n).astype(dtype)).astype(dtype)
    b = (dtype(-1e-3) * rng.choice([100.0, 200.0], n).astype(dtype)).astype(dtype)
    v_leak = rng.choice([0.0, 0.1], n).astype(dtype)
    v_reset = rng.choice([0.0, -0.2], n).astype(dtype)
    params = np.stack([a, b, v_leak, theta, v_reset]).astype(dtype)
    cuba, iaf = kind == "cuba", kind == "iaf"
    options = np.array([cuba, subtract, iaf], np.int64)
    i_syn = np.zeros(n if cuba else 0, dtype)
    want_v, want_i = v.copy(), np.zeros(n, dtype)
    counters = counter_start(rng)
    for x in xs:
        want_v, want_i, s = twin.norse_cell(want_v, want_i, _dense(x, n), a, b, v_leak, theta,
                                            v_reset, cuba, subtract, iaf)
        idx, cnt = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
        k = norse_step(v, i_syn, x, params, options, idx, cnt, counters)
        np.testing.assert_array_equal(idx[:k], np.flatnonzero(s))
        np.testing.assert_array_equal(v, want_v)
        if cuba:
            np.testing.assert_array_equal(i_syn, want_i)


def _fixed_framework_case(rng, c, reps, periodic):
    n = c * reps
    theta = rng.integers(1, 30000, n).astype(np.int64)
    v = rng.integers(-50000, 50000, n).astype(np.int32)
    v[::5] = theta[::5]
    xs = [rng.integers(-2**20, 2**20, c if periodic else n).astype(np.int32) for _ in range(4)]
    return n, theta, v, xs


@SETTINGS
@given(c=st.integers(1, 16), reps=st.integers(1, 4), periodic=st.booleans(),
       synaptic=st.booleans(), norm=st.booleans(), multi=st.booleans(),
       cap=st.sampled_from([0, 2]), subtract=st.booleans(), floor=st.booleans(), seed=SEEDS)
def test_sinabs_step_fixed_matches_twin(c, reps, periodic, synaptic, norm, multi, cap, subtract,
                                        floor, seed):
    rng = np.random.default_rng(seed)
    n, theta, v, xs = _fixed_framework_case(rng, c, reps, periodic)
    one = 1 << 16
    alpha = rng.choice([one, 57344, 60000], n).astype(np.int64)
    alpha_syn = rng.integers(30000, 62000, n).astype(np.int64)
    gain = one - alpha
    min_v, reset_value = -theta, rng.choice([0, 77], n).astype(np.int64)
    params = np.stack([alpha, alpha_syn, theta, min_v, reset_value, gain]).astype(np.int64)
    options = np.array([synaptic, norm, multi, cap, subtract, floor], np.int64)
    i_syn = np.zeros(n if synaptic else 0, np.int32)
    want_v, want_i = v.astype(np.int64), np.zeros(n, np.int64)
    for x in xs:
        want_v, want_i, s = twin.sinabs_neurons_fixed(
            want_v, want_i, _dense(x, n), alpha, alpha_syn, theta, min_v, reset_value, gain,
            synaptic, norm, multi, cap, subtract, floor)
        idx, cnt = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
        k = sinabs_step_fixed(v, i_syn, x, params, options, idx, cnt, counter_start(rng))
        np.testing.assert_array_equal(idx[:k], np.flatnonzero(s))
        np.testing.assert_array_equal(cnt[:k], s[s > 0])
        np.testing.assert_array_equal(v, want_v)
        if synaptic:
            np.testing.assert_array_equal(i_syn, want_i)


@SETTINGS
@given(c=st.integers(1, 16), reps=st.integers(1, 4), periodic=st.booleans(),
       reset=st.sampled_from(["subtract", "zero", "none"]), seed=SEEDS)
def test_snntorch_step_fixed_matches_twin(c, reps, periodic, reset, seed):
    rng = np.random.default_rng(seed)
    n, theta, v, xs = _fixed_framework_case(rng, c, reps, periodic)
    beta = rng.choice([1 << 16, 58982, 52429], n).astype(np.int64)
    params = np.stack([beta, theta])
    want_v = v.astype(np.int64)
    mech = {"subtract": K.RESET_SUBTRACT, "zero": K.RESET_ZERO, "none": K.RESET_NONE}[reset]
    for x in xs:
        want_v, s = twin.snntorch_leaky_fixed(want_v, _dense(x, n), beta, theta, reset)
        idx, cnt = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
        k = snntorch_step_fixed(v, x, params, mech, idx, cnt, counter_start(rng))
        np.testing.assert_array_equal(idx[:k], np.flatnonzero(s))
        np.testing.assert_array_equal(v, want_v)


@SETTINGS
@given(c=st.integers(1, 16), reps=st.integers(1, 4), periodic=st.booleans(),
       kind=st.sampled_from(["iaf", "box", "cuba"]), subtract=st.booleans(), seed=SEEDS)
def test_norse_step_fixed_matches_twin(c, reps, periodic, kind, subtract, seed):
    rng = np.random.default_rng(seed)
    n, theta, v, xs = _fixed_framework_case(rng, c, reps, periodic)
    a = rng.choice([3277, 6554, 13107], n).astype(np.int64)
    b = -rng.choice([6554, 13107], n).astype(np.int64)
    v_leak = rng.choice([0, 500], n).astype(np.int64)
    v_reset = rng.choice([0, -300], n).astype(np.int64)
    params = np.stack([a, b, v_leak, theta, v_reset])
    cuba, iaf = kind == "cuba", kind == "iaf"
    options = np.array([cuba, subtract, iaf], np.int64)
    i_syn = np.zeros(n if cuba else 0, np.int32)
    want_v, want_i = v.astype(np.int64), np.zeros(n, np.int64)
    for x in xs:
        want_v, want_i, s = twin.norse_cell_fixed(want_v, want_i, _dense(x, n), a, b, v_leak,
                                                  theta, v_reset, cuba, subtract, iaf)
        idx, cnt = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
        k = norse_step_fixed(v, i_syn, x, params, options, idx, cnt, counter_start(rng))
        np.testing.assert_array_equal(idx[:k], np.flatnonzero(s))
        np.testing.assert_array_equal(v, want_v)
        if cuba:
            np.testing.assert_array_equal(i_syn, want_i)


def test_fixed_multiplier_is_a_floor():
    """(x m) >> 16 floors toward minus infinity (negative membranes decay away from zero by
    at most one unit), and a multiplier of one is exactly the identity."""
    v = np.array([-3, -1, 1, 3, 2**30], np.int32)
    params = np.stack([np.full(5, 1 << 15, np.int64), np.full(5, 2**31 - 1, np.int64)])
    idx, cnt = np.empty(5, np.int32), np.empty(5, np.int32)
    snntorch_step_fixed(v, np.zeros(5, np.int32), params, K.RESET_NONE, idx, cnt,
                        np.zeros(C.N_COUNTERS, np.int64))
    np.testing.assert_array_equal(v, [-2, -1, 0, 1, 2**29])
    w = np.array([-7, 7], np.int32)
    one = np.stack([np.full(2, 1 << 16, np.int64), np.full(2, 100, np.int64)])
    snntorch_step_fixed(w, np.zeros(2, np.int32), one, K.RESET_NONE, idx, cnt,
                        np.zeros(C.N_COUNTERS, np.int64))
    np.testing.assert_array_equal(w, [-7, 7])


@SETTINGS
@given(c=st.integers(1, 5), h=st.integers(1, 12), w=st.integers(1, 12), k=st.integers(1, 4),
       stride=st.integers(1, 3), pad=st.integers(0, 2), mode=MODES, seed=SEEDS)
def test_sumpool_events_matches_twin(c, h, w, k, stride, pad, mode, seed):
    assume(2 * pad <= k and h + 2 * pad >= k and w + 2 * pad >= k)
    rng = np.random.default_rng(seed)
    dense = np.zeros((c, h, w), np.int64)
    if mode == "random":
        dense = rng.integers(0, 3, (c, h, w)) * (rng.random((c, h, w)) < 0.3)
    elif mode == "border":
        dense[:, 0, :] = 1
        dense[:, -1, :] = 2
        dense[:, :, 0] = 1
    elif mode == "full":
        dense = rng.integers(1, 4, (c, h, w))
    hwc = dense.transpose(1, 2, 0).reshape(-1)
    idx = np.flatnonzero(hwc).astype(np.int32)
    cnt = hwc[idx].astype(np.int32)
    want, adds = twin.sumpool(dense, k, stride, pad)
    ho, wo = want.shape[1], want.shape[2]
    acc = np.zeros(ho * wo * c, np.int32)
    out_i, out_c = np.full(acc.size, -1, np.int32), np.full(acc.size, -1, np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    n = sumpool_events(idx, cnt, h, w, c, k, stride, pad, ho, wo, acc, out_i, out_c, counters)
    want_hwc = want.transpose(1, 2, 0).reshape(-1)
    np.testing.assert_array_equal(out_i[:n], np.flatnonzero(want_hwc))
    np.testing.assert_array_equal(out_c[:n], want_hwc[want_hwc != 0])
    assert not acc.any()  # scratch handed back zeroed
    assert counters[C.AC] - start[C.AC] == adds


@SETTINGS
@given(m=st.integers(0, 14), k=st.integers(0, 40), n=st.integers(1, 70),
       wide=st.booleans(), seed=SEEDS)
def test_int_gemm_matches_twin(m, k, n, wide, seed):
    from eventformer.kernels.igemm import UINT8_ROW_MAX, pack_igemm

    rng = np.random.default_rng(seed)
    bits = 16 if wide else 8  # int16 rows and weights, or uint8 rows and int8 weights
    rows = (rng.integers(-300, 300, (m, k)).astype(np.int16) if wide  # uint8: the kernel's range
            else rng.integers(0, UINT8_ROW_MAX + 1, (m, k)).astype(np.uint8))
    weight = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (k, n))
    out = np.full((m, n), -1, np.int32)
    int_gemm(rows, pack_igemm(weight, np.int16 if wide else np.int8), out, np.empty(0, np.int32))
    np.testing.assert_array_equal(out, twin.int_matmul(rows, weight))
