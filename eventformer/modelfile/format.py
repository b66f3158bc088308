"""The eventformer HDF5 model file: versioned, self-describing, validated on load.

Layout (format_version 3; 2 for a configuration of Spikformer's own layout)::

    /                 attrs: format="eventformer", format_version=3, architecture="spikformer",
                             config (JSON; its "attention" names the operator, its "layout" holds
                             the model description: embedding stages, block stages, input,
                             residual, head; see eventformer.models.description),
                             provenance (JSON: source checkpoint, sha256, tool; file and
                             folder names, never the writing machine's absolute paths)
    /layers/<name>/   one group per spiking layer (LIF module name; an embedding stage without a
                      LIF: its conv's name) and "head", in the description's forward order:
                      datasets weight (folded, PyTorch layout [Cout, Cin(, KH, KW)]), bias;
                      attrs kind, source, stride, padding, tau, theta, v_reset, reset, decay_input
                      (a saformer block has no v_lif)
    /attention/block.<i>.attn/
                      one group per block, named by its attention module (the description's
                      "{prefix}.{i}.{attn}"): attr operator (ssa | ds2ta | ssa_bin | saformer,
                      its block stage's) and exactly that operator's parameters as datasets
                      (SPEC §4; integers int32, floats float32, T_AW and L scalar datasets):
                        ssa       none
                        ds2ta     tau [4] (q, k, v, proj decay exponents), taw [], nsad_table [H, d+1]
                        ssa_bin   delta [H], vbar [D]
                        saformer  dwc_weight [D, 3, 3], dwc_bias [D] (BN folded), pool_rows []

Version 2 is version 3 without a layout in the configuration: Spikformer's own layout, derived from
the configuration's sps_channels, sps_pool, depth, ... (a file of such a configuration is still
written as version 2, which older readers read). Version 1 (no /attention group) is version 2
without the operator: it still loads, as ``ssa``.
Weights are float32 on disk; the engine casts them to its run dtype. Anything that does not match
the schema derived from the configuration is rejected with one sentence naming the first problem.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelFileError
from ..models.config import SpikformerConfig
from .provenance import portable
from .reading import (
    attr,
    check_fields,
    check_model_path,
    flag,
    float_dataset,
    hdf5_damage,
    int_dataset,
    integer,
    json_object,
    number,
    text,
    where,
)
from .schema import (
    CONFIG_FIELDS,
    LayerSpec,
    attention_param_specs,
    attention_problem,
    block_specs,
    check_config,
    layer_specs,
)

FORMAT_NAME = "eventformer"
FORMAT_VERSION = 3  # the newest this writes (a configuration with a layout)
READABLE_VERSIONS = (1, 2, 3)
SPIKFORMER_VERSION = 2  # a configuration of Spikformer's own layout (no layout field)
SNN_VERSION = 2  # sequential SNN files (architecture "snn")
ARCHITECTURES = ("spikformer", "snn")  # snn: sequential spiking CNNs (NIR import)


@dataclass
class LayerParams:
    name: str
    kind: str
    weight: np.ndarray | None
    bias: np.ndarray | None
    tau: float = 2.0
    theta: float = 1.0
    v_reset: float | None = 0.0  # None = soft reset
    decay_input: bool = True
    stride: int = 1
    padding: int = 0
    source: str = ""


@dataclass
class AttentionParams:
    """One block's attention operator and its parameters (name -> array; 0-d for T_AW and L)."""

    operator: str
    params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ModelFile:
    config: SpikformerConfig
    layers: dict[str, LayerParams]
    architecture: str = "spikformer"
    provenance: dict = field(default_factory=dict)
    path: str = ""
    attention: list[AttentionParams] = field(default_factory=list)  # one per block
    format_version: int | None = None  # the version it was read from (None: will be written as)

    def __post_init__(self):
        # SSA has no parameters: a model built without attention entries is SSA in every block
        if not self.attention and self.config.attention == "ssa":
            operators = [stage.attention for stage, _ in self.config.description.blocks()]
            if all(op == "ssa" for op in operators):
                self.attention = [AttentionParams("ssa") for _ in operators]
        if self.format_version is None:
            self.format_version = written_version(self.config)

    @property
    def network(self) -> str:
        """The network the description lays out: "spikformer", "qkformer" or "sdt"
        (:func:`network_of`)."""
        return network_of(self.config)

    def parameter_count(self) -> int:
        """Weights and biases of every layer plus the attention operators' stored arrays."""
        n = sum(p.weight.size + (p.bias.size if p.bias is not None else 0)
                for p in self.layers.values() if p.weight is not None)
        n += sum(np.asarray(v).size for a in self.attention for v in a.params.values()
                 if np.ndim(v) > 0)
        return int(n)


