"""The HDF5 model file (schema, load with validation, save) and PyTorch checkpoint export."""

from .format import FORMAT_VERSION, LayerParams, ModelFile, load, save
from .schema import LayerSpec, layer_specs

__all__ = ["FORMAT_VERSION", "LayerParams", "LayerSpec", "ModelFile", "layer_specs", "load", "save"]
