"""What every reportable layer shares: a name, op counters, spike tallies, a path policy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import counters as C, merge_add
from ..kernels.igemm import AVX2_DOT, INTEGER_DOT, VNNI
from ..runtime import engine_threads

# Input density above which a step runs dense, by engine threads (benchmarks/crossover.py on
# the project's 2-core x86 machines). A scatter is bound by memory latency and does not speed up
# with a second thread there; a GEMM split over two threads runs ~1.7x faster, so with more
# threads the dense path takes over at lower densities.
CROSSOVER = {1: {"conv2d": 0.25, "linear": 0.22}, 2: {"conv2d": 0.14, "linear": 0.17}}

# Input densities (lo, hi] in which a gather-capable conv (stride 1, "same" padding, spike or
# integer input: SPS1-3 and RPE) gathers in "auto", by arithmetic and engine threads: at lo or
# below it scatters, above hi it runs as a GEMM. `python benchmarks/crossover.py --real` (the
# layers' recorded inputs on the real gesture segments, where 5% firing means 18-25% input
# density after the max-pool and 15% firing 43-53%) put the gather ahead of the scatter at every
# density seen (2-60%, float32 and integer), ahead of the GEMM up to ~45% (float32, 1 thread) or
# ~30% (2 threads, where the GEMM splits over both cores), and in the integer modes ahead of
# float BLAS everywhere (int16's exact GEMM ran in float64: its sums can exceed float32's 2^24).
# The integer GEMM on VNNI (kernels.igemm) moved that: `python benchmarks/int_gemm.py
# --crossover` (random inputs, 1 thread, gather/dense time) put the dense step ahead above ~45%
# on SPS3, RPE, q, fc1, fc2 (int8 1.0-1.4 at 45%) and above ~60% on SPS1-2 (int8 1.01-1.07,
# int16 1.00-1.21 at 60%; 1.2-2.2 at 80% everywhere), so the integer modes go dense above 60%,
# where no layer loses (a convolution offline: see CONV_DENSE_ABOVE). AVX2's form of the integer
# GEMM (AMD EPYC Zen 3, `--crossover`, 1 thread) put the dense step ahead above 45-60% (int8;
# SPS1-2 near 75%) and 30-45% (int16), so the same edge holds there; without either the GEMM is
# float BLAS and the gather keeps every density.
_INT_DENSE_ABOVE = 0.6 if INTEGER_DOT else 1.0
# Offline, a convolution's dense step runs in the layer's bands (each band builds the im2col rows
# of its own output rows and multiplies them on its own thread: Conv2dLIF._band_dense), which
# the single steps above (their im2col on the calling thread) did not see. The full-size model
# at 15% firing (SPS inputs 43-53% dense), convolutions dense above these edges against 60%:
# int8 (30%) 98-101 -> 78-79 ms per sample on 1 thread, 67-69 -> 59-60 on 2; int16 (30-40%)
# 153 -> 121-122 on 1, 95 -> 83-84 on 2; at 5% firing (SPS inputs 18-25%) edges from 20% to 35%
# were all within the noise (one process, engines interleaved). A step on its own (streaming)
# keeps GATHER_BAND's edge.
# On AVX2's integer GEMM (AMD EPYC Zen 3, one engine, edges toggled between interleaved passes,
# 15% firing, 1 thread) int16 kept 0.4 (142.7 ms per sample against 173.5 at 0.6), but int8 ran
# fastest gathering up to the per-step edge: 108 ms with 0.6 against 111 at 0.5, 113 at 0.45 and
# 119 at 0.3 (2 threads 65.7 against 67.1): there the int8 gather's 16-bit lanes are as fast,
# against a GEMM only twice an FMA's rate, as on VNNI against four times.
CONV_DENSE_ABOVE = ({"int8": 0.3, "int16": 0.4} if VNNI else {"int16": 0.4} if AVX2_DOT
                    else {})
# Since layers run in bands of rows on every engine thread, the gather splits over the threads as
# the GEMM does, and the one-thread band holds on two as well (full-size model at 5% firing,
# float32, 2 threads: 56.7 ms per sample with (0, 0.45) against 63.6 with (0, 0.30), 60.7 with
# (0, 0.6); at 15%: 101.6 against 106.7).
GATHER_BAND: dict[str, dict[int, tuple[float, float] | None]] = {
    "float": {1: (0.0, 0.45), 2: (0.0, 0.45)},
    "int16": {1: (0.0, _INT_DENSE_ABOVE), 2: (0.0, _INT_DENSE_ABOVE)},
    "int8": {1: (0.0, _INT_DENSE_ABOVE), 2: (0.0, _INT_DENSE_ABOVE)},
}
# A linear layer (64 tokens) runs its dense steps of a sample as one GEMM of all of them
# (synapses.BATCH_ROWS_BELOW), which the per-step crossovers above did not see: offline, its
# dense steps beat its gather from about 20% input density in every arithmetic. Full-size model
# at 5% firing on the real gesture segments (Intel Xeon, AVX-512 VNNI, no AMX; the bench's
# calibrated model, min of 3 interleaved runs), linear layers dense above 60% (45% float32)
# against above 20%: int8 88.5 -> 71.5 ms per sample on 1 thread, 70.2 -> 59.6 on 2; int16
# 121.6 -> 111.4 (1 thread); float32 112.8 -> 106.4 (1), 83.8 -> 76.7 (2); at 15% firing, where
# most linear inputs are denser than both edges, within the noise (int8 109.8 -> 107.7 on 1,
# 91.7 -> 82.6 on 2; float32 145.6 -> 141.8 on 1). On AMX tiles (kernels.amx) int8 gained the
# same from the same edge (50.9 -> 42.2 ms on 2 threads, an earlier machine). The convolutions
# keep theirs: their dense steps each pay an im2col and run one GEMM per step. A step on its own
# (streaming) keeps the per-step edge: there the lower one made the 10 ms windows' p99 latency
# 13.4 -> 17.5 ms (benchmarks/streaming.py, 2 threads).
LINEAR_DENSE_ABOVE = 0.2


@dataclass
class PathPolicy:
    """Which path a synaptic layer takes for a step.

    ``mode`` "auto" goes dense when the step's input density (active sites / sites) exceeds the
    layer kind's threshold: a scatter does work per event, a GEMM per site, and a GEMM does each
    multiply-accumulate several times faster, so above some density the dense path wins even
    though it does more arithmetic. Thresholds default to :data:`CROSSOVER` for the engine's
    thread count; "sparse" and "dense" force one path (for tests and benchmarks).

    Conv layers that can (stride 1, "same" padding, spike or integer input) have a third,
    event-driven path, the output-stationary gather (:func:`eventformer.kernels.conv2d_gather`,
    :func:`~eventformer.kernels.conv2d_gather_int`): "gather" forces it on them (every other
    layer scatters, as with "sparse"); in "auto" such a layer gathers a step whose density lies
    in its band (``gather_band``, default :data:`GATHER_BAND` for its arithmetic) and runs as a
    GEMM above the band (unless ``conv_threshold`` is given).
    """

    mode: str = "auto"
    conv_threshold: float | None = None
    linear_threshold: float | None = None
    gather_band: tuple[float, float] | None = None

    def __post_init__(self):
        if self.mode not in ("auto", "sparse", "dense", "gather"):
            raise ValueError(
                f"path mode must be auto, sparse, dense or gather, got {self.mode!r}")

    def band(self, arith: str, kind: str = "conv2d",
             batched: bool = False) -> tuple[float, float] | None:
        """The gather band of a layer of ``kind`` ("conv2d", "linear") in arithmetic ``arith``
        ("float", "int16", "int8"); ``batched``: the step is one of a sample's (offline), where
        a linear layer's dense steps share one GEMM, which lowers its upper edge to
        :data:`LINEAR_DENSE_ABOVE`, and a convolution's dense steps run in its bands, which
        lowers an integer one's to :data:`CONV_DENSE_ABOVE`."""
        if self.gather_band is not None:
            return self.gather_band
        band = GATHER_BAND[arith][min(engine_threads(), 2)]
        if band is not None and batched:
            edge = LINEAR_DENSE_ABOVE if kind == "linear" else CONV_DENSE_ABOVE.get(arith)
            if edge is not None:
                band = (band[0], min(band[1], edge))
        return band

    def gather(self, events: int, sites: int, arith: str = "float",
               kind: str = "conv2d") -> bool:
        """Whether a gather-capable conv layer's event-driven step gathers (not scatters)."""
        mode = self.mode
        if mode == "gather":
            return True
        if mode != "auto" or events == 0:
            return False
        band = self.band(arith, kind)
        if band is None:
            return False
        lo, hi = band
        return lo * sites < events <= hi * sites

    def threshold(self, kind: str) -> float:
        given = self.conv_threshold if kind == "conv2d" else self.linear_threshold
        if given is not None:
            return given
        return CROSSOVER[min(engine_threads(), 2)][kind]

    def dense(self, kind: str, events: int, sites: int, gather_arith: str | None = None,
              batched: bool = False) -> bool:
        """Whether a step runs as a GEMM; ``gather_arith``: the layer can gather, in this
        arithmetic, and then goes dense only above its gather band (``batched``: see
        :meth:`band`)."""
        mode = self.mode
        if mode == "sparse" or mode == "gather":
            return False
        if mode == "dense":
            return True
        given = self.conv_threshold if kind == "conv2d" else self.linear_threshold
        if given is None:
            if events == 0:  # 0 > threshold * sites: the default thresholds are positive
                return False
            band = (self.band(gather_arith, kind, batched) if gather_arith is not None
                    else None)
            given = band[1] if band is not None else CROSSOVER[min(engine_threads(), 2)][kind]
        return events > given * sites


