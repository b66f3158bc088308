"""`eventformer export` and `eventformer inspect`: model files."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from .common import SplitBy, check_writable, err, resolve_weights
from .errors import fail, user_errors


class Attention(str, Enum):
    """The attention operators a model file can name (SPEC §4)."""

    ssa = "ssa"
    ds2ta = "ds2ta"
    ssa_bin = "ssa_bin"
    saformer = "saformer"


class Framework(str, Enum):
    """Frameworks whose NIR exports eventformer steps as they do (the neurons' discrete rule)."""

    sinabs = "sinabs"
    snntorch = "snntorch"
    norse = "norse"
    rockpool = "rockpool"


@user_errors
def export(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT.pth|MODEL.nir",
                                      help="Official Spikformer, QKFormer or SDT checkpoint "
                                           "(.pth: a state_dict, {'model': state_dict} or "
                                           "{'state_dict': state_dict}), or a NIR graph "
                                           "(.nir) of a sequential spiking CNN."),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write (.h5)."),
    heads: Optional[int] = typer.Option(None, "--heads", min=1,
                                        help="Attention heads (not in the tensors).",
                                        show_default="16, the released codes'"),
    scale: Optional[float] = typer.Option(
        None, "--scale", help="Attention scale (SSA): 0.25 in Spikformer's CIFAR10-DVS code, "
                              "0.125 in its static-image codes, in QKFormer's and in the paper.",
        show_default="the released code's"),
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
    pooling_stat: Optional[str] = typer.Option(
        None, "--pooling-stat", metavar="BBBB",
        help="Spike-driven Transformer only: which of the four SPS stages max-pool (1) and "
             "which do not (0), as its model code's pooling_stat (the gesture config: 0111).",
        show_default="1111, the model code's"),
    erode: Optional[bool] = typer.Option(
        None, "--erode/--no-erode",
        help="Spike-driven Transformer only: the released code's DVS mode (Erode max-pools in "
             "SDSA), which its train.py turns on for CIFAR10-DVS only.",
        show_default="off"),
    framework: Optional[Framework] = typer.Option(
        None, "--framework", help="NIR only: the framework that exported the graph; its "
                                  "neurons are stepped by that framework's rule (a NIR file "
                                  "does not say which).", show_default="required for .nir"),
    dt: Optional[float] = typer.Option(None, "--dt", help="NIR only: the time step the "
                                                          "exporter assumed, seconds.",
                                       show_default="snntorch 1e-4, norse and rockpool 1e-3"),
    input_shape: Optional[str] = typer.Option(
        None, "--input-shape", metavar="CxHxW",
        help="NIR only: the image a flat input (an MLP on the flattened frame) flattens, "
             "C-major as torch's flatten.", show_default="the input node's, when 3-D"),
    min_v_mem: Optional[str] = typer.Option(
        None, "--min-v-mem", metavar="FLOOR",
        help="NIR, sinabs only: the membrane floor (sinabs' min_v_mem, which NIR does not "
             "hold). auto: as sinabs' own importer reads the graph (IF at minus its threshold, "
             "as from_model converts an ANN; LIF none); none: no floor (IAF/LIF built with "
             "the defaults); -threshold: every IF and LIF at minus its threshold; VALUE <= 0: "
             "every neuron at VALUE.", show_default="auto"),
    force: bool = typer.Option(False, "--force", help="Overwrite the model file if it exists."),
):
    """Convert a PyTorch Spikformer checkpoint (or a DS2TA / SSA_Bin / SAFormer one), a
    QKFormer or a Spike-driven Transformer (v1) one, told apart by their keys, into an
    eventformer model file (BN folded), or import a NIR graph of a sequential spiking CNN
    exported by sinabs, snnTorch, Norse or Rockpool (--framework)."""
    from eventformer.classes import CLASS_SETS
    from eventformer.modelfile import save
    from eventformer.modelfile.export import export_checkpoint
    from eventformer.modelfile.nir_import import is_nir_file

    check_writable(output, force)
    names: tuple = ()
    if classes:
        names = CLASS_SETS.get(classes) or tuple(c.strip() for c in classes.split(","))
    if checkpoint.suffix.lower() == ".nir" or is_nir_file(checkpoint):
        _export_nir(checkpoint, output, framework, dt, steps, split_by.value, names,
                    _chw(input_shape), min_v_mem)
        return
    if framework is not None or dt is not None or input_shape is not None or \
            min_v_mem is not None:
        fail("--framework, --dt, --input-shape and --min-v-mem apply to NIR graphs (.nir), not "
             "to PyTorch checkpoints")
    model, report = export_checkpoint(checkpoint, heads=heads, scale=scale, steps=steps,
                                      image_size=image_size, class_names=names,
                                      attention=attention.value if attention else None,
                                      taw=taw, pool_rows=pool_rows, pooling_stat=pooling_stat,
                                      erode=erode)
    model.config.split_by = split_by.value
    if names and len(names) != model.config.num_classes:
        fail(f"{len(names)} class names for a head with {model.config.num_classes} outputs")
    save(output, model)
    cfg = model.config
    err.print(f"[bold]exported[/] {checkpoint} -> {output}")
    if report.code:
        err.print(f"  recognised: {report.code}", markup=False)
    err.print("  inferred from tensors: "
              + ", ".join(f"{k}={v}" for k, v in report.inferred.items()), markup=False)
    err.print("  from options: " + ", ".join(f"{k}={v}" for k, v in report.given.items())
              + f", split_by={cfg.split_by}", markup=False)
    if report.defaults:
        err.print("  the released code's, not in the tensors: " + "; ".join(
            f"{k}={v} ({why})" for k, (v, why) in report.defaults.items()), markup=False)
    err.print("  attention: " + describe_found(report.attention), markup=False)
    for line in attention_lines(model):
        err.print("    " + line, markup=False)
    for line in report.stages:
        err.print("  " + line, markup=False)
    err.print(f"  {len(report.ignored_keys)} unused keys ignored"
              f"{_ignored_kinds(report.ignored_keys)}; BatchNorm folded into conv weight and bias")
    shape = "" if report.stages else f", {cfg.tokens} tokens, {cfg.heads} heads of {cfg.head_dim}"
    err.print(f"  {model.parameter_count():,} parameters{shape}")


