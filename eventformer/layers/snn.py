"""Layers of sequential spiking CNNs imported from NIR: the engine's conv and linear layers with
the exporting framework's neurons, sum-pooling of events, and the spike-count output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fixedpoint import Fixed, arithmetic, quantise
from ..kernels import counters as C
from ..kernels.snn import (
    FRACTION_BITS,
    NORSE_A_MEM,
    NORSE_B_SYN,
    NORSE_THETA,
    NORSE_V_LEAK,
    NORSE_V_RESET,
    RESET_NONE,
    RESET_SUBTRACT,
    RESET_ZERO,
    SINABS_ALPHA_MEM,
    SINABS_ALPHA_SYN,
    SINABS_INPUT_GAIN,
    SINABS_MIN_V,
    SINABS_RESET_VALUE,
    SINABS_THETA,
    SPIKES_FLOOR,
    SPIKES_SINGLE,
    SPIKES_TRUNC,
    norse_step,
    norse_step_fixed,
    sinabs_step,
    sinabs_step_fixed,
    snntorch_step,
    snntorch_step_fixed,
    sumpool_events,
)
from .base import EMPTY, SpikingLayer
from .synapses import FLOAT32_EXACT, Conv2dLIF, LinearLIF

SNNTORCH_RESETS = {"subtract": RESET_SUBTRACT, "zero": RESET_ZERO, "none": RESET_NONE}


@dataclass
class SynapseView:
    """What the engine's conv and linear layers read of a stage: its weights as the engine runs
    them (groups expanded, an average pool's 1/k^2 folded in, a flatten's order applied)."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    stride: int
    padding: int
    neuron: object  # modelfile.snn.NeuronParams
    out_chw: tuple[int, ...]  # the layer's output shape, (C, H, W) or (features,)

    @property
    def theta(self) -> float:
        return float(np.max(self.neuron.params["theta"]))


def per_neuron(arr, out_chw) -> np.ndarray:
    """A parameter given per neuron in the NIR shape (C, H, W) (or anything that broadcasts to
    it), laid out as the engine's output: HWC, flat."""
    full = np.broadcast_to(np.asarray(arr, np.float64), out_chw)
    if len(out_chw) == 3:
        full = full.transpose(1, 2, 0)
    return np.ascontiguousarray(full.reshape(-1))


