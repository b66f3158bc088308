"""`eventformer infer`: classify recordings or a dataset."""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from .common import (
    NEUROBENCH_HELP,
    CENTER_CROP_HELP,
    CROP_HELP,
    PLOT_FORMAT_HELP,
    PLOT_HELP,
    SENSOR_SIZE_HELP,
    WEIGHTS_DEFAULT,
    WEIGHTS_HELP,
    DTYPE_HELP,
    ENERGY_HELP,
    DType,
    Path_,
    SplitBy,
    announce_model,
    check_number,
    err,
    load_engine,
    parse_size,
    plot_options,
    progress_bar,
    report_written,
    resolve_weights,
    waiting,
)
from .errors import STATE, fail, user_errors
from .tables import WIDE_HINT, WIDE_HELP, FitTable
from eventformer.neurobench_metrics import describe as describe_neurobench


@user_errors
def infer(
    files: List[Path] = typer.Argument(None, help="Event recordings (AEDAT 2/3.1/4, EVT 2/3 .raw, "
                                                  "DAT, N-MNIST .bin/.bs2, .npy, .npz, eventformer "
                                                  ".h5); the format is read from the file's bytes "
                                                  "(headerless .bs2/.bin by extension)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help=WEIGHTS_HELP,
                                           show_default=WEIGHTS_DEFAULT),
    dataset: Optional[str] = typer.Option(None, "--dataset",
                                          help="Classify a dataset instead of files "
                                               "(dvs-gesture)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="Where the dataset lives.",
                                            show_default="$EVENTFORMER_DATA, then "
                                                         "~/.cache/eventformer/data; else the "
                                                         "embedded synthetic set"),
    split: str = typer.Option("test", "--split", help="Dataset split: test or train."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                        help="Classify only the first N dataset samples."),
    steps: Optional[int] = typer.Option(None, "--steps", "-T", min=1,
                                        help="Time steps per sample.",
                                        show_default="the model's"),
    split_by: Optional[SplitBy] = typer.Option(None, "--split-by",
                                               help="Framing rule.", show_default="the model's"),
    dtype: DType = typer.Option(DType.float32, "--dtype", help=DTYPE_HELP),
    path: Path_ = typer.Option(Path_.auto, "--path",
                               help="Per-step kernel choice: auto (by input density), or force "
                                    "sparse (event scatter), gather (output-stationary, for "
                                    "the spike-input convolutions) or dense (GEMM)."),
    layers: bool = typer.Option(False, "--layers", help="Print the per-layer table for every "
                                                        "file (always shown for one file)."),
    wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
    neurobench: bool = typer.Option(False, "--neurobench", help=NEUROBENCH_HELP),
    pj_ac: Optional[float] = typer.Option(
        None, "--pj-ac", help=ENERGY_HELP.format(op="accumulate", f=0.9, i16=0.05, i8=0.03),
        show_default="by --dtype"),
    pj_mac: Optional[float] = typer.Option(
        None, "--pj-mac", help=ENERGY_HELP.format(op="multiply-accumulate", f=4.6, i16=3.2,
                                                  i8=0.3), show_default="by --dtype"),
    sensor_size: Optional[str] = typer.Option(None, "--sensor-size", metavar="WxH",
                                              help=SENSOR_SIZE_HELP,
                                              show_default="the header's; else the smallest "
                                                           "well-known sensor holding every "
                                                           "event, said"),
    crop: Optional[str] = typer.Option(None, "--crop", metavar="X,Y,W,H", help=CROP_HELP),
    center_crop: bool = typer.Option(False, "--center-crop", help=CENTER_CROP_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file (or sample, "
                                                       "then a summary) on stdout."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="With --dataset: classify the samples on a local "
                                               "Dask cluster of N worker processes (needs "
                                               "eventformer\\[cluster]).",
                                          show_default="one process, no Dask"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="tcp://HOST:PORT",
                                            help="With --dataset: classify the samples on an "
                                                 "existing Dask cluster.",
                                            show_default="none"),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="DIR",
                                        help=PLOT_HELP + " Per file: its input frames, per-layer "
                                             "firing rates and operations, a spike raster, an "
                                             "attention map; with --dataset: the confusion "
                                             "matrix and per-class accuracy."),
    plot_format: str = typer.Option("png", "--plot-format", metavar="png|svg",
                                     help=PLOT_FORMAT_HELP),
    plot_layer: Optional[str] = typer.Option(None, "--plot-layer", metavar="NAME",
                                             help="The layer whose spike raster is drawn (a "
                                                  "block's layer also picks the attention "
                                                  "map's block).",
                                             show_default="the first block's attn_lif"),
    plot_head: Optional[int] = typer.Option(None, "--plot-head", metavar="H",
                                            help="The attention head drawn.", show_default="0"),
    plot_step: Optional[int] = typer.Option(None, "--plot-step", metavar="T",
                                            help="The time step of the attention map drawn.",
                                            show_default="the step with the most entries"),
):
    """Classify event recordings or a dataset: predictions, per-layer spikes, operations done.

    Files that cannot be classified are named one by one (one line each, and a JSON object with
    an "error" key under --json) while the others are classified; the exit code is then 2."""
    from eventformer.errors import EventformerError
    from eventformer.events import SpatialTransform
    from eventformer.inference import classify_files
    from eventformer.report import EnergyTable

    energy = EnergyTable.for_arithmetic(dtype.value)
    if pj_ac is not None:
        energy.ac_pj = check_number("--pj-ac", pj_ac, low=0.0)
    if pj_mac is not None:
        energy.mac_pj = check_number("--pj-mac", pj_mac, low=0.0)
    framing = {"steps": steps, "split_by": split_by.value if split_by else None,
               "sensor_size": parse_size(sensor_size),
               "transform": SpatialTransform.from_options(crop, center_crop),
               "neurobench": neurobench}
    cluster = _cluster_options(workers, scheduler)
    plots = plot_options(plot, plot_format, plot_layer, plot_head, plot_step)
    if dataset is not None:
        if files:
            fail("give either event files or --dataset, not both")
        if plots and (plot_layer, plot_head, plot_step) != (None, None, None):
            fail("--plot-layer, --plot-head and --plot-step choose the figures of event files; "
                 "with --dataset --plot draws the confusion matrix and per-class accuracy")
        _infer_dataset(dataset, data_dir, split, limit, weights, dtype.value, path.value,
                       energy, framing, as_json, cluster, plots, wide)
        return
    if cluster is not None:
        fail("--workers and --scheduler run a --dataset on Dask; files are classified here")
    if not files:
        fail("give event files to classify (or --dataset dvs-gesture); see --help")
    weights = resolve_weights(weights)
    engine = load_engine(weights, dtype.value, path.value, quiet=as_json)
    plotter = None
    if plots:  # the choices are checked against the model before any file is read
        from eventformer.plots import ClassificationPlotter

        plotter = ClassificationPlotter(engine, plots, steps)
    results, failed, written, interrupted = [], 0, [], False
    with progress_bar(len(files) > 1 and not as_json) as progress, \
            plotter or contextlib.nullcontext():
        task = progress.add_task("classifying", total=len(files)) if progress else None
        try:  # Ctrl-C: the files finished so far are still reported
            for f, r in classify_files(engine, files, energy=energy, keep_frames=bool(plotter),
                                       **framing):
                if progress:
                    progress.advance(task)
                if isinstance(r, EventformerError):  # this file only: the others still count
                    if plotter:
                        plotter.skip()
                    if STATE["debug"]:
                        traceback.print_exception(r)
                    failed += 1
                    err.print(f"error: {r}", markup=False, highlight=False, soft_wrap=True)
                    if as_json:
                        _emit_json({"file": f, "error": str(r)})
                    continue
                for w in r.warnings:
                    err.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
                results.append(r)
                if as_json:
                    _emit_json(r.to_json())
                if plotter:
                    written += plotter.write(r)
        except KeyboardInterrupt:
            interrupted = True
    if results and not as_json:
        announce_model(weights)
        _print_results(results, show_layers=layers or len(results) == 1, wide=wide)
    if plotter:
        if plotter.note:
            err.print(plotter.note, markup=False, highlight=False)
        report_written(written)
    if failed and len(files) > 1:
        err.print(f"{failed} of {len(files)} files could not be classified", markup=False,
                  highlight=False)
    if interrupted:
        err.print(f"interrupted: the results above cover {len(results) + failed} of "
                  f"{len(files)} files", markup=False, highlight=False)
        raise typer.Exit(code=130)
    if failed:
        raise typer.Exit(code=2)


