"""Configurations of the released layouts that are descriptions, not Spikformer-DVS's shorthand.

The Spike-driven Transformer v1 (BICLab/Spike-Driven-Transformer ``model/spikeformer.py``): MS_SPS
whose real ``x_feat`` + RPE feeds membrane-shortcut blocks of SDSA and a MLP of Conv2d k1 layers,
``head_lif`` before the Linear head (:func:`sdt_description`).

QKFormer's DVS models (zhouchenlin2096/QKFormer ``dvs128-gesture/model.py``,
``cifar10-dvs/model.py``) are a two-stage hierarchy: PatchEmbedInit, token QK blocks, patch
merging, Spikformer-style blocks (:func:`qkformer_description`).

Spikformer's static-image models (ZK-Zhou/spikformer ``cifar10/model.py`` with ``cifar10.yml``,
``imagenet/model.py``) take real pixels: the image, normalised, is the first conv's input at every
one of T steps (direct encoding). Their tokenizer is the SPS of the DVS model with max-pools only
where the code has them, and their blocks name and shape their token-wise layers as that code
does. Each function returns a validated :class:`~.config.SpikformerConfig` whose ``layout`` says
so; keyword arguments override the layout's sizes and the configuration's other fields.
"""

from __future__ import annotations

from .config import SpikformerConfig
from .description import (BlockStage, Description, qkformer_patch_embed_init,
                          qkformer_patch_embedding_stage, sdt_sps, spikformer_description)


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


def qkformer_description(dim: int, heads: int, stage1_depth: int = 1, stage2_depth: int = 1, *,
                         mlp_ratio: float = 4, scale: float = 0.125,
                         mlp_hidden: tuple[int, int] | None = None) -> Description:
    """QKFormer's DVS layout (``vit_snn`` in ``dvs128-gesture/model.py``) as a description.

    ``patch_embed1`` (PatchEmbedInit, width ``dim // 2``: stem dim/16, dim/8, dim/4, dim/2 with
    max-pools before the LIFs and the stride-4 1x1 shortcut), ``stage1_depth`` blocks
    ``stage1.{i}`` (``tssa``: token QK attention, no scale of its own: 1), ``patch_embed2``
    (PatchEmbeddingStage to ``dim``, half the grid, stride-2 1x1 shortcut), ``stage2_depth``
    blocks ``stage2.{i}`` (``ssa``: Spikformer's attention at ``scale``, 0.125 in the code).
    q, k, v and proj are Conv1d k1 (``[C, C, 1]``), the MLPs ``mlp1`` / ``mlp2`` Conv2d k1 with
    bias. Both stages have ``heads`` heads: the code has one number (16) for both. The hidden
    widths are ``int(width * mlp_ratio)`` per stage (the code's rule), or ``mlp_hidden``
    (stage 1's, stage 2's) as a checkpoint's tensors show them."""
    half = dim // 2
    h1, h2 = mlp_hidden or (int(half * mlp_ratio), int(dim * mlp_ratio))
    return Description((
        BlockStage(stage1_depth, half, heads, h1, "token_qk", 1.0,
                   embed=qkformer_patch_embed_init(half), prefix="stage1", attn="tssa",
                   mlp_layers=("mlp1", "mlp2"), attn_kernel="conv1d", mlp_kernel="conv2d"),
        BlockStage(stage2_depth, dim, heads, h2, "ssa", scale,
                   embed=qkformer_patch_embedding_stage(dim), prefix="stage2", attn="ssa",
                   mlp_layers=("mlp1", "mlp2"), attn_kernel="conv1d", mlp_kernel="conv2d"),
    ))


