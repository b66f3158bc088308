"""Spiking self-attention over active (query, key) pairs only (SPEC §2 SSA; §4 SSA_Bin, NSAD).

Q, K, V are spike lists over ``[token, channel]`` (flat ``n * D + c``, sorted). Per head h the
output is Y = (Q_h K_h^T) V_h * scale, channel ``h * d + j``. Both association orders give the
same integers; per head we take the cheaper one:

- pairs order, (Q K^T) V: for each query token, walk its active channels to the key tokens that
  fired on the same channel (an inverted index of K), counting shared channels; then add each
  touched key token's V spikes, weighted by the count. Work ~ active pairs, never N x N.
- kv order, Q (K^T V): a d x d table of K/V co-activations per head, then each active query
  channel adds one table row. Work ~ sum_j |K_j||V_j| + |Q| d.

Counts are integers throughout; the only rounding is the final multiply by ``scale``.

The SPEC §4 variants that map each entry of the map through a nonlinearity cannot reassociate,
so they always form the map explicitly over active pairs (the pairs order): SSA_Bin
(:func:`ssa_bin_step`, B = 1(count > delta_h), then (B V - vbar) * scale) and DS2TA's NSAD
(:func:`nsad_step`, A = AD_h[count], then (A V) * scale).
"""

import numpy as np

from ..jit import inlined, kernel
from ._common import in_dtype_of, scratch
from .counters import AC, ATTN_ENTRIES, ATTN_NONZERO, COMPARE, INPUT_EVENTS, LUT


@kernel
def _head_offsets(idx, n_tokens, dim, d):
    """ptr[n * (H + 1) + h] = first position in ``idx`` of token n, head h (sorted input);
    ptr[n * (H + 1) + H] = end.

    Flat, not [N, H + 1]: a 2-D array's allocation, reshape and indexing compile Numba's
    generic versions of them on a user's first run, and 2-D indexing types and lowers slower
    in every kernel that reads it."""
    heads = dim // d
    ptr = scratch(n_tokens * (heads + 1), np.int64)
    pos = 0
    total = idx.shape[0]
    for n in range(n_tokens):
        for h in range(heads + 1):
            lim = n * dim + h * d
            while pos < total and idx[pos] < lim:
                pos += 1
            ptr[n * (heads + 1) + h] = pos
    return ptr


@kernel
def _key_columns(k_idx, dim):
    """Inverted index of K: ``col_tok[col_ptr[c]:col_ptr[c + 1]]`` are the key tokens that fired
    on channel c, ascending."""
    col_len = scratch(dim + 1, np.int64)
    for c in range(dim + 1):
        col_len[c] = 0
    for e in range(k_idx.shape[0]):
        col_len[k_idx[e] % dim + 1] += 1
    # the running sum written out (np.cumsum compiles its generic version on a first run)
    col_ptr = scratch(dim + 1, np.int64)
    fill = scratch(dim, np.int64)  # where channel c's next key token goes
    total = 0
    for c in range(dim + 1):
        total += col_len[c]
        col_ptr[c] = total
        if c < dim:
            fill[c] = total
    col_tok = scratch(k_idx.shape[0], np.int32)
    for e in range(k_idx.shape[0]):
        c = k_idx[e] % dim
        col_tok[fill[c]] = k_idx[e] // dim
        fill[c] += 1
    return col_ptr, col_tok


@inlined
def _query_row_counts(i, h, dim, qp, hs, q_idx, col_ptr, col_tok, acc, touched):
    """Row i of head h's count map (Q K^T)[i, :], over the keys that share an active channel
    with query token i only: ``acc[j]`` += 1 per shared channel, the keys reached listed once in
    ``touched[:nt]`` (the caller reads and re-zeroes ``acc`` there); ``qp`` is
    :func:`_head_offsets` of Q, ``hs`` its row length (heads + 1). Returns ``(nt, adds)``."""
    nt = 0
    adds = 0
    for p in range(qp[i * hs + h], qp[i * hs + h + 1]):
        c = q_idx[p] - i * dim
        for r in range(col_ptr[c], col_ptr[c + 1]):
            j = col_tok[r]
            if acc[j] == 0:
                touched[nt] = j
                nt += 1
            acc[j] += 1
            adds += 1
    return nt, adds


