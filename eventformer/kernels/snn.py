"""Neurons of the spiking CNNs that other frameworks export to NIR, and sum-pooling of events.

A NIR graph describes its neurons in continuous time; each framework that exports one steps them
with its own discrete rule, and a model imported from framework F must be stepped as F steps it
to give F's spikes. One kernel per framework family, each following that framework's forward pass
in the order of its floating-point operations (so that float64 spikes are bit-identical):

- :func:`sinabs_step`: sinabs' LIF / IAF (``lif_forward_single``): optional synaptic current,
  optional input normalisation, ``v = alpha * v + x``, multi-spike ``trunc(v / theta)`` (or one
  spike on ``v - theta >= 0``), subtractive or value reset, optional membrane floor. IAF is
  alpha = 1.
- :func:`snntorch_step`: snnTorch's ``Leaky`` (reset_delay, the default): the reset comes from the
  stored membrane, ``h = (beta * v + x) - r * theta``, spike on ``h - theta > 0``.
- :func:`norse_step`: Norse's ``LIFBoxCell`` (``v + dt/tau * ((x + v_leak) - v)``) and
  ``LIFCell`` (a current jump, then both Euler decays), spike on ``v - v_th > 0``.

Each also has an integer twin (``*_fixed``, SPEC §6 units): the decays are fixed-point
multipliers with :data:`FRACTION_BITS` fractional bits (``(v * m) >> 16``, floor), so leaks that
are not powers of two still run in integers; a multiplier of exactly one is the identity.

Per-neuron parameters arrive as rows of a 2-D array in the layer's dtype, one column per neuron
(NIR gives parameters per neuron), so no Python float ever enters the arithmetic. The current may
be dense or one period of a repeating one (a step without synaptic input: the bias alone), as in
:func:`~eventformer.kernels.lif_step`. Outputs are sorted spike indices with their multiplicity.
"""

import math

import numpy as np

from ..jit import inlined, kernel
from .counters import AC, NEURON_UPDATES

FRACTION_BITS = 16  # integer decays: (v * multiplier) >> FRACTION_BITS

# rows of sinabs_step's params
SINABS_ALPHA_MEM, SINABS_ALPHA_SYN, SINABS_THETA, SINABS_MIN_V, SINABS_RESET_VALUE, \
    SINABS_INPUT_GAIN = range(6)
# its options
SINABS_HAS_SYN, SINABS_NORM_INPUT, SINABS_MULTI, SINABS_MAX_SPIKES, SINABS_RESET_SUBTRACT, \
    SINABS_HAS_MIN = range(6)
# its spike rules (the SINABS_MULTI option): one spike on v - theta >= 0 (SingleSpike), sinabs'
# MultiSpike (v > 0) * trunc(v / theta), Rockpool's StepPWL (v >= theta) * floor(v / theta)
SPIKES_SINGLE, SPIKES_TRUNC, SPIKES_FLOOR = range(3)
# rows of snntorch_step's params
SNNTORCH_BETA, SNNTORCH_THETA = range(2)
RESET_SUBTRACT, RESET_ZERO, RESET_NONE = range(3)  # snnTorch's reset mechanisms
# rows of norse_step's params
NORSE_A_MEM, NORSE_B_SYN, NORSE_V_LEAK, NORSE_THETA, NORSE_V_RESET = range(5)
NORSE_CUBA, NORSE_RESET_SUBTRACT, NORSE_IAF = range(3)


@inlined
def _emit(i, s, n_out, spikes_out, counts_out):
    """Append neuron i with s spikes (s > 0) to the output lists; returns the new length."""
    spikes_out[n_out] = i
    counts_out[n_out] = s
    return n_out + 1


