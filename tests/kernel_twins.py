"""Naive numpy twins of the Numba kernels in :mod:`eventformer.kernels`.

Each twin computes the same thing as its kernel written the plain way: dense arrays, torch-style
layouts where natural ([C, H, W] maps, [Cout, Cin, KH, KW] weights), obvious loops. They share no
code with the kernels, so a test that compares the two checks both the arithmetic and the layout
conventions. Op counts follow SPEC §5 and are derived here from the dense geometry (which input
sites feed which outputs), not from the kernels' per-event tap walk.

Helpers at the bottom convert between the kernels' event lists (sorted flat indices into a
channel-innermost map plus multiplicities) and dense arrays.
"""

import numpy as np

# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def conv_out_size(size, k, stride, pad):
    """PyTorch's output size (floor mode)."""
    return (size + 2 * pad - k) // stride + 1


def conv_fanout(h, w, kh, kw, stride, pad):
    """fanout[y, x] = number of (output position, tap) pairs that read input site (y, x).

    Built by walking every output position and every tap, the way a dense convolution reads its
    input, so it is independent of the kernels' "which outputs does this input reach" arithmetic.
    Taps that land in the padding read nothing and are not counted.
    """
    ho = conv_out_size(h, kh, stride, pad)
    wo = conv_out_size(w, kw, stride, pad)
    fan = np.zeros((h, w), np.int64)
    for oy in range(ho):
        for ox in range(wo):
            for ky in range(kh):
                iy = oy * stride - pad + ky
                if not 0 <= iy < h:
                    continue
                for kx in range(kw):
                    ix = ox * stride - pad + kx
                    if 0 <= ix < w:
                        fan[iy, ix] += 1
    return fan


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------


def conv2d(x, weight, stride, pad, bias=None):
    """Dense 2-D cross-correlation: x [Cin, H, W], weight [Cout, Cin, KH, KW] -> [Cout, Ho, Wo].

    Zero padding, PyTorch semantics. Accumulates in the dtype of ``weight``.
    """
    cin, h, w = x.shape
    cout, cin_w, kh, kw = weight.shape
    assert cin == cin_w
    ho = conv_out_size(h, kh, stride, pad)
    wo = conv_out_size(w, kw, stride, pad)
    dt = weight.dtype
    xp = np.zeros((cin, h + 2 * pad, w + 2 * pad), dt)
    xp[:, pad:pad + h, pad:pad + w] = x
    out = np.zeros((cout, ho, wo), dt)
    if bias is not None:
        out += np.asarray(bias, dt)[:, None, None]
    for oy in range(ho):
        for ox in range(wo):
            patch = xp[:, oy * stride:oy * stride + kh, ox * stride:ox * stride + kw]
            for co in range(cout):
                out[co, oy, ox] += np.sum(patch * weight[co], dtype=dt)
    return out


def conv2d_ops(x, kh, kw, cout, stride, pad, weighted):
    """SPEC §5 op count of an event-driven convolution of the dense count map x [Cin, H, W].

    Not weighted (spikes, integer residual values): ac = sum over events of multiplicity x valid
    taps x Cout. Weighted (raw counts into the first layer): mac = events x valid taps x Cout.
    """
    _, h, w = x.shape
    fan = conv_fanout(h, w, kh, kw, stride, pad)
    xi = np.asarray(x).astype(np.int64)
    if weighted:
        return int(np.sum((xi != 0) * fan[None]) * cout)
    return int(np.sum(xi * fan[None]) * cout)


# --------------------------------------------------------------------------------------------
# linear (token-wise 1x1)
# --------------------------------------------------------------------------------------------


def linear(x, weight):
    """x [N, Cin] @ weight [Cin, Cout] -> [N, Cout], plain loops over the contraction."""
    n, cin = x.shape
    out = np.zeros((n, weight.shape[1]), weight.dtype)
    for c in range(cin):
        out += np.outer(x[:, c].astype(weight.dtype), weight[c])
    return out


def linear_ops(cnt, cout, weighted):
    """ac = sum(cnt) x Cout; mac = events x Cout when weighted."""
    cnt = np.asarray(cnt, np.int64)
    if weighted:
        return int(cnt.shape[0]) * cout
    return int(cnt.sum()) * cout


# --------------------------------------------------------------------------------------------
# LIF neuron
# --------------------------------------------------------------------------------------------