@kernel
def ssa_step(q_idx, k_idx, v_idx, n_tokens, dim, heads, scale_arr, out, counters, order):
    """Write Y * scale into the dense ``out`` [n_tokens * dim]; return per-head orders used.

    Y = (Q_h K_h^T) V_h per head h, computed in integers over active pairs only (see the module
    notes), so the work follows the spikes, never N x N.
    ``order``: 0 = choose per head by estimated work, 1 = always pairs order, 2 = always kv order.
    The returned int8 array holds 1 or 2 per head.

    Parameters
    ----------
    q_idx : int32[nq], sorted ascending, each site once
        Query spikes over [n_tokens, dim], flat ``token * dim + c`` (spikes only: no
        multiplicities); channel c belongs to head ``c // (dim // heads)``.
    k_idx : int32[nk], sorted ascending, each site once
        Key spikes, the same layout.
    v_idx : int32[nv], sorted ascending, each site once
        Value spikes, the same layout.
    n_tokens : int
        Tokens N.
    dim : int
        Channels D of Q, K, V and the output.
    heads : int
        Attention heads; divides ``dim`` (head size d = dim // heads).
    scale_arr : float32|float64[1], the dtype of ``out``
        The scale, in an array so that the product is computed in ``out``'s dtype.
    out : float32|float64[n_tokens * dim], overwritten
        The flat [token, channel] current ``Y * scale``, every entry written.
    counters : int64[N_COUNTERS], incremented in place
        ``AC`` += the adds done (in the order each head used), ``ATTN_ENTRIES`` and
        ``ATTN_NONZERO`` += the non-zero (query, key) entries of the pairs-order heads' maps,
        ``INPUT_EVENTS`` += nq + nk + nv.
    order : int
        0 = choose per head by estimated work, 1 = always pairs order (Q K^T) V, 2 = always kv
        order Q (K^T V).

    Returns
    -------
    used : int8[heads]
        The order each head was computed in: 1 (pairs) or 2 (kv).
    """
    d = dim // heads
    hs = heads + 1
    scale = scale_arr[0]
    qp = _head_offsets(q_idx, n_tokens, dim, d)
    kp = _head_offsets(k_idx, n_tokens, dim, d)
    vp = _head_offsets(v_idx, n_tokens, dim, d)

    col_ptr, col_tok = _key_columns(k_idx, dim)
    y = scratch(n_tokens * dim, np.int64)
    for i in range(n_tokens * dim):
        y[i] = 0
    acc = scratch(n_tokens, np.int64)
    for i in range(n_tokens):
        acc[i] = 0
    touched = scratch(n_tokens, np.int32)
    kv = scratch(d * d, np.int64)  # K^T V of a head, [d, d] flat: see _head_offsets
    used = scratch(heads, np.int8)
    ops = 0
    entries = 0
    for h in range(heads):
        # estimated work of each order for this head
        pair_work = 0
        q_active = 0
        for n in range(n_tokens):
            for p in range(qp[n * hs + h], qp[n * hs + h + 1]):
                c = q_idx[p] - n * dim
                pair_work += col_ptr[c + 1] - col_ptr[c]
            q_active += qp[n * hs + h + 1] - qp[n * hs + h]
        kv_work = q_active * d
        v_total = 0
        for n in range(n_tokens):
            r = n * hs + h
            kv_work += (kp[r + 1] - kp[r]) * (vp[r + 1] - vp[r])
            v_total += vp[r + 1] - vp[r]
        # pairs order also pays ~ (pairs x mean |V_j|); pairs <= min(pair_work, N^2)
        pairs_est = min(pair_work, n_tokens * n_tokens)
        pair_work += (pairs_est * v_total) // max(n_tokens, 1)
        if order == 1 or (order == 0 and pair_work <= kv_work):
            used[h] = 1
            for i in range(n_tokens):
                nt, adds = _query_row_counts(i, h, dim, qp, hs, q_idx, col_ptr, col_tok, acc,
                                           touched)
                ops += adds
                entries += nt
                for t in range(nt):
                    j = touched[t]
                    a = acc[j]
                    acc[j] = 0
                    for p in range(vp[j * hs + h], vp[j * hs + h + 1]):
                        y[i * dim + (v_idx[p] - j * dim)] += a
                        ops += a
        else:
            used[h] = 2
            for z in range(d * d):
                kv[z] = 0
            base = h * d
            for j in range(n_tokens):
                for pk in range(kp[j * hs + h], kp[j * hs + h + 1]):
                    ck = k_idx[pk] - j * dim - base
                    for pv in range(vp[j * hs + h], vp[j * hs + h + 1]):
                        kv[ck * d + v_idx[pv] - j * dim - base] += 1
                        ops += 1
            for i in range(n_tokens):
                for p in range(qp[i * hs + h], qp[i * hs + h + 1]):
                    cq = q_idx[p] - i * dim - base
                    row = i * dim + base
                    for jj in range(d):
                        y[row + jj] += kv[cq * d + jj]
                    ops += d
    for i in range(n_tokens * dim):
        out[i] = in_dtype_of(out, y[i]) * scale
    counters[AC] += ops
    counters[ATTN_ENTRIES] += entries
    counters[ATTN_NONZERO] += entries
    counters[INPUT_EVENTS] += q_idx.shape[0] + k_idx.shape[0] + v_idx.shape[0]
    return used


