"""What a Spikformer model file must hold, derived from its configuration's model description.

One entry per spiking layer, named by the checkpoint's LIF module (``patch_embed.proj_lif``,
``block.0.attn.q_lif``, ...), holding the folded synapse that drives it (BatchNorm already folded
into weight and bias) and its neuron parameters; an embedding stage without a LIF is named by its
conv (``patch_embed.rpe_conv`` in the Spike-driven Transformer); plus ``head``. Export builds
files from this list and load checks files against it, so the two cannot drift apart. The list
follows the description (:mod:`eventformer.models.description`): its embedding stages, then per
block its attention and MLP layers under the stage's names, in forward order.

Per block, the attention operator (SPEC §4: ``ssa``, ``ds2ta``, ``ssa_bin``, ``saformer``; the
successors' ``token_qk`` and ``sdsa``) adds its own parameters, listed by
:func:`attention_param_specs` and checked by :func:`attention_problem` (the same checks for the
builder and for load). SAFormer and QKFormer's token QK attention have no V branch, so their
blocks have no ``v_lif`` layer.

Blocks on a membrane residual stream (the Spike-driven Transformer's, operator ``sdsa``) hold
other layers (:func:`_membrane_blocks`): LIFs without a synapse of their own (kind ``"lif"``:
``shortcut_lif``, ``fc1_lif``, ``fc2_lif`` spike the real stream, and the model's ``head_lif``
its token mean) and synapses without a LIF (``proj_conv``, ``fc1_conv``, ``fc2_conv``: their real
currents join the stream), named by their module as the checkpoint names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelFileError
from ..models.config import (ATTENTION_OPERATOR_NAMES, MEMBRANE_OPERATORS, NO_V_BRANCH,
                             SpikformerConfig)
from ..models.description import BlockGeometry, Description
from .reading import flag_field, int_field, list_field, number_field, text_field

ATTENTION_NAMES = ATTENTION_OPERATOR_NAMES
INT32 = np.iinfo(np.int32)

# Plausibility bounds on what a model file may ask of the engine. Sizes that weights do not pin
# (the input side, the time steps, the TASA window) allocate membranes and buffers: a damaged
# value must be refused, not tried. The largest event sensors are 1280x720 and 1280x960.
MAX_IMAGE_SIZE = 2048
MAX_STEPS = 10_000
MAX_CHANNELS = 1 << 16
MAX_CLIP_US = 1 << 52  # microseconds: ~140 years, still exact in a float64
MAX_TAW = 4096
MAX_DECAY_EXPONENT = 62  # 2^-62 attenuates any current to nothing (and int64 shifts stay defined)

#: The type and range of every field of a Spikformer configuration as read from a model file.
CONFIG_FIELDS = {
    "in_channels": int_field(1, 64),
    "image_size": int_field(1, MAX_IMAGE_SIZE),
    "sps_channels": list_field(int_field(1, MAX_CHANNELS), 0, 16),  # empty with a layout
    "sps_pool": list_field(flag_field, 0, 16),
    "dim": int_field(1, MAX_CHANNELS),
    "heads": int_field(1, MAX_CHANNELS),
    "depth": int_field(0, 256),
    "mlp_hidden": int_field(1, 1 << 20),
    "num_classes": int_field(1, 1 << 20),
    "steps": int_field(1, MAX_STEPS),
    "scale": number_field(0.0, low_open=True),
    "split_by": text_field,
    "clip_us": int_field(1, MAX_CLIP_US, optional=True),
    "tau": number_field(0.0, low_open=True),
    "theta": number_field(0.0, low_open=True),
    "attn_theta": number_field(0.0, low_open=True),
    "v_reset": number_field(optional=True),
    "decay_input": flag_field,
    "attention": text_field,
    "class_names": list_field(text_field, 0, 1 << 20),
    "layout": lambda v, what, path: _layout_field(v, what, path),
}


def _layout_field(v, what, path):
    """The model description of a configuration (a JSON object), or null; its types and fields
    are checked by :meth:`Description.from_dict` (one sentence naming the field)."""
    if v is None:
        return None
    try:
        Description.from_dict(v)
    except ValueError as exc:
        raise ModelFileError(f"{path}: configuration field {exc}") from None
    return v


@dataclass(frozen=True)
class LayerSpec:
    name: str  # LIF module name (a synapse without a LIF: its conv's), or "head"
    kind: str  # "conv2d" | "linear" | "attention" | "lif" (a neuron-only layer) | "head"
    source: str  # checkpoint prefix of the synapse (conv) it comes from; "" for attention
    bn: str  # checkpoint prefix of the BatchNorm folded into it; "" for none
    weight_shape: tuple[int, ...] | None  # as the model file holds it (linear: [out, in])
    bias_shape: tuple[int, ...] | None
    conv_has_bias: bool = False  # the checkpoint conv itself has a bias (before folding)
    theta: float = 1.0
    stride: int = 1
    padding: int = 0
    checkpoint_shape: tuple[int, ...] | None = None  # the weight as the checkpoint holds it
    #                                 (Conv1d k1 [out, in, 1], ...); None: weight_shape
    lif: bool = True  # the synapse drives a LIF (False: a synapse of real output: an embedding
    #                   stage without a LIF, a membrane block's proj, fc1 and fc2)

    @property
    def tensor_shape(self) -> tuple[int, ...] | None:
        """The weight's shape in a checkpoint."""
        return self.checkpoint_shape or self.weight_shape


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an attention operator: a dataset of its block's group in the file."""

    name: str
    dtype: str  # "int" (stored int32) | "float" (stored float32)
    shape: tuple[int, ...]  # () for a scalar


