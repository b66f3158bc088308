"""Does the live path keep up with a camera? Two numbers for issue 22.

    python benchmarks/live_rate.py [--loops 100] [--window-ms 10] [--threads 2] [--json]
                                   [--skip-model] [--dv-compressions none,lz4,...]

1. **Reader + framer**: the sustained event rate one live source and the causal framer keep up
   with, target at least 10 M events/s. The fake camera (`eventformer.live.fake_camera`, its own
   process, 127.0.0.1) sends the real DVS Gesture segment ``1.bs2`` ``--loops`` times over (its
   clock running on) as fast as it can; here the source's reader thread receives and decodes,
   and the main thread pushes every batch through a `CausalFramer` of ``--window-ms`` windows and
   takes every complete window, as `run_stream` does, without an engine. Rate = events that came
   out of windows / the time from the first event read to the last. Per transport and format:
   TCP EVT 2.0 and EVT 3.0 (lossless: the sender waits for the reader, so the rate is the
   reader's), UDP SPIF in aestream's 512-byte datagrams and faery's 13-byte layout in faery's
   100-event datagrams (a receiver that falls behind loses datagrams: the loss is printed; where
   some were lost the rate is what the reader managed while being flooded); and DV's network
   stream (``dv://``, what dv-processing's NetworkWriter sends: 2048-event EVTS packets) once
   per compression (``--dv-compressions``, all five by default): lossless like TCP, the packets
   compressed by the fake camera before it serves (not timed), decompressed and decoded by
   the reader (timed). Both processes
   share this machine's cores, so the sender's work is in the measurement's way, as with a
   camera's driver on the same machine.
2. **Model**: the event rate at which the full-size Spikformer-DVS (random weights calibrated
   to 5% firing, the model ``benchmarks/streaming.py`` and ``eventformer bench`` time) keeps real
   time at 10 ms windows on 2 engine threads. The five real segments are replayed through
   `run_stream` with their clock compressed by factors 0.25, 0.5, 1, 2, 4, ... 256 (each file
   played ceil(k / 8) times over, so every factor has enough windows; a factor k puts
   k times the events into each 10 ms window: a camera k times busier; it stops once the
   median window takes longer than the window); a factor keeps real time when the p99 window latency is below
   the window length. Reported: the largest such rate (events/s) and the
   ratio of each rate's p99 to the window.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from eventformer.live.sources import ByteStreamSource, UdpSource
from eventformer.stream import CausalFramer, Gap, WindowSpec

TARGET = 10e6
HERE = os.path.dirname(os.path.abspath(__file__))
GESTURE = os.path.join(HERE, "..", "..", "shared", "data", "events", "dvs-gesture")
CASES = [("tcp", "evt2"), ("tcp", "evt3"), ("udp", "spif"), ("udp", "faery-13")]
DV_COMPRESSIONS = ("none", "lz4", "lz4-high", "zstd", "zstd-high")


def fake_camera(args):
    proc = subprocess.Popen([sys.executable, "-m", "eventformer.live.fake_camera", *map(str, args)],
                            stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    if not first:
        proc.wait()
        sys.exit(f"the fake camera did not start: {proc.stderr.read()}")
    return proc, first.strip()


def frame_all(source, window_us: int, sender, quiet_s: float = 1.0) -> dict:
    """Read ``source`` through a framer until it ends (or, UDP, the sender is done and the
    socket stays quiet for ``quiet_s``): events out of windows and the time they took."""
    framer = CausalFramer(WindowSpec(window_us=window_us))
    framed = windows = 0
    first = last = None
    while True:
        source.wait(0.05)
        events = source.read()
        now = time.perf_counter()
        if events.shape[0]:
            first = first if first is not None else now
            last = now
            framer.push(events)
            for window in framer.complete_windows():
                if isinstance(window, Gap):  # a second of events lost in a flood of datagrams
                    windows += window.windows
                    continue
                framed += window[2].shape[0]
                windows += 1
            continue
        if source.exhausted:
            break
        if sender.poll() is not None and last is not None and now - last > quiet_s:
            break
    for _, _, chunk in framer.flush():
        framed += chunk.shape[0]
        windows += 1
    seconds = (last - first) if first is not None and last > first else float("nan")
    return {"events": framed, "windows": windows, "seconds": seconds,
            "events_per_s": framed / seconds}


def reader_rates(path: str, loops: int, window_us: int, log,
                 dv_compressions=DV_COMPRESSIONS) -> list[dict]:
    sent_events = None
    rows = []
    for transport, fmt in CASES + [("dv", c) for c in dv_compressions]:
        log(f"{transport} {fmt}: sending {os.path.basename(path)} x{loops} as fast as possible...")
        if transport == "dv":  # fmt: the compression; the stream's header says it to the reader
            sender, line = fake_camera([path, "--dv-serve", 0, "--compression", fmt, "--speed",
                                        0, "--loops", loops, "--sensor-size", "128x128"])
            source = ByteStreamSource(line.split("serving ", 1)[1], "dv").start()
        elif transport == "tcp":
            sender, line = fake_camera([path, "--tcp-serve", 0, "--format", fmt, "--speed", 0,
                                        "--loops", loops, "--sensor-size", "128x128"])
            source = ByteStreamSource(f"tcp://127.0.0.1:{line.rsplit(':', 1)[1]}", fmt).start()
        else:
            source = UdpSource("udp://127.0.0.1:0", fmt, (128, 128)).start()
            sender, _ = fake_camera([path, "--udp", f"127.0.0.1:{source.port}", "--format", fmt,
                                     "--speed", 0, "--loops", loops])
        try:
            result = frame_all(source, window_us, sender)
        finally:
            source.close()
            sender.wait()
        counters = source.counters()
        if sent_events is None:
            from eventformer.events import read_events

            sent_events = len(read_events(path).events) * loops
        result.update(transport=transport, format=fmt, sent_events=sent_events,
                      lost_events=sent_events - counters["events_decoded"],
                      ratio_to_target=result["events_per_s"] / TARGET,
                      counters=counters)
        rows.append(result)
    return rows


def model_rates(window_us: int, threads: int, log,
                factors=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)) -> dict:
    from eventformer.bench.networks import BenchNetwork
    from eventformer.bench.run import (BenchOptions, calibrated_model, default_gesture_dir,
                                       load_samples)
    from eventformer.modelfile import load
    from eventformer.models import Spikformer, SpikformerConfig
    from eventformer.runtime import set_engine_threads
    from eventformer.stream import run_stream

    set_engine_threads(threads)
    # the files named as benchmarks/streaming.py names them: the calibrated model is cached
    # under its input files' paths, so both scripts time the same model
    folder = default_gesture_dir()
    files = [str(folder / f"{i}.bs2") for i in range(1, 6) if (folder / f"{i}.bs2").is_file()]
    config = SpikformerConfig()
    samples = load_samples(files, config.steps, config.image_size)
    model = calibrated_model(BenchNetwork("spikformer", config), samples, 0.05, 0,
                             BenchOptions(files=files).cache_dir, log)
    engine = Spikformer(load(model))
    engine.warm_up()
    from eventformer.events import read_events

    recordings = [read_events(f).events for f in files]
    rows = []
    for k in factors:
        latencies, events, duration = [], 0, 0.0
        tiles = max(1, int(np.ceil(k / 8)))  # at least ~20 windows per file however squeezed
        for ev in recordings:
            span = int(ev["t"][-1] - ev["t"][0]) + 1
            squeezed = np.concatenate([ev] * tiles)
            squeezed["t"] = ((np.concatenate([ev["t"] - ev["t"][0] + i * span
                                              for i in range(tiles)])) / k).astype(np.int64)
            engine.reset()
            windows = []
            run_stream(engine, _AllAtOnce(squeezed), WindowSpec(window_us=window_us),
                       on_window=windows.append, sensor_size=(128, 128))
            latencies += [w["latency_ms"] for w in windows]
            events += len(squeezed)
            duration += (int(squeezed["t"][-1]) + 1) / 1e6
        p99 = float(np.percentile(latencies, 99))
        row = {"factor": k, "events_per_s": events / duration, "windows": len(latencies),
               "latency_ms_p50": float(np.percentile(latencies, 50)), "latency_ms_p99": p99,
               "p99_over_window": p99 / (window_us / 1e3),
               "keeps_real_time": p99 < window_us / 1e3}
        log(f"  x{k}: {row['events_per_s'] / 1e6:.2f} M events/s, p99 {p99:.2f} ms")
        rows.append(row)
        if row["latency_ms_p50"] >= window_us / 1e3:
            break  # even the median window is too slow: higher rates are hopeless
    kept = [r for r in rows if r["keeps_real_time"]]
    return {"model": model, "threads": threads, "rows": rows,
            "real_time_events_per_s": max((r["events_per_s"] for r in kept), default=None)}


class _AllAtOnce:
    path = "memory"
    sensor_size = (128, 128)

    def __init__(self, events):
        self.events, self.exhausted = events, False

    def read(self):
        if self.exhausted:
            return self.events[:0]
        self.exhausted = True
        return self.events


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=100,
                        help="times the 63k-event segment is sent per case [100: 6.3 M events]")
    parser.add_argument("--window-ms", type=float, default=10.0, help="window length [10]")
    parser.add_argument("--threads", type=int, default=2, help="engine threads for part 2 [2]")
    parser.add_argument("--skip-model", action="store_true", help="only part 1")
    parser.add_argument("--dv-compressions", default=",".join(DV_COMPRESSIONS),
                        help="dv:// cases, comma-separated ('' for none) [all: "
                             f"{','.join(DV_COMPRESSIONS)}]")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.loops < 1 or args.threads < 1 or not args.window_ms > 0:
        parser.error("--loops, --threads and --window-ms must be positive")
    dv_compressions = [c for c in args.dv_compressions.split(",") if c]
    unknown = [c for c in dv_compressions if c not in DV_COMPRESSIONS]
    if unknown:
        parser.error(f"--dv-compressions: {unknown[0]!r} is not one of {', '.join(DV_COMPRESSIONS)}")
    path = os.path.join(GESTURE, "1.bs2")
    if not os.path.isfile(path):
        sys.exit(f"{path}: the real DVS Gesture segment is not here")
    log = lambda msg: print(msg, file=sys.stderr)
    window_us = round(args.window_ms * 1000)
    result = {"target_events_per_s": TARGET, "window_ms": args.window_ms, "cpus": os.cpu_count(),
              "load_average_before": os.getloadavg()[0],
              "reader": reader_rates(path, args.loops, window_us, log, dv_compressions)}
    if not args.skip_model:
        log(f"full-size model, {args.window_ms:g} ms windows, {args.threads} engine threads...")
        result["model"] = model_rates(window_us, args.threads, log)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"live reader + framer, {args.window_ms:g} ms windows, fake camera on 127.0.0.1 in "
          f"another process, {os.cpu_count()} cores shared by both (load average before: "
          f"{result['load_average_before']:.2f}, after: {os.getloadavg()[0]:.2f})")
    print(f"{'source':16s} {'events':>10s} {'lost':>9s} {'seconds':>8s} {'M events/s':>10s} "
          f"{'/ 10 M target':>13s}")
    for r in result["reader"]:
        print(f"{r['transport'] + ' ' + r['format']:16s} {r['events']:>10,d} "
              f"{r['lost_events']:>9,d} {r['seconds']:8.3f} {r['events_per_s'] / 1e6:10.2f} "
              f"{r['ratio_to_target']:13.2f}")
    if "model" in result:
        m = result["model"]
        print(f"full-size Spikformer-DVS (5% firing), {args.window_ms:g} ms windows, "
              f"{m['threads']} engine threads: the 5 real segments, clock compressed x k")
        print(f"{'k':>4s} {'M events/s':>10s} {'windows':>8s} {'p50 ms':>7s} {'p99 ms':>7s} "
              f"{'p99/window':>10s} {'real time':>9s}")
        for r in m["rows"]:
            print(f"{r['factor']:>4g} {r['events_per_s'] / 1e6:10.3f} {r['windows']:>8d} "
                  f"{r['latency_ms_p50']:7.2f} {r['latency_ms_p99']:7.2f} "
                  f"{r['p99_over_window']:10.2f} {'yes' if r['keeps_real_time'] else 'NO':>9s}")
        rt = m["real_time_events_per_s"]
        print("keeps real time up to "
              + (f"{rt / 1e6:.3f} M events/s" if rt else "no rate tried (not even x1)")
              + " (the largest rate tried whose p99 window latency is below the window)")


if __name__ == "__main__":
    main()
