"""Index-list plumbing: densify, sparsify, merge, pool. No arithmetic on weights here."""

import functools

import numpy as np

from ..jit import kernel
from ._common import scratch
from .compaction import COMPRESS, compact_flags


@kernel
def scatter_dense(idx, cnt, dense):
    """Write an event list into a zeroed dense vector (values = multiplicities).

    The linear layer's dense path: its GEMM input rows [tokens, Cin] are the step's events made
    dense (the layer books the ops with :func:`linear_event_ops`).

    Parameters
    ----------
    idx : int32[n], each site once, all < dense.size
        Flat indices into ``dense`` (any order; the engine's lists are sorted).
    cnt : int32[n]
        Multiplicities of the events in ``idx``; converted to ``dense``'s dtype.
    dense : float32|float64|uint8|int16|int32|int64[size], 1-D, overwritten
        Zeroed, then ``dense[idx[e]] = cnt[e]`` for every event. In the layers: the GEMM input
        rows [tokens, Cin] flattened, in the GEMM's dtype (float, or uint8/int16 rows of the
        integer GEMM, whose layer bounds every value to fit).

    Returns
    -------
    None
        The result is ``dense``, overwritten in full.
    """
    for i in range(dense.shape[0]):  # (a slice fill compiles Numba's broadcasting on a first run)
        dense[i] = 0
    for e in range(idx.shape[0]):
        dense[idx[e]] = cnt[e]


@kernel
def merge_add(idx_a, cnt_a, idx_b, cnt_b):
    """Sum of two sorted event lists over the same sites: a residual add without densifying.

    A two-pointer merge: a site in both lists gets the sum of its multiplicities.

    Parameters
    ----------
    idx_a : int32[na], sorted ascending, each site once
        Flat indices of the first list (any layout, the same as ``idx_b``'s).
    cnt_a : int32[na]
        Multiplicities of the events in ``idx_a``.
    idx_b : int32[nb], sorted ascending, each site once
        Flat indices of the second list.
    cnt_b : int32[nb]
        Multiplicities of the events in ``idx_b``.

    Returns
    -------
    idx : int32[m], m <= na + nb
        A new array: the union of the sites, sorted ascending, each once.
    cnt : int32[m]
        A new array: the summed multiplicities, ``cnt_a`` + ``cnt_b`` where a site is in both.
    """
    na = idx_a.shape[0]
    nb = idx_b.shape[0]
    out_idx = scratch(na + nb, np.int32)
    out_cnt = scratch(na + nb, np.int32)
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
    return out_idx[:n], out_cnt[:n]


@kernel
def channel_sums(idx, cnt, dim, sums):
    """``sums[c] += value`` for every event of a [token, channel] list.

    The head's token mean, exact in integers until it is divided once at the end.

    Parameters
    ----------
    idx : int32[n]
        Flat indices into the [tokens, dim] map, ``token * dim + c`` (any order).
    cnt : int32[n]
        The values (multiplicities) of the events in ``idx``.
    dim : int
        Channels D of the map.
    sums : int64|float32|float64[dim], modified in place
        ``sums[c]`` += the values of channel c's events; added to, not cleared. The head keeps
        int64 sums over all tokens and steps of a sample.

    Returns
    -------
    None
        The result is ``sums``, modified in place.
    """
    for e in range(idx.shape[0]):
        sums[idx[e] % dim] += cnt[e]


def maxpool_flags(flags, in_h, in_w, c, k, stride, pad, out_h, out_w, row0, row1, out):
    """Max-pool of a dense 0/1 spike-flag map (HWC) straight into sorted output indices.

    Computed over the pooled rows ``row0:row1`` (the whole map: 0, out_h).

    Used right after a LIF whose flags are at hand: no per-spike index decoding. The window max
    is separable (rows, then columns of the row maxima), and every inner loop runs over a
    contiguous channel row, so it vectorises. Returns the count written to ``out`` (int32,
    >= out_h*out_w*c). Bands of rows only read ``flags``: several can run at once, and their
    outputs in band order are the whole map's.

    Parameters
    ----------
    flags : uint8[in_h * in_w * c], 0/1
        The spike map, flat HWC ``(y * in_w + x) * c + ch``, as :func:`lif_step_flags` writes
        it.
    in_h, in_w : int
        Height and width of the map.
    c : int
        Channels of the map.
    k : int
        Window size, the same along y and x.
    stride : int
        Stride, the same along y and x.
    pad : int
        Padding on every side; padded positions never hold a spike (PyTorch's -inf padding).
    out_h, out_w : int
        Pooled height and width, ``(in_h + 2 * pad - k) // stride + 1`` (and likewise for w).
    row0, row1 : int
        The band of pooled rows computed, ``0 <= row0 <= row1 <= out_h``.
    out : int32[>= (row1 - row0) * out_w * c], overwritten
        ``out[:count]`` gets the flat HWC indices ``(oy * out_w + ox) * c + ch`` of the band's
        pooled sites whose window holds a spike, ascending; entries from ``count`` up to
        ``(row1 - row0) * out_w * c`` are scratch (the compaction writes before it knows).

    Returns
    -------
    count : int
        The number of pooled sites that spiked (indices written to ``out``).
    """
    lanes, cl, width = flag_lanes(flags[:in_h * in_w * c], c)
    return maxpool_lanes(lanes, in_h, in_w, cl, width, k, stride, pad, out_h, out_w, row0, row1,
                         out)


