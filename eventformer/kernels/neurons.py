"""Spiking neuron updates (SPEC §1), one step, over a layer's dense membrane array.

The membrane is the only dense array a layer keeps: leak and the folded BatchNorm shift reach every
neuron every step, so the update is dense; what it emits is a sorted index list of spikes.

Arithmetic stays in the dtype of the arrays (float32 or float64). Scalar parameters arrive in a
small array of that same dtype (``params``) because a Python float would make Numba compute in
float64 and round twice, which changes float32 spike decisions.
"""

import numpy as np
from numba import njit

from .counters import NEURON_UPDATES

# params layout for lif_step
P_TAU_INV = 0  # 1 / tau, rounded once to the layer's dtype
P_THETA = 1
P_V_RESET = 2
P_KEEP = 3  # 1 - 1/tau, for decay_input=False
PARAMS_LEN = 4


@njit(cache=True, nogil=True)
def lif_step_flags(v, current, params, hard_reset, decay_input, flags, counters):
    """One LIF step for every neuron; spike flags (0/1) into ``flags``; returns the spike count.

    H = V + (X - V) * (1/tau) in exactly this order (SpikingJelly's decay_input=True, v_reset=0;
    regrouping changes float32 bits), S = H >= theta, hard reset to v_reset or soft V = H - theta.
    With decay_input False: H = V * (1 - 1/tau) + X (hard: V - (V - v_reset)/tau + X).

    Branch-free per neuron so it vectorises; one loop per neuron variant keeps the variant tests
    out of the inner loop. ``flags`` may be any integer array of at least ``v.size``.
    """
    tau_inv = params[P_TAU_INV]
    theta = params[P_THETA]
    v_reset = params[P_V_RESET]
    keep = params[P_KEEP]
    n = v.shape[0]
    count = 0
    if decay_input and hard_reset:
        for i in range(n):
            vi = v[i]
            h = vi + (current[i] - (vi - v_reset)) * tau_inv
            s = h >= theta
            flags[i] = s
            count += s
            v[i] = v_reset if s else h
    elif decay_input:
        for i in range(n):
            vi = v[i]
            h = vi + (current[i] - vi) * tau_inv
            s = h >= theta
            flags[i] = s
            count += s
            v[i] = h - theta if s else h
    elif hard_reset:
        for i in range(n):
            vi = v[i]
            h = vi - (vi - v_reset) * tau_inv + current[i]
            s = h >= theta
            flags[i] = s
            count += s
            v[i] = v_reset if s else h
    else:
        for i in range(n):
            h = v[i] * keep + current[i]
            s = h >= theta
            flags[i] = s
            count += s
            v[i] = h - theta if s else h
    counters[NEURON_UPDATES] += n
    return count


@njit(cache=True, nogil=True)
def lif_step(v, current, params, hard_reset, decay_input, spikes_out, counters):
    """:func:`lif_step_flags`, then the flags compacted into sorted spike indices in
    ``spikes_out`` (int32, >= v.size); returns how many were written."""
    n = v.shape[0]
    lif_step_flags(v, current, params, hard_reset, decay_input, spikes_out, counters)
    count = 0
    for i in range(n):  # branch-free: count <= i never overwrites a flag still to be read
        f = spikes_out[i]
        spikes_out[count] = i
        count += f
    return count


def lif_params(tau, theta, v_reset, dtype):
    """The ``params`` array of :func:`lif_step` for a layer (v_reset None means soft reset)."""
    p = np.zeros(PARAMS_LEN, dtype=dtype)
    p[P_TAU_INV] = dtype(1.0) / dtype(tau)
    p[P_THETA] = theta
    p[P_V_RESET] = 0.0 if v_reset is None else v_reset
    p[P_KEEP] = dtype(1.0) - p[P_TAU_INV]
    return p
