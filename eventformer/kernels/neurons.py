"""Spiking neuron updates (SPEC §1), one step, over a layer's dense membrane array.

The membrane is the only dense array a layer keeps: leak and the folded BatchNorm shift reach every
neuron every step, so the update is dense; what it emits is a sorted index list of spikes.
A step without synaptic input passes its constant current (the bias) as one short period instead
of a dense array, and :func:`lif_quiet_step` says when such steps have brought every membrane to
the fixed point of that current, after which the layer may skip them exactly.

Arithmetic stays in the dtype of the arrays (float32 or float64). Scalar parameters arrive in a
small array of that same dtype (``params``) because a Python float would make Numba compute in
float64 and round twice, which changes float32 spike decisions.
"""

import numpy as np

from ..jit import inlined, kernel
from .counters import NEURON_UPDATES

# params layout for lif_step
P_TAU_INV = 0  # 1 / tau, rounded once to the layer's dtype
P_THETA = 1
P_V_RESET = 2
P_KEEP = 3  # 1 - 1/tau, for decay_input=False
PARAMS_LEN = 4


@inlined
def _lif_range(v, cur, m, tau_inv, theta, v_reset, keep, hard_reset, decay_input, flags, track):
    """Neurons v[0..m-1] with currents cur[0..m-1]; returns their spike count and, when
    ``track``, whether any membrane changed value (False when not tracked)."""
    count = 0
    moved = False
    if decay_input and hard_reset:
        for j in range(m):
            vi = v[j]
            h = vi + (cur[j] - (vi - v_reset)) * tau_inv
            s = h >= theta
            flags[j] = s
            count += s
            nv = v_reset if s else h
            if track:
                moved |= nv != vi
            v[j] = nv
    elif decay_input:
        for j in range(m):
            vi = v[j]
            h = vi + (cur[j] - vi) * tau_inv
            s = h >= theta
            flags[j] = s
            count += s
            nv = h - theta if s else h
            if track:
                moved |= nv != vi
            v[j] = nv
    elif hard_reset:
        for j in range(m):
            vi = v[j]
            h = vi - (vi - v_reset) * tau_inv + cur[j]
            s = h >= theta
            flags[j] = s
            count += s
            nv = v_reset if s else h
            if track:
                moved |= nv != vi
            v[j] = nv
    else:
        for j in range(m):
            vi = v[j]
            h = vi * keep + cur[j]
            s = h >= theta
            flags[j] = s
            count += s
            nv = h - theta if s else h
            if track:
                moved |= nv != vi
            v[j] = nv
    return count, moved


@inlined
def _lif_all(v, current, params, hard_reset, decay_input, flags, track):
    """Every neuron, on a dense current or one period of a repeating one: (count, moved)."""
    tau_inv = params[P_TAU_INV]
    theta = params[P_THETA]
    v_reset = params[P_V_RESET]
    keep = params[P_KEEP]
    n = v.shape[0]
    c = current.shape[0]
    if c == n:
        return _lif_range(v, current, n, tau_inv, theta, v_reset, keep, hard_reset,
                          decay_input, flags, track)
    count = 0
    moved = False
    for base in range(0, n, c):
        m = min(c, n - base)
        k, mv = _lif_range(v[base:base + m], current, m, tau_inv, theta, v_reset, keep,
                           hard_reset, decay_input, flags[base:base + m], track)
        count += k
        moved |= mv
    return count, moved


@inlined
def _compact(flags, n, spikes_out):
    """Sorted indices of the set flags[0..n-1] into spikes_out (may be ``flags`` itself)."""
    count = 0
    for i in range(n):  # branch-free: count <= i never overwrites a flag still to be read
        f = flags[i]
        spikes_out[count] = i
        count += f
    return count


@kernel
def lif_step_flags(v, current, params, hard_reset, decay_input, flags, counters):
    """One LIF step for every neuron; spike flags (0/1) into ``flags``; returns the spike count.

    H = V + (X - V) * (1/tau) in exactly this order (SpikingJelly's decay_input=True, v_reset=0;
    regrouping changes float32 bits), S = H >= theta, hard reset to v_reset or soft V = H - theta.
    With decay_input False: H = V * (1 - 1/tau) + X (hard: V - (V - v_reset)/tau + X).

    ``current`` is the dense input current [v.size], or one period of a current that repeats
    every C neurons ([C], C divides v.size; neuron i gets ``current[i % C]``): a step without
    synaptic input, whose current is the folded bias alone, passes the bias (channel-innermost)
    tiled a few times instead of filling a dense array. The arithmetic per neuron is the same
    either way (bit-identical); a period of a few hundred values or more keeps the inner loop
    as fast as the dense one.

    Branch-free per neuron so it vectorises; one loop per neuron variant keeps the variant tests
    out of the inner loop. ``flags`` may be any integer array of at least ``v.size``.
    """
    count, _ = _lif_all(v, current, params, hard_reset, decay_input, flags, False)
    n = v.shape[0]
    counters[NEURON_UPDATES] += n
    return count


@kernel
def lif_step(v, current, params, hard_reset, decay_input, spikes_out, counters):
    """:func:`lif_step_flags`, then the flags compacted into sorted spike indices in
    ``spikes_out`` (int32, >= v.size); returns how many were written. ``current`` as there
    (dense, or one period of a repeating current)."""
    total = lif_step_flags(v, current, params, hard_reset, decay_input, spikes_out, counters)
    if total == 0:  # nothing fired (a quiet step): no compaction pass
        return 0
    return _compact(spikes_out, v.shape[0], spikes_out)


@kernel
def lif_quiet_step(v, current, params, hard_reset, decay_input, flags, spikes_out, counters):
    """One LIF step on a current that stays the same from step to step (a step without synaptic
    input: the bias alone, dense or one period of it), reporting whether it was still.

    As :func:`lif_step_flags` (0/1 flags into ``flags``), plus the sorted spike indices into
    ``spikes_out`` when that is not empty (int32, >= v.size; as :func:`lif_step`). Returns
    ``(count, still)``: still is True when the step fired nothing and left every membrane at
    the value it had. v is then a fixed point of this current: the next step on the same current
    computes exactly the same values again and fires nothing, so a caller may skip it (counting
    its neuron updates). Only the sign of a zero membrane could differ from a computed step, and
    no LIF arithmetic or threshold compare can observe that.
    """
    n = v.shape[0]
    count, moved = _lif_all(v, current, params, hard_reset, decay_input, flags, True)
    counters[NEURON_UPDATES] += n
    if count > 0 and spikes_out.shape[0] > 0:
        _compact(flags, n, spikes_out)
    return count, count == 0 and not moved


def lif_params(tau, theta, v_reset, dtype):
    """The ``params`` array of :func:`lif_step` for a layer (v_reset None means soft reset)."""
    p = np.zeros(PARAMS_LEN, dtype=dtype)
    p[P_TAU_INV] = dtype(1.0) / dtype(tau)
    p[P_THETA] = theta
    p[P_V_RESET] = 0.0 if v_reset is None else v_reset
    p[P_KEEP] = dtype(1.0) - p[P_TAU_INV]
    return p