# ---------------------------------------------------------------------------------------------
# the variants that form the map explicitly: SSA_Bin and DS2TA's NSAD (SPEC §4)
# ---------------------------------------------------------------------------------------------


@kernel
def _mapped_attention(q_idx, k_idx, v_idx, n_tokens, dim, heads, table, binary, delta, y,
                      counters):
    """Y = M(Q_h K_h^T) V_h per head into the zeroed int64 ``y``, over active pairs only, M the
    entry map: binary ``1(s > delta[h])`` or the table ``table[h, s]``. Returns nothing; counts
    as documented by :func:`ssa_bin_step` and :func:`nsad_step`."""
    d = dim // heads
    hs = heads + 1
    qp = _head_offsets(q_idx, n_tokens, dim, d)
    vp = _head_offsets(v_idx, n_tokens, dim, d)
    col_ptr, col_tok = _key_columns(k_idx, dim)
    acc = scratch(n_tokens, np.int64)
    for i in range(n_tokens):
        acc[i] = 0
    touched = scratch(n_tokens, np.int32)
    ops = 0
    entries = 0
    nonzero = 0
    for h in range(heads):
        for i in range(n_tokens):
            nt, adds = _query_row_counts(i, h, dim, qp, hs, q_idx, col_ptr, col_tok, acc,
                                           touched)
            ops += adds
            entries += nt
            for t in range(nt):
                j = touched[t]
                s = acc[j]
                acc[j] = 0
                if binary:
                    a = 1 if s > delta[h] else 0
                else:
                    a = np.int64(table[h, s])
                if a == 0:
                    continue
                nonzero += 1
                mult = a if a > 0 else -a
                for p in range(vp[j * hs + h], vp[j * hs + h + 1]):
                    y[i * dim + (v_idx[p] - j * dim)] += a
                    ops += mult
    counters[AC] += ops
    counters[ATTN_ENTRIES] += entries
    counters[ATTN_NONZERO] += nonzero
    if binary:
        counters[COMPARE] += entries
    else:
        counters[LUT] += entries
    counters[INPUT_EVENTS] += q_idx.shape[0] + k_idx.shape[0] + v_idx.shape[0]


