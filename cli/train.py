"""`eventformer train`: the numpy trainer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .common import check_number, err, progress_bar, waiting
from .errors import fail, user_errors

# the names and descriptions of eventformer.train.model.MODEL_NAMES (not imported here: the
# trainer loads numba and scipy, and --help should be instant); tests check the two agree
_MODELS = {
    "tiny": "Spikformer, SPS 16-32-64, D 64, 4 heads, 1 block (the shipped models' size)",
    "small": "Spikformer, SPS 32-64-128, D 128, 8 heads, 2 blocks",
    "sdt-tiny": "Spike-driven Transformer v1: MS_SPS 8-16-32-64 (pooling 0111), D 64, 8 heads, "
                "1 membrane-shortcut SDSA block, head LIF",
    "qkformer-tiny": "QKFormer: stem 4-8-16-32 with stride-4 shortcut, 1 token-QK block at "
                     "width 32 (4x4 tokens), patch merging to 64 (2x2 tokens), 1 SSA block",
}
_MODEL_HELP = "Model: " + "; ".join(f"{k} = {v}" for k, v in _MODELS.items()) + \
    " (at a 32x32 input)."


@user_errors
def train(
    dataset: str = typer.Option("synthetic-gesture", "--dataset",
                                help="Training data: synthetic-gesture (generated once, cached), "
                                     "dvs-gesture (the real set: --data-dir) or tonic:NAME "
                                     "(a tonic dataset in --data-dir)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="DVS Gesture folder.",
                                            show_default="$EVENTFORMER_DATA, then "
                                                         "~/.cache/eventformer/data"),
    model: str = typer.Option("tiny", "--model", help=_MODEL_HELP),
    attention: Optional[str] = typer.Option(None, "--attention",
                                            help="A Spikformer's attention operator (SPEC §4): "
                                                 "ssa, ds2ta, ssa_bin or saformer (sdt-tiny and "
                                                 "qkformer-tiny have their own).",
                                            show_default="ssa"),
    taw: Optional[int] = typer.Option(None, "--taw", help="ds2ta only: the TASA window T_AW in "
                                                         "steps.", show_default="3"),
    pool_rows: Optional[int] = typer.Option(None, "--pool-rows",
                                            help="saformer only: rows L of the adaptive token "
                                                 "pooling (a divisor of the token count).",
                                            show_default="4"),
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
                                              help="Checkpoint file.",
                                              show_default="MODEL.ckpt.npz"),
    output: Path = typer.Option(..., "--output", "-o",
                                help="Model file to write (.h5), or the official-layout state "
                                     "dict (.npz, its configuration and training record in "
                                     "the .json beside it)."),
):
    """Train a small Spikformer, Spike-driven Transformer or QKFormer on DVS Gesture (or the
    synthetic set) with the numpy trainer."""
    import time

    from eventformer.train.data import check_resolution, frame_set, training_sets
    from eventformer.train.loop import TrainingInterrupted, check_output, model_config
    from eventformer.train.loop import train as run_training
    from eventformer.train.model import MODEL_NAMES, SUCCESSOR_CONFIGS, input_halvings
    from eventformer.train.progress import TrainingProgress

    check_number("--lr", lr, low=0.0, low_open=True)
    check_number("--weight-decay", weight_decay, low=0.0)
    if model not in MODEL_NAMES:
        fail(f"unknown model {model!r}; known: {', '.join(MODEL_NAMES)}")
    from eventformer.train.attention import OPERATORS

    successor = model in SUCCESSOR_CONFIGS  # its operators are its layout's
    if attention is not None and successor:
        fail(f"--attention picks a Spikformer's operator; {model} has its own")
    attention = attention or "ssa"
    if attention not in OPERATORS:
        fail(f"unknown attention operator {attention!r}; known: {', '.join(OPERATORS)}")
    if taw is not None and attention != "ds2ta":
        fail(f"--taw is a ds2ta option, the attention is {attention}")
    if pool_rows is not None and attention != "saformer":
        fail(f"--pool-rows is a saformer option, the attention is {attention}")
    if taw is not None and taw < 1:
        fail(f"--taw must be at least 1, got {taw}")
    check_resolution(resolution, input_halvings(model))
    # before the data are read: a model file this layout cannot be written as yet
    check_output(model_config(model, resolution, steps,
                              attention=None if successor else attention), output)
    ckpt = checkpoint or output.with_name(output.name + ".ckpt.npz")
    with waiting("reading the data sets"):  # a synthetic set is generated on first use
        train_set, val_set, class_names = training_sets(
            dataset, data_dir, log=lambda m: err.print(m, markup=False, highlight=False))
    cfg = model_config(model, resolution, steps, len(class_names), tuple(class_names),
                       attention=None if successor else attention)
    if pool_rows is not None and (pool_rows < 1 or cfg.tokens % pool_rows):
        fail(f"--pool-rows must divide the {cfg.tokens} tokens of a {resolution}x{resolution} "
             f"input, got {pool_rows}")
    framed = {}
    with progress_bar(True) as progress:
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
    extra = {"ds2ta": f", T_AW {taw or 3}", "saformer": f", L {pool_rows or 4}"}.get(attention, "")
    what = MODEL_NAMES[model] if successor else f"{attention} attention{extra}"
    err.print(f"model {model} ({what}): {resolution}x{resolution} input (128 // "
              f"{128 // resolution}), T {steps}, split_by number, 1.45 s clips; checkpoint {ckpt}")
    command = "eventformer " + " ".join(sys.argv[1:]) if sys.argv else "eventformer train"
    started = time.perf_counter()
    with progress_bar(True) as progress:
        state = TrainingProgress()
        task = progress.add_task("epoch", total=None)

        def report(info):
            line = state.update(info)
            if line is not None:
                progress.console.print(line, markup=False, highlight=False)
            progress.update(task, description=state.description, completed=state.batch,
                            total=state.batches or None)

        try:
            result = run_training(cfg, tr, va, epochs=epochs, batch=batch, lr=lr,
                                  weight_decay=weight_decay, seed=seed, out_path=output,
                                  checkpoint_path=ckpt, resume=resume, progress=report,
                                  metadata={"command": command, "dataset": dataset,
                                            "model": model}, taw=taw, pool_rows=pool_rows)
        except TrainingInterrupted as exc:
            typer.echo(f"{exc}" + (f"; resume with --resume {exc.checkpoint}"
                                   if exc.checkpoint else ""), err=True)
            raise typer.Exit(code=130)
    err.print(f"[bold]trained[/] {model} ({cfg.attention}) for {epochs} epochs in "
              f"{time.perf_counter() - started:.0f} s: train acc "
              f"{result.train_accuracy:.1%}, val acc "
              f"{(result.val_accuracy or 0.0):.1%} -> {output}")
