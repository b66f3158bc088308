"""Configurations of the released layouts that are descriptions, not Spikformer-DVS's shorthand.

Spikformer's static-image models (ZK-Zhou/spikformer ``cifar10/model.py`` with ``cifar10.yml``,
``imagenet/model.py``) take real pixels: the image, normalised, is the first conv's input at every
one of T steps (direct encoding). Their tokenizer is the SPS of the DVS model with max-pools only
where the code has them, and their blocks name and shape their token-wise layers as that code
does. Each function returns a validated :class:`~.config.SpikformerConfig` whose ``layout`` says
so; keyword arguments override the layout's sizes and the configuration's other fields.
"""

from __future__ import annotations

from .config import SpikformerConfig
from .description import spikformer_description


def spikformer_cifar10(*, dim: int = 384, depth: int = 4, heads: int = 12, mlp_ratio: int = 4,
                       image_size: int = 32, **fields) -> SpikformerConfig:
    """Spikformer-4-384 on CIFAR10 (``cifar10.yml``: 4 blocks, dim 384, 12 heads, MLP ratio 4,
    T 4, 32x32): RGB pixels in; SPS widths dim/8, dim/4, dim/2, dim with max-pools after the
    last two stages only (8x8 = 64 tokens); q, k, v, proj, fc1, fc2 are ``nn.Linear`` (keys
    ``*_linear.weight`` [out, in], q/k/v with a bias of their own); scale 0.125; 10 classes
    (CIFAR100's code is the same with 100)."""
    layout = spikformer_description(
        sps_channels=(dim // 8, dim // 4, dim // 2, dim), sps_pool=(False, False, True, True),
        dim=dim, heads=heads, depth=depth, mlp_hidden=mlp_ratio * dim, scale=0.125,
        input="pixels", attn_kernel="linear", mlp_kernel="linear", qkv_bias=True)
    fields = {"in_channels": 3, "num_classes": 10, "steps": 4, **fields}
    config = SpikformerConfig.described(layout, image_size=image_size, **fields)
    config.validate()
    return config


def spikformer_imagenet(*, dim: int = 512, depth: int = 8, heads: int = 8, mlp_ratio: int = 4,
                        image_size: int = 224, **fields) -> SpikformerConfig:
    """Spikformer-8-512 on ImageNet (``imagenet/model.py``'s registered ``spikformer``: 8 blocks,
    dim 512, 8 heads, MLP ratio 4, T 4, 224x224): RGB pixels in; SPS widths dim/8 ... dim, each
    stage max-pooled after its LIF (14x14 = 196 tokens); q, k, v, proj are Conv1d k1
    ([out, in, 1]), fc1, fc2 Conv2d k1 ([out, in, 1, 1]); scale 0.125; 1000 classes."""
    layout = spikformer_description(
        sps_channels=(dim // 8, dim // 4, dim // 2, dim), sps_pool=(True, True, True, True),
        dim=dim, heads=heads, depth=depth, mlp_hidden=mlp_ratio * dim, scale=0.125,
        input="pixels", attn_kernel="conv1d", mlp_kernel="conv2d")
    fields = {"in_channels": 3, "num_classes": 1000, "steps": 4, **fields}
    config = SpikformerConfig.described(layout, image_size=image_size, **fields)
    config.validate()
    return config