def _emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _cluster_options(workers, scheduler):
    """(workers, scheduler) when the run goes to Dask, else None; Dask must be installed."""
    if workers is None and scheduler is None:
        return None
    if workers is not None and scheduler is not None:
        fail("give either --workers (a local cluster) or --scheduler (an existing one), not both")
    from eventformer.cluster import INSTALL_HINT, have_distributed

    if not have_distributed():
        fail(INSTALL_HINT)
    return workers, scheduler


def _infer_dataset(name, data_dir, split, limit, weights, dtype, path_mode, energy, framing,
                   as_json, cluster=None, plots=None, wide=False) -> None:
    from eventformer.datasets import open_dataset
    from eventformer.evaluate import evaluate

    if split not in ("test", "train"):
        fail(f"--split must be test or train, got {split!r}")
    weights = resolve_weights(weights)
    with waiting("reading the data set"):
        data = open_dataset(name, data_dir, split, synthetic_fallback=True,
                            log=lambda m: err.print(m, markup=False, highlight=False))
    engine = load_engine(weights, dtype, path_mode, quiet=as_json)
    if not as_json:
        announce_model(weights)
    if not data.synthetic:
        err.print(f"{data.convention}: {split} split, {len(data)} samples from {data.root}",
                  markup=False, highlight=False)
    total = min(len(data), limit) if limit else len(data)

    def emit(record, _result):
        if as_json:
            _emit_json(record)
        if progress:
            progress.advance(task)

    if cluster is not None:
        summary = _evaluate_on_cluster(cluster, engine, data, limit, weights, dtype, path_mode,
                                       energy, framing, as_json, total)
    else:
        with progress_bar(not as_json) as progress:
            task = progress.add_task("classifying", total=total) if progress else None
            summary = evaluate(engine, data, limit=limit, energy=energy, on_sample=emit,
                               **framing)
    if as_json:
        _emit_json({"summary": True, **summary})
    elif summary["samples"]:  # (interrupted before the first sample: nothing to tabulate)
        _print_summary(summary, engine.config, wide)
    if plots and summary["samples"]:
        from eventformer.plots import dataset_figures

        where = "embedded synthetic set" if data.synthetic else data.convention
        report_written(dataset_figures(
            summary, engine.config.class_names, plots.outdir, plots.fmt,
            title=f"{name} {split} split ({where}), {Path(weights).name} {dtype}"))
    if summary["interrupted"]:
        err.print(f"interrupted: the results above cover {summary['samples']} of {total} samples")
        raise typer.Exit(code=130)
    if summary.get("failed"):
        err.print(f"{summary['failed']} of {total} samples could not be classified",
                  markup=False, highlight=False)
        raise typer.Exit(code=2)


