"""Samples/s of a dataset run on Dask against the serial run, in the same process and run.

    python benchmarks/cluster.py [--workers 1,2] [--repeat 3] [--limit N] [--json]
    python benchmarks/cluster.py --scheduler tcp://HOST:PORT      # also time an existing cluster

The set is `eventformer infer --dataset synthetic-gesture`'s (the embedded synthetic test set,
23 samples; `--dataset`, `--data-dir`, `--split` as for `infer`) through the shipped tiny model
(`--weights`, `--dtype`). Three kinds of pass over the same samples, each the best of
``--repeat`` passes, the passes of all settings interleaved:

- serial: `evaluate.evaluate` here, on every core (the engine's default threads), what
  `eventformer infer --dataset ...` does;
- local N workers (for each N in ``--workers``): `cluster.evaluate_on_cluster` on a local cluster
  of N worker processes (one task thread each, and as many engine threads as the serial pass, so
  that float32 results are the same), what `infer --workers N` does; the cluster's start and the workers' engine loads are timed apart (``start
  s``), not in samples/s;
- ``--scheduler``: the same on an existing cluster (its workers must see the model file and the
  data at the same paths).

Every pass must give the serial predictions and logits (checked). ``x serial`` is samples/s over
the serial pass's. On the tiny model a sample is a few ms of engine work, so the per-task
overhead of Dask (a few ms) and each worker reading its recordings weigh heavily here; the
full-size model or a real cluster is where more workers pay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="local worker counts to time (default 1,2)")
    ap.add_argument("--scheduler", default=None, help="also time this existing cluster")
    ap.add_argument("--repeat", type=int, default=3, help="passes per setting; best is shown")
    ap.add_argument("--limit", type=int, default=None, help="first N samples only")
    ap.add_argument("--dataset", default="synthetic-gesture")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--weights", default=None, help="model file (default: the shipped tiny one)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from eventformer.cluster import (EngineSpec, cluster_client, evaluate_on_cluster,
                                     warm_workers, worker_count)
    from eventformer.runtime import engine_threads
    from eventformer.datasets import open_dataset
    from eventformer.evaluate import evaluate
    from eventformer.weights import shipped_model_path

    weights = args.weights or str(shipped_model_path())
    data = open_dataset(args.dataset, args.data_dir, args.split, synthetic_fallback=True)
    n = min(len(data), args.limit) if args.limit else len(data)
    engine = EngineSpec(weights, args.dtype).build()

    # every setting is up before any is timed, and the passes are interleaved (serial, 1
    # worker, 2 workers, serial, ...), so a busy stretch of a shared machine slows all alike
    settings = [("serial", 0, None, None, None, 0.0)]
    with contextlib.ExitStack() as stack:
        counts = [int(v) for v in args.workers.split(",") if v.strip()]
        targets = [(f"local {w} worker{'s' if w > 1 else ''}", w, None) for w in counts]
        if args.scheduler:
            targets.append((f"scheduler {args.scheduler}", None, args.scheduler))
        for label, workers, scheduler in targets:
            spec = EngineSpec(weights, args.dtype, threads=engine_threads())
            start = time.perf_counter()
            client = stack.enter_context(cluster_client(workers, scheduler))
            warm_workers(client, spec)
            settings.append((label, worker_count(client), client, spec, None,
                             time.perf_counter() - start))
        times = {label: [] for label, *_ in settings}
        load = os.getloadavg()[0]
        for _ in range(args.repeat):
            for label, _count, client, spec, _, _start in settings:
                got = []
                on = (lambda rec, _r, got=got: got.append(rec["logits"]))
                t0 = time.perf_counter()
                if client is None:
                    summary = evaluate(engine, data, limit=args.limit, on_sample=on)
                else:
                    summary = evaluate_on_cluster(client, spec, engine, data, limit=args.limit,
                                                  on_sample=on)
                times[label].append(time.perf_counter() - t0)
                assert summary["samples"] == n and not summary.get("failed"), summary
                if client is None:
                    reference = got
                assert got == reference, f"{label}: results differ from the serial run"
        load = max(load, os.getloadavg()[0])
    rows = [{"setting": label, "workers": count, "samples_per_s": n / min(times[label]),
             "start_s": started} for label, count, _c, _s, _, started in settings]
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["x_serial"] = row["samples_per_s"] / base
    if args.json:
        print(json.dumps({"samples": n, "dataset": args.dataset, "dtype": args.dtype,
                          "weights": weights, "repeat": args.repeat, "load_avg": load,
                          "cores": os.cpu_count(), "rows": rows}))
        return 0
    print(f"{n} samples of {args.dataset} ({args.split}), {args.dtype}, best of {args.repeat}; "
          f"results identical to serial in every setting; {os.cpu_count()} cores, load average "
          f"up to {load:.1f} during the run")
    print(f"{'setting':<28}{'workers':>8}{'samples/s':>12}{'x serial':>10}{'start s':>9}")
    for row in rows:
        print(f"{row['setting']:<28}{row['workers']:>8}{row['samples_per_s']:>12.1f}"
              f"{row['x_serial']:>10.2f}{row['start_s']:>9.1f}")
    return 0


if __name__ == "__main__":  # the guard matters: Dask's worker processes re-import this file
    sys.exit(main())
