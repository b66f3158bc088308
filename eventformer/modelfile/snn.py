"""Model files of sequential spiking CNNs (architecture ``"snn"``): what NIR import writes.

Layout (format_version 2, architecture "snn")::

    /                 attrs: format="eventformer", format_version=2, architecture="snn",
                             config (JSON: input shape, classes, T, framing, the neuron rule),
                             provenance (JSON: source file, sha256, tool, NIR node per stage)
    /stages/<NN>-<name>/
                      one group per stage, in forward order; attr op:
                        conv2d   datasets weight [Cout, Cin/groups, kh, kw], bias [Cout];
                                 attrs stride, padding, groups; a neuron subgroup
                        linear   datasets weight [out, in], bias [out]; a neuron subgroup
                        sumpool  attrs kernel, stride, padding (on the events before the next
                                 synaptic layer)
                        avgpool  the same; 1/kernel^2 folds into the next synaptic layer
                        flatten  (C, H, W) -> C*H*W in PyTorch's order
      .../neuron/     attr rule (sinabs | snntorch | norse | rockpool), options as attrs; parameter
                      datasets per neuron (float64, the layer's output shape)

Weights keep the precision they were exported in (float64 stays float64), so that the float64
engine can reproduce the exporting framework to the bit. Loading validates shapes, the chain
(every synaptic layer's input matches the stage before it) and finite values, and fails with one
sentence naming the first problem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..errors import ModelFileError
from .provenance import portable
from .reading import (
    attr,
    check_fields,
    float_dataset,
    int_field,
    integer,
    json_object,
    list_field,
    number,
    text,
    text_field,
    where,
)
from .schema import MAX_CHANNELS, MAX_CLIP_US, MAX_IMAGE_SIZE, MAX_STEPS

ARCHITECTURE = "snn"
INT32_MAX = int(np.iinfo(np.int32).max)
SYNAPTIC_OPS = ("conv2d", "linear")
POOL_OPS = ("sumpool", "avgpool")
STAGE_OPS = SYNAPTIC_OPS + POOL_OPS + ("flatten",)

#: The discrete neuron rules the engine steps (kernels/snn.py), their per-neuron parameters and
#: options (with their allowed values); every rule is one framework's own forward pass.
NEURON_RULES = {
    "sinabs": {"params": ("alpha_mem", "alpha_syn", "theta", "min_v", "reset_value"),
               "options": {"synaptic": (0, 1), "norm_input": (0, 1), "multi_spike": (0, 1),
                           "max_spikes": None, "reset": ("subtract", "value"),
                           "floor": (0, 1)}},
    "snntorch": {"params": ("beta", "theta"),
                 "options": {"reset": ("subtract", "zero", "none")}},
    "rockpool": {"params": ("alpha_mem", "alpha_syn", "theta"),
                 "options": {"synaptic": (0, 1), "max_spikes": None}},
    "norse": {"params": ("tau_mem_inv", "tau_syn_inv", "v_leak", "theta", "v_reset"),
              "options": {"synaptic": (0, 1), "integrate": (0, 1), "reset": ("value", "subtract"),
                          "dt": None}},
}


@dataclass
class SnnConfig:
    """What a sequential SNN's model file says besides its stages."""

    in_channels: int = 2
    image_size: int = 32
    num_classes: int = 11
    steps: int = 16
    split_by: str = "number"
    clip_us: int | None = None
    class_names: tuple[str, ...] = field(default_factory=tuple)
    neurons: str = "sinabs"  # the discretisation rule of every neuron (one framework's)
    attention: str = "none"  # no attention operator: reports and compare rows say so

    def validate(self) -> None:
        if self.in_channels <= 0 or self.image_size <= 0:
            raise ValueError(f"input {self.in_channels}x{self.image_size}x{self.image_size} "
                             "is empty")
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.split_by not in ("number", "time"):
            raise ValueError(f"split_by must be 'number' or 'time', got {self.split_by!r}")
        if self.clip_us is not None and self.clip_us <= 0:
            raise ValueError(f"clip_us must be positive, got {self.clip_us}")
        if self.neurons not in NEURON_RULES:
            raise ValueError(f"unknown neuron rule {self.neurons!r} "
                             f"(known: {', '.join(NEURON_RULES)})")
        if self.attention != "none":
            raise ValueError(f"a sequential SNN has no attention operator, got "
                             f"{self.attention!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} "
                             "classes")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SnnConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if "class_names" in d:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)


