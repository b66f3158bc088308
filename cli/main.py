"""eventformer: event-driven inference for spiking vision transformers.

Human output goes to stderr (rich); ``--json`` puts machine-readable results on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import STATE, fail, user_errors

app = typer.Typer(
    name="eventformer",
    help="Event-driven inference for spiking vision transformers on CPUs: classify event-camera "
         "recordings, export PyTorch checkpoints, count the operations really performed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# rich wraps at 80 columns when stderr is not a terminal; the layer tables need more
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class SplitBy(str, Enum):
    number = "number"
    time = "time"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


class Path_(str, Enum):
    auto = "auto"
    sparse = "sparse"
    dense = "dense"


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")):
    STATE["debug"] = debug


def _load_engine(weights: Path, dtype: str, path_mode: str, quiet: bool = False):
    from eventformer.layers import PathPolicy
    from eventformer.modelfile import load
    from eventformer.models import Spikformer
    from eventformer.runtime import kernels_cached

    model_file = load(weights)
    if not quiet and not kernels_cached():
        err.print("first run: compiling the engine's kernels (about 10-20 s, cached afterwards)")
    return Spikformer(model_file, dtype=dtype, policy=PathPolicy(mode=path_mode))


NO_SHIPPED_MODEL = (
    "no model given and the shipped one (weights/{name} in the source tree) is not here: pass "
    "--weights MODEL.h5 (`eventformer export CHECKPOINT.pth -o MODEL.h5` converts a Spikformer "
    "checkpoint)")
SHIPPED_MODEL = "spikformer-tiny-synth.h5"


def _resolve_weights(weights: Optional[Path], quiet: bool = False) -> Path:
    """The given model file, else the shipped default (trained on synthetic gestures only)."""
    if weights is not None:
        return weights
    shipped = Path(__file__).resolve().parents[1] / "weights" / SHIPPED_MODEL
    if not shipped.is_file():
        fail(NO_SHIPPED_MODEL.format(name=SHIPPED_MODEL))
    if not quiet:
        err.print(f"model: the shipped {shipped.name} (a tiny Spikformer trained on synthetic "
                  "DVS Gesture only; see weights/MODEL_CARD.md); --weights to use another")
    return shipped


@app.command()
@user_errors
def infer(
    files: List[Path] = typer.Argument(None, help="Event recordings (AEDAT 2/3.1/4, EVT 2/3 .raw, "
                                                  "DAT, N-MNIST .bin/.bs2, .npy, .npz, eventformer "
                                                  ".h5); the format is read from the file."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w",
                                           help="Model file (.h5) [default: the shipped "
                                                "weights/spikformer-tiny-synth.h5]."),
    dataset: Optional[str] = typer.Option(None, "--dataset",
                                          help="Classify a dataset instead of files "
                                               "(dvs-gesture)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="Where the dataset lives [default: "
                                                 "$EVENTFORMER_DATA, then ~/.cache/eventformer/"
                                                 "data; else the embedded synthetic set]."),
    split: str = typer.Option("test", "--split", help="Dataset split: test or train."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                        help="Classify only the first N dataset samples."),
    steps: Optional[int] = typer.Option(None, "--steps", "-T", min=1,
                                        help="Time steps per sample [default: the model's]."),
    split_by: Optional[SplitBy] = typer.Option(None, "--split-by",
                                               help="Framing rule [default: the model's]."),
    dtype: DType = typer.Option(DType.float32, "--dtype",
                                help="Arithmetic: float32 (fast) or float64 (exactness checks)."),
    path: Path_ = typer.Option(Path_.auto, "--path",
                               help="Per-step kernel choice: auto (by input density), or force "
                                    "sparse (event scatter) or dense (GEMM)."),
    layers: bool = typer.Option(False, "--layers", help="Print the per-layer table for every "
                                                        "file (always shown for one file)."),
    pj_ac: float = typer.Option(0.9, "--pj-ac", help="Energy of one accumulate, pJ (45 nm)."),
    pj_mac: float = typer.Option(4.6, "--pj-mac", help="Energy of one multiply-accumulate, pJ."),
    sensor_size: Optional[str] = typer.Option(None, "--sensor-size", metavar="WxH",
                                              help="Sensor size for formats whose header has "
                                                   "none; a larger sensor is downsampled by an "
                                                   "integer factor to the model's input."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file (or sample, "
                                                       "then a summary) on stdout."),
):
    """Classify event recordings or a dataset: predictions, per-layer spikes, operations done."""
    from eventformer.inference import classify_file
    from eventformer.report import EnergyTable

    energy = EnergyTable(ac_pj=pj_ac, mac_pj=pj_mac)
    framing = {"steps": steps, "split_by": split_by.value if split_by else None,
               "sensor_size": _parse_size(sensor_size)}
    if dataset is not None:
        if files:
            fail("give either event files or --dataset, not both")
        _infer_dataset(dataset, data_dir, split, limit, weights, dtype.value, path.value,
                       energy, framing, as_json)
        return
    if not files:
        fail("give event files to classify (or --dataset dvs-gesture); see --help")
    weights = _resolve_weights(weights, quiet=as_json)
    for f in files:
        if not f.exists():
            fail(f"{f}: no such file")
    engine = _load_engine(weights, dtype.value, path.value, quiet=as_json)
    results = []
    with _progress(len(files) > 1 and not as_json) as progress:
        task = progress.add_task("classifying", total=len(files)) if progress else None
        for f in files:
            r = classify_file(engine, str(f), energy=energy, **framing)
            for w in r.warnings:
                err.print(f"warning: {w}")
            results.append(r)
            if as_json:
                sys.stdout.write(json.dumps(r.to_json()) + "\n")
                sys.stdout.flush()
            if progress:
                progress.advance(task)
    if not as_json:
        _print_results(results, show_layers=layers or len(results) == 1)


def _parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        fail(f"--sensor-size must look like 128x128, got {text!r}")
    return w, h


def _infer_dataset(name, data_dir, split, limit, weights, dtype, path_mode, energy, framing,
                   as_json) -> None:
    from eventformer.evaluate import evaluate

    if split not in ("test", "train"):
        fail(f"--split must be test or train, got {split!r}")
    if not (name == "dvs-gesture" or name.startswith("tonic:")):
        fail(f"unknown dataset {name!r}; known: dvs-gesture, tonic:NAME (e.g. tonic:NMNIST)")
    weights = _resolve_weights(weights, quiet=as_json)
    engine = _load_engine(weights, dtype, path_mode, quiet=as_json)
    data = _open_dataset(name, data_dir, split)
    total = min(len(data), limit) if limit else len(data)

    def emit(record, _result):
        if as_json:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
        if progress:
            progress.advance(task)

    with _progress(not as_json) as progress:
        task = progress.add_task("classifying", total=total) if progress else None
        summary = evaluate(engine, data, limit=limit, energy=energy, on_sample=emit, **framing)
    if as_json:
        sys.stdout.write(json.dumps({"summary": True, **summary}) + "\n")
    else:
        _print_summary(summary, engine.config)


def _open_dataset(name: str, data_dir, split: str):
    """The labelled samples of ``--dataset``, saying on stderr which data and convention."""
    from eventformer.datasets import (TonicSet, embedded_synthetic_set, find_dvs_gesture,
                                      load_dvs_gesture)

    if name.startswith("tonic:"):
        if data_dir is None:
            fail(f"--dataset {name} needs --data-dir (where tonic's files for it are)")
        data = TonicSet(name.split(":", 1)[1], data_dir, split)
        err.print(f"{data.convention}: {len(data)} samples from {data_dir}")
        return data
    found = find_dvs_gesture(data_dir)
    if found is None:
        data = embedded_synthetic_set(split, log=lambda m: err.print(m))
        err.print(f"no DVS Gesture data found (give --data-dir or set EVENTFORMER_DATA): "
                  f"running on the embedded synthetic {split} set ({len(data)} samples), "
                  "not the real dataset")
        return data
    data = load_dvs_gesture(*found, split)
    err.print(f"DVS Gesture from {data.root}: {data.convention}, {split} split, "
              f"{len(data)} samples")
    return data


def _print_summary(s: dict, config) -> None:
    names = [n.strip() for n in config.class_names] or [str(k) for k in range(config.num_classes)]
    err.print(f"[bold]accuracy {s['accuracy']:.2%}[/] ({s['correct']}/{s['samples']}), "
              f"{s['split']} split, {s['split_convention']}")
    err.print(f"throughput {s['samples_per_s']:.2f} samples/s, {s['events_per_s']:.3g} events/s "
              f"(engine time {s['engine_seconds']:.1f} s)")
    o = s["ops_per_sample"]
    err.print(f"per sample: AC {o['ac']:.3g}, MAC {o['mac']:.3g}, dense MAC {o['dense_mac']:.3g}, "
              f"energy {o['energy_uj']:.1f} uJ (counted), SOP {o['sop_paper']:.3g} (paper)")
    t = Table(title="confusion matrix (rows: label, columns: prediction) and per-class accuracy",
              title_justify="left")
    t.add_column("label")
    for k in range(len(s["confusion"])):
        t.add_column(str(k), justify="right")
    t.add_column("accuracy", justify="right")
    for k, row in enumerate(s["confusion"]):
        acc = s["per_class_accuracy"].get(k)
        t.add_row(f"{k} {names[k] if k < len(names) else ''}", *[str(v) for v in row],
                  "-" if acc is None else f"{acc:.0%}")
    err.print(t)
    lt = Table(title="per layer, mean per sample", title_justify="left")
    for c in ("layer", "spikes", "AC", "MAC", "dense MAC"):
        lt.add_column(c, justify="left" if c == "layer" else "right")
    for row in s["layers_per_sample"]:
        lt.add_row(row["name"], f"{row['spikes']:.4g}", f"{row['ac']:.4g}", f"{row['mac']:.4g}",
                   f"{row['dense_mac']:.4g}")
    err.print(lt)


def _progress(enabled: bool):
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=True)


def _print_results(results, show_layers: bool) -> None:
    table = Table(title="eventformer infer", title_justify="left")
    for col in ("file", "events", "T", "prediction", "class", "top logit", "time s",
                "AC", "MAC", "energy uJ"):
        table.add_column(col, justify="left" if col in ("file", "class") else "right")
    for r in results:
        table.add_row(Path(r.file).name, f"{r.events:,}", str(r.steps), str(r.prediction),
                      r.class_name, f"{float(r.logits.max()):.4f}", f"{r.seconds:.3f}",
                      f"{r.ops['ac']:,}", f"{r.ops['mac']:,}", f"{r.ops['energy_uj']:.2f}")
    err.print(table)
    if show_layers:
        for r in results:
            err.print(_layer_table(r))


def _layer_table(r) -> Table:
    t = Table(title=f"{Path(r.file).name}: per layer (AC/MAC counted by the kernels; "
                    f"SOP = paper estimate fr x T x FLOPs)", title_justify="left")
    for col in ("layer", "neurons", "spikes", "rate", "in density", "path", "AC", "MAC",
                "dense MAC", "SOP (paper)"):
        t.add_column(col, justify="left" if col in ("layer", "path") else "right")
    for row in r.layers:
        t.add_row(row["name"], f"{row['neurons']:,}", f"{row['spikes']:,}",
                  f"{row['firing_rate']:.3f}", f"{row['input_density']:.3f}", row["path"],
                  f"{row['ac']:,}", f"{row['mac']:,}", f"{row['dense_mac']:,}",
                  f"{row['sop_paper']:.3g}")
    o = r.ops
    t.caption = (f"total AC {o['ac']:,}  MAC {o['mac']:,}  dense MAC {o['dense_mac']:,}  "
                 f"energy {o['energy_uj']:.2f} uJ (counted) / {o['energy_uj_paper']:.2f} uJ "
                 f"(paper estimate)  SOP {o['sop_paper']:.3g}")
    return t


@app.command()
@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Official Spikformer checkpoint (.pth): a "
                                                "state_dict or {'model': state_dict}."),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write (.h5)."),
    heads: int = typer.Option(16, "--heads", min=1, help="Attention heads (not in the tensors)."),
    scale: float = typer.Option(0.25, "--scale", help="Attention scale: 0.25 in the official "
                                                     "CIFAR10-DVS code, 0.125 in the paper."),
    steps: int = typer.Option(16, "--steps", "-T", min=1, help="Time steps the model was "
                                                                "trained with."),
    split_by: SplitBy = typer.Option(SplitBy.number, "--split-by",
                                     help="Framing the model was trained with."),
    image_size: Optional[int] = typer.Option(None, "--image-size",
                                             help="Input side [default: from pos_embed]."),
    classes: Optional[str] = typer.Option(None, "--classes",
                                          help="Class names: dvs-gesture, or a comma list."),
):
    """Convert a PyTorch Spikformer checkpoint into an eventformer model file (BN folded)."""
    from eventformer.datasets import CLASS_SETS
    from eventformer.modelfile import save
    from eventformer.modelfile.export import export_checkpoint

    names: tuple = ()
    if classes:
        names = CLASS_SETS.get(classes) or tuple(c.strip() for c in classes.split(","))
    model, report = export_checkpoint(checkpoint, heads=heads, scale=scale, steps=steps,
                                      image_size=image_size, class_names=names)
    model.config.split_by = split_by.value
    if names and len(names) != model.config.num_classes:
        fail(f"{len(names)} class names for a head with {model.config.num_classes} outputs")
    save(output, model)
    cfg = model.config
    err.print(f"[bold]exported[/] {checkpoint} -> {output}")
    err.print("  inferred from tensors: " + ", ".join(f"{k}={v}" for k, v in report.inferred.items()))
    err.print("  from options: " + ", ".join(f"{k}={v}" for k, v in report.given.items())
              + f", split_by={cfg.split_by}")
    err.print(f"  {len(report.ignored_keys)} unused keys ignored (pos_embed, LayerNorms, "
              "num_batches_tracked); BatchNorm folded into conv weight and bias")
    err.print(f"  {model.parameter_count():,} parameters, {cfg.tokens} tokens, "
              f"{cfg.heads} heads of {cfg.head_dim}")


@app.command()
@user_errors
def inspect(
    model_path: Path = typer.Argument(..., metavar="MODEL.h5", help="Model file to describe."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable on stdout."),
):
    """Print a model file's architecture, parameter count, neuron parameters and provenance."""
    from eventformer.modelfile import load, layer_specs

    m = load(model_path)
    cfg = m.config
    info = {"file": str(model_path), "architecture": m.architecture,
            "config": cfg.to_dict(), "parameters": m.parameter_count(),
            "provenance": m.provenance,
            "layers": [{"name": s.name, "kind": s.kind,
                        "weight": list(m.layers[s.name].weight.shape)
                        if m.layers[s.name].weight is not None else None,
                        "tau": m.layers[s.name].tau, "theta": m.layers[s.name].theta,
                        "reset": "soft" if m.layers[s.name].v_reset is None else "hard"}
                       for s in layer_specs(cfg)]}
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    err.print(f"[bold]{model_path}[/]: {m.architecture}, {m.parameter_count():,} parameters")
    err.print(f"  input {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}, "
              f"SPS {list(cfg.sps_channels)}, D {cfg.dim}, {cfg.heads} heads, depth {cfg.depth}, "
              f"MLP {cfg.mlp_hidden}, {cfg.num_classes} classes, {cfg.tokens} tokens")
    err.print(f"  T {cfg.steps}, split_by {cfg.split_by}, attention {cfg.attention} "
              f"(scale {cfg.scale}), LIF tau {cfg.tau} theta {cfg.theta} / attn {cfg.attn_theta}")
    if cfg.class_names:
        err.print("  classes: " + ", ".join(cfg.class_names))
    t = Table(title_justify="left")
    for col in ("layer", "kind", "weight", "tau", "theta", "reset"):
        t.add_column(col)
    for row in info["layers"]:
        t.add_row(row["name"], row["kind"], "x".join(map(str, row["weight"] or [])) or "-",
                  f"{row['tau']:g}", f"{row['theta']:g}", row["reset"])
    err.print(t)
    if m.provenance:
        err.print("  provenance: " + ", ".join(f"{k}={v}" for k, v in m.provenance.items()))


