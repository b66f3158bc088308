"""Token-wise linear maps (1x1 convolutions) over an event list, and the dense fallback's input.

Activations are ``[token, channel]`` flat (``n * C + c``); weights ``[Cin, Cout]`` so one input
event reads one contiguous row and adds it to its token's contiguous output row.
"""

from ..jit import kernel
from ._common import add_slab, book_ops, in_dtype_of, next_site


@kernel
def linear_scatter(idx, cnt, cin, weight, out, counters, weighted):
    """``out[n, :] += k * weight[c, :]`` for every event (n, c) of multiplicity k; in place.

    The scatter shape of a token-wise linear map: one event reads one contiguous weight row, so
    the work grows with the events. ``idx`` must be sorted: the token cursor only walks forward.
    Counted as k accumulates per output (spikes, integer residual values) or one multiply per
    output when ``weighted``.

    Parameters
    ----------
    idx : int32[n], sorted ascending, each site once
        Flat indices into the [tokens, Cin] input: ``token * Cin + c``.
    cnt : int32[n]
        Multiplicities (>= 1) of the events in ``idx``: 1 for a spike, k for an integer value.
    cin : int
        Input channels Cin.
    weight : float32|float64[Cin, Cout], C-contiguous, the dtype of ``out``
        Row c is the contiguous Cout slab input channel c adds (torch's [Cout, Cin] transposed).
    out : float32|float64[tokens * Cout], C-contiguous, modified in place
        The flat [token, Cout] output current, ``token * Cout + co``; added to, not cleared (the
        layer fills it with the bias first). Its size gives the token count.
    counters : int64[N_COUNTERS], incremented in place
        ``MAC`` (``weighted``: n x Cout) or ``AC`` (not: sum(cnt) x Cout), ``INPUT_EVENTS`` += n.
    weighted : bool
        True for raw event counts (counted as multiplies), False for spikes and integer
        residual values (counted as accumulates).

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    cout = weight.shape[1]
    ops = 0
    tokens = out.shape[0] // cout
    n = base = 0
    for e in range(idx.shape[0]):
        flat = idx[e]
        _, n, base = next_site(flat, 0, n, base, cin, tokens + 1)  # n: the event's token
        c = flat - base
        k = cnt[e]
        # 1-D views of the rows let LLVM vectorise the adds
        add_slab(out[n * cout:(n + 1) * cout], weight[c], k, in_dtype_of(out, k))
        ops += cout if weighted else k * cout
    book_ops(counters, ops, idx.shape[0], weighted)


@kernel
def linear_event_ops(cnt, cout, counters, weighted):
    """The counters :func:`linear_scatter` would add, for a step that ran dense.

    So that the op report does not depend on which path a step took; the layer books the GEMM's
    own ``DENSE_MAC`` itself.

    Parameters
    ----------
    cnt : int32[n]
        Multiplicities (>= 1) of the step's n input events (their sites do not matter).
    cout : int
        Output channels Cout.
    counters : int64[N_COUNTERS], incremented in place
        ``MAC`` (``weighted``: n x Cout) or ``AC`` (not: sum(cnt) x Cout), ``INPUT_EVENTS`` += n.
    weighted : bool
        True for raw event counts (counted as multiplies), False for spikes and integer
        residual values (counted as accumulates).

    Returns
    -------
    None
        The result is ``counters``, modified in place.
    """
    ops = cnt.shape[0] * cout
    if not weighted:
        total = 0
        for e in range(cnt.shape[0]):
            total += cnt[e]
        ops = total * cout
    book_ops(counters, ops, cnt.shape[0], weighted)