@dataclass
class NeuronParams:
    """One layer's neurons: the rule, per-neuron parameters (the layer's output shape, C
    first), and the rule's options."""

    rule: str
    params: dict[str, np.ndarray]
    options: dict = field(default_factory=dict)


@dataclass
class Stage:
    """One step of the chain: a synaptic layer with its neurons, a pool, or a flatten."""

    op: str
    name: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    stride: int = 1
    padding: int = 0
    groups: int = 1
    kernel: int = 0  # pools
    neuron: NeuronParams | None = None
    source: str = ""  # the NIR node it came from

    @property
    def kind(self) -> str:
        return self.op

    @property
    def theta(self) -> float:
        """The largest threshold of the layer's neurons (for fixed-point bounds)."""
        return float(np.max(self.neuron.params["theta"]))


@dataclass
class SnnModelFile:
    config: SnnConfig
    stages: list[Stage]
    architecture: str = ARCHITECTURE
    provenance: dict = field(default_factory=dict)
    path: str = ""
    format_version: int = 2

    @property
    def layers(self) -> dict[str, Stage]:
        """The synaptic stages by name (what carries weights and neurons)."""
        return {s.name: s for s in self.stages if s.op in SYNAPTIC_OPS}

    def parameter_count(self) -> int:
        return int(sum(s.weight.size + (s.bias.size if s.bias is not None else 0)
                       for s in self.stages if s.weight is not None))

    def shapes(self) -> list[tuple[int, ...]]:
        """The output shape of every stage ((C, H, W) or (features,)), checking the chain;
        a ValueError names the first stage that does not fit."""
        return stage_shapes(self.config, self.stages)


