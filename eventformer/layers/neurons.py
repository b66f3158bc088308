"""A layer's spiking neurons: the membrane (its only dense array) and the LIF update."""

from __future__ import annotations

import numpy as np

from ..kernels import lif_params, lif_step, lif_step_flags


class LIFNeurons:
    def __init__(self, size: int, *, tau: float, theta: float, v_reset: float | None,
                 decay_input: bool, dtype):
        self.size = size
        self.params = lif_params(tau, theta, v_reset, np.dtype(dtype).type)
        self.hard_reset = v_reset is not None
        self.decay_input = bool(decay_input)
        self.v = np.zeros(size, dtype)
        self._spikes = np.empty(size, np.int32)

    def reset(self) -> None:
        self.v[:] = 0

    def fire(self, current: np.ndarray, counters: np.ndarray) -> np.ndarray:
        """One step on the dense input current; returns the sorted indices that spiked."""
        n = lif_step(self.v, current, self.params, self.hard_reset, self.decay_input,
                     self._spikes, counters)
        return self._spikes[:n].copy()

    def fire_flags(self, current: np.ndarray, counters: np.ndarray) -> tuple[np.ndarray, int]:
        """One step; the spikes as a dense 0/1 uint8 map (for a max-pool next) and their count."""
        if not hasattr(self, "_flags"):
            self._flags = np.empty(self.size, np.uint8)
        n = lif_step_flags(self.v, current, self.params, self.hard_reset, self.decay_input,
                           self._flags, counters)
        return self._flags, n

    @classmethod
    def from_params(cls, size, p, dtype) -> "LIFNeurons":
        return cls(size, tau=p.tau, theta=p.theta, v_reset=p.v_reset,
                   decay_input=p.decay_input, dtype=dtype)
