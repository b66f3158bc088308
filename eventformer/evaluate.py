"""Classify a labelled dataset: accuracy, confusion matrix, throughput and ops per sample."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .datasets import GestureSet, TonicSet
from .events import Recording, SpatialTransform
from .inference import Classification, classify
from .models import Spikformer
from .neurobench_metrics import mean_per_sample
from .report import ATTENTION_COUNTERS, EnergyTable

#: The op counts summed over samples and reported per sample (the counted work, the paper
#: estimate, the energy, and the attention operators' own work).
OPS_KEYS = ("ac", "mac", "dense_mac", "sop_paper", "energy_uj", *ATTENTION_COUNTERS)


class Tally:
    """What a run over labelled samples adds up: the confusion matrix, events, engine time, ops
    and per-layer sums of one engine. ``add`` each sample's result, then ``summary``."""

    def __init__(self, engine: Spikformer, data: GestureSet | TonicSet,
                 energy: EnergyTable | None = None):
        self.engine, self.data, self.energy = engine, data, energy
        n_classes = engine.config.num_classes
        self.confusion = np.zeros((n_classes, n_classes), np.int64)
        self.totals = {"events": 0, "seconds": 0.0, **{k: 0 for k in OPS_KEYS}}
        self.layer_sums: dict[str, dict] = {}
        self.neurobench: list[dict] = []  # each sample's NeuroBench metrics
        self.count = 0

    def check_label(self, ref) -> None:
        n_classes = self.engine.config.num_classes
        if ref.label >= n_classes:
            from .errors import EventformerError

            raise EventformerError(f"{ref.name}: label {ref.label} but the model has only "
                                   f"{n_classes} classes")

    def add(self, label: int, result: Classification) -> None:
        self.confusion[label, result.prediction] += 1
        self.count += 1
        self.totals["events"] += result.events
        self.totals["seconds"] += result.seconds
        if result.neurobench is not None:
            self.neurobench.append(result.neurobench)
        for key in OPS_KEYS:
            self.totals[key] += result.ops[key]
        for row in result.layers:
            acc = self.layer_sums.setdefault(row["name"], {"spikes": 0, "ac": 0, "mac": 0,
                                                           "dense_mac": 0})
            for key in acc:
                acc[key] += row[key]

    def summary(self, wall: float, interrupted: bool = False) -> dict:
        """The summary of the samples added so far (``wall``: seconds the run took)."""
        engine, data, totals, count = self.engine, self.data, self.totals, self.count
        confusion = self.confusion
        correct = int(np.trace(confusion))
        per_class = {}
        for k in range(engine.config.num_classes):
            n = int(confusion[k].sum())
            if n:
                per_class[k] = float(confusion[k, k] / n)
        energy = self.energy or EnergyTable.for_arithmetic(engine.arithmetic)
        return {
            "accuracy": correct / count if count else 0.0,
            "interrupted": interrupted,
            "arithmetic": engine.arithmetic,
            "energy_table": energy.describe(),
            "samples": count,
            "correct": correct,
            "split": data.split,
            "split_convention": data.convention,
            "synthetic": data.synthetic,
            "per_class_accuracy": per_class,
            "confusion": confusion.tolist(),
            "samples_per_s": count / wall if wall else 0.0,
            "events_per_s": totals["events"] / totals["seconds"] if totals["seconds"] else 0.0,
            "engine_seconds": totals["seconds"],
            "engine_ms_per_sample": 1000.0 * totals["seconds"] / count if count else 0.0,
            "ops_total": {k: totals[k] for k in OPS_KEYS},
            "ops_per_sample": {k: (totals[k] / count if count else 0.0) for k in OPS_KEYS},
            # NeuroBench's metrics (when asked for), each the mean per sample (NeuroBench's
            # dataset figures)
            **({"neurobench": mean_per_sample(self.neurobench)} if self.neurobench else {}),
            "layers_per_sample": [{"name": name, **{k: v / count for k, v in acc.items()}}
                                  for name, acc in self.layer_sums.items()] if count else [],
        }


def sample_record(ref, result: Classification) -> dict:
    """One sample's JSON record: the ``infer`` keys plus its label and where it came from."""
    record = result.to_json()
    record.update({"label": ref.label, "sample": {"recording": ref.source,
                                                  "segment": ref.segment, "name": ref.name}})
    return record


def evaluate(engine: Spikformer, data: GestureSet | TonicSet, *, limit: int | None = None,
             steps: int | None = None, split_by: str | None = None,
             energy: EnergyTable | None = None, sensor_size: tuple[int, int] | None = None,
             transform: SpatialTransform | None = None,
             on_sample: Callable[[dict, Classification], None] | None = None,
             neurobench: bool = False) -> dict:
    """Run every sample (or the first ``limit``); ``on_sample(record, result)`` after each.

    A KeyboardInterrupt stops the run between or inside samples: the summary then covers the
    samples finished before it and says ``interrupted``."""
    tally = Tally(engine, data, energy)
    start = time.perf_counter()
    interrupted = False
    try:  # Ctrl-C ends the run early; what was classified until then is still summarised
        for ref, events in data.iter_events(limit):
            tally.check_label(ref)
            rec = Recording(path=ref.name, format=data.layout, events=events,
                            sensor_size=data.sensor_size)
            result = classify(engine, rec, steps=steps, split_by=split_by, energy=energy,
                              sensor_size=sensor_size, transform=transform,
                              neurobench=neurobench)
            tally.add(ref.label, result)
            if on_sample is not None:
                on_sample(sample_record(ref, result), result)
    except KeyboardInterrupt:
        interrupted = True
    return tally.summary(time.perf_counter() - start, interrupted)
