"""Classify a labelled dataset: accuracy, confusion matrix, throughput and ops per sample."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .datasets import GestureSet, TonicSet
from .events import Recording, SpatialTransform
from .inference import Classification, classify
from .models import Spikformer
from .report import EnergyTable


def evaluate(engine: Spikformer, data: GestureSet | TonicSet, *, limit: int | None = None,
             steps: int | None = None, split_by: str | None = None,
             energy: EnergyTable | None = None, sensor_size: tuple[int, int] | None = None,
             transform: SpatialTransform | None = None,
             on_sample: Callable[[dict, Classification], None] | None = None) -> dict:
    """Run every sample (or the first ``limit``); ``on_sample(record, result)`` after each.

    A KeyboardInterrupt stops the run between or inside samples: the summary then covers the
    samples finished before it and says ``interrupted``."""
    n_classes = engine.config.num_classes
    confusion = np.zeros((n_classes, n_classes), np.int64)
    totals = {"events": 0, "seconds": 0.0, "ac": 0, "mac": 0, "dense_mac": 0,
              "energy_uj": 0.0, "sop_paper": 0.0}
    layer_sums: dict[str, dict] = {}
    start = time.perf_counter()
    count = 0
    interrupted = False
    try:  # Ctrl-C ends the run early; what was classified until then is still summarised
        for ref, events in data.iter_events(limit):
            if ref.label >= n_classes:
                from .errors import EventformerError

                raise EventformerError(f"{ref.name}: label {ref.label} but the model has only "
                                       f"{n_classes} classes")
            rec = Recording(path=ref.name, format=data.layout, events=events,
                            sensor_size=data.sensor_size)
            result = classify(engine, rec, steps=steps, split_by=split_by, energy=energy,
                              sensor_size=sensor_size, transform=transform)
            confusion[ref.label, result.prediction] += 1
            count += 1
            totals["events"] += result.events
            totals["seconds"] += result.seconds
            for key in ("ac", "mac", "dense_mac", "energy_uj", "sop_paper"):
                totals[key] += result.ops[key]
            for row in result.layers:
                acc = layer_sums.setdefault(row["name"], {"spikes": 0, "ac": 0, "mac": 0,
                                                          "dense_mac": 0})
                for key in acc:
                    acc[key] += row[key]
            if on_sample is not None:
                record = result.to_json()
                record.update({"label": ref.label, "sample": {"recording": ref.source,
                                                              "segment": ref.segment,
                                                              "name": ref.name}})
                on_sample(record, result)
    except KeyboardInterrupt:
        interrupted = True
    wall = time.perf_counter() - start
    correct = int(np.trace(confusion))
    per_class = {}
    for k in range(n_classes):
        n = int(confusion[k].sum())
        if n:
            per_class[k] = float(confusion[k, k] / n)
    return {
        "accuracy": correct / count if count else 0.0,
        "interrupted": interrupted,
        "arithmetic": engine.arithmetic,
        "energy_table": (energy or EnergyTable.for_arithmetic(engine.arithmetic)).describe(),
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
        "ops_total": {k: totals[k] for k in ("ac", "mac", "dense_mac", "sop_paper", "energy_uj")},
        "ops_per_sample": {k: (totals[k] / count if count else 0.0)
                           for k in ("ac", "mac", "dense_mac", "sop_paper", "energy_uj")},
        "layers_per_sample": [{"name": name, **{k: v / count for k, v in acc.items()}}
                              for name, acc in layer_sums.items()] if count else [],
    }
