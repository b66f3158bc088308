"""The engine inside NeuroBench's own harness (optional extra ``eventformer[neurobench]``).

NeuroBench's ``Benchmark`` calls ``model(batch)`` on each batch of its data loader and measures
the network through torch hooks and ``model.__net__()``'s parameters. The engine has no torch
modules, so its numbers reach ``Benchmark`` otherwise: :class:`EngineModel` runs each sample on
the engine with its NeuroBench watch on (`eventformer.neurobench_metrics`), and the metric
classes here, named as NeuroBench's own so that ``Benchmark`` reports the same keys, read what
the watch saw and follow NeuroBench's accumulation over batches (per-sample means; activation
sparsity pooled over each batch and weighted by its size)::

    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import ClassificationAccuracy
    from eventformer.neurobench_model import EngineModel, METRIC_LIST

    model = EngineModel.from_file("model.h5")           # or EngineModel(engine)
    static, workload = METRIC_LIST
    results = Benchmark(model, loader, [], [],
                        [static, workload + [ClassificationAccuracy]]).run()

Batches are ``(batch, T, C, H, W)`` or ``(batch, T, C*H*W)`` (torch's flatten order) of integer
event counts per site and step; each sample becomes the engine's T event lists. NeuroBench's
own hook and weight metrics cannot see the engine: giving one of its hook metrics is refused
when the ``Benchmark`` is made.
"""

from __future__ import annotations

import numpy as np

from .errors import EventformerError
from .neurobench_metrics import static_metrics, watch

try:
    import torch
    from neurobench.metrics.abstract import AccumulatedMetric, StaticMetric, WorkloadMetric
    from neurobench.models import NeuroBenchModel
except ImportError as exc:  # the optional extra is missing
    raise EventformerError(
        f"eventformer.neurobench_model needs NeuroBench ({exc.name or exc} is not installed): "
        "pip install 'eventformer[neurobench]'") from exc

__all__ = ["EngineModel", "SynapticOperations", "ActivationSparsity", "MembraneUpdates",
           "Footprint", "ConnectionSparsity", "ParameterCount", "METRIC_LIST", "to_steps"]

_INT32_MAX = np.iinfo(np.int32).max


