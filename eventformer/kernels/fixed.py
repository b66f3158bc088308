"""Kernels of the integer engine (SPEC §6): the shift LIF, TASA by shifts, the integer tails of the
SSA_Bin and SAFormer cores.

Currents and membranes are int32 in units of a per-channel scale (see
:mod:`eventformer.fixedpoint`); arithmetic on them happens in int64 (Numba widens int32
operands) and is stored back into int32, which the load-time bounds keep exact. ``>>`` on a
signed integer is an arithmetic shift: floor division by a power of two, as SPEC §6 defines the
decay. The SSA and NSAD cores need no kernel of their own: :func:`~eventformer.kernels.ssa_step`
and :func:`~eventformer.kernels.nsad_step` compute in integers and, given an integer ``out`` and
scale, write exact integers.
"""


import numpy as np

from ..jit import kernel
from ._common import scratch
from .attention import _mapped_attention
from .counters import AC, INPUT_EVENTS, MAC, SHIFT
from .neurons import LIFKernels, _lif_kernels
from .saformer import depthwise3x3_scatter


def lif_fixed_kernels(hard_reset, decay_input, shift) -> LIFKernels:
    """The integer kernels of the rule (``hard_reset``, ``decay_input``) and decay shift
    (k = log2(tau)), each compiled on its first call (or loaded from the cache), for that rule
    and shift only (see :func:`~eventformer.kernels.neurons.lif_kernels`); their arguments are
    those of :func:`lif_fixed_step`, :func:`lif_fixed_step_flags` and
    :func:`lif_fixed_quiet_step` without the two bools. With ``decay_input`` their ``shift``
    argument is not read: the kernels hold theirs as a constant, which lets the decay run in
    32-bit vector lanes; the other rule reads it (one kernel for every shift)."""
    return _lif_kernels(True, bool(hard_reset), bool(decay_input),
                        int(shift) if decay_input else -1)


def lif_fixed_step_flags(v, current, theta, shift, hard_reset, decay_input, flags, counters):
    """One integer LIF step for every neuron (SPEC §6); 0/1 spike flags into ``flags``.

    decay_input: H = V + ((X - V) >> k); otherwise H = V - (V >> k) + X (tau = 2^k, ``>>``
    an arithmetic shift, i.e. floor division). S = H >= theta; a hard reset sets V = 0, a soft
    one V = H - theta. Every value is an integer in the neuron's channel unit; nothing rounds.

    Parameters
    ----------
    v : int32[N], modified in place
        The layer's membranes, one per neuron in the layout of its output (HWC or
        [token, channel]), in units of each channel's scale.
    current : int32[N] or int32[P]
        The input current: dense, or one period of length P = ``theta.size`` that repeats every
        P neurons (a step without synaptic input: the bias alone).
    theta : int32[P], P divides N
        The thresholds of one period of neurons (a layer's per-channel thresholds tiled; neuron
        i's threshold is ``theta[i % P]``).
    shift : int
        k = log2(tau) >= 0.
    hard_reset : bool
        True: a spiking neuron's membrane goes to 0; False: theta is subtracted.
    decay_input : bool
        SpikingJelly's ``decay_input``: whether the input is decayed with the membrane.
    flags : uint8[>= N], overwritten
        ``flags[i]`` = 1 if neuron i spiked, else 0, for i < N.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    int
        The number of neurons that spiked.
    """
    return lif_fixed_kernels(hard_reset, decay_input, shift).step_flags(v, current, theta, shift,
                                                                 flags, counters)


def lif_fixed_step(v, current, theta, shift, hard_reset, decay_input, spikes_out, counters):
    """One integer LIF step, returning the spikes as sorted indices.

    :func:`lif_fixed_step_flags`, then the flags compacted into sorted spike indices in
    ``spikes_out``; returns how many were written.

    Parameters
    ----------
    v : int32[N], modified in place
        The layer's membranes, in units of each channel's scale.
    current : int32[N] or int32[P]
        The input current: dense, or one period of length P = ``theta.size``.
    theta : int32[P], P divides N
        The thresholds of one period of neurons (neuron i's is ``theta[i % P]``).
    shift : int
        k = log2(tau) >= 0.
    hard_reset : bool
        True: a spiking neuron's membrane goes to 0; False: theta is subtracted.
    decay_input : bool
        SpikingJelly's ``decay_input``.
    spikes_out : int32[>= N], overwritten
        First the 0/1 flags, then ``spikes_out[:count]`` the indices of the neurons that
        spiked, ascending.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    """
    return lif_fixed_kernels(hard_reset, decay_input, shift).step(v, current, theta, shift,
                                                           spikes_out, counters)