@kernel
def ssa_bin_step(q_idx, k_idx, v_idx, n_tokens, dim, heads, delta, vbar, scale_arr, out,
                 counters):
    """SSA_Bin: write Y = (B V - vbar) * scale per head into the dense ``out``.

    B = 1((Q_h K_h^T) > delta[h]) per head h (strictly greater; delta >= 0, so only active
    (query, key) pairs, those sharing an active channel, can pass). The map is formed explicitly
    for active pairs only (pairs order, as :func:`ssa_step`'s order 1): per query token, its
    active channels are walked to the key tokens that fired on them, counting shared channels;
    each touched key token is one entry, compared with delta[h]; a passing entry adds key token
    j's V spikes. B V is an integer; the only roundings are ``(B V - vbar[c])`` and the product
    with ``scale``, in ``out``'s dtype, in this order. Y may be negative.

    Parameters
    ----------
    q_idx : int32[nq], sorted ascending, each site once
        Query spikes over [n_tokens, dim], flat ``token * dim + c``; channel c belongs to head
        ``c // (dim // heads)``.
    k_idx : int32[nk], sorted ascending, each site once
        Key spikes, the same layout.
    v_idx : int32[nv], sorted ascending, each site once
        Value spikes, the same layout.
    n_tokens : int
        Tokens N.
    dim : int
        Channels D of Q, K, V and the output.
    heads : int
        Attention heads; divides ``dim`` (head size d = dim // heads).
    delta : int32|int64[heads], each >= 0
        Per-head threshold: an entry passes when its count is strictly greater.
    vbar : float32|float64[dim], the dtype of ``out``
        Per-channel offset subtracted from B V (channel ``c`` of every token).
    scale_arr : float32|float64[1], the dtype of ``out``
        The scale, in an array so that the product is computed in ``out``'s dtype.
    out : float32|float64[n_tokens * dim], overwritten
        The flat [token, channel] current ``(B V - vbar) * scale``, every entry written.
    counters : int64[N_COUNTERS], incremented in place
        ``ATTN_ENTRIES`` and ``COMPARE`` += the (query, key) pairs formed (sharing at least one
        active channel, per head), ``ATTN_NONZERO`` += those that passed; ``AC`` += the adds of
        forming the counts (one per query channel and key token sharing it) plus those of B V
        (one per passing pair and active V channel of its key token); ``INPUT_EVENTS`` +=
        nq + nk + nv.

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    y = np.zeros(n_tokens * dim, np.int64)
    dummy = np.zeros((1, 1), np.int32)
    _mapped_attention(q_idx, k_idx, v_idx, n_tokens, dim, heads, dummy, True, delta, y,
                      counters)
    scale = scale_arr[0]
    for i in range(n_tokens):
        row = i * dim
        for c in range(dim):
            out[row + c] = (in_dtype_of(out, y[row + c]) - vbar[c]) * scale


@kernel
def nsad_step(q_idx, k_idx, v_idx, n_tokens, dim, heads, table, scale_arr, out, counters):
    """DS2TA's NSAD: write Y = (A V) * scale, A[i, j] = table[h, (Q_h K_h^T)[i, j]], into ``out``.

    The integer table per head replaces each count of the map; table[h, 0] == 0 (checked when
    the model file loads), so only active (query, key) pairs, those sharing an active channel,
    can be non-zero and the map is formed explicitly for them alone (pairs order, as
    :func:`ssa_step`'s order 1). Each touched key token is one entry and one table look-up; a
    non-zero entry a adds a to key token j's active V channels. A V is an integer; the only
    rounding is the final product with ``scale`` in ``out``'s dtype.

    Parameters
    ----------
    q_idx : int32[nq], sorted ascending, each site once
        Query spikes over [n_tokens, dim], flat ``token * dim + c``; channel c belongs to head
        ``c // (dim // heads)``.
    k_idx : int32[nk], sorted ascending, each site once
        Key spikes, the same layout.
    v_idx : int32[nv], sorted ascending, each site once
        Value spikes, the same layout.
    n_tokens : int
        Tokens N.
    dim : int
        Channels D of Q, K, V and the output.
    heads : int
        Attention heads; divides ``dim`` (head size d = dim // heads).
    table : int32|int64[heads, d + 1], table[:, 0] == 0
        The NSAD table AD_h[s] per head, s = 0..d the count of shared active channels.
    scale_arr : float32|float64[1], the dtype of ``out``
        The scale, in an array so that the product is computed in ``out``'s dtype.
    out : float32|float64[n_tokens * dim], overwritten
        The flat [token, channel] current ``(A V) * scale``, every entry written.
    counters : int64[N_COUNTERS], incremented in place
        ``ATTN_ENTRIES`` and ``LUT`` += the (query, key) pairs formed (sharing at least one
        active channel, per head), ``ATTN_NONZERO`` += those whose table value is non-zero;
        ``AC`` += the adds of forming the counts (one per query channel and key token sharing
        it) plus those of A V (an entry of value a is an event of multiplicity |a|, SPEC §2:
        |a| per active V channel of its key token); ``INPUT_EVENTS`` += nq + nk + nv.

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    y = np.zeros(n_tokens * dim, np.int64)
    nodelta = np.zeros(1, np.int64)
    _mapped_attention(q_idx, k_idx, v_idx, n_tokens, dim, heads, table, False, nodelta, y,
                      counters)
    scale = scale_arr[0]
    for i in range(n_tokens * dim):
        out[i] = in_dtype_of(out, y[i]) * scale
