"""NIR-imported SNNs on the engine beside the frameworks that built them, same model, same run.

    python benchmarks/nir_frameworks.py [--frameworks snntorch,sinabs,norse,rockpool]
                                        [--repeat 5] [--threads 2] [--steps 8] [--json]

For each framework, the small SNN of ``tests/nir_frameworks.py`` (seed 0: the framework's own
classes, float32 here as a user would run it) is exported with the framework's exporter and
imported with ``eventformer export``'s library call. Each real DVS Gesture segment (framed to
8 steps of 2x32x32 counts) is then classified by the framework (its forward over the steps, batch
1, torch on ``--threads`` threads) and by the engine (``SpikingNet.run`` on the same steps,
float32 and int8, ``--threads`` engine threads), interleaved (framework, engine float32, engine
int8, next file) after one warm-up pass each, best of ``--repeat`` per file. Printed: ms per
sample per side (median over the files), the speed-up engine / framework (geometric mean of the
per-file ratios), whether the predictions agree, and the operations the engine counted.

Needs the frameworks (the test extra installs them) and ../shared/data/events.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FLAT_INPUT = {"rockpool": (2, 32, 32)}  # Rockpool exports MLPs: the frame flattened


def best_of(fn, repeat):
    best = math.inf
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frameworks", default="snntorch,sinabs,norse,rockpool")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import tempfile

    import nir_frameworks as fw
    import torch

    from eventformer.events import sparse_steps
    from eventformer.modelfile.nir_import import import_nir
    from eventformer.models import SpikingNet
    from eventformer.report import summarize
    from eventformer.runtime import set_engine_threads

    torch.set_num_threads(args.threads)
    set_engine_threads(args.threads)
    if not fw.SEGMENTS:
        print("no real DVS Gesture segments found (../shared/data/events/dvs-gesture)")
        return 2
    frames = [fw.gesture_frames(p, steps=args.steps) for p in fw.SEGMENTS]
    results = []
    tmp = Path(tempfile.mkdtemp())
    for name in args.frameworks.split(","):
        build, export, run, _ = fw.functions(name)
        model = build(0, dtype=torch.float32)
        export(model, tmp / f"{name}.nir")
        model_file, _ = import_nir(tmp / f"{name}.nir", framework=name, steps=args.steps,
                                   input_shape=FLAT_INPUT.get(name))
        engines = {d: SpikingNet(model_file, dtype=d) for d in ("float32", "int8")}
        for e in engines.values():
            e.warm_up()
        ratios = {d: [] for d in engines}
        times = {"framework": [], **{d: [] for d in engines}}
        agree = {d: 0 for d in engines}
        ops = None
        for dense in frames:
            steps = sparse_steps(dense)
            run(model, dense)  # warm-up
            t_fw, want = best_of(lambda r=run, m=model, x=dense: r(m, x), args.repeat)
            times["framework"].append(t_fw)
            for d, e in engines.items():
                e.run(steps)
                t, got = best_of(lambda e=e, s=steps: e.run(s), args.repeat)
                times[d].append(t)
                ratios[d].append(t_fw / t)
                agree[d] += int(np.argmax(got) == np.argmax(want))
                if d == "float32":
                    e.clear_stats()
                    e.run(steps)
                    ops = summarize(e.layer_stats(), args.steps)
        row = {"framework": name, "files": len(frames),
               "framework_ms": 1e3 * statistics.median(times["framework"])}
        for d in engines:
            row[f"{d}_ms"] = 1e3 * statistics.median(times[d])
            row[f"{d}_speedup"] = math.exp(statistics.fmean(math.log(r) for r in ratios[d]))
            row[f"{d}_same_prediction"] = f"{agree[d]}/{len(frames)}"
        row["ac"], row["mac"] = ops["ac"], ops["mac"]
        results.append(row)
        if not args.json:
            print(f"{name:9s} framework {row['framework_ms']:7.2f} ms | engine float32 "
                  f"{row['float32_ms']:6.2f} ms ({row['float32_speedup']:.2f}x, same prediction "
                  f"{row['float32_same_prediction']}) | int8 {row['int8_ms']:6.2f} ms "
                  f"({row['int8_speedup']:.2f}x, {row['int8_same_prediction']}) | AC {row['ac']:,} "
                  f"MAC {row['mac']:,} per sample", flush=True)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
