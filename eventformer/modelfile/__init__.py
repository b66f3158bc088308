"""The HDF5 model file (schema, load with validation, save), the one builder that assembles
every model file from checkpoint tensors, and PyTorch checkpoint export."""

from .build import build_model_file, detect_attention
from .format import (
                     FORMAT_VERSION,
                     AttentionParams,
                     LayerParams,
                     ModelFile,
                     attention_summary,
                     load,
                     save,
)
from .schema import ATTENTION_NAMES, LayerSpec, layer_specs

__all__ = ["ATTENTION_NAMES", "FORMAT_VERSION", "AttentionParams", "LayerParams", "LayerSpec",
           "ModelFile", "attention_summary", "build_model_file", "detect_attention", "layer_specs",
           "load", "save"]