def _evaluate_on_cluster(cluster, engine, data, limit, weights, dtype, path_mode, energy,
                         framing, as_json, total) -> dict:
    """The samples as Dask tasks; records and summary as the serial run's (see
    eventformer.cluster), each failed sample one error line."""
    from eventformer.cluster import (EngineSpec, cluster_client, evaluate_on_cluster,
                                     warm_workers, worker_count)

    from eventformer.runtime import engine_threads

    workers, scheduler = cluster
    # float32 sums can depend on how many threads the engine splits them over: workers use as
    # many as a serial run here does, so that their results are the serial run's
    spec = EngineSpec(str(Path(weights).resolve()), dtype, path_mode, threads=engine_threads())
    # said in either mode: the start-up is a wait of several seconds
    err.print(f"starting a local Dask cluster of {workers} worker processes: start-up takes "
              "several seconds, which pays off on larger sets (a few dozen samples run faster in "
              "one process, without --workers)" if workers else
              f"connecting to the Dask scheduler at {scheduler}", markup=False, highlight=False)

    def on_error(record):
        err.print(f"error: {record['error']}", markup=False, highlight=False, soft_wrap=True)
        if as_json:
            _emit_json(record)

    try:
        with contextlib.ExitStack() as running:
            with waiting("starting the cluster" if workers else "connecting"):
                client = running.enter_context(cluster_client(workers, scheduler))
                if not as_json and scheduler:
                    err.print(f"{worker_count(client)} workers", markup=False, highlight=False)
                warm_workers(client, spec)  # each worker loads the model once, before the clock
            with progress_bar(not as_json) as progress:
                task = progress.add_task("classifying", total=total) if progress else None
                return evaluate_on_cluster(
                    client, spec, engine, data, limit=limit, energy=energy,
                    on_sample=(lambda record, _r: _emit_json(record)) if as_json else None,
                    on_error=on_error,
                    on_done=(lambda: progress.advance(task)) if progress else None, **framing)
    except KeyboardInterrupt:  # while the cluster started: no sample was classified
        from eventformer.evaluate import Tally

        return {**Tally(engine, data, energy).summary(0.0, interrupted=True), "failed": 0}


