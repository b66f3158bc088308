"""`eventformer bench`: the engine against dense PyTorch on real recordings."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .common import DTYPE_HELP, DType, err, progress_bar
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
                                                  "Gesture segments in ../shared/data/events "
                                                  "when present, else the first 5 DVS Gesture "
                                                  "test samples: the real release in "
                                                  "$EVENTFORMER_DATA or the cache, else the "
                                                  "embedded synthetic set; the bench says "
                                                  "which)."),
    rates: str = typer.Option("0.05,0.10,0.15,0.25", "--rates",
                              help="LIF firing rates to calibrate the benchmark models to, each "
                                   "in (0, 1)."),
    steps: int = typer.Option(16, "--steps", "-T", help="Time steps per sample."),
    repeat: int = typer.Option(3, "--repeat",
                               help="Timed runs per file and side, interleaved engine, torch "
                                    "eager, torch.compile; the median is reported with the "
                                    "min..max spread."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="Threads for the engine and both dense PyTorch "
                                               "sides (default: every core, at most 8)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random full-size weights."),
    model: str = typer.Option("spikformer", "--model",
                              help="The network: spikformer (full-size Spikformer-DVS), "
                                   "qkformer or sdt (the Spike-driven Transformer), each "
                                   "successor in its released DVS Gesture configuration."),
    attention: Optional[str] = typer.Option(None, "--attention",
                                            help="Attention operator of Spikformer-DVS's "
                                                 "blocks: ssa (default), ds2ta, ssa_bin or "
                                                 "saformer (SPEC §4); not for --model qkformer "
                                                 "or sdt, which run their own layout's."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help=DTYPE_HELP),
    no_dense: bool = typer.Option(False, "--no-dense",
                                  help="Skip both PyTorch baselines (eager and compiled)."),
    no_compile: bool = typer.Option(False, "--no-compile",
                                    help="Skip the torch.compile side (compiling takes minutes "
                                         "the first time; inductor then caches it on disk)."),
    profile: bool = typer.Option(False, "--profile",
                                 help="Also profile the engine: per layer and per stage "
                                      "(scatter, gather, GEMM, LIF, max-pool, attention core, "
                                      "residual merge, head, ...) ms per sample and "
                                      "accumulates/s against each kernel's measured peak; in "
                                      "--json too."),
    no_start: bool = typer.Option(False, "--no-start", help="Skip the cold/warm start timing."),
    as_json: bool = typer.Option(False, "--json", help="The whole result as JSON on stdout."),
):
    """Time the engine against dense PyTorch, eager and torch.compile, on the same threads.

    Until trained full-size weights exist, the models are random Spikformer-DVS weights (with
    the attention operator of --attention) whose BatchNorm is calibrated on the recordings so
    every LIF fires at each rate of --rates (once per rate; cached). The dense sides run the
    same model file through the package's plain-torch Spikformer. With --model qkformer or sdt
    the network is that successor's DVS Gesture release, its random state_dict's BatchNorms
    calibrated in torch to each rate, the model file built from that state_dict as export
    builds one, and the dense sides its plain-torch reference holding the same state_dict; an
    integer --dtype the engine refuses for it is refused in one line. The dense sides
    run eagerly, and through torch.compile (inductor, default mode; its compile time is
    reported apart, and if it cannot run here the bench says why in one line and goes on with
    eager only). The three sides run interleaved per file (engine, eager, compiled) after untimed warm-up calls; each is reported
    as the median of --repeat runs with the min..max spread, and the speed-up is quoted against
    the faster dense side at each rate (the caption says which). glibc's malloc is tuned for
    torch (the command re-executes itself with MALLOC_* settings when they are missing).

    Takes minutes: calibration (first run per rate), compiling, then 3 x --repeat x files runs
    per rate; progress is shown on stderr.
    """
    from eventformer.bench.allocator import reexec_argv
    from eventformer.bench.run import (
        BenchInterrupted,
        BenchOptions,
        bench_network,
        check_options,
        default_inputs,
        load_samples,
        run_bench,
    )

    rate_list = parse_rates(rates)
    opts = BenchOptions(files=[str(f) for f in files] if files else ["(default inputs)"],
                        rates=rate_list, steps=steps, repeat=repeat, seed=seed,
                        dense=not no_dense, compiled=not no_compile, profile=profile,
                        cold_start=not no_start, model=model, attention=attention,
                        dtype=dtype.value)
    if threads is not None:
        opts.threads = threads
    check_options(opts)  # bad options fail here, before any re-exec or model work
    again = reexec_argv()
    if again is not None:  # glibc reads MALLOC_* only at start: run this command again with them
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(*again)
    network = bench_network(opts)
    size = network.config.image_size
    if files:
        samples = load_samples(opts.files, steps, size)  # bad files fail here
        source = f"{len(samples)} recording(s) given"
    else:
        inputs = default_inputs(steps, size, log=lambda m: err.print(m))
        samples, source = inputs.samples, inputs.description
        opts.files = [s.path for s in samples]
    weights = ("random weights with BatchNorm calibrated on the inputs to each firing rate (no "
               "trained full-size weights exist yet)" if network.reference is None else
               "random weights of the official layout, every BatchNorm calibrated in torch on "
               "the inputs to each firing rate")
    err.print(f"[bold]eventformer bench[/]: full-size {network.summary()}, {dtype.value}, "
              f"T {steps}, batch 1; {weights}", markup=True, highlight=False)
    err.print(f"inputs: {source}", markup=False, highlight=False)
    with _Progress() as progress:
        try:
            result = run_bench(opts, log=progress.log,
                               warn=lambda m: progress.log(m, plain=True), samples=samples,
                               progress=progress)
        except BenchInterrupted as stop:
            progress.stop()
            result = stop.result
            result["inputs"] = source
            _print_bench(result, opts.dense)
            _print_profiles(result)
            runs = sum(len(row[side]["times_s"]) for entry in result["rates"]
                       for row in entry["files"] for side in ("engine", "dense", "compiled")
                       if side in row)
            typer.echo(f"interrupted: the results above are partial ({runs} timed run(s), "
                       f"{len(result['rates'])} of {len(rate_list)} firing rate(s))", err=True)
            if as_json:
                sys.stdout.write(json.dumps(result) + "\n")
            raise typer.Exit(code=130)
    result["inputs"] = source
    _print_bench(result, opts.dense)
    _print_profiles(result)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")


class _Progress:
    """``run_bench``'s progress(task, done, total) on stderr: rich bars on a terminal (a spinner
    while the total is unknown, e.g. compiling), else one line when a task starts and one when a
    task that took a while ends."""

    def __init__(self):
        self._bar = None
        self._tasks: dict[str, tuple[object, float]] = {}

    def __enter__(self):
        if err.is_terminal:
            self._bar = progress_bar(True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def log(self, message: str, plain: bool = False) -> None:
        if plain:
            typer.echo(message, err=True)
        else:
            err.print(message, markup=False, highlight=False)

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if task not in self._tasks:
            handle = None
            if self._bar is not None:
                handle = self._bar.add_task(task, total=total)
            else:
                self.log(f"{task}{f' ({total} runs)' if total and 'timing' in task else ''}...")
            self._tasks[task] = (handle, time.perf_counter())
        handle, started = self._tasks[task]
        if self._bar is not None:
            self._bar.update(handle, completed=done, total=total)
        if total is not None and done >= total:
            if self._bar is not None:
                self._bar.remove_task(handle)
            elif time.perf_counter() - started > 5:
                self.log(f"  done in {time.perf_counter() - started:.0f} s: {task}")
            del self._tasks[task]


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
        compiled = dense and any("compiled" in r for r in entry["files"])
        if dense:
            cols += ["torch eager s (min..max)"]
            cols += ["torch.compile s (min..max)"] if compiled else []
            cols += ["speedup", "same pred"]
        cols += ["events/s", "real-time x", "event AC/s", "dense MAC"]
        for c in cols:
            t.add_column(c, left=c == "file", key=c == "file")
        for r in entry["files"]:
            cells = [r["file"], f"{r['events']:,}", f"{r['firing_rate']:.3f}",
                     _spread_cell(r["engine"])]
            if dense:
                cells += [_spread_cell(r["dense"]) if "dense" in r else "-"]
                if compiled:
                    cells += [_spread_cell(r["compiled"]) if "compiled" in r else "-"]
                cells += [f"{r['speedup']:.2f}x" if "speedup" in r else "-",
                          "yes" if r.get("same_prediction") else "NO"]
            rate = r["scatter_ac_per_s"]
            cells += [f"{r['events_per_s']:.3g}", f"{r['realtime_factor']:.2f}",
                      "-" if rate is None else f"{rate:.3g}", f"{r['dense_mac']:.3g}"]
            t.add_row(*cells)
        n = len(entry["files"][0]["engine"]["times_s"]) if entry["files"] else 0
        order = "engine, torch eager, torch.compile" if compiled else "engine, torch"
        caption = (f"median of up to {n} runs per side, timed interleaved ({order}, "
                   f"engine, ...), warm-up calls apart, min..max beside it; ! = max/min above "
                   f"{result['timing']['unstable_if_max_over_min_above']}")
        if dense:
            geo = entry.get("speedup_geomean")
            base = entry.get("baseline_label") or "torch"
            caption += (f"; speedup = {base} median / engine median ({base} is the faster "
                        f"dense side here), both on {m['threads']} engine / "
                        f"{m['torch_threads']} torch thread(s)"
                        + (f"; geometric mean {geo:.2f}x" if geo else ""))
            for key, label in (("speedup_geomean_eager", "torch eager"),
                               ("speedup_geomean_compiled", "torch.compile")):
                if entry.get(key) and label != base:
                    caption += f" ({entry[key]:.2f}x against {label})"
            if entry.get("compile_s") is not None:
                caption += (f"; torch.compile took {entry['compile_s']:.1f} s to compile "
                            "(first call, not in the times)")
        if entry.get("other_load_cores") is not None:
            caption += (f"; other processes kept {entry['other_load_cores']:.2f} core(s) busy "
                        "meanwhile")
        t.caption = caption
        t.print(err, wide=True)
        lt = FitTable("  per layer: mean input density and path taken")
        for c in ("layer", "input density", "firing rate", "path"):
            lt.add_column(c, left=c in ("layer", "path"), key=c == "layer")
        for row in entry["layers"]:
            fired = "-" if row["firing_rate"] is None else f"{row['firing_rate']:.3f}"
            lt.add_row(row["name"], f"{row['input_density']:.3f}", fired,
                       "/".join(row["paths"]))
        lt.print(err, wide=True)
        sc = entry.get("scatter_ac_per_s")
        if sc is not None and roof:
            files = entry["files"]
            err.print(f"  event-driven steps (scatter and gather) at "
                      f"{entry['target_rate']:.0%}: {sc:.3g} AC/s per thread-second = "
                      f"{sc / roof:.2f}x the scatter-add roofline (footnote below): "
                      f"{sum(r['ac_scatter'] for r in files):.3g} accumulates done by them "
                      f"in {sum(r['scatter_s'] for r in files):.3f} s; the "
                      f"{sum(r['ac_gemm_steps'] for r in files):.3g} counted on GEMM steps are "
                      "dense MAC work, not in this rate")
    if roof:
        widths = ", ".join(f"{int(k)}: {v:.3g}" for k, v in m["scatter_roofline_by_width"].items())
        err.print(f"scatter-add roofline on this machine: {roof:.3g} AC/s (bare row adds on one "
                  f"thread, best over the model's row widths {widths}); a ratio above 1x means "
                  "the engine's scatter kernels beat that bare loop (their rows are wider or "
                  "better vectorised), not that a bound was broken")
    if "start" in result:
        s = result["start"]
        err.print(f"start-up of `eventformer infer` on one file: cold (empty Numba cache) "
                  f"{s['cold_s']:.1f} s, warm {s['warm_s']:.1f} s")


PROFILE_ROW_MIN_SHARE = 0.005  # per-layer rows below this share of the time are summed up


def _rate_cell(ops_per_s) -> str:
    return "-" if not ops_per_s else f"{ops_per_s / 1e9:.3g}"


def _ratio_cell(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _print_profiles(result: dict) -> None:
    """``--profile``: per rate, where the engine's time goes by stage, then by layer and stage."""
    peaks = result["machine"].get("kernel_peaks", {})
    for entry in result["rates"]:
        prof = entry.get("profile")
        if prof is None:
            continue
        rate = f"{entry['target_rate']:.0%}"
        t = FitTable(f"where the engine's time goes at {rate} firing, by stage (profiled, "
                     f"{prof['samples']} sample run(s))")
        for c in ("stage", "ms/sample", "share", "work/sample", "G/s", "peak G/s", "of peak"):
            t.add_column(c, left=c == "stage", key=c == "stage")
        for st in prof["stages"]:
            t.add_row(st["stage"], f"{st['ms']:.2f}", f"{st['share']:.0%}",
                      "-" if not st["work"] else f"{st['work']:.3g} {st['unit']}",
                      _rate_cell(st["ops_per_s"]), _rate_cell(st["peak_ops_per_s"]),
                      _ratio_cell(st["of_peak"]))
        timed = prof.get("timed_engine_ms")
        wall = prof.get("wall_ms", prof["total_ms"])
        spread = (f" of threads: the runs' {wall:.2f} ms wall plus the offline pipeline's "
                  "other threads' time while it ran" if prof["total_ms"] > wall * 1.0001 else "")
        t.caption = (f"stages add up to the profiled {prof['total_ms']:.2f} ms/sample{spread}"
                     + (f" (the timed runs, without the profiler: {timed:.2f} ms/sample; a "
                        "profiled run also pays its wrappers' small cost per call, and a busy "
                        "machine moves both)" if timed else ""))
        t.print(err, wide=True)
        err.print("  " + "; ".join(f"{k}: {v}" for k, v in prof["stage_meaning"].items()),
                  markup=False, highlight=False)
        lt = FitTable(f"  by layer and stage at {rate} firing")
        for c in ("layer", "stage", "ms/sample", "share", "work/sample", "G/s", "of peak"):
            lt.add_column(c, left=c in ("layer", "stage"), key=c == "layer")
        total = prof["total_ms"] or 1.0
        small, small_ms = 0, 0.0
        for layer in prof["layers"]:
            first = True
            for st in layer["stages"]:
                if st["ms"] < PROFILE_ROW_MIN_SHARE * total:
                    small, small_ms = small + 1, small_ms + st["ms"]
                    continue
                lt.add_row(layer["layer"] if first else "", st["stage"], f"{st['ms']:.3f}",
                           f"{st['ms'] / total:.1%}",
                           "-" if not st["work"] else f"{st['work']:.3g} {st['unit']}",
                           _rate_cell(st["ops_per_s"]), _ratio_cell(st["of_peak"]))
                first = False
        if small:
            lt.caption = (f"{small} smaller entries (each under {PROFILE_ROW_MIN_SHARE:.1%} of "
                          f"the time; {small_ms:.2f} ms/sample together) not shown: all are in "
                          "--json")
        lt.print(err, wide=True)
    if peaks and any("profile" in e for e in result["rates"]):
        parts = [f"{name} {p['ops_per_s'] / 1e9:.3g} G{p['unit']}/s ({p['measured']}, "
                 f"{p['threads']} thread(s))" for name, p in peaks.items()]
        err.print("kernel peaks on this machine: " + "; ".join(parts) + ". \"of peak\" is a "
                  "stage's rate over its kernel's peak: scatter and gather per thread-second "
                  "(summed over the engine's threads) against a bare one-thread loop, GEMM per "
                  "second of the calling thread against the layers' own GEMM on the same threads; "
                  "above "
                  "1x the engine's kernel beats the bare loop (wider rows, better "
                  "vectorisation), it breaks no bound.", markup=False, highlight=False)
