"""What every reportable layer shares: a name, op counters, spike tallies, a path policy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import counters as C
from ..runtime import engine_threads

# Input density above which a step runs dense, by engine threads (benchmarks/crossover.py on
# the project's 2-core x86 machines). A scatter is bound by memory latency and does not speed up
# with a second thread there; a GEMM split over two threads runs ~1.7x faster, so with more
# threads the dense path takes over at lower densities.
CROSSOVER = {1: {"conv2d": 0.25, "linear": 0.22}, 2: {"conv2d": 0.14, "linear": 0.17}}


@dataclass
class PathPolicy:
    """Which path a synaptic layer takes for a step.

    ``mode`` "auto" goes dense when the step's input density (active sites / sites) exceeds the
    layer kind's threshold: a scatter does work per event, a GEMM per site, and a GEMM does each
    multiply-accumulate several times faster, so above some density the dense path wins even
    though it does more arithmetic. Thresholds default to :data:`CROSSOVER` for the engine's
    thread count; "sparse" and "dense" force one path (for tests and benchmarks).
    """

    mode: str = "auto"
    conv_threshold: float | None = None
    linear_threshold: float | None = None

    def __post_init__(self):
        if self.mode not in ("auto", "sparse", "dense"):
            raise ValueError(f"path mode must be auto, sparse or dense, got {self.mode!r}")

    def threshold(self, kind: str) -> float:
        given = self.conv_threshold if kind == "conv2d" else self.linear_threshold
        if given is not None:
            return given
        return CROSSOVER[min(engine_threads(), 2)][kind]

    def dense(self, kind: str, events: int, sites: int) -> bool:
        if self.mode == "sparse":
            return False
        if self.mode == "dense":
            return True
        return events > self.threshold(kind) * sites


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
