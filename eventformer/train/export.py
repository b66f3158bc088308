"""Trained numpy parameters -> eventformer :class:`ModelFile` (BatchNorm folded, eval mode).

Folding is done in float64 with :func:`eventformer.modelfile.export.fold_batchnorm` (the same
function as the checkpoint exporter) and the weights are rounded once to ``dtype`` (float32, what
the file stores; float64 keeps an in-memory model exact for comparisons).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..modelfile.export import BN_EPS, fold_batchnorm
from ..modelfile.format import LayerParams, ModelFile
from ..modelfile.schema import layer_specs
from ..models.config import SpikformerConfig

__all__ = ["to_model_file"]


def to_model_file(params: dict[str, np.ndarray], state: dict[str, Any], config: SpikformerConfig,
                  metadata: dict | None = None, dtype=np.float32) -> ModelFile:
    """A validated-shape :class:`ModelFile` from trainer ``params`` / BN ``state`` (official keys).

    ``metadata`` (JSON-serialisable: epochs, dataset, seed, accuracy, ...) is stored under
    ``provenance["training"]``."""
    config = copy.deepcopy(config)
    config.validate()

    def take(key):
        src = state if key.endswith(("running_mean", "running_var")) else params
        if key not in src:
            raise KeyError(f"to_model_file: missing {key!r}")
        arr = np.asarray(src[key], np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"to_model_file: {key} holds NaN or infinite values")
        return arr

    def neuron(spec):
        return {"tau": config.tau, "theta": spec.theta, "v_reset": config.v_reset,
                "decay_input": config.decay_input}

    layers: dict[str, LayerParams] = {}
    for spec in layer_specs(config):
        if spec.kind == "attention":
            layers[spec.name] = LayerParams(spec.name, spec.kind, None, None, **neuron(spec))
            continue
        w = take(f"{spec.source}.weight")
        if spec.kind == "linear":
            w = w.reshape(w.shape[0], w.shape[1])
        if tuple(w.shape) != tuple(spec.weight_shape):
            raise ValueError(f"to_model_file: {spec.source}.weight has shape {w.shape}, "
                             f"expected {spec.weight_shape}")
        b = take(f"{spec.source}.bias") if spec.conv_has_bias else None
        if spec.bn:
            var = take(f"{spec.bn}.running_var")
            if np.any(var < 0):
                raise ValueError(f"to_model_file: {spec.bn}.running_var has negative entries")
            w, b = fold_batchnorm(w, b, take(f"{spec.bn}.weight"), take(f"{spec.bn}.bias"),
                                  take(f"{spec.bn}.running_mean"), var, eps=BN_EPS)
        layers[spec.name] = LayerParams(
            spec.name, spec.kind, np.asarray(w, dtype), np.asarray(b, dtype),
            stride=spec.stride, padding=spec.padding, source=spec.source, **neuron(spec))
    provenance = {"exported_by": "eventformer.train", "bn_eps": BN_EPS,
                  "training": dict(metadata or {})}
    return ModelFile(config, layers, "spikformer", provenance)
