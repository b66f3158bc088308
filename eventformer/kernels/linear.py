"""Token-wise linear maps (1x1 convolutions) over an event list, and the dense fallback's input.

Activations are ``[token, channel]`` flat (``n * C + c``); weights ``[Cin, Cout]`` so one input
event reads one contiguous row and adds it to its token's contiguous output row.
"""

import numpy as np

from ..jit import kernel
from ._common import add_slab, book_ops, next_site


@kernel
def linear_scatter(idx, cnt, cin, weight, out, counters, weighted):
    """``out[n, :] += k * weight[c, :]`` for every event (n, c) of multiplicity k; in place.

    Counted as k accumulates per output (spikes, integer residual values) or one multiply per
    output when ``weighted``.
    """
    cout = weight.shape[1]
    kbuf = np.empty(1, out.dtype)
    ops = 0
    tokens = out.shape[0] // cout
    n = base = 0
    for e in range(idx.shape[0]):
        flat = idx[e]
        _, n, base = next_site(flat, 0, n, base, cin, tokens + 1)  # n: the event's token
        c = flat - base
        k = cnt[e]
        kbuf[0] = k
        # 1-D views of the rows let LLVM vectorise the adds
        add_slab(out[n * cout:(n + 1) * cout], weight[c], k, kbuf[0])
        ops += cout if weighted else k * cout
    book_ops(counters, ops, idx.shape[0], weighted)


@kernel
def linear_event_ops(cnt, cout, counters, weighted):
    """The counters :func:`linear_scatter` would add, for a step that ran dense."""
    ops = cnt.shape[0] * cout
    if not weighted:
        total = 0
        for e in range(cnt.shape[0]):
            total += cnt[e]
        ops = total * cout
    book_ops(counters, ops, cnt.shape[0], weighted)
