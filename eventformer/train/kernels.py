"""Numba kernels of the numpy trainer: the memory-bound halves of its layers, one pass each.

The trainer's GEMMs stay with BLAS (numpy ``@``); these kernels do the rest, which numpy spends
many passes and temporaries on: im2col / col2im around the convolution GEMMs, max-pool with its
argmax, the BatchNorm statistics and normalisation, and the LIF's multi-step forward and BPTT with
the sigmoid surrogate. Each is tested against the plain-numpy formulation it replaced
(``tests/test_train_kernels.py``).

Every kernel works on a range ``[lo, hi)`` of one axis (channels, samples or neurons) and writes
only that part of its outputs, so :mod:`eventformer.train.layers` can run disjoint ranges on
several threads at once (the kernels release the GIL).

Row copies index with unsigned offsets: with a signed index Numba emits a negative-index
wraparound test per element, which keeps LLVM from vectorising the loop (measured 2-3x slower).

Arithmetic stays in the dtype of the arrays (float32 or float64): scalar parameters arrive in a
small array of that dtype (a Python float would make Numba compute in float64). Where the old
numpy code summed in a given order (col2im, max-pool backward) the kernels sum in the same order,
so they are bit-identical; the BatchNorm statistics accumulate in float64 (numpy summed in the
array's dtype), so they differ from it by float32 rounding only. Compiled with the project's
options (:mod:`eventformer.jit`): no fastmath (the LIF must round as SPEC §1 writes it), no
``parallel``.
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from ..jit import kernel

__all__ = [
    "bn_backward_train",
    "bn_forward_train",
    "col2im",
    "im2col",
    "lif_backward",
    "lif_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
]

# LIF variants (``mode``) and the layout of their ``params`` array
LIF_DECAY_HARD = 0  # H = V + (X - (V - v_reset)) / tau, hard reset
LIF_DECAY_ZERO = 1  # H = V + (X - V) / tau (v_reset 0, or soft reset)
LIF_NODECAY_HARD = 2  # H = V - (V - v_reset) / tau + X, hard reset
LIF_NODECAY_SOFT = 3  # H = V * (1 - 1/tau) + X, soft reset
P_INV_TAU, P_KEEP, P_THETA, P_V_RESET, P_ALPHA = range(5)


def _valid_range(n_out, stride, pad, offset, size):
    """Outputs ``o`` in [lo, hi) whose input position ``o * stride - pad + offset`` lies in
    [0, size)."""
    lo = 0
    first = pad - offset  # o * stride >= first
    if first > 0:
        lo = (first + stride - 1) // stride
    last = size - 1 + pad - offset  # o * stride <= last
    hi = last // stride + 1 if last >= 0 else 0
    hi = min(hi, n_out)
    lo = min(lo, hi)
    return lo, hi


_valid = kernel(_valid_range)


@kernel
def im2col(x, kh, kw, sh, sw, ph, pw, cols, lo, hi):
    """Convolution columns of an implicitly zero-padded input, in the trainer's GEMM layout.

    ``cols[c, i, j, m, oh, ow] = x[m, c, oh*sh - ph + i, ow*sw - pw + j]``, 0 outside ``x`` (the
    padding is never materialised), for the channels ``lo <= c < hi``.

    Parameters
    ----------
    x : float32|float64[M, C, H, W], C-contiguous
        The convolution's input.
    kh, kw : int
        Kernel height and width.
    sh, sw : int
        Strides.
    ph, pw : int
        Zero padding on each side.
    cols : float32|float64[C, KH, KW, M, OH, OW], C-contiguous, the dtype of ``x``, written
        The columns (every element of channels lo..hi-1 is written).
    lo, hi : int
        The channel range.

    Returns
    -------
    None
    """
    M, C, H, W = x.shape
    OH, OW = cols.shape[4], cols.shape[5]
    xf = x.ravel()
    cf = cols.ravel()
    for c in range(lo, hi):
        for i in range(kh):
            oh_lo, oh_hi = _valid(OH, sh, ph, i, H)
            for j in range(kw):
                ow_lo, ow_hi = _valid(OW, sw, pw, j, W)
                n = uint64(ow_hi - ow_lo)
                n_lo = uint64(ow_lo)
                n_hi = uint64(OW - ow_hi)
                for m in range(M):
                    dst0 = (((c * kh + i) * kw + j) * M + m) * OH * OW
                    src0 = (m * C + c) * H * W
                    for oh in range(OH):
                        d = uint64(dst0 + oh * OW)
                        if oh < oh_lo or oh >= oh_hi:
                            for k in range(uint64(OW)):
                                cf[d + k] = 0
                            continue
                        for k in range(n_lo):
                            cf[d + k] = 0
                        d_hi = d + uint64(ow_hi)
                        for k in range(n_hi):
                            cf[d_hi + k] = 0
                        src = uint64(src0 + (oh * sh - ph + i) * W + ow_lo * sw + j - pw)
                        d_in = d + n_lo
                        if sw == 1:
                            for k in range(n):
                                cf[d_in + k] = xf[src + k]
                        else:
                            su = uint64(sw)
                            for k in range(n):
                                cf[d_in + k] = xf[src + k * su]


@kernel
def col2im(dcols, sh, sw, ph, pw, dx, lo, hi):
    """Gradient of :func:`im2col`: each input position sums the columns that read it.

    ``dx[m, c, h, w] = sum over (i, j) in row-major kernel order of dcols[c, i, j, m, oh, ow]``
    with ``oh*sh - ph + i = h`` and ``ow*sw - pw + j = w``, summed from 0 in that order (the order
    of the per-offset slice adds it replaces, so bit-identical to them), for ``lo <= c < hi``.

    Parameters
    ----------
    dcols : float32|float64[C, KH, KW, M, OH, OW], C-contiguous
        Gradient of the columns.
    sh, sw : int
        Strides.
    ph, pw : int
        Zero padding on each side (gradient that falls on the padding is dropped).
    dx : float32|float64[M, C, H, W], C-contiguous, the dtype of ``dcols``, written
        Gradient of the convolution's input (every element of channels lo..hi-1 is written).
    lo, hi : int
        The channel range.

    Returns
    -------
    None
    """
    C, KH, KW, M, OH, OW = dcols.shape
    H, W = dx.shape[2], dx.shape[3]
    cf = dcols.ravel()
    xf = dx.ravel()
    for c in range(lo, hi):
        for m in range(M):
            p0 = (m * C + c) * H * W
            for h in range(H):
                drow = uint64(p0 + h * W)
                for k in range(uint64(W)):
                    xf[drow + k] = 0
                for i in range(KH):
                    t = h + ph - i
                    if t < 0:
                        break
                    if t % sh:
                        continue
                    oh = t // sh
                    if oh >= OH:
                        continue
                    for j in range(KW):
                        ow_lo, ow_hi = _valid(OW, sw, pw, j, W)
                        n = uint64(ow_hi - ow_lo)
                        src = uint64(((((c * KH + i) * KW + j) * M + m) * OH + oh) * OW + ow_lo)
                        d = drow + uint64(ow_lo * sw + j - pw)
                        if sw == 1:
                            for k in range(n):
                                xf[d + k] += cf[src + k]
                        else:
                            su = uint64(sw)
                            for k in range(n):
                                xf[d + k * su] += cf[src + k]


@kernel
def maxpool2d_forward(x, kh, kw, sh, sw, ph, pw, y, arg, lo, hi):
    """Max-pool with ``-inf`` padding; the argmax is the first maximum in row-major window order.

    A window's running maximum starts at its first position (``-inf`` if that is padding) and is
    replaced only by a strictly greater value, as the old candidate-by-candidate numpy code did
    (NaN and all ``-inf`` windows included). Samples ``lo <= m < hi``.

    Parameters
    ----------
    x : float32|float64[M, C, H, W], C-contiguous
        The input.
    kh, kw : int
        Window height and width.
    sh, sw : int
        Strides.
    ph, pw : int
        Padding on each side (at most half the window).
    y : float32|float64[M, C, OH, OW], the dtype of ``x``, written
        The maxima.
    arg : int16[M, C, OH, OW], written
        Position of each maximum in its window, ``i * kw + j``.
    lo, hi : int
        The sample range.

    Returns
    -------
    None
    """
    _, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    ninf = x.dtype.type(-np.inf)
    for m in range(lo, hi):
        for c in range(C):
            for oh in range(OH):
                r0 = oh * sh - ph
                rows_inside = r0 >= 0 and r0 + kh <= H
                for ow in range(OW):
                    c0 = ow * sw - pw
                    if rows_inside and c0 >= 0 and c0 + kw <= W:  # no padding in the window
                        best = x[m, c, r0, c0]
                        k = 0
                        for i in range(kh):
                            for j in range(kw):
                                v = x[m, c, r0 + i, c0 + j]
                                if v > best:
                                    best = v
                                    k = i * kw + j
                        y[m, c, oh, ow] = best
                        arg[m, c, oh, ow] = k
                        continue
                    best = x[m, c, r0, c0] if (0 <= r0 < H and 0 <= c0 < W) else ninf
                    k = 0
                    for i in range(kh):
                        r = r0 + i
                        for j in range(kw):
                            if i == 0 and j == 0:
                                continue
                            cc = c0 + j
                            if r < 0 or r >= H or cc < 0 or cc >= W:
                                v = ninf
                            else:
                                v = x[m, c, r, cc]
                            if v > best:
                                best = v
                                k = i * kw + j
                    y[m, c, oh, ow] = best
                    arg[m, c, oh, ow] = k


@kernel
def maxpool2d_backward(dy, arg, kh, kw, sh, sw, ph, pw, dx, lo, hi):
    """Gradient of :func:`maxpool2d_forward`: each input sums the ``dy`` of the windows whose
    argmax it is, from 0 in row-major window-offset order (bit-identical to the per-offset adds
    it replaces). Samples ``lo <= m < hi``.

    Offsets (i, j) ascending are windows (oh, ow) descending, so one scatter pass over the
    windows in reverse order adds in that same order.

    Parameters
    ----------
    dy : float32|float64[M, C, OH, OW], C-contiguous
        Gradient of the maxima.
    arg : int16[M, C, OH, OW]
        The argmax positions from the forward.
    kh, kw : int
        Window height and width.
    sh, sw : int
        Strides.
    ph, pw : int
        Padding on each side.
    dx : float32|float64[M, C, H, W], the dtype of ``dy``, written
        Gradient of the input (every element of samples lo..hi-1 is written).
    lo, hi : int
        The sample range.

    Returns
    -------
    None
    """
    _, C, OH, OW = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    for m in range(lo, hi):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    dx[m, c, h, w] = 0
            for oh in range(OH - 1, -1, -1):
                for ow in range(OW - 1, -1, -1):
                    k = arg[m, c, oh, ow]
                    i = k // kw
                    r = oh * sh - ph + i
                    cc = ow * sw - pw + (k - i * kw)
                    if 0 <= r < H and 0 <= cc < W:
                        dx[m, c, r, cc] += dy[m, c, oh, ow]


@kernel
def bn_forward_train(x, gamma, beta, eps, mean, var, invstd, xhat, y, lo, hi):
    """BatchNorm in training mode over ``x [M, C, S]``: batch statistics per channel, then
    ``xhat = (x - mean) * invstd`` and ``y = xhat * gamma + beta``, for channels ``lo..hi-1``.

    The mean and the biased variance are summed in float64 and rounded once to the dtype (float32:
    one pass of sums of x and x^2; float64: two passes, the variance of ``x - mean``);
    ``invstd = 1 / sqrt(var + eps)`` in the dtype.

    Parameters
    ----------
    x : float32|float64[M, C, S], C-contiguous
        The input (channel axis 1, every other axis folded into M and S).
    gamma, beta : float32|float64[C], the dtype of ``x``
        Scale and shift.
    eps : float32|float64[1], the dtype of ``x``
        Added to the variance.
    mean, var, invstd : float32|float64[C], the dtype of ``x``, written
        Batch mean, biased batch variance and ``1 / sqrt(var + eps)``.
    xhat, y : float32|float64[M, C, S], the dtype of ``x``, written
        Normalised input and output.
    lo, hi : int
        The channel range.

    Returns
    -------
    None
    """
    M, C, S = x.shape
    n = M * S
    acc = np.zeros(C, np.float64)
    acc2 = np.zeros(C, np.float64)
    if x.itemsize == 4:
        # float32: one pass of float64 sums of x and x*x (each product exact in float64); the
        # cancellation in E[x^2] - mean^2 costs ~2^-52 * mean^2 / var, far below float32's eps
        for m in range(M):
            for c in range(lo, hi):
                s = 0.0
                s2 = 0.0
                for k in range(S):
                    v = np.float64(x[m, c, k])
                    s += v
                    s2 += v * v
                acc[c] += s
                acc2[c] += s2
        for c in range(lo, hi):
            mu = acc[c] / n
            mean[c] = mu
            var[c] = max(acc2[c] / n - mu * mu, 0.0)
    else:
        # float64: two passes (the variance of x - mean), no cancellation
        for m in range(M):
            for c in range(lo, hi):
                s = 0.0
                for k in range(S):
                    s += x[m, c, k]
                acc[c] += s
        for c in range(lo, hi):
            mean[c] = acc[c] / n
        for m in range(M):
            for c in range(lo, hi):
                mu = mean[c]
                s = 0.0
                for k in range(S):
                    d = x[m, c, k] - mu
                    s += d * d
                acc2[c] += s
        for c in range(lo, hi):
            var[c] = acc2[c] / n
    one = x.dtype.type(1)
    for c in range(lo, hi):
        invstd[c] = one / np.sqrt(var[c] + eps[0])
    for m in range(M):
        for c in range(lo, hi):
            mu = mean[c]
            inv = invstd[c]
            g = gamma[c]
            b = beta[c]
            for k in range(S):
                xh = (x[m, c, k] - mu) * inv
                xhat[m, c, k] = xh
                y[m, c, k] = xh * g + b


@kernel
def bn_backward_train(dy, xhat, gamma, invstd, dgamma, dbeta, dx, lo, hi):
    """Gradient of :func:`bn_forward_train` (through the batch statistics too), channels
    ``lo..hi-1``.

    ``dgamma = sum(dy * xhat)`` and ``dbeta = sum(dy)`` per channel (float64 sums, rounded once),
    then ``dx = (gamma * invstd) * (dy - dbeta / n - xhat * (dgamma / n))`` in the dtype, in the
    order of the numpy formulation.

    Parameters
    ----------
    dy : float32|float64[M, C, S], C-contiguous
        Gradient of the output.
    xhat : float32|float64[M, C, S], the dtype of ``dy``
        Normalised input from the forward.
    gamma, invstd : float32|float64[C], the dtype of ``dy``
        Scale and ``1 / sqrt(var + eps)`` from the forward.
    dgamma, dbeta : float32|float64[C], the dtype of ``dy``, written
        Parameter gradients.
    dx : float32|float64[M, C, S], the dtype of ``dy``, written
        Gradient of the input.
    lo, hi : int
        The channel range.

    Returns
    -------
    None
    """
    M, C, S = dy.shape
    n = M * S
    sg = np.zeros(C, np.float64)
    sb = np.zeros(C, np.float64)
    for m in range(M):
        for c in range(lo, hi):
            a = 0.0
            b = 0.0
            for k in range(S):
                g = dy[m, c, k]
                a += g * xhat[m, c, k]
                b += g
            sg[c] += a
            sb[c] += b
    for c in range(lo, hi):
        dgamma[c] = sg[c]
        dbeta[c] = sb[c]
    nn = dy.dtype.type(n)
    for m in range(M):
        for c in range(lo, hi):
            gi = gamma[c] * invstd[c]
            mb = dbeta[c] / nn
            mg = dgamma[c] / nn
            for k in range(S):
                dx[m, c, k] = gi * (dy[m, c, k] - mb - xhat[m, c, k] * mg)


@kernel
def lif_forward(x, params, mode, z_out, s_out, lo, hi):
    """Multi-step LIF (SPEC §1) from V = 0 over ``x [T, K]``: spikes S (0/1) and the surrogate's
    argument ``Z = -(alpha * (H - theta))`` of the membranes H, for the neurons ``lo <= k < hi``.

    Per step, in exactly this order of float operations (``params`` rounded to the dtype):
    ``mode`` 0: ``H = V + (X - (V - v_reset)) * inv_tau``, 1: ``H = V + (X - V) * inv_tau``,
    2: ``H = V - (V - v_reset) * inv_tau + X``, 3: ``H = V * keep + X``; ``S = H >= theta``;
    the reset is hard (``V = v_reset if S else H``) unless ``params[P_V_RESET]`` is NaN or the
    mode is 3 (soft: ``V = H - S * theta``).

    Parameters
    ----------
    x : float32|float64[T, K], C-contiguous
        Input currents, time-major.
    params : float32|float64[5], the dtype of ``x``
        ``inv_tau, keep (1 - 1/tau), theta, v_reset (NaN: soft reset), alpha``.
    mode : int
        The membrane update (0-3, above).
    z_out, s_out : float32|float64[T, K], the dtype of ``x``, written
        ``-(alpha * (H - theta))`` of the membranes before the reset (what the backward's
        ``exp`` needs, so it makes no pass of its own), and spikes.
    lo, hi : int
        The neuron range.

    Returns
    -------
    None
    """
    T = x.shape[0]
    inv_tau = params[P_INV_TAU]
    keep = params[P_KEEP]
    th = params[P_THETA]
    vr = params[P_V_RESET]
    alpha = params[P_ALPHA]
    soft = np.isnan(vr) or mode == LIF_NODECAY_SOFT
    one = x.dtype.type(1)
    zero = x.dtype.type(0)
    v = np.zeros(hi - lo, x.dtype)
    base = uint64(lo)
    for t in range(T):
        for q in range(uint64(hi - lo)):
            k = base + q
            vk = v[q]
            if mode == LIF_DECAY_HARD:
                h = vk + (x[t, k] - (vk - vr)) * inv_tau
            elif mode == LIF_DECAY_ZERO:
                h = vk + (x[t, k] - vk) * inv_tau
            elif mode == LIF_NODECAY_HARD:
                h = vk - (vk - vr) * inv_tau + x[t, k]
            else:
                h = vk * keep + x[t, k]
            fire = h >= th
            sp = one if fire else zero
            z_out[t, k] = -(alpha * (h - th))
            s_out[t, k] = sp
            if soft:
                v[q] = h - sp * th
            else:
                v[q] = vr if fire else h


@kernel
def lif_backward(ds, e, s, params, hard, decay_input, dx, lo, hi):
    """BPTT through :func:`lif_forward` with the sigmoid surrogate and the reset detached, for
    the neurons ``lo <= k < hi``.

    ``sg = alpha * sig * (1 - sig)``, ``sig = 1 / (1 + e)`` with ``e = exp(Z)``,
    ``Z = -(alpha * (H - theta))`` from :func:`lif_forward`, computed beforehand by numpy's
    vectorised ``exp`` (a scalar ``exp`` here is ten times slower);
    backwards over t: ``dH = dS * sg + dV * (1 - S)`` (hard) or ``+ dV`` (soft);
    ``dX = dH * inv_tau`` and ``dV = dH - dH * inv_tau`` (decay_input), else ``dX = dH`` and
    ``dV = dH - dH * inv_tau`` (hard) or ``dH * keep`` (soft); the order of float operations of
    the numpy formulation.

    Parameters
    ----------
    ds : float32|float64[T, K], C-contiguous
        Gradient of the spikes.
    e : float32|float64[T, K], the dtype of ``ds``
        ``exp(-(alpha * (H - theta)))`` of the forward's membranes H (``exp(Z)``).
    s : float32|float64[T, K], the dtype of ``ds``
        Spikes from the forward.
    params : float32|float64[5], the dtype of ``ds``
        ``inv_tau, keep, theta, v_reset, alpha`` as for :func:`lif_forward`.
    hard : bool
        Hard reset (else soft).
    decay_input : bool
        The input decays with 1/tau (SpikingJelly's decay_input).
    dx : float32|float64[T, K], the dtype of ``ds``, written
        Gradient of the input currents.
    lo, hi : int
        The neuron range.

    Returns
    -------
    None
    """
    T = ds.shape[0]
    inv_tau = params[P_INV_TAU]
    keep = params[P_KEEP]
    alpha = params[P_ALPHA]
    one = ds.dtype.type(1)
    dv = np.zeros(hi - lo, ds.dtype)
    base = uint64(lo)
    for t in range(T - 1, -1, -1):
        for q in range(uint64(hi - lo)):
            k = base + q
            sig = one / (one + e[t, k])
            sg = alpha * sig * (one - sig)
            if hard:
                dh = ds[t, k] * sg + dv[q] * (one - s[t, k])
            else:
                dh = ds[t, k] * sg + dv[q]
            if decay_input:
                dx[t, k] = dh * inv_tau
                dv[q] = dh - dh * inv_tau
            else:
                dx[t, k] = dh
                if hard:
                    dv[q] = dh - dh * inv_tau
                else:
                    dv[q] = dh * keep