# The empty event list's arrays, shared (size 0: nothing can be written into them).
EMPTY = np.empty(0, np.int32)
_ones = np.ones(1024, np.int32)


def ones(n: int) -> np.ndarray:
    """Multiplicities of ``n`` spikes: a view of one shared buffer of ones, so a step allocates
    nothing for them. Event lists are never written in place (every kernel reads them), which
    is what makes sharing safe."""
    global _ones
    if n > _ones.shape[0]:
        _ones = np.ones(max(n, 2 * _ones.shape[0]), np.int32)
    return _ones[:n]


def add_events(a_idx, a_cnt, b_idx, b_cnt):
    """x + y of two sorted event lists (a residual add); an empty side costs nothing."""
    if b_idx.shape[0] == 0:
        return a_idx, a_cnt
    if a_idx.shape[0] == 0:
        return b_idx, b_cnt
    return merge_add(a_idx, a_cnt, b_idx, b_cnt)


def period(values: np.ndarray, size: int, target: int = 1024) -> np.ndarray:
    """``values`` [C] (C divides ``size``) tiled k times, k the largest divisor of size / C with
    k * C <= max(target, C): one period of a channel-innermost current that is the same at every
    site, long enough that the LIF's inner loop over it runs at dense speed (see
    :func:`~eventformer.kernels.lif_step_flags`)."""
    c = values.shape[0]
    reps = size // c
    k = max(1, min(reps, target // max(c, 1)))
    while reps % k:
        k -= 1
    return np.ascontiguousarray(np.tile(values, k))


class SpikingLayer:
    """Base of every layer that ends in spiking neurons (the unit of the per-layer report)."""

    kind = "layer"

    def __init__(self, name: str, n_neurons: int, input_kind: str):
        self.name = name
        self.n_neurons = n_neurons
        self.input_kind = input_kind  # "spikes", "integers" (residual sums) or "counts" (raw events)
        self.counters = np.zeros(C.N_COUNTERS, np.int64)
        self.spikes_total = 0  # spikes since clear_stats
        self.dense_macs_per_step = 0  # what a dense implementation multiplies per step
        self.probe = None  # optional callable(layer, current) seeing each step's input current

    def reset(self) -> None:
        """Forget the sample: neuron state to rest. Counters and tallies are kept until
        :meth:`clear_stats` so a stream can report over many windows."""
        raise NotImplementedError

    def clear_stats(self) -> None:
        self.counters[:] = 0
        self.spikes_total = 0

    def stats(self) -> dict:
        c = self.counters
        out = {"name": self.name, "kind": self.kind, "input": self.input_kind,
               "neurons": self.n_neurons, "spikes": int(self.spikes_total)}
        out.update({name: int(c[i]) for i, name in enumerate(C.NAMES)})
        sites = int(c[C.INPUT_SITES])
        out["input_density"] = (int(c[C.INPUT_EVENTS]) / sites) if sites else 0.0
        out["dense_macs_per_step"] = int(self.dense_macs_per_step)
        return out

    def fire(self, current: np.ndarray) -> np.ndarray:
        """Run this layer's neurons on the step's current and tally the spikes. ``current`` is
        dense, or one period of a current the same at every site (a step without input)."""
        if self.probe is not None:
            self.probe(self, current)
        spikes = self.neurons.fire(current, self.counters)
        self.spikes_total += spikes.shape[0]
        return spikes
