"""The Spike-driven Transformer's and QKFormer's attention kernels against their naive twins.

The twins (tests/spikedriven_twins.py) compute on dense tensors in the official code's layouts;
hypothesis draws the shapes (1-token maps, 1-channel heads, grids whose flat-token neighbours
cross a row) and a seed, numpy draws the spikes (none, a scatter, every site). Results are
exact: index lists equal, counts equal, op counters equal. torch's own MaxPool3d checks the two
Erode layouts, and one step of each attention core is run through the official sequence of
tensor operations.
"""

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spikedriven_twins as twin
from eventformer.kernels import counters as C
from eventformer.kernels.spikedriven import (_erode_grid_merge, _erode_grid_words,
                                             _erode_heads_merge, _erode_heads_words, and_lists,
                                             column_sums, erode_grid, erode_heads, head_counts,
                                             mask_channels, mask_heads)

KERNELS = (erode_grid, erode_heads, and_lists, column_sums, mask_channels, head_counts,
           mask_heads)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32 - 1)
# how spikes are laid out: none, a sparse or a dense scatter, every site
MODES = st.sampled_from(["empty", "sparse", "dense", "full"])


@st.composite
def maps(draw):
    """A [N = H x W tokens, D = heads x d] map's shape; H, W, d may be 1."""
    return dict(grid_h=draw(st.integers(1, 6)), grid_w=draw(st.integers(1, 6)),
                heads=draw(st.integers(1, 4)), d=draw(st.integers(1, 5)), seed=draw(SEEDS))


