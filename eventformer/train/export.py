"""Trained numpy parameters -> an eventformer :class:`ModelFile`, or an official-layout state dict.

The trainer's parameters and BatchNorm state carry the official checkpoint keys, so they go
through the one model-file builder (:func:`eventformer.modelfile.build.build_model_file`), as a
PyTorch checkpoint does: folding in float64, the weights rounded once to ``dtype`` (float32, what
the file stores; float64 keeps an in-memory model exact for comparisons).

:func:`save_state_dict` writes the same tensors as a plain ``.npz`` of the official keys (what
``torch_successors`` and the official code load, ``{k: torch.from_numpy(v)}``), with the
configuration and the training record beside it in ``<stem>.json``, so that
:func:`model_file_from_state_dict` can build the model file later, for a layout the builder does
not take yet when the training ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EventformerError
from ..modelfile.build import BN_EPS, build_model_file
from ..modelfile.format import ModelFile
from ..models.config import SpikformerConfig

__all__ = ["model_file_from_state_dict", "save_state_dict", "sidecar_path", "to_model_file"]


def to_model_file(params: dict[str, np.ndarray], state: dict[str, Any], config: SpikformerConfig,
                  metadata: dict | None = None, dtype=np.float32) -> ModelFile:
    """A validated-shape :class:`ModelFile` from trainer ``params`` / BN ``state`` (official keys).

    The attention operator is ``config.attention``; its options (DS2TA's T_AW, SAFormer's L)
    come from ``state`` (:func:`eventformer.train.model.attention_options`).
    ``metadata`` (JSON-serialisable: epochs, dataset, seed, accuracy, ...) is stored under
    ``provenance["training"]``, its absolute paths (data folders, ``-o``) cut to names by the
    builder (:func:`eventformer.modelfile.provenance.portable`). A missing, misshapen or non-finite tensor is a
    :class:`~eventformer.errors.CheckpointError` naming it."""
    from .model import attention_options, state_dict

    tensors = state_dict(params, state)  # SPEC §4 keys: nsad_table from NSAD's a..e
    return _build(tensors, config, metadata, dtype, attention_options(state))


def _build(tensors, config, metadata, dtype, options) -> ModelFile:
    provenance = {"exported_by": "eventformer.train", "bn_eps": BN_EPS,
                  "training": dict(metadata or {})}
    return build_model_file(config, tensors, source="trainer parameters", provenance=provenance,
                            dtype=dtype, **options)


def sidecar_path(path) -> Path:
    """Where :func:`save_state_dict` puts the configuration and training record of ``path``."""
    return Path(path).with_suffix(".json")


def save_state_dict(path, params: dict[str, np.ndarray], state: dict[str, Any],
                    config: SpikformerConfig, metadata: dict | None = None) -> Path:
    """Write the official state dict of ``params`` / ``state`` to ``path`` (``.npz``, one array
    per official key, ``num_batches_tracked`` as int64 scalars) and ``{"config", "options",
    "training"}`` to :func:`sidecar_path` (JSON), both atomically. Returns ``path``."""
    from .model import attention_options, state_dict

    path = Path(path)
    if path.suffix != ".npz":
        raise EventformerError(f"{path}: a state dict is written as .npz")
    tensors = state_dict(params, state)
    side = {"format": "eventformer-trained-state-dict", "config": config.to_dict(),
            "options": attention_options(state), "training": metadata or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.savez(f, **tensors)
    os.replace(tmp, path)
    side_path = sidecar_path(path)
    tmp = side_path.with_name(side_path.name + ".partial")
    tmp.write_text(json.dumps(side, indent=1, default=_plain) + "\n")
    os.replace(tmp, side_path)
    return path


def _plain(o):
    return o.item() if hasattr(o, "item") else str(o)


def model_file_from_state_dict(path, dtype=np.float32) -> ModelFile:
    """The model file of a state dict written by :func:`save_state_dict` (its configuration,
    options and training record read from the sidecar JSON). A missing or foreign file is one
    EventformerError sentence; a layout the builder refuses is its CheckpointError."""
    path = Path(path)
    side_path = sidecar_path(path)
    for p in (path, side_path):
        if not p.is_file():
            raise EventformerError(f"{p}: no such file")
    try:
        side = json.loads(side_path.read_text())
        with np.load(path, allow_pickle=False) as z:
            tensors = {k: z[k] for k in z.files}
    except Exception as exc:  # zip or JSON errors: one sentence
        raise EventformerError(f"{path}: not a trained state dict ({type(exc).__name__})") \
            from None
    if not isinstance(side, dict) or side.get("format") != "eventformer-trained-state-dict":
        raise EventformerError(f"{side_path}: not the record of a trained state dict")
    config = SpikformerConfig.from_dict(side["config"])
    return _build(tensors, config, side.get("training"), dtype, side.get("options") or {})
