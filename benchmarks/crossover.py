"""Where the dense (GEMM) path and the conv gather beat the event scatter, per layer shape.

    python benchmarks/crossover.py [--threads N] [--repeat R]
    python benchmarks/crossover.py --real [--threads N] [--repeat R] [--rates 0.05,0.15]

Random mode (the default): for each Spikformer-DVS layer shape, times one step of each path of
the real layer objects on random i.i.d. inputs at several densities (1 engine thread by default;
BLAS pinned to one thread as the engine does) and prints per-layer ms for scatter / gather /
int8 gather / int16 gather / GEMM ("-": the layer has no gather: linear layers, SPS0) and the
ratio scatter/dense (below 1: scatter wins). The thresholds in ``eventformer.layers.PathPolicy``
(``CROSSOVER``, ``GATHER_BAND``) come from this table.

``--real``: real post-pool maps are clustered, not i.i.d. This mode runs the full-size model
(random weights, BatchNorm calibrated to each firing rate of ``--rates`` on the shared DVS
Gesture segments, as ``eventformer bench`` does; calibration is cached) over every segment,
records the actual input event lists of SPS1, SPS2, SPS3 and RPE, and times each path on those
recorded steps: the float32 layer's scatter, gather and GEMM (densify + im2col + GEMM + bias, one
step), and the integer kernels on the same weights quantised per output channel (SPEC §6): the
scatter with int8 weights, and the gather with int8 and with int16 weights, each the same
layer of the engine run with ``--dtype int8`` / ``int16``. "GEMM bat" is the
offline engine's batched GEMM, per step, for layers it batches (fewer GEMM rows than
``BATCH_ROWS_BELOW``: SPS3, RPE): all T steps of a sample densified and multiplied at once, its
time divided by T. Every path is timed on every recorded step, interleaved, best of ``--repeat``;
the tables give the median ms per step by input density bin and over all steps, and the mean
(what a sample costs per step). The integer GEMM (float BLAS on the integers, then a cast) costs
at least the float32 GEMM's time.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import numpy as np

from eventformer.bench.calibrate import random_model
from eventformer.bench.run import (
    calibrated_model,
    default_gesture_dir,
    load_samples,
    time_best,
)
from eventformer.layers import PathPolicy
from eventformer.layers.synapses import BATCH_ROWS_BELOW
from eventformer.modelfile import load
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.runtime import limit_blas_threads, set_engine_threads

DENSITIES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
REAL_RATES = (0.05, 0.15)
# input density bins (lo, hi] of the --real tables
BINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0)


def best_time(fn, repeat=7):
    fn()  # warm-up: compile, allocate the dense path's buffers
    return time_best(fn, repeat)


def by_policy(layer, mode):
    """One step of ``layer``'s synaptic current on the path ``mode`` forces."""
    policy = PathPolicy(mode=mode)

    def call(idx, cnt):
        layer.policy = policy
        layer.synapse(idx, cnt)
    return call


def integer_twins(model, names) -> dict:
    """{(name, bits): the same layer in the int8 / int16 engine} (weights quantised per output
    channel at load, SPEC §6)."""
    out = {}
    for bits in (8, 16):
        engine = Spikformer(model, dtype=f"int{bits}")
        for layer in engine.sps + [engine.rpe]:
            if layer.name in names:
                out[layer.name, bits] = layer
    return out


def random_mode(args) -> None:
    model = random_model(SpikformerConfig(), seed=0)
    engine = Spikformer(model)
    rng = np.random.default_rng(0)
    layers = engine.sps[1:] + [engine.rpe, engine.blocks[0].attn.q, engine.blocks[0].fc1,
                               engine.blocks[0].fc2]
    print(f"ms per step, {args.threads} thread(s), random i.i.d. inputs: "
          "scatter / gather / int8 gather / int16 gather / GEMM  [scatter/GEMM]")
    width = 38
    print(f"{'layer':28s} " + " ".join(f"{d:>{width}.2f}" for d in DENSITIES))
    ints = integer_twins(model, {layer.name for layer in layers})
    for layer in layers:
        gathers = getattr(layer, "can_gather", False)
        cells = []
        for d in DENSITIES:
            n = int(d * layer.in_sites)
            idx = np.sort(rng.choice(layer.in_sites, n, replace=False)).astype(np.int32)
            cnt = np.ones(n, np.int32)
            times = {}
            modes = ("sparse", "gather", "dense") if gathers else ("sparse", "dense")
            for mode in modes:
                layer.policy = PathPolicy(mode=mode)
                times[mode] = best_time(lambda s=layer.synapse, i=idx, c=cnt: s(i, c),
                                        args.repeat) * 1e3
            if gathers:
                for bits in (8, 16):
                    times[bits] = best_time(
                        lambda f=by_policy(ints[layer.name, bits], "gather"), i=idx, c=cnt:
                        f(i, c), args.repeat) * 1e3
            g = "/".join(f"{times[m]:6.3f}" if m in times else f"{'-':>6s}"
                         for m in ("gather", 8, 16))
            cells.append(f"{times['sparse']:6.3f}/{g}/{times['dense']:6.3f}"
                         f"[{times['sparse'] / times['dense']:4.2f}]")
        print(f"{layer.name:28s} " + " ".join(f"{c:>{width}s}" for c in cells), flush=True)