def lif(v, x, tau_inv, theta, v_reset, hard_reset, decay_input):
    """One LIF step, element by element, all arithmetic in the dtype of ``v``.

    Returns (new v, spike mask, neuron_updates). ``v_reset`` is ignored for a soft reset.
    decay_input True:  H = V + (X - (V - v_reset)) * (1/tau)  (hard; v_reset 0: V + (X - V)/tau)
                       H = V + (X - V) * (1/tau)              (soft)
    decay_input False: H = V - (V - v_reset) * (1/tau) + X    (hard)
                       H = V * (1 - 1/tau) + X                (soft)
    S = H >= theta; hard: V = v_reset on a spike, soft: V = H - theta on a spike.
    """
    dt = v.dtype.type
    inv = dt(tau_inv)
    th = dt(theta)
    vr = dt(v_reset)
    keep = dt(dt(1.0) - inv)
    new_v = np.empty_like(v)
    spikes = np.zeros(v.shape, bool)
    for i in range(v.shape[0]):
        vi = dt(v[i])
        xi = dt(x[i])
        if decay_input and hard_reset:
            h = dt(vi + dt(dt(xi - dt(vi - vr)) * inv))
        elif decay_input:
            h = dt(vi + dt(dt(xi - vi) * inv))
        elif hard_reset:
            h = dt(dt(vi - dt(dt(vi - vr) * inv)) + xi)
        else:
            h = dt(dt(vi * keep) + xi)
        s = bool(h >= th)
        spikes[i] = s
        if s:
            new_v[i] = vr if hard_reset else dt(h - th)
        else:
            new_v[i] = h
    return new_v, spikes, v.shape[0]


def lif_periodic(v, period, tau_inv, theta, v_reset, hard_reset, decay_input):
    """:func:`lif` on a current that repeats every ``len(period)`` neurons (neuron i gets
    ``period[i % len(period)]``), spelled out densely. Also returns whether the step was still:
    no spike and every membrane at its old value.

    Returns (new v, spike mask, neuron_updates, still).
    """
    x = np.resize(np.asarray(period, v.dtype), v.shape[0])  # repeats the period
    new_v, spikes, updates = lif(v, x, tau_inv, theta, v_reset, hard_reset, decay_input)
    still = not spikes.any() and bool(np.all(new_v == v))
    return new_v, spikes, updates, still


# --------------------------------------------------------------------------------------------
# index-list plumbing
# --------------------------------------------------------------------------------------------


def maxpool2d(x, k, stride, pad):
    """Dense max-pool of x [C, H, W] with -inf padding (PyTorch semantics, floor mode)."""
    c, h, w = x.shape
    ho = conv_out_size(h, k, stride, pad)
    wo = conv_out_size(w, k, stride, pad)
    xp = np.full((c, h + 2 * pad, w + 2 * pad), -np.inf)
    xp[:, pad:pad + h, pad:pad + w] = x
    out = np.empty((c, ho, wo))
    for oy in range(ho):
        for ox in range(wo):
            win = xp[:, oy * stride:oy * stride + k, ox * stride:ox * stride + k]
            out[:, oy, ox] = win.reshape(c, -1).max(axis=1)
    return out


def maxpool2d_maxima(c, h, w, k, stride, pad):
    """The window maxima a dense max-pool of a [C, H, W] map forms: one per channel and window
    holding a value of the map (PyTorch's windows, floor mode)."""
    formed = 0
    for oy in range(conv_out_size(h, k, stride, pad)):
        for ox in range(conv_out_size(w, k, stride, pad)):
            rows = [y for y in range(oy * stride - pad, oy * stride - pad + k) if 0 <= y < h]
            cols = [x for x in range(ox * stride - pad, ox * stride - pad + k) if 0 <= x < w]
            if rows and cols:
                formed += c
    return formed


def merge_add(size, idx_a, cnt_a, idx_b, cnt_b):
    """Dense sum of two event lists over ``size`` sites, back as (sorted idx, cnt > 0)."""
    dense = np.zeros(size, np.int64)
    np.add.at(dense, np.asarray(idx_a, np.int64), np.asarray(cnt_a, np.int64))
    np.add.at(dense, np.asarray(idx_b, np.int64), np.asarray(cnt_b, np.int64))
    nz = np.flatnonzero(dense)
    return nz, dense[nz]


