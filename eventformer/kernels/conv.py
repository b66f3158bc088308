"""2-D convolution over an event list (scatter) and its dense fallback (im2col for a GEMM).

Layout: activations are channel-innermost (HWC); a flat site index is ``(y * W + x) * C + c``.
Weights for the scatter are rows ``[(c * KH + ky) * KW + kx, Cout]`` so one input event and one tap
read one contiguous slab of Cout weights and add it to one contiguous slab of the output.
The dense path uses rows ``[(ky * KW + kx) * Cin + c, Cout]`` to match :func:`im2col_padded`.
"""

import functools

import numpy as np

from ..jit import kernel
from ._common import add_slab, book_ops, copy_span, in_dtype_of, next_site


@functools.cache
def tap_table(in_size: int, k: int, stride: int, pad: int, out_size: int):
    """``(table, valid)``: ``table[pos * k + tap]`` is the output coordinate that input
    coordinate ``pos`` reaches through tap ``tap`` (``(pos + pad - tap) / stride`` where that
    is a whole number in ``[0, out_size)``), else -1; ``valid[pos]`` counts its valid taps.

    The scatter's event loop reads the table instead of dividing. One pair per geometry,
    computed with numpy and kept (read-only): built inside the kernels, the tables cost a
    kernel of their own on a user's first run (a third of a second, on the first layer's
    path)."""
    num = np.arange(in_size, dtype=np.int64)[:, None] + pad - np.arange(k, dtype=np.int64)
    out = num // max(stride, 1)
    ok = (num >= 0) & (out * stride == num) & (out < out_size)
    table = np.where(ok, out, -1).reshape(-1)
    valid = ok.sum(axis=1).astype(np.int64)
    table.flags.writeable = valid.flags.writeable = False
    return table, valid


def _row_taps(kh: int, stride: int, pad: int, out_h: int):
    """The tap table over the input rows that can reach an ``out_h``-row output (the scatter's
    events never lie below them)."""
    return tap_table(max(out_h * stride + kh, 1) + 2 * pad, kh, stride, pad, out_h)


