"""`eventformer export` and `eventformer inspect`: model files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import SplitBy, check_writable, err
from .errors import fail, user_errors


@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Official Spikformer checkpoint (.pth): a "
                                                "state_dict or {'model': state_dict}."),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write (.h5)."),
    heads: int = typer.Option(16, "--heads", min=1, help="Attention heads (not in the tensors)."),
    scale: float = typer.Option(0.25, "--scale", help="Attention scale: 0.25 in the official "
                                                     "CIFAR10-DVS code, 0.125 in the paper."),
    steps: int = typer.Option(16, "--steps", "-T", min=1, help="Time steps the model was "
                                                                "trained with."),
    split_by: SplitBy = typer.Option(SplitBy.number, "--split-by",
                                     help="Framing the model was trained with."),
    image_size: Optional[int] = typer.Option(None, "--image-size",
                                             help="Input side.", show_default="from pos_embed"),
    classes: Optional[str] = typer.Option(None, "--classes",
                                          help="Class names: dvs-gesture, or a comma list."),
    force: bool = typer.Option(False, "--force", help="Overwrite the model file if it exists."),
):
    """Convert a PyTorch Spikformer checkpoint into an eventformer model file (BN folded)."""
    from eventformer.classes import CLASS_SETS
    from eventformer.modelfile import save
    from eventformer.modelfile.export import export_checkpoint

    check_writable(output, force)
    names: tuple = ()
    if classes:
        names = CLASS_SETS.get(classes) or tuple(c.strip() for c in classes.split(","))
    model, report = export_checkpoint(checkpoint, heads=heads, scale=scale, steps=steps,
                                      image_size=image_size, class_names=names)
    model.config.split_by = split_by.value
    if names and len(names) != model.config.num_classes:
        fail(f"{len(names)} class names for a head with {model.config.num_classes} outputs")
    save(output, model)
    cfg = model.config
    err.print(f"[bold]exported[/] {checkpoint} -> {output}")
    err.print("  inferred from tensors: " + ", ".join(f"{k}={v}" for k, v in report.inferred.items()))
    err.print("  from options: " + ", ".join(f"{k}={v}" for k, v in report.given.items())
              + f", split_by={cfg.split_by}")
    err.print(f"  {len(report.ignored_keys)} unused keys ignored (pos_embed, LayerNorms, "
              "num_batches_tracked); BatchNorm folded into conv weight and bias")
    err.print(f"  {model.parameter_count():,} parameters, {cfg.tokens} tokens, "
              f"{cfg.heads} heads of {cfg.head_dim}")


@user_errors
def inspect(
    model_path: Path = typer.Argument(..., metavar="MODEL.h5", help="Model file to describe."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable on stdout."),
):
    """Print a model file's architecture, parameter count, neuron parameters and provenance."""
    from eventformer.modelfile import layer_specs, load

    m = load(model_path)
    cfg = m.config
    info = {"file": str(model_path), "architecture": m.architecture,
            "config": cfg.to_dict(), "parameters": m.parameter_count(),
            "provenance": m.provenance,
            "layers": [{"name": s.name, "kind": s.kind,
                        "weight": list(m.layers[s.name].weight.shape)
                        if m.layers[s.name].weight is not None else None,
                        "tau": m.layers[s.name].tau, "theta": m.layers[s.name].theta,
                        "reset": "soft" if m.layers[s.name].v_reset is None else "hard"}
                       for s in layer_specs(cfg)]}
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    err.print(f"[bold]{model_path}[/]: {m.architecture}, {m.parameter_count():,} parameters")
    err.print(f"  input {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}, "
              f"SPS {list(cfg.sps_channels)}, D {cfg.dim}, {cfg.heads} heads, depth {cfg.depth}, "
              f"MLP {cfg.mlp_hidden}, {cfg.num_classes} classes, {cfg.tokens} tokens")
    err.print(f"  T {cfg.steps}, split_by {cfg.split_by}, attention {cfg.attention} "
              f"(scale {cfg.scale}), LIF tau {cfg.tau} theta {cfg.theta} / attn {cfg.attn_theta}")
    if cfg.class_names:
        err.print("  classes: " + ", ".join(cfg.class_names))
    t = Table(title_justify="left")
    for col in ("layer", "kind", "weight", "tau", "theta", "reset"):
        t.add_column(col)
    for row in info["layers"]:
        t.add_row(row["name"], row["kind"], "x".join(map(str, row["weight"] or [])) or "-",
                  f"{row['tau']:g}", f"{row['theta']:g}", row["reset"])
    err.print(t)
    if m.provenance:
        err.print("  provenance: " + ", ".join(f"{k}={v}" for k, v in m.provenance.items()))