def channel_sums(x):
    """Column sums of a dense [N, C] map."""
    return np.asarray(x).sum(axis=0)


def scatter_dense(size, idx, cnt, dtype):
    """Dense vector of ``size`` values in ``dtype``: each event's multiplicity at its site, zero
    everywhere else."""
    dense = np.zeros(size, dtype)
    for site, mult in zip(np.asarray(idx).tolist(), np.asarray(cnt).tolist()):
        dense[site] = mult
    return dense


# --------------------------------------------------------------------------------------------
# spiking self-attention
# --------------------------------------------------------------------------------------------


def ssa(q, k, v, heads, scale, dtype):
    """Y = (Q_h @ K_h^T) @ V_h * scale per head on dense 0/1 [N, D] maps -> [N, D] in ``dtype``.

    Integer products throughout; one multiply by ``scale`` (rounded to ``dtype``) at the end.
    Also returns the per-head attention maps (Q_h K_h^T, int64 [heads, N, N]).
    """
    n, dim = q.shape
    d = dim // heads
    y = np.zeros((n, dim), np.int64)
    maps = np.zeros((heads, n, n), np.int64)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        qh = q[:, sl].astype(np.int64)
        kh = k[:, sl].astype(np.int64)
        vh = v[:, sl].astype(np.int64)
        a = qh @ kh.T
        maps[h] = a
        y[:, sl] = a @ vh
    dt = np.dtype(dtype).type
    return y.astype(dtype) * dt(scale), maps


def ssa_ops(q, k, v, heads, order_used):
    """Work counted as ``ac`` by the SSA kernel, per head in the order it used.

    pairs order (1): one add per (query channel, key token sharing it), plus, for every non-zero
    map entry a_ij, a_ij adds into each of key token j's active V channels.
    kv order (2): one add per (key channel, value channel) co-activation of a token, plus d adds
    per active query channel.
    """
    n, dim = q.shape
    d = dim // heads
    total = 0
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        qh = q[:, sl].astype(np.int64)
        kh = k[:, sl].astype(np.int64)
        vh = v[:, sl].astype(np.int64)
        if order_used[h] == 1:
            a = qh @ kh.T
            total += int(a.sum()) + int((a * vh.sum(axis=1)[None, :]).sum())
        else:
            total += int((kh.sum(axis=1) * vh.sum(axis=1)).sum()) + int(qh.sum()) * d
    return total


# --------------------------------------------------------------------------------------------
# the attention variants of SPEC §4
# --------------------------------------------------------------------------------------------


def qk_counts(q, k, heads):
    """Per-head count maps (Q_h @ K_h^T) of dense 0/1 [N, D] maps -> int64 [heads, N, N]."""
    n, dim = q.shape
    d = dim // heads
    maps = np.zeros((heads, n, n), np.int64)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        maps[h] = q[:, sl].astype(np.int64) @ k[:, sl].astype(np.int64).T
    return maps


def _apply_maps(maps, v, heads):
    """Per head M_h @ V_h, merged back to [N, D] int64."""
    n, dim = v.shape
    d = dim // heads
    y = np.zeros((n, dim), np.int64)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        y[:, sl] = maps[h] @ v[:, sl].astype(np.int64)
    return y


def ssa_bin(q, k, v, heads, delta, vbar, scale, dtype):
    """SSA_Bin: B = 1((Q_h K_h^T) > delta[h]), Y = (B V - vbar) * scale -> ([N, D] in ``dtype``,
    the binary maps int64 [heads, N, N]). One subtraction and one product, in ``dtype``."""
    counts = qk_counts(q, k, heads)
    binary = np.zeros_like(counts)
    for h in range(heads):
        binary[h] = (counts[h] > delta[h]).astype(np.int64)
    dt = np.dtype(dtype).type
    y = _apply_maps(binary, v, heads).astype(dtype)
    return (y - np.asarray(vbar, dtype)[None, :]) * dt(scale), binary


def nsad(q, k, v, heads, table, scale, dtype):
    """DS2TA's NSAD: A[h, i, j] = table[h, (Q_h K_h^T)[i, j]], Y = (A V) * scale -> ([N, D] in
    ``dtype``, A int64 [heads, N, N])."""
    counts = qk_counts(q, k, heads)
    mapped = np.zeros_like(counts)
    for h in range(heads):
        mapped[h] = np.asarray(table, np.int64)[h][counts[h]]
    dt = np.dtype(dtype).type
    return _apply_maps(mapped, v, heads).astype(dtype) * dt(scale), mapped


