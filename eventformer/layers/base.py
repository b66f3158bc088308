"""What every reportable layer shares: a name, op counters, spike tallies, a path policy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import counters as C

EMPTY = np.empty(0, np.int32)


@dataclass
class PathPolicy:
    """Which path a synaptic layer takes for a step.

    ``mode`` "auto" goes dense when the step's input density (active sites / sites) exceeds the
    layer kind's threshold: a scatter does work per event, a GEMM per site, and a GEMM does each
    multiply-accumulate several times faster, so above some density the dense path wins even
    though it does more arithmetic. The thresholds come from ``benchmarks/crossover.py`` on a
    2-core x86 machine; "sparse" and "dense" force one path (for tests and benchmarks).
    """

    mode: str = "auto"
    conv_threshold: float = 0.22
    linear_threshold: float = 0.2

    def dense(self, kind: str, events: int, sites: int) -> bool:
        if self.mode == "sparse":
            return False
        if self.mode == "dense":
            return True
        limit = self.conv_threshold if kind == "conv2d" else self.linear_threshold
        return events > limit * sites


class SpikingLayer:
    """Base of every layer that ends in spiking neurons (the unit of the per-layer report)."""

    kind = "layer"

    def __init__(self, name: str, n_neurons: int, input_kind: str):
        self.name = name
        self.n_neurons = n_neurons
        self.input_kind = input_kind  # "spikes", "integers" (residual sums) or "counts" (raw events)
        self.counters = np.zeros(C.N_COUNTERS, np.int64)
        self.spikes_per_step: list[int] = []
        self.dense_macs_per_step = 0  # what a dense implementation multiplies per step
        self.probe = None  # optional callable(layer, current) seeing each step's input current

    def reset(self) -> None:
        """Forget the sample: neuron state to rest. Counters and tallies are kept until
        :meth:`clear_stats` so a stream can report over many windows."""
        raise NotImplementedError

    def clear_stats(self) -> None:
        self.counters[:] = 0
        self.spikes_per_step = []

    def stats(self) -> dict:
        c = self.counters
        out = {"name": self.name, "kind": self.kind, "input": self.input_kind,
               "neurons": self.n_neurons, "spikes": int(sum(self.spikes_per_step))}
        out.update({name: int(c[i]) for i, name in enumerate(C.NAMES)})
        sites = int(c[C.INPUT_SITES])
        out["input_density"] = (int(c[C.INPUT_EVENTS]) / sites) if sites else 0.0
        out["dense_macs_per_step"] = int(self.dense_macs_per_step)
        return out

    def fire(self, current: np.ndarray) -> np.ndarray:
        """Run this layer's neurons on the step's current and tally the spikes."""
        if self.probe is not None:
            self.probe(self, current)
        spikes = self.neurons.fire(current, self.counters)
        self.spikes_per_step.append(int(spikes.shape[0]))
        return spikes
