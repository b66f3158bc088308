"""Where a sample's time goes, without a profiler's per-call cost: the embedding, each block and
the rest (head), timed around their stages' calls only.

    python benchmarks/stages.py [--rate 0.05] [--dtype int8] [--threads 1,2] [--repeat 5]

The full-size Spikformer-DVS calibrated to ``--rate`` (the model ``eventformer bench`` times,
cached under ``~/.cache/eventformer/bench``) runs the real DVS Gesture segments offline
(``Spikformer.run``); per engine thread count, the pass over all segments with the smallest total
of ``--repeat`` passes is printed, in ms per sample. On several threads it runs twice: layer-major
(the offline pipeline off: each layer over all steps, split over the threads inside) and
pipelined (the default: layers on different chunks of steps at once), whose parts overlap, so
there each part's figure is the thread time spent in it. ``bench --profile`` says which kernel
inside a part costs what; this script is the quick before/after check of a change (run it on
both sides, in one session, on the same machine).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from eventformer.bench.networks import BenchNetwork
from eventformer.bench.run import BenchOptions, calibrated_model, default_gesture_dir, load_samples
from eventformer.modelfile import load
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.models.spikformer import Block, Embedding
from eventformer.runtime import set_engine_threads

LOCK = threading.Lock()


def timed(times: dict, cls, method: str, label):
    """Wrap ``cls.method`` so that each call's time adds to ``times[label(self)]``."""
    plain = getattr(cls, method)

    def wrapped(self, *args):
        start = time.perf_counter()
        out = plain(self, *args)
        key = label(self)
        elapsed = time.perf_counter() - start
        with LOCK:
            times[key] = times.get(key, 0.0) + elapsed
        return out

    setattr(cls, method, wrapped)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.05, help="calibrated firing rate")
    parser.add_argument("--dtype", default="int8",
                        choices=["float32", "float64", "int16", "int8"])
    parser.add_argument("--threads", default="1,2", help="engine threads, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="passes per thread count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0.0 < args.rate < 1.0:
        parser.error("--rate must be a firing rate between 0 and 1 (exclusive)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error("--threads must be comma-separated whole numbers")
    folder = default_gesture_dir()
    if folder is None:
        sys.exit("the real DVS Gesture segments (../shared/data/events/dvs-gesture) are not here")
    files = sorted(str(f) for f in folder.glob("*.bs2"))
    config = SpikformerConfig()
    samples = load_samples(files, config.steps, config.image_size)
    path = calibrated_model(BenchNetwork("spikformer", config), samples, args.rate, args.seed,
                            BenchOptions(files=files).cache_dir,
                            lambda msg: print(msg, file=sys.stderr))
    engine = Spikformer(load(path), dtype=args.dtype)
    times: dict = {}
    timed(times, Embedding, "run_stage", lambda e: "embedding")
    timed(times, Block, "attention_steps", lambda b: b.name)
    timed(times, Block, "mlp_steps", lambda b: b.name)
    pipeline_edges = Spikformer._pipeline_edges
    print(f"Spikformer-DVS {args.dtype} at {args.rate:.0%} firing, {len(samples)} segments, "
          f"ms per sample (best pass of {args.repeat})")
    for n in threads:
        set_engine_threads(n)
        for pipelined in ([False, True] if n > 1 else [False]):
            Spikformer._pipeline_edges = (pipeline_edges if pipelined
                                          else lambda self, steps: None)
            for s in samples:  # warm-up: kernels loaded, buffers allocated
                engine.run(s.steps)
            best = None
            for _ in range(args.repeat):
                times.clear()
                start = time.perf_counter()
                for s in samples:
                    engine.run(s.steps)
                row = dict(times, total=time.perf_counter() - start)
                if best is None or row["total"] < best["total"]:
                    best = row
            if not pipelined:
                best["rest"] = best["total"] - sum(v for k, v in best.items() if k != "total")
            cells = "  ".join(f"{k} {v / len(samples) * 1e3:.2f}" for k, v in best.items())
            how = (" pipelined (parts: thread time)" if pipelined
                   else ", layer-major" if n > 1 else "")
            print(f"{n} thread{'s' if n > 1 else ''}{how}: {cells}")


if __name__ == "__main__":
    main()
