"""Official Spikformer checkpoint -> eventformer model file (BatchNorm folded).

torch is imported here only, lazily: the engine never needs it. Folding is done in float64 and
rounded once to float32: W' = W * g, b' = beta + (b - mean) * g with g = gamma / sqrt(var + eps).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from ..models.config import SpikformerConfig, sps_suffix
from .format import LayerParams, ModelFile
from .schema import layer_specs

BN_EPS = 1e-5
_UNUSED = re.compile(r"^(pos_embed|norm\..*|block\.\d+\.norm[12]\..*|.*\.num_batches_tracked)$")


@dataclass
class ExportReport:
    """What export inferred from the tensors and what it took from options, for printing."""

    inferred: dict
    given: dict
    ignored_keys: list[str]


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a state_dict (possibly wrapped as {'model': ...} or {'state_dict': ...}) as float64."""
    path = str(path)
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
                 image_size: int | None, name: str = "checkpoint") -> tuple[SpikformerConfig, dict]:
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
    mlp_hidden = int(need("block.0.mlp.fc1_conv.weight").shape[0]) if depth else 4 * dim
    num_classes = int(need("head.weight").shape[0])
    inferred = {"in_channels": in_channels, "sps_channels": list(sps_channels), "dim": dim,
                "depth": depth, "mlp_hidden": mlp_hidden, "num_classes": num_classes}
    if image_size is None:
        if "pos_embed" in state and state["pos_embed"].ndim == 3:
            grid = math.isqrt(int(state["pos_embed"].shape[1]))
            image_size = grid * 2 ** stages
            inferred["image_size"] = f"{image_size} (from pos_embed: {grid}x{grid} tokens)"
        else:
            raise CheckpointError(f"{name}: the input size cannot be inferred (no pos_embed); "
                                  "give --image-size")
    config = SpikformerConfig(
        in_channels=in_channels, image_size=int(image_size), sps_channels=sps_channels,
        sps_pool=(True,) * stages, dim=dim, heads=heads, depth=depth, mlp_hidden=mlp_hidden,
        num_classes=num_classes, steps=steps, scale=scale)
    try:
        config.validate()
    except ValueError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    return config, inferred


def fold_batchnorm(weight, conv_bias, gamma, beta, mean, var, eps=BN_EPS):
    """Fold an eval-mode BatchNorm into the preceding conv (float64 in, float64 out)."""
    g = gamma / np.sqrt(var + eps)
    w = weight * g.reshape((-1,) + (1,) * (weight.ndim - 1))
    b = beta + ((conv_bias if conv_bias is not None else 0.0) - mean) * g
    return w, b


def export_checkpoint(path: str | os.PathLike, *, heads: int = 16, scale: float = 0.25,
                      steps: int = 16, image_size: int | None = None,
                      class_names: tuple[str, ...] = ()) -> tuple[ModelFile, ExportReport]:
    """Convert an official Spikformer checkpoint into a validated :class:`ModelFile`."""
    path = str(path)
    name = os.path.basename(path)
    state = read_checkpoint(path)
    config, inferred = infer_config(state, heads=heads, scale=scale, steps=steps,
                                    image_size=image_size, name=name)
    if class_names:
        config.class_names = tuple(class_names)
    specs = layer_specs(config)

    used: set[str] = set()

    def take(key, shape):
        if key not in state:
            raise CheckpointError(f"{name}: missing key {key!r}")
        arr = state[key]
        if tuple(arr.shape) != tuple(shape):
            raise CheckpointError(f"{name}: {key} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        if not np.all(np.isfinite(arr)):
            raise CheckpointError(f"{name}: {key} holds NaN or infinite values")
        used.add(key)
        return arr

    def neuron(spec):
        return {"tau": config.tau, "theta": spec.theta, "v_reset": config.v_reset,
                "decay_input": config.decay_input}

    layers: dict[str, LayerParams] = {}
    for spec in specs:
        if spec.kind == "attention":
            layers[spec.name] = LayerParams(spec.name, spec.kind, None, None, **neuron(spec))
            continue
        cout, cin = spec.weight_shape[:2]
        if spec.kind == "conv2d":
            w = take(f"{spec.source}.weight", spec.weight_shape)
        elif spec.kind == "linear":
            w = take(f"{spec.source}.weight", (cout, cin, 1))[:, :, 0]
        else:
            w = take(f"{spec.source}.weight", spec.weight_shape)
        b = take(f"{spec.source}.bias", (cout,)) if spec.conv_has_bias else None
        if spec.bn:
            bn = {k: take(f"{spec.bn}.{k}", (cout,))
                  for k in ("weight", "bias", "running_mean", "running_var")}
            if np.any(bn["running_var"] < 0):
                raise CheckpointError(f"{name}: {spec.bn}.running_var has negative entries")
            w, b = fold_batchnorm(w, b, bn["weight"], bn["bias"], bn["running_mean"],
                                  bn["running_var"])
        layers[spec.name] = LayerParams(
            spec.name, spec.kind, w.astype(np.float32), b.astype(np.float32),
            stride=spec.stride, padding=spec.padding, source=spec.source, **neuron(spec))

    leftover = sorted(k for k in state if k not in used)
    unexpected = [k for k in leftover if not _UNUSED.match(k)]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{name}: unexpected key {unexpected[0]!r}{more} for a Spikformer "
                              f"with {len(config.sps_channels)} SPS stages and {config.depth} blocks")

    provenance = {"source_checkpoint": name, "source_sha256": _sha256(path),
                  "exported_by": "eventformer export", "bn_eps": BN_EPS}
    report = ExportReport(inferred=inferred,
                          given={"heads": heads, "scale": scale, "steps": steps},
                          ignored_keys=[k for k in leftover if _UNUSED.match(k)])
    return ModelFile(config, layers, "spikformer", provenance), report


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
