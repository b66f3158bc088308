"""Architectures assembled from layers."""

from .config import SpikformerConfig, lif_layer_names
from .spikformer import DTYPES, Spikformer

__all__ = ["DTYPES", "Spikformer", "SpikformerConfig", "lif_layer_names"]