def check_config(config: SpikformerConfig) -> None:
    """``config.validate()``: every attention operator a model file can name is accepted (the
    engine refuses, when built, one it cannot run yet), and the blocks are of a kind whose layers
    a model file can hold: blocks on a membrane residual stream are the Spike-driven
    Transformer's (``sdsa``), and ``sdsa`` runs on nothing else. Raises ValueError with one
    sentence."""
    config.validate()
    desc = config.description
    for stage in desc.stages:
        if not stage.count:
            continue
        membrane = stage.attention in MEMBRANE_OPERATORS
        if desc.residual == "membrane" and not membrane:
            raise ValueError(
                f"a model file cannot hold blocks with a 'membrane' residual and "
                f"{stage.attention!r} attention (the membrane shortcut's layer layout is the "
                f"Spike-driven Transformer's, operator {' or '.join(MEMBRANE_OPERATORS)})")
        if desc.residual != "membrane" and membrane:
            raise ValueError(f"{stage.attention} attention runs on a 'membrane' residual stream "
                             f"(the Spike-driven Transformer's layout), not on a residual "
                             f"stream of {desc.residual}")


def has_v_branch(config) -> bool:
    """Whether an operator (``config.attention``: a configuration's or a stage's) has a V
    branch: SAFormer and QKFormer's token QK attention have none."""
    return config.attention not in NO_V_BRANCH


#: Checkpoint layouts of a token-wise linear weight [out, in] (KERNEL_LAYOUTS).
_LINEAR_SHAPES = {"conv1d": lambda o, i: (o, i, 1), "conv2d": lambda o, i: (o, i, 1, 1),
                  "linear": lambda o, i: (o, i)}


@dataclass(frozen=True)
class BlockSpec:
    """One block as the model file holds it: its attention module's name (the file's group
    under /attention), its operator and the geometry its parameters are shaped by."""

    name: str
    operator: str
    geometry: BlockGeometry


def block_specs(config: SpikformerConfig) -> list[BlockSpec]:
    """Every block in forward order."""
    placement = config.placement()
    out = []
    for stage, geometry in zip(config.description.stages, placement.geometry):
        out += [BlockSpec(stage.attention_name(i), stage.attention, geometry)
                for i in range(stage.count)]
    return out