# ---------------------------------------------------------------------------------------------
# --real: recorded inputs of a calibrated full-size model on real gesture segments
# ---------------------------------------------------------------------------------------------

REAL_PATHS = ("scatter", "scatter_i8", "gather", "gather_i8", "gather_i16", "gemm", "gemm_batch")
REAL_HEADS = {"scatter": "scatter", "scatter_i8": "scat i8", "gather": "gather",
              "gather_i8": "gath i8", "gather_i16": "gath i16", "gemm": "GEMM",
              "gemm_batch": "GEMM bat"}


def record_inputs(engine, layers, samples) -> dict[str, list[list]]:
    """{layer name: per sample, its T input steps (idx, cnt)} as the engine runs ``samples``."""
    rec: dict[str, list[list]] = {layer.name: [] for layer in layers}
    for layer in layers:
        def wrapped(xs, _orig=layer.run_steps, _name=layer.name):
            rec[_name].append([(np.array(i, np.int32), np.array(c, np.int32)) for i, c in xs])
            return _orig(xs)

        layer.run_steps = wrapped
    try:
        for s in samples:
            engine.run(s.steps)
    finally:
        for layer in layers:
            del layer.run_steps  # back to the class's method
    return rec


def _layer_paths(layer, ints):
    """The paths timed on a float32 layer and its int8 / int16 twins (whole synaptic steps:
    bias and current included)."""
    return {"scatter": by_policy(layer, "sparse"),
            "scatter_i8": by_policy(ints[layer.name, 8], "sparse"),
            "gather": by_policy(layer, "gather"),
            "gather_i8": by_policy(ints[layer.name, 8], "gather"),
            "gather_i16": by_policy(ints[layer.name, 16], "gather"),
            "gemm": by_policy(layer, "dense")}


def time_recorded(layer, ints, samples_steps: list[list], repeat: int) -> tuple[dict, list]:
    """Per path, the best-of-``repeat`` seconds of every recorded step (interleaved: each round
    runs every step on every path back to back), and the steps' input densities."""
    paths = _layer_paths(layer, ints)
    steps = [s for sample in samples_steps for s in sample]
    density = [idx.shape[0] / layer.in_sites for idx, _ in steps]
    for fn in paths.values():  # warm-up: compile, allocate
        for idx, cnt in steps[:2]:
            fn(idx, cnt)
    best = {p: [float("inf")] * len(steps) for p in paths}
    # offline, a layer with fewer GEMM rows than BATCH_ROWS_BELOW stacks its dense steps into one
    # GEMM (SynapticLIF.run_steps): that GEMM's time per step, given to each step of the sample
    batched = layer.rows < BATCH_ROWS_BELOW
    best["gemm_batch"] = [float("inf") if batched else float("nan")] * len(steps)
    clock = time.perf_counter
    for _ in range(repeat):
        for j, (idx, cnt) in enumerate(steps):
            for p, fn in paths.items():
                t0 = clock()
                fn(idx, cnt)
                best[p][j] = min(best[p][j], clock() - t0)
        j = 0
        for sample in samples_steps if batched else ():
            t0 = clock()
            layer._add_bias(layer._batched_synaptic(sample, [True] * len(sample), len(sample)))
            per_step = (clock() - t0) / len(sample)
            for jj in range(j, j + len(sample)):
                best["gemm_batch"][jj] = min(best["gemm_batch"][jj], per_step)
            j += len(sample)
    return best, density


