"""Layer objects: folded weights and neuron state; ``step(idx, cnt) -> (idx, cnt)``; ``reset()``."""

from .base import EMPTY, PathPolicy, SpikingLayer, add_events, ones
from .neurons import LIFNeurons
from .synapses import Conv2dLIF, LinearLIF, TasaLinearLIF
from .attention import ATTENTION_OPERATORS, SpikingSelfAttention
from . import successors  # noqa: F401  (registers the successors' attention operators)
from .head import MeanLinearHead

__all__ = [
    "ATTENTION_OPERATORS",
    "EMPTY",
    "Conv2dLIF",
    "LIFNeurons",
    "LinearLIF",
    "MeanLinearHead",
    "PathPolicy",
    "SpikingLayer",
    "SpikingSelfAttention",
    "TasaLinearLIF",
    "add_events",
    "ones",
]