@st.composite
def wide_maps(draw):
    """Maps of up to 200 channels (several words of 64 flags per token, heads straddling a
    word's end) on up to 5 x 5 tokens."""
    heads = draw(st.integers(1, 5))
    return dict(grid_h=draw(st.integers(1, 5)), grid_w=draw(st.integers(1, 5)), heads=heads,
                d=draw(st.integers(1, 200 // heads)), seed=draw(SEEDS))


ANY_MAP = st.one_of(maps(), wide_maps())


def spikes(rng, tokens, dim, mode):
    """A sorted int32 spike list over [tokens, dim] drawn in ``mode``."""
    size = tokens * dim
    if mode == "empty":
        return np.zeros(0, np.int32)
    if mode == "full":
        return np.arange(size, dtype=np.int32)
    p = rng.uniform(0.01, 0.15) if mode == "sparse" else rng.uniform(0.3, 0.9)
    return np.flatnonzero(rng.random(size) < p).astype(np.int32)


def counter_start(rng):
    """Counters that already hold work: the kernels must add to them, not overwrite them."""
    return rng.integers(0, 1000, size=C.N_COUNTERS).astype(np.int64)


def booked(start, **added):
    """``start`` plus the named slots' additions (e.g. ``mask=3``), every other slot kept."""
    out = start.copy()
    for name, value in added.items():
        out[C.NAMES.index(name)] += value
    return out


def shape_of(case):
    tokens = case["grid_h"] * case["grid_w"]
    return tokens, case["heads"] * case["d"]


# ---------------------------------------------------------------------------------------------
# against the twins
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(case=ANY_MAP, mode=MODES)
def test_erode_grid_matches_its_twin(case, mode):
    rng = np.random.default_rng(case["seed"])
    tokens, dim = shape_of(case)
    idx = spikes(rng, tokens, dim, mode)
    want, maxima = twin.erode_grid(idx, case["grid_h"], case["grid_w"], dim)
    out = np.full(min(9 * idx.size, tokens * dim), -1, np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    n = erode_grid(idx, case["grid_h"], case["grid_w"], dim, out, counters)
    np.testing.assert_array_equal(out[:n], want)
    np.testing.assert_array_equal(counters, booked(start, maxima=maxima))


@SETTINGS
@given(case=ANY_MAP, mode=MODES)
def test_erode_heads_matches_its_twin(case, mode):
    rng = np.random.default_rng(case["seed"])
    tokens, dim = shape_of(case)
    idx = spikes(rng, tokens, dim, mode)
    want, maxima = twin.erode_heads(idx, tokens, dim, case["heads"])
    out = np.full(min(9 * idx.size, tokens * dim), -1, np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    n = erode_heads(idx, tokens, dim, case["heads"], out, counters)
    np.testing.assert_array_equal(out[:n], want)
    np.testing.assert_array_equal(counters, booked(start, maxima=maxima))


@SETTINGS
@given(case=ANY_MAP, mode=MODES)
def test_both_ways_of_each_erode_match_the_twins(case, mode):
    """The merge and the word way of each dilation, whichever the kernel would pick."""
    rng = np.random.default_rng(case["seed"])
    tokens, dim = shape_of(case)
    idx = spikes(rng, tokens, dim, mode)
    out = np.full(min(9 * idx.size, tokens * dim), -1, np.int32)
    want, _ = twin.erode_grid(idx, case["grid_h"], case["grid_w"], dim)
    for way in (_erode_grid_merge, _erode_grid_words):
        n = way(idx, case["grid_h"], case["grid_w"], dim, out)
        np.testing.assert_array_equal(out[:n], want, err_msg=way.__name__)
    want, _ = twin.erode_heads(idx, tokens, dim, case["heads"])
    for way in (_erode_heads_merge, _erode_heads_words):
        n = way(idx, tokens, dim, case["heads"], out)
        np.testing.assert_array_equal(out[:n], want, err_msg=way.__name__)


def test_each_erode_takes_the_merge_for_few_events_and_words_for_many():
    """The public kernels on a 16 x 16 grid of 256 channels, where each way is the cheaper one
    on one side of its line, give the twin's results on both sides."""
    rng = np.random.default_rng(5)
    tokens, dim = 256, 256
    out = np.empty(tokens * dim, np.int32)
    for nnz in (3, 20, 200, 600, 6000):
        idx = np.sort(rng.choice(tokens * dim, nnz, replace=False)).astype(np.int32)
        c = zeros()
        n = erode_grid(idx, 16, 16, dim, out, c)
        np.testing.assert_array_equal(out[:n], twin.erode_grid(idx, 16, 16, dim)[0])
        m = erode_heads(idx, tokens, dim, 8, out, c)
        np.testing.assert_array_equal(out[:m], twin.erode_heads(idx, tokens, dim, 8)[0])
        assert c[C.MAXIMA] == n + m


@SETTINGS
@given(case=ANY_MAP, mode_a=MODES, mode_b=MODES)
def test_and_lists_matches_its_twin(case, mode_a, mode_b):
    rng = np.random.default_rng(case["seed"])
    tokens, dim = shape_of(case)
    a = spikes(rng, tokens, dim, mode_a)
    b = spikes(rng, tokens, dim, mode_b)
    want, tests = twin.and_lists(a, b, tokens, dim)
    out = np.full(min(a.size, b.size), -1, np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    n = and_lists(a, b, out, counters)
    np.testing.assert_array_equal(out[:n], want)
    np.testing.assert_array_equal(counters, booked(start, mask=tests))


@SETTINGS
@given(case=ANY_MAP, mode=MODES)
def test_column_sums_matches_its_twin(case, mode):
    rng = np.random.default_rng(case["seed"])
    tokens, dim = shape_of(case)
    idx = spikes(rng, tokens, dim, mode)
    want, adds = twin.column_sums(idx, tokens, dim, case["heads"])
    sums = rng.integers(-5, 5, size=dim).astype(np.int32)  # stale values: overwritten
    counters = counter_start(rng)
    start = counters.copy()
    column_sums(idx, dim, sums, counters)
    np.testing.assert_array_equal(sums, want)
    np.testing.assert_array_equal(counters, booked(start, ac=adds))


def flag_array(rng, size, kind):
    """uint8 flags: none set, some set (any non-zero value passes), or all set."""
    if kind == "none":
        return np.zeros(size, np.uint8)
    if kind == "all":
        return np.ones(size, np.uint8)
    return (rng.random(size) < 0.5) * rng.integers(1, 256, size=size).astype(np.uint8)


FLAGS = st.sampled_from(["none", "some", "all"])


@SETTINGS
@given(case=ANY_MAP, mode=MODES, kind=FLAGS)
def test_mask_channels_matches_its_twin(case, mode, kind):
    rng = np.random.default_rng(case["seed"])
    tokens, dim = shape_of(case)
    idx = spikes(rng, tokens, dim, mode)
    flags = flag_array(rng, dim, kind)
    want, tests = twin.mask_channels(idx, tokens, dim, case["heads"], flags)
    out = np.full(idx.size, -1, np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    n = mask_channels(idx, dim, flags, out, counters)
    np.testing.assert_array_equal(out[:n], want)
    np.testing.assert_array_equal(counters, booked(start, mask=tests))


@SETTINGS
@given(case=ANY_MAP, mode=MODES)
def test_head_counts_matches_its_twin(case, mode):
    rng = np.random.default_rng(case["seed"])
    tokens, dim = shape_of(case)
    idx = spikes(rng, tokens, dim, mode)
    want, adds = twin.head_counts(idx, tokens, dim, case["heads"])
    counts = rng.integers(-5, 5, size=tokens * case["heads"]).astype(np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    head_counts(idx, dim, case["heads"], counts, counters)
    np.testing.assert_array_equal(counts, want)
    np.testing.assert_array_equal(counters, booked(start, ac=adds))


@SETTINGS
@given(case=ANY_MAP, mode=MODES, kind=FLAGS)
def test_mask_heads_matches_its_twin(case, mode, kind):
    rng = np.random.default_rng(case["seed"])
    tokens, dim = shape_of(case)
    idx = spikes(rng, tokens, dim, mode)
    flags = flag_array(rng, tokens * case["heads"], kind)
    want, tests = twin.mask_heads(idx, tokens, dim, case["heads"], flags)
    out = np.full(idx.size, -1, np.int32)
    counters = counter_start(rng)
    start = counters.copy()
    n = mask_heads(idx, dim, case["heads"], flags, out, counters)
    np.testing.assert_array_equal(out[:n], want)
    np.testing.assert_array_equal(counters, booked(start, mask=tests))


# ---------------------------------------------------------------------------------------------
# hand-computed cases: geometry and counters
# ---------------------------------------------------------------------------------------------


def zeros():
    return np.zeros(C.N_COUNTERS, np.int64)


def test_erode_heads_window_crosses_grid_rows_where_erode_grid_does_not():
    # a 2 x 3 grid, 2 channels in 1 head; one spike at token 2 (row 0, last column), channel 0
    idx = np.array([2 * 2 + 0], np.int32)
    out = np.empty(9, np.int32)
    c = zeros()
    n = erode_grid(idx, 2, 3, 2, out, c)
    # grid: columns 1..2 of rows 0..1 (tokens 1, 2, 4, 5), channel 0 only
    assert out[:n].tolist() == [1 * 2, 2 * 2, 4 * 2, 5 * 2]
    n = erode_heads(idx, 6, 2, 1, out, c)
    # flat tokens 1..3 (token 3 opens row 1) x channels 0..1 of the head
    assert out[:n].tolist() == [2, 3, 4, 5, 6, 7]
    assert c[C.MAXIMA] == 4 + 6 and c.sum() == 10


def test_erode_heads_stays_inside_each_head():
    # 3 tokens, 2 heads of 2 channels: token 1, channel 1 (head 0's last) and channel 2
    # (head 1's first) are neighbours in the flat list but not in any head
    out = np.empty(18, np.int32)
    c = zeros()
    n = erode_heads(np.array([4 + 1], np.int32), 3, 4, 2, out, c)
    assert out[:n].tolist() == [0, 1, 4, 5, 8, 9]
    n = erode_heads(np.array([4 + 2], np.int32), 3, 4, 2, out, c)
    assert out[:n].tolist() == [2, 3, 6, 7, 10, 11]
    # one head of one channel: only the token axis spreads
    n = erode_heads(np.array([1, 3], np.int32), 5, 1, 1, out, c)
    assert out[:n].tolist() == [0, 1, 2, 3, 4]
    assert c[C.MAXIMA] == 6 + 6 + 5 and c.sum() == 17


def test_a_head_straddling_a_words_end_spreads_across_it_both_ways():
    """One token, 2 heads of 100 channels: head 0 holds channels 0..99, across the first word
    of 64 flags into the second. A spike at 64 reaches 63 (carried down a word), one at 63
    reaches 64 (carried up); at 99 it stops at head 0's end, at 100 at head 1's start."""
    out = np.empty(9, np.int32)
    for way in (_erode_heads_words, _erode_heads_merge):
        for spike, want in ((64, [63, 64, 65]), (63, [62, 63, 64]), (99, [98, 99]),
                            (100, [100, 101]), (127, [126, 127, 128]), (128, [127, 128, 129])):
            n = way(np.array([spike], np.int32), 1, 200, 2, out)
            assert out[:n].tolist() == want, (way.__name__, spike)


def test_counters_of_a_hand_computed_sdsa_step():
    """2 x 2 grid, D = 4 in 2 heads of 2; every count below worked out by hand."""
    k = np.array([0, 13], np.int32)  # token 0 channel 0; token 3 channel 1
    v = np.array([0, 5, 13], np.int32)  # token 0 ch 0; token 1 ch 1; token 3 ch 1
    c = zeros()
    out = np.empty(16, np.int32)
    # Erode K on the grid: each spike reaches all 4 tokens of the 2 x 2 grid in its channel
    n = erode_grid(k, 2, 2, 4, out, c)
    ke = out[:n].copy()
    assert ke.tolist() == [0, 1, 4, 5, 8, 9, 12, 13] and c[C.MAXIMA] == 8
    n = erode_grid(v, 2, 2, 4, out, c)
    ve = out[:n].copy()
    assert ve.tolist() == [0, 1, 4, 5, 8, 9, 12, 13] and c[C.MAXIMA] == 16
    # KV = K AND V: equal lists, 8 bits tested, every one a hit
    n = and_lists(ke, ve, out, c)
    kv = out[:n].copy()
    assert kv.tolist() == ke.tolist() and c[C.MASK] == 8
    # Erode on (token, channel in head): head 0 full over all tokens already, head 1 empty
    n = erode_heads(kv, 4, 4, 2, out, c)
    kv = out[:n].copy()
    assert kv.tolist() == ke.tolist() and c[C.MAXIMA] == 24
    sums = np.empty(4, np.int32)
    column_sums(kv, 4, sums, c)
    assert sums.tolist() == [4, 4, 0, 0] and c[C.AC] == 8
    # Q masked by the talking-heads spikes of channels 0 and 1: 3 flags tested, 2 pass
    q = np.array([1, 2, 9], np.int32)
    n = mask_channels(q, 4, np.array([1, 1, 0, 0], np.uint8), out, c)
    assert out[:n].tolist() == [1, 9] and c[C.MASK] == 8 + 3
    expected = booked(zeros(), maxima=24, mask=11, ac=8)
    np.testing.assert_array_equal(c, expected)


def test_counters_of_a_hand_computed_token_attention_step():
    """3 tokens, D = 6 in 2 heads of 3."""
    q = np.array([0, 1, 4, 9, 10, 11, 15], np.int32)  # (0,h0)x2 (0,h1)x1 (1,h1)x3 (2,h1)x1
    counts = np.empty(6, np.int32)
    c = zeros()
    head_counts(q, 6, 2, counts, c)
    assert counts.tolist() == [2, 1, 0, 3, 0, 1] and c[C.AC] == 7
    k = np.array([2, 3, 5, 6, 7, 16, 17], np.int32)  # runs (0,h0) (0,h1)x2 (1,h0)x2 (2,h1)x2
    out = np.empty(7, np.int32)
    n = mask_heads(k, 6, 2, np.array([1, 0, 0, 1, 0, 7], np.uint8), out, c)
    assert out[:n].tolist() == [2, 16, 17] and c[C.MASK] == 4
    np.testing.assert_array_equal(c, booked(zeros(), ac=7, mask=4))


def test_and_lists_tests_a_bit_per_first_list_spike_up_to_the_second_lists_last():
    out = np.empty(3, np.int32)
    c = zeros()
    # 1, 3, 5, 7 against {2, 3, 9}: four tests, one hit
    n = and_lists(np.array([1, 3, 5, 7], np.int32), np.array([2, 3, 9], np.int32), out, c)
    assert out[:n].tolist() == [3] and c[C.MASK] == 4
    # 2, 70, 130 against {70, 100}: 130 lies past 100, never tested (sites in three words)
    n = and_lists(np.array([2, 70, 130], np.int32), np.array([70, 100], np.int32), out, c)
    assert out[:n].tolist() == [70] and c[C.MASK] == 4 + 2
    # every spike of the shorter list matches: the hits fill out exactly
    out2 = np.full(2, -1, np.int32)
    n = and_lists(np.array([1, 2, 3, 4, 5], np.int32), np.array([2, 4], np.int32), out2, c)
    assert out2.tolist() == [2, 4] and n == 2 and c[C.MASK] == 6 + 4
    n = and_lists(np.zeros(0, np.int32), np.array([2, 3], np.int32), out, c)
    assert n == 0 and c[C.MASK] == 10


def test_short_output_buffers_are_refused():
    idx = np.arange(4, dtype=np.int32)
    short = np.empty(3, np.int32)
    c = zeros()
    with pytest.raises(ValueError, match="too short"):
        erode_grid(idx, 2, 2, 1, short, c)
    with pytest.raises(ValueError, match="too short"):
        erode_heads(idx, 4, 1, 1, short, c)
    with pytest.raises(ValueError, match="too short"):
        and_lists(idx, idx, short, c)
    with pytest.raises(ValueError, match="too short"):
        mask_channels(idx, 1, np.ones(1, np.uint8), short, c)
    with pytest.raises(ValueError, match="too short"):
        mask_heads(idx, 1, 1, np.ones(4, np.uint8), short, c)
    assert not c.any()


# ---------------------------------------------------------------------------------------------
# against torch: MaxPool3d on both layouts, and one step of each attention core
# ---------------------------------------------------------------------------------------------


def _lists_of(x5_steps):
    """[T, N, D] 0/1 tensor -> per-step sorted int32 lists."""
    return [np.flatnonzero(s.reshape(-1)).astype(np.int32) for s in x5_steps]


@pytest.mark.parametrize("grid_h, grid_w, heads, d", [(4, 5, 2, 3), (3, 3, 4, 1), (1, 6, 1, 4),
                                                      (5, 1, 3, 2)])
def test_erodes_equal_torch_maxpool3d_on_the_official_layouts(grid_h, grid_w, heads, d):
    torch = pytest.importorskip("torch")
    erode = torch.nn.MaxPool3d((1, 3, 3), 1, (0, 1, 1))
    g = torch.Generator().manual_seed(grid_h * 100 + grid_w * 10 + heads + d)
    T, B, N, D = 3, 2, grid_h * grid_w, heads * d
    x = (torch.rand(T, B, N, D, generator=g, dtype=torch.float64) < 0.2).double()
    out = np.empty(N * D, np.int32)
    c = zeros()
    # [T, B, C, H, W]: the grid
    grid = erode(x.transpose(2, 3).reshape(T, B, D, grid_h, grid_w))
    grid = grid.reshape(T, B, D, N).transpose(2, 3)  # back to [T, B, N, D]
    # [T, B, heads, N, d]: (token, channel in head), as MS_SSA_Conv reshapes q, k, v
    hd = erode(x.reshape(T, B, N, heads, d).permute(0, 1, 3, 2, 4).contiguous())
    hd = hd.transpose(3, 4).reshape(T, B, D, N).transpose(2, 3)  # its ``x.transpose(3, 4)``
    for t in range(T):
        for b in range(B):
            idx = np.flatnonzero(x[t, b].numpy().reshape(-1)).astype(np.int32)
            n = erode_grid(idx, grid_h, grid_w, D, out, c)
            assert out[:n].tolist() == np.flatnonzero(grid[t, b].numpy().reshape(-1)).tolist()
            n = erode_heads(idx, N, D, heads, out, c)
            assert out[:n].tolist() == np.flatnonzero(hd[t, b].numpy().reshape(-1)).tolist()


def test_one_sdsa_step_equals_the_official_tensor_sequence():
    """MS_SSA_Conv's core (dvs=True) for T = B = 1, in torch as the released code orders it;
    the talking-heads LIF at its first step from rest fires where X / tau >= 0.5, X >= 1."""
    torch = pytest.importorskip("torch")
    erode = torch.nn.MaxPool3d((1, 3, 3), 1, (0, 1, 1))
    H, W, heads, d = 4, 4, 4, 4
    N, D = H * W, heads * d
    g = torch.Generator().manual_seed(7)
    q, k, v = ((torch.rand(1, 1, D, H, W, generator=g, dtype=torch.float64) < p).double()
               for p in (0.3, 0.08, 0.1))

    def heads_layout(x):  # [T, B, C, H, W] -> [T, B, heads, N, d]
        return x.flatten(3).transpose(-1, -2).reshape(1, 1, N, heads, d).permute(0, 1, 3, 2, 4)

    kh, vh, qh = heads_layout(erode(k)), heads_layout(erode(v)), heads_layout(q)
    kv = erode(kh.mul(vh)).sum(dim=-2, keepdim=True)
    kv_spikes = (kv / 2.0 >= 0.5).double()
    y = erode(qh.mul(kv_spikes)).transpose(3, 4).reshape(1, 1, D, H, W)

    def engine_list(x):  # [1, 1, C, H, W] -> the engine's [N, C] list
        return np.flatnonzero(x[0, 0].reshape(D, N).T.numpy().reshape(-1)).astype(np.int32)

    c = zeros()
    buf = np.empty(N * D, np.int32)
    ke = buf[:erode_grid(engine_list(k), H, W, D, buf, c)].copy()
    ve = buf[:erode_grid(engine_list(v), H, W, D, buf, c)].copy()
    kv_list = buf[:and_lists(ke, ve, buf, c)].copy()
    kv_list = buf[:erode_heads(kv_list, N, D, heads, buf, c)].copy()
    sums = np.empty(D, np.int32)
    column_sums(kv_list, D, sums, c)
    np.testing.assert_array_equal(sums, kv.reshape(D).numpy())
    flags = (sums >= 1).astype(np.uint8)
    assert 0 < flags.sum() < D, "the step must keep some channels and drop others"
    y_list = buf[:mask_channels(engine_list(q), D, flags, buf, c)].copy()
    y_list = buf[:erode_heads(y_list, N, D, heads, buf, c)].copy()
    assert y_list.size > 0
    np.testing.assert_array_equal(y_list, engine_list(y))


def test_one_token_attention_step_equals_the_official_tensor_sequence():
    """Token_QK_Attention's core for T = B = 1 (attention LIF from rest: X / 2 >= 0.5)."""
    torch = pytest.importorskip("torch")
    N, heads, d = 12, 3, 4
    D = heads * d
    g = torch.Generator().manual_seed(3)
    q, k = ((torch.rand(1, 1, D, N, generator=g, dtype=torch.float64) < p).double()
            for p in (0.12, 0.4))
    qs = q.unsqueeze(2).reshape(1, 1, heads, d, N).sum(dim=3, keepdim=True)
    attn = (qs / 2.0 >= 0.5).double()
    x = torch.mul(attn, k.unsqueeze(2).reshape(1, 1, heads, d, N)).flatten(2, 3)

    def engine_list(t):  # [1, 1, C, N] -> [N, C] list
        return np.flatnonzero(t[0, 0].T.numpy().reshape(-1)).astype(np.int32)

    c = zeros()
    counts = np.empty(N * heads, np.int32)
    head_counts(engine_list(q), D, heads, counts, c)
    np.testing.assert_array_equal(counts, qs[0, 0, :, 0, :].T.reshape(-1).numpy())
    flags = (counts >= 1).astype(np.uint8)
    assert 0 < flags.sum() < N * heads
    kl = engine_list(k)
    out = np.empty(kl.size, np.int32)
    n = mask_heads(kl, D, heads, flags, out, c)
    assert 0 < n < kl.size
    np.testing.assert_array_equal(out[:n], engine_list(x))


# ---------------------------------------------------------------------------------------------
# docs: the numpydoc rules of tests/test_kernel_docs.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kern", KERNELS, ids=lambda k: getattr(k, "__name__", str(k)))
def test_docstrings_follow_the_kernel_rules(kern):
    from test_kernel_docs import _entries, _sections

    func = getattr(kern, "py_func", kern)
    doc = inspect.getdoc(func)
    lines = doc.splitlines()
    assert lines[0].strip() and (len(lines) == 1 or not lines[1].strip())
    sections = _sections(doc)
    assert list(sections)[1:3] == ["Parameters", "Returns"]
    params = _entries(sections["Parameters"])
    signature = list(inspect.signature(func).parameters)
    assert list(params) == signature and all(params.values())
    assert _entries(sections["Returns"])
