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

import functools
from typing import Callable, NamedTuple

import numpy as np

from ..jit import inlined, kernel
from .compaction import compact_flags, count_flags
from .counters import NEURON_UPDATES

# params layout for lif_step
P_TAU_INV = 0  # 1 / tau, rounded once to the layer's dtype
P_THETA = 1
P_V_RESET = 2
P_KEEP = 3  # 1 - 1/tau, for decay_input=False
PARAMS_LEN = 4


@inlined
def _charge(vi, x, tau_inv, theta, v_reset, keep, hard_reset, decay_input):
    """One neuron's step: ``(spike, new membrane)`` from membrane ``vi`` and current ``x``, in
    the order of operations :func:`lif_step_flags` gives. Its callers pass the rule's bools as
    constants, so one rule's arithmetic is all that is compiled."""
    if decay_input and hard_reset:
        h = vi + (x - (vi - v_reset)) * tau_inv
    elif decay_input:
        h = vi + (x - vi) * tau_inv
    elif hard_reset:
        h = vi - (vi - v_reset) * tau_inv + x
    else:
        h = vi * keep + x
    s = h >= theta
    if hard_reset:
        return s, v_reset if s else h
    return s, h - theta if s else h


@inlined
def _charge_fixed(vi, x, th, shift, hard_reset, decay_input):
    """One neuron's integer step: ``(spike, new membrane)`` as
    :func:`~eventformer.kernels.lif_fixed_step_flags` gives it. Its callers pass the rule's
    bools and the shift as constants, so one rule's arithmetic is all that is compiled.

    Numba widens int32 operands to int64, and AVX2 has no int64 arithmetic shift (AVX-512 has),
    so ``v + ((x - v) >> k)`` in int64 ran scalar there. With a constant k < 31, ``floor((x - v)
    / 2^k) = (x >> k) - (v >> k) - (x mod 2^k < v mod 2^k)``: nothing shifted leaves int32, the
    rest is addition modulo 2^32, and the int32 membrane kept is the exact one (it lies between
    v and x), so LLVM narrows it all to 32-bit lanes (16384 neurons 9.6 -> 4.7 us, AMD Zen 3).
    Without decay_input the membrane is not so bounded: that rule stays in int64."""
    if decay_input and shift < 31:
        low = (1 << shift) - 1
        h = np.int32(vi + (x >> shift) - (vi >> shift) - ((x & low) < (vi & low)))
    elif decay_input:
        h = vi + ((x - vi) >> shift)
    else:
        h = vi - (vi >> shift) + x
    s = h >= th
    if hard_reset:
        return s, 0 if s else h
    return s, h - th if s else h


class LIFKernels(NamedTuple):
    """The steps of one LIF rule (reset kind and decay_input fixed) in one arithmetic; their
    arguments are those of :func:`lif_step`, :func:`lif_step_flags` and :func:`lif_quiet_step`
    (float) or of the ``lif_fixed_*`` steps without the two bools, the parameters as ``a, b``:
    (params, 0) in float, (thresholds, shift) in fixed point. ``step_flags`` is the rule's one
    compiled kernel; ``step`` and ``quiet`` are made of it (see :func:`_lif_kernels`)."""

    step: Callable
    step_flags: Callable
    quiet: Callable


def lif_kernels(hard_reset, decay_input) -> LIFKernels:
    """The kernels of the rule (``hard_reset``, ``decay_input``), each compiled on its first
    call (or loaded from the cache), for that rule only.

    A kernel that took the rule as runtime bools would compile all four rules' loops at once:
    about four times the compile of one, on a user's first run, for the one rule a model uses.
    """
    return _lif_kernels(False, bool(hard_reset), bool(decay_input), -1)


@inlined
def _lif_pass(v, current, a, b, flags, fixed, hard_reset, decay_input):
    """Every neuron of ``v`` one step, their 0/1 spike flags into ``flags`` (uint8). Float
    (``a`` the params array, ``b`` unused) or fixed point (``a`` the thresholds' period, ``b``
    the shift): neuron i reads ``a[i % period]`` (fixed) and its current at ``i`` (dense) or
    ``i % period`` (a repeating current). The rule's bools and ``fixed`` arrive as constants,
    so one arithmetic's and one rule's code is all that is compiled; the inner loop is
    branch-free and carries no sum (a spike count there kept it from vectorising), so it
    vectorises."""
    n = v.shape[0]
    c = current.shape[0]
    dense = c == n
    p = max(a.shape[0] if fixed else c, 1)
    if not fixed:
        tau_inv, theta = a[P_TAU_INV], a[P_THETA]
        v_reset, keep = a[P_V_RESET], a[P_KEEP]
    i = 0
    while i < n:
        off = i % p  # runs of one period: the period's index is then the loop's own
        m = min(p - off, n - i)
        vb = v[i:i + m]
        fb = flags[i:i + m]
        cur = current[i:i + m] if dense else current[off:off + m]
        th = a[off:off + m]  # (fixed; a slice, not a[off + j], keeps the loop vectorised)
        for j in range(m):
            if fixed:
                s, nv = _charge_fixed(vb[j], cur[j], th[j], b, hard_reset, decay_input)
            else:
                s, nv = _charge(vb[j], cur[j], tau_inv, theta, v_reset, keep, hard_reset,
                                decay_input)
            fb[j] = s
            vb[j] = nv
        i += m