@kernel
def sinabs_step(v, i_syn, current, params, options, spikes_out, counts_out, counters):
    """One step of sinabs' LIF (IAF when alpha_mem is 1) or Rockpool's LIF for every neuron.

    Per neuron, in sinabs' order: ``x = alpha_syn * (i_syn + x)`` when it has a synaptic
    current (kept in ``i_syn``); ``x = (1 - alpha_mem) * x`` when it normalises its input;
    ``v = alpha_mem * v + x``; spikes ``s = trunc(v / theta)`` where v > 0 (MultiSpike), or
    ``s = floor(v / theta)`` where v >= theta (Rockpool's StepPWL), clipped at ``max_spikes``
    when positive, or one spike where ``v - theta >= 0``; reset ``v = v - s * theta`` or
    ``v = v * (s == 0) + reset_value``; floor ``v = relu(v - min_v) + min_v``. Rockpool's
    ``LIFTorch`` (``i = beta * (i + x)``, ``v = alpha * v + i``) and ``LIFNeuronTorch`` step
    the same way.

    Parameters
    ----------
    v : float32|float64[N], modified in place
        Membrane potentials, one per neuron in the layer's output layout.
    i_syn : float32|float64[N] or [0], modified in place
        Synaptic currents (read and written only with the synaptic-current option).
    current : float32|float64[N] or [C] (C divides N), the dtype of ``v``
        The input current: dense, or one period that repeats every C neurons.
    params : float32|float64[6, N], the dtype of ``v``
        Rows alpha_mem, alpha_syn, theta, min_v, reset_value, input gain (1 - alpha_mem as
        sinabs computes it), one column per neuron.
    options : int64[6]
        Has a synaptic current, normalises its input, the spike rule (SPIKES_SINGLE,
        SPIKES_TRUNC, SPIKES_FLOOR), the most spikes per step (0: no limit), subtractive reset
        (else to a value), has a membrane floor.
    spikes_out : int32[>= N], overwritten
        ``spikes_out[:count]``: the neurons that spiked, ascending.
    counts_out : int32[>= N], overwritten
        ``counts_out[:count]``: how many spikes each emitted.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    """
    n = v.shape[0]
    c = current.shape[0]
    has_syn = options[SINABS_HAS_SYN] != 0
    norm = options[SINABS_NORM_INPUT] != 0
    mode = options[SINABS_MULTI]
    multi = mode != SPIKES_SINGLE
    cap = options[SINABS_MAX_SPIKES]
    subtract = options[SINABS_RESET_SUBTRACT] != 0
    has_min = options[SINABS_HAS_MIN] != 0
    zero = v.dtype.type(0)
    n_out = 0
    for base in range(0, n, c):
        for j in range(min(c, n - base)):
            i = base + j
            x = current[j]
            if has_syn:
                x = params[SINABS_ALPHA_SYN, i] * (i_syn[i] + x)
                i_syn[i] = x
            if norm:
                x = params[SINABS_INPUT_GAIN, i] * x
            h = params[SINABS_ALPHA_MEM, i] * v[i] + x
            theta = params[SINABS_THETA, i]
            s = 0
            if multi:
                if mode == SPIKES_FLOOR:  # Rockpool: (v >= theta) * floor(v / theta)
                    q = math.floor(h / theta) if h >= theta else 0.0
                else:  # sinabs: (v > 0) * trunc(v / theta)
                    q = math.trunc(h / theta) if h > zero else 0.0
                if cap > 0 and q > cap:
                    q = cap
                s = int(q)
            elif h - theta >= zero:
                s = 1
            if subtract:
                h = h - v.dtype.type(s) * theta  # the spike count in the membrane's dtype
            else:  # v * (s == 0) + reset_value
                h = (h if s == 0 else zero) + params[SINABS_RESET_VALUE, i]
            if has_min:
                lo = params[SINABS_MIN_V, i]
                h = max(h - lo, zero) + lo
            v[i] = h
            if s > 0:
                n_out = _emit(i, s, n_out, spikes_out, counts_out)
    counters[NEURON_UPDATES] += n
    return n_out


@kernel
def snntorch_step(v, current, params, reset_mechanism, spikes_out, counts_out, counters):
    """One step of snnTorch's ``Leaky`` (reset_delay=True, its default) for every neuron.

    In snnTorch's order: the reset flag comes from the stored membrane, ``r = (v - theta) > 0``;
    subtract: ``h = (beta * v + x) - r * theta``; zero: ``h = beta * ((1 - r) * v) + x``; none:
    ``h = beta * v + x``; spike ``s = (h - theta) > 0``; the membrane keeps h (the reset of a
    spike lands on the next step).

    Parameters
    ----------
    v : float32|float64[N], modified in place
        Membrane potentials, one per neuron in the layer's output layout.
    current : float32|float64[N] or [C] (C divides N), the dtype of ``v``
        The input current: dense, or one period that repeats every C neurons.
    params : float32|float64[2, N], the dtype of ``v``
        Rows beta (clamped to [0, 1] by the caller, as snnTorch clamps it) and theta.
    reset_mechanism : int
        0 subtract, 1 zero, 2 none (snnTorch's ``reset_mechanism``).
    spikes_out : int32[>= N], overwritten
        ``spikes_out[:count]``: the neurons that spiked, ascending.
    counts_out : int32[>= N], overwritten
        ``counts_out[:count]``: 1 for each.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    """
    n = v.shape[0]
    c = current.shape[0]
    zero = v.dtype.type(0)
    one = v.dtype.type(1)
    n_out = 0
    for base in range(0, n, c):
        for j in range(min(c, n - base)):
            i = base + j
            vi = v[i]
            beta = params[SNNTORCH_BETA, i]
            theta = params[SNNTORCH_THETA, i]
            r = one if vi - theta > zero else zero
            if reset_mechanism == RESET_SUBTRACT:
                h = (beta * vi + current[j]) - r * theta
            elif reset_mechanism == RESET_ZERO:
                h = beta * ((one - r) * vi) + current[j]
            else:
                h = beta * vi + current[j]
            v[i] = h
            if h - theta > zero:
                n_out = _emit(i, 1, n_out, spikes_out, counts_out)
    counters[NEURON_UPDATES] += n
    return n_out