@app.command()
@user_errors
def stream(
    file: Path = typer.Argument(..., help="Event file to classify window by window; with "
                                          "--follow it may still be being written."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w",
                                           help="Model file (.h5) [default: the shipped "
                                                "weights/spikformer-tiny-synth.h5]."),
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="Keep reading as the file grows (until --idle-timeout "
                                     "or Ctrl-C)."),
    window_ms: Optional[float] = typer.Option(None, "--window-ms",
                                              help="Fixed time windows of this many ms "
                                                   "[default: 100 ms]."),
    window_events: Optional[int] = typer.Option(None, "--window-events", min=1,
                                                help="Or a fixed number of events per window."),
    realtime: bool = typer.Option(False, "--realtime",
                                  help="Replay a finished file at recording speed."),
    idle_timeout: float = typer.Option(5.0, "--idle-timeout", min=0.0,
                                       help="With --follow: stop after this many seconds "
                                            "without growth."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="float32 or float64."),
    sensor_size: Optional[str] = typer.Option(None, "--sensor-size", metavar="WxH",
                                              help="Sensor size for formats whose header has "
                                                   "none (a larger sensor is downsampled)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per window on stdout, "
                                                       "then a summary line."),
):
    """Classify a live or recorded event stream in causal windows, state carried across them.

    Each window advances the model one time step, so the prediction evolves as the gesture
    unfolds; --follow keeps reading a file that is still being written."""
    from eventformer.stream import FileSource, WindowSpec, run_stream

    if window_ms is not None and window_events is not None:
        fail("give either --window-ms or --window-events, not both")
    if window_ms is not None and window_ms <= 0:
        fail(f"--window-ms must be positive, got {window_ms}")
    spec = WindowSpec(window_events=window_events) if window_events else \
        WindowSpec(window_us=int(round((window_ms or 100.0) * 1000)))
    if not file.exists():
        fail(f"{file}: no such file")
    weights = _resolve_weights(weights, quiet=as_json)
    engine = _load_engine(weights, dtype.value, "auto", quiet=as_json)
    names = [n.strip() for n in engine.config.class_names]
    source = FileSource(str(file), follow)
    live = None
    if not as_json and err.is_terminal:
        from rich.live import Live

        live = Live(console=err, refresh_per_second=8, transient=False)
        live.start()

    def on_window(w):
        if as_json:
            sys.stdout.write(json.dumps(w) + "\n")
            sys.stdout.flush()
        elif live is not None:
            k = w["prediction"]
            live.update(f"t {w['t_start_us'] / 1e6:8.3f}-{w['t_end_us'] / 1e6:8.3f} s  "
                        f"{w['events']:7d} events  prediction {k} "
                        f"{names[k] if k < len(names) else ''}  latency {w['latency_ms']:.1f} ms"
                        f"  backlog {w['backlog_events']}")

    try:
        summary = run_stream(engine, source, spec, follow=follow, realtime=realtime,
                             idle_timeout=idle_timeout, on_window=on_window,
                             sensor_size=_parse_size(sensor_size))
    finally:
        if live is not None:
            live.stop()
    leftover = source.finish()
    for w in source.warnings + ([leftover.message] if leftover.message else []):
        err.print(f"warning: {file}: {w}")
    if as_json:
        sys.stdout.write(json.dumps({"summary": True, **summary}) + "\n")
        return
    k = summary["final_prediction"]
    final = "-" if k is None else f"{k} {names[k] if k < len(names) else ''}"
    err.print(f"{summary['windows']} windows, {summary['events']:,} events, final prediction "
              f"{final}; latency p50 {summary['latency_ms_p50']:.1f} ms, p99 "
              f"{summary['latency_ms_p99']:.1f} ms; compute {summary['compute_s']:.2f} s of "
              f"{summary['wall_s']:.2f} s" + (" (interrupted)" if summary["interrupted"] else ""))


