"""`eventformer bench`: the engine against dense PyTorch on real recordings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import (err)
from .errors import fail, user_errors


@user_errors
def bench(
    files: List[Path] = typer.Argument(None, help="Recordings to time [default: the real DVS "
                                                  "Gesture segments in ../shared/data/events]."),
    rates: str = typer.Option("0.05,0.10,0.15,0.25", "--rates",
                              help="LIF firing rates to calibrate the benchmark models to."),
    steps: int = typer.Option(16, "--steps", "-T", min=1, help="Time steps per sample."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Timed runs per file (best is kept)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="Threads for both the engine and the dense "
                                               "PyTorch baseline [default: every core]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random full-size weights."),
    no_dense: bool = typer.Option(False, "--no-dense", help="Skip the PyTorch baseline."),
    no_start: bool = typer.Option(False, "--no-start", help="Skip the cold/warm start timing."),
    as_json: bool = typer.Option(False, "--json", help="The whole result as JSON on stdout."),
):
    """Time the engine against a dense PyTorch forward of the same model on real recordings.

    Until trained full-size weights exist, the models are random Spikformer-DVS weights whose
    BatchNorm is calibrated on the recordings so every LIF fires at each rate of --rates.
    """
    from eventformer.bench.run import BenchOptions, default_gesture_dir, run_bench

    if not files:
        folder = default_gesture_dir()
        if folder is None:
            fail("no recordings given and ../shared/data/events/dvs-gesture was not found; "
                 "pass event files to time")
        files = sorted(folder.glob("*.bs2"))
    try:
        rate_list = tuple(float(r) for r in rates.split(","))
    except ValueError:
        fail(f"--rates must be comma-separated numbers, got {rates!r}")
    opts = BenchOptions(files=[str(f) for f in files], rates=rate_list, steps=steps,
                        repeat=repeat, seed=seed, dense=not no_dense, cold_start=not no_start)
    if threads:
        opts.threads = threads
    err.print(f"[bold]eventformer bench[/]: full-size Spikformer-DVS (2x128x128, D 256, 16 heads, "
              f"2 blocks), T {steps}, batch 1, {len(files)} recordings; random weights with "
              "BatchNorm calibrated on the recordings to each firing rate (no trained "
              "full-size weights exist yet)")
    result = run_bench(opts, log=lambda m: err.print(m))
    _print_bench(result, opts.dense)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")


def _print_bench(result: dict, dense: bool) -> None:
    m = result["machine"]
    for entry in result["rates"]:
        t = Table(title=f"target firing rate {entry['target_rate']:.0%}", title_justify="left")
        cols = ["file", "events", "fired", "engine s"]
        if dense:
            cols += ["torch s", "speedup", "same pred"]
        cols += ["events/s", "real-time x", "AC", "AC/s", "dense MAC"]
        for c in cols:
            t.add_column(c, justify="left" if c == "file" else "right")
        for r in entry["files"]:
            cells = [r["file"], f"{r['events']:,}", f"{r['firing_rate']:.3f}", f"{r['engine_s']:.3f}"]
            if dense:
                cells += [f"{r['dense_s']:.3f}", f"{r['speedup']:.2f}x",
                          "yes" if r["same_prediction"] else "NO"]
            cells += [f"{r['events_per_s']:.3g}", f"{r['realtime_factor']:.2f}",
                      f"{r['ac']:.3g}", f"{r['ac_per_s']:.3g}", f"{r['dense_mac']:.3g}"]
            t.add_row(*cells)
        if dense:
            t.caption = (f"speedup = dense PyTorch time / engine time, both on {m['threads']} "
                         f"thread(s); geometric mean {entry['speedup_geomean']:.2f}x")
        err.print(t)
        lt = Table(title="  per layer: mean input density and path taken", title_justify="left")
        for c in ("layer", "input density", "firing rate", "path"):
            lt.add_column(c)
        for row in entry["layers"]:
            lt.add_row(row["name"], f"{row['input_density']:.3f}", f"{row['firing_rate']:.3f}",
                       "/".join(row["paths"]))
        err.print(lt)
    err.print(f"scatter-add roofline on this machine: {m['scatter_roofline_ac_per_s']:.3g} AC/s "
              "(bare row adds, no decoding); the AC/s column is the engine's counted "
              "accumulates per second of wall time")
    if "start" in result:
        s = result["start"]
        err.print(f"start-up of `eventformer infer` on one file: cold (empty Numba cache) "
                  f"{s['cold_s']:.1f} s, warm {s['warm_s']:.1f} s")
