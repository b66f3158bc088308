"""`eventformer data fetch|synth`: datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err, progress_bar, waiting
from .errors import fail, user_errors


@user_errors
def data_fetch(
    name: str = typer.Argument(..., help="Dataset to download: dvs-gesture."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="Where to put it.",
                                            show_default="~/.cache/eventformer/data/dvs-gesture"),
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
    with progress_bar(True) as progress:
        task = progress.add_task("downloading", total=None)

        def report(done, total):
            progress.update(task, completed=done, total=total)

        fetch_dvs_gesture(Path(folder), splits, progress=report)
    err.print(f"DVS Gesture ({', '.join(splits)}) is in {folder}")


@user_errors
def data_synth(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the dataset into."),
    seed: int = typer.Option(0, "--seed", help="Everything follows from the seed."),
    users: int = typer.Option(4, "--users", min=2, help="Subjects (the last quarter: test)."),
):
    """Write a synthetic DVS Gesture set (AEDAT 3.1, IBM layout) and compare it with real data."""
    from eventformer.bench.run import default_gesture_dir
    from eventformer.datasets import load_dvs_gesture
    from eventformer.events.synth import compare_to_real, format_comparison, write_synthetic_dataset

    err.print(f"generating {users} users x 2 lightings of synthetic gestures into {out} (some "
              "4-8 s per user)", markup=False, highlight=False)
    with waiting("generating"):
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