def _ignored_kinds(keys) -> str:
    """What the unused keys of a checkpoint are, as " (pos_embed, LayerNorms, ...)"."""
    kinds = {"pos_embed" if k == "pos_embed" else "num_batches_tracked"
             if k.endswith(".num_batches_tracked") else "talking_heads (saved, never run)"
             if k.endswith(".talking_heads.weight") else "LayerNorms" for k in keys}
    return f" ({', '.join(sorted(kinds))})" if kinds else ""


def _chw(text: Optional[str]):
    """``--input-shape CxHxW`` as a tuple of three positive integers."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        fail(f"--input-shape {text!r}: expected CxHxW, three positive integers such as 2x32x32")
    return tuple(int(p) for p in parts)


def _export_nir(path: Path, output: Path, framework, dt, steps: int, split_by: str,
                names: tuple, input_shape, min_v_mem=None) -> None:
    from eventformer.modelfile import save
    from eventformer.modelfile.nir_import import FRAMEWORKS, import_nir

    if framework is None:
        fail(f"{path}: a NIR graph does not say how its neurons were stepped: give --framework "
             f"({', '.join(FRAMEWORKS)}), the framework that exported it")
    model, report = import_nir(path, framework=framework.value, steps=steps, split_by=split_by,
                               class_names=names, dt=dt, input_shape=input_shape,
                               min_v_mem=min_v_mem)
    save(output, model)
    err.print(f"[bold]exported[/] {path} (NIR, {framework.value}) -> {output}")
    err.print("  chain: " + " -> ".join(f"{n} ({k})" for n, k in report.chain), markup=False)
    err.print(f"  neurons stepped as {framework.value} steps them (dt {report.dt:g}):")
    for node, rule in report.rules.items():
        floor = f"; {report.floors[node]}" if node in report.floors else ""
        err.print(f"    {node}: {rule}{floor}", markup=False)
    for line in report.folded:
        err.print(f"  {line}", markup=False)
    cfg = model.config
    err.print(f"  input {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}, {cfg.num_classes} "
              f"output neurons (their spike counts are the class scores), T {cfg.steps}, "
              f"split_by {cfg.split_by}; {model.parameter_count():,} parameters")


def _inspect_snn(model_path: Path, m, as_json: bool) -> None:
    from eventformer.modelfile.nir_import import DISCRETISATION, floor_description

    cfg = m.config
    shapes = m.shapes()
    rows = []
    for st, shape in zip(m.stages, shapes):
        row = {"name": st.name, "op": st.op, "output": list(shape), "source": st.source}
        if st.weight is not None:
            row["weight"] = list(st.weight.shape)
            row["stride"], row["padding"], row["groups"] = st.stride, st.padding, st.groups
            n = st.neuron
            kind = _neuron_kind(n)
            row["neuron"] = {"rule": n.rule, "node": kind, "options": n.options,
                             "discretisation": DISCRETISATION.get((n.rule, kind), ""),
                             "theta": [float(np.min(n.params["theta"])),
                                       float(np.max(n.params["theta"]))]}
            if n.rule == "sinabs":  # files from before min_v_mem was read have no floor
                row["neuron"]["floor"] = floor_description(n)
        elif st.op in ("sumpool", "avgpool"):
            row["kernel"], row["stride"], row["padding"] = st.kernel, st.stride, st.padding
        rows.append(row)
    info = {"file": str(model_path), "format_version": m.format_version,
            "architecture": m.architecture, "attention": "none", "config": cfg.to_dict(),
            "parameters": m.parameter_count(), "provenance": m.provenance, "stages": rows}
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    err.print(f"[bold]{model_path}[/]: sequential SNN ({cfg.neurons} neurons), "
              f"{m.parameter_count():,} parameters (format version {m.format_version})")
    err.print(f"  input {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}, {cfg.num_classes} "
              f"classes (output spike counts), T {cfg.steps}, split_by {cfg.split_by}")
    if cfg.class_names:
        err.print("  classes: " + ", ".join(cfg.class_names))
    t = Table(title_justify="left")
    for col in ("stage", "op", "output", "weight", "neurons", "threshold"):
        t.add_column(col)
    for r in rows:
        n = r.get("neuron")
        t.add_row(r["name"], r["op"] if "kernel" not in r else
                  f"{r['op']} k{r['kernel']} s{r['stride']} p{r['padding']}",
                  "x".join(map(str, r["output"])), "x".join(map(str, r.get("weight", []))) or "-",
                  f"{n['rule']} {n['node']}" if n else "-",
                  (f"{n['theta'][0]:g}" if n['theta'][0] == n['theta'][1] else
                   f"{n['theta'][0]:g}..{n['theta'][1]:g}") if n else "-")
    err.print(t)
    err.print("  discretisation (how the exporting framework steps each neuron):")
    for r in rows:
        if r.get("neuron"):
            floor = f"; {r['neuron']['floor']}" if "floor" in r["neuron"] else ""
            err.print(f"    {r['name']}: {r['neuron']['discretisation']}{floor}", markup=False)
    if cfg.neurons == "sinabs" and m.provenance.get("format") == "NIR" and \
            "min_v_mem" not in m.provenance:
        err.print("  written before eventformer read sinabs' min_v_mem: its neurons have no "
                  "membrane floor (export the graph again for sinabs' own reading)")
    print_provenance(m.provenance)


def print_provenance(provenance: dict) -> None:
    """The provenance as an aligned key/value block, nested records summarised (``--json`` has
    all of it)."""
    from eventformer.modelfile.provenance import summary_rows

    if not provenance:
        err.print("  provenance: none recorded")
        return
    rows = summary_rows(provenance)
    width = max(len(k) for k, _ in rows)
    err.print("  provenance (--json for all of it):")
    for key, value in rows:
        err.print(f"    {key.ljust(width)}  {value}", markup=False, highlight=False)


def _neuron_kind(n) -> str:
    """The NIR node type a stage's neurons came from, told by its rule and options."""
    if n.rule == "sinabs":
        return "LIF" if n.options.get("norm_input") else "IF"
    if n.rule == "snntorch":
        return "LIF"
    if n.rule == "rockpool":
        return "CubaLIF" if n.options.get("synaptic") else "LIF"
    if n.options.get("integrate"):
        return "IF"
    return "CubaLIF" if n.options.get("synaptic") else "LIF"