def written_version(config: SpikformerConfig) -> int:
    """The format version a configuration is written as: 3 with a layout, else 2 (which readers
    from before layouts read)."""
    return SPIKFORMER_VERSION if config.layout is None else FORMAT_VERSION


def save(path: str | os.PathLike, model) -> None:
    """Write ``model`` (a :class:`ModelFile` or a sequential
    :class:`~eventformer.modelfile.snn.SnnModelFile`) to ``path`` (overwritten, format version
    3, or 2 for Spikformer's own layout and sequential SNNs), after validating it."""
    from .snn import SnnModelFile, check_snn

    if isinstance(model, SnnModelFile):
        check_snn(model, str(path))
    else:
        _validate(model, str(path))
    # written beside PATH, then renamed over it: a failed write leaves PATH as it was
    partial = f"{os.fspath(path)}.{os.getpid()}.partial"
    try:
        _write(partial, model)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _write(path: str, model) -> None:
    import h5py

    from .snn import SnnModelFile, write_snn

    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        if isinstance(model, SnnModelFile):
            f.attrs["format_version"] = SNN_VERSION
            write_snn(f, model)
            return
        f.attrs["format_version"] = written_version(model.config)
        f.attrs["architecture"] = model.architecture
        f.attrs["config"] = json.dumps(model.config.to_dict())
        f.attrs["provenance"] = json.dumps(portable(model.provenance))
        layers = f.create_group("layers")
        for spec in layer_specs(model.config):
            p = model.layers[spec.name]
            g = layers.create_group(spec.name)
            g.attrs["kind"] = p.kind
            g.attrs["source"] = p.source
            g.attrs["stride"] = p.stride
            g.attrs["padding"] = p.padding
            g.attrs["tau"] = p.tau
            g.attrs["theta"] = p.theta
            g.attrs["reset"] = "soft" if p.v_reset is None else "hard"
            g.attrs["v_reset"] = 0.0 if p.v_reset is None else p.v_reset
            g.attrs["decay_input"] = p.decay_input
            if p.weight is not None:
                g.create_dataset("weight", data=np.asarray(p.weight, np.float32))
                g.create_dataset("bias", data=np.asarray(p.bias, np.float32))
        attention = f.create_group("attention")
        for blk, a in zip(block_specs(model.config), model.attention):
            g = attention.create_group(blk.name)
            g.attrs["operator"] = a.operator
            for s in attention_param_specs(blk.geometry, a.operator):
                dtype = np.int32 if s.dtype == "int" else np.float32
                g.create_dataset(s.name, data=np.asarray(a.params[s.name], dtype))


def load(path: str | os.PathLike):
    """Read and validate a model file: a :class:`ModelFile` (Spikformer family) or a sequential
    SNN's :class:`~eventformer.modelfile.snn.SnnModelFile`; every problem is a
    :class:`ModelFileError` sentence naming the attribute or dataset at fault."""
    import h5py

    path = str(path)
    check_model_path(path)
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ModelFileError(f"{path}: not an HDF5 file (an eventformer model file is .h5; "
                             "convert a PyTorch checkpoint with `eventformer export`)") from None
    try:
        with f:
            return _read(f, path)
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        damage = hdf5_damage(exc, path)
        if damage is None:
            raise
        raise damage from None


