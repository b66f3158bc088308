"""A layer's spiking neurons: the membrane (its only dense array) and the LIF update."""

from __future__ import annotations

import numpy as np

from ..kernels import counters as C, lif_fixed_kernels, lif_kernels, lif_params
from ..kernels.neurons import spike_indices
from .base import EMPTY, period


class LIFNeurons:
    """The membranes of a layer and their LIF step.

    ``steady`` is the layer's current of a step without synaptic input (its bias, or zero,
    one period of it: see :func:`~eventformer.kernels.lif_step_flags`), a constant array the
    layer passes by identity. Steps on it go through :func:`~eventformer.kernels.lif_quiet_step`,
    which says when the membranes have settled: no spike and no membrane changed, so v is a fixed
    point of that current. Until another current or a reset, further steps on it are then skipped
    (exactly: they would compute the same values and fire nothing); their neuron updates are
    still counted, as every membrane still decays towards the same value.
    """

    def __init__(self, size: int, *, tau: float, theta: float, v_reset: float | None,
                 decay_input: bool, dtype):
        self.size = size
        self.params = lif_params(tau, theta, v_reset, np.dtype(dtype).type)
        self.hard_reset = v_reset is not None
        self.decay_input = bool(decay_input)
        self._bind(lif_kernels(self.hard_reset, self.decay_input), (self.params, 0))
        self.v = np.zeros(size, dtype)
        self._spikes = np.empty(size, np.int32)
        self._flags = np.empty(size, np.uint8)
        self.steady = None
        self._settled = False  # v is a fixed point of ``steady`` (see lif_quiet_step)

    def _bind(self, rule, args) -> None:
        """The kernels of a step (``_step``: sorted spike indices), a step into flags
        (``_step_flags``) and a quiet step (``_quiet``) of this layer's rule, called as
        ``kernel(v, current, *_args, ...)``: the rule is compiled into them (a first run
        compiles only the rules its model uses), so ``_args`` holds the numeric parameters."""
        self._step, self._step_flags, self._quiet = rule
        self._args = args

    def reset(self) -> None:
        self.v[:] = 0
        self._settled = False

    def _steady_step(self, spikes_out, counters) -> int:
        """A step on ``steady``: flags into ``_flags`` (all 0 once settled, as the settling
        step left them), spike indices into ``spikes_out`` unless it is empty."""
        if self._settled:
            counters[C.NEURON_UPDATES] += self.size
            return 0
        n, still = self._quiet(self.v, self.steady, *self._args, self._flags, spikes_out,
                               counters)
        self._settled = still
        return n

    def fire(self, current: np.ndarray, counters: np.ndarray) -> np.ndarray:
        """One step on the input current (dense, or one period of a current that repeats every
        ``current.size`` neurons: see :func:`~eventformer.kernels.lif_step_flags`); returns the
        sorted indices that spiked (a new array, or the shared empty one)."""
        if current is self.steady:
            n = self._steady_step(self._spikes, counters)
        else:
            self._settled = False  # (the step into flags, then its indices: see lif_kernels)
            n = self._step_flags(self.v, current, *self._args, self._flags, counters)
            if n:
                spike_indices(self._flags, self.size, self._spikes)
        return self._spikes[:n].copy() if n else EMPTY

    def fire_flags(self, current: np.ndarray, counters: np.ndarray) -> tuple[np.ndarray, int]:
        """One step; the spikes as a dense 0/1 uint8 map (for a max-pool next) and their count."""
        if current is self.steady:
            return self._flags, self._steady_step(EMPTY, counters)
        self._settled = False
        n = self._step_flags(self.v, current, *self._args, self._flags, counters)
        return self._flags, n

    @classmethod
    def from_params(cls, size, p, dtype) -> "LIFNeurons":
        return cls(size, tau=p.tau, theta=p.theta, v_reset=p.v_reset,
                   decay_input=p.decay_input, dtype=dtype)


class FixedLIFNeurons(LIFNeurons):
    """Integer membranes (int32, each channel in its own unit) and the shift LIF of SPEC §6.

    ``theta`` holds the per-channel thresholds [C] (channel-innermost layout: neuron i is
    channel i % C); the kernels read them as one period, as long as the period of a steady
    current (:func:`~eventformer.layers.base.period`), so a step on the bias alone runs as fast
    as a dense one.
    """

    def __init__(self, size: int, *, shift: int, theta: np.ndarray, soft_reset: bool,
                 decay_input: bool):
        self.size = size
        self.shift = int(shift)
        self.hard_reset = not soft_reset
        self.decay_input = bool(decay_input)
        self.theta = period(np.asarray(theta, np.int32), size)
        self._bind(lif_fixed_kernels(self.hard_reset, self.decay_input, self.shift),
                   (self.theta, self.shift))
        self.v = np.zeros(size, np.int32)
        self._spikes = np.empty(size, np.int32)
        self._flags = np.empty(size, np.uint8)
        self.steady = None
        self._settled = False
