"""2-D convolution over an event list, output-stationary (the gather; PERF-NOTES.md).

Each output pixel sums, for a block of output channels held in a small accumulator, the weight
rows of its active input pixels. With a sorted HWC event list the input pixels
``(iy, ox - pad .. ox + pad)`` of one kernel row are one contiguous range of the list, found
through a per-pixel offset table built once per call, and the weight row of an event in that range
is ``idx[e] + offset``: the dense (im2col) weight rows ``[(ky * k + kx) * Cin + c, Cout]`` serve
unchanged, with no channel decoding and no per-event division.
"""

import llvmlite.ir as ir
import numpy as np
from numba import types
from numba.core import config
from numba.extending import intrinsic

from ..jit import kernel
from ._common import book_ops

# Output channels per accumulator block: 64 float32 (four zmm registers) or 64 float64 (eight).
CHANNEL_BLOCK = 64


def _block_buffer_py(like):
    """The accumulator block as a plain array (NUMBA_DISABLE_JIT=1)."""
    return np.empty(CHANNEL_BLOCK, like.dtype)


@intrinsic
def _block_buffer_jit(typingctx, like):
    """A CHANNEL_BLOCK-long 1-D array of ``like``'s dtype on the kernel's stack (an ``alloca``
    in its entry block, not the heap): with constant-trip channel loops LLVM keeps it in vector
    registers across the event loop (PERF-NOTES: a heap block ran at 12 vs 20 G accumulates/s)."""
    arrty = types.Array(like.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        lty = context.get_value_type(like.dtype)
        with builder.goto_entry_block():
            ptr = builder.alloca(ir.ArrayType(lty, CHANNEL_BLOCK))
        ary = context.make_array(arrty)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(lty))
        context.populate_array(ary, data=builder.bitcast(ptr, lty.as_pointer()),
                               shape=[context.get_constant(types.intp, CHANNEL_BLOCK)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return arrty(like), codegen


_block_buffer = _block_buffer_py if config.DISABLE_JIT else _block_buffer_jit


@kernel
def conv2d_gather(idx, cnt, in_h, in_w, cin, weight_rows, bias, k, out, counters, weighted):
    """The current of a stride-1, "same"-padded k x k convolution of an event list, by gather.

    Output-stationary: output pixel (oy, ox) starts from the bias and adds, kernel row by
    kernel row, the weight rows of the events of input pixels ``(oy - k//2 + ky,
    ox - k//2 .. ox + k//2)``, one output-channel block at a time. Computes what
    :func:`~eventformer.kernels.conv2d_scatter` computes after the layer's bias fill (with
    stride 1 and padding k//2), and counts the same ops: an event of multiplicity m adds m x its
    weight row once per valid tap, counted as m accumulates per output (``weighted`` False) or
    one multiply per output (``weighted`` True). Taps in the padding are neither done nor
    counted.

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
    out : float32|float64[H * W * Cout], C-contiguous, overwritten
        The flat HWC output current, ``(oy * W + ox) * Cout + co``: bias plus the convolution.
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
    n = idx.shape[0]
    cout = weight_rows.shape[1]
    pad = k // 2
    npix = in_h * in_w
    # start[p] = first event of input pixel p (or later): pixel p's events are start[p]:start[p+1]
    start = np.empty(npix + 1, np.int64)
    e = 0
    for p in range(npix + 1):
        lim = p * cin
        while e < n and idx[e] < lim:
            e += 1
        start[p] = e
    # prefix sums of the multiplicities: the ops of an event range without walking it again
    cum = np.zeros(n + 1, np.int64)
    for e in range(n):
        cum[e + 1] = cum[e] + cnt[e]
    # the accumulator block, on the stack: every full block's loops run exactly CHANNEL_BLOCK
    # times, so LLVM unrolls them into vector ops and keeps the block in registers
    acc = _block_buffer(out)
    kbuf = np.empty(1, out.dtype)
    ops = 0
    nfull = cout - cout % CHANNEL_BLOCK
    for oy in range(in_h):
        for ox in range(in_w):
            ob = (oy * in_w + ox) * cout
            x0 = max(ox - pad, 0)
            x1 = min(ox + pad, in_w - 1)
            for c0 in range(0, cout, CHANNEL_BLOCK):
                full = c0 < nfull
                cb = CHANNEL_BLOCK if full else cout - c0
                bb = bias[c0:c0 + cb]
                if full:
                    for j in range(CHANNEL_BLOCK):
                        acc[j] = bb[j]
                else:
                    for j in range(cb):
                        acc[j] = bb[j]
                for ky in range(k):
                    iy = oy - pad + ky
                    if iy < 0 or iy >= in_h:
                        continue
                    row = iy * in_w
                    lo = start[row + x0]
                    hi = start[row + x1 + 1]
                    mult = cum[hi] - cum[lo]
                    if c0 == 0:
                        ops += (hi - lo) if weighted else mult
                    # idx[e] - (row + ox - pad) * cin = kx * cin + c within this kernel row
                    off = ky * k * cin - (row + ox - pad) * cin
                    if full and mult == hi - lo:
                        # the spike fast path: every event of the range has multiplicity 1
                        for e in range(lo, hi):
                            # a 1-D view of the row: no flat index, no gather instructions
                            w = weight_rows[idx[e] + off, c0:c0 + CHANNEL_BLOCK]
                            for j in range(CHANNEL_BLOCK):
                                acc[j] += w[j]
                    else:
                        # a partial block, or a range with multiplicities > 1 (same order of adds)
                        for e in range(lo, hi):
                            w = weight_rows[idx[e] + off, c0:c0 + cb]
                            m = cnt[e]
                            if m == 1:
                                for j in range(cb):
                                    acc[j] += w[j]
                            else:
                                kbuf[0] = m  # m in the weights' dtype, as the scatter rounds
                                kf = kbuf[0]
                                for j in range(cb):
                                    acc[j] += kf * w[j]
                o = out[ob + c0:ob + c0 + cb]
                if full:
                    for j in range(CHANNEL_BLOCK):
                        o[j] = acc[j]
                else:
                    for j in range(cb):
                        o[j] = acc[j]
    book_ops(counters, ops * cout, n, weighted)
