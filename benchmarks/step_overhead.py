"""What a time step costs when (almost) nothing happens: the engine's per-step overhead.

    python benchmarks/step_overhead.py [--models tiny,full] [--dtypes float32,float64]
                                       [--events 5] [--steps 300] [--run-steps 1000]
                                       [--full-steps 100] [--full-run-steps 200] [--settle 300]
                                       [--repeat 3] [--no-profile]

An empty step (no input events) is not a no-op: every membrane decays and the folded BatchNorm
bias is a constant current, so neurons can fire without input. Its cost is the floor of every
step, and long recordings framed into many steps (``infer --steps 100000``) or short streaming
windows are mostly such steps.

For the shipped tiny model (``weights/spikformer-tiny-synth.h5``) and the full-size
Spikformer-DVS configuration (random weights, ``eventformer.bench.calibrate.random_model``), in
float32 and float64, this prints microseconds per step of

- ``step``: the streaming path, :meth:`Spikformer.step` one step at a time (time-major), over
  the first ``--steps`` steps after a reset;
- ``settled``: the same after ``--settle`` steps of the same kind: a layer whose membranes
  have reached the fixed point of its constant input current skips its LIF (exactly) from then
  on, which takes some 25 (float32) to 55 (float64) quiet steps;
- ``run``: the offline path, :meth:`Spikformer.run` over ``--run-steps`` steps (layer-major),
  from a reset;

on empty steps and on near-empty ones (``--events`` random input events per step, each step
different). Best of ``--repeat`` timings, kernels compiled and warmed first. Then, unless
``--no-profile``, a breakdown of the empty streaming step: each layer's own ``step`` (``attend``
for the attention core, ``head``) timed with ``perf_counter`` (the rest, "glue", is the model's
residual merges and Python between layers), and cProfile's top functions by own time (Numba
kernels appear under their Python names). Instrumentation adds a little to the breakdown's
total. Prints numbers only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import numpy as np

from eventformer.bench.calibrate import random_model
from eventformer.modelfile import load
from eventformer.models import Spikformer, SpikformerConfig

TINY = Path(__file__).resolve().parents[1] / "weights" / "spikformer-tiny-synth.h5"


def model_file(name: str):
    if name == "tiny":
        return load(str(TINY))
    if name == "full":
        return random_model(SpikformerConfig(), seed=0)
    raise SystemExit(f"unknown model {name!r} (tiny or full)")


def frames(engine: Spikformer, steps: int, events: int, seed: int = 0) -> list:
    """``steps`` input steps of ``events`` distinct random sites each (count 1), sorted."""
    rng = np.random.default_rng(seed)
    empty = np.empty(0, np.int32)
    if events == 0:
        return [(empty, empty)] * steps
    out = []
    for _ in range(steps):
        idx = np.sort(rng.choice(engine.input_sites, events, replace=False)).astype(np.int32)
        out.append((idx, np.ones(events, np.int32)))
    return out


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_step(engine: Spikformer, xs: list, repeat: int, settle: int = 0) -> float:
    """Microseconds per :meth:`Spikformer.step` over ``xs``, from a reset followed by ``settle``
    untimed steps of the same kind (the first of ``xs``, repeated)."""
    def go():
        for idx, cnt in xs:
            engine.step(idx, cnt)

    best = float("inf")
    for _ in range(repeat):
        engine.reset()
        for _ in range(settle):
            engine.step(*xs[0])
        best = min(best, best_of(go, 1))
    return best / len(xs) * 1e6


def time_run(engine: Spikformer, xs: list, repeat: int) -> float:
    return best_of(lambda: engine.run(xs), repeat) / len(xs) * 1e6


def neurons(engine: Spikformer) -> int:
    return sum(layer.n_neurons for layer in engine.layers)


class LayerTimer:
    """Wraps each layer's per-step method on the instance with a perf_counter accumulator."""

    def __init__(self, engine: Spikformer):
        self.engine = engine
        self.seconds: dict[str, float] = {}
        self.wrapped = []
        for layer in engine.layers:
            method = "attend" if hasattr(layer, "attend") else "step"
            self._wrap(layer, method, layer.name)
        self._wrap(engine.head, "step", "head")

    def _wrap(self, obj, method: str, name: str) -> None:
        inner = getattr(obj, method)
        self.seconds[name] = 0.0
        seconds = self.seconds

        def timed(*args, **kw):
            start = time.perf_counter()
            out = inner(*args, **kw)
            seconds[name] += time.perf_counter() - start
            return out

        setattr(obj, method, timed)
        self.wrapped.append((obj, method))

    def remove(self) -> None:
        for obj, method in self.wrapped:
            delattr(obj, method)