def conv2d_scatter(idx, cnt, in_w, cin, weight_rows, kh, kw, stride, pad, out_h, out_w, row0,
                   row1, out, counters, weighted):
    """Add the contribution of every input event to the dense HWC current ``out`` (in place).

    Written over the output rows ``row0:row1`` (the whole map: 0, out_h).

    The scatter shape of a convolution: work grows with the events, not with the map, which
    wins for very sparse inputs (DESIGN "Kernels"). ``idx`` must be sorted (every event list in
    the engine is): the pixel cursor only walks forward.
    An event of multiplicity k adds k x the weight slab once per valid tap: counted as k
    accumulates per output (``weighted`` False: spikes or integer residual values), or as one
    multiply per output (``weighted`` True: raw event counts into the first layer, SPEC §5).
    Taps that fall outside the output (borders) are neither done nor counted, nor are taps
    outside the band: the bands of one step can run on several threads at once, each into its
    own ``out`` and ``counters`` and given the events of the input rows that reach it (or all),
    and their ops add up to the whole map's.

    Parameters
    ----------
    idx : int32[n], sorted ascending, each site once
        Flat indices into the HWC input map [H, W, Cin]: ``(y * W + x) * Cin + c``.
    cnt : int32[n]
        Multiplicities (>= 1) of the events in ``idx``: 1 for a spike, k for an integer value
        (residual sum) or an event count.
    in_w : int
        Input width W.
    cin : int
        Input channels Cin.
    weight_rows : float32|float64[Cin * kh * kw, Cout], C-contiguous, the dtype of ``out``
        The weight [Cin, kh, kw, Cout] flattened to rows: row ``(c * kh + ky) * kw + kx`` is
        the contiguous Cout slab of input channel c at tap (ky, kx) (torch's
        [Cout, Cin, kh, kw] transposed (1, 2, 3, 0)).
    kh, kw : int
        Kernel height and width.
    stride : int
        Stride, the same along y and x.
    pad : int
        Zero padding on every side, the same along y and x.
    out_h, out_w : int
        Output height and width, ``(H + 2 * pad - kh) // stride + 1`` (and likewise for W).
    row0, row1 : int
        The band of output rows written, ``0 <= row0 <= row1 <= out_h``.
    out : float32|float64[(row1 - row0) * out_w * Cout], C-contiguous, modified in place
        The band's flat HWC output current, ``((oy - row0) * out_w + ox) * Cout + co``; added
        to, not cleared (the layer fills it with the bias first).
    counters : int64[N_COUNTERS], incremented in place
        ``MAC`` (``weighted``) or ``AC`` (not) += the ops done, ``INPUT_EVENTS`` += n.
    weighted : bool
        True for raw event counts into the first layer (counted as multiplies), False for
        spikes and integer residual values (counted as accumulates).

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    rows, _ = _row_taps(kh, stride, pad, out_h)
    cols, _ = tap_table(in_w, kw, stride, pad, out_w)
    scatter_taps(idx, cnt, in_w, cin, weight_rows, kh, kw, rows, cols, out_w, row0, row1, out,
                 counters, weighted)


@kernel
def scatter_taps(idx, cnt, in_w, cin, weight_rows, kh, kw, rows, cols, out_w, row0, row1, out,
                 counters, weighted):
    """:func:`conv2d_scatter` given its geometry as the tap tables of :func:`tap_table`.

    Parameters
    ----------
    idx, cnt, in_w, cin, weight_rows, kh, kw, out_w, row0, row1, out, counters, weighted
        As for :func:`conv2d_scatter`.
    rows : int64[n_rows * kh]
        The input rows' tap table (``tap_table(n_rows, kh, stride, pad, out_h)[0]``) over at
        least every input row that reaches the output; an event on a row past it reaches none.
    cols : int64[W * kw]
        The input columns' tap table, ``tap_table(W, kw, stride, pad, out_w)[0]``.

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    cout = weight_rows.shape[1]
    ops = 0
    n_rows = rows.shape[0] // kh
    y = x = base = 0
    for e in range(idx.shape[0]):
        flat = idx[e]
        y, x, base = next_site(flat, y, x, base, cin, in_w)
        c = flat - base
        k = cnt[e]
        kf = in_dtype_of(out, k)
        taps = 0
        for ky in range(kh):
            oy = rows[y * kh + ky] if y < n_rows else -1
            if oy < row0 or oy >= row1:  # outside the map (-1) or the band
                continue
            for kx in range(kw):
                ox = cols[x * kw + kx]
                if ox < 0:
                    continue
                # 1-D views let LLVM prove the slabs apart and vectorise the add
                w = weight_rows[(c * kh + ky) * kw + kx]
                ob = ((oy - row0) * out_w + ox) * cout
                add_slab(out[ob:ob + cout], w, k, kf)
                taps += 1
        ops += taps * cout if weighted else k * taps * cout
    book_ops(counters, ops, idx.shape[0], weighted)


def densify_padded(idx, cnt, in_w, cin, cout, kh, kw, stride, pad, out_h, out_w, padded,
                   counters, weighted):
    """Write an event list into the zero-padded dense HWC map ``padded`` for the GEMM path.

    Counts on the way the ops :func:`conv2d_scatter` would have counted, so that the op report
    does not depend on which path a step took.
    The dense path then really does ``dense_mac`` multiply-accumulates; the report shows both
    (the layer books ``DENSE_MAC``, not this kernel).

    Parameters
    ----------
    idx : int32[n], sorted ascending, each site once
        Flat indices into the HWC input map [H, W, Cin]: ``(y * W + x) * Cin + c``.
    cnt : int32[n]
        Multiplicities (>= 1) of the events in ``idx``; written as the map's values.
    in_w : int
        Input width W.
    cin : int
        Input channels Cin.
    cout : int
        Output channels Cout (only for the op count).
    kh, kw : int
        Kernel height and width.
    stride : int
        Stride, the same along y and x.
    pad : int
        Zero padding on every side, the same along y and x.
    out_h, out_w : int
        Output height and width of the convolution (for the op count's valid taps).
    padded : float32|float64[H + 2 * pad, W + 2 * pad, Cin], C-contiguous, overwritten
        Zeroed, then ``padded[y + pad, x + pad, c] = cnt`` for every event (converted to the
        array's dtype). The input height H is ``padded.shape[0] - 2 * pad``.
    counters : int64[N_COUNTERS], incremented in place
        ``MAC`` (``weighted``) or ``AC`` (not) += the ops the scatter would have done,
        ``INPUT_EVENTS`` += n.
    weighted : bool
        True for raw event counts into the first layer (counted as multiplies), False for
        spikes and integer residual values (counted as accumulates).

    Returns
    -------
    None
        The results are ``padded`` and ``counters``, both modified in place.
    """
    _, ny_tab = tap_table(padded.shape[0] - 2 * pad, kh, stride, pad, out_h)
    _, nx_tab = tap_table(in_w, kw, stride, pad, out_w)
    # flat (a view): the kernel then fills and indexes one dimension, which compiles in a
    # fraction of a 3-D array's broadcast fill and reshape
    densify_taps(idx, cnt, in_w, cin, cout, pad, padded.shape[1], ny_tab, nx_tab,
                 padded.reshape(-1), counters, weighted)