@kernel
def spike_indices(flags, n, out):
    """The indices of the spikes among a step's flags, ascending: one kernel for every LIF rule
    and arithmetic (the flags are bytes in all of them).

    Parameters
    ----------
    flags : uint8[>= n]
        0/1 spike flags, as :func:`lif_step_flags` writes them.
    n : int
        How many flags to read.
    out : int32[>= n], overwritten
        ``out[:count]`` gets each ``i < n`` with ``flags[i]`` set, ascending; entries from
        ``count`` on are scratch.

    Returns
    -------
    count : int
        The number of set flags (of indices written).
    """
    return compact_flags(flags, n, 0, out, 0)


@functools.cache
def _lif_kernels(fixed, hard_reset, decay_input, shift):
    # The arithmetic and the rule reach the kernel as closure constants: Numba prunes the other
    # branches before typing, and bools keep the closure cacheable (the cache key holds their
    # cells). Arguments after (v, current): a, b as _lif_pass takes them, except that a fixed
    # point decay_input rule takes its shift from the closure (``shift``, a constant: see
    # _charge_fixed), not from b; elsewhere ``shift`` is -1 and unused.
    #
    # A rule compiles one kernel, the step into flags. A step into indices is that step, then
    # the flags compacted by the one ``spike_indices`` of every rule, and a quiet step is that
    # step on a copy's comparison: each of them a kernel of its own cost a user's first run
    # 0.6-0.9 s of Numba's compile per rule and arithmetic, where the composition costs a
    # microsecond per call (16384 neurons: 3.6 us fused, the same composed; a quiet step,
    # which runs only until a layer without input settles, copies its membranes once).
    constant = fixed and shift >= 0

    @kernel
    def step_flags(v, current, a, b, flags, counters):
        n = v.shape[0]
        _lif_pass(v, current, a, shift if constant else b, flags, fixed, hard_reset,
                  decay_input)
        counters[NEURON_UPDATES] += n
        return count_flags(flags, n)

    def step(v, current, a, b, spikes_out, counters):
        n = v.shape[0]
        flags = np.empty(n, np.uint8)
        if step_flags(v, current, a, b, flags, counters) == 0:
            return 0
        return spike_indices(flags, n, spikes_out)

    def quiet(v, current, a, b, flags, spikes_out, counters):
        before = v.copy()
        count = step_flags(v, current, a, b, flags, counters)
        if count == 0:  # still: no spike and every membrane where it was (a fixed point)
            return 0, bool(np.array_equal(v, before))
        if spikes_out.shape[0] > 0:
            spike_indices(flags, v.shape[0], spikes_out)
        return count, False

    return LIFKernels(step, step_flags, quiet)


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

    Branch-free per neuron so it vectorises; each rule (reset kind, decay_input) is compiled on
    its own (:func:`lif_kernels`), which keeps the rule's tests out of the inner loop and a first
    run's compile to the rule a model uses. ``flags`` is a uint8 array of at least ``v.size``
    (the count is taken from its bytes eight at a time).

    Parameters
    ----------
    v : float32|float64[N], modified in place
        The layer's membrane potentials, one per neuron in the layout of its output (HWC or
        [token, channel]).
    current : float32|float64[N] or [C] (C divides N), the dtype of ``v``
        The input current: dense (one value per neuron), or one period that repeats every C
        neurons (neuron i gets ``current[i % C]``).
    params : float32|float64[PARAMS_LEN], the dtype of ``v``
        ``(1/tau, theta, v_reset, 1 - 1/tau)`` as :func:`lif_params` builds them.
    hard_reset : bool
        True: a spiking neuron's membrane goes to v_reset; False: theta is subtracted.
    decay_input : bool
        SpikingJelly's ``decay_input``: whether the input is divided by tau too.
    flags : uint8[>= N], overwritten
        ``flags[i]`` = 1 if neuron i spiked, else 0, for i < N; entries past N are untouched.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    int
        The number of neurons that spiked.
    """
    return lif_kernels(hard_reset, decay_input).step_flags(v, current, params, 0, flags,
                                                           counters)


def lif_step(v, current, params, hard_reset, decay_input, spikes_out, counters):
    """One LIF step for every neuron, returning the spikes as sorted indices.

    :func:`lif_step_flags`, then the flags compacted into sorted spike indices in
    ``spikes_out`` (int32, >= v.size); returns how many were written. ``current`` as there
    (dense, or one period of a repeating current).

    Parameters
    ----------
    v : float32|float64[N], modified in place
        The layer's membrane potentials, one per neuron in the layout of its output (HWC or
        [token, channel]).
    current : float32|float64[N] or [C] (C divides N), the dtype of ``v``
        The input current: dense (one value per neuron), or one period that repeats every C
        neurons (neuron i gets ``current[i % C]``).
    params : float32|float64[PARAMS_LEN], the dtype of ``v``
        ``(1/tau, theta, v_reset, 1 - 1/tau)`` as :func:`lif_params` builds them.
    hard_reset : bool
        True: a spiking neuron's membrane goes to v_reset; False: theta is subtracted.
    decay_input : bool
        SpikingJelly's ``decay_input``: whether the input is divided by tau too.
    spikes_out : int32[>= N], overwritten
        First the 0/1 flags, then compacted in place: ``spikes_out[:count]`` holds the indices
        of the neurons that spiked, ascending; entries from ``count`` on are scratch.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked (of indices written to ``spikes_out``).
    """
    return lif_kernels(hard_reset, decay_input).step(v, current, params, 0, spikes_out,
                                                     counters)


def lif_quiet_step(v, current, params, hard_reset, decay_input, flags, spikes_out, counters):
    """One LIF step on an unchanging current, reporting whether the step was still.

    The current stays the same from step to step (a step without synaptic input: the bias
    alone, dense or one period of it).

    As :func:`lif_step_flags` (0/1 flags into ``flags``), plus the sorted spike indices into
    ``spikes_out`` when that is not empty (int32, >= v.size; as :func:`lif_step`). Returns
    ``(count, still)``: still is True when the step fired nothing and left every membrane at
    the value it had. v is then a fixed point of this current: the next step on the same current
    computes exactly the same values again and fires nothing, so a caller may skip it (counting
    its neuron updates). Only the sign of a zero membrane could differ from a computed step, and
    no LIF arithmetic or threshold compare can observe that.

    Parameters
    ----------
    v : float32|float64[N], modified in place
        The layer's membrane potentials, one per neuron in the layout of its output (HWC or
        [token, channel]).
    current : float32|float64[N] or [C] (C divides N), the dtype of ``v``
        The input current: dense (one value per neuron), or one period that repeats every C
        neurons (neuron i gets ``current[i % C]``).
    params : float32|float64[PARAMS_LEN], the dtype of ``v``
        ``(1/tau, theta, v_reset, 1 - 1/tau)`` as :func:`lif_params` builds them.
    hard_reset : bool
        True: a spiking neuron's membrane goes to v_reset; False: theta is subtracted.
    decay_input : bool
        SpikingJelly's ``decay_input``: whether the input is divided by tau too.
    flags : uint8[>= N], overwritten
        ``flags[i]`` = 1 if neuron i spiked, else 0, for i < N; entries past N are untouched.
    spikes_out : int32[>= N] or int32[0], overwritten
        When not empty and a neuron spiked: ``spikes_out[:count]`` gets the indices of the
        neurons that spiked, ascending, and entries from ``count`` on are scratch; untouched
        when nothing spiked. Empty: no indices wanted (a max-pool reads ``flags``).
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    still : bool
        True when nothing spiked and no membrane changed value: ``v`` is a fixed point of
        ``current``.
    """
    return lif_kernels(hard_reset, decay_input).quiet(v, current, params, 0, flags, spikes_out,
                                                     counters)


def lif_params(tau, theta, v_reset, dtype):
    """The ``params`` array of :func:`lif_step` for a layer (v_reset None means soft reset).

    A plain Python function (not compiled): each value is rounded once to ``dtype`` here, so the
    kernels compute in the layer's dtype and never in float64 (see the module notes).

    Parameters
    ----------
    tau : float
        Membrane time constant (> 0).
    theta : float
        Firing threshold.
    v_reset : float or None
        The membrane value after a spike for a hard reset; None for a soft reset (stored as 0,
        which the soft-reset kernels do not read).
    dtype : numpy scalar type, np.float32 or np.float64
        The layer's dtype (a type such as ``np.float32``, called on Python floats, not a
        ``np.dtype`` instance).

    Returns
    -------
    params : dtype[PARAMS_LEN]
        ``params[P_TAU_INV]`` = 1/tau (``dtype(1.0) / dtype(tau)``), ``params[P_THETA]`` =
        theta, ``params[P_V_RESET]`` = v_reset (0 for a soft reset), ``params[P_KEEP]`` =
        1 - 1/tau (from the rounded 1/tau).
    """
    p = np.zeros(PARAMS_LEN, dtype=dtype)
    p[P_TAU_INV] = dtype(1.0) / dtype(tau)
    p[P_THETA] = theta
    p[P_V_RESET] = 0.0 if v_reset is None else v_reset
    p[P_KEEP] = dtype(1.0) - p[P_TAU_INV]
    return p
