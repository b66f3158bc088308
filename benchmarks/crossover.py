"""Where the dense (GEMM) path starts to beat the event scatter, per layer shape.

    python benchmarks/crossover.py

For each Spikformer-DVS layer shape, times one step of both paths of the real layer objects on
random inputs at several densities and prints the ratio scatter/dense (below 1: scatter wins).
The thresholds in ``eventformer.layers.PathPolicy`` come from this table.
"""

from __future__ import annotations

import numpy as np

from eventformer.bench.calibrate import random_model
from eventformer.bench.run import time_best
from eventformer.layers import PathPolicy
from eventformer.models import Spikformer, SpikformerConfig

DENSITIES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def best_time(fn, repeat=7):
    fn()  # warm-up: compile, allocate the dense path's buffers
    return time_best(fn, repeat)


def main():
    engine = Spikformer(random_model(SpikformerConfig(), seed=0))
    rng = np.random.default_rng(0)
    layers = engine.sps[1:] + [engine.rpe, engine.blocks[0].attn.q, engine.blocks[0].fc1,
                               engine.blocks[0].fc2]
    print(f"{'layer':28s} " + " ".join(f"{d:>6.2f}" for d in DENSITIES) + "   (scatter / dense)")
    for layer in layers:
        ratios = []
        for d in DENSITIES:
            n = int(d * layer.in_sites)
            idx = np.sort(rng.choice(layer.in_sites, n, replace=False)).astype(np.int32)
            cnt = np.ones(n, np.int32)
            times = {}
            for mode in ("sparse", "dense"):
                layer.policy = PathPolicy(mode=mode)
                times[mode] = best_time(lambda: layer.synapse(idx, cnt))
            ratios.append(times["sparse"] / times["dense"])
        print(f"{layer.name:28s} " + " ".join(f"{r:6.2f}" for r in ratios))


if __name__ == "__main__":
    main()
