"""2-D convolution over an event list, output-stationary (the gather; PERF-NOTES.md).

Each output pixel sums, for a block of output channels held in a small accumulator, the weight
rows of its active input pixels. With a sorted HWC event list the input pixels
``(iy, ox - pad .. ox + pad)`` of one kernel row are one contiguous range of the list, found
through a per-pixel offset table built once per call, and the weight row of an event in that range
is ``idx[e] + offset``: the dense (im2col) weight rows ``[(ky * k + kx) * Cin + c, Cout]`` serve
unchanged, with no channel decoding and no per-event division.

:func:`conv2d_gather` adds float weights into float accumulators; :func:`conv2d_gather_int`
(integer mode, SPEC §6) int16 weights into int32 accumulators, and int8 weights into int16 lanes
flushed into int32 (PERF-NOTES: twice the lanes per vector add, exact).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import config
from numba.extending import intrinsic

from ..jit import inlined, kernel
from ._common import book_ops, in_dtype_of, scratch, wide_vectors

# Output channels per accumulator block: blocks of BLOCK while they fit, then one of BLOCK_SMALL,
# then one partial block. BLOCK float32 or int32 accumulators take eight zmm registers, BLOCK int16
# lanes four. A wider block walks an output pixel's event ranges fewer times (the per-event index
# and address work is shared by more lanes). Measured on random inputs at 5-40% density, 1 thread:
# the int8-weight gather ran 1.4-1.5x faster with 128-channel blocks than with 64 on SPS2, SPS3
# and RPE, the int16 one 1.2x; 256 gained up to a quarter on RPE (int8) and lost SPS2 (Cout 128
# would fall to two blocks of 64); 32 was unrolled by LLVM into scalar adds (PERF-NOTES) and ran
# 5-17x slower than 64.
BLOCK = 128
BLOCK_SMALL = 64


def _block_buffer_py(like, length):
    """The accumulator block as a plain array (NUMBA_DISABLE_JIT=1)."""
    return np.empty(length, like.dtype if isinstance(like, np.ndarray) else like)


@intrinsic
def _block_buffer_jit(typingctx, like, length):
    """A ``length``-long 1-D array on the kernel's stack (an ``alloca`` in its entry block, not
    the heap), of ``like``'s dtype (``like`` an array, or a numpy scalar type such as
    ``np.int16``); ``length`` must be a compile-time constant (a module constant). With
    constant-trip channel loops LLVM keeps it in vector registers across the event loop
    (PERF-NOTES: a heap block ran at 12 vs 20 G accumulates/s)."""
    if not isinstance(length, types.IntegerLiteral):
        return None  # Numba retries with the literal value of a constant
    n = length.literal_value
    dtype = like.dtype if isinstance(like, types.Array) else like.instance_type
    arrty = types.Array(dtype, 1, "C")

    def codegen(context, builder, signature, args):
        lty = context.get_value_type(dtype)
        with builder.goto_entry_block():
            ptr = builder.alloca(ir.ArrayType(lty, n))
        ary = context.make_array(arrty)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(lty))
        context.populate_array(ary, data=builder.bitcast(ptr, lty.as_pointer()),
                               shape=[context.get_constant(types.intp, n)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return arrty(like, length), codegen


_block_buffer = _block_buffer_py if config.DISABLE_JIT else _block_buffer_jit


# Unit adds (multiplicity counted) the int16 lanes of an int8-weight gather take between flushes
# into the int32 block: |w| <= 128 and 128 * 256 = 32768, so a lane stays within
# [-32768, 32512] and never overflows.
LANE_FLUSH = 256


@inlined
def _pixel_starts(idx, p0, p1, cin, start):
    """``start[p]`` for pixels p0 <= p <= p1 = the first event at input pixel p or later: pixel
    p's events are ``start[p]:start[p + 1]``. A binary search finds pixel p0's first event
    (written out: ``np.searchsorted`` compiles Numba's generic implementation on every first
    run, about half a second)."""
    n = idx.shape[0]
    first = p0 * cin
    e, hi = 0, n
    while e < hi:
        mid = (e + hi) >> 1
        if idx[mid] < first:
            e = mid + 1
        else:
            hi = mid
    for p in range(p0, p1 + 1):
        lim = p * cin
        while e < n and idx[e] < lim:
            e += 1
        start[p] = e


@inlined
def _pixel_ops(start, cum, in_h, in_w, k, oy, ox, weighted):
    """The ops of output pixel (oy, ox) per output channel: its valid taps' events (weighted) or
    their multiplicities (not)."""
    pad = k // 2
    x0 = max(ox - pad, 0)
    x1 = min(ox + pad, in_w - 1)
    ops = 0
    for ky in range(k):
        iy = oy - pad + ky
        if iy < 0 or iy >= in_h:
            continue
        lo = start[iy * in_w + x0]
        hi = start[iy * in_w + x1 + 1]
        ops += (hi - lo) if weighted else (cum[hi] - cum[lo])
    return ops


@inlined
def _wide_block(idx, cnt, start, cum, in_h, in_w, cin, weight_rows, bias, k, oy, ox, c0, cb,
                acc, lane, o):
    """``o[:cb]`` = output pixel (oy, ox)'s channels ``c0:c0 + cb``, accumulated in ``acc`` (the
    dtype of ``o``): bias first, then kernel row by kernel row the events in list order, an
    event of multiplicity m as ``m * w`` (m in ``acc``'s dtype), as :func:`conv2d_gather` adds.
    Inlined with a constant ``cb``, the channel loops vectorise and ``acc`` stays in registers."""
    pad = k // 2
    x0 = max(ox - pad, 0)
    x1 = min(ox + pad, in_w - 1)
    bb = bias[c0:c0 + cb]
    for j in range(cb):
        acc[j] = bb[j]
    for ky in range(k):
        iy = oy - pad + ky
        if iy < 0 or iy >= in_h:
            continue
        row = iy * in_w
        lo = start[row + x0]
        hi = start[row + x1 + 1]
        off = ky * k * cin - (row + ox - pad) * cin
        if cum[hi] - cum[lo] == hi - lo:  # the spike fast path: all multiplicities 1
            for e in range(np.uint64(lo), np.uint64(hi)):
                w = weight_rows[np.uint64(idx[e] + off), c0:c0 + cb]
                for j in range(cb):
                    acc[j] += w[j]
        else:
            for e in range(lo, hi):
                w = weight_rows[np.uint64(idx[e] + off), c0:c0 + cb]
                m = cnt[e]
                if m == 1:
                    for j in range(cb):
                        acc[j] += w[j]
                else:
                    kf = in_dtype_of(acc, m)
                    for j in range(cb):
                        acc[j] += kf * w[j]
    for j in range(cb):
        o[j] = acc[j]


@inlined
def _narrow_block(idx, cnt, start, cum, in_h, in_w, cin, weight_rows, bias, k, oy, ox, c0, cb,
                  acc, lane, o):
    """:func:`_wide_block` for int8 weights: a kernel row's spikes (all multiplicities 1) go
    into the int16 ``lane`` block, flushed into the int32 ``acc`` block before it could take more
    than LANE_FLUSH adds; a row whose events carry multiplicities adds m * w into ``acc``."""
    pad = k // 2
    x0 = max(ox - pad, 0)
    x1 = min(ox + pad, in_w - 1)
    bb = bias[c0:c0 + cb]
    for j in range(cb):
        acc[j] = bb[j]
        lane[j] = 0
    used = 0  # unit adds in the lanes since their last flush
    for ky in range(k):
        iy = oy - pad + ky
        if iy < 0 or iy >= in_h:
            continue
        row = iy * in_w
        lo = start[row + x0]
        hi = start[row + x1 + 1]
        off = ky * k * cin - (row + ox - pad) * cin
        if cum[hi] - cum[lo] == hi - lo:  # the spike fast path: all multiplicities 1
            e = lo
            while e < hi:
                stop = min(hi, e + (LANE_FLUSH - used))
                for e2 in range(np.uint64(e), np.uint64(stop)):
                    w = weight_rows[np.uint64(idx[e2] + off), c0:c0 + cb]
                    for j in range(cb):
                        lane[j] += w[j]
                used += stop - e
                e = stop
                if used == LANE_FLUSH:
                    for j in range(cb):
                        acc[j] += lane[j]
                        lane[j] = 0
                    used = 0
        else:
            # a range with multiplicities (the residual stream's integers): each event's m * w
            # straight into the int32 block, as the int16-weight gather adds; per-event lane
            # bookkeeping ran ~5x slower than these 32-bit vector multiply-adds
            for e in range(np.uint64(lo), np.uint64(hi)):
                w = weight_rows[np.uint64(idx[e] + off), c0:c0 + cb]
                kf = in_dtype_of(acc, cnt[e])
                for j in range(cb):
                    acc[j] += kf * w[j]
    for j in range(cb):
        o[j] = acc[j] + lane[j]


def _gather_kernel(narrow, whole, partial, name):
    """The gather kernel with :func:`_narrow_block` (``narrow``: int8 weights) or
    :func:`_wide_block` inlined for every channel block: blocks of BLOCK, then one of
    BLOCK_SMALL (``whole``), then a partial one (``partial``), each with its own accumulators
    on the stack.

    The bools reach the body as closure constants: Numba prunes the other block's calls, and
    the blocks a kernel is not for, before inlining, so a kernel holds only the block code it
    runs (each block inlined costs a fraction of a second to compile on a first run; the
    partial one, whose channel loops have a runtime trip count, the most), and bools keep the
    closure cacheable (its cache key holds the cells). ``name`` names the kernel and its cache
    files.
    """

    def gather(idx, cnt, in_h, in_w, cin, weight_rows, bias, k, row0, row1, out, counters,
               weighted):
        wide_vectors()
        n = idx.shape[0]
        cout = weight_rows.shape[1]
        npix = in_h * in_w
        # the input pixels the band's kernel rows reach: only their entries are filled, so a
        # band walks its own events, not the whole list (bands of one step run at once)
        pad = k // 2
        p0 = max(row0 - pad, 0) * in_w
        p1 = max(min(row1 + pad, in_h) * in_w, p0)
        start = scratch(npix + 1, np.int64)
        _pixel_starts(idx, p0, p1, cin, start)
        # prefix sums of the multiplicities: the ops of an event range without walking it again
        cum = scratch(n + 1, np.int64)
        lo, hi = start[p0], start[p1]
        cum[lo] = 0
        for e in range(lo, hi):
            cum[e + 1] = cum[e] + cnt[e]
        acc_big = _block_buffer(out, BLOCK)
        acc_small = _block_buffer(out, BLOCK_SMALL)
        acc_part = _block_buffer(out, BLOCK_SMALL)
        lane_big = _block_buffer(np.int16, BLOCK)
        lane_small = _block_buffer(np.int16, BLOCK_SMALL)
        lane_part = _block_buffer(np.int16, BLOCK_SMALL)
        n_big = cout // BLOCK * BLOCK
        small = cout - n_big >= BLOCK_SMALL
        part0 = n_big + BLOCK_SMALL if small else n_big
        ops = 0
        for oy in range(row0, row1):
            for ox in range(in_w):
                ops += _pixel_ops(start, cum, in_h, in_w, k, oy, ox, weighted)
                ob = ((oy - row0) * in_w + ox) * cout
                if whole:
                    for c0 in range(0, n_big, BLOCK):
                        if narrow:
                            _narrow_block(idx, cnt, start, cum, in_h, in_w, cin, weight_rows,
                                          bias, k, oy, ox, c0, BLOCK, acc_big, lane_big,
                                          out[ob + c0:ob + c0 + BLOCK])
                        else:
                            _wide_block(idx, cnt, start, cum, in_h, in_w, cin, weight_rows,
                                        bias, k, oy, ox, c0, BLOCK, acc_big, lane_big,
                                        out[ob + c0:ob + c0 + BLOCK])
                if whole and small:
                    if narrow:
                        _narrow_block(idx, cnt, start, cum, in_h, in_w, cin, weight_rows, bias,
                                      k, oy, ox, n_big, BLOCK_SMALL, acc_small, lane_small,
                                      out[ob + n_big:ob + part0])
                    else:
                        _wide_block(idx, cnt, start, cum, in_h, in_w, cin, weight_rows, bias,
                                    k, oy, ox, n_big, BLOCK_SMALL, acc_small, lane_small,
                                    out[ob + n_big:ob + part0])
                if partial and part0 < cout:
                    if narrow:
                        _narrow_block(idx, cnt, start, cum, in_h, in_w, cin, weight_rows, bias,
                                      k, oy, ox, part0, cout - part0, acc_part, lane_part,
                                      out[ob + part0:ob + cout])
                    else:
                        _wide_block(idx, cnt, start, cum, in_h, in_w, cin, weight_rows, bias,
                                    k, oy, ox, part0, cout - part0, acc_part, lane_part,
                                    out[ob + part0:ob + cout])
        book_ops(counters, ops * cout, n, weighted)

    gather.__name__ = gather.__qualname__ = name
    return kernel(gather)


#: The channel blocks a Cout takes: whole blocks only (a multiple of BLOCK_SMALL), one partial
#: block only (fewer than BLOCK_SMALL), or both; each kind its own kernel, so that a model's
#: first run compiles the blocks its layers use (the full-size Spikformer: whole blocks only).
WHOLE, PARTIAL, MIXED = "whole", "partial", "mixed"
_PLANS = {WHOLE: (True, False), PARTIAL: (False, True), MIXED: (True, True)}

#: The gather kernels by (narrow, plan): narrow, int8 weights into int16 lanes flushed into
#: int32 blocks, else float blocks for float weights and int32 ones for int16; each compiled on
#: its first call.
_GATHERS = {(narrow, plan): _gather_kernel(narrow, *_PLANS[plan], "conv2d_gather"
                                           + ("_int8" if narrow else "")
                                           + ("" if plan == WHOLE else "_" + plan))
            for narrow in (False, True) for plan in _PLANS}


def _plan(cout):
    """The kernel kind (see :data:`_PLANS`) of a layer with ``cout`` output channels."""
    if cout % BLOCK_SMALL == 0:
        return WHOLE
    return PARTIAL if cout < BLOCK_SMALL else MIXED


def _gather_for(weight_rows):
    """The gather kernel for these weights: see :data:`_GATHERS`."""
    return _GATHERS[weight_rows.dtype.itemsize == 1, _plan(weight_rows.shape[1])]


def conv2d_gather(idx, cnt, in_h, in_w, cin, weight_rows, bias, k, row0, row1, out, counters,
                  weighted):
    """The current of a stride-1, "same"-padded k x k convolution of an event list, by gather.

    Computed over the output rows ``row0:row1`` (the whole map: 0, H).

    Output-stationary: output pixel (oy, ox) starts from the bias and adds, kernel row by
    kernel row, the weight rows of the events of input pixels ``(oy - k//2 + ky,
    ox - k//2 .. ox + k//2)``, one output-channel block at a time. Computes what
    :func:`~eventformer.kernels.conv2d_scatter` computes after the layer's bias fill (with
    stride 1 and padding k//2), and counts the same ops: an event of multiplicity m adds m x its
    weight row once per valid tap, counted as m accumulates per output (``weighted`` False) or
    one multiply per output (``weighted`` True). Taps in the padding are neither done nor
    counted. A band of rows reads what it needs from the whole event list, so the bands of one
    step can run on several threads at once, each into its own ``out`` and ``counters``: their
    ops add up to the whole map's, and each books all n events in ``INPUT_EVENTS``.

    Parameters
    ----------
    idx : int32[n], sorted ascending, each site once
        Flat indices into the HWC input map [H, W, Cin]: ``(y * W + x) * Cin + c``.
    cnt : int32[n]
        Multiplicities (>= 1) of the events in ``idx``: 1 for a spike, m for an integer value.
    in_h : int
        Input height H (also the output height).
    in_w : int
        Input width W (also the output width).
    cin : int
        Input channels Cin.
    weight_rows : float32|float64[k * k * Cin, Cout], C-contiguous, the dtype of ``out``
        The dense (im2col) weight rows: row ``(ky * k + kx) * Cin + c`` is the contiguous Cout
        slab of input channel c at tap (ky, kx) (torch's [Cout, Cin, k, k] transposed
        (2, 3, 1, 0)).
    bias : float32|float64[Cout], the dtype of ``out``
        Added to every output pixel (the folded BatchNorm shift).
    k : int
        Kernel height and width, odd; the padding is ``k // 2`` and the stride 1.
    row0, row1 : int
        The band of output rows computed, ``0 <= row0 <= row1 <= H``.
    out : float32|float64[(row1 - row0) * W * Cout], C-contiguous, overwritten
        The band's flat HWC output current, ``((oy - row0) * W + ox) * Cout + co``: bias plus
        the convolution.
    counters : int64[N_COUNTERS], incremented in place
        ``MAC`` (``weighted``) or ``AC`` (not) += the ops done, ``INPUT_EVENTS`` += n.
    weighted : bool
        True for raw event counts (counted as multiplies), False for spikes and integer
        residual values (counted as accumulates).

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    _gather_for(weight_rows)(idx, cnt, in_h, in_w, cin, weight_rows, bias, k, row0, row1, out,
                             counters, weighted)


def conv2d_gather_int(idx, cnt, in_h, in_w, cin, weight_rows, bias, k, row0, row1, out,
                      counters, weighted):
    """The exact integer current of a stride-1, "same"-padded k x k convolution, by gather.

    :func:`conv2d_gather` for integer mode (SPEC §6): the same geometry, argument meaning and op
    counting, with int8 or int16 weights, an int32 bias and int32 output, exact (equal to the
    integer convolution computed in int32). int16 weights are added into int32 accumulators.
    int8 weights of spikes are added into int16 lanes (``vpmovsxbw`` + ``vpaddw``: twice the
    lanes of int32) flushed into the int32 accumulators after at most ``LANE_FLUSH`` (256) adds:
    256 x 128 fits an int16, so a lane never overflows; events with multiplicities m > 1 (a
    kernel row holding any) add m x the weight into the int32 accumulators. Ruling out int32
    overflow is the caller's (a layer's worst case is checked at load).

    Parameters
    ----------
    idx : int32[n], sorted ascending, each site once
        Flat indices into the HWC input map [H, W, Cin]: ``(y * W + x) * Cin + c``.
    cnt : int32[n]
        Multiplicities (>= 1) of the events in ``idx``: 1 for a spike, m for an integer value.
    in_h : int
        Input height H (also the output height).
    in_w : int
        Input width W (also the output width).
    cin : int
        Input channels Cin.
    weight_rows : int8|int16[k * k * Cin, Cout], C-contiguous
        The quantised dense (im2col) weight rows: row ``(ky * k + kx) * Cin + c`` is the
        contiguous Cout slab of input channel c at tap (ky, kx), as in :func:`conv2d_gather`.
    bias : int32[Cout]
        The quantised bias, added to every output pixel.
    k : int
        Kernel height and width, odd; the padding is ``k // 2`` and the stride 1.
    row0, row1 : int
        The band of output rows computed, ``0 <= row0 <= row1 <= H``.
    out : int32[(row1 - row0) * W * Cout], C-contiguous, overwritten
        The band's flat HWC output current, ``((oy - row0) * W + ox) * Cout + co``: bias plus
        the convolution.
    counters : int64[N_COUNTERS], incremented in place
        ``MAC`` (``weighted``) or ``AC`` (not) += the ops done, ``INPUT_EVENTS`` += n.
    weighted : bool
        True for raw event counts (counted as multiplies), False for spikes and integer
        residual values (counted as accumulates).

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    _gather_for(weight_rows)(idx, cnt, in_h, in_w, cin, weight_rows, bias, k, row0, row1, out,
                             counters, weighted)