def _overlap(samples_steps: list[list]) -> float:
    """Fraction of a step's input events that were also events of the step before (same site):
    how much a step repeats the last one in real data."""
    same = total = 0
    for sample in samples_steps:
        for (a, _), (b, _) in itertools.pairwise(sample):
            same += np.intersect1d(a, b, assume_unique=True).shape[0]
            total += b.shape[0]
    return same / max(total, 1)


def _fmt(values) -> str:
    if not values or np.isnan(values[0]):
        return f"{'-':>8s}"
    return f"{statistics.median(values) * 1e3:8.3f}"


def print_real_table(rate, threads, results) -> None:
    print(f"\nreal inputs, {rate:.0%} firing, {threads} thread(s): median ms per step "
          "(best of repeats per step) by input density bin")
    head = " ".join(f"{REAL_HEADS[p]:>8s}" for p in REAL_PATHS)
    print(f"{'layer':24s} {'density':>11s} {'steps':>5s} {head}  fastest")
    for name, (best, density, overlap) in results.items():
        d = np.asarray(density)
        rows = [(f"({lo:.2f},{hi:.2f}]", (d > lo) & (d <= hi))
                for lo, hi in itertools.pairwise(BINS)]
        rows.insert(0, ("0 (empty)", d == 0))
        rows.append(("all", np.ones_like(d, bool)))
        for label, sel in rows:
            if not sel.any():
                continue
            cols = {p: [t for t, s in zip(best[p], sel) if s] for p in REAL_PATHS}
            fastest = min((p for p in REAL_PATHS if not np.isnan(cols[p][0])),
                          key=lambda p: statistics.median(cols[p]))
            print(f"{name:24s} {label:>11s} {int(sel.sum()):5d} "
                  + " ".join(_fmt(cols[p]) for p in REAL_PATHS) + f"  {REAL_HEADS[fastest]}")
        mean = " ".join(f"{np.mean(best[p]) * 1e3:8.3f}" if not np.isnan(best[p][0])
                        else f"{'-':>8s}" for p in REAL_PATHS)
        print(f"{name:24s} {'mean/step':>11s} {len(d):5d} {mean}")
        print(f"{'':24s} density mean {d.mean():.3f} (min {d.min():.3f}, max {d.max():.3f}); "
              f"{overlap:.0%} of a step's events repeat the step before", flush=True)


def real_mode(args) -> None:
    folder = default_gesture_dir()
    if folder is None:
        raise SystemExit("--real needs the shared DVS Gesture segments "
                         "(../shared/data/events/dvs-gesture)")
    files = sorted(str(f) for f in folder.glob("*.bs2"))
    config = SpikformerConfig(steps=args.steps, attention="ssa")
    samples = load_samples(files, config.steps, config.image_size)
    print(f"{len(files)} DVS Gesture segments, T {config.steps}, full-size Spikformer-DVS "
          f"(random weights, BatchNorm calibrated per rate; cached under {args.cache_dir})")
    for rate in args.rates:
        path = calibrated_model(config, samples, rate, 0, args.cache_dir, print)
        model = load(path)
        engine = Spikformer(model, dtype="float32")
        layers = engine.sps[1:] + [engine.rpe]
        ints = integer_twins(model, {layer.name for layer in layers})
        recorded = record_inputs(engine, layers, samples)
        results = {}
        for layer in layers:
            best, density = time_recorded(layer, ints, recorded[layer.name], args.repeat)
            results[layer.name] = (best, density, _overlap(recorded[layer.name]))
        print_real_table(rate, args.threads, results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=None,
                    help="best of this many runs (default 7; 5 with --real)")
    ap.add_argument("--real", action="store_true",
                    help="time the recorded inputs of a calibrated model on real gestures")
    ap.add_argument("--rates", type=lambda s: tuple(float(r) for r in s.split(",")),
                    default=REAL_RATES, help="--real: firing rates (default 0.05,0.15)")
    ap.add_argument("--steps", type=int, default=16, help="--real: time steps T (default 16)")
    ap.add_argument("--cache-dir", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "eventformer",
        "bench"), help="--real: where calibrated models are cached (as eventformer bench)")
    args = ap.parse_args()
    if args.repeat is None:
        args.repeat = 5 if args.real else 7
    limit_blas_threads()
    set_engine_threads(args.threads)
    if args.real:
        real_mode(args)
    else:
        random_mode(args)


if __name__ == "__main__":
    main()
