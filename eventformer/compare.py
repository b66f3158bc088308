"""Several models in several arithmetics on one labelled set: accuracy, ops, energy, time.

Each (model, arithmetic) pair is one run of :class:`~eventformer.evaluate.Tally`, the same
bookkeeping as :func:`~eventformer.evaluate.evaluate`, so a run's numbers are those ``infer
--dataset`` gives for that model and ``--dtype``. The runs are interleaved sample by sample: each
sample is read once and passed through every engine in turn, so a busy stretch of a shared machine
slows every run alike, and an interrupted comparison covers the same samples in every row.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .datasets import GestureSet, TonicSet
from .errors import EventformerError
from .evaluate import Tally
from .events import Recording
from .inference import classify
from .modelfile.format import attention_operators
from .models import Spikformer, engine_for
from .report import EnergyTable

#: The arithmetics compared when none are given: the float engine and the cheapest integer one.
DEFAULT_DTYPES = ("float32", "int8")
DTYPES = ("float32", "float64", "int16", "int8")

#: The summary keys that describe the data set, not a run: given once at the top level.
_DATASET_KEYS = ("split", "split_convention", "synthetic")


@dataclass
class Run:
    """One model in one arithmetic."""

    model: str  # its label: a shipped model's name or the file's stem
    file: str
    dtype: str
    engine: Spikformer  # or a SpikingNet (a NIR-imported SNN): the same interface


def load_runs(models: Sequence[tuple[str, str | os.PathLike]],
              dtypes: Sequence[str] = DEFAULT_DTYPES, *, path_mode: str = "auto",
              before_warm_up: Callable[[], None] | None = None,
              skipped: list[str] | None = None) -> list[Run]:
    """An engine (kernels loaded) for every model in every arithmetic, model by model.

    Every model file is read, validated and set up before any engine is warmed up (which compiles
    the kernels on a first run: ``before_warm_up()`` is called just before), so a bad file or a
    model an integer mode refuses is one error up front, not a failure halfway through. Given a
    ``skipped`` list (the arithmetics were not the user's choice, e.g. compare's defaults), a
    model that refuses an integer mode (a tau that is not a power of two, real pixels in) runs
    without it instead, and the list gets one sentence saying so."""
    from .layers import PathPolicy
    from .modelfile import load

    if not models:
        raise EventformerError("no model to compare")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise EventformerError(f"unknown arithmetic {bad[0]!r}; known: {', '.join(DTYPES)}"
                               if bad else "no arithmetic to compare")
    runs = []
    for label, path in models:
        model_file = load(path)
        for dtype in dict.fromkeys(dtypes):  # each once, in the order given
            try:
                engine = engine_for(model_file, dtype=dtype, policy=PathPolicy(mode=path_mode))
            except EventformerError as exc:
                if skipped is None or not dtype.startswith("int"):
                    raise
                skipped.append(f"{label} not run in {dtype}: {exc}")
                continue
            runs.append(Run(label, str(path), dtype, engine))
    if before_warm_up is not None:
        before_warm_up()
    for run in runs:
        run.engine.warm_up()
    return runs


def compare(models: Sequence[tuple[str, str | os.PathLike]], data: GestureSet | TonicSet, *,
            dtypes: Sequence[str] = DEFAULT_DTYPES, limit: int | None = None,
            path_mode: str = "auto", runs: list[Run] | None = None,
            on_sample: Callable[[int], None] | None = None, neurobench: bool = False) -> dict:
    """Classify the first ``limit`` samples of ``data`` (every one without it) with each model of
    ``models`` ((label, model file) pairs) in each arithmetic of ``dtypes``.

    ``runs`` (from :func:`load_runs`) skips loading; ``on_sample(n)`` is called after the n-th
    sample has passed through every run. A KeyboardInterrupt ends the comparison: the result then
    covers the samples every run finished and says ``interrupted``. Returns ``{"samples",
    "interrupted", "dataset": {...}, "runs": [{"model", "file", "attention" (every operator of
    its blocks, "token_qk+ssa" for QKFormer), "dtype", "accuracy",
    "ops_per_sample", "engine_ms_per_sample", "energy_table", ...}]}``, one run per (model, dtype)
    in the order given, each with the keys of :func:`~eventformer.evaluate.evaluate`'s summary
    (``ops_per_sample``: ac, mac, dense_mac, sop_paper, energy_uj in µJ priced by the run's own
    arithmetic, lut, shift, compare, attn_entries, attn_nonzero).
    """
    if runs is None:
        runs = load_runs(models, dtypes, path_mode=path_mode)
    tallies = [Tally(run.engine, data, EnergyTable.for_arithmetic(run.dtype)) for run in runs]
    start = time.perf_counter()
    count, interrupted = 0, False
    try:
        for ref, events in data.iter_events(limit):
            rec = Recording(path=ref.name, format=data.layout, events=events,
                            sensor_size=data.sensor_size)
            results = []
            for run, tally in zip(runs, tallies):
                tally.check_label(ref)
                results.append(classify(run.engine, rec, energy=tally.energy,
                                        neurobench=neurobench))
            for tally, result in zip(tallies, results):  # only whole samples count
                tally.add(ref.label, result)
            count += 1
            if on_sample is not None:
                on_sample(count)
    except KeyboardInterrupt:
        interrupted = True
    wall = time.perf_counter() - start
    rows = []
    for run, tally in zip(runs, tallies):
        s = tally.summary(wall, interrupted)
        for key in (*_DATASET_KEYS, "interrupted", "samples_per_s"):  # shared, or not per run
            s.pop(key)
        rows.append({"model": run.model, "file": run.file,
                     "attention": attention_operators(run.engine.config), "dtype": run.dtype,
                     **s})
    return {
        "samples": count,
        "interrupted": interrupted,
        "wall_seconds": wall,
        "dataset": {"split": data.split, "convention": data.convention,
                    "synthetic": data.synthetic, "available": len(data)},
        "runs": rows,
    }
