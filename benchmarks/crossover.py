"""Where the dense (GEMM) path and the conv gather beat the event scatter, per layer shape.

    python benchmarks/crossover.py [--threads N]

For each Spikformer-DVS layer shape, times one step of each path of the real layer objects on
random i.i.d. inputs at several densities (1 engine thread by default; BLAS pinned to one thread
as the engine does) and prints per-layer ms for scatter / gather / GEMM ("-": the layer has no
gather: linear layers, SPS0) and the ratio scatter/dense (below 1: scatter wins). The thresholds
in ``eventformer.layers.PathPolicy`` (``CROSSOVER``, ``GATHER_BAND``) come from this table.
Real post-pool maps are clustered, not i.i.d.: re-measure on real inputs before trusting a
narrow band.
"""

from __future__ import annotations

import argparse

import numpy as np

from eventformer.bench.calibrate import random_model
from eventformer.bench.run import time_best
from eventformer.layers import PathPolicy
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.runtime import limit_blas_threads, set_engine_threads

DENSITIES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def best_time(fn, repeat=7):
    fn()  # warm-up: compile, allocate the dense path's buffers
    return time_best(fn, repeat)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    limit_blas_threads()
    set_engine_threads(args.threads)
    engine = Spikformer(random_model(SpikformerConfig(), seed=0))
    rng = np.random.default_rng(0)
    layers = engine.sps[1:] + [engine.rpe, engine.blocks[0].attn.q, engine.blocks[0].fc1,
                               engine.blocks[0].fc2]
    print(f"ms per step, {args.threads} thread(s): scatter / gather / GEMM  [scatter/GEMM]")
    print(f"{'layer':28s} " + " ".join(f"{d:>22.2f}" for d in DENSITIES))
    for layer in layers:
        cells = []
        for d in DENSITIES:
            n = int(d * layer.in_sites)
            idx = np.sort(rng.choice(layer.in_sites, n, replace=False)).astype(np.int32)
            cnt = np.ones(n, np.int32)
            times = {}
            modes = ("sparse", "gather", "dense") if getattr(layer, "can_gather", False) else (
                "sparse", "dense")
            for mode in modes:
                layer.policy = PathPolicy(mode=mode)
                times[mode] = best_time(lambda: layer.synapse(idx, cnt), args.repeat) * 1e3
            g = f"{times['gather']:6.3f}" if "gather" in times else f"{'-':>6s}"
            cells.append(f"{times['sparse']:6.3f}/{g}/{times['dense']:6.3f}"
                         f"[{times['sparse'] / times['dense']:4.2f}]")
        print(f"{layer.name:28s} " + " ".join(f"{c:>22s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
