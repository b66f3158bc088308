"""Token-wise linear maps (1x1 convolutions) over an event list, and the dense fallback's input.

Activations are ``[token, channel]`` flat (``n * C + c``); weights ``[Cin, Cout]`` so one input
event reads one contiguous row and adds it to its token's contiguous output row.
"""

import numpy as np
from numba import njit

from .counters import AC, MAC, INPUT_EVENTS


@njit(cache=True, nogil=True)
def linear_scatter(idx, cnt, cin, weight, out, counters, weighted):
    """``out[n, :] += k * weight[c, :]`` for every event (n, c) of multiplicity k; in place.

    Counted as k accumulates per output (spikes, integer residual values) or one multiply per
    output when ``weighted``.
    """
    cout = weight.shape[1]
    kbuf = np.empty(1, out.dtype)
    ops = 0
    for e in range(idx.shape[0]):
        flat = idx[e]
        n = flat // cin
        c = flat - n * cin
        k = cnt[e]
        o = out[n * cout:(n + 1) * cout]  # 1-D views: vectorised adds
        w = weight[c]
        if k == 1:
            for co in range(cout):
                o[co] += w[co]
        else:
            kbuf[0] = k
            kf = kbuf[0]
            for co in range(cout):
                o[co] += kf * w[co]
        if weighted:
            ops += cout
        else:
            ops += k * cout
    if weighted:
        counters[MAC] += ops
    else:
        counters[AC] += ops
    counters[INPUT_EVENTS] += idx.shape[0]


@njit(cache=True, nogil=True)
def linear_event_ops(cnt, cout, counters, weighted):
    """The counters :func:`linear_scatter` would add, for a step that ran dense."""
    if weighted:
        counters[MAC] += cnt.shape[0] * cout
    else:
        total = 0
        for e in range(cnt.shape[0]):
            total += cnt[e]
        counters[AC] += total * cout
    counters[INPUT_EVENTS] += cnt.shape[0]
