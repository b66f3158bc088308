"""`eventformer bench`: the engine against dense PyTorch on real recordings."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .common import DTYPE_HELP, DType, err
from .errors import fail, user_errors
from .tables import FitTable


def parse_rates(text: str) -> tuple[float, ...]:
    """``0.05,0.15`` -> (0.05, 0.15); one sentence and exit 2 for anything else."""
    try:
        rates = tuple(float(r) for r in text.split(","))
    except ValueError:
        fail(f"--rates must be comma-separated numbers such as 0.05,0.15, got {text!r}")
    return rates


@user_errors
def bench(
    files: List[Path] = typer.Argument(None, help="Recordings to time (default: the real DVS "
                                                  "Gesture segments in ../shared/data/events)."),
    rates: str = typer.Option("0.05,0.10,0.15,0.25", "--rates",
                              help="LIF firing rates to calibrate the benchmark models to, each "
                                   "in (0, 1)."),
    steps: int = typer.Option(16, "--steps", "-T", help="Time steps per sample."),
    repeat: int = typer.Option(3, "--repeat",
                               help="Timed runs per file and engine, interleaved engine/torch; "
                                    "the median is reported with the min..max spread."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="Threads for both the engine and the dense "
                                               "PyTorch baseline (default: every core, at most "
                                               "8)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random full-size weights."),
    attention: str = typer.Option("ssa", "--attention",
                                  help="Attention operator of the random full-size models: ssa, "
                                       "ds2ta, ssa_bin or saformer (SPEC §4)."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help=DTYPE_HELP),
    no_dense: bool = typer.Option(False, "--no-dense", help="Skip the PyTorch baseline."),
    no_start: bool = typer.Option(False, "--no-start", help="Skip the cold/warm start timing."),
    as_json: bool = typer.Option(False, "--json", help="The whole result as JSON on stdout."),
):
    """Time the engine against a dense PyTorch forward of the same model on real recordings.

    Until trained full-size weights exist, the models are random Spikformer-DVS weights (with
    the attention operator of --attention) whose BatchNorm is calibrated on the recordings so
    every LIF fires at each rate of --rates. The dense side is the package's plain-torch
    Spikformer on the same model file. The two
    engines run interleaved on the same threads; each is reported as the median of --repeat runs
    with the min..max spread. glibc's malloc is tuned for torch (the command re-executes itself
    with MALLOC_* settings when they are missing).
    """
    from eventformer.bench.allocator import reexec_argv
    from eventformer.bench.run import (
        BenchInterrupted,
        BenchOptions,
        bench_config,
        check_options,
        default_gesture_dir,
        load_samples,
        run_bench,
    )

    rate_list = parse_rates(rates)
    if not files:
        folder = default_gesture_dir()
        if folder is None:
            fail("no recordings given and ../shared/data/events/dvs-gesture was not found; "
                 "pass event files to time")
        files = sorted(folder.glob("*.bs2"))
    opts = BenchOptions(files=[str(f) for f in files], rates=rate_list, steps=steps,
                        repeat=repeat, seed=seed, dense=not no_dense, cold_start=not no_start,
                        attention=attention, dtype=dtype.value)
    if threads is not None:
        opts.threads = threads
    check_options(opts)  # bad options fail here, before any re-exec or model work
    again = reexec_argv()
    if again is not None:  # glibc reads MALLOC_* only at start: run this command again with them
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(*again)
    samples = load_samples(opts.files, steps, bench_config(opts).image_size)  # bad files fail here
    err.print(f"[bold]eventformer bench[/]: full-size Spikformer-DVS (2x128x128, D 256, 16 heads, "
              f"2 blocks, {attention} attention), {dtype.value}, T {steps}, batch 1, "
              f"{len(files)} recordings; "
              "random weights with "
              "BatchNorm calibrated on the recordings to each firing rate (no trained "
              "full-size weights exist yet)")
    try:
        result = run_bench(opts, log=lambda m: err.print(m),
                           warn=lambda m: typer.echo(m, err=True), samples=samples)
    except BenchInterrupted as stop:
        result = stop.result
        _print_bench(result, opts.dense)
        runs = sum(len(row[side]["times_s"]) for entry in result["rates"]
                   for row in entry["files"] for side in ("engine", "dense") if side in row)
        typer.echo(f"interrupted: the results above are partial ({runs} timed run(s), "
                   f"{len(result['rates'])} of {len(rate_list)} firing rate(s))", err=True)
        if as_json:
            sys.stdout.write(json.dumps(result) + "\n")
        raise typer.Exit(code=130)
    _print_bench(result, opts.dense)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")


def _spread_cell(side: dict) -> str:
    mark = " !" if side["unstable"] else ""
    return f"{side['median_s']:.3f} ({side['min_s']:.3f}..{side['max_s']:.3f}){mark}"


def _print_bench(result: dict, dense: bool) -> None:
    m = result["machine"]
    roof = m.get("scatter_roofline_ac_per_s")
    a = result["allocator"]
    err.print(f"allocator: glibc MALLOC_* settings {a['how']}")
    for entry in result["rates"]:
        title = f"target firing rate {entry['target_rate']:.0%}"
        if "attention" in entry:
            title += f", {entry['attention']} attention"
        if not entry["complete"]:
            title += " (interrupted: partial)"
        # every column is a measurement of the report: none is left out; those that do not fit
        # beside the file continue in a table below
        t = FitTable(title)
        cols = ["file", "events", "fired", "engine s (min..max)"]
        if dense:
            cols += ["torch s (min..max)", "speedup", "same pred"]
        cols += ["events/s", "real-time x", "scatter AC/s", "dense MAC"]
        for c in cols:
            t.add_column(c, left=c == "file", key=c == "file")
        for r in entry["files"]:
            cells = [r["file"], f"{r['events']:,}", f"{r['firing_rate']:.3f}",
                     _spread_cell(r["engine"])]
            if dense:
                if "dense" in r:
                    cells += [_spread_cell(r["dense"]), f"{r['speedup']:.2f}x",
                              "yes" if r["same_prediction"] else "NO"]
                else:
                    cells += ["-", "-", "yes" if r.get("same_prediction") else "NO"]
            rate = r["scatter_ac_per_s"]
            cells += [f"{r['events_per_s']:.3g}", f"{r['realtime_factor']:.2f}",
                      "-" if rate is None else f"{rate:.3g}", f"{r['dense_mac']:.3g}"]
            t.add_row(*cells)
        n = len(entry["files"][0]["engine"]["times_s"]) if entry["files"] else 0
        caption = (f"median of up to {n} runs per side, timed interleaved (engine, torch, "
                   f"engine, ...), min..max beside it; ! = max/min above "
                   f"{result['timing']['unstable_if_max_over_min_above']}")
        if dense:
            geo = entry.get("speedup_geomean")
            caption += (f"; speedup = torch median / engine median, both on {m['threads']} "
                        f"engine / {m['torch_threads']} torch thread(s)"
                        + (f"; geometric mean {geo:.2f}x" if geo else ""))
        if entry.get("other_load_cores") is not None:
            caption += (f"; other processes kept {entry['other_load_cores']:.2f} core(s) busy "
                        "meanwhile")
        t.caption = caption
        t.print(err, wide=True)
        lt = FitTable("  per layer: mean input density and path taken")
        for c in ("layer", "input density", "firing rate", "path"):
            lt.add_column(c, left=c in ("layer", "path"), key=c == "layer")
        for row in entry["layers"]:
            lt.add_row(row["name"], f"{row['input_density']:.3f}", f"{row['firing_rate']:.3f}",
                       "/".join(row["paths"]))
        lt.print(err, wide=True)
        sc = entry.get("scatter_ac_per_s")
        if sc is not None and roof:
            files = entry["files"]
            err.print(f"  scatter steps at {entry['target_rate']:.0%}: {sc:.3g} AC/s = "
                      f"{sc / roof:.0%} of the roofline: "
                      f"{sum(r['ac_scatter'] for r in files):.3g} accumulates done by scatter "
                      f"steps in {sum(r['scatter_s'] for r in files):.3f} s; the "
                      f"{sum(r['ac_gemm_steps'] for r in files):.3g} counted on GEMM steps are "
                      "dense MAC work, not in this rate")
    if roof:
        widths = ", ".join(f"{int(k)}: {v:.3g}" for k, v in m["scatter_roofline_by_width"].items())
        err.print(f"scatter-add roofline on this machine: {roof:.3g} AC/s (bare row adds on one "
                  f"thread, best over the model's row widths {widths})")
    if "start" in result:
        s = result["start"]
        err.print(f"start-up of `eventformer infer` on one file: cold (empty Numba cache) "
                  f"{s['cold_s']:.1f} s, warm {s['warm_s']:.1f} s")