@app.command()
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


@app.command()
@user_errors
def convert(
    input_path: Path = typer.Argument(..., metavar="IN", help="Event recording in any readable "
                                                               "format (detected from its bytes)."),
    output: Path = typer.Argument(..., metavar="OUT", help="File to write: .npy (structured t, x, "
                                                           "y, p) or .h5/.hdf5 (eventformer HDF5 "
                                                           "event file), by extension."),
    start: Optional[int] = typer.Option(None, "--start", help="Keep only events with t >= START "
                                                              "(microseconds)."),
    end: Optional[int] = typer.Option(None, "--end", help="Keep only events with t < END "
                                                          "(microseconds)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
):
    """Convert an event recording to .npy or eventformer's HDF5 event file, exactly.

    Same events in the same order, optionally cut to [--start, --end) microseconds."""
    import numpy as np

    from eventformer.events import EventFileError, EventStream, detect_reader, write_npy
    from eventformer.events.h5events import EventFileWriter
    from eventformer.events.readers import CHUNK_BYTES, no_events

    out_format = {".npy": "npy", ".h5": "h5", ".hdf5": "h5"}.get(output.suffix.lower())
    if out_format is None:
        fail(f"{output}: unknown output format {output.suffix or '(no extension)'!r}; "
             "OUT must end in .npy, .h5 or .hdf5")
    if start is not None and end is not None and end <= start:
        fail(f"--end ({end}) must be greater than --start ({start})")
    if not input_path.exists():
        fail(f"{input_path}: no such file")
    if output.exists():
        if os.path.samefile(input_path, output):
            fail(f"{output}: is the input file; refusing to overwrite it")
        if output.is_dir():
            fail(f"{output}: is a directory")
        if not force:
            fail(f"{output}: already exists; pass --force to overwrite it")
    folder = output.parent
    if not folder.is_dir():
        fail(f"{output}: cannot be written (folder {folder} does not exist)")
    if not os.access(folder, os.W_OK):
        fail(f"{output}: cannot be written (permission denied)")

    def in_range(events):
        if start is None and end is None:
            return events
        t = events["t"]
        keep = np.ones(len(t), dtype=bool)
        if start is not None:
            keep &= t >= start
        if end is not None:
            keep &= t < end
        return events[keep]

    # written beside OUT, then renamed over it: a failed conversion leaves OUT as it was
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    writer, parts, count, warnings = None, [], 0, []
    try:
        with EventStream(input_path) as stream, _progress(err.is_terminal) as progress:
            task = progress.add_task("converting", total=stream.total) if progress else None

            def keep(events):
                nonlocal writer, count
                events = in_range(events)
                if not len(events):
                    return
                count += len(events)
                if out_format == "npy":
                    parts.append(events)
                    return
                if writer is None:  # events follow the header: the sensor size is known by now
                    writer = EventFileWriter(partial, *(stream.sensor_size or (None, None)),
                                             source=f"converted from {input_path.name} "
                                                    f"({stream.format})")
                writer.append(events)  # HDF5 output: memory holds one chunk at a time

            while True:
                before = stream.offset
                keep(stream.read(CHUNK_BYTES))
                if progress:
                    progress.update(task, completed=stream.offset, total=stream.total)
                if stream.offset == before:
                    break
            in_format = stream.format
            leftover = stream.finish()
            if not leftover.header_complete:
                raise EventFileError(f"{input_path}: truncated inside its {in_format} header "
                                     f"({leftover.torn_bytes} bytes and no end of header)")
            keep(leftover.events)
            warnings = stream.warnings + ([leftover.message] if leftover.message else [])
            sensor_size = stream.sensor_size
        if in_format is None:  # an empty file: name it as `read_events` would
            in_format = detect_reader(input_path).name
        if out_format == "npy":
            write_npy(partial, np.concatenate(parts) if parts else no_events())
        elif writer is None:
            EventFileWriter(partial, *(sensor_size or (None, None)),
                            source=f"converted from {input_path.name} ({in_format})").close()
        else:
            writer.close()
        os.replace(partial, output)
    finally:
        if writer is not None:
            writer.close()
        if partial.exists():
            partial.unlink()
    for w in warnings:
        err.print(f"warning: {input_path}: {w}", markup=False, highlight=False)
    err.print(f"converted {count} events (format {in_format} -> {out_format})", markup=False,
              highlight=False)


@app.command()
@user_errors
def train(
    dataset: str = typer.Option("synthetic-gesture", "--dataset",
                                help="Training data: synthetic-gesture (generated once, cached), "
                                     "dvs-gesture (the real set: --data-dir) or tonic:NAME "
                                     "(a tonic dataset in --data-dir)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="DVS Gesture folder [default: $EVENTFORMER_DATA, "
                                                 "then ~/.cache/eventformer/data]."),
    model: str = typer.Option("tiny", "--model", help="Model size: tiny or small."),
    resolution: int = typer.Option(32, "--resolution", help="Input side S: the 128x128 sensor "
                                                           "is downsampled by 128 // S."),
    steps: int = typer.Option(8, "--steps", "-T", min=1, help="Time steps per sample."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Passes over the training set."),
    batch: int = typer.Option(16, "--batch", min=1, help="Mini-batch size."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate (cosine schedule, "
                                                "one warm-up epoch)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay."),
    crops: int = typer.Option(1, "--crops", min=1, help="Training clips per sample (1.45 s; "
                                                        "extra ones at random offsets)."),
    seed: int = typer.Option(0, "--seed", help="Initialisation, order and augmentation seed."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                        help="Use only the first N samples of each split."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="CKPT",
                                          help="Continue from a checkpoint (same settings)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint",
                                              help="Checkpoint file [default: MODEL.ckpt.npz]."),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write (.h5)."),
):
    """Train a small Spikformer on DVS Gesture (or the synthetic set) with the numpy trainer."""
    import time

    from eventformer.datasets import DVS_GESTURE_CLASSES
    from eventformer.train.data import (check_resolution, frame_set, real_training_sets,
                                        synthetic_training_sets)
    from eventformer.train.loop import TrainingInterrupted, model_config
    from eventformer.train.loop import train as run_training
    from eventformer.train.model import CONFIGS

    if model not in CONFIGS:
        fail(f"unknown model {model!r}; known: {', '.join(CONFIGS)}")
    if dataset not in ("synthetic-gesture", "dvs-gesture") and not dataset.startswith("tonic:"):
        fail(f"unknown dataset {dataset!r}; known: synthetic-gesture, dvs-gesture, tonic:NAME")
    check_resolution(resolution, len(CONFIGS[model]["sps_channels"]))
    ckpt = checkpoint or output.with_name(output.name + ".ckpt.npz")
    class_names = DVS_GESTURE_CLASSES
    if dataset == "synthetic-gesture":
        train_set, val_set = synthetic_training_sets(log=lambda m: err.print(m))
    elif dataset == "dvs-gesture":
        train_set, val_set = real_training_sets(data_dir)
    else:
        from eventformer.datasets import TonicSet

        if data_dir is None:
            fail(f"--dataset {dataset} needs --data-dir (where tonic's files for it are)")
        name = dataset.split(":", 1)[1]
        train_set, val_set = TonicSet(name, data_dir, "train"), TonicSet(name, data_dir, "test")
        if not train_set.class_names:
            fail(f"tonic {name} names no classes; cannot size the classifier head")
        class_names = train_set.class_names
    cfg = model_config(model, resolution, steps, len(class_names), tuple(class_names))
    framed = {}
    with _progress(True) as progress:
        for name, data, n_crops in (("train", train_set, crops), ("validation", val_set, 1)):
            total = min(len(data), limit) if limit else len(data)
            task = progress.add_task(f"framing {name}", total=total)
            framed[name] = frame_set(data, resolution, steps, crops=n_crops, seed=seed,
                                     limit=limit,
                                     progress=lambda d, t, task=task: progress.update(
                                         task, completed=d))
    tr, va = framed["train"], framed["validation"]
    if len(tr) < batch:
        fail(f"the training set has only {len(tr)} usable samples, fewer than one batch of "
             f"{batch}: give more data or a smaller --batch")
    err.print(f"{train_set.convention}: {len(tr)} training clips from {train_set.root}, "
              f"{len(va)} validation clips ({val_set.split} split of {val_set.root})")
    err.print(f"model {model}: {resolution}x{resolution} input (128 // {128 // resolution}), "
              f"T {steps}, split_by number, 1.45 s clips; checkpoint {ckpt}")
    command = "eventformer " + " ".join(sys.argv[1:]) if sys.argv else "eventformer train"
    started = time.perf_counter()
    with _progress(True) as progress:
        task = {"id": None}

        def report(info):
            if info["kind"] == "start":
                task["id"] = progress.add_task("epoch", total=info["batches"],
                                               completed=info["batch"])
                progress.update(task["id"], description=f"epoch {info['epoch'] + 1}/"
                                                        f"{info['epochs']}")
                task["epochs"], task["batches"] = info["epochs"], info["batches"]
            elif info["kind"] == "batch":
                progress.update(task["id"], completed=info["batch"],
                                description=f"epoch {info['epoch'] + 1}/{task['epochs']} "
                                            f"loss {info['loss']:.3f}")
            else:
                val = info.get("val_accuracy")
                progress.console.print(
                    f"epoch {info['epoch']}/{task['epochs']}: train loss {info['train_loss']:.4f} "
                    f"acc {info['train_accuracy']:.1%}, val acc "
                    f"{'-' if val is None else f'{val:.1%}'} ({info['seconds']:.1f} s, "
                    f"{info['samples']} samples)")
                if info["epoch"] < task["epochs"]:
                    progress.reset(task["id"], total=task["batches"],
                                   description=f"epoch {info['epoch'] + 1}/{task['epochs']}")

        try:
            result = run_training(cfg, tr, va, epochs=epochs, batch=batch, lr=lr,
                                  weight_decay=weight_decay, seed=seed, out_path=output,
                                  checkpoint_path=ckpt, resume=resume, progress=report,
                                  metadata={"command": command, "dataset": dataset,
                                            "model": model})
        except TrainingInterrupted as exc:
            typer.echo(f"{exc}" + (f"; resume with --resume {exc.checkpoint}"
                                   if exc.checkpoint else ""), err=True)
            raise typer.Exit(code=130)
    err.print(f"[bold]trained[/] {model} for {epochs} epochs in "
              f"{time.perf_counter() - started:.0f} s: train acc "
              f"{result.train_accuracy:.1%}, val acc "
              f"{(result.val_accuracy or 0.0):.1%} -> {output}")


data_app = typer.Typer(help="Datasets: fetch DVS Gesture, generate the synthetic set.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
@user_errors
def data_fetch(
    name: str = typer.Argument(..., help="Dataset to download: dvs-gesture."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="Where to put it [default: ~/.cache/eventformer/"
                                                 "data/dvs-gesture]."),
    split: Optional[str] = typer.Option(None, "--split", help="Only test or train."),
):
    """Download a dataset (resumable, md5-verified); offline, say how to install it by hand."""
    from eventformer.datasets import default_data_dirs
    from eventformer.fetch import fetch_dvs_gesture

    if name != "dvs-gesture":
        fail(f"unknown dataset {name!r}; known: dvs-gesture")
    if split not in (None, "test", "train"):
        fail(f"--split must be test or train, got {split!r}")
    folder = data_dir or default_data_dirs()[-1]
    splits = (split,) if split else ("test", "train")
    with _progress(True) as progress:
        task = progress.add_task("downloading", total=None)

        def report(done, total):
            progress.update(task, completed=done, total=total)

        fetch_dvs_gesture(Path(folder), splits, progress=report)
    err.print(f"DVS Gesture ({', '.join(splits)}) is in {folder}")


@data_app.command("synth")
@user_errors
def data_synth(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the dataset into."),
    seed: int = typer.Option(0, "--seed", help="Everything follows from the seed."),
    users: int = typer.Option(4, "--users", min=2, help="Subjects (the last quarter: test)."),
):
    """Write a synthetic DVS Gesture set (AEDAT 3.1, IBM layout) and compare it with real data."""
    from eventformer.bench.run import default_gesture_dir
    from eventformer.datasets import load_dvs_gesture
    from eventformer.events.synth import compare_to_real, format_comparison, \
        write_synthetic_dataset

    with err.status("generating"):
        summary = write_synthetic_dataset(out, seed=seed, users=users)
    data = load_dvs_gesture("ibm", out, "test", synthetic=True)
    err.print(f"wrote {len(summary.train)} train and {len(summary.test)} test recordings to "
              f"{out} in {summary.seconds:.1f} s ({len(data)} test segments)")
    real = default_gesture_dir()
    if real is not None:
        clips = [ev[ev["t"] < ev["t"][0] + 1_450_000] for _, ev in data.iter_events(33)
                 if len(ev)]
        err.print("statistics of 1.45 s clips against the real DVS Gesture segments:")
        err.print(format_comparison(compare_to_real(sorted(real.glob("*.bs2")), clips)))


if __name__ == "__main__":  # pragma: no cover
    app()
