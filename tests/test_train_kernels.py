"""The trainer's Numba kernels (eventformer.train.kernels, through eventformer.train.layers)
against the plain-numpy formulations they replaced (kept here as twins, verbatim in their
arithmetic). Where the kernel adds in the old order (im2col, col2im, max-pool, LIF forward) the
results must be bit-identical, in float32 and float64; BatchNorm (float64 sums) and the LIF
surrogate (numpy's vectorised exp instead of scipy's expit) agree to rounding."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from eventformer import runtime
from eventformer.train import kernels as K
from eventformer.train import layers as L

DTYPES = [np.float32, np.float64]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Every kernel and GEMM once on the calling thread alone and once split over two threads
    (with the parallel thresholds lowered so that the small test arrays are split too)."""
    old = runtime.engine_threads(), L.PARALLEL_MIN_ELEMENTS, L.PARALLEL_GEMM_MIN_MACS
    runtime.set_engine_threads(request.param)
    L.PARALLEL_MIN_ELEMENTS = L.PARALLEL_GEMM_MIN_MACS = 0
    yield request.param
    runtime.set_engine_threads(old[0])
    L.PARALLEL_MIN_ELEMENTS, L.PARALLEL_GEMM_MIN_MACS = old[1:]


# ------------------------------------------------------------------------------------------------
# the old numpy formulations (twins)
# ------------------------------------------------------------------------------------------------


