"""Trained numpy parameters -> eventformer :class:`ModelFile` (BatchNorm folded, eval mode).

The trainer's parameters and BatchNorm state carry the official checkpoint keys, so they go
through the one model-file builder (:func:`eventformer.modelfile.build.build_model_file`), as a
PyTorch checkpoint does: folding in float64, the weights rounded once to ``dtype`` (float32, what
the file stores; float64 keeps an in-memory model exact for comparisons).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..modelfile.build import BN_EPS, build_model_file
from ..modelfile.format import ModelFile
from ..models.config import SpikformerConfig

__all__ = ["to_model_file"]


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
    provenance = {"exported_by": "eventformer.train", "bn_eps": BN_EPS,
                  "training": dict(metadata or {})}
    return build_model_file(config, tensors, source="trainer parameters", provenance=provenance,
                            dtype=dtype, **attention_options(state))