def lif_fixed_quiet_step(v, current, theta, shift, hard_reset, decay_input, flags, spikes_out,
                         counters):
    """One integer LIF step on an unchanging current, reporting whether the step was still.

    As :func:`lif_fixed_step_flags`, plus the sorted spike indices into ``spikes_out`` when that
    is not empty. Returns ``(count, still)``: still is True when nothing spiked and no membrane
    changed, so v is a fixed point of this current and further steps on it may be skipped
    (as :func:`~eventformer.kernels.lif_quiet_step` for floats).

    Parameters
    ----------
    v : int32[N], modified in place
        The layer's membranes, in units of each channel's scale.
    current : int32[N] or int32[P]
        The unchanging input current: dense, or one period of length P = ``theta.size``.
    theta : int32[P], P divides N
        The thresholds of one period of neurons (neuron i's is ``theta[i % P]``).
    shift : int
        k = log2(tau) >= 0.
    hard_reset : bool
        True: a spiking neuron's membrane goes to 0; False: theta is subtracted.
    decay_input : bool
        SpikingJelly's ``decay_input``.
    flags : uint8[>= N], overwritten
        ``flags[i]`` = 1 if neuron i spiked, else 0, for i < N.
    spikes_out : int32[>= N] or int32[0], overwritten
        When not empty and a neuron spiked: the sorted indices of the neurons that spiked in
        ``spikes_out[:count]``. Empty: no indices wanted (a max-pool reads ``flags``).
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    still : bool
        True when nothing spiked and no membrane changed value.
    """
    return lif_fixed_kernels(hard_reset, decay_input, shift).quiet(v, current, theta, shift, flags,
                                                            spikes_out, counters)


