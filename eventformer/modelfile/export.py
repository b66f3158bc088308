"""Official Spikformer checkpoint (or one of its SPEC §4 variants) -> eventformer model file.

Three layouts of the released code are told from their keys: the CIFAR10-DVS code (Conv1d k1
blocks, event counts in: Spikformer's own layout), the CIFAR10/CIFAR100 code (``*_linear`` blocks:
nn.Linear, q/k/v with biases; max-pools after the last two SPS stages only; real pixels in) and
the ImageNet code (Conv2d k1 MLP, ``fc1_conv.weight`` [out, in, 1, 1]; real pixels in). The
static-image ones become model descriptions (:mod:`eventformer.models.description`).

torch is imported here only, lazily: the engine never needs it. The tensors go through the one
model-file builder (:func:`eventformer.modelfile.build.build_model_file`), which folds BatchNorm
in float64 and rounds once to float32: W' = W * g, b' = beta + (b - mean) * g with
g = gamma / sqrt(var + eps).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError
from ..models.config import SpikformerConfig, sps_suffix
from ..models.description import spikformer_description
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

__all__ = ["BN_EPS", "ExportReport", "export_checkpoint", "fold_batchnorm", "infer_config",
           "read_checkpoint"]


@dataclass
class ExportReport:
    """What export inferred from the tensors and what it took from options, for printing.

    ``attention``: the operator, ``"from"`` ("keys", "option" or "keys and option"; "default"
    for a checkpoint without blocks), ``"keys"`` (the checkpoint keys that told it) and
    ``"options"`` (T_AW / L with whether they were given or defaulted)."""

    inferred: dict
    given: dict
    ignored_keys: list[str]
    attention: dict = field(default_factory=dict)


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


def export_checkpoint(path: str | os.PathLike, *, heads: int = 16, scale: float = 0.25,
                      steps: int = 16, image_size: int | None = None,
                      class_names: tuple[str, ...] = (), attention: str | None = None,
                      taw: int | None = None, pool_rows: int | None = None
                      ) -> tuple[ModelFile, ExportReport]:
    """Convert an official Spikformer checkpoint (or a SPEC §4 variant) into a :class:`ModelFile`.

    The attention operator is told from the keys (:func:`~.build.detect_attention`); ``attention``
    names it explicitly and must agree with them. ``taw`` (ds2ta, default 3) and ``pool_rows``
    (saformer, default 4) are what a checkpoint cannot hold."""
    path = str(path)
    name = os.path.basename(path)
    if attention is not None and attention not in ATTENTION_NAMES:
        raise CheckpointError(f"unknown attention operator {attention!r} "
                              f"(known: {', '.join(ATTENTION_NAMES)})")
    state = read_checkpoint(path)
    detected, evidence = detect_attention(state, name)
    if attention is not None and detected is not None and attention != detected:
        said = ", ".join(evidence[:2]) if evidence else \
            "no tau, nsad_table, delta, vbar or dwc_conv keys"
        raise CheckpointError(f"{name}: --attention {attention}, but the checkpoint's keys say "
                              f"{detected} ({said})")
    op = attention or detected or "ssa"
    config, inferred = infer_config(state, heads=heads, scale=scale, steps=steps,
                                    image_size=image_size, name=name, attention=op)
    if class_names:
        config.class_names = tuple(class_names)
    provenance = {"source_checkpoint": name, "source_sha256": _sha256(path),
                  "exported_by": "eventformer export", "bn_eps": BN_EPS}
    model = build_model_file(config, state, source=name, provenance=provenance, taw=taw,
                             pool_rows=pool_rows)
    options = {}
    if op == "ds2ta":
        options["taw"] = {"value": DEFAULT_TAW if taw is None else taw,
                          "from": "default" if taw is None else "option"}
    if op == "saformer":
        options["pool_rows"] = {"value": DEFAULT_POOL_ROWS if pool_rows is None else pool_rows,
                                "from": "default" if pool_rows is None else "option"}
    told = "default" if detected is None and attention is None else \
        "option" if detected is None else "keys" if attention is None else "keys and option"
    report = ExportReport(inferred=inferred,
                          given={"heads": heads, "scale": scale, "steps": steps},
                          ignored_keys=sorted(k for k in state if is_ignored_key(k)),
                          attention={"operator": op, "from": told, "keys": evidence,
                                     "options": options})
    return model, report


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
