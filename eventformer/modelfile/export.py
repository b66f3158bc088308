"""Official checkpoint of a Spikformer-family network -> eventformer model file.

Which released code a state_dict comes from is told from its keys (:func:`checkpoint_family`):

- **Spikformer** (or one of its SPEC §4 variants; ``patch_embed.*``, ``block.{i}.*``), in three
  layouts: the CIFAR10-DVS code (Conv1d k1 blocks, event counts in: Spikformer's own layout), the
  CIFAR10/CIFAR100 code (``*_linear`` blocks: nn.Linear, q/k/v with biases; max-pools after the
  last two SPS stages only; real pixels in) and the ImageNet code (Conv2d k1 MLP,
  ``fc1_conv.weight`` [out, in, 1, 1]; real pixels in). The static-image ones become model
  descriptions (:mod:`eventformer.models.description`).
- **QKFormer** (``patch_embed1.*``, ``stage1.{i}.tssa.*``, ``patch_embed2.*``, ``stage2.{i}.ssa.*``;
  zhouchenlin2096/QKFormer ``dvs128-gesture/model.py`` and ``cifar10-dvs/model.py``): always a
  description (:func:`eventformer.models.presets.qkformer_description`), its widths, depths, MLP
  sizes and classes read from the tensors (:func:`infer_qkformer_config`).
- **Spike-driven Transformer v1** (``patch_embed.proj_conv*``, ``patch_embed.rpe_conv``,
  ``block.{i}.attn.talking_heads.weight`` and q/k/v Conv2d k1 ``[D, D, 1, 1]``;
  BICLab/Spike-Driven-Transformer ``model/spikeformer.py``): a description
  (:func:`eventformer.models.presets.sdt_description`), its width, depth, heads, MLP width and
  classes read from the tensors (:func:`infer_sdt_config`); its max-pools (``pooling_stat``) and
  Erode are the code's options, not tensors.

A family is one entry of :data:`FAMILIES` (how its keys look), tried in order.

torch is imported here only, lazily: the engine never needs it. The tensors go through the one
model-file builder (:func:`eventformer.modelfile.build.build_model_file`), which folds BatchNorm
in float64 and rounds once to float32: W' = W * g, b' = beta + (b - mean) * g with
g = gamma / sqrt(var + eps).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError
from ..models.config import SpikformerConfig, sps_suffix
from ..models.description import spikformer_description
from ..models.presets import SDT_GESTURE_POOLING_STAT, SDT_POOLING_STAT, qkformer_description, \
    sdt_description
from .build import (
    BN_EPS,
    DEFAULT_POOL_ROWS,
    DEFAULT_TAW,
    build_model_file,
    detect_attention,
    fold_batchnorm,
    is_ignored_key,
)
from .format import ModelFile
from .reading import file_kind
from .schema import ATTENTION_NAMES, check_config

__all__ = ["BN_EPS", "FAMILIES", "ExportReport", "checkpoint_family", "export_checkpoint",
           "fold_batchnorm", "infer_config", "infer_qkformer_config", "infer_sdt_config",
           "read_checkpoint"]


@dataclass
class ExportReport:
    """What export inferred from the tensors and what it took from options, for printing.

    ``family``: the released code the keys belong to (a :data:`FAMILIES` name) and
    ``code``: its description in words. ``inferred``: what the tensors' shapes say; ``given``:
    the options given; ``defaults``: what neither says, taken from the released code (each with
    why). ``attention``: the operator, ``"from"`` ("keys", "option" or "keys and option";
    "default" for a checkpoint without blocks; "layout" where the family's layout fixes each
    stage's operator), ``"keys"`` (the checkpoint keys that told it) and ``"options"`` (T_AW / L
    with whether they were given or defaulted). ``stages``: one line per block stage of a
    described layout (its embedding widths, token grid, width, heads, blocks, operator)."""

    inferred: dict
    given: dict
    ignored_keys: list[str]
    attention: dict = field(default_factory=dict)
    family: str = "spikformer"
    code: str = ""
    defaults: dict = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a state_dict (possibly wrapped as {'model': ...} or {'state_dict': ...}) as float64."""
    path = str(path)
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would make torch.load wait
        raise CheckpointError(f"{path}: is {file_kind(os.stat(path).st_mode)}, not a "
                              "checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        import torch
    except ImportError:
        raise CheckpointError("exporting a PyTorch checkpoint needs torch: "
                              "pip install 'eventformer[torch]'") from None
    try:
        # the released training scripts save {'model': ..., 'args': argparse.Namespace, ...};
        # a Namespace is plain data, so it may be unpickled with the tensors
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds no state_dict (expected a dict of tensors)")
    state = {}
    for key, value in obj.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not hasattr(value, "detach"):
            raise CheckpointError(f"{path}: entry {key!r} is not a tensor")
        state[key] = value.detach().cpu().double().numpy() if value.is_floating_point() \
            else value.detach().cpu().numpy()
    return state


def infer_config(state: dict[str, np.ndarray], *, heads: int, scale: float, steps: int,
                 image_size: int | None, name: str = "checkpoint",
                 attention: str = "ssa") -> tuple[SpikformerConfig, dict]:
    """Dimensions from tensor shapes; what shapes cannot say comes from the options."""
    def need(key):
        if key not in state:
            raise CheckpointError(f"{name}: missing key {key!r} (not a Spikformer checkpoint?)")
        return state[key]

    stages = 0
    while f"patch_embed.proj_conv{sps_suffix(stages)}.weight" in state:
        stages += 1
    if stages == 0:
        need("patch_embed.proj_conv.weight")
    sps_channels = tuple(int(need(f"patch_embed.proj_conv{sps_suffix(i)}.weight").shape[0])
                         for i in range(stages))
    in_channels = int(state["patch_embed.proj_conv.weight"].shape[1])
    dim = int(need("patch_embed.rpe_conv.weight").shape[0])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"block\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    layout = released_layout(state)
    fc1 = "block.0.mlp.fc1_linear.weight" if layout == "cifar10" else \
        "block.0.mlp.fc1_conv.weight"
    mlp_hidden = int(need(fc1).shape[0]) if depth else 4 * dim
    num_classes = int(need("head.weight").shape[0])
    inferred = {"in_channels": in_channels, "sps_channels": list(sps_channels), "dim": dim,
                "depth": depth, "mlp_hidden": mlp_hidden, "num_classes": num_classes}
    if layout == "cifar10" and stages != 4:
        raise CheckpointError(f"{name}: the CIFAR10 code's blocks (*_linear keys) come with 4 SPS "
                              f"stages, this checkpoint has {stages}")
    pools = (False, False, True, True) if layout == "cifar10" else (True,) * stages
    if layout != "dvs":
        inferred["layout"] = RELEASED_LAYOUTS[layout]
    if image_size is None:
        if "pos_embed" in state and state["pos_embed"].ndim == 3:
            grid = math.isqrt(int(state["pos_embed"].shape[1]))
            image_size = grid * 2 ** sum(pools)
            inferred["image_size"] = f"{image_size} (from pos_embed: {grid}x{grid} tokens)"
        else:
            raise CheckpointError(f"{name}: the input size cannot be inferred (no pos_embed); "
                                  "give --image-size")
    if layout == "dvs":
        config = SpikformerConfig(
            in_channels=in_channels, image_size=int(image_size), sps_channels=sps_channels,
            sps_pool=pools, dim=dim, heads=heads, depth=depth, mlp_hidden=mlp_hidden,
            num_classes=num_classes, steps=steps, scale=scale, attention=attention)
    else:  # a static-image code: a description with real pixels in
        description = spikformer_description(
            sps_channels=sps_channels, sps_pool=pools, dim=dim, heads=heads, depth=depth,
            mlp_hidden=mlp_hidden, scale=scale, attention=attention, input="pixels",
            attn_kernel="linear" if layout == "cifar10" else "conv1d",
            mlp_kernel="linear" if layout == "cifar10" else "conv2d",
            qkv_bias="block.0.attn.q_linear.bias" in state)
        config = SpikformerConfig.described(description, in_channels=in_channels,
                                            image_size=int(image_size), num_classes=num_classes,
                                            steps=steps)
    try:
        check_config(config)
    except ValueError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    return config, inferred


#: The released Spikformer codes export tells apart, as the report names them.
RELEASED_LAYOUTS = {
    "dvs": "Spikformer CIFAR10-DVS code (Conv1d k1 blocks, event counts in)",
    "cifar10": "Spikformer CIFAR10 code (nn.Linear blocks, pools after SPS stages 2 and 3, "
               "real pixels in)",
    "imagenet": "Spikformer ImageNet code (Conv2d k1 MLP, real pixels in)",
}


def released_layout(state: dict) -> str:
    """Which released code a state_dict comes from: "cifar10" (``*_linear`` keys in the
    blocks), "imagenet" (a 4-d ``fc1_conv.weight``), else "dvs"."""
    if any(re.match(r"block\.\d+\.(attn|mlp)\.\w+_linear\.weight$", k) for k in state):
        return "cifar10"
    if any(re.match(r"block\.\d+\.mlp\.fc[12]_conv\.weight$", k) and np.ndim(v) == 4
           for k, v in state.items()):
        return "imagenet"
    return "dvs"


# --- QKFormer ---------------------------------------------------------------------------------

#: What the released QKFormer code fixes and a state_dict cannot show (``dvs128-gesture``:
#: ``vit_snn`` sets ``num_heads = [16, 16, 16]`` whatever it is given, ``Spiking_Self_Attention``
#: ``self.scale = 0.125``, ``img_size_h = img_size_w = 128``).
QKFORMER_HEADS = 16
QKFORMER_SCALE = 0.125
QKFORMER_IMAGE_SIZE = 128
QKFORMER_CODE = ("QKFormer DVS code (patch_embed1 with a stride-4 shortcut, token QK blocks "
                 "stage1, patch merging patch_embed2, SSA blocks stage2; event counts in)")


def infer_qkformer_config(state: dict[str, np.ndarray], *, heads: int | None,
                          scale: float | None, steps: int, image_size: int | None,
                          name: str = "checkpoint") -> tuple[SpikformerConfig, dict, dict]:
    """A QKFormer state_dict's configuration: (config, inferred, defaults).

    From the tensors: input channels (``patch_embed1.proj_conv.weight`` [E/8, C, 3, 3]), the two
    stage widths E = D/2 (``patch_embed1.proj3_conv``) and D (``patch_embed2.proj4_conv``), the
    blocks per stage (the indices of ``stage1.{i}.`` and ``stage2.{i}.``), each stage's MLP
    hidden width (``stage{s}.0.mlp.mlp1_conv.weight`` [hidden, width, 1, 1]; the MLP ratio when
    both stages agree) and the classes (``head.weight``). Not in the tensors: the heads (the
    code's 16 unless ``heads``; q/k weights are [C, C, 1], no head structure), the SSA scale
    (0.125 unless ``scale``), the input side (128 unless ``image_size``). The remaining shapes
    are checked key by key when the tensors are folded."""
    def need(key):
        if key not in state:
            raise CheckpointError(f"{name}: missing key {key!r} (every QKFormer checkpoint "
                                  "has it)")
        return state[key]

    def width(key, axis=0):
        arr = need(key)
        if np.ndim(arr) < 2:
            raise CheckpointError(f"{name}: {key} has shape {tuple(np.shape(arr))}, expected "
                                  "a conv weight")
        return int(np.shape(arr)[axis])

    in_channels = width("patch_embed1.proj_conv.weight", 1)
    half = width("patch_embed1.proj3_conv.weight")
    dim = width("patch_embed2.proj4_conv.weight")
    if dim != 2 * half:
        raise CheckpointError(f"{name}: stage 1 is {half} wide (patch_embed1.proj3_conv) and "
                              f"stage 2 {dim} (patch_embed2.proj4_conv), but QKFormer's patch "
                              "merging doubles the width")
    if half % 8:
        raise CheckpointError(f"{name}: stage 1 is {half} wide, but QKFormer's stem needs a "
                              "width divisible by 8 (it runs at width/8, /4, /2)")
    depths = [_blocks(state, f"stage{i}") for i in (1, 2)]
    widths = {1: half, 2: dim}
    # each stage's MLP as its first block holds it; a stage without blocks has no MLP to size
    # and takes the other's ratio (the code has one for both), or the code's 4
    hidden = {i: width(f"stage{i}.0.mlp.mlp1_conv.weight") for i in (1, 2) if depths[i - 1]}
    ratios = {hidden[i] / widths[i] for i in hidden}
    ratio = ratios.pop() if len(ratios) == 1 else None
    mlp_hidden = tuple(hidden.get(i, int(widths[i] * (ratio or 4))) for i in (1, 2))
    num_classes = width("head.weight")
    inferred = {"in_channels": in_channels, "widths": [half, dim],
                "stem": [half // 8, half // 4, half // 2, half],
                "depths": depths, "mlp_hidden": list(mlp_hidden)}
    if ratio is not None:
        inferred["mlp_ratio"] = int(ratio) if ratio.is_integer() else ratio
    inferred["num_classes"] = num_classes
    defaults = {}
    if heads is None:
        heads = QKFORMER_HEADS
        defaults["heads"] = (heads, "hard-coded in both stages; --heads to change")
    if scale is None:
        scale = QKFORMER_SCALE
        defaults["scale"] = (scale, "Spiking_Self_Attention's")
    if image_size is None:
        image_size = QKFORMER_IMAGE_SIZE
        defaults["image_size"] = (image_size, "the DVS sensor's; --image-size to change")
    for i, w in ((1, half), (2, dim)):
        if w % heads:
            how = "the released code's 16 heads; give --heads" if "heads" in defaults else \
                f"{heads} heads"
            raise CheckpointError(f"{name}: stage {i} is {w} wide, not divisible by {how}")
    config = _described_config(
        name, lambda: qkformer_description(dim, heads, *depths, scale=scale,
                                           mlp_hidden=mlp_hidden),
        in_channels=in_channels, image_size=int(image_size), num_classes=num_classes,
        steps=steps)
    return config, inferred, defaults


# --- the Spike-driven Transformer v1 ---------------------------------------------------------

#: What the released SDT code fixes and a state_dict cannot show: ``img_size_h = img_size_w =
#: 128`` (the DVS sensor, as its gesture config has it).
SDT_IMAGE_SIZE = 128
SDT_CODE = ("Spike-driven Transformer v1 code (MS_SPS with RPE, membrane-shortcut blocks of SDSA "
            "and a Conv2d k1 MLP, head_lif before the head; event counts in)")


def is_sdt(state: dict) -> bool:
    """SDT's keys: a ``talking_heads`` conv in a block, or 4-d (Conv2d k1) q weights where
    Spikformer's codes have 3-d (Conv1d) or ``q_linear`` ones."""
    return any(re.match(r"block\.\d+\.attn\.talking_heads\.weight$", k) or
               (re.match(r"block\.\d+\.attn\.q_conv\.weight$", k) and np.ndim(v) == 4)
               for k, v in state.items())


def infer_sdt_config(state: dict[str, np.ndarray], *, heads: int | None,
                     pooling_stat: str | None, steps: int, image_size: int | None,
                     name: str = "checkpoint") -> tuple[SpikformerConfig, dict, dict]:
    """A Spike-driven Transformer state_dict's configuration: (config, inferred, defaults).

    From the tensors: input channels (``patch_embed.proj_conv.weight`` [D/8, C, 3, 3]), the width
    D (``patch_embed.rpe_conv.weight``; the four SPS stages must be D/8, D/4, D/2, D as MS_SPS
    builds them), the blocks (the indices of ``block.{i}.``), the heads (every block's
    ``attn.talking_heads.weight`` [H, H, 1]: saved, never run, but the only tensor with a head
    structure), the MLP hidden width (``block.0.mlp.fc1_conv.weight`` [hidden, D, 1, 1]) and the
    classes (``head.weight``). Not in the tensors: ``pooling_stat`` (the model code's "1111"
    unless given; the gesture config runs "0111") and the input side (128 unless
    ``image_size``). The remaining shapes are checked key by key when the tensors are folded."""
    def need(key):
        if key not in state:
            raise CheckpointError(f"{name}: missing key {key!r} (every Spike-driven Transformer "
                                  "checkpoint has it)")
        return state[key]

    def shape(key, ndim):
        arr = need(key)
        if np.ndim(arr) != ndim:
            raise CheckpointError(f"{name}: {key} has shape {tuple(np.shape(arr))}, expected "
                                  f"a {ndim}-d weight")
        return tuple(int(n) for n in np.shape(arr))

    in_channels = shape("patch_embed.proj_conv.weight", 4)[1]
    dim = shape("patch_embed.rpe_conv.weight", 4)[0]
    sps = [shape(f"patch_embed.proj_conv{sps_suffix(i)}.weight", 4)[0] for i in range(4)]
    if dim % 8 or sps != [dim // 8, dim // 4, dim // 2, dim]:
        raise CheckpointError(f"{name}: the SPS stages are {'-'.join(map(str, sps))} wide and "
                              f"the RPE conv {dim}, but MS_SPS runs at D/8, D/4, D/2, D")
    depth = _blocks(state, "block")
    defaults = {}
    if depth:
        talking = {i: shape(f"block.{i}.attn.talking_heads.weight", 3) for i in range(depth)}
        found = talking[0][0]
        for i, s in talking.items():
            if s != (found, found, 1):
                raise CheckpointError(f"{name}: block.{i}.attn.talking_heads.weight has shape "
                                      f"{s}, expected ({found}, {found}, 1) as block 0's")
        if heads is not None and heads != found:
            raise CheckpointError(f"{name}: --heads {heads}, but the talking_heads weights "
                                  f"[H, H, 1] say {found} heads")
        heads = found
        mlp_hidden = shape("block.0.mlp.fc1_conv.weight", 4)[0]
    else:  # no blocks: neither heads nor an MLP to size
        mlp_hidden = 4 * dim
        if heads is None:
            heads = 1
            defaults["heads"] = (heads, "no blocks, so no heads to count")
    num_classes = shape("head.weight", 2)[0]
    inferred = {"in_channels": in_channels, "sps_channels": sps, "dim": dim, "depth": depth}
    if depth:
        inferred["heads"] = heads
        inferred["mlp_hidden"] = mlp_hidden
        ratio = mlp_hidden / dim
        inferred["mlp_ratio"] = int(ratio) if ratio.is_integer() else ratio
    inferred["num_classes"] = num_classes
    if pooling_stat is None:
        pooling_stat = SDT_POOLING_STAT
        defaults["pooling_stat"] = (pooling_stat, "model/spikeformer.py's default; the gesture "
                                    f"config runs {SDT_GESTURE_POOLING_STAT}: --pooling-stat "
                                    "to change")
    if image_size is None:
        image_size = SDT_IMAGE_SIZE
        defaults["image_size"] = (image_size, "the DVS sensor's; --image-size to change")
    config = _described_config(
        name, lambda: sdt_description(dim, heads, depth, mlp_hidden, pooling_stat=pooling_stat),
        in_channels=in_channels, image_size=int(image_size), num_classes=num_classes,
        steps=steps)
    return config, inferred, defaults


def _described_config(name: str, describe, **fields) -> SpikformerConfig:
    """The checked configuration of the description ``describe()`` makes, with ``fields``; an
    inconsistency (from the description or the configuration) is one sentence naming ``name``."""
    try:
        config = SpikformerConfig.described(describe(), **fields)
        check_config(config)
    except ValueError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    return config


def _blocks(state: dict, prefix: str) -> int:
    """Blocks ``prefix.{i}.`` a state_dict holds (1 + the highest index)."""
    pat = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in state if (m := pat.match(k))), default=-1)


def stage_lines(config: SpikformerConfig) -> list[str]:
    """One line per block stage of a described configuration: embedding widths, token grid,
    width, heads, blocks and operator (export's and inspect's summary)."""
    lines = []
    placement = config.placement()
    for stage, placed, geo in zip(config.description.stages, placement.embeds,
                                  placement.geometry):
        widths = "-".join(str(p.stage.channels) for p in placed if not p.stage.input)
        scale = f" scale {geo.scale:g}" if geo.attention not in ("token_qk", "sdsa") else ""
        lines.append(f"{stage.prefix}: embedding {widths}, {geo.grid}x{geo.grid} tokens, "
                     f"width {geo.dim}, {geo.heads} heads of {geo.head_dim}, MLP "
                     f"{geo.mlp_hidden}, {stage.count} block(s) of {geo.attention}{scale}")
    return lines


# --- the families export tells apart ---------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """One released code: whether a state_dict's keys are its (``claims``) and its name."""

    name: str
    claims: Callable[[dict], bool]


#: In the order they are tried; Spikformer (patch_embed.*, block.*) is what is left. The
#: Spike-driven Transformer shares Spikformer's ``patch_embed.*`` and ``block.{i}.`` names, so
#: it claims its own (``talking_heads``, Conv2d k1 q) first.
FAMILIES = (
    Family("qkformer", lambda state: any(k.startswith(("patch_embed1.", "patch_embed2.",
                                                       "stage1.", "stage2."))
                                         for k in state)),
    Family("sdt", is_sdt),
    Family("spikformer", lambda state: True),
)


#: The families as a sentence names them.
FAMILY_NAMES = {"qkformer": "QKFormer", "sdt": "Spike-driven Transformer",
                "spikformer": "Spikformer"}


def checkpoint_family(state: dict) -> str:
    """The released code a state_dict's keys belong to (a :data:`FAMILIES` name)."""
    return next(f.name for f in FAMILIES if f.claims(state))


def export_checkpoint(path: str | os.PathLike, *, heads: int | None = None,
                      scale: float | None = None, steps: int = 16,
                      image_size: int | None = None, class_names: tuple[str, ...] = (),
                      attention: str | None = None, taw: int | None = None,
                      pool_rows: int | None = None, pooling_stat: str | None = None,
                      erode: bool | None = None) -> tuple[ModelFile, ExportReport]:
    """Convert an official checkpoint into a :class:`ModelFile` (BatchNorm folded): Spikformer
    (or a SPEC §4 variant), QKFormer or the Spike-driven Transformer, told from the keys
    (:func:`checkpoint_family`).

    ``heads`` and ``scale`` are not in a checkpoint: None takes the released code's (Spikformer:
    16 heads, scale 0.25 in the CIFAR10-DVS code and 0.125 in the static-image codes; QKFormer:
    16 heads, 0.125). Spikformer's attention operator is told from the keys
    (:func:`~.build.detect_attention`); ``attention`` names it explicitly and must agree with
    them; ``taw`` (ds2ta, default 3) and ``pool_rows`` (saformer, default 4) are what a
    checkpoint cannot hold. QKFormer's operators are its layout's (token_qk, then ssa), SDT's
    sdsa; SDT alone takes ``pooling_stat`` (default "1111", the model code's) and ``erode``
    (default off, as its train.py runs every dataset but CIFAR10-DVS) and no ``scale``."""
    path = str(path)
    name = os.path.basename(path)
    if attention is not None and attention not in ATTENTION_NAMES:
        raise CheckpointError(f"unknown attention operator {attention!r} "
                              f"(known: {', '.join(ATTENTION_NAMES)})")
    state = read_checkpoint(path)
    family = checkpoint_family(state)
    given = {k: v for k, v in (("heads", heads), ("scale", scale)) if v is not None}
    given["steps"] = steps
    if image_size is not None:
        given["image_size"] = image_size
    if family != "sdt" and pooling_stat is not None:
        raise CheckpointError(f"{name}: --pooling-stat is the Spike-driven Transformer's SPS "
                              f"option, but this is a {FAMILY_NAMES[family]} checkpoint")
    if family == "sdt":
        if attention is not None:
            raise CheckpointError(f"{name}: --attention does not apply to a Spike-driven "
                                  "Transformer checkpoint: its blocks run sdsa")
        if scale is not None:
            raise CheckpointError(f"{name}: --scale does not apply to a Spike-driven "
                                  "Transformer checkpoint: SDSA has no attention scale")
        if pooling_stat is not None:
            given["pooling_stat"] = pooling_stat
        config, inferred, defaults = infer_sdt_config(
            state, heads=heads, pooling_stat=pooling_stat, steps=steps, image_size=image_size,
            name=name)
        if erode is None:
            defaults["erode"] = (0, "off: the released train.py turns dvs_mode on for "
                                 "CIFAR10-DVS only; --erode for such a model")
        else:
            given["erode"] = int(erode)
        found = {"operator": "sdsa", "from": "layout", "keys": [],
                 "options": {"erode": {"value": int(bool(erode)),
                                       "from": "default" if erode is None else "option"}}}
        code = SDT_CODE
        what = f"a Spike-driven Transformer with {config.depth} block(s)"
    elif family == "qkformer":
        if attention is not None:
            raise CheckpointError(f"{name}: --attention does not apply to a QKFormer checkpoint: "
                                  "its stages' operators are its layout's (token_qk in stage 1, "
                                  "ssa in stage 2)")
        config, inferred, defaults = infer_qkformer_config(
            state, heads=heads, scale=scale, steps=steps, image_size=image_size, name=name)
        found = {"operator": "token_qk, ssa", "from": "layout", "keys": [], "options": {}}
        code = QKFORMER_CODE
        what = (f"a QKFormer with {config.layout.stages[0].count} + "
                f"{config.layout.stages[1].count} blocks")
    else:
        config, inferred, defaults, found, code = _spikformer(
            state, name, heads=heads, scale=scale, steps=steps, image_size=image_size,
            attention=attention, taw=taw, pool_rows=pool_rows)
        what = None
    if class_names:
        config.class_names = tuple(class_names)
    provenance = {"source_checkpoint": name, "source_sha256": _sha256(path),
                  "source_code": code, "exported_by": "eventformer export", "bn_eps": BN_EPS}
    model = build_model_file(config, state, source=name, provenance=provenance, taw=taw,
                             pool_rows=pool_rows, what=what,
                             erode=None if erode is None else int(erode))
    report = ExportReport(inferred=inferred, given=given,
                          ignored_keys=sorted(k for k in state if is_ignored_key(k)),
                          attention=found, family=family, code=code, defaults=defaults,
                          stages=stage_lines(config) if config.layout is not None else [])
    return model, report


def _spikformer(state, name, *, heads, scale, steps, image_size, attention, taw, pool_rows):
    """Spikformer's configuration (any of its three released layouts), the operator told by
    the keys: (config, inferred, defaults, attention report, the code in words)."""
    detected, evidence = detect_attention(state, name)
    if attention is not None and detected is not None and attention != detected:
        said = ", ".join(evidence[:2]) if evidence else \
            "no tau, nsad_table, delta, vbar or dwc_conv keys"
        raise CheckpointError(f"{name}: --attention {attention}, but the checkpoint's keys say "
                              f"{detected} ({said})")
    op = attention or detected or "ssa"
    layout = released_layout(state)
    defaults = {}
    if heads is None:
        heads = 16
        defaults["heads"] = (heads, "the CIFAR10-DVS code's; --heads to change")
    if scale is None:
        scale = 0.25 if layout == "dvs" else 0.125
        defaults["scale"] = (scale, "the CIFAR10-DVS code's" if layout == "dvs" else
                             "the static-image codes'")
    config, inferred = infer_config(state, heads=heads, scale=scale, steps=steps,
                                    image_size=image_size, name=name, attention=op)
    options = {}
    if op == "ds2ta":
        options["taw"] = {"value": DEFAULT_TAW if taw is None else taw,
                          "from": "default" if taw is None else "option"}
    if op == "saformer":
        options["pool_rows"] = {"value": DEFAULT_POOL_ROWS if pool_rows is None else pool_rows,
                                "from": "default" if pool_rows is None else "option"}
    told = "default" if detected is None and attention is None else \
        "option" if detected is None else "keys" if attention is None else "keys and option"
    found = {"operator": op, "from": told, "keys": evidence, "options": options}
    return config, inferred, defaults, found, RELEASED_LAYOUTS[layout]


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