def qkformer_gesture(*, dim: int = 256, heads: int = 16, stage1_depth: int = 1,
                     stage2_depth: int = 1, mlp_ratio: float = 4, scale: float = 0.125,
                     image_size: int = 128, **fields) -> SpikformerConfig:
    """QKFormer on DVS128 Gesture (``dvs128-gesture/model.py``'s registered ``QKFormer`` with
    ``train.py``'s defaults): 128x128 input, embed_dims 256 (stage 1 at 128 on 16x16 = 256
    tokens; stage 2 at 256 on 8x8 = 64), 16 heads (hard-coded in ``vit_snn``), one block per stage
    (``range(1)``; ``depths=4`` only feeds the drop-path schedule), MLP ratio 4, 11 classes,
    event counts in, T 16 frames split by number."""
    layout = qkformer_description(dim, heads, stage1_depth, stage2_depth, mlp_ratio=mlp_ratio,
                                  scale=scale)
    fields = {"in_channels": 2, "num_classes": 11, "steps": 16, "split_by": "number", **fields}
    config = SpikformerConfig.described(layout, image_size=image_size, **fields)
    config.validate()
    return config


def qkformer_cifar10_dvs(**kw) -> SpikformerConfig:
    """QKFormer on CIFAR10-DVS (``cifar10-dvs/model.py``): the gesture code with MLP ratio 1 and
    10 classes."""
    return qkformer_gesture(**{"mlp_ratio": 1, "num_classes": 10, **kw})


#: ``model/spikeformer.py``'s ``pooling_stat`` default; ``conf/gesture/2_256_200E_t16.yml`` says
#: "0111" (no max-pool after the first SPS stage)
SDT_POOLING_STAT = "1111"
SDT_GESTURE_POOLING_STAT = "0111"


def sdt_description(dim: int, heads: int, depth: int = 2, mlp_hidden: int | None = None, *,
                    mlp_ratio: float = 4,
                    pooling_stat: str = SDT_POOLING_STAT) -> Description:
    """The Spike-driven Transformer v1 (``model/spikeformer.py``, ``spike_mode`` "lif") as a
    description: MS_SPS at widths dim/8, dim/4, dim/2, dim, max-pooled where ``pooling_stat``
    says (the last stage before its LIF; its real map plus the RPE conv's is the stream), then
    ``depth`` blocks ``block.{i}`` on a membrane stream: ``attn`` (MS_SSA_Conv: shortcut_lif, q/k/v
    Conv2d k1 + BN -> LIF, SDSA with talking_heads_lif at 0.5, proj Conv2d k1 + BN; no scale,
    so the stage's is 1) and ``mlp`` (``fc1``/``fc2`` Conv2d k1 with bias + BN, each after its
    LIF), the token mean through ``head_lif`` into the Linear head. The hidden width is
    ``int(dim * mlp_ratio)`` (the code's rule) or ``mlp_hidden`` as a checkpoint shows it."""
    hidden = int(dim * mlp_ratio) if mlp_hidden is None else mlp_hidden
    return Description((BlockStage(depth, dim, heads, hidden, "sdsa", 1.0,
                                   embed=sdt_sps(dim, pooling_stat), attn_kernel="conv2d",
                                   mlp_kernel="conv2d"),),
                       residual="membrane", head_lif="head_lif")


def sdt_gesture(*, dim: int = 256, heads: int = 8, depth: int = 2, mlp_ratio: float = 4,
                pooling_stat: str = SDT_GESTURE_POOLING_STAT, image_size: int = 128,
                **fields) -> SpikformerConfig:
    """The Spike-driven Transformer on DVS128 Gesture (``conf/gesture/2_256_200E_t16.yml``: 2
    blocks, dim 256, 8 heads, MLP ratio 4, pooling_stat "0111", T 16, 128x128 -> 16x16 = 256
    tokens, 11 classes), event counts in, frames split by number. Its ``train.py`` runs it
    without Erode (``dvs_mode`` is for CIFAR10-DVS only): the model file's sdsa flag, not a
    field here."""
    layout = sdt_description(dim, heads, depth, mlp_ratio=mlp_ratio, pooling_stat=pooling_stat)
    fields = {"in_channels": 2, "num_classes": 11, "steps": 16, "split_by": "number", **fields}
    config = SpikformerConfig.described(layout, image_size=image_size, **fields)
    config.validate()
    return config