def flag_lanes(flags, c):
    """``flags`` (uint8, last axis HWC) seen as lanes for :func:`maxpool_lanes`: (lanes, lanes
    per pixel, bytes per lane). Eight channels' flags to an int64 word when ``c`` allows (8x
    fewer ORs, zero words skipped in the compaction); chosen here, so that a model compiles
    the one lane width its maps use."""
    if c % 8 == 0 and flags.shape[-1] % 8 == 0 and flags.strides[-1] == 1:
        return flags.view(np.int64), c // 8, 8
    return flags, c, 1


# The compaction of a word of eight 0/1 flag bytes: its bits gathered into one byte by one
# multiply (byte i lands on bit 56 + i; no two partial products meet, so nothing carries), then
# the set bits' positions and count from a table: eight stores and one add per word instead of
# a dependent add per flag.
GATHER_BITS = 0x0102040810204080
BIT_POSITIONS = np.array([[b for b in range(8) if m >> b & 1] + [0] * (8 - bin(m).count("1"))
                          for m in range(256)], np.int32)
BIT_COUNTS = np.array([bin(m).count("1") for m in range(256)], np.int64)


def maxpool_lanes(lanes, in_h, in_w, cl, width, k, stride, pad, out_h, out_w, row0, row1, out):
    """:func:`maxpool_flags` on the flags seen as lanes of ``width`` bytes (``cl`` lanes per
    pixel, :func:`flag_lanes`): an OR of 0/1 bytes is their max, lane by lane. Per pooled row,
    the OR down its window's input rows runs over whole contiguous rows (it vectorises), then
    the OR across each column window, lane by lane over the columns, then the compaction of
    the pooled row into indices (``out`` needs room for the band's whole map: the compaction
    writes a word's eight slots before it knows how many are spikes)."""
    return _maxpool_kernel(width == 8)(lanes, in_h, in_w, cl, width, k, stride, pad, out_h,
                                       out_w, row0, row1, out)


@functools.cache
def _maxpool_kernel(words):
    """:func:`maxpool_lanes` compiled for one lane kind (``words``: int64 words of eight flags;
    else bytes): a closure constant, so each compiles only its own compaction (a bool cell
    keeps the closure cacheable)."""

    @kernel
    def maxpool_lanes(lanes, in_h, in_w, cl, width, k, stride, pad, out_h, out_w, row0, row1,
                      out):
        line = in_w * cl
        col = scratch(line, lanes.dtype)  # OR over the window's rows, every input column
        row = scratch(out_w * cl, lanes.dtype)  # the pooled row
        # the pooled columns whose window lies inside the map (no clipping)
        ox_lo = min(-(-pad // stride), out_w)
        ox_hi = max(min((in_w - k + pad) // stride + 1, out_w), ox_lo)
        n = 0
        for oy in range(row0, row1):
            y0 = max(oy * stride - pad, 0)
            y1 = min(oy * stride - pad + k, in_h)
            if y0 >= y1:
                continue  # a window wholly in the padding holds no spike
            a = y0 * line
            for m in range(line):
                col[m] = lanes[a + m]
            for y in range(y0 + 1, y1):
                a = y * line
                for m in range(line):
                    col[m] |= lanes[a + m]
            for j in range(cl):
                for ox in range(ox_lo, ox_hi):
                    at = (ox * stride - pad) * cl + j
                    acc = col[at]
                    for kx in range(1, k):
                        acc |= col[at + kx * cl]
                    row[ox * cl + j] = acc
            for edge in range(ox_lo + out_w - ox_hi):  # the columns whose window is clipped
                ox = edge if edge < ox_lo else ox_hi + edge - ox_lo
                x0 = max(ox * stride - pad, 0)
                x1 = min(ox * stride - pad + k, in_w)
                for j in range(cl):
                    row[ox * cl + j] = 0
                    for ix in range(x0, x1):
                        row[ox * cl + j] |= col[ix * cl + j]
            base = oy * out_w * cl * width
            if COMPRESS:  # sixteen flags a store (see kernels/compaction.py)
                n = compact_flags(row, out_w * cl * width, base, out, n)
            elif words:
                for j in range(out_w * cl):
                    x = np.int64(row[j])
                    if x == 0:
                        continue
                    bits = ((x * GATHER_BITS) >> 56) & 0xFF
                    at = base + j * 8
                    for b in range(8):
                        out[n + b] = at + BIT_POSITIONS[bits, b]
                    n += BIT_COUNTS[bits]
            else:
                for j in range(out_w * cl):  # branch-free: write always, advance on a spike
                    out[n] = base + j
                    n += row[j]
        return n

    return maxpool_lanes