def _read(f, path: str):
    fmt = f.attrs.get("format")
    fmt = fmt.decode(errors="replace") if isinstance(fmt, bytes) else fmt
    if fmt is None:
        raise ModelFileError(f"{path}: not an eventformer model file (no 'format' attribute)")
    if text(fmt, "the attribute format", path) != FORMAT_NAME:
        raise ModelFileError(f"{path}: an HDF5 file but not an eventformer model "
                             f"(format={fmt!r})")
    version = integer(attr(f, "format_version", path), "format_version", path, 0, 1 << 30)
    if version not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{path}: model file format version {version}, this eventformer reads versions "
            f"{' and '.join(map(str, READABLE_VERSIONS))}")
    arch = text(attr(f, "architecture", path), "the attribute architecture", path)
    if arch not in ARCHITECTURES:
        raise ModelFileError(f"{path}: unknown architecture {arch!r}")
    provenance = json_object(f.attrs.get("provenance", "{}"), "the attribute provenance", path)
    if arch == "snn":
        from .snn import read_snn

        return read_snn(f, path, version, provenance)
    fields = check_fields(json_object(attr(f, "config", path), "the attribute config", path),
                          CONFIG_FIELDS, path)
    try:
        config = SpikformerConfig.from_dict(fields)
        if version == 1 and config.attention != "ssa":
            raise ValueError(f"a version 1 file holds only ssa attention, not "
                             f"{config.attention!r}")
        if version < 3 and config.layout is not None:
            raise ValueError(f"a version {version} file holds Spikformer's own layout, not a "
                             "layout field")
        check_config(config)
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: bad configuration: {exc}") from None
    group = _group(f, "layers", path, "has no 'layers' group")
    layers: dict[str, LayerParams] = {}
    for spec in layer_specs(config):
        if spec.name not in group:
            raise ModelFileError(f"{path}: layer {spec.name!r} is missing")
        layers[spec.name] = _read_layer(_group(group, spec.name, path), spec, path)
    extra = sorted(set(group) - set(layers))
    if extra:
        raise ModelFileError(f"{path}: unexpected layer {extra[0]!r} for this configuration")
    if version == 1:  # written before the variants existed: SSA in every block
        attention = [AttentionParams("ssa") for _ in range(config.depth)]
    else:
        attention = _read_attention(f, config, path)
    model = ModelFile(config, layers, arch, provenance, path, attention, version)
    _validate(model, path)  # ranges checked before integers are narrowed to int32
    for blk, a in zip(block_specs(config), model.attention):
        for s in attention_param_specs(blk.geometry, a.operator):
            a.params[s.name] = np.asarray(a.params[s.name],
                                          np.int32 if s.dtype == "int" else np.float32)
    return model


def _group(parent, key: str, path: str, missing: str | None = None):
    """The subgroup ``key`` of ``parent``; missing, or a dataset in its place, is one sentence."""
    import h5py

    if key not in parent:
        raise ModelFileError(f"{path}: {missing or where(parent, key) + ' is missing'}")
    g = parent[key]
    if not isinstance(g, h5py.Group):
        raise ModelFileError(f"{path}: {where(parent, key)} is a dataset, expected a group")
    return g


