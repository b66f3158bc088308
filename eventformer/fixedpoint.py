"""Fixed-point arithmetic of the integer engine (SPEC §6): quantisation at load, bounds, units.

The same model file runs in int16 or int8: nothing is retrained. Per synaptic layer and output
channel c, the folded weights and bias are quantised with one scale

    s_c = max_i |W'_c,i| / (2^(b-1) - 1),   Wq = round(W' / s_c),   bq = round(b' / s_c)

and the channel's current, membrane and threshold live in units of s_c (thetaq_c =
round(theta / s_c)). Currents are exact integer sums (a spike or a small integer count times an
integer weight), membranes decay by an arithmetic right shift (tau = 2^k), so the only rounding
is the quantisation itself.

The attention cores are integer already ((Q K^T) counts, NSAD tables, binary compares, A V); their
LIF runs in units of ``scale / ATTENTION_UNIT`` so that the membrane keeps
``log2(ATTENTION_UNIT)`` fractional bits through its halvings and SSA_Bin's vbar is held to
1/ATTENTION_UNIT of a unit (SPEC §6).

Currents summed channel by channel into one map (the Spike-driven Transformer's membrane
stream: its RPE and ``x_feat``, each block's proj, fc2 and, with the MLP's ``res``, fc1) share one
unit per channel, the largest of their own (:func:`shared_unit`), so the sum is exact; the stream's
worst case, the sum of theirs, is bounded at load (:func:`membrane_stream_bound`).

Accumulators are int32. Every layer's worst case (all its inputs active at their largest
multiplicity) is bounded at load; a layer that could overflow is refused with its name
(:class:`FixedPointError`). The first layer takes raw event counts, which have no bound a priori:
it gets the largest count per pixel and step that is safe (:attr:`Quantised.max_multiplicity`),
and a step beyond it is refused when it arrives, naming the layer and the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import EventformerError

ACCUMULATOR = np.dtype(np.int32)
ACC_LIMIT = 2**31 - 1
# Fractional bits of the attention LIF's unit: scale / 256 (SPEC §6 holds vbar to 1/256).
ATTENTION_UNIT = 256
# SAFormer's gate term reaches the channel's unit through a multiplier with this many
# fractional bits: term = (a * multiplier) >> GATE_SHIFT, rounded.
GATE_SHIFT = 16


class FixedPointError(EventformerError):
    """A model that cannot run in an integer mode as it is (overflow, tau not a power of two)."""


@dataclass(frozen=True)
class Fixed:
    """An integer arithmetic: weights of ``bits`` bits, int32 currents and membranes."""

    bits: int

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def weight_dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self.bits == 8 else np.int16)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of currents and membranes."""
        return ACCUMULATOR

    def __str__(self) -> str:
        return self.name


INTEGER_MODES = {"int16": Fixed(16), "int8": Fixed(8)}


def arithmetic(dtype):
    """The engine's arithmetic for a ``--dtype`` value: a numpy float dtype, or :class:`Fixed`."""
    if isinstance(dtype, Fixed):
        return dtype
    if isinstance(dtype, str) and dtype in INTEGER_MODES:
        return INTEGER_MODES[dtype]
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32, float64, int16 or int8, got {dtype}")
    return dt


def array_dtype(arith) -> np.dtype:
    """The dtype of a layer's currents and membranes under ``arith``."""
    return arith.dtype if isinstance(arith, Fixed) else np.dtype(arith)


def shift_of(tau: float, name: str) -> int:
    """k with tau = 2^k: the integer LIF decays by ``>> k``; any other tau is refused."""
    k = round(math.log2(tau)) if tau > 0 else -1
    if k < 0 or 2.0 ** k != tau:
        raise FixedPointError(
            f"{name}: integer mode needs tau a power of two (the decay is a shift), got {tau:g}")
    return int(k)


@dataclass
class Quantised:
    """One synaptic layer in fixed point (output channels first)."""

    weight: np.ndarray  # int32 [cout, ...], |Wq| <= qmax
    bias: np.ndarray  # int32 [cout]
    scale: np.ndarray  # float64 [cout]: the value of one unit of channel c
    theta: np.ndarray  # int32 [cout]
    worst: int  # the largest |current| a step can reach at multiplicity 1 per input
    max_multiplicity: int  # the largest input multiplicity that cannot overflow

    @property
    def channel_worst(self) -> np.ndarray:
        """The largest |current| per channel (int64) when every input carries a spike: the sum of
        the channel's |weights| and its |bias|."""
        w = np.abs(self.weight.reshape(self.weight.shape[0], -1).astype(np.int64))
        return w.sum(axis=1) + np.abs(self.bias.astype(np.int64))

    def check_multiplicity(self, cnt: np.ndarray, name: str) -> None:
        if cnt.shape[0] and int(cnt.max()) > self.max_multiplicity:
            raise FixedPointError(
                f"{name}: an input count of {int(cnt.max())} events at one site in one step "
                f"would overflow the int32 accumulator (at most {self.max_multiplicity} fit); "
                "use more time steps, a float --dtype, or int8")


def channel_scale(weight: np.ndarray, bias: np.ndarray | None, theta: float,
                  arith: Fixed) -> np.ndarray:
    """A layer's own unit per output channel (SPEC §6): s_c = max_i |W'_c,i| / (2^(b-1) - 1),
    the smallest in which channel c's weights fit ``arith``'s bits."""
    w = np.asarray(weight, np.float64)
    cout = w.shape[0]
    flat = w.reshape(cout, -1)
    b = np.zeros(cout) if bias is None else np.asarray(bias, np.float64).reshape(cout)
    peak = np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(cout)
    # a channel without weights still needs a unit: one in which its bias and threshold fit
    quiet = np.maximum(np.abs(b), theta)
    return np.where(peak > 0, peak, quiet) / arith.qmax