def to_steps(sample, channels: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One sample of a NeuroBench batch, ``[T, C, H, W]`` or ``[T, C*H*W]`` (channel-major, as
    torch flattens), as the engine's input: per step the sorted flat HWC sites that hold
    events and their counts (int32)."""
    x = sample.detach().cpu().numpy() if isinstance(sample, torch.Tensor) else np.asarray(sample)
    want = (channels, size, size)
    if x.ndim == 2 and x.shape[1] == channels * size * size:
        x = x.reshape(x.shape[0], *want)
    if x.ndim != 4 or x.shape[1:] != want:
        raise EventformerError(
            f"a sample of shape {tuple(x.shape)} does not fit the model: it takes [T, "
            f"{channels}, {size}, {size}] or [T, {channels * size * size}] per sample")
    if not np.issubdtype(x.dtype, np.integer):
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise EventformerError("the engine takes event counts per site and step: the "
                                   "sample holds values that are not integers")
    if x.size and np.abs(x).max() > _INT32_MAX:
        raise EventformerError(f"an event count in the sample exceeds {_INT32_MAX}")
    flat = x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)  # the engine's (y, x, c) order
    steps = []
    for frame in flat:
        idx = np.flatnonzero(frame).astype(np.int32)
        steps.append((idx, frame[idx].astype(np.int32)))
    return steps


class EngineModel(NeuroBenchModel):
    """An eventformer engine (`Spikformer` or `SpikingNet`) as a NeuroBench model.

    ``model(batch)`` runs each sample from rest and returns the predicted classes
    (``[batch]`` int64, the format of classification targets), or with ``output="logits"``
    the engine's logits (``[batch, classes]`` float64; a sequential SNN's are its output
    spike counts). Each call keeps its samples' NeuroBench objects in :attr:`samples` and the
    spiking layers' outputs and non-zero outputs in :attr:`activations`, which this module's
    metrics read."""

    def __init__(self, engine, output: str = "class"):
        super().__init__()
        if output not in ("class", "logits"):
            raise EventformerError(f"output must be 'class' or 'logits', got {output!r}")
        self.engine = engine
        self.output = output
        self.watch = watch(engine)
        self.samples: list[dict] = []
        self.activations: list[tuple[int, int]] = []

    @classmethod
    def from_file(cls, path, *, dtype: str = "float32", output: str = "class") -> "EngineModel":
        """The engine of a model file (`eventformer export` writes them) as a NeuroBench
        model."""
        from .modelfile import load
        from .models import engine_for

        return cls(engine_for(load(path), dtype=dtype), output=output)

    def __call__(self, batch):
        cfg = self.engine.config
        if not hasattr(batch, "shape") or len(batch.shape) < 1:
            raise EventformerError("a NeuroBench batch is a tensor [batch, T, ...]; got "
                                   f"{type(batch).__name__}")
        # every sample is checked before the first runs, so that a bad batch records nothing
        samples = [to_steps(s, cfg.in_channels, cfg.image_size) for s in batch]
        self.samples, self.activations, logits = [], [], []
        for steps in samples:
            self.watch.clear()
            with self.watch:
                logits.append(np.array(self.engine.run(steps), np.float64))
            self.samples.append(self.watch.sample(len(steps)))
            self.activations.append(self.watch.activations(len(steps)))
        scores = torch.from_numpy(np.stack(logits)) if logits else torch.zeros(
            (0, cfg.num_classes), dtype=torch.float64)
        return scores.argmax(dim=1) if self.output == "class" else scores

    def __net__(self):
        """The engine (not a torch module: NeuroBench's own weight metrics cannot read it)."""
        return self.engine

    def register_hooks(self):
        # Benchmark calls this only for metrics that need torch hooks: NeuroBench's own
        raise EventformerError(
            "NeuroBench's own SynapticOperations, ActivationSparsity and MembraneUpdates read "
            "torch hooks, which the engine has none of: give the metrics of "
            "eventformer.neurobench_model (same names) with an EngineModel")


def _engine_model(model) -> EngineModel:
    if not isinstance(model, EngineModel):
        raise EventformerError(f"eventformer's NeuroBench metrics measure an EngineModel, not a "
                               f"{type(model).__name__}: give that model NeuroBench's own")
    return model


class SynapticOperations(AccumulatedMetric):
    """NeuroBench's ``SynapticOperations`` from the engine: effective MACs and ACs and the
    dense count, per sample (mean over the samples run)."""

    KEYS = ("Effective_MACs", "Effective_ACs", "Dense")

    def __init__(self):
        super().__init__(requires_hooks=False)
        self.reset()

    def reset(self):
        self.totals = dict.fromkeys(self.KEYS, 0)
        self.total_samples = 0

    def __call__(self, model, preds, data):
        for sample in _engine_model(model).samples:
            for key in self.KEYS:
                self.totals[key] += sample["SynapticOperations"][key]
        self.total_samples += len(model.samples)
        return self.compute()

    def compute(self):
        if self.total_samples == 0:
            return dict.fromkeys(self.KEYS, 0)
        return {key: self.totals[key] / self.total_samples for key in self.KEYS}


class MembraneUpdates(AccumulatedMetric):
    """NeuroBench's ``MembraneUpdates`` from the engine, per sample (mean over the samples
    run)."""

    def __init__(self):
        super().__init__(requires_hooks=False)
        self.reset()

    def reset(self):
        self.total = self.total_samples = 0

    def __call__(self, model, preds, data):
        self.total += sum(s["MembraneUpdates"] for s in _engine_model(model).samples)
        self.total_samples += len(model.samples)
        return self.compute()

    def compute(self):
        return self.total / self.total_samples if self.total_samples else 0


class ActivationSparsity(WorkloadMetric):
    """NeuroBench's ``ActivationSparsity`` from the engine: zero outputs over all outputs of
    the spiking layers, pooled over the batch (``Benchmark`` weights the batches by size)."""

    def __init__(self):
        super().__init__(requires_hooks=False)

    def __call__(self, model, preds, data):
        acts = _engine_model(model).activations
        outputs = sum(a[0] for a in acts)
        nonzero = sum(a[1] for a in acts)
        return (outputs - nonzero) / outputs if outputs else 0.0


class _Static(StaticMetric):
    def __call__(self, model):
        return static_metrics(_engine_model(model).engine)[type(self).__name__]


class Footprint(_Static):
    """NeuroBench's ``Footprint`` of the engine: bytes of the weights and biases it holds."""


class ConnectionSparsity(_Static):
    """NeuroBench's ``ConnectionSparsity`` of the engine: zero weights over weights (4
    decimals)."""


class ParameterCount(_Static):
    """NeuroBench's ``ParameterCount`` of the engine: its weights and biases."""


#: [static, workload] metric classes, as ``Benchmark``'s ``metric_list`` takes them.
METRIC_LIST = [[Footprint, ConnectionSparsity, ParameterCount],
               [SynapticOperations, ActivationSparsity, MembraneUpdates]]