@kernel
def densify_taps(idx, cnt, in_w, cin, cout, pad, pw, ny_tab, nx_tab, flat, counters, weighted):
    """:func:`densify_padded` on the padded map flattened, given the valid taps per input row
    and column.

    Parameters
    ----------
    idx, cnt, in_w, cin, cout, pad, counters, weighted
        As for :func:`densify_padded`.
    pw : int
        The padded map's width, W + 2 * pad.
    ny_tab : int64[H]
        Valid taps per input row, ``tap_table(H, kh, stride, pad, out_h)[1]``.
    nx_tab : int64[W]
        Valid taps per input column, ``tap_table(W, kw, stride, pad, out_w)[1]``.
    flat : float32|float64|uint8|int16[(H + 2 * pad) * pw * Cin], C-contiguous, overwritten
        The padded HWC map of :func:`densify_padded`, flat.

    Returns
    -------
    None
        The results are ``flat`` and ``counters``, both modified in place.
    """
    for i in range(flat.shape[0]):
        flat[i] = 0
    ops = 0
    y = x = base = 0
    for e in range(idx.shape[0]):
        site = idx[e]
        y, x, base = next_site(site, y, x, base, cin, in_w)
        c = site - base
        k = cnt[e]
        flat[((y + pad) * pw + x + pad) * cin + c] = k
        taps = ny_tab[y] * nx_tab[x]
        ops += taps * cout if weighted else k * taps * cout
    book_ops(counters, ops, idx.shape[0], weighted)


@kernel
def im2col_padded(padded, kh, kw, stride, out_h, out_w, cols):
    """Columns [out_h*out_w, kh*kw*Cin] of a padded HWC map: one contiguous Cin copy per tap.

    The GEMM path's input: ``cols @ W`` with the dense weight rows ``[(ky * kw + kx) * Cin + c,
    Cout]`` is the convolution, channel-innermost (HWC) like the scatter's output.

    Parameters
    ----------
    padded : float32|float64[H + 2 * pad, W + 2 * pad, Cin]
        The zero-padded HWC input map, as :func:`densify_padded` writes it.
    kh, kw : int
        Kernel height and width.
    stride : int
        Stride, the same along y and x.
    out_h, out_w : int
        Output height and width of the convolution.
    cols : float32|float64[out_h * out_w, kh * kw * Cin], the dtype of ``padded``, overwritten
        Row ``oy * out_w + ox`` (an output pixel), column ``(ky * kw + kx) * Cin + c`` gets
        ``padded[oy * stride + ky, ox * stride + kx, c]``. May be a block of rows of a larger
        buffer (several steps stacked into one GEMM).

    Returns
    -------
    None
        The result is ``cols``, overwritten in full.
    """
    cin = padded.shape[2]
    line = padded.shape[1] * cin  # one row of the padded map
    span = kw * cin  # a kernel row's taps: contiguous in a row of the padded map
    src = padded.reshape(-1)
    dst = cols.reshape(-1)
    k = cols.shape[1]
    for oy in range(out_h):
        for ox in range(out_w):
            r = (oy * out_w + ox) * k
            for ky in range(kh):
                # one copy of kw * Cin values per kernel row (its taps in order, each Cin
                # long, as the columns are): a Cin-long copy per tap cost more in loop set-up
                # than in bytes at Cin 32-128
                copy_span(dst, r + ky * span, src, (oy * stride + ky) * line + ox * stride * cin,
                          span)