def breakdown(engine: Spikformer, xs: list, top: int, settle: int) -> None:
    """Per layer and per Python function: the empty steps from a reset (perf_counter), then,
    settled, cProfile."""
    engine.reset()
    timer = LayerTimer(engine)
    start = time.perf_counter()
    for idx, cnt in xs:
        engine.step(idx, cnt)
    total = time.perf_counter() - start
    timer.remove()
    n = len(xs)
    sizes = {layer.name: layer.n_neurons for layer in engine.layers}
    print(f"    per layer, empty step() from a reset (instrumented total "
          f"{total / n * 1e6:.1f} us/step):")
    for name, s in timer.seconds.items():
        print(f"      {name:28s} {s / n * 1e6:9.2f} us  {sizes.get(name, 0):>9,d} neurons")
    glue = total - sum(timer.seconds.values())
    print(f"      {'glue (merges, Python)':28s} {glue / n * 1e6:9.2f} us")
    engine.reset()
    for _ in range(settle):
        engine.step(*xs[0])
    prof = cProfile.Profile()
    prof.enable()
    for idx, cnt in xs:
        engine.step(idx, cnt)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime")
    print(f"    cProfile, settled empty step(), top {top} by own time (us per step):")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (file, line, func), (cc, nc, tt, ct, _) in rows:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        print(f"      {tt / n * 1e6:9.2f} own {ct / n * 1e6:9.2f} cum  {nc / n:5.1f} calls  "
              f"{func} ({where})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,full")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--events", type=int, default=5, help="events per near-empty step")
    ap.add_argument("--steps", type=int, default=300, help="step() calls timed, tiny model")
    ap.add_argument("--run-steps", type=int, default=1000, help="steps per run(), tiny model")
    ap.add_argument("--full-steps", type=int, default=100, help="step() calls timed, full size")
    ap.add_argument("--settle", type=int, default=300, help="untimed steps before 'settled'")
    ap.add_argument("--full-run-steps", type=int, default=200, help="steps per run(), full size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args(argv)
    results = []
    for name in args.models.split(","):
        mf = model_file(name)
        n_step = args.steps if name == "tiny" else args.full_steps
        n_run = args.run_steps if name == "tiny" else args.full_run_steps
        for dtype in args.dtypes.split(","):
            engine = Spikformer(mf, dtype=dtype)
            engine.warm_up()
            print(f"{name} ({neurons(engine):,} neurons), {dtype}:")
            row = {"model": name, "dtype": dtype}
            for events in (0, args.events):
                label = "empty" if events == 0 else f"{events} events"
                xs = frames(engine, n_step, events)
                step_us = time_step(engine, xs, args.repeat)
                settled_us = time_step(engine, xs, args.repeat, args.settle)
                xs = frames(engine, n_run, events)
                engine.clear_stats()
                run_us = time_run(engine, xs, args.repeat)
                spikes = sum(s["spikes"] for s in engine.layer_stats()) / (n_run * args.repeat)
                print(f"  {label:10s} step() {step_us:9.1f}   settled {settled_us:9.1f}   "
                      f"run({n_run}) {run_us:9.1f} us/step   ({spikes:,.1f} spikes/step)")
                row[f"step_{label}"] = step_us
                row[f"settled_{label}"] = settled_us
                row[f"run_{label}"] = run_us
                engine.clear_stats()
            results.append(row)
            if not args.no_profile:
                breakdown(engine, frames(engine, n_step, 0), args.top, args.settle)
    print("\nsummary (us per step):")
    ev = f"{args.events} ev"
    heads = ["step empty", "settled", "run empty", f"step {ev}", "settled", f"run {ev}"]
    print(f"  {'model':6s} {'dtype':8s} " + " ".join(f"{h:>11s}" for h in heads))
    for r in results:
        vals = list(r.values())[2:]
        print(f"  {r['model']:6s} {r['dtype']:8s} " + " ".join(f"{v:11.1f}" for v in vals))


if __name__ == "__main__":
    main()