def shared_unit(layers, arith: Fixed) -> np.ndarray:
    """One unit per channel for layers whose currents are summed channel by channel (the
    Spike-driven Transformer's membrane stream): the largest of their own units, so no layer's
    weights exceed ``arith``'s bits in it and the sum is an exact integer. ``layers``: their
    parameters (``weight`` [C, ...], ``bias``, ``theta``), all of C output channels."""
    scales = [channel_scale(p.weight, p.bias, p.theta, arith) for p in layers]
    if len({s.shape for s in scales}) != 1:
        raise ValueError(f"layers summed channel by channel have different widths: "
                         f"{', '.join(f'{p.name} {s.shape[0]}' for p, s in zip(layers, scales))}")
    return np.max(scales, axis=0)


def quantise(weight: np.ndarray, bias: np.ndarray | None, theta: float, v_reset, arith: Fixed,
             name: str, multiplicity: int | None, window: float = 1.0,
             unit: np.ndarray | None = None) -> Quantised:
    """Per-output-channel quantisation of a folded layer (SPEC §6), with its overflow bound.

    ``weight`` [cout, ...] float, ``bias`` [cout] (None: zero). ``multiplicity``: the largest
    value one input site can carry (1 for spikes, the residual stream's bound for integer
    inputs), or None for raw event counts (bounded per step at run time instead). ``window``:
    how many times a current can be summed into one step (TASA's attenuated window: at most
    T_AW). ``unit``: the channels' unit when the current is summed with other layers' in one
    (:func:`shared_unit`; at least the layer's own, so its weights still fit), else the
    layer's own (:func:`channel_scale`). A layer whose worst case exceeds int32 is refused with
    its name.
    """
    if v_reset is not None and v_reset != 0:
        raise FixedPointError(
            f"{name}: integer mode supports v_reset 0 or a soft reset, got v_reset {v_reset:g}")
    w = np.asarray(weight, np.float64)
    cout = w.shape[0]
    flat = w.reshape(cout, -1)
    b = np.zeros(cout) if bias is None else np.asarray(bias, np.float64).reshape(cout)
    scale = channel_scale(w, b, theta, arith)
    if unit is not None:
        unit = np.asarray(unit, np.float64).reshape(-1)
        if unit.shape != scale.shape or np.any(unit < scale):
            raise ValueError(f"{name}: a shared unit must give each of its {cout} channels at "
                             "least the layer's own unit")
        scale = unit
    wq = np.rint(flat / scale[:, None])
    bq = np.rint(b / scale)
    thq = np.maximum(np.rint(theta / scale), 1)  # theta > 0: at least one unit
    fan = np.abs(wq).sum(axis=1)
    per_unit = float(fan.max()) * window if cout else 0.0
    bias_peak = float(np.abs(bq).max()) if cout else 0.0
    room = ACC_LIMIT - bias_peak - float(thq.max() if cout else 0)
    if per_unit == 0:
        max_mult = ACC_LIMIT
    else:
        max_mult = int(room // per_unit) if room > 0 else 0
    worst = int(per_unit + bias_peak)
    if multiplicity is not None and multiplicity > max_mult:
        raise FixedPointError(
            f"{name}: in {arith.name} its worst-case current (inputs up to {multiplicity}, "
            f"{per_unit * multiplicity + bias_peak:.3g} units) could overflow the int32 "
            "accumulator; run it in a float --dtype")
    if max_mult < 1:
        raise FixedPointError(f"{name}: in {arith.name} its bias and threshold alone overflow "
                              "the int32 accumulator; run it in a float --dtype")
    return Quantised(weight=wq.astype(np.int32).reshape(w.shape), bias=bq.astype(np.int32),
                     scale=scale, theta=thq.astype(np.int32), worst=worst,
                     max_multiplicity=max_mult)


def attention_theta(theta: float, scale: float) -> int:
    """The attention LIF's threshold in units of scale / ATTENTION_UNIT (exact for power-of-two
    scales and thresholds, else the nearest unit)."""
    return max(1, int(round(theta / scale * ATTENTION_UNIT)))


def membrane_stream_bound(currents, arith: Fixed) -> np.ndarray:
    """The largest |value| per channel of a membrane stream (the Spike-driven Transformer's)
    that sums, in one unit per channel, the currents of ``currents`` ((name, Quantised) in the
    order they are added, each at most its :attr:`Quantised.channel_worst` in a step). A stream
    that could leave int32 is refused at load, naming the layer whose current could overflow
    it."""
    bound = None
    for name, q in currents:
        bound = q.channel_worst if bound is None else bound + q.channel_worst
        if int(bound.max()) > ACC_LIMIT:
            raise FixedPointError(
                f"{name}: in {arith.name} the membrane stream with its current added could reach "
                f"{int(bound.max()):.3g} units, beyond the int32 accumulator; run it in a float "
                "--dtype")
    return bound


def residual_bound(depth_index: int, after_attention: bool) -> int:
    """The largest value of one site of the residual stream at a block's input (SPEC §2: the
    patch embedding's x_feat + rpe is at most 2, each attention and MLP branch adds a spike)."""
    return 2 + 2 * depth_index + (1 if after_attention else 0)