def _read_layer(g, spec: LayerSpec, path: str) -> LayerParams:
    """One spiking layer: its folded synapse (shapes checked against the configuration before
    reading) and its neuron's parameters; stride and padding are the architecture's."""
    name = where(g)
    attrs = {key: g.attrs[key] for key in g.attrs}

    def a(key, default=None, required=True):
        if key not in attrs:
            if required:
                raise ModelFileError(f"{path}: {name} lacks the attribute {key!r}")
            return default
        return attrs[key]

    def what(key):
        return f"{name} attribute {key}"

    weight = bias = None
    if spec.weight_shape is not None:
        weight = float_dataset(g, "weight", path, spec.weight_shape).astype(np.float32)
        bias = float_dataset(g, "bias", path, spec.bias_shape).astype(np.float32)
    reset = text(a("reset", "hard", required=False), what("reset"), path)
    if reset not in ("hard", "soft"):
        raise ModelFileError(f"{path}: {what('reset')} is {reset!r}, expected hard or soft")
    stride = integer(a("stride"), what("stride"), path, spec.stride, spec.stride)
    padding = integer(a("padding"), what("padding"), path, spec.padding, spec.padding)
    return LayerParams(
        name=spec.name, kind=text(a("kind", spec.kind, required=False), what("kind"), path),
        weight=weight, bias=bias,
        tau=number(a("tau"), what("tau"), path, low=0.0, low_open=True),
        theta=number(a("theta"), what("theta"), path, low=0.0, low_open=True),
        v_reset=None if reset == "soft" else number(a("v_reset"), what("v_reset"), path),
        decay_input=flag(a("decay_input"), what("decay_input"), path),
        stride=stride, padding=padding,
        source=text(a("source", "", required=False), what("source"), path))


def _read_attention(f, config: SpikformerConfig, path: str) -> list[AttentionParams]:
    group = _group(f, "attention", path, "has no 'attention' group (a version 2 file names "
                                         "its attention operator per block)")
    blocks = block_specs(config)
    names = [blk.name for blk in blocks]
    out = []
    for blk in blocks:
        name = blk.name
        g = _group(group, name, path, f"attention group {name!r} is missing")
        if "operator" not in g.attrs:
            raise ModelFileError(f"{path}: {name} does not name its attention operator")
        op = text(g.attrs["operator"], f"{where(g)} attribute operator", path)
        if op != blk.operator:
            one = _ONE_OPERATOR if config.layout is None else ""
            raise ModelFileError(f"{path}: {name} is {op!r} attention but the configuration says "
                                 f"{blk.operator!r}{one}")
        specs = attention_param_specs(blk.geometry, op)
        extra = sorted(set(g) - {s.name for s in specs})
        if extra:
            raise ModelFileError(f"{path}: {name} ({op}) has an unexpected dataset {extra[0]!r}")
        params = {}
        for s in specs:
            if s.name not in g:
                raise ModelFileError(f"{path}: {name} ({op}) has no dataset {s.name!r}")
            params[s.name] = (int_dataset(g, s.name, path, s.shape) if s.dtype == "int" else
                              float_dataset(g, s.name, path, s.shape))
        out.append(AttentionParams(op, params))
    extra = sorted(set(group) - set(names))
    if extra:
        raise ModelFileError(f"{path}: unexpected attention group {extra[0]!r} for "
                             f"{config.depth} blocks")
    return out


_ONE_OPERATOR = " (one operator for every block)"