def mapped_attention_ops(q, k, v, heads, mapped):
    """Work of an attention that forms the map explicitly over active pairs (SSA_Bin, NSAD):
    entries = pairs sharing an active channel (one compare or table look-up each), nonzero =
    entries left non-zero by the map, ac = one add per shared channel (forming the counts) plus
    |M_ij| per active V channel of key token j (an entry is an event of multiplicity |M_ij|)."""
    counts = qk_counts(q, k, heads)
    d = v.shape[1] // heads
    ac = int(counts.sum())
    for h in range(heads):
        vj = v[:, h * d:(h + 1) * d].astype(np.int64).sum(axis=1)
        ac += int((np.abs(mapped[h]) * vj[None, :]).sum())
    return {"ac": ac, "entries": int(np.count_nonzero(counts)),
            "nonzero": int(np.count_nonzero(mapped))}


def tasa(currents, tau, taw, bias, dtype):
    """DS2TA's TASA over a whole sample: I_t = sum_{m=0}^{T_AW-1} J_{t-m} 2^(-tau m) + b.

    ``currents`` [T, size] are the J_t (no bias), ``bias`` [size] b'. Summed m ascending, then
    the bias, each step in ``dtype``. Steps without input (J_t all zero, ``live`` False) add
    nothing. Returns (I [T, size], shifts: one per decayed element of a live earlier step)."""
    currents = np.asarray(currents, dtype)
    t_total, size = currents.shape
    live = np.any(currents != 0, axis=1)
    dt = np.dtype(dtype).type
    out = np.empty((t_total, size), dtype)
    shifts = 0
    for t in range(t_total):
        x = currents[t].copy()
        for m in range(1, taw):
            if t - m < 0 or not live[t - m]:
                continue
            x = x + currents[t - m] * dt(2.0 ** (-tau * m))
            shifts += size
        out[t] = x + np.asarray(bias, dtype)
    return out, shifts


