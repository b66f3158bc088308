"""Architectures assembled from layers."""

from .config import SpikformerConfig, lif_layer_names
from .snn import SpikingNet, engine_for
from .spikformer import DTYPES, Spikformer

__all__ = ["DTYPES", "Spikformer", "SpikformerConfig", "SpikingNet", "engine_for",
           "lif_layer_names"]