def _print_summary(s: dict, config, wide: bool = False) -> None:
    names = [n.strip() for n in config.class_names] or [str(k) for k in range(config.num_classes)]
    err.print(f"[bold]accuracy {s['accuracy']:.2%}[/] ({s['correct']}/{s['samples']}), "
              f"{s['split']} split, {s['split_convention']}")
    err.print(f"throughput {s['samples_per_s']:.2f} samples/s, {s['events_per_s']:.3g} events/s "
              f"(engine time {s['engine_seconds']:.1f} s)")
    o = s["ops_per_sample"]
    err.print(f"per sample: AC {o['ac']:.3g}, MAC {o['mac']:.3g}, dense MAC {o['dense_mac']:.3g}, "
              f"energy {o['energy_uj']:.3g} uJ (counted), SOP {o['sop_paper']:.3g} (paper)")
    err.print(_arithmetic_line(s["energy_table"]), markup=False, highlight=False)
    if s.get("neurobench"):
        err.print(f"per sample, {describe_neurobench(s['neurobench'])}", markup=False,
                  highlight=False)
    _confusion_table(s, names, err.width).print(err, wide=True)
    lt = FitTable("per layer, mean per sample", more_hint=WIDE_HINT)
    lt.add_column("layer", left=True, key=True)
    for c in ("spikes", "AC", "MAC", "dense MAC"):
        lt.add_column(c, essential=c != "dense MAC")
    for row in s["layers_per_sample"]:
        lt.add_row(row["name"], f"{row['spikes']:.4g}", f"{row['ac']:.4g}", f"{row['mac']:.4g}",
                   f"{row['dense_mac']:.4g}")
    lt.print(err, wide)


def _confusion_table(s: dict, names: list[str], width: int) -> FitTable:
    """The confusion matrix with each row's class name beside its number when that fits the
    width in one table, else numbers only and the names listed under it (a matrix split across
    two tables is unreadable); it continues below only when even that does not fit."""
    for with_names in (True, False):
        t = FitTable("confusion matrix (rows: label, columns: prediction) and per-class "
                     "accuracy")
        t.add_column("label", key=True)
        if with_names:
            t.add_column("class", left=True, essential=True)
        for k in range(len(s["confusion"])):
            t.add_column(str(k), essential=True)
        t.add_column("accuracy", essential=True)
        for k, row in enumerate(s["confusion"]):
            acc = s["per_class_accuracy"].get(k)
            name = [names[k] if k < len(names) else ""] if with_names else []
            t.add_row(str(k), *name, *[str(v) for v in row], "-" if acc is None else f"{acc:.0%}")
        if with_names and len(t.layout(width).groups) == 1:
            return t
    # "k=name": a number is never wrapped away from its name
    t.caption = "classes: " + ", ".join(f"{k}={names[k]}" for k in range(len(s["confusion"]))
                                        if k < len(names))
    return t


