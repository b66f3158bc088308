"""DS2TA's TASA: a layer's current attenuated over a window of past steps (SPEC §4).

    I_t = sum_{m=0}^{T_AW-1} J_{t-m} * 2^(-tau m) + b'

J_t = W' s_t is the ordinary per-step synaptic current without the folded shift b'. The layer
keeps the currents of its last T_AW - 1 steps (a ring of dense arrays); steps without input
have J = 0 and are skipped (adding a zero changes no bit), so they cost no decay either.
"""

from ..jit import kernel
from .counters import SHIFT


@kernel
def tasa_current(current, history, slots, factors, bias, out, counters):
    """``out = current + sum_m history[slots[m]] * factors[m] + bias`` (bias tiled), in order.

    The attenuated current of one step: ``current`` is J_t, ``history[slots[m]]`` the stored
    J_{t-1-m} of a live earlier step and ``factors[m]`` its decay 2^(-tau (1 + m)) (an exact
    multiply in float: a power of two). Per element the terms are added left to right: J_t, the
    decayed history in the order of ``slots``, then the bias; the same order whatever path made
    J, so that streaming and offline runs agree to the bit. ``current`` may be ``out`` itself.

    Parameters
    ----------
    current : float32|float64[size], the dtype of ``out``
        J_t, the step's synaptic current without bias (flat, channel-innermost).
    history : float32|float64[slots_total, size], the dtype of ``out``
        Stored currents of earlier steps; only the rows named in ``slots`` are read.
    slots : int64[m]
        Rows of ``history`` to add, nearest step first (m <= T_AW - 1; steps without input and
        steps before the sample start are left out).
    factors : float32|float64[m], the dtype of ``out``
        The decay of each row in ``slots``: 2^(-tau k), k its distance in steps.
    bias : float32|float64[p], p divides size, the dtype of ``out``
        The folded shift b', one period of it (element i gets ``bias[i % p]``).
    out : float32|float64[size], overwritten
        The attenuated current I_t.
    counters : int64[N_COUNTERS], incremented in place
        ``SHIFT`` += m x size (one decay per history element).

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    size = out.shape[0]
    p = bias.shape[0]
    m = slots.shape[0]
    for base in range(0, size, p):
        for i in range(base, base + p):
            x = current[i]
            for r in range(m):
                x = x + history[slots[r], i] * factors[r]
            out[i] = x + bias[i - base]
    counters[SHIFT] += m * size