@kernel
def norse_step(v, i_syn, current, params, options, spikes_out, counts_out, counters):
    """One Euler step of Norse's ``IAFCell``, ``LIFBoxCell`` or ``LIFCell`` for every neuron.

    IAF: ``v_d = v + x``. LIFBox: ``v_d = v + a * ((x + v_leak) - v)``. LIF (current-based, ``i_syn`` kept):
    ``i = i + x``; ``v_d = v + a * ((v_leak - v) + i)``; ``i = i + b * i``. a = dt / tau_mem
    and b = -dt / tau_syn as Norse forms them. Spike ``z = (v_d - v_th) > 0``; reset to
    ``v_reset`` (``(1 - z) v_d + z v_reset``) or by subtracting v_th.

    Parameters
    ----------
    v : float32|float64[N], modified in place
        Membrane potentials, one per neuron in the layer's output layout.
    i_syn : float32|float64[N] or [0], modified in place
        Synaptic currents (LIFCell only).
    current : float32|float64[N] or [C] (C divides N), the dtype of ``v``
        The input current: dense, or one period that repeats every C neurons.
    params : float32|float64[5, N], the dtype of ``v``
        Rows a (dt * tau_mem_inv), b (-dt * tau_syn_inv), v_leak, v_th, v_reset.
    options : int64[3]
        Current-based (LIFCell), subtractive reset, integrate-and-fire (IAFCell: no leak).
    spikes_out : int32[>= N], overwritten
        ``spikes_out[:count]``: the neurons that spiked, ascending.
    counts_out : int32[>= N], overwritten
        ``counts_out[:count]``: 1 for each.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    """
    n = v.shape[0]
    c = current.shape[0]
    cuba = options[NORSE_CUBA] != 0
    subtract = options[NORSE_RESET_SUBTRACT] != 0
    iaf = options[NORSE_IAF] != 0
    zero = v.dtype.type(0)
    n_out = 0
    for base in range(0, n, c):
        for j in range(min(c, n - base)):
            i = base + j
            vi = v[i]
            a = params[NORSE_A_MEM, i]
            if iaf:
                vd = vi + current[j]
            elif cuba:
                cur = i_syn[i] + current[j]
                vd = vi + a * ((params[NORSE_V_LEAK, i] - vi) + cur)
                i_syn[i] = cur + params[NORSE_B_SYN, i] * cur
            else:
                vd = vi + a * ((current[j] + params[NORSE_V_LEAK, i]) - vi)
            theta = params[NORSE_THETA, i]
            if vd - theta > zero:
                v[i] = vd - theta if subtract else params[NORSE_V_RESET, i]
                n_out = _emit(i, 1, n_out, spikes_out, counts_out)
            else:
                v[i] = vd
    counters[NEURON_UPDATES] += n
    return n_out


@inlined
def _mul(x, m):
    """x times a fixed-point multiplier m (FRACTION_BITS fractional bits), floored; exact
    when m is one."""
    if m == 1 << FRACTION_BITS:
        return x
    return (np.int64(x) * m) >> FRACTION_BITS


