"""Does streaming inference keep up with the camera? The real DVS Gesture segments, replayed.

    python benchmarks/streaming.py [--rate 0.05] [--window-ms 10] [--threads 2] [--repeat 3]
                                   [--json]

Each real segment (``../shared/data/events/dvs-gesture/1..5.bs2``, 1.45 s each) goes through the
full-size Spikformer-DVS engine exactly as ``eventformer stream FILE --realtime --window-ms 90``
runs it (`FileSource` + `run_stream`): the model's state carries across windows, and each window
is processed only once the recording's clock, replayed at recording speed, has reached its end.
The weights are random, with BatchNorm calibrated so every LIF fires at ``--rate`` on these
segments (`eventformer.bench.run.calibrated_model`, cached under ``~/.cache/eventformer/bench``,
the same model ``eventformer bench`` times). The defaults are issue 20's streaming target: 5%
firing, 10 ms windows, 2 engine threads (``--threads 1`` for one); the question is whether the
p99 window latency stays below the window length. (``--window-ms 90``, about 1.45 s / 16, is the
offline model's time step.)

Per file, real-time replay:

- windows, p50 / p99 window latency (ms): one engine step plus the logits, per window;
- real-time factor: recording duration over the summed compute time (above 1: faster than the
  camera);
- max lag (ms): how long after the recording's clock reached a window's end its prediction was
  out; it stays near the latency when the stream keeps up and grows window after window when not;
- backlog max: the most events held in the framer, read but not yet in a closed window. A replay
  reads the whole segment from disk at once, so this starts near the file's event count and says
  nothing about keeping up (a live camera's backlog would); kept up and max lag do;
- kept up: every window's latency below the window length;
- p99 < window: the 99th percentile of the window latency below the window length (the target),
  over each file and over all windows of all files together.

Then the same files as fast as possible (no ``--realtime``, best of ``--repeat``): events/s end
to end (decoding, framing, engine; the engine's warm-up excluded) and of engine compute alone,
which is the most event rate a stream of this activity could sustain, and the p50 window latency
of that pass (without the replay's sleeps between windows, which let caches and clocks cool).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from eventformer.bench.networks import BenchNetwork
from eventformer.bench.run import (
    BenchOptions,
    calibrated_model,
    default_gesture_dir,
    load_samples,
)
from eventformer.modelfile import load
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.runtime import engine_threads, set_engine_threads
from eventformer.stream import FileSource, WindowSpec, run_stream


def replay(engine: Spikformer, path: str, window_us: int, realtime: bool) -> dict:
    """One pass of ``stream --realtime`` (or without) over ``path``: summary and window records."""
    records = []

    def on_window(record):
        record["done_s"] = time.perf_counter()
        records.append(record)

    summary = run_stream(engine, FileSource(path, follow=False), WindowSpec(window_us=window_us),
                         realtime=realtime, on_window=on_window)
    end = time.perf_counter()
    summary["records"] = records
    if records:
        # run_stream's clock starts wall_s before it returned; window k is due when the replayed
        # recording reaches its end, (t_end - first window's start) after that.
        wall_start = end - summary["wall_s"]
        t0 = records[0]["t_start_us"]
        summary["lag_ms"] = [(r["done_s"] - (wall_start + (r["t_end_us"] - t0) / 1e6)) * 1e3
                             for r in records]
    return summary


def measure_file(engine: Spikformer, sample, window_us: int, repeat: int) -> dict:
    path = sample.path
    duration_s = sample.duration_us / 1e6
    rt = replay(engine, path, window_us, realtime=True)
    lat = np.array([r["latency_ms"] for r in rt["records"]])
    window_ms = window_us / 1e3
    fast = [replay(engine, path, window_us, realtime=False) for _ in range(repeat)]
    best_wall = min(f["wall_s"] for f in fast)
    best_compute = min(f["compute_s"] for f in fast)
    return {
        "file": os.path.basename(path), "events": sample.events, "duration_s": duration_s,
        "windows": rt["windows"], "latency_ms_p50": rt["latency_ms_p50"],
        "latency_ms_p99": rt["latency_ms_p99"], "latency_ms_max": float(lat.max()),
        "compute_s": rt["compute_s"], "realtime_factor": duration_s / rt["compute_s"],
        "replay_wall_s": rt["wall_s"], "max_lag_ms": max(rt["lag_ms"]),
        "backlog_max": max(r["backlog_events"] for r in rt["records"]),
        "kept_up": bool((lat < window_ms).all()),
        "p99_below_window": bool(rt["latency_ms_p99"] < window_ms),
        "latencies_ms": lat.tolist(),
        "final_prediction": rt["final_prediction"],
        "fast_wall_s": best_wall, "fast_compute_s": best_compute,
        "fast_events_per_s": sample.events / best_wall,
        "fast_compute_events_per_s": sample.events / best_compute,
        "fast_realtime_factor": duration_s / best_wall,
        "window_latency_fast_ms_p50": float(np.median([r["latency_ms"]
                                                       for r in fast[0]["records"]])),
    }


def print_table(result: dict) -> None:
    rows = result["files"]
    print(f"streaming replay: full-size Spikformer-DVS ({result['dtype']}), random weights "
          f"calibrated to {result['rate']:.0%} firing, {result['window_ms']:g} ms windows, "
          f"{result['threads']} engine thread(s)")
    head = (f"{'file':7s} {'events':>8s} {'windows':>7s} {'p50 ms':>7s} {'p99 ms':>7s} "
            f"{'p99<win':>7s} {'RT factor':>9s} {'max lag ms':>10s} {'backlog max':>11s} "
            f"{'kept up':>7s}   "
            f"{'fast ev/s':>10s} {'compute ev/s':>12s} {'fast RT':>7s} {'p50 ms':>7s}")
    print(f"{'':7s} {'':8s} {'-- real-time replay (--realtime) ':-<72s}   "
          f"{'-- as fast as possible, best of ' + str(result['repeat']) + ' ':-<39s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['file']:7s} {r['events']:>8,d} {r['windows']:>7d} {r['latency_ms_p50']:7.1f} "
              f"{r['latency_ms_p99']:7.1f} {'yes' if r['p99_below_window'] else 'NO':>7s} "
              f"{r['realtime_factor']:9.1f} {r['max_lag_ms']:10.1f} "
              f"{r['backlog_max']:>11,d} {'yes' if r['kept_up'] else 'NO':>7s}   "
              f"{r['fast_events_per_s']:10.3g} {r['fast_compute_events_per_s']:12.3g} "
              f"{r['fast_realtime_factor']:7.1f} {r['window_latency_fast_ms_p50']:7.1f}")
    kept = sum(r["kept_up"] for r in rows)
    a = result["all_windows"]
    print(f"all {a['windows']} windows: p50 {a['latency_ms_p50']:.2f} ms, p99 "
          f"{a['latency_ms_p99']:.2f} ms against {result['window_ms']:g} ms windows: p99 "
          f"{'below' if a['p99_below_window'] else 'NOT below'} the window length "
          f"({a['latency_ms_p99'] / result['window_ms']:.2f} of it) on {result['threads']} "
          "engine thread(s)")
    print(f"kept up on {kept} of {len(rows)} files; RT factor = recording duration / compute "
          f"time; fast RT = recording duration / end-to-end time without --realtime.")
    print("max lag: the latest a window's prediction came out after the replayed clock reached "
          "the window's end; backlog max counts events read ahead from the file (a replay has the "
          "whole segment on disk), not a lag.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="recordings [default: the real DVS Gesture "
                                                 "segments in ../shared/data/events]")
    parser.add_argument("--rate", type=float, default=0.05,
                        help="LIF firing rate the random model is calibrated to [0.05]")
    parser.add_argument("--window-ms", type=float, default=10.0,
                        help="window length in ms [10; 90 is about 1.45 s / 16, the offline "
                             "model's step]")
    parser.add_argument("--repeat", type=int, default=3,
                        help="as-fast-as-possible passes per file (best kept) [3]")
    parser.add_argument("--threads", type=int, default=None,
                        help="engine threads [2, or every core if fewer]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights [0]")
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float64", "int16", "int8"],
                        help="the engine's arithmetic [float32]")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if not (args.window_ms > 0 and np.isfinite(args.window_ms)):
        parser.error("--window-ms must be a positive number of milliseconds")
    if not 0.0 < args.rate < 1.0:
        parser.error("--rate must be a firing rate between 0 and 1 (exclusive)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    files = args.files
    if not files:
        folder = default_gesture_dir()
        if folder is None:
            sys.exit("the real DVS Gesture segments (../shared/data/events/dvs-gesture) are not "
                     "here; pass files")
        files = [str(folder / f"{i}.bs2") for i in range(1, 6) if (folder / f"{i}.bs2").is_file()]
    set_engine_threads(args.threads if args.threads is not None
                       else min(2, os.cpu_count() or 1))
    config = SpikformerConfig()
    samples = load_samples(files, config.steps, config.image_size)
    log = lambda msg: print(msg, file=sys.stderr)
    model_path = calibrated_model(BenchNetwork("spikformer", config), samples, args.rate,
                                  args.seed,
                                  BenchOptions(files=files).cache_dir, log)
    engine = Spikformer(load(model_path), dtype=args.dtype)
    window_us = round(args.window_ms * 1000)
    engine.warm_up()  # every kernel loaded before the first window is timed
    rows = []
    for s in samples:
        log(f"replaying {os.path.basename(s.path)} ({s.duration_us / 1e6:.2f} s at recording "
            f"speed, then {args.repeat} pass(es) as fast as possible)...")
        rows.append(measure_file(engine, s, window_us, args.repeat))
    every = np.concatenate([r.pop("latencies_ms") for r in rows])
    p50, p99 = (float(np.percentile(every, q)) for q in (50, 99))
    result = {"rate": args.rate, "dtype": args.dtype, "window_ms": args.window_ms,
              "repeat": args.repeat,
              "threads": engine_threads(), "cpus": os.cpu_count(), "model": model_path,
              "files": rows,
              "all_windows": {"windows": int(every.size), "latency_ms_p50": p50,
                              "latency_ms_p99": p99, "p99_below_window": p99 < args.window_ms}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