def layer_specs(config: SpikformerConfig) -> list[LayerSpec]:
    """The layers of a model file in forward order, from the configuration's description."""
    placement = config.placement()
    desc = config.description
    theta = config.theta
    specs: list[LayerSpec] = []
    for stage, placed, geo in zip(desc.stages, placement.embeds, placement.geometry):
        for p in placed:
            st = p.stage
            specs.append(LayerSpec(
                st.name, "conv2d", st.conv, st.bn, (st.channels, p.cin, st.kernel, st.kernel),
                (st.channels,), conv_has_bias=st.bias, theta=theta, stride=st.stride,
                padding=st.padding, lif=bool(st.lif)))
        d, h = geo.dim, geo.mlp_hidden
        syn = "linear" if stage.attn_kernel == "linear" else "conv"
        mlp_syn = "linear" if stage.mlp_kernel == "linear" else "conv"
        attn_shape = _LINEAR_SHAPES[stage.attn_kernel]
        mlp_shape = _LINEAR_SHAPES[stage.mlp_kernel]
        if stage.attention in MEMBRANE_OPERATORS:
            specs += _membrane_blocks(stage, geo, theta, config.attn_theta)
            continue
        branches = ("q", "k", "v") if has_v_branch(stage) else ("q", "k")
        for b in range(stage.count):
            a = stage.attention_name(b)
            for n in branches:
                specs.append(LayerSpec(f"{a}.{n}_lif", "linear", f"{a}.{n}_{syn}", f"{a}.{n}_bn",
                                       (d, d), (d,), conv_has_bias=stage.qkv_bias, theta=theta,
                                       checkpoint_shape=attn_shape(d, d)))
            specs.append(LayerSpec(f"{a}.attn_lif", "attention", "", "", None, None,
                                   theta=config.attn_theta))
            specs.append(LayerSpec(f"{a}.proj_lif", "linear", f"{a}.proj_{syn}", f"{a}.proj_bn",
                                   (d, d), (d,), conv_has_bias=True, theta=theta,
                                   checkpoint_shape=attn_shape(d, d)))
            m = stage.mlp_name(b)
            fc1, fc2 = stage.mlp_layers
            specs.append(LayerSpec(f"{m}.{fc1}_lif", "linear", f"{m}.{fc1}_{mlp_syn}",
                                   f"{m}.{fc1}_bn", (h, d), (h,), conv_has_bias=True,
                                   theta=theta, checkpoint_shape=mlp_shape(h, d)))
            specs.append(LayerSpec(f"{m}.{fc2}_lif", "linear", f"{m}.{fc2}_{mlp_syn}",
                                   f"{m}.{fc2}_bn", (d, h), (d,), conv_has_bias=True,
                                   theta=theta, checkpoint_shape=mlp_shape(d, h)))
    d = placement.final.dim
    if desc.head_lif and desc.residual == "membrane":
        # the token mean of the real stream, spiked (SDT); a head LIF on a stream of spikes has
        # no layer layout yet (the engine refuses it by name)
        specs.append(_neurons(desc.head_lif, theta))
    specs.append(LayerSpec("head", "head", "head", "", (config.num_classes, d),
                           (config.num_classes,), conv_has_bias=True))
    return specs


def _neurons(name: str, theta: float) -> LayerSpec:
    """A LIF without a synapse of its own: it spikes a real map (SDT's membrane stream)."""
    return LayerSpec(name, "lif", "", "", None, None, theta=theta)


