"""`eventformer compare`: several models, several arithmetics, one labelled set, one table."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .common import (
    NEUROBENCH_HELP,
    PLOT_FORMAT_HELP,
    PLOT_HELP,
    DType,
    err,
    note_if_slow,
    plot_options,
    progress_bar,
    report_written,
    resolve_models,
    waiting,
)
from .errors import fail, user_errors
from .tables import WIDE_HELP, WIDE_HINT, FitTable


@user_errors
def compare(
    weights: Optional[List[Path]] = typer.Option(
        None, "--weights", "-w", metavar="MODEL",
        help="A model to compare: a model file (.h5) or a shipped model's name (ssa, ds2ta, "
             "ssa_bin, saformer); repeat for each.",
        show_default="every shipped model installed"),
    dtype: Optional[List[DType]] = typer.Option(
        None, "--dtype", metavar="DTYPE",
        help="An arithmetic to run each model in (float32, float64, int16, int8); repeat for "
             "each.", show_default="float32 and int8"),
    dataset: str = typer.Option("dvs-gesture", "--dataset",
                                help="Labelled set: dvs-gesture (the embedded synthetic set when "
                                     "no data is found), synthetic-gesture or tonic:NAME."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the dataset lives.",
                                            show_default="$EVENTFORMER_DATA, then "
                                                         "~/.cache/eventformer/data; else the "
                                                         "embedded synthetic set"),
    split: str = typer.Option("test", "--split", help="Dataset split: test or train."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                        help="Use only the first N samples.",
                                        show_default="every sample"),
    as_json: bool = typer.Option(False, "--json", help="The raw numbers as one JSON object on "
                                                       "stdout."),
    wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
    neurobench: bool = typer.Option(False, "--neurobench", help=NEUROBENCH_HELP),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="DIR",
                                        help=PLOT_HELP + " compare.png: accuracy vs energy per "
                                             "sample, one point per model and arithmetic."),
    plot_format: str = typer.Option("png", "--plot-format", metavar="png|svg",
                                     help=PLOT_FORMAT_HELP),
):
    """Compare models on the same labelled samples: accuracy, operations, energy and engine time
    per sample, per model and arithmetic, in one table.

    Energy prices the counted accumulates and multiplies with each arithmetic's own 45 nm table.
    Ctrl-C prints the table of the samples finished so far (exit code 130)."""
    from eventformer.compare import DEFAULT_DTYPES, load_runs
    from eventformer.compare import compare as run_compare
    from eventformer.datasets import open_dataset
    from eventformer.runtime import kernels_cached

    if split not in ("test", "train"):
        fail(f"--split must be test or train, got {split!r}")
    plots = plot_options(plot, plot_format)
    models = resolve_models(weights)
    dtypes = [d.value for d in dtype] if dtype else list(DEFAULT_DTYPES)
    slow = contextlib.ExitStack()

    def compiling():
        if not kernels_cached():
            if not as_json:
                err.print("first run: compiling the engine's kernels (about 10-20 s, cached "
                          "afterwards)")
        else:  # the cache check knows float32's kernels only: another arithmetic may compile
            slow.enter_context(note_if_slow(
                f"loading the engine's kernels for {', '.join(dict.fromkeys(dtypes))} (compiled "
                "on the first use of an arithmetic, about 20 s each; cached afterwards)"))

    # every model file is checked before the data is read; an integer mode a model refuses is
    # skipped (and said) unless the user named both the models and the arithmetics
    skipped = None if dtype and weights else []
    with slow:
        runs = load_runs(models, dtypes, before_warm_up=compiling, skipped=skipped)
    for line in skipped or ():
        err.print(line, markup=False, highlight=False)
    with waiting("reading the data set"):
        data = open_dataset(dataset, data_dir, split, synthetic_fallback=True,
                            log=lambda m: err.print(m, markup=False, highlight=False))
    if not data.synthetic:
        err.print(f"{data.convention}: {split} split, {len(data)} samples from {data.root}",
                  markup=False, highlight=False)
    total = min(len(data), limit) if limit else len(data)
    with progress_bar(not as_json) as progress:
        task = (progress.add_task(f"{len(models)} models x {len(dict.fromkeys(dtypes))} "
                                  "arithmetics", total=total) if progress else None)
        result = run_compare(models, data, limit=limit, runs=runs, neurobench=neurobench,
                             on_sample=(lambda n: progress.advance(task)) if progress else None)
    result["skipped"] = skipped or []
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print_table(result, wide)
    if plots and result["samples"]:
        from eventformer.plots import compare_figure

        report_written([compare_figure(result, plots.outdir, plots.fmt)])
    if result["interrupted"]:
        err.print(f"interrupted: the table covers {result['samples']} of {total} samples")
        raise typer.Exit(code=130)


#: (column, key in a run's ops_per_sample)
_OPS_COLUMNS = (("AC", "ac"), ("MAC", "mac"), ("attn entries", "attn_entries"),
                ("attn non-zero", "attn_nonzero"), ("LUT", "lut"), ("shift", "shift"),
                ("compare", "compare"))


def print_table(result: dict, wide: bool = False) -> None:
    d = result["dataset"]
    where = "embedded synthetic set" if d["synthetic"] else d["convention"]
    n = result["samples"]
    prices = dict.fromkeys(f"{r['dtype']} {r['energy_table']['ac_pj']:g}/"
                           f"{r['energy_table']['mac_pj']:g}" for r in result["runs"])
    t = FitTable(f"eventformer compare: {n} sample{'' if n == 1 else 's'} of the "
                 f"{d['split']} split ({where}), per sample",
                 caption="AC, MAC: accumulates and multiply-accumulates the kernels counted; "
                 "attention entries formed and left non-zero, look-ups, shifts and compares: "
                 "the attention operators' own work; energy: AC and MAC priced with each "
                 f"arithmetic's 45 nm table (pJ per AC/MAC: {', '.join(prices)}); engine ms: "
                 "compute time of the engine alone", more_hint=WIDE_HINT)
    # a row is a (model, arithmetic); what it scored and cost comes first, the attention
    # operators' own counters when they fit
    t.add_column("model", left=True, key=True)
    t.add_column("attention", left=True, priority=0)
    t.add_column("dtype", left=True, key=True)
    t.add_column("accuracy", essential=True)
    for n_col, (col, _) in enumerate(_OPS_COLUMNS):
        t.add_column(col, essential=col in ("AC", "MAC"), priority=1 + n_col)
    t.add_column("energy uJ", essential=True)
    t.add_column("engine ms", essential=True)
    for r in result["runs"]:
        o = r["ops_per_sample"]
        numbers = ([f"{r['accuracy']:.1%}", *[f"{o[k]:.4g}" for _, k in _OPS_COLUMNS],
                    f"{o['energy_uj']:.4g}", f"{r['engine_ms_per_sample']:.1f}"]
                   if r["samples"] else ["-"] * (len(_OPS_COLUMNS) + 3))
        t.add_row(r["model"], r["attention"], r["dtype"], *numbers)
    t.print(err, wide)
    files = dict.fromkeys(f"{r['model']} = {r['file']}" for r in result["runs"])
    err.print("models: " + "; ".join(files), markup=False, highlight=False)