@kernel
def sinabs_step_fixed(v, i_syn, current, params, options, spikes_out, counts_out, counters):
    """:func:`sinabs_step` in integers (SPEC §6 units).

    Membranes, currents and thresholds are int32 in the channel's unit; alpha_mem, alpha_syn and the input gain are fixed-point
    multipliers (``(x * m) >> 16``, floor), a multiplier of 1.0 the identity. Multi-spike
    counts are ``v // theta`` where v > 0 (then clipped): for integers both multi-spike rules
    (sinabs' trunc where v > 0, Rockpool's floor where v >= theta) are this.

    Parameters
    ----------
    v : int32[N], modified in place
        Membrane potentials in units.
    i_syn : int32[N] or [0], modified in place
        Synaptic currents in units (with the synaptic-current option).
    current : int32[N] or [C] (C divides N)
        The input current in units: dense, or one period that repeats every C neurons.
    params : int64[6, N]
        Rows alpha_mem, alpha_syn (multipliers), theta, min_v, reset_value (units), input
        gain (multiplier).
    options : int64[6]
        As :func:`sinabs_step`.
    spikes_out : int32[>= N], overwritten
        ``spikes_out[:count]``: the neurons that spiked, ascending.
    counts_out : int32[>= N], overwritten
        ``counts_out[:count]``: how many spikes each emitted.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    """
    n = v.shape[0]
    c = current.shape[0]
    has_syn = options[SINABS_HAS_SYN] != 0
    norm = options[SINABS_NORM_INPUT] != 0
    multi = options[SINABS_MULTI] != 0
    cap = options[SINABS_MAX_SPIKES]
    subtract = options[SINABS_RESET_SUBTRACT] != 0
    has_min = options[SINABS_HAS_MIN] != 0
    n_out = 0
    for base in range(0, n, c):
        for j in range(min(c, n - base)):
            i = base + j
            x = np.int64(current[j])
            if has_syn:
                x = _mul(np.int64(i_syn[i]) + x, params[SINABS_ALPHA_SYN, i])
                i_syn[i] = x
            if norm:
                x = _mul(x, params[SINABS_INPUT_GAIN, i])
            h = _mul(np.int64(v[i]), params[SINABS_ALPHA_MEM, i]) + x
            theta = params[SINABS_THETA, i]
            s = np.int64(0)
            if multi:
                if h > 0:
                    s = h // theta
                    if cap > 0 and s > cap:
                        s = cap
            elif h - theta >= 0:
                s = np.int64(1)
            if subtract:
                h = h - s * theta
            else:
                h = (h if s == 0 else 0) + params[SINABS_RESET_VALUE, i]
            if has_min:
                lo = params[SINABS_MIN_V, i]
                h = max(h - lo, 0) + lo
            v[i] = h
            if s > 0:
                n_out = _emit(i, s, n_out, spikes_out, counts_out)
    counters[NEURON_UPDATES] += n
    return n_out


@kernel
def snntorch_step_fixed(v, current, params, reset_mechanism, spikes_out, counts_out, counters):
    """:func:`snntorch_step` in integers (SPEC §6 units).

    beta is a fixed-point multiplier (``(v * m) >> 16``, floor), theta an integer in the
    channel's unit.

    Parameters
    ----------
    v : int32[N], modified in place
        Membrane potentials in units.
    current : int32[N] or [C] (C divides N)
        The input current in units: dense, or one period that repeats every C neurons.
    params : int64[2, N]
        Rows beta (multiplier) and theta (units).
    reset_mechanism : int
        0 subtract, 1 zero, 2 none.
    spikes_out : int32[>= N], overwritten
        ``spikes_out[:count]``: the neurons that spiked, ascending.
    counts_out : int32[>= N], overwritten
        ``counts_out[:count]``: 1 for each.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    """
    n = v.shape[0]
    c = current.shape[0]
    n_out = 0
    for base in range(0, n, c):
        for j in range(min(c, n - base)):
            i = base + j
            vi = np.int64(v[i])
            beta = params[SNNTORCH_BETA, i]
            theta = params[SNNTORCH_THETA, i]
            r = vi > theta
            if reset_mechanism == RESET_SUBTRACT:
                h = _mul(vi, beta) + current[j] - (theta if r else 0)
            elif reset_mechanism == RESET_ZERO:
                h = _mul(0 if r else vi, beta) + current[j]
            else:
                h = _mul(vi, beta) + current[j]
            v[i] = h
            if h > theta:
                n_out = _emit(i, 1, n_out, spikes_out, counts_out)
    counters[NEURON_UPDATES] += n
    return n_out


