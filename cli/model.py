"""`eventformer export` and `eventformer inspect`: model files."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import SplitBy, check_writable, err
from .errors import fail, user_errors


class Attention(str, Enum):
    """The attention operators a model file can name (SPEC §4)."""

    ssa = "ssa"
    ds2ta = "ds2ta"
    ssa_bin = "ssa_bin"
    saformer = "saformer"


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
    attention: Optional[Attention] = typer.Option(
        None, "--attention", help="Attention operator; must agree with the checkpoint's keys.",
        show_default="told from the keys"),
    taw: Optional[int] = typer.Option(None, "--taw", min=1,
                                      help="DS2TA: TASA window T_AW in steps.", show_default="3"),
    pool_rows: Optional[int] = typer.Option(None, "--pool-rows", min=1,
                                            help="SAFormer: rows L of the adaptive token pooling "
                                                 "(must divide the token count).",
                                            show_default="4"),
    force: bool = typer.Option(False, "--force", help="Overwrite the model file if it exists."),
):
    """Convert a PyTorch Spikformer checkpoint (or a DS2TA / SSA_Bin / SAFormer one) into an
    eventformer model file (BN folded)."""
    from eventformer.classes import CLASS_SETS
    from eventformer.modelfile import save
    from eventformer.modelfile.export import export_checkpoint

    check_writable(output, force)
    names: tuple = ()
    if classes:
        names = CLASS_SETS.get(classes) or tuple(c.strip() for c in classes.split(","))
    model, report = export_checkpoint(checkpoint, heads=heads, scale=scale, steps=steps,
                                      image_size=image_size, class_names=names,
                                      attention=attention.value if attention else None,
                                      taw=taw, pool_rows=pool_rows)
    model.config.split_by = split_by.value
    if names and len(names) != model.config.num_classes:
        fail(f"{len(names)} class names for a head with {model.config.num_classes} outputs")
    save(output, model)
    cfg = model.config
    err.print(f"[bold]exported[/] {checkpoint} -> {output}")
    err.print("  inferred from tensors: " + ", ".join(f"{k}={v}" for k, v in report.inferred.items()))
    err.print("  from options: " + ", ".join(f"{k}={v}" for k, v in report.given.items())
              + f", split_by={cfg.split_by}")
    err.print("  attention: " + describe_found(report.attention), markup=False)
    for line in attention_lines(model):
        err.print("    " + line, markup=False)
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
    from eventformer.modelfile import attention_summary, layer_specs, load

    m = load(model_path)
    cfg = m.config
    info = {"file": str(model_path), "format_version": m.format_version,
            "architecture": m.architecture, "attention": attention_summary(m),
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
    err.print(f"[bold]{model_path}[/]: {m.architecture}, {m.parameter_count():,} parameters "
              f"(format version {m.format_version})")
    err.print(f"  input {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}, "
              f"SPS {list(cfg.sps_channels)}, D {cfg.dim}, {cfg.heads} heads, depth {cfg.depth}, "
              f"MLP {cfg.mlp_hidden}, {cfg.num_classes} classes, {cfg.tokens} tokens")
    err.print(f"  T {cfg.steps}, split_by {cfg.split_by}, attention {cfg.attention} "
              f"(scale {cfg.scale}), LIF tau {cfg.tau} theta {cfg.theta} / attn {cfg.attn_theta}")
    for line in attention_lines(m):
        err.print("  " + line, markup=False)
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


def describe_found(att: dict) -> str:
    """How export chose the attention operator, and the options it took, in one line."""
    keys = ", ".join(att["keys"][:4]) + (", ..." if len(att["keys"]) > 4 else "")
    told = {"keys": f"told by the keys {keys}" if keys else "no variant keys in the checkpoint",
            "option": "from --attention",
            "keys and option": f"from --attention, agreeing with the keys {keys}",
            "default": "the checkpoint has no blocks"}[att["from"]]
    opts = "".join(f", {k} {v['value']} ({'given' if v['from'] == 'option' else 'default'})"
                   for k, v in att["options"].items())
    return f"{att['operator']} ({told}){opts}"


def attention_lines(model) -> list[str]:
    """Human lines for each block's attention operator and its parameters."""
    from eventformer.modelfile import attention_summary

    lines = []
    for row in attention_summary(model)["blocks"]:
        head = f"{row['block']}: {row['operator']}"
        if row["operator"] == "ds2ta":
            tau = row["tau"]
            lines.append(f"{head}, TASA tau q/k/v/proj {'/'.join(str(tau[k]) for k in tau)}, "
                         f"T_AW {row['taw']}, NSAD table {len(row['nsad_table'])}x"
                         f"{len(row['nsad_table'][0])}:")
            lines += [f"  head {h}: {' '.join(map(str, t))}"
                      for h, t in enumerate(row["nsad_table"])]
        elif row["operator"] == "ssa_bin":
            v = row["vbar"]
            lines.append(f"{head}, delta per head {' '.join(map(str, row['delta']))}, vbar "
                         f"({v['shape'][0]}) {v['min']:.4g}..{v['max']:.4g} (mean {v['mean']:.4g})")
        elif row["operator"] == "saformer":
            w, b = row["dwc_weight"], row["dwc_bias"]
            lines.append(f"{head}, pool rows L {row['pool_rows']}, DWC (BN folded) weight "
                         f"{'x'.join(map(str, w['shape']))} {w['min']:.4g}..{w['max']:.4g}, "
                         f"bias {b['min']:.4g}..{b['max']:.4g}")
        else:
            lines.append(head)
    return lines
