"""SAFormer's attention core (SPEC §4, SASA + DWC) over spike lists, without a V branch.

Per block: Q and K are pooled over the token axis to L rows (adaptive average pooling, PyTorch's
rule: row l averages tokens floor(l N / L) .. ceil((l + 1) N / L) - 1), the channel gate is
a = sum_l Qa[l] * Ka[l] (a in R^D), and

    Y = scale * (K * a) + DWC(K)

with DWC a depthwise 3x3 convolution (padding 1; BatchNorm folded into its weights and a
per-channel bias) over the token grid, token n = row * side + col. The DWC is a scatter: each
active key site adds its channel's taps to its neighbours, so its work follows the spikes.
"""

import numpy as np

from ..jit import kernel
from .counters import AC, INPUT_EVENTS, MAC


@kernel
def depthwise3x3_scatter(idx, grid_h, grid_w, dim, weight, out, counters):
    """Add a depthwise conv of the spike list ``idx`` into the dense ``out`` (in place).

    Cross-correlation with "same" zero padding (KH // 2, KW // 2: 1 for a 3x3 kernel), as
    PyTorch's ``conv2d(..., padding=1, groups=dim)``: output (y, x, c) sums
    ``weight[c, ky, kx] * in[y + ky - pad, x + kx - pad, c]``. Scatter form: an input spike at
    (iy, ix, c) adds ``weight[c, ky, kx]`` to output (iy - ky + pad, ix - kx + pad, c) for every
    tap that lands inside the grid. Taps that fall outside are neither done nor counted.

    Parameters
    ----------
    idx : int32[n], sorted ascending, each site once
        Spikes over the [grid_h * grid_w tokens, dim] map, flat ``(y * grid_w + x) * dim + c``
        (token n = y * grid_w + x).
    grid_h : int
        Rows of the token grid.
    grid_w : int
        Columns of the token grid.
    dim : int
        Channels D.
    weight : float32|float64[dim, KH, KW], KH and KW odd, the dtype of ``out``
        The depthwise kernel per channel (torch's [D, 1, KH, KW] without its singleton axis).
    out : float32|float64[grid_h * grid_w * dim], modified in place
        The flat [token, channel] output, added to (not cleared: fill it with the bias first).
    counters : int64[N_COUNTERS], incremented in place
        ``AC`` += the taps added (one per spike and valid tap), ``INPUT_EVENTS`` += n.

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    kh = weight.shape[1]
    kw = weight.shape[2]
    ph = kh // 2
    pw = kw // 2
    ops = 0
    for e in range(idx.shape[0]):
        site = idx[e]
        n = site // dim
        c = site - n * dim
        iy = n // grid_w
        ix = n - iy * grid_w
        for ky in range(kh):
            oy = iy - ky + ph
            if oy < 0 or oy >= grid_h:
                continue
            for kx in range(kw):
                ox = ix - kx + pw
                if ox < 0 or ox >= grid_w:
                    continue
                o = (oy * grid_w + ox) * dim + c
                out[o] = out[o] + weight[c, ky, kx]
                ops += 1
    counters[AC] += ops
    counters[INPUT_EVENTS] += idx.shape[0]


@kernel
def saformer_step(q_idx, k_idx, n_tokens, dim, grid_w, pool_rows, dwc_weight, dwc_bias,
                  scale_arr, out, counters):
    """Write SAFormer's Y = scale * (K * a) + DWC(K) into the dense ``out``.

    ``out`` is filled with the DWC bias, the DWC scattered in (:func:`depthwise3x3_scatter`),
    then, when both Q and K have spikes (otherwise the gate term is zero and nothing of it is
    computed), the gate: spike counts of Q and K per pooled row and channel, their averages
    Qa = count / rows and Ka in ``out``'s dtype (a division, as PyTorch's pool), a[c] = sum over
    l ascending of Qa[l, c] * Ka[l, c], s[c] = scale * a[c], and s[c] added to every active key
    site (y, x, c): ``out = DWC(K) + scale * (K * a)``, each rounding in ``out``'s dtype.

    Parameters
    ----------
    q_idx : int32[nq], sorted ascending, each site once
        Query spikes over [n_tokens, dim], flat ``token * dim + c``.
    k_idx : int32[nk], sorted ascending, each site once
        Key spikes, the same layout.
    n_tokens : int
        Tokens N = grid_h * grid_w (token n = y * grid_w + x).
    dim : int
        Channels D.
    grid_w : int
        Columns of the token grid (rows: n_tokens // grid_w).
    pool_rows : int
        L, the pooled rows (adaptive average pooling over the token axis, 1 <= L).
    dwc_weight : float32|float64[dim, 3, 3], the dtype of ``out``
        The depthwise conv's folded weights.
    dwc_bias : float32|float64[dim], the dtype of ``out``
        The depthwise conv's folded per-channel bias.
    scale_arr : float32|float64[1], the dtype of ``out``
        The scale, in an array so that the product is computed in ``out``'s dtype.
    out : float32|float64[n_tokens * dim], overwritten
        The flat [token, channel] current Y, every entry written.
    counters : int64[N_COUNTERS], incremented in place
        ``AC`` += the DWC taps (see :func:`depthwise3x3_scatter`) and, when the gate is
        computed, one per (spike of Q or K, pooled row holding its token) for the pooling counts
        plus one per K spike for the gate term; ``MAC`` += 3 L D + D for the gate (2 L D
        averages, L D products, D products with scale); ``INPUT_EVENTS`` += nq + nk.

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    for n in range(n_tokens):
        for c in range(dim):
            out[n * dim + c] = dwc_bias[c]
    depthwise3x3_scatter(k_idx, n_tokens // grid_w, grid_w, dim, dwc_weight, out, counters)
    counters[INPUT_EVENTS] += q_idx.shape[0]
    nq = q_idx.shape[0]
    nk = k_idx.shape[0]
    if nq == 0 or nk == 0:
        return
    rows = pool_rows
    start = np.empty(rows, np.int64)
    stop = np.empty(rows, np.int64)
    width = np.empty(rows, out.dtype)
    for r in range(rows):
        start[r] = (r * n_tokens) // rows
        stop[r] = ((r + 1) * n_tokens + rows - 1) // rows
        width[r] = stop[r] - start[r]
    cq = np.zeros((rows, dim), np.int64)
    ck = np.zeros((rows, dim), np.int64)
    ops = 0
    for e in range(nq):
        n = q_idx[e] // dim
        c = q_idx[e] - n * dim
        for r in range(rows):
            if start[r] <= n < stop[r]:
                cq[r, c] += 1
                ops += 1
    for e in range(nk):
        n = k_idx[e] // dim
        c = k_idx[e] - n * dim
        for r in range(rows):
            if start[r] <= n < stop[r]:
                ck[r, c] += 1
                ops += 1
    qa = np.empty(1, out.dtype)
    ka = np.empty(1, out.dtype)
    gate = np.zeros(dim, out.dtype)
    scale = scale_arr[0]
    for c in range(dim):
        for r in range(rows):
            qa[0] = cq[r, c]
            ka[0] = ck[r, c]
            gate[c] = gate[c] + (qa[0] / width[r]) * (ka[0] / width[r])
        gate[c] = scale * gate[c]
    for e in range(nk):
        site = k_idx[e]
        c = site % dim
        out[site] = out[site] + gate[c]
    ops += nk
    counters[AC] += ops
    counters[MAC] += 3 * rows * dim + dim
