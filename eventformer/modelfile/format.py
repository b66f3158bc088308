"""The eventformer HDF5 model file: versioned, self-describing, validated on load.

Layout (format_version 1)::

    /                 attrs: format="eventformer", format_version=1, architecture="spikformer",
                             config (JSON), provenance (JSON: source checkpoint, sha256, tool)
    /layers/<name>/   one group per spiking layer (LIF module name) and "head":
                      datasets weight (folded, PyTorch layout [Cout, Cin(, KH, KW)]), bias;
                      attrs kind, source, stride, padding, tau, theta, v_reset, reset, decay_input

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
from .schema import LayerSpec, layer_specs

FORMAT_NAME = "eventformer"
FORMAT_VERSION = 1
ARCHITECTURES = ("spikformer",)


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
class ModelFile:
    config: SpikformerConfig
    layers: dict[str, LayerParams]
    architecture: str = "spikformer"
    provenance: dict = field(default_factory=dict)
    path: str = ""

    def parameter_count(self) -> int:
        return int(sum(p.weight.size + (p.bias.size if p.bias is not None else 0)
                       for p in self.layers.values() if p.weight is not None))


def save(path: str | os.PathLike, model: ModelFile) -> None:
    """Write ``model`` to ``path`` (overwritten), after validating it against its schema."""
    _validate(model, str(path))
    # written beside PATH, then renamed over it: a failed write leaves PATH as it was
    partial = f"{os.fspath(path)}.{os.getpid()}.partial"
    try:
        _write(partial, model)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _write(path: str, model: ModelFile) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["architecture"] = model.architecture
        f.attrs["config"] = json.dumps(model.config.to_dict())
        f.attrs["provenance"] = json.dumps(model.provenance)
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


def load(path: str | os.PathLike) -> ModelFile:
    """Read and validate a model file; every problem is a :class:`ModelFileError` sentence."""
    import h5py

    path = str(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such model file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a directory, not a model file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ModelFileError(f"{path}: not an HDF5 file (an eventformer model file is .h5; "
                             "convert a PyTorch checkpoint with `eventformer export`)") from None
    with f:
        fmt = _attr(f, "format", path)
        if fmt != FORMAT_NAME:
            raise ModelFileError(f"{path}: an HDF5 file but not an eventformer model (format={fmt!r})")
        version = int(_attr(f, "format_version", path))
        if version != FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: model file format version {version}, this eventformer reads version "
                f"{FORMAT_VERSION}")
        arch = _attr(f, "architecture", path)
        if arch not in ARCHITECTURES:
            raise ModelFileError(f"{path}: unknown architecture {arch!r}")
        try:
            config = SpikformerConfig.from_dict(json.loads(_attr(f, "config", path)))
            config.validate()
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{path}: bad configuration: {exc}") from None
        try:
            provenance = json.loads(f.attrs.get("provenance", "{}"))
        except ValueError:
            provenance = {}
        if "layers" not in f:
            raise ModelFileError(f"{path}: has no 'layers' group")
        group = f["layers"]
        layers: dict[str, LayerParams] = {}
        for spec in layer_specs(config):
            if spec.name not in group:
                raise ModelFileError(f"{path}: layer {spec.name!r} is missing")
            layers[spec.name] = _read_layer(group[spec.name], spec, path)
        extra = sorted(set(group) - set(layers))
        if extra:
            raise ModelFileError(f"{path}: unexpected layer {extra[0]!r} for this configuration")
    model = ModelFile(config, layers, arch, provenance, path)
    _validate(model, path)
    return model


def _attr(f, key, path):
    if key not in f.attrs:
        raise ModelFileError(f"{path}: not an eventformer model file (no '{key}' attribute)")
    value = f.attrs[key]
    return value.decode() if isinstance(value, bytes) else value


def _read_layer(g, spec: LayerSpec, path: str) -> LayerParams:
    def dataset(key):
        if key not in g:
            raise ModelFileError(f"{path}: layer {spec.name!r} has no {key}")
        arr = g[key][()]
        if not np.issubdtype(arr.dtype, np.floating):
            raise ModelFileError(f"{path}: {spec.name}/{key} has dtype {arr.dtype}, expected float")
        return arr.astype(np.float32)

    weight = bias = None
    if spec.weight_shape is not None:
        weight, bias = dataset("weight"), dataset("bias")
    try:
        reset = g.attrs.get("reset", "hard")
        reset = reset.decode() if isinstance(reset, bytes) else str(reset)
        return LayerParams(
            name=spec.name, kind=str(g.attrs.get("kind", spec.kind)), weight=weight, bias=bias,
            tau=float(g.attrs["tau"]), theta=float(g.attrs["theta"]),
            v_reset=None if reset == "soft" else float(g.attrs["v_reset"]),
            decay_input=bool(g.attrs["decay_input"]), stride=int(g.attrs["stride"]),
            padding=int(g.attrs["padding"]), source=str(g.attrs.get("source", "")))
    except KeyError as exc:
        raise ModelFileError(f"{path}: layer {spec.name!r} lacks the attribute {exc.args[0]}") from None


def _validate(model: ModelFile, path: str) -> None:
    for spec in layer_specs(model.config):
        p = model.layers.get(spec.name)
        if p is None:
            raise ModelFileError(f"{path}: layer {spec.name!r} is missing")
        if p.kind != spec.kind:
            raise ModelFileError(f"{path}: layer {spec.name!r} is a {p.kind}, expected {spec.kind}")
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