def _membrane_blocks(stage, geo: BlockGeometry, theta: float, attn_theta: float
                     ) -> list[LayerSpec]:
    """The layers of a stage's membrane-shortcut blocks (the Spike-driven Transformer's
    ``MS_SSA_Conv`` + ``MS_MLP_Conv``), in forward order: ``shortcut_lif`` spikes the real
    stream; q, k, v conv+BN -> LIF; the SDSA core's ``talking_heads_lif`` (``attn_theta``; the
    checkpoint's ``talking_heads`` conv is saved but never runs, so it is no layer here);
    ``proj_conv`` + ``proj_bn`` with no LIF (its real current joins the stream); the MLP's
    ``fc1_lif`` on the stream, ``fc1_conv`` + ``fc1_bn`` with no LIF (the stream added to it when
    hidden == dim: the official ``res``), ``fc2_lif`` on that, ``fc2_conv`` + ``fc2_bn`` with no
    LIF. A synapse without a LIF is named by its conv, as an embedding's are."""
    d, h = geo.dim, geo.mlp_hidden
    syn = "linear" if stage.attn_kernel == "linear" else "conv"
    mlp_syn = "linear" if stage.mlp_kernel == "linear" else "conv"
    attn_shape = _LINEAR_SHAPES[stage.attn_kernel]
    mlp_shape = _LINEAR_SHAPES[stage.mlp_kernel]
    fc1, fc2 = stage.mlp_layers
    specs = []
    for b in range(stage.count):
        a, m = stage.attention_name(b), stage.mlp_name(b)
        specs.append(_neurons(f"{a}.shortcut_lif", theta))
        for n in ("q", "k", "v"):
            specs.append(LayerSpec(f"{a}.{n}_lif", "linear", f"{a}.{n}_{syn}", f"{a}.{n}_bn",
                                   (d, d), (d,), conv_has_bias=stage.qkv_bias, theta=theta,
                                   checkpoint_shape=attn_shape(d, d)))
        specs.append(LayerSpec(f"{a}.talking_heads_lif", "attention", "", "", None, None,
                               theta=attn_theta))
        specs.append(LayerSpec(f"{a}.proj_{syn}", "linear", f"{a}.proj_{syn}", f"{a}.proj_bn",
                               (d, d), (d,), conv_has_bias=True, theta=theta,
                               checkpoint_shape=attn_shape(d, d), lif=False))
        specs.append(_neurons(f"{m}.{fc1}_lif", theta))
        specs.append(LayerSpec(f"{m}.{fc1}_{mlp_syn}", "linear", f"{m}.{fc1}_{mlp_syn}",
                               f"{m}.{fc1}_bn", (h, d), (h,), conv_has_bias=True, theta=theta,
                               checkpoint_shape=mlp_shape(h, d), lif=False))
        specs.append(_neurons(f"{m}.{fc2}_lif", theta))
        specs.append(LayerSpec(f"{m}.{fc2}_{mlp_syn}", "linear", f"{m}.{fc2}_{mlp_syn}",
                               f"{m}.{fc2}_bn", (d, h), (d,), conv_has_bias=True, theta=theta,
                               checkpoint_shape=mlp_shape(d, h), lif=False))
    return specs


def attention_block_name(block: int) -> str:
    """The attention module of block ``block`` of Spikformer's own layout (``block.{i}.attn``),
    as the checkpoint names it; a description names its own (:func:`block_specs`)."""
    return f"block.{block}.attn"


def attention_param_specs(config, operator: str | None = None) -> list[ParamSpec]:
    """The parameters one block of ``operator`` (default: ``config.attention``) stores (SPEC §4).

    ``config``: what shapes them (``heads``, ``head_dim``, ``dim``): a block's
    :class:`~eventformer.models.description.BlockGeometry`, or a configuration of Spikformer's own
    layout (every block the same)."""
    op = config.attention if operator is None else operator
    heads, d, dim = config.heads, config.head_dim, config.dim
    if op == "ssa":
        return []
    if op == "ds2ta":  # TASA decay exponents of q, k, v, proj; window T_AW; NSAD table per head
        return [ParamSpec("tau", "int", (4,)), ParamSpec("taw", "int", ()),
                ParamSpec("nsad_table", "int", (heads, d + 1))]
    if op == "ssa_bin":
        return [ParamSpec("delta", "int", (heads,)), ParamSpec("vbar", "float", (dim,))]
    if op == "saformer":  # depthwise 3x3 conv with its BatchNorm folded; adaptive pool rows L
        return [ParamSpec("dwc_weight", "float", (dim, 3, 3)), ParamSpec("dwc_bias", "float", (dim,)),
                ParamSpec("pool_rows", "int", ())]
    if op == "token_qk":  # QKFormer: nothing beyond its layers
        return []
    if op == "sdsa":  # the Spike-driven Transformer: 1 where the released code's DVS mode erodes
        return [ParamSpec("erode", "int", ())]
    raise ValueError(f"unknown attention operator {op!r} (known: {', '.join(ATTENTION_NAMES)})")


