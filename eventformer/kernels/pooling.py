"""Max-pool of a dense real-valued map: the current of a layer that pools before its LIF.

QKFormer's patch embeddings and the Spike-driven Transformer's last SPS stage max-pool the
BatchNorm output, a real-valued current, and only then spike it. In the integer modes a current
is an int32 in its channel's own unit, and a max over one channel's values is exact in that unit,
so the same kernel serves both.

Op counts (SPEC §5): ``MAXIMA``, the counter of the spike max-pools' window maxima, gets one per
output value: every window of a dense map holds a maximum, and each is formed.
"""

from ..jit import kernel
from .counters import MAXIMA


@kernel
def maxpool_current(current, in_h, in_w, c, k, stride, pad, out_h, out_w, out, counters):
    """Max-pool (PyTorch's MaxPool2d: padding never wins, floor mode) of a dense HWC map.

    Separable: the max over a window's rows first (one contiguous row of ``in_w * c`` values
    per input row), then over its columns, each inner loop over a channel row so that it
    vectorises. A window of k x k values costs at most k - 1 compares along its rows (shared
    with the windows beside it) and k - 1 along its columns.

    Parameters
    ----------
    current : float32|float64|int32[in_h * in_w * c]
        The map, flat HWC ``(y * in_w + x) * c + ch``.
    in_h, in_w : int
        Height and width of the map.
    c : int
        Channels of the map.
    k : int
        Window size, the same along y and x.
    stride : int
        Stride, the same along y and x.
    pad : int
        Padding on every side (``pad < k``, so every window holds at least one value of the map);
        padded positions take no part in the max.
    out_h, out_w : int
        Pooled height and width, ``(in_h + 2 * pad - k) // stride + 1`` (and likewise for w).
    out : float32|float64|int32[out_h * out_w * c], the dtype of ``current``, overwritten
        The pooled map, flat HWC ``(oy * out_w + ox) * c + ch``.
    counters : int64[N_COUNTERS], incremented in place
        ``MAXIMA`` += ``out_h * out_w * c`` (each output value is one window maximum formed).

    Returns
    -------
    None
        The result is ``out``, overwritten in full.
    """
    row = in_w * c
    rows_max = current[:row].copy()  # the max over a window's rows, one input row wide
    for oy in range(out_h):
        y0 = max(oy * stride - pad, 0)
        y1 = min(oy * stride - pad + k, in_h)
        rows_max[:] = current[y0 * row:(y0 + 1) * row]
        for y in range(y0 + 1, y1):
            src = current[y * row:(y + 1) * row]
            for i in range(row):
                if src[i] > rows_max[i]:
                    rows_max[i] = src[i]
        for ox in range(out_w):
            x0 = max(ox * stride - pad, 0)
            x1 = min(ox * stride - pad + k, in_w)
            o = out[(oy * out_w + ox) * c:(oy * out_w + ox + 1) * c]
            o[:] = rows_max[x0 * c:(x0 + 1) * c]
            for x in range(x0 + 1, x1):
                src = rows_max[x * c:(x + 1) * c]
                for ch in range(c):
                    if src[ch] > o[ch]:
                        o[ch] = src[ch]
    counters[MAXIMA] += out_h * out_w * c