def old_im2col(x, kh, kw, sh, sw, ph, pw, oh, ow):
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
    M, C = xp.shape[:2]
    cols = np.empty((C, kh, kw, M, oh, ow), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            cols[:, i, j] = patch.transpose(1, 0, 2, 3)
    return cols


def old_col2im(dcols, x_shape, sh, sw, ph, pw):
    C, KH, KW, M, OH, OW = dcols.shape
    _, _, H, W = x_shape
    dxp = np.zeros((M, C, H + 2 * ph, W + 2 * pw), dtype=dcols.dtype)
    for i in range(KH):
        for j in range(KW):
            dxp[:, :, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw] += dcols[
                :, i, j
            ].transpose(1, 0, 2, 3)
    dx = dxp[:, :, ph : ph + H, pw : pw + W] if (ph or pw) else dxp
    return np.ascontiguousarray(dx)


def old_maxpool_forward(x, kh, kw, sh, sw, ph, pw):
    M, C, H, W = x.shape
    OH = (H + 2 * ph - kh) // sh + 1
    OW = (W + 2 * pw - kw) // sw + 1
    if ph or pw:
        xp = np.full((M, C, H + 2 * ph, W + 2 * pw), -np.inf, dtype=x.dtype)
        xp[:, :, ph : ph + H, pw : pw + W] = x
    else:
        xp = x
    y = None
    arg = np.zeros((M, C, OH, OW), dtype=np.int16)
    for i in range(kh):
        for j in range(kw):
            cand = xp[:, :, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw]
            if y is None:
                y = cand.copy()
                continue
            better = cand > y
            np.copyto(y, cand, where=better)
            arg[better] = i * kw + j
    return y, arg


def old_maxpool_backward(dy, arg, x_shape, kh, kw, sh, sw, ph, pw):
    M, C, H, W = x_shape
    OH, OW = arg.shape[2:]
    dxp = np.zeros((M, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    zero = dy.dtype.type(0)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw] += np.where(
                arg == i * kw + j, dy, zero
            )
    dx = dxp[:, :, ph : ph + H, pw : pw + W] if (ph or pw) else dxp
    return np.ascontiguousarray(dx)


def old_bn_forward(x, gamma, beta, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    xc = x - mean.reshape(bshape)
    var = np.mean(xc * xc, axis=axes)
    invstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    xhat = xc * invstd.reshape(bshape)
    return xhat * gamma.reshape(bshape) + beta.reshape(bshape), xhat, mean, var, invstd


def old_bn_backward(dy, xhat, gamma, invstd):
    axes = (0,) + tuple(range(2, dy.ndim))
    bshape = (1, dy.shape[1]) + (1,) * (dy.ndim - 2)
    dgamma, dbeta = np.sum(dy * xhat, axis=axes), dy.sum(axis=axes)
    g = (gamma * invstd).reshape(bshape)
    n = dy.size // dy.shape[1]
    dx = g * (dy - (dbeta / n).reshape(bshape) - xhat * (dgamma / n).reshape(bshape))
    return dx, dgamma, dbeta


def old_lif_forward(x, tau, theta, v_reset, decay_input):
    dt = x.dtype.type
    inv_tau = dt(1.0 / tau)
    keep = dt(1.0 - 1.0 / tau)
    th = dt(theta)
    hard = v_reset is not None
    vr = dt(v_reset) if hard else dt(0)
    v = np.zeros_like(x[0])
    H = np.empty_like(x)
    S = np.empty_like(x)
    for t in range(x.shape[0]):
        if decay_input:
            h = v + (x[t] - (v - vr)) * inv_tau if (hard and vr != 0) else v + (x[t] - v) * inv_tau
        elif hard:
            h = v - (v - vr) * inv_tau + x[t]
        else:
            h = v * keep + x[t]
        s = h >= th
        H[t] = h
        S[t] = s
        v = np.where(s, vr, h) if hard else h - S[t] * th
    return S, H


def old_lif_backward(ds, H, S, tau, theta, alpha, hard, decay_input):
    dt = H.dtype.type
    inv_tau = dt(1.0 / tau)
    keep = dt(1.0 - 1.0 / tau)
    sg = expit(dt(alpha) * (H - dt(theta)))
    sg = dt(alpha) * sg * (dt(1) - sg)
    dx = np.empty_like(H)
    dv = np.zeros_like(H[0])
    one = dt(1)
    for t in range(H.shape[0] - 1, -1, -1):
        dh = ds[t] * sg[t] + (dv * (one - S[t]) if hard else dv)
        if decay_input:
            dx[t] = dh * inv_tau
            dv = dh - dh * inv_tau
        else:
            dx[t] = dh
            dv = dh - dh * inv_tau if hard else dh * keep
    return dx


# ------------------------------------------------------------------------------------------------
# conv2d: im2col, col2im and the whole layer (bit-identical)
# ------------------------------------------------------------------------------------------------

# (M, C, H, W, KH, KW, sh, sw, ph, pw)
GEOMETRIES = [
    (3, 2, 9, 8, 3, 3, 1, 1, 1, 1),
    (2, 3, 8, 8, 3, 3, 2, 2, 1, 1),
    (2, 3, 9, 7, 3, 2, 2, 1, 0, 2),
    (2, 4, 5, 5, 1, 1, 1, 1, 0, 0),
    (1, 2, 4, 6, 5, 3, 1, 3, 2, 1),  # kernel wider than some borders, stride 3
    (2, 1, 3, 3, 3, 3, 1, 1, 1, 1),
]


def _out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


@pytest.mark.parametrize("geom", GEOMETRIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_and_col2im_match_the_slice_loops(geom, dtype, threads):
    M, C, H, W, kh, kw, sh, sw, ph, pw = geom
    rng = np.random.default_rng(1)
    x = rng.standard_normal((M, C, H, W)).astype(dtype)
    oh, ow = _out(H, kh, sh, ph), _out(W, kw, sw, pw)
    cols = L._im2col(x, kh, kw, sh, sw, ph, pw, oh, ow)
    np.testing.assert_array_equal(cols, old_im2col(x, kh, kw, sh, sw, ph, pw, oh, ow))
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    L._run(K.col2im, C, dcols.size, dcols, sh, sw, ph, pw, dx)
    np.testing.assert_array_equal(dx, old_col2im(dcols, x.shape, sh, sw, ph, pw))


@pytest.mark.parametrize("geom", GEOMETRIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_layer_matches_numpy_formulation(geom, dtype, threads):
    """Bit-identical on one thread; a GEMM split into blocks over threads may round its edge
    blocks differently (OpenBLAS's edge kernels), so there to float rounding."""
    M, C, H, W, kh, kw, sh, sw, ph, pw = geom
    rng = np.random.default_rng(2)
    x = (rng.random((M, C, H, W)) < 0.3).astype(dtype)
    w = rng.standard_normal((4, C, kh, kw)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    if threads == 1:
        same = np.testing.assert_array_equal
    else:
        tol = 1e-12 if dtype == np.float64 else 1e-5

        def same(a, b):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)

    y, cache = L.conv2d_forward(x, {"weight": w, "bias": b}, (sh, sw), (ph, pw))
    oh, ow = _out(H, kh, sh, ph), _out(W, kw, sw, pw)
    cols = old_im2col(x, kh, kw, sh, sw, ph, pw, oh, ow).reshape(C * kh * kw, -1)
    y_old = (w.reshape(4, -1) @ cols).reshape(4, M, oh, ow).transpose(1, 0, 2, 3) + b.reshape(1, 4, 1, 1)
    same(y, y_old)
    assert y.dtype == dtype and y.flags.c_contiguous
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, g = L.conv2d_backward(dy, cache)
    dy2 = dy.transpose(1, 0, 2, 3).reshape(4, -1)
    dcols = (w.reshape(4, -1).T @ dy2).reshape(C, kh, kw, M, oh, ow)
    same(dx, old_col2im(dcols, x.shape, sh, sw, ph, pw))
    same(g["weight"], np.ascontiguousarray((cols @ dy2.T).T).reshape(w.shape))
    assert dx.dtype == dtype and g["weight"].dtype == dtype


# ------------------------------------------------------------------------------------------------
# max-pool (bit-identical, ties and -inf padding included)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,s,p", [((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)),
                                   ((3, 3), (1, 1), (1, 1)), ((3, 2), (1, 2), (1, 0)),
                                   ((2, 3), (3, 1), (1, 1))])
@pytest.mark.parametrize("data", ["spikes", "random", "negative"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_matches_numpy_formulation(k, s, p, data, dtype, threads):
    rng = np.random.default_rng(3)
    shape = (3, 2, 9, 8)
    if data == "spikes":  # many ties: the first maximum in window order must win
        x = (rng.random(shape) < 0.3).astype(dtype)
    elif data == "negative":  # padding (-inf) must never win
        x = -rng.random(shape).astype(dtype) - 1
    else:
        x = rng.standard_normal(shape).astype(dtype)
    y, cache = L.maxpool2d_forward(x, k, s, p)
    y_old, arg_old = old_maxpool_forward(x, *k, *s, *p)
    np.testing.assert_array_equal(y, y_old)
    np.testing.assert_array_equal(cache["arg"], arg_old)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, _ = L.maxpool2d_backward(dy, cache)
    np.testing.assert_array_equal(dx, old_maxpool_backward(dy, arg_old, x.shape, *k, *s, *p))


def test_maxpool_all_neg_inf_window_keeps_old_argmax():
    x = np.full((1, 1, 4, 4), -np.inf, np.float32)
    x[0, 0, 3, 3] = 1.0
    y, cache = L.maxpool2d_forward(x, 3, 2, 1)
    y_old, arg_old = old_maxpool_forward(x, 3, 3, 2, 2, 1, 1)
    np.testing.assert_array_equal(y, y_old)
    np.testing.assert_array_equal(cache["arg"], arg_old)
    dy = np.ones_like(y)
    np.testing.assert_array_equal(L.maxpool2d_backward(dy, cache)[0],
                                  old_maxpool_backward(dy, arg_old, x.shape, 3, 3, 2, 2, 1, 1))


# ------------------------------------------------------------------------------------------------
# BatchNorm (float64 sums: equal to rounding)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4, 5, 3), (8, 5, 7), (9, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_training_matches_numpy_formulation(shape, dtype, threads):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(dtype)
    C = shape[1]
    gamma = rng.standard_normal(C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    y, cache = L.batchnorm_forward(x, {"weight": gamma, "bias": beta}, None, training=True)
    y_old, xhat_old, _, _, invstd_old = old_bn_forward(x, gamma, beta, 1e-5)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else {"rtol": 2e-5, "atol": 2e-5}
    np.testing.assert_allclose(y, y_old, **tol)
    np.testing.assert_allclose(cache["xhat"], xhat_old, **tol)
    np.testing.assert_allclose(cache["invstd"], invstd_old, **tol)
    assert y.dtype == dtype and cache["invstd"].dtype == dtype
    dy = rng.standard_normal(shape).astype(dtype)
    dx, g = L.batchnorm_backward(dy, cache)
    dx_old, dg_old, db_old = old_bn_backward(dy, cache["xhat"], gamma, cache["invstd"])
    np.testing.assert_allclose(dx, dx_old, **tol)
    np.testing.assert_allclose(g["weight"], dg_old, **tol)
    np.testing.assert_allclose(g["bias"], db_old, **tol)
    assert dx.dtype == dtype and g["weight"].dtype == dtype and g["bias"].dtype == dtype


def test_batchnorm_running_stats_from_kernel_statistics():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 4)) * 2 + 0.5
    state = L.init_bn_state(3, np.float64)
    L.batchnorm_forward(x, {"weight": np.ones(3), "bias": np.zeros(3)}, state, momentum=0.1)
    _, _, mean, var, _ = old_bn_forward(x, np.ones(3), np.zeros(3), 1e-5)
    np.testing.assert_allclose(state["running_mean"], 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(state["running_var"], 0.9 + 0.1 * var * 24 / 23, rtol=1e-12)
    assert state["num_batches_tracked"] == 1


# ------------------------------------------------------------------------------------------------
# LIF (forward bit-identical; backward to rounding of exp)
# ------------------------------------------------------------------------------------------------

LIF_VARIANTS = [  # (tau, theta, v_reset, decay_input)
    (2.0, 1.0, 0.0, True), (3.0, 0.5, 0.0, True), (2.0, 1.0, -0.2, True), (2.0, 1.0, None, True),
    (2.0, 1.0, 0.0, False), (2.5, 1.0, 0.1, False), (2.0, 1.0, None, False),
]


@pytest.mark.parametrize("variant", LIF_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lif_matches_numpy_formulation(variant, dtype, threads):
    tau, theta, v_reset, decay_input = variant
    rng = np.random.default_rng(6)
    # a grid of values makes many membranes land exactly on the threshold
    x = (rng.integers(-8, 24, size=(7, 3, 5, 6)) / 8).astype(dtype)
    s, cache = L.lif_forward(x, tau=tau, theta=theta, v_reset=v_reset, decay_input=decay_input)
    s_old, h_old = old_lif_forward(x, tau, theta, v_reset, decay_input)
    np.testing.assert_array_equal(s, s_old)
    dt = np.dtype(dtype).type
    np.testing.assert_array_equal(cache["Z"], -(dt(4.0) * (h_old - dt(theta))))
    assert 0.02 < s.mean() < 0.98 and s.dtype == dtype
    ds = rng.standard_normal(x.shape).astype(dtype)
    dx, _ = L.lif_backward(ds, cache)
    dx_old = old_lif_backward(ds, h_old, s_old, tau, theta, 4.0, v_reset is not None, decay_input)
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(dx, dx_old, **tol)
    assert dx.dtype == dtype


def test_lif_on_a_non_contiguous_input():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4, 10)).transpose(0, 2, 1)
    s, cache = L.lif_forward(x)
    s_old, h_old = old_lif_forward(x, 2.0, 1.0, 0.0, True)
    np.testing.assert_array_equal(s, s_old)
    ds = rng.standard_normal(x.shape).transpose(0, 1, 2)
    np.testing.assert_allclose(L.lif_backward(ds, cache)[0],
                               old_lif_backward(ds, h_old, s_old, 2.0, 1.0, 4.0, True, True),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1x1_split_over_threads_matches_one_matmul(dtype, threads):
    rng = np.random.default_rng(8)
    x = (rng.random((5, 6, 7)) < 0.4).astype(dtype)
    w = rng.standard_normal((4, 6, 1)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    y, cache = L.conv1x1_forward(x, {"weight": w})
    np.testing.assert_allclose(y, np.matmul(w[:, :, 0], x), rtol=tol, atol=tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, g = L.conv1x1_backward(dy, cache)
    np.testing.assert_allclose(dx, np.matmul(w[:, :, 0].T, dy), rtol=tol, atol=tol)
    np.testing.assert_allclose(g["weight"][:, :, 0], np.einsum("mon,min->oi", dy, x),
                               rtol=tol, atol=tol)


def test_batchnorm_float32_one_pass_variance_with_a_large_mean():
    """float32 statistics come from one pass of float64 sums of x and x^2: with a mean 10^4
    standard deviations away from 0 the variance still matches a float64 two-pass reference."""
    rng = np.random.default_rng(9)
    x = (100.0 + 0.01 * rng.standard_normal((64, 3, 50))).astype(np.float32)
    y, cache = L.batchnorm_forward(x, {"weight": np.ones(3, np.float32),
                                       "bias": np.zeros(3, np.float32)}, None, training=True)
    x64 = x.astype(np.float64)
    var64 = x64.var(axis=(0, 2))
    np.testing.assert_allclose(1.0 / cache["invstd"].astype(np.float64) ** 2 - 1e-5, var64, rtol=1e-4)
    np.testing.assert_allclose(y, (x64 - x64.mean(axis=(0, 2), keepdims=True))
                               / np.sqrt(var64[None, :, None] + 1e-5), rtol=1e-3, atol=1e-3)