def pooled_side(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def stage_shapes(config: SnnConfig, stages: list[Stage]) -> list[tuple[int, ...]]:
    shape: tuple[int, ...] = (config.in_channels, config.image_size, config.image_size)
    out = []
    for st in stages:
        where = f"stage {st.name!r} ({st.op})"
        if st.op == "conv2d":
            if len(shape) != 3:
                raise ValueError(f"{where} needs an image input, gets {shape}")
            cout, cin_g, kh, kw = st.weight.shape
            if st.groups < 1 or shape[0] % st.groups or cout % st.groups:
                raise ValueError(f"{where}: {st.groups} groups do not divide {shape[0]} input "
                                 f"and {cout} output channels")
            if cin_g * st.groups != shape[0]:
                raise ValueError(f"{where}: weight takes {cin_g * st.groups} input channels, "
                                 f"the stage before gives {shape[0]}")
            h = (shape[1] + 2 * st.padding - kh) // st.stride + 1
            w = (shape[2] + 2 * st.padding - kw) // st.stride + 1
            if h <= 0 or w <= 0:
                raise ValueError(f"{where}: a {kh}x{kw} kernel does not fit its "
                                 f"{shape[1]}x{shape[2]} input")
            shape = (cout, h, w)
        elif st.op == "linear":
            features = int(np.prod(shape))
            if len(shape) != 1 and not (out and stages[len(out) - 1].op == "flatten"):
                raise ValueError(f"{where} follows an image output {shape} without a flatten")
            if st.weight.shape[1] != features:
                raise ValueError(f"{where}: weight takes {st.weight.shape[1]} inputs, the stage "
                                 f"before gives {features}")
            shape = (st.weight.shape[0],)
        elif st.op in POOL_OPS:
            if len(shape) != 3:
                raise ValueError(f"{where} needs an image input, gets {shape}")
            k, s, p = st.kernel, st.stride, st.padding
            if k < 1 or s < 1 or p < 0 or 2 * p > k:
                raise ValueError(f"{where}: kernel {k}, stride {s}, padding {p} is not a pool")
            h, w = pooled_side(shape[1], k, s, p), pooled_side(shape[2], k, s, p)
            if h <= 0 or w <= 0:
                raise ValueError(f"{where}: a {k}x{k} pool does not fit {shape[1]}x{shape[2]}")
            shape = (shape[0], h, w)
        elif st.op == "flatten":
            shape = (int(np.prod(shape)),)
        else:
            raise ValueError(f"{where}: unknown operation (known: {', '.join(STAGE_OPS)})")
        out.append(shape)
    return out


def check_snn(model: SnnModelFile, path: str) -> None:
    """Validate a sequential SNN model file; a ModelFileError names the first problem."""
    cfg = model.config
    try:
        cfg.validate()
        shapes = model.shapes()
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    synaptic = [s for s in model.stages if s.op in SYNAPTIC_OPS]
    if not synaptic:
        raise ModelFileError(f"{path}: the network has no synaptic layer")
    names = [s.name for s in model.stages]
    if len(set(names)) != len(names):
        raise ModelFileError(f"{path}: two stages share a name")
    last = model.stages[-1]
    if last.op not in SYNAPTIC_OPS:
        raise ModelFileError(f"{path}: the network ends in a {last.op}, not a spiking layer "
                             "whose spike counts are the class scores")
    if int(np.prod(shapes[-1])) != cfg.num_classes:
        raise ModelFileError(f"{path}: the output layer has {int(np.prod(shapes[-1]))} "
                             f"neurons for {cfg.num_classes} classes")
    # the chain ends in a synaptic layer, so every average pool has one after it to fold into
    for st, shape in zip(model.stages, shapes):
        if st.op not in SYNAPTIC_OPS:
            continue
        for key in ("weight", "bias"):
            arr = getattr(st, key)
            if arr is None or not np.all(np.isfinite(arr)):
                raise ModelFileError(f"{path}: {st.name}/{key} is missing or holds NaN or "
                                     "infinite values")
        if st.bias.shape != (st.weight.shape[0],):
            raise ModelFileError(f"{path}: {st.name}/bias has shape {st.bias.shape}, expected "
                                 f"({st.weight.shape[0]},)")
        n = st.neuron
        if n is None:
            raise ModelFileError(f"{path}: {st.name} has no neurons")
        if n.rule != cfg.neurons:
            raise ModelFileError(f"{path}: {st.name} steps its neurons by the {n.rule} rule, "
                                 f"the configuration says {cfg.neurons}")
        spec = NEURON_RULES[n.rule]
        for key in spec["params"]:
            arr = n.params.get(key)
            if arr is None:
                raise ModelFileError(f"{path}: {st.name} ({n.rule} neurons) lacks {key}")
            try:
                np.broadcast_to(arr, shape)
            except ValueError:
                raise ModelFileError(f"{path}: {st.name}/neuron/{key} has shape {arr.shape}, "
                                     f"which does not broadcast to the layer's {shape}") from None
            if not np.all(np.isfinite(arr)):
                raise ModelFileError(f"{path}: {st.name}/neuron/{key} holds NaN or infinite "
                                     "values")
        for key, allowed in spec["options"].items():
            if key not in n.options:
                raise ModelFileError(f"{path}: {st.name} ({n.rule} neurons) lacks the option "
                                     f"{key}")
            value = n.options[key]
            if allowed is not None and (not isinstance(value, (int, float, str))
                                        or value not in allowed):
                raise ModelFileError(f"{path}: {st.name}: neuron option {key}="
                                     f"{value!r} (allowed: {allowed})")
            if key == "max_spikes":  # 0: no cap on the spikes per step
                integer(value, f"{st.name}: neuron option max_spikes", path, 0, INT32_MAX)
            elif key == "dt":
                number(value, f"{st.name}: neuron option dt", path, low=0.0, low_open=True)
        if np.any(np.asarray(n.params["theta"]) <= 0):
            raise ModelFileError(f"{path}: {st.name} has a threshold <= 0")


def write_snn(f, model: SnnModelFile) -> None:
    """Write ``model`` into the open HDF5 file ``f`` (attributes and /stages)."""
    f.attrs["architecture"] = ARCHITECTURE
    f.attrs["config"] = json.dumps(model.config.to_dict())
    f.attrs["provenance"] = json.dumps(portable(model.provenance))
    group = f.create_group("stages")
    for i, st in enumerate(model.stages):
        g = group.create_group(f"{i:02d}-{st.name}")
        g.attrs["op"] = st.op
        g.attrs["name"] = st.name
        g.attrs["source"] = st.source
        if st.op in SYNAPTIC_OPS:
            g.create_dataset("weight", data=np.asarray(st.weight))
            g.create_dataset("bias", data=np.asarray(st.bias))
            g.attrs["stride"] = st.stride
            g.attrs["padding"] = st.padding
            g.attrs["groups"] = st.groups
            n = g.create_group("neuron")
            n.attrs["rule"] = st.neuron.rule
            for key, value in st.neuron.options.items():
                n.attrs[key] = value
            for key, arr in st.neuron.params.items():
                n.create_dataset(key, data=np.asarray(arr, np.float64))
        elif st.op in POOL_OPS:
            g.attrs["kernel"] = st.kernel
            g.attrs["stride"] = st.stride
            g.attrs["padding"] = st.padding


#: The type and range of every field of a sequential SNN's configuration as read from a file.
SNN_CONFIG_FIELDS = {
    "in_channels": int_field(1, MAX_CHANNELS),
    "image_size": int_field(1, MAX_IMAGE_SIZE),
    "num_classes": int_field(1, 1 << 20),
    "steps": int_field(1, MAX_STEPS),
    "split_by": text_field,
    "clip_us": int_field(1, MAX_CLIP_US, optional=True),
    "class_names": list_field(text_field, 0, 1 << 20),
    "neurons": text_field,
    "attention": text_field,
}
MAX_SIDE = 1 << 12  # kernels, strides and paddings beyond any sensor


def read_snn(f, path: str, version: int, provenance: dict | None = None) -> SnnModelFile:
    """Read a sequential SNN model file from the open HDF5 file ``f`` (its format attributes
    already checked); every attribute and dataset is checked as it is read."""
    import h5py

    fields = check_fields(json_object(attr(f, "config", path), "the attribute config", path),
                          SNN_CONFIG_FIELDS, path)
    try:
        config = SnnConfig.from_dict(fields)
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: bad configuration: {exc}") from None
    if "stages" not in f or not isinstance(f["stages"], h5py.Group):
        raise ModelFileError(f"{path}: has no 'stages' group")
    stages = []
    for key in sorted(f["stages"]):
        g = f["stages"][key]
        if not isinstance(g, h5py.Group):
            raise ModelFileError(f"{path}: stage {key!r} is a dataset, expected a group")

        def a(name, obj=g):
            return attr(obj, name, path)

        def what(name, obj=g):
            return f"{where(obj)} attribute {name}"

        op = text(a("op"), what("op"), path)
        st = Stage(op=op, name=text(attr(g, "name", path, key, required=False), what("name"),
                                    path),
                   source=text(attr(g, "source", path, "", required=False), what("source"),
                               path))
        if op in SYNAPTIC_OPS:
            st.weight = float_dataset(g, "weight", path, ndim=4 if op == "conv2d" else 2)
            st.bias = float_dataset(g, "bias", path, (st.weight.shape[0],))
            side = max(st.weight.shape[2:], default=1)
            st.stride = integer(a("stride"), what("stride"), path, 1, MAX_SIDE)
            st.padding = integer(a("padding"), what("padding"), path, 0, side)
            st.groups = integer(a("groups"), what("groups"), path, 1, MAX_CHANNELS)
            if "neuron" not in g or not isinstance(g["neuron"], h5py.Group):
                raise ModelFileError(f"{path}: stage {key!r} has no neuron group")
            n = g["neuron"]
            st.neuron = NeuronParams(
                rule=text(a("rule", n), what("rule", n), path),
                params={k: float_dataset(n, k, path) for k in n},
                options={k: _option(v, what(k, n), path) for k, v in n.attrs.items()
                         if k != "rule"})
        elif op in POOL_OPS:
            st.kernel = integer(a("kernel"), what("kernel"), path, 1, MAX_SIDE)
            st.stride = integer(a("stride"), what("stride"), path, 1, MAX_SIDE)
            st.padding = integer(a("padding"), what("padding"), path, 0, MAX_SIDE)
        elif op != "flatten":
            raise ModelFileError(f"{path}: stage {key!r} has the unknown operation {op!r}")
        stages.append(st)
    model = SnnModelFile(config, stages, provenance=dict(provenance or {}), path=path,
                         format_version=version)
    check_snn(model, path)
    return model


def _option(value, what: str, path: str):
    """A neuron option: a scalar (number or text); NEURON_RULES says which values it may take."""
    if isinstance(value, np.ndarray):
        if value.ndim:
            raise ModelFileError(f"{path}: {what} is an array of shape {value.shape}, "
                                 "expected one value")
        value = value[()]
    if isinstance(value, bytes):
        return text(value, what, path)
    return value.item() if isinstance(value, np.generic) else value