def _arithmetic_line(e: dict) -> str:
    from eventformer.report import energy_sentence

    return energy_sentence(e)


def _print_results(results, show_layers: bool, wide: bool = False) -> None:
    table = FitTable("eventformer infer", more_hint=WIDE_HINT)
    table.add_column("file", left=True, key=True)
    table.add_column("events", priority=2)
    table.add_column("T", priority=4)
    table.add_column("prediction", essential=True)
    table.add_column("class", left=True, essential=True)
    table.add_column("top logit", priority=1)
    table.add_column("time s", priority=3)
    for col in ("AC", "MAC", "energy uJ"):
        table.add_column(col, essential=True)
    for r in results:
        table.add_row(Path(r.file).name, f"{r.events:,}", str(r.steps), str(r.prediction),
                      r.class_name, f"{float(r.logits.max()):.4f}", f"{r.seconds:.3f}",
                      f"{r.ops['ac']:,}", f"{r.ops['mac']:,}", f"{r.ops['energy_uj']:.2f}")
    table.print(err, wide)
    err.print(_arithmetic_line(results[0].ops["energy_table"]), markup=False, highlight=False)
    for r in results:
        if r.neurobench:
            err.print(f"{Path(r.file).name}: {describe_neurobench(r.neurobench)}", markup=False,
                      highlight=False)
    if show_layers:
        for r in results:
            _layer_table(r).print(err, wide)


#: The attention operators' own counters (columns shown when the model does any such work).
_ATTENTION_COLUMNS = (("lut", "LUT"), ("shift", "shift"), ("compare", "compare"),
                      ("attn_entries", "attn entries"), ("attn_nonzero", "attn non-zero"),
                      ("mask", "mask"), ("maxima", "maxima"))


def _layer_table(r) -> FitTable:
    o = r.ops
    extra = [(k, header) for k, header in _ATTENTION_COLUMNS if o[k]]
    t = FitTable(f"{Path(r.file).name}: per layer, attention {r.attention} (AC/MAC counted by "
                 "the kernels; SOP = paper estimate fr x T x FLOPs)",
                 caption=f"total AC {o['ac']:,}, MAC {o['mac']:,}, dense MAC {o['dense_mac']:,}, "
                 + "".join(f"{header} {o[k]:,}, " for k, header in extra)
                 + f"energy {o['energy_uj']:.2f} uJ (counted) / {o['energy_uj_paper']:.2f} uJ "
                 f"(paper estimate), SOP {o['sop_paper']:.3g}", more_hint=WIDE_HINT)
    # essential: what fired and what it cost; then what explains the path, then the rest
    t.add_column("layer", left=True, key=True)
    t.add_column("neurons", priority=2)
    t.add_column("spikes", essential=True)
    t.add_column("rate", essential=True)
    t.add_column("in density", priority=0)
    t.add_column("path", left=True, essential=True)
    t.add_column("AC", essential=True)
    t.add_column("MAC", essential=True)
    t.add_column("dense MAC", priority=1)
    for n, (_, header) in enumerate(extra):
        t.add_column(header, priority=3 + n)
    t.add_column("SOP (paper)", priority=3 + len(extra))
    for row in r.layers:
        t.add_row(row["name"], f"{row['neurons']:,}", f"{row['spikes']:,}",
                  f"{row['firing_rate']:.3f}", f"{row['input_density']:.3f}", row["path"],
                  f"{row['ac']:,}", f"{row['mac']:,}", f"{row['dense_mac']:,}",
                  *[f"{row[k]:,}" for k, _ in extra], f"{row['sop_paper']:.3g}")
    return t