def attention_problem(config, operator: str, params: dict) -> tuple[str, str] | None:
    """The first problem of one block's attention parameters, as (parameter, description), or None.

    ``config``: the block's geometry (or a configuration of Spikformer's own layout).

    Checks that exactly the operator's parameters are present with their shapes, that integer
    parameters hold integers (within int32) and float ones finite values, and SPEC §4's ranges
    (bounded above where a value sizes buffers): 0 <= tau <= 62, 1 <= T_AW <= 4096,
    NSAD AD[0] == 0, delta >= 0, pool rows L >= 1 dividing the token count.
    """
    specs = attention_param_specs(config, operator)
    names = {s.name for s in specs}
    for s in specs:
        if s.name not in params or params[s.name] is None:
            return s.name, "is missing"
    extra = sorted(set(params) - names)
    if extra:
        return extra[0], f"is not a parameter of {operator} attention"
    for s in specs:
        arr = np.asarray(params[s.name])
        if arr.shape != s.shape:
            return s.name, f"has shape {arr.shape}, expected {s.shape}"
        if s.dtype == "int":
            if not np.issubdtype(arr.dtype, np.integer):
                return s.name, f"has dtype {arr.dtype}, expected integers"
            if arr.size and (arr.min() < INT32.min or arr.max() > INT32.max):
                return s.name, "holds integers outside the int32 range"
        else:
            if not np.issubdtype(arr.dtype, np.floating):
                return s.name, f"has dtype {arr.dtype}, expected float"
            if not np.all(np.isfinite(arr)):
                return s.name, "holds NaN or infinite values"
    p = {k: np.asarray(v) for k, v in params.items()}
    if operator == "ds2ta":
        if np.any(p["tau"] < 0) or np.any(p["tau"] > MAX_DECAY_EXPONENT):
            return "tau", (f"holds {p['tau'].tolist()}, expected non-negative decay exponents "
                           f"(at most {MAX_DECAY_EXPONENT})")
        if int(p["taw"]) < 1:
            return "taw", f"is {int(p['taw'])}, expected a window T_AW >= 1"
        if int(p["taw"]) > MAX_TAW:
            return "taw", f"is {int(p['taw'])}, expected a window T_AW of at most {MAX_TAW}"
        bad = np.flatnonzero(p["nsad_table"][:, 0] != 0)
        if bad.size:
            h = int(bad[0])
            return "nsad_table", (f"has AD[0] = {int(p['nsad_table'][h, 0])} for head {h}, "
                                  "expected 0 (pairs that share no active channel stay absent)")
    elif operator == "ssa_bin":
        bad = np.flatnonzero(p["delta"] < 0)
        if bad.size:
            h = int(bad[0])
            return "delta", f"is {int(p['delta'][h])} for head {h}, expected >= 0"
    elif operator == "saformer":
        rows = int(p["pool_rows"])
        if rows < 1 or config.tokens % rows:
            return "pool_rows", (f"is {rows}, expected a divisor of the {config.tokens} tokens")
    elif operator == "sdsa":
        if int(p["erode"]) not in (0, 1):
            return "erode", f"is {int(p['erode'])}, expected 0 or 1"
    return None