@kernel
def norse_step_fixed(v, i_syn, current, params, options, spikes_out, counts_out, counters):
    """:func:`norse_step` in integers (SPEC §6 units).

    a is a fixed-point multiplier and b a negative one (``(x * m) >> 16``, floor); v_leak, v_th and v_reset are integers in the
    channel's unit.

    Parameters
    ----------
    v : int32[N], modified in place
        Membrane potentials in units.
    i_syn : int32[N] or [0], modified in place
        Synaptic currents in units (LIFCell only).
    current : int32[N] or [C] (C divides N)
        The input current in units: dense, or one period that repeats every C neurons.
    params : int64[5, N]
        Rows a, b (multipliers), v_leak, v_th, v_reset (units).
    options : int64[3]
        Current-based (LIFCell), subtractive reset, integrate-and-fire (IAFCell: no leak).
    spikes_out : int32[>= N], overwritten
        ``spikes_out[:count]``: the neurons that spiked, ascending.
    counts_out : int32[>= N], overwritten
        ``counts_out[:count]``: 1 for each.
    counters : int64[N_COUNTERS], incremented in place
        ``NEURON_UPDATES`` += N.

    Returns
    -------
    count : int
        The number of neurons that spiked.
    """
    n = v.shape[0]
    c = current.shape[0]
    cuba = options[NORSE_CUBA] != 0
    subtract = options[NORSE_RESET_SUBTRACT] != 0
    iaf = options[NORSE_IAF] != 0
    n_out = 0
    for base in range(0, n, c):
        for j in range(min(c, n - base)):
            i = base + j
            vi = np.int64(v[i])
            a = params[NORSE_A_MEM, i]
            if iaf:
                vd = vi + current[j]
            elif cuba:
                cur = np.int64(i_syn[i]) + current[j]
                vd = vi + _mul((params[NORSE_V_LEAK, i] - vi) + cur, a)
                i_syn[i] = cur + _mul(cur, params[NORSE_B_SYN, i])
            else:
                vd = vi + _mul((current[j] + params[NORSE_V_LEAK, i]) - vi, a)
            theta = params[NORSE_THETA, i]
            if vd > theta:
                v[i] = vd - theta if subtract else params[NORSE_V_RESET, i]
                n_out = _emit(i, 1, n_out, spikes_out, counts_out)
            else:
                v[i] = vd
    counters[NEURON_UPDATES] += n
    return n_out


@kernel
def sumpool_events(idx, cnt, h, w, c, k, stride, pad, out_h, out_w, acc, spikes_out,
                   counts_out, counters):
    """Sum-pool an HWC event list (PyTorch's window rule; AvgPool2d is this times 1/k^2).

    Each event adds its multiplicity to every pooled cell whose k x k window (stride, zero
    padding ``pad``) covers it; cells outside the output are skipped, and each add is counted
    as one accumulate.

    Parameters
    ----------
    idx : int32[E]
        Sorted flat input indices ``(y * w + x) * c + ch``.
    cnt : int32[E]
        Their multiplicities.
    h, w, c : int
        The input's height, width and channels.
    k, stride, pad : int
        Window side, stride and padding.
    out_h, out_w : int
        The output's height and width.
    acc : int32[out_h * out_w * c], zeroed on return
        Scratch for the pooled sums.
    spikes_out : int32[>= out_h * out_w * c], overwritten
        ``spikes_out[:count]``: the non-zero pooled cells (HWC), ascending.
    counts_out : int32[>= out_h * out_w * c], overwritten
        ``counts_out[:count]``: their sums.
    counters : int64[N_COUNTERS], incremented in place
        ``AC`` += one per (event, covering cell) times the multiplicity.

    Returns
    -------
    count : int
        The number of non-zero pooled cells.
    """
    ops = 0
    for e in range(idx.shape[0]):
        flat = idx[e]
        ch = flat % c
        pix = flat // c
        y = pix // w
        x = pix - y * w
        m = cnt[e]
        oy0 = max(0, (y + pad - k + stride) // stride)
        oy1 = min(out_h - 1, (y + pad) // stride)
        ox0 = max(0, (x + pad - k + stride) // stride)
        ox1 = min(out_w - 1, (x + pad) // stride)
        for oy in range(oy0, oy1 + 1):
            for ox in range(ox0, ox1 + 1):
                acc[(oy * out_w + ox) * c + ch] += m
                ops += m
    n_out = 0
    for o in range(acc.shape[0]):
        if acc[o] != 0:
            spikes_out[n_out] = o
            counts_out[n_out] = acc[o]
            acc[o] = 0
            n_out += 1
    counters[AC] += ops
    return n_out