@kernel
def tasa_fixed_current(current, history, slots, shifts, bias, out, counters):
    """``out = current + sum_m (history[slots[m]] >> shifts[m]) + bias`` (bias tiled), integers.

    DS2TA's attenuated current in fixed point (SPEC §4, §6): each stored J_{t-k} decays by an
    arithmetic right shift of tau k bits (floor), then everything is summed exactly.
    ``current`` may be ``out`` itself.

    Parameters
    ----------
    current : int32[size]
        J_t, the step's synaptic current without bias (flat, channel-innermost).
    history : int32[slots_total, size]
        Stored currents of earlier steps; only the rows named in ``slots`` are read.
    slots : int64[m]
        Rows of ``history`` to add (m <= T_AW - 1).
    shifts : int64[m]
        The decay of each row in ``slots`` as a shift: tau k bits, k its distance in steps.
    bias : int32[p], p divides size
        The quantised folded shift bq, one period of it (element i gets ``bias[i % p]``).
    out : int32[size], overwritten
        The attenuated current I_t.
    counters : int64[N_COUNTERS], incremented in place
        ``SHIFT`` += m x size (one shift per history element).

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
            x = np.int64(current[i])
            for r in range(m):
                x += np.int64(history[slots[r], i]) >> shifts[r]
            out[i] = x + bias[i - base]
    counters[SHIFT] += m * size


@kernel
def ssa_bin_step_fixed(q_idx, k_idx, v_idx, n_tokens, dim, heads, delta, vbar, unit, out,
                       counters):
    """SSA_Bin in fixed point: ``out = (B V) * unit - vbar`` per head, in units of scale / unit.

    The binary map and B V as :func:`~eventformer.kernels.ssa_bin_step` forms them (integers,
    over active pairs only); ``vbar`` arrives quantised to the same unit (round(vbar * unit)),
    so Y / scale * unit is computed exactly.

    Parameters
    ----------
    q_idx : int32[nq], sorted ascending, each site once
        Query spikes over [n_tokens, dim], flat ``token * dim + c``.
    k_idx : int32[nk], sorted ascending, each site once
        Key spikes, the same layout.
    v_idx : int32[nv], sorted ascending, each site once
        Value spikes, the same layout.
    n_tokens : int
        Tokens N.
    dim : int
        Channels D.
    heads : int
        Attention heads; divides ``dim``.
    delta : int32|int64[heads], each >= 0
        Per-head threshold: an entry passes when its count is strictly greater.
    vbar : int32|int64[dim]
        The per-channel offset in units of scale / unit.
    unit : int
        Units per scale (the attention LIF's fixed-point factor).
    out : int32[n_tokens * dim], overwritten
        The flat [token, channel] current ``B V * unit - vbar``.
    counters : int64[N_COUNTERS], incremented in place
        As :func:`~eventformer.kernels.ssa_bin_step` counts.

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    y = np.zeros(n_tokens * dim, np.int64)
    dummy = np.zeros((1, 1), np.int32)
    _mapped_attention(q_idx, k_idx, v_idx, n_tokens, dim, heads, dummy, True, delta, y,
                      counters)
    for i in range(n_tokens):
        row = i * dim
        for c in range(dim):
            out[row + c] = y[row + c] * unit - vbar[c]


@kernel
def saformer_step_fixed(q_idx, k_idx, n_tokens, dim, grid_w, pool_rows, dwc_weight, dwc_bias,
                        gate_mult, gate_shift, out, counters):
    """SAFormer's Y = scale * (K * a) + DWC(K) in fixed point, per channel in the DWC's unit.

    ``out`` is filled with the quantised DWC bias and the integer DWC scattered in
    (:func:`~eventformer.kernels.depthwise3x3_scatter`); when both Q and K have spikes, the
    gate a[c] = sum_l cq[l, c] * ck[l, c] of the pooled rows' spike counts (an integer in units
    of 1 / (N/L)^2: every pooled row has N/L tokens) is brought to channel c's unit by
    ``(a[c] * gate_mult[c] + 2^(gate_shift - 1)) >> gate_shift`` (round half up) and added to
    every active key site of channel c.

    Parameters
    ----------
    q_idx : int32[nq], sorted ascending, each site once
        Query spikes over [n_tokens, dim], flat ``token * dim + c``.
    k_idx : int32[nk], sorted ascending, each site once
        Key spikes, the same layout.
    n_tokens : int
        Tokens N = grid_h * grid_w, divisible by ``pool_rows``.
    dim : int
        Channels D.
    grid_w : int
        Columns of the token grid (rows: n_tokens // grid_w).
    pool_rows : int
        L, the pooled rows; divides ``n_tokens``.
    dwc_weight : int8|int16|int32[dim, 3, 3]
        The depthwise conv's quantised folded weights, in each channel's unit.
    dwc_bias : int32[dim]
        The depthwise conv's quantised folded bias.
    gate_mult : int64[dim]
        round(scale / (N/L)^2 / s_c * 2^gate_shift), s_c channel c's unit.
    gate_shift : int
        Fractional bits of ``gate_mult``.
    out : int32[n_tokens * dim], overwritten
        The flat [token, channel] current Y in units of each channel's s_c.
    counters : int64[N_COUNTERS], incremented in place
        ``AC`` += the DWC taps and, when the gate is computed, one per (spike of Q or K) for
        the pooling counts plus one per K spike for the gate term; ``MAC`` += L D + D (the
        count products and the unit multiplies); ``INPUT_EVENTS`` += nq + nk.

    Returns
    -------
    None
        The results are ``out`` and ``counters``, both modified in place.
    """
    for n in range(n_tokens):
        for c in range(dim):
            out[n * dim + c] = dwc_bias[c]
    depthwise3x3_scatter(k_idx, n_tokens // grid_w, grid_w, dim, dwc_weight, out, counters)
    counters[INPUT_EVENTS] += q_idx.shape[0]
    nq = q_idx.shape[0]
    nk = k_idx.shape[0]
    if nq == 0 or nk == 0:
        return
    width = n_tokens // pool_rows
    cq = np.zeros((pool_rows, dim), np.int64)
    ck = np.zeros((pool_rows, dim), np.int64)
    for e in range(nq):
        n = q_idx[e] // dim
        cq[n // width, q_idx[e] - n * dim] += 1
    for e in range(nk):
        n = k_idx[e] // dim
        ck[n // width, k_idx[e] - n * dim] += 1
    term = scratch(dim, np.int64)
    half = np.int64(1) << (gate_shift - 1)
    for c in range(dim):
        a = np.int64(0)
        for r in range(pool_rows):
            a += cq[r, c] * ck[r, c]
        term[c] = (a * gate_mult[c] + half) >> gate_shift
    for e in range(nk):
        site = k_idx[e]
        c = site % dim
        out[site] = out[site] + term[c]
    counters[AC] += nq + nk + nk
    counters[MAC] += pool_rows * dim + dim
