"""What a Spikformer model file must hold, derived from its configuration.

One entry per spiking layer, named by the checkpoint's LIF module (``patch_embed.proj_lif``,
``block.0.attn.q_lif``, ...), holding the folded synapse that drives it (BatchNorm already folded
into weight and bias) and its neuron parameters; plus ``head``. Export builds files from this
list and load checks files against it, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.config import SpikformerConfig, sps_suffix


@dataclass(frozen=True)
class LayerSpec:
    name: str  # LIF module name, or "head"
    kind: str  # "conv2d" | "linear" | "attention" | "head"
    source: str  # checkpoint prefix of the synapse (conv) it comes from; "" for attention
    bn: str  # checkpoint prefix of the BatchNorm folded into it; "" for none
    weight_shape: tuple[int, ...] | None
    bias_shape: tuple[int, ...] | None
    conv_has_bias: bool = False  # the checkpoint conv itself has a bias (before folding)
    theta: float = 1.0
    stride: int = 1
    padding: int = 0


def layer_specs(config: SpikformerConfig) -> list[LayerSpec]:
    specs: list[LayerSpec] = []
    cin = config.in_channels
    for i, cout in enumerate(config.sps_channels):
        s = sps_suffix(i)
        specs.append(LayerSpec(
            f"patch_embed.proj_lif{s}", "conv2d", f"patch_embed.proj_conv{s}",
            f"patch_embed.proj_bn{s}", (cout, cin, 3, 3), (cout,), theta=config.theta,
            stride=1, padding=1))
        cin = cout
    d = config.dim
    specs.append(LayerSpec(
        "patch_embed.rpe_lif", "conv2d", "patch_embed.rpe_conv", "patch_embed.rpe_bn",
        (d, d, 3, 3), (d,), theta=config.theta, stride=1, padding=1))
    for b in range(config.depth):
        a = f"block.{b}.attn"
        for n in ("q", "k", "v"):
            specs.append(LayerSpec(f"{a}.{n}_lif", "linear", f"{a}.{n}_conv", f"{a}.{n}_bn",
                                   (d, d), (d,), theta=config.theta))
        specs.append(LayerSpec(f"{a}.attn_lif", "attention", "", "", None, None,
                               theta=config.attn_theta))
        specs.append(LayerSpec(f"{a}.proj_lif", "linear", f"{a}.proj_conv", f"{a}.proj_bn",
                               (d, d), (d,), conv_has_bias=True, theta=config.theta))
        m = f"block.{b}.mlp"
        h = config.mlp_hidden
        specs.append(LayerSpec(f"{m}.fc1_lif", "linear", f"{m}.fc1_conv", f"{m}.fc1_bn",
                               (h, d), (h,), conv_has_bias=True, theta=config.theta))
        specs.append(LayerSpec(f"{m}.fc2_lif", "linear", f"{m}.fc2_conv", f"{m}.fc2_bn",
                               (d, h), (d,), conv_has_bias=True, theta=config.theta))
    specs.append(LayerSpec("head", "head", "head", "", (config.num_classes, d),
                           (config.num_classes,), conv_has_bias=True))
    return specs