@user_errors
def inspect(
    model_path: Path = typer.Argument(
        ..., metavar="MODEL.h5|NAME",
        help="Model file to describe, or a shipped model's name: ssa, ds2ta, ssa_bin, saformer "
             "(an existing path wins)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable on stdout (the whole "
                                                     "provenance included)."),
):
    """Print a model file's network (Spikformer, QKFormer, Spike-driven Transformer, or a
    sequential SNN), parameter count, neuron parameters and provenance."""
    from eventformer.modelfile import attention_summary, layer_specs, load
    from eventformer.modelfile.format import NETWORK_NAMES

    model_path = resolve_weights(model_path)
    m = load(model_path)
    if m.architecture == "snn":
        _inspect_snn(model_path, m, as_json)
        return
    cfg = m.config
    info = {"file": str(model_path), "format_version": m.format_version,
            "architecture": m.network, "attention": attention_summary(m),
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
    err.print(f"[bold]{model_path}[/]: {NETWORK_NAMES[m.network]}, {m.parameter_count():,} "
              f"parameters (format version {m.format_version})")
    if cfg.layout is None:
        err.print(f"  input {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}, "
                  f"SPS {list(cfg.sps_channels)}, D {cfg.dim}, {cfg.heads} heads, depth "
                  f"{cfg.depth}, MLP {cfg.mlp_hidden}, {cfg.num_classes} classes, "
                  f"{cfg.tokens} tokens")
        err.print(f"  T {cfg.steps}, split_by {cfg.split_by}, attention {cfg.attention} "
                  f"(scale {cfg.scale}), LIF tau {cfg.tau} theta {cfg.theta} / attn "
                  f"{cfg.attn_theta}")
    else:  # a model description: one line per block stage
        from eventformer.modelfile.export import stage_lines

        desc = cfg.description
        err.print(f"  input {cfg.in_channels}x{cfg.image_size}x{cfg.image_size} "
                  f"({desc.input}), {len(desc.stages)} block stage(s), {desc.residual} "
                  f"residuals, {cfg.num_classes} classes", markup=False)
        for line in stage_lines(cfg):
            err.print("    " + line, markup=False)
        err.print(f"  T {cfg.steps}, split_by {cfg.split_by}, LIF tau {cfg.tau} theta "
                  f"{cfg.theta} / attn {cfg.attn_theta}")
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
    print_provenance(m.provenance)


def describe_found(att: dict) -> str:
    """How export chose the attention operator, and the options it took, in one line."""
    keys = ", ".join(att["keys"][:4]) + (", ..." if len(att["keys"]) > 4 else "")
    told = {"keys": f"told by the keys {keys}" if keys else "no variant keys in the checkpoint",
            "option": "from --attention",
            "keys and option": f"from --attention, agreeing with the keys {keys}",
            "default": "the checkpoint has no blocks",
            "layout": "each stage's, fixed by the released layout"}[att["from"]]
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
