"""Layer objects: folded weights and neuron state; ``step(idx, cnt) -> (idx, cnt)``; ``reset()``."""

from .base import PathPolicy, SpikingLayer
from .neurons import LIFNeurons
from .synapses import Conv2dLIF, LinearLIF
from .attention import ATTENTION_OPERATORS, SpikingSelfAttention
from .head import MeanLinearHead

__all__ = [
    "ATTENTION_OPERATORS",
    "Conv2dLIF",
    "LIFNeurons",
    "LinearLIF",
    "MeanLinearHead",
    "PathPolicy",
    "SpikingLayer",
    "SpikingSelfAttention",
]