def adaptive_avg_pool_tokens(x, rows):
    """PyTorch's adaptive average pooling of x [N, D] over the token axis to ``rows`` rows
    (row l averages tokens floor(l N / L) .. ceil((l + 1) N / L) - 1), as float64 [L, D]."""
    n = x.shape[0]
    out = np.zeros((rows, x.shape[1]))
    for r in range(rows):
        lo = (r * n) // rows
        hi = -((-(r + 1) * n) // rows)
        out[r] = x[lo:hi].astype(np.float64).sum(axis=0) / (hi - lo)
    return out


def depthwise_conv(x, weight, bias):
    """Depthwise cross-correlation with "same" zero padding: x [C, H, W], weight [C, KH, KW]
    (odd), bias [C] -> [C, H, W] in the dtype of ``weight``; the bias first, then the taps."""
    c, h, w = x.shape
    _, kh, kw = weight.shape
    ph, pw = kh // 2, kw // 2
    dt = weight.dtype
    xp = np.zeros((c, h + 2 * ph, w + 2 * pw), dt)
    xp[:, ph:ph + h, pw:pw + w] = x
    out = np.empty((c, h, w), dt)
    for ch in range(c):
        for y in range(h):
            for xx in range(w):
                out[ch, y, xx] = bias[ch] + np.sum(xp[ch, y:y + kh, xx:xx + kw] * weight[ch],
                                                   dtype=dt)
    return out


def depthwise_ops(x, kh, kw):
    """ac of a depthwise scatter of the 0/1 map x [C, H, W]: one per spike and tap in the grid."""
    _, h, w = x.shape
    fan = conv_fanout(h, w, kh, kw, 1, kh // 2)
    return int(np.sum((np.asarray(x) != 0) * fan[None]))


def saformer(q, k, grid_w, rows, dwc_weight, dwc_bias, scale, dtype):
    """SAFormer: Y = scale * (K * a) + DWC(K), a = sum_l Qa[l] * Ka[l] -> [N, D] in ``dtype``.

    q, k dense 0/1 [N, D]; the token grid is (N / grid_w) x grid_w. The pooled rows and the
    gate in float64 (exact for the tests' power-of-two row sizes), then cast to ``dtype``."""
    n, dim = k.shape
    dt = np.dtype(dtype).type
    qa = adaptive_avg_pool_tokens(q, rows)
    ka = adaptive_avg_pool_tokens(k, rows)
    gate = (qa * ka).sum(axis=0).astype(dtype)
    grid = k.T.reshape(dim, n // grid_w, grid_w)
    dwc = depthwise_conv(grid, np.asarray(dwc_weight, dtype), np.asarray(dwc_bias, dtype))
    dwc = dwc.reshape(dim, n).T
    return (dt(scale) * (k.astype(dtype) * gate[None, :])) + dwc


def saformer_ops(q, k, grid_w, rows, kh, kw):
    """ac and mac of SAFormer's core (see saformer_step): the DWC taps, and when Q and K both
    have spikes the pooling counts (one per spike and row holding its token), one add per K
    spike, and 3 L D + D multiplies for the gate."""
    n, dim = k.shape
    grid = k.T.reshape(dim, n // grid_w, grid_w)
    ac = depthwise_ops(grid, kh, kw)
    mac = 0
    if q.any() and k.any():
        for r in range(rows):
            lo = (r * n) // rows
            hi = -((-(r + 1) * n) // rows)
            ac += int(q[lo:hi].sum()) + int(k[lo:hi].sum())
        ac += int(k.sum())
        mac = 3 * rows * dim + dim
    return ac, mac


# --------------------------------------------------------------------------------------------
# layout helpers
# --------------------------------------------------------------------------------------------


def events_to_hwc(idx, cnt, h, w, c):
    """Event list over an HWC map -> dense int64 [C, H, W] (torch layout)."""
    flat = np.zeros(h * w * c, np.int64)
    flat[np.asarray(idx, np.int64)] = np.asarray(cnt, np.int64)
    return flat.reshape(h, w, c).transpose(2, 0, 1)


def chw_to_events(x):
    """Dense [C, H, W] -> sorted (idx, cnt) over the HWC flat layout, zeros dropped."""
    flat = np.asarray(x).transpose(1, 2, 0).reshape(-1)
    nz = np.flatnonzero(flat)
    return nz.astype(np.int32), flat[nz].astype(np.int32)


def events_to_tokens(idx, cnt, n, c):
    """Event list over [token, channel] -> dense int64 [N, C]."""
    flat = np.zeros(n * c, np.int64)
    flat[np.asarray(idx, np.int64)] = np.asarray(cnt, np.int64)
    return flat.reshape(n, c)


def tokens_to_events(x):
    """Dense [N, C] -> sorted (idx, cnt), zeros dropped."""
    flat = np.asarray(x).reshape(-1)
    nz = np.flatnonzero(flat)
    return nz.astype(np.int32), flat[nz].astype(np.int32)


def conv_weight_scatter_rows(weight):
    """torch [Cout, Cin, KH, KW] -> the scatter kernel's rows [(c*KH + ky)*KW + kx, Cout]."""
    cout = weight.shape[0]
    return np.ascontiguousarray(weight.transpose(1, 2, 3, 0).reshape(-1, cout))


def conv_weight_dense_rows(weight):
    """torch [Cout, Cin, KH, KW] -> the GEMM path's rows [(ky*KW + kx)*Cin + c, Cout]."""
    cout = weight.shape[0]
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(-1, cout))


# --------------------------------------------------------------------------------------------
# which twin checks which kernel
# --------------------------------------------------------------------------------------------

#: Every public kernel of :mod:`eventformer.kernels` -> the twin(s) tests/test_kernels.py
#: compares it against (tests/test_kernel_docs.py checks both that the map is complete and that
#: a test calls the kernel and each of its twins). Op-count twins sit beside value twins.

# --------------------------------------------------------------------------------------------
# the integer engine (SPEC §6), in Python integers
# --------------------------------------------------------------------------------------------


def lif_fixed(v, x, theta, shift, hard_reset, decay_input):
    """One integer LIF step, neuron by neuron in Python ints (unbounded, floor shifts).

    decay_input: H = V + ((X - V) >> k); else H = V - (V >> k) + X. S = H >= theta; hard
    reset V = 0, soft V = H - theta. ``theta`` per neuron (same length as v). Returns (new v
    int64, spike mask, neuron_updates)."""
    new_v = np.empty(len(v), np.int64)
    spikes = np.zeros(len(v), bool)
    for i in range(len(v)):
        vi, xi, th = int(v[i]), int(x[i]), int(theta[i])
        h = vi + ((xi - vi) >> shift) if decay_input else vi - (vi >> shift) + xi
        s = h >= th
        spikes[i] = s
        new_v[i] = (0 if hard_reset else h - th) if s else h
    return new_v, spikes, len(v)


def tasa_fixed(currents, tau, taw, bias):
    """TASA in integers over a whole sample: I_t = sum_m (J_{t-m} >> tau m) + b, steps without
    input (J_t all zero) adding nothing. Returns (I int64 [T, size], shifts)."""
    currents = np.asarray(currents, np.int64)
    t_total, size = currents.shape
    live = np.any(currents != 0, axis=1)
    out = np.empty((t_total, size), np.int64)
    shifts = 0
    for t in range(t_total):
        acc = currents[t].copy()
        for m in range(1, taw):
            if t - m >= 0 and live[t - m]:
                acc += currents[t - m] >> (tau * m)
                shifts += size
        out[t] = acc + np.asarray(bias, np.int64)
    return out, shifts


def ssa_bin_fixed(q, k, v, heads, delta, vbar_q, unit):
    """SSA_Bin in fixed point: B V * unit - vbar_q (int64 [N, D])."""
    counts = qk_counts(q, k, heads)
    binary = np.zeros_like(counts)
    for h in range(heads):
        binary[h] = (counts[h] > delta[h]).astype(np.int64)
    return _apply_maps(binary, v, heads).astype(np.int64) * unit - np.asarray(vbar_q)[None, :]


def saformer_fixed(q, k, grid_w, rows, dwc_weight, dwc_bias, gate_mult, gate_shift):
    """SAFormer in fixed point: DWC(K) in integers plus, per active key site of channel c,
    round((a_c * gate_mult[c]) / 2^gate_shift) (half up), a_c = sum_l cq[l, c] ck[l, c] the
    pooled rows' spike-count products (equal rows). int64 [N, D]."""
    n, dim = k.shape
    grid = k.T.reshape(dim, n // grid_w, grid_w).astype(np.int64)
    dwc = depthwise_conv(grid, np.asarray(dwc_weight, np.int64), np.asarray(dwc_bias, np.int64))
    y = dwc.reshape(dim, n).T.copy()
    if q.any() and k.any():
        width = n // rows
        cq = q.reshape(rows, width, dim).sum(axis=1).astype(np.int64)
        ck = k.reshape(rows, width, dim).sum(axis=1).astype(np.int64)
        a = (cq * ck).sum(axis=0)
        term = [(int(a[c]) * int(gate_mult[c]) + (1 << (gate_shift - 1))) >> gate_shift
                for c in range(dim)]
        y += k.astype(np.int64) * np.array(term, np.int64)[None, :]
    return y

# --------------------------------------------------------------------------------------------
# neurons of NIR-imported networks (kernels/snn.py), written from the frameworks' forward passes
# --------------------------------------------------------------------------------------------


def sinabs_neurons(v, i_syn, x, alpha_mem, alpha_syn, theta, min_v, reset_value, synaptic,
                   norm_input, multi_spike, max_spikes, subtract, floor):
    """One step of sinabs' ``lif_forward_single`` over dense arrays, numpy element-wise in its
    order (alpha_syn (i + x); (1 - alpha) x; alpha v + x; MultiSpike (v > 0) trunc(v / theta)
    or SingleSpike v - theta >= 0, or with ``multi_spike`` 2 Rockpool's StepPWL (v >= theta)
    floor(v / theta); MembraneSubtract / MembraneReset; relu(v - m) + m).
    Returns (v, i_syn, spike counts int64), new arrays."""
    v, i_syn, x = v.copy(), i_syn.copy(), x.copy()
    if synaptic:
        i_syn = alpha_syn * (i_syn + x)
        x = i_syn
    if norm_input:
        x = (np.asarray(1, v.dtype) - alpha_mem) * x
    v = alpha_mem * v + x
    if multi_spike == 2:  # Rockpool's StepPWL
        s = np.where(v >= theta, np.floor(v / theta), 0).astype(np.int64)
    elif multi_spike:  # sinabs' MultiSpike
        s = np.where(v > 0, np.trunc(v / theta), 0).astype(np.int64)
    else:  # SingleSpike
        s = (v - theta >= 0).astype(np.int64)
    if multi_spike and max_spikes > 0:
        s = np.minimum(s, max_spikes)
    if subtract:
        v = v - s.astype(v.dtype) * theta
    else:
        v = v * (s == 0).astype(v.dtype) + reset_value
    if floor:
        v = np.maximum(v - min_v, 0) + min_v
    return v, i_syn, s


def snntorch_leaky(v, x, beta, theta, reset):
    """One step of snnTorch's ``Leaky`` (reset_delay=True): the reset from the old membrane.
    Returns (v, spikes int64)."""
    r = (v - theta > 0).astype(v.dtype)
    if reset == "subtract":
        h = (beta * v + x) - r * theta
    elif reset == "zero":
        h = beta * ((np.asarray(1, v.dtype) - r) * v) + x
    else:
        h = beta * v + x
    return h, (h - theta > 0).astype(np.int64)


def norse_cell(v, i_syn, x, a, b, v_leak, theta, v_reset, cuba, subtract, integrate):
    """One step of Norse's IAFCell / LIFBoxCell / LIFCell (a = dt tau_mem_inv, b = -dt
    tau_syn_inv). Returns (v, i_syn, spikes int64)."""
    if integrate:
        vd = v + x
    elif cuba:
        i_syn = i_syn + x
        vd = v + a * ((v_leak - v) + i_syn)
        i_syn = i_syn + b * i_syn
    else:
        vd = v + a * ((x + v_leak) - v)
    z = vd - theta > 0
    if subtract:
        v = np.where(z, vd - theta, vd)
    else:
        zf = z.astype(v.dtype)
        v = (np.asarray(1, v.dtype) - zf) * vd + zf * v_reset
    return v, i_syn, z.astype(np.int64)


def _fixed_mul(x, m):
    """x * m / 2^16, floored, in Python ints (m = 2^16 is one)."""
    return x if m == 1 << 16 else (x * m) >> 16


def sinabs_neurons_fixed(v, i_syn, x, alpha_mem, alpha_syn, theta, min_v, reset_value, gain,
                         synaptic, norm_input, multi_spike, max_spikes, subtract, floor):
    """sinabs' step in Python integers (multipliers with 16 fractional bits). Returns (v,
    i_syn, counts), int64 arrays."""
    n = len(v)
    nv, ni, s_out = np.zeros(n, np.int64), np.array(i_syn, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        xi = int(x[i])
        if synaptic:
            xi = _fixed_mul(int(i_syn[i]) + xi, int(alpha_syn[i]))
            ni[i] = xi
        if norm_input:
            xi = _fixed_mul(xi, int(gain[i]))
        h = _fixed_mul(int(v[i]), int(alpha_mem[i])) + xi
        th = int(theta[i])
        if multi_spike:
            s = h // th if h > 0 else 0
            if max_spikes > 0:
                s = min(s, max_spikes)
        else:
            s = 1 if h - th >= 0 else 0
        h = h - s * th if subtract else (h if s == 0 else 0) + int(reset_value[i])
        if floor:
            h = max(h - int(min_v[i]), 0) + int(min_v[i])
        nv[i], s_out[i] = h, s
    return nv, ni, s_out


def snntorch_leaky_fixed(v, x, beta, theta, reset):
    """snnTorch's Leaky in Python integers. Returns (v, spikes) int64."""
    n = len(v)
    nv, s = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        vi, th = int(v[i]), int(theta[i])
        r = vi > th
        if reset == "subtract":
            h = _fixed_mul(vi, int(beta[i])) + int(x[i]) - (th if r else 0)
        elif reset == "zero":
            h = _fixed_mul(0 if r else vi, int(beta[i])) + int(x[i])
        else:
            h = _fixed_mul(vi, int(beta[i])) + int(x[i])
        nv[i], s[i] = h, int(h > th)
    return nv, s


def norse_cell_fixed(v, i_syn, x, a, b, v_leak, theta, v_reset, cuba, subtract, integrate):
    """Norse's cells in Python integers. Returns (v, i_syn, spikes) int64."""
    n = len(v)
    nv, ni, s = np.zeros(n, np.int64), np.array(i_syn, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        vi, xi = int(v[i]), int(x[i])
        if integrate:
            vd = vi + xi
        elif cuba:
            cur = int(i_syn[i]) + xi
            vd = vi + _fixed_mul((int(v_leak[i]) - vi) + cur, int(a[i]))
            ni[i] = cur + _fixed_mul(cur, int(b[i]))
        else:
            vd = vi + _fixed_mul((xi + int(v_leak[i])) - vi, int(a[i]))
        if vd > int(theta[i]):
            nv[i] = vd - int(theta[i]) if subtract else int(v_reset[i])
            s[i] = 1
        else:
            nv[i] = vd
    return nv, ni, s


def sumpool(x, k, stride, pad):
    """Sum pooling of a dense [C, H, W] map as PyTorch windows it (zero padding, floor mode),
    and its adds: one per (input value unit, window covering it). Returns (pooled int64, adds)."""
    c, h, w = x.shape
    xp = np.zeros((c, h + 2 * pad, w + 2 * pad), np.int64)
    xp[:, pad:pad + h, pad:pad + w] = x
    ho = conv_out_size(h, k, stride, pad)
    wo = conv_out_size(w, k, stride, pad)
    out = np.zeros((c, ho, wo), np.int64)
    for oy in range(ho):
        for ox in range(wo):
            out[:, oy, ox] = xp[:, oy * stride:oy * stride + k, ox * stride:ox * stride + k].sum(
                axis=(1, 2))
    return out, int(out.sum())


def int_matmul(rows, weight):
    """``rows @ weight`` in int64, the plain way: the integer GEMM's twin."""
    m, k = rows.shape
    out = np.zeros((m, weight.shape[1]), np.int64)
    for i in range(m):
        for c in range(k):
            out[i] += int(rows[i, c]) * weight[c].astype(np.int64)
    return out


TWINS = {
    "channel_sums": (channel_sums,),
    "conv2d_gather": (conv2d, conv2d_ops),
    "conv2d_gather_int": (conv2d, conv2d_ops),  # the twin run in int64
    "conv2d_scatter": (conv2d, conv2d_ops),
    "densify_padded": (conv2d, conv2d_ops),  # densify + im2col + GEMM against the conv
    "depthwise3x3_scatter": (depthwise_conv, depthwise_ops),
    "im2col_padded": (conv2d,),
    "int_gemm": (int_matmul,),
    "lif_fixed_quiet_step": (lif_fixed,),
    "lif_fixed_step": (lif_fixed,),
    "lif_fixed_step_flags": (lif_fixed,),
    "lif_params": (lif,),  # its params drive lif_step, compared with lif given tau, theta, ...
    "lif_quiet_step": (lif_periodic,),
    "lif_step": (lif, lif_periodic),
    "lif_step_flags": (lif_periodic,),
    "linear_event_ops": (linear_ops,),
    "linear_scatter": (linear, linear_ops),
    "maxpool_flags": (maxpool2d,),
    "merge_add": (merge_add,),
    "norse_step": (norse_cell,),
    "norse_step_fixed": (norse_cell_fixed,),
    "nsad_step": (nsad, mapped_attention_ops),
    "saformer_step": (saformer, saformer_ops),
    "saformer_step_fixed": (saformer_fixed, saformer_ops),
    "scatter_dense": (scatter_dense,),
    "sinabs_step": (sinabs_neurons,),
    "sinabs_step_fixed": (sinabs_neurons_fixed,),
    "snntorch_step": (snntorch_leaky,),
    "snntorch_step_fixed": (snntorch_leaky_fixed,),
    "ssa_bin_step": (ssa_bin, mapped_attention_ops),
    "ssa_bin_step_fixed": (ssa_bin_fixed, mapped_attention_ops),
    "ssa_step": (ssa, ssa_ops),
    "sumpool_events": (sumpool,),
    "tasa_current": (tasa,),
    "tasa_fixed_current": (tasa_fixed,),
}


# Kernels that eventformer.kernels does not list in its __all__ (TWINS above must name exactly
# those, tests/test_kernel_docs.py), by module path, with their twins and the test file that
# compares them.
MODULE_TWINS = {
    # dense max-pool of a real or integer current (HWC), before a LIF: tests/test_description.py
    "eventformer.kernels.pooling.maxpool_current": (maxpool2d, maxpool2d_maxima),
}
