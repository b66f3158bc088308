"""Index-list plumbing: densify, sparsify, merge, pool. No arithmetic on weights here."""

import numpy as np

from ..jit import kernel


@kernel
def scatter_dense(idx, cnt, dense):
    """Write an event list into a zeroed dense vector (values = multiplicities)."""
    dense[:] = 0
    for e in range(idx.shape[0]):
        dense[idx[e]] = cnt[e]


@kernel
def merge_add(idx_a, cnt_a, idx_b, cnt_b):
    """Sum of two sorted event lists over the same sites: a residual add without densifying."""
    na = idx_a.shape[0]
    nb = idx_b.shape[0]
    out_idx = np.empty(na + nb, np.int32)
    out_cnt = np.empty(na + nb, np.int32)
    i = 0
    j = 0
    n = 0
    while i < na and j < nb:
        a = idx_a[i]
        b = idx_b[j]
        if a < b:
            out_idx[n] = a
            out_cnt[n] = cnt_a[i]
            i += 1
        elif b < a:
            out_idx[n] = b
            out_cnt[n] = cnt_b[j]
            j += 1
        else:
            out_idx[n] = a
            out_cnt[n] = cnt_a[i] + cnt_b[j]
            i += 1
            j += 1
        n += 1
    while i < na:
        out_idx[n] = idx_a[i]
        out_cnt[n] = cnt_a[i]
        i += 1
        n += 1
    while j < nb:
        out_idx[n] = idx_b[j]
        out_cnt[n] = cnt_b[j]
        j += 1
        n += 1
    return out_idx[:n].copy(), out_cnt[:n].copy()


@kernel
def channel_sums(idx, cnt, dim, sums):
    """``sums[c] += value`` for every event of a [token, channel] list: the head's token mean, exact
    in integers until it is divided once at the end."""
    for e in range(idx.shape[0]):
        sums[idx[e] % dim] += cnt[e]


@kernel
def maxpool_flags(flags, in_h, in_w, c, k, stride, pad, out_h, out_w, out):
    """Max-pool of a dense 0/1 spike-flag map (HWC) straight into sorted output indices.

    Used right after a LIF whose flags are at hand: no per-spike index decoding. The window max
    is separable (rows, then columns of the row maxima), and every inner loop runs over a
    contiguous channel row, so it vectorises. Returns the count written to ``out`` (int32,
    >= out_h*out_w*c).
    """
    rowmax = np.zeros((in_h, out_w, c), np.uint8)  # max over each output column's x window
    for iy in range(in_h):
        for ox in range(out_w):
            dst = rowmax[iy, ox]
            for kx in range(k):
                ix = ox * stride - pad + kx
                if ix < 0 or ix >= in_w:
                    continue
                src = flags[(iy * in_w + ix) * c:(iy * in_w + ix + 1) * c]
                for ch in range(c):
                    dst[ch] |= src[ch]
    row = np.empty(c, np.uint8)
    n = 0
    for oy in range(out_h):
        for ox in range(out_w):
            row[:] = 0
            for ky in range(k):
                iy = oy * stride - pad + ky
                if iy < 0 or iy >= in_h:
                    continue
                src = rowmax[iy, ox]
                for ch in range(c):
                    row[ch] |= src[ch]
            base = (oy * out_w + ox) * c
            for ch in range(c):  # branch-free compaction: write always, advance on a spike
                out[n] = base + ch
                n += row[ch]
    return n