def _validate(model: ModelFile, path: str) -> None:
    try:
        check_config(model.config)
    except ValueError as exc:
        raise ModelFileError(f"{path}: bad configuration: {exc}") from None
    for spec in layer_specs(model.config):
        p = model.layers.get(spec.name)
        if p is None:
            raise ModelFileError(f"{path}: layer {spec.name!r} is missing")
        if p.kind != spec.kind:
            raise ModelFileError(f"{path}: layer {spec.name!r} is of kind {p.kind!r}, expected "
                                 f"{spec.kind}")
        if spec.weight_shape is not None:
            for key, want in (("weight", spec.weight_shape), ("bias", spec.bias_shape)):
                arr = getattr(p, key)
                if arr is None or tuple(arr.shape) != want:
                    got = None if arr is None else tuple(arr.shape)
                    raise ModelFileError(
                        f"{path}: {spec.name}/{key} has shape {got}, expected {want}")
                if not np.all(np.isfinite(arr)):
                    raise ModelFileError(f"{path}: {spec.name}/{key} holds NaN or infinite values")
        if spec.kind != "head":
            if not (np.isfinite(p.tau) and p.tau > 0):
                raise ModelFileError(f"{path}: {spec.name} has tau {p.tau}, expected > 0")
            if not (np.isfinite(p.theta) and p.theta > 0):
                raise ModelFileError(f"{path}: {spec.name} has threshold {p.theta}, expected > 0")
    extra = sorted(set(model.layers) - {s.name for s in layer_specs(model.config)})
    if extra:
        raise ModelFileError(f"{path}: unexpected layer {extra[0]!r} for this configuration")
    blocks = block_specs(model.config)
    if len(model.attention) != len(blocks):
        raise ModelFileError(f"{path}: {len(model.attention)} attention entries for "
                             f"{len(blocks)} blocks")
    for blk, a in zip(blocks, model.attention):
        name = blk.name
        if a.operator != blk.operator:
            raise ModelFileError(f"{path}: {name} is {a.operator!r} attention but the "
                                 f"configuration says {blk.operator!r}")
        problem = attention_problem(blk.geometry, a.operator, a.params)
        if problem is not None:
            raise ModelFileError(f"{path}: {name}/{problem[0]} {problem[1]}")


TASA_LAYERS = ("q", "k", "v", "proj")  # the order of DS2TA's tau

#: The networks a configuration may lay out, under the names export gives the released codes'
#: checkpoints (``export.FAMILIES``), and as a sentence names them.
NETWORK_NAMES = {"spikformer": "Spikformer", "qkformer": "QKFormer",
                 "sdt": "Spike-driven Transformer"}


def network_of(config: SpikformerConfig) -> str:
    """Which network a configuration lays out (a :data:`NETWORK_NAMES` key), told from its
    model description by what each successor added to Spikformer's blocks: "qkformer" where a
    block stage runs QKFormer's token QK attention, "sdt" where the blocks run SDSA on the
    Spike-driven Transformer's membrane stream, else "spikformer" (its own layout, its
    static-image layouts, a SPEC §4 variant). The file's ``architecture`` attribute says
    "spikformer" for all three: it names the kind of model file, not the network."""
    desc = config.description
    operators = {stage.attention for stage in desc.stages}
    if "token_qk" in operators:
        return "qkformer"
    if desc.residual == "membrane" or "sdsa" in operators:
        return "sdt"
    return "spikformer"


def attention_operators(config) -> str:
    """The attention operators a configuration's blocks run, in stage order, each once, joined
    by "+": "token_qk+ssa" for QKFormer, "sdsa" for SDT, "ssa" or a SPEC §4 variant for
    Spikformer (a configuration without blocks: its ``attention``; a sequential SNN's "none")."""
    if getattr(config, "layout", None) is None:
        return config.attention
    operators = dict.fromkeys(stage.attention for stage, _ in config.description.blocks())
    return "+".join(operators) or config.attention


def attention_summary(model: ModelFile) -> dict:
    """The attention operator and its parameters per block, JSON-ready (for ``inspect``).

    Integer parameters are listed in full (tau as q/k/v/proj, T_AW, NSAD tables, delta, L);
    float arrays (vbar, the folded DWC) as shape, min, max and mean."""
    blocks = []
    for blk, a in zip(block_specs(model.config), model.attention):
        row: dict = {"block": blk.name, "operator": a.operator}
        for s in attention_param_specs(blk.geometry, a.operator):
            v = np.asarray(a.params[s.name])
            if s.name == "tau":
                row[s.name] = dict(zip(TASA_LAYERS, (int(x) for x in v)))
            elif s.dtype == "int":
                row[s.name] = v.tolist()
            else:
                row[s.name] = {"shape": list(v.shape), "min": float(v.min()),
                               "max": float(v.max()), "mean": float(v.mean())}
        blocks.append(row)
    return {"operator": attention_operators(model.config), "blocks": blocks}