class FrameworkNeurons:
    """A layer's neurons stepped by the exporting framework's own rule (kernels/snn.py), in
    floats or, with ``fixed``, in the channels' fixed-point units (``scale`` [C])."""

    def __init__(self, neuron, out_chw: tuple[int, ...], dtype, fixed: Fixed | None = None,
                 scale: np.ndarray | None = None):
        self.rule = neuron.rule
        self.size = int(np.prod(out_chw))
        p = {k: per_neuron(v, out_chw) for k, v in neuron.params.items()}
        o = neuron.options
        channels = out_chw[0]
        unit = None if fixed is None else np.tile(np.asarray(scale, np.float64),
                                                  self.size // channels)

        def units(x):  # a value in the channel's unit (SPEC §6)
            return np.rint(x / unit).astype(np.int64)

        def multiplier(x):
            return np.rint(np.asarray(x, np.float64) * (1 << FRACTION_BITS)).astype(np.int64)

        self.fixed = fixed
        dt = np.dtype(np.int32 if fixed else dtype)
        self.v = np.zeros(self.size, dt)
        self.v0 = None  # the membranes' value at a reset (None: zero)
        self.i_syn = np.zeros(0, dt)
        if self.rule == "sinabs":
            alpha = p["alpha_mem"]
            if fixed is None:
                t = dt.type
                rows = np.stack([alpha, p["alpha_syn"], p["theta"], p["min_v"],
                                 p["reset_value"], alpha]).astype(dt)
                # sinabs normalises by (1 - alpha_mem) computed in the tensor's dtype
                rows[SINABS_INPUT_GAIN] = t(1) - rows[SINABS_ALPHA_MEM]
            else:
                rows = np.zeros((6, self.size), np.int64)
                rows[SINABS_ALPHA_MEM] = multiplier(alpha)
                rows[SINABS_ALPHA_SYN] = multiplier(p["alpha_syn"])
                rows[SINABS_THETA] = np.maximum(units(p["theta"]), 1)
                # a floor at minus the threshold (sinabs' reading of an IF) is minus the
                # quantised threshold, exactly, whatever the rounding of either
                rows[SINABS_MIN_V] = np.where(p["min_v"] == -p["theta"], -rows[SINABS_THETA],
                                              units(p["min_v"]))
                rows[SINABS_RESET_VALUE] = units(p["reset_value"])
                rows[SINABS_INPUT_GAIN] = multiplier(1.0 - alpha)
            self.options = np.array([int(o["synaptic"]), int(o["norm_input"]),
                                     SPIKES_TRUNC if o["multi_spike"] else SPIKES_SINGLE,
                                     int(o["max_spikes"]),
                                     int(o["reset"] == "subtract"), int(o["floor"])], np.int64)
            if o["synaptic"]:
                self.i_syn = np.zeros(self.size, dt)
            self._step = sinabs_step_fixed if fixed else sinabs_step
        elif self.rule == "rockpool":
            # Rockpool's LIF steps as sinabs' does (i = beta (i + x), v = alpha v + i), without
            # input normalisation, firing floor(v / theta) spikes where v >= theta
            ones, zero = np.ones(self.size), np.zeros(self.size)
            if fixed is None:
                rows = np.stack([p["alpha_mem"], p["alpha_syn"], p["theta"], zero, zero,
                                 ones]).astype(dt)
            else:
                rows = np.zeros((6, self.size), np.int64)
                rows[SINABS_ALPHA_MEM] = multiplier(p["alpha_mem"])
                rows[SINABS_ALPHA_SYN] = multiplier(p["alpha_syn"])
                rows[SINABS_THETA] = np.maximum(units(p["theta"]), 1)
                rows[SINABS_INPUT_GAIN] = multiplier(ones)
            self.options = np.array([int(o["synaptic"]), 0, SPIKES_FLOOR, int(o["max_spikes"]),
                                     1, 0], np.int64)
            if o["synaptic"]:
                self.i_syn = np.zeros(self.size, dt)
            self._step = sinabs_step_fixed if fixed else sinabs_step
        elif self.rule == "snntorch":
            beta = np.clip(p["beta"], 0.0, 1.0)  # snnTorch clamps beta in its forward
            if fixed is None:
                rows = np.stack([beta, p["theta"]]).astype(dt)
            else:
                rows = np.stack([multiplier(beta), np.maximum(units(p["theta"]), 1)])
            self.options = SNNTORCH_RESETS[o["reset"]]
            self._step = snntorch_step_fixed if fixed else snntorch_step
        elif self.rule == "norse":
            step_dt = float(o["dt"])
            if fixed is None:
                t = dt.type
                rows = np.zeros((5, self.size), dt)
                # Norse forms dt * tau_mem_inv and -dt * tau_syn_inv in the tensor's dtype
                rows[NORSE_A_MEM] = t(step_dt) * p["tau_mem_inv"].astype(dt)
                rows[NORSE_B_SYN] = t(-step_dt) * p["tau_syn_inv"].astype(dt)
                rows[NORSE_V_LEAK] = p["v_leak"]
                rows[NORSE_THETA] = p["theta"]
                rows[NORSE_V_RESET] = p["v_reset"]
            else:
                rows = np.zeros((5, self.size), np.int64)
                rows[NORSE_A_MEM] = multiplier(step_dt * p["tau_mem_inv"])
                rows[NORSE_B_SYN] = multiplier(-step_dt * p["tau_syn_inv"])
                rows[NORSE_V_LEAK] = units(p["v_leak"])
                rows[NORSE_THETA] = np.maximum(units(p["theta"]), 1)
                rows[NORSE_V_RESET] = units(p["v_reset"])
            self.options = np.array([int(o["synaptic"]), int(o["reset"] == "subtract"),
                                     int(o["integrate"])], np.int64)
            if o["synaptic"]:
                self.i_syn = np.zeros(self.size, dt)
            # Norse starts a membrane at v_leak (an IAFCell at v_reset), not at zero
            rest = rows[NORSE_V_RESET] if o["integrate"] else rows[NORSE_V_LEAK]
            self.v0 = np.ascontiguousarray(rest, dt)
            self._step = norse_step_fixed if fixed else norse_step
        else:
            raise ValueError(f"unknown neuron rule {self.rule!r}")
        self.params = np.ascontiguousarray(rows)
        self.reset()
        self._spikes = np.empty(self.size, np.int32)
        self._counts = np.empty(self.size, np.int32)
        self.steady = None  # set by the layer; these kernels take any period of current
        self.emitted = 0  # spikes (with multiplicity) of the last step

    def reset(self) -> None:
        self.v[:] = 0 if self.v0 is None else self.v0
        self.i_syn[:] = 0

    def fire(self, current: np.ndarray, counters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step on the input current (dense, or one period of a repeating one); returns
        the sorted indices that spiked and their spike counts."""
        if self.rule == "snntorch":
            n = self._step(self.v, current, self.params, self.options, self._spikes,
                           self._counts, counters)
        else:
            n = self._step(self.v, self.i_syn, current, self.params, self.options,
                           self._spikes, self._counts, counters)
        if n == 0:
            self.emitted = 0
            return EMPTY, EMPTY
        cnt = self._counts[:n].copy()
        self.emitted = int(cnt.sum())
        return self._spikes[:n].copy(), cnt


class _FrameworkLayer:
    """What the imported conv and linear layers add to the engine's: the framework's neurons,
    quantisation with per-neuron thresholds, and multi-spike outputs."""

    def _arithmetic(self, params, dtype, multiplicity, window: float = 1.0, unit=None):
        # ``unit`` (a unit shared with other layers' currents) is the membrane stream's, which
        # a sequential net has not: its layers keep their own
        arith = arithmetic(dtype)
        w = np.asarray(params.weight, np.float64)
        b = np.asarray(params.bias, np.float64)
        self._bounded = multiplicity is not None
        if not isinstance(arith, Fixed):
            self.fixed, self.quant = None, None
            self.dtype = self.weight_dtype = self.gemm_dtype = arith
            return w, b
        q = quantise(w, b, params.theta, None, arith, params.name, multiplicity, window)
        self.fixed, self.quant = arith, q
        self.dtype, self.weight_dtype = arith.dtype, arith.weight_dtype
        worst = q.worst * (multiplicity if multiplicity is not None else q.max_multiplicity)
        self.gemm_dtype = np.dtype(np.float32 if worst < FLOAT32_EXACT else np.float64)
        return q.weight, q.bias

    def _make_neurons(self, params, dtype):
        return FrameworkNeurons(params.neuron, params.out_chw, dtype, self.fixed,
                                None if self.quant is None else self.quant.scale)

    def _check_counts(self, cnt) -> None:
        """In an integer mode, refuse an input whose multiplicity could overflow: raw counts
        and the unbounded outputs of multi-spike neurons are checked per step."""
        if self.fixed is not None and not self._bounded:
            self.quant.check_multiplicity(cnt, self.name)

    def emit(self, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.probe is not None:
            self.probe(self, current)
        idx, cnt = self.neurons.fire(current, self.counters)
        self.spikes_total += self.neurons.emitted
        return idx, cnt


class FrameworkConv2d(_FrameworkLayer, Conv2dLIF):
    """Conv2d -> the exporting framework's neurons (no pool: pools are stages of their own)."""

    def __init__(self, view: SynapseView, in_shape, *, dtype, input_kind, multiplicity,
                 policy):
        super().__init__(view, in_shape, dtype=dtype, input_kind=input_kind, pool=None,
                         policy=policy, multiplicity=multiplicity)


class FrameworkLinear(_FrameworkLayer, LinearLIF):
    """Linear (after a flatten, or on features) -> the exporting framework's neurons."""

    def __init__(self, view: SynapseView, *, dtype, input_kind, multiplicity, policy):
        super().__init__(view, 1, dtype=dtype, input_kind=input_kind, policy=policy,
                         multiplicity=multiplicity)


class SumPoolEvents(SpikingLayer):
    """Sum-pooling of an HWC event list (k x k windows, stride, zero padding): PyTorch's
    windows; an average pool is this with its 1/k^2 folded into the next synaptic layer."""

    kind = "sumpool"

    def __init__(self, name: str, in_shape: tuple[int, int, int], kernel: int, stride: int,
                 padding: int, input_kind: str, average: bool = False):
        super().__init__(name, 0, input_kind)
        h, w, c = in_shape
        self.in_shape = in_shape
        self.k, self.s, self.p = kernel, stride, padding
        self.out_h = (h + 2 * padding - kernel) // stride + 1
        self.out_w = (w + 2 * padding - kernel) // stride + 1
        self.out_shape = (self.out_h, self.out_w, c)
        self.kind = "avgpool" if average else "sumpool"
        size = self.out_h * self.out_w * c
        self._acc = np.zeros(size, np.int32)
        self._idx = np.empty(size, np.int32)
        self._cnt = np.empty(size, np.int32)
        self.in_sites = h * w * c

    def reset(self) -> None:
        pass  # no state

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.counters
        c[C.INPUT_EVENTS] += idx.shape[0]
        c[C.INPUT_SITES] += self.in_sites
        c[C.SPARSE_STEPS] += 1
        if idx.shape[0] == 0:
            return EMPTY, EMPTY
        h, w, ch = self.in_shape
        n = sumpool_events(idx, cnt, h, w, ch, self.k, self.s, self.p, self.out_h, self.out_w,
                           self._acc, self._idx, self._cnt, c)
        return self._idx[:n].copy(), self._cnt[:n].copy()

    def run_steps(self, inputs: list) -> list:
        return [self.step(idx, cnt) for idx, cnt in inputs]


class SpikeCountOutput:
    """The class scores of a sequential SNN: its output layer's spikes, counted per neuron over
    the steps since the last reset (multi-spike neurons add their multiplicity)."""

    name = "output"
    kind = "head"

    def __init__(self, classes: int):
        self.counts = np.zeros(classes, np.int64)
        self.steps = 0

    def reset(self) -> None:
        self.counts[:] = 0
        self.steps = 0

    def clear_stats(self) -> None:
        pass

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> None:
        if idx.shape[0]:
            np.add.at(self.counts, idx, cnt)
        self.steps += 1

    def logits(self) -> np.ndarray:
        return self.counts.astype(np.float64)
