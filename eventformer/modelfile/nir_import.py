"""Import a NIR graph (the Neuromorphic Intermediate Representation) into a sequential SNN model
file: what ``eventformer export MODEL.nir`` runs.

A NIR graph holds continuous-time neurons (IF, LIF, CubaLIF); the framework that exported it
steps them with its own discrete rule, and nothing in the file says which framework that was. So
the user names it (``framework``: sinabs, snntorch, norse, rockpool), and every neuron is stepped as that framework steps the module
it exported to that node, with its defaults (:data:`DISCRETISATION`). The parameters are read back
by inverting that framework's exporter, which is what reproduces the exported model's spikes.

What NIR cannot hold is read as each framework's own importer reads it where that is what its
users' networks do: sinabs' membrane floor (``min_v_mem``, not in the file) is minus the
threshold for an IF node, as ``sinabs.from_nir`` builds ``IAFSqueeze(min_v_mem=-v_threshold)``
and as ``sinabs.from_torch.from_model`` converts an ANN, and none for a LIF node (``min_v_mem``
chooses otherwise). Every call into ``nir`` is wrapped: what it raises is one ModelFileError
sentence naming the node.

Supported: Input, Output, Conv2d (stride, padding, groups, bias; no dilation), Affine, Linear,
Scale (between a synaptic layer and its neurons), Flatten, SumPool2d, AvgPool2d, IF, LIF, CubaLIF,
in one chain from the input to the output. Anything else is refused with a sentence naming the
node.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelFileError
from .snn import NeuronParams, SnnConfig, SnnModelFile, Stage, pooled_side, stage_shapes

FRAMEWORKS = ("sinabs", "snntorch", "norse", "rockpool")
#: The integration step each framework's exporter assumes (seconds); sinabs counts in steps.
DEFAULT_DT = {"sinabs": 1.0, "snntorch": 1e-4, "norse": 1e-3, "rockpool": 1e-3}

#: How each framework steps the module it exports to each neuron node (its defaults), and how
#: the node's parameters are read back: what ``export`` and ``inspect`` print.
DISCRETISATION = {
    ("sinabs", "IF"): "sinabs IAF (multi-spike, subtractive reset): v = v + x; "
                      "s = trunc(v / v_th) where v > 0; v = v - s v_th",
    ("sinabs", "LIF"): "sinabs LIF (norm_input, multi-spike, subtractive reset): "
                       "alpha = exp(-1 / tau) (tau in steps); v = alpha v + (1 - alpha) x; "
                       "s = trunc(v / v_th) where v > 0; v = v - s v_th",
    ("snntorch", "LIF"): "snnTorch Leaky (subtract, reset_delay): beta = 1 - dt / tau "
                         "(dt = 1e-4 s, snnTorch's export step); r = previous v > v_th; "
                         "v = (beta v + x) - r v_th; s = v > v_th",
    ("norse", "IF"): "Norse IAFCell (starts at v_reset): v = v + x; s = v > v_th; "
                     "v = v_reset where s",
    ("norse", "LIF"): "Norse LIFBoxCell (starts at v_leak): tau_mem_inv = dt / tau (inverting Norse's export, "
                      "dt = 1e-3 s); v = v + dt tau_mem_inv ((x + v_leak) - v); s = v > v_th; "
                      "v = v_reset where s",
    ("rockpool", "LIF"): "Rockpool LIFNeuronTorch (multi-spike, subtractive reset): alpha = "
                         "exp((1 / tau) * -dt) (dt = 1e-3 s); v = alpha v + x; s = floor(v / "
                         "v_th) where v >= v_th; v = v - s v_th",
    ("rockpool", "CubaLIF"): "Rockpool LIFTorch (multi-spike, subtractive reset): alpha, beta "
                             "= exp((1 / tau_mem | tau_syn) * -dt); i = beta (i + x); v = alpha "
                             "v + i; s = floor(v / v_th) where v >= v_th; v = v - s v_th",
    ("norse", "CubaLIF"): "Norse LIFCell (starts at v_leak, i = 0): tau_mem_inv = dt / tau_mem, tau_syn_inv = dt / "
                          "tau_syn; i = i + x; v = v + dt tau_mem_inv ((v_leak - v) + i); "
                          "i = i - dt tau_syn_inv i; s = v > v_th; v = v_reset where s",
}

#: ``min_v_mem`` (sinabs only): "auto" reads each node as sinabs' own importer does (an IF
#: floored at minus its threshold, a LIF unfloored), "none" floors nothing, "-threshold" floors
#: every IF and LIF at minus its own threshold; a number <= 0 is the floor of every neuron.
MIN_V_MEM_CHOICES = ("auto", "none", "-threshold")

SYNAPTIC_NODES = ("Conv2d", "Affine", "Linear")
NEURON_NODES = ("IF", "LIF", "CubaLIF")
SUPPORTED = ("Input", "Output", "Scale", "Flatten", "SumPool2d", "AvgPool2d") + \
    SYNAPTIC_NODES + NEURON_NODES


@dataclass
class NirReport:
    """What the import read: the chain, the rule per neuron node, what was folded."""

    framework: str
    dt: float
    chain: list[tuple[str, str]] = field(default_factory=list)  # (node name, node type)
    rules: dict[str, str] = field(default_factory=dict)  # neuron node -> its rule sentence
    folded: list[str] = field(default_factory=list)  # sentences about gains folded into weights
    floors: dict[str, str] = field(default_factory=dict)  # sinabs neuron node -> its floor


def needs_nir():
    try:
        import nir
    except ImportError:
        raise ModelFileError("reading NIR graphs needs the nir package: "
                             "pip install 'eventformer[nir]'") from None
    return nir


def is_nir_file(path) -> bool:
    """Whether ``path`` is an HDF5 file laid out as NIR writes it (a top-level 'node' group)."""
    if not os.path.isfile(path):  # a FIFO would block HDF5's open; the caller names the problem
        return False
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "node" in f and "format" not in f.attrs
    except (OSError, ImportError):
        return False


def import_nir(path, *, framework: str, steps: int = 16, split_by: str = "number",
               class_names: tuple[str, ...] = (), dt: float | None = None,
               input_shape: tuple[int, int, int] | None = None,
               min_v_mem: str | float | None = None) -> tuple[SnnModelFile, NirReport]:
    """Read the NIR graph at ``path`` into a sequential SNN model file, stepping its neurons as
    ``framework`` (sinabs, snntorch, norse or rockpool) does. ``input_shape`` (C, H, W): the
    image a flat input node (features only, as in an MLP on the flattened frame) flattens, in
    PyTorch's C-major order. ``min_v_mem`` (sinabs only, see :data:`MIN_V_MEM_CHOICES`; None is
    "auto"): the membrane floor. Every problem is one ModelFileError sentence naming the node."""
    nir = needs_nir()
    path = str(path)
    if framework not in FRAMEWORKS:
        raise ModelFileError(f"unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})")
    floor = min_v_mem_setting(min_v_mem, framework)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    graph = _read_graph(nir, path)
    dt = DEFAULT_DT[framework] if dt is None else float(dt)
    report = NirReport(framework, dt)
    chain = _chain(graph, path)
    report.chain = [(name, type(node).__name__) for name, node in chain]
    in_shape, flat = _input_shape(chain[0][1], path, chain[0][0], input_shape)
    stages = _stages(chain[1:-1], (int(np.prod(in_shape)),) if flat else in_shape, framework,
                     dt, report, path, floor)
    if flat:  # the frame arrives as an image: flatten it, as the exporting model did
        stages.insert(0, Stage("flatten", "input_flatten", source=chain[0][0]))
    c, h, _ = in_shape
    config = SnnConfig(in_channels=c, image_size=h, steps=steps, split_by=split_by,
                       neurons=framework)
    config.num_classes = int(np.prod(stage_shapes(config, stages)[-1]))
    if class_names and len(class_names) != config.num_classes:
        raise ModelFileError(f"{len(class_names)} class names for an output layer of "
                             f"{config.num_classes} neurons")
    config.class_names = tuple(class_names)
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    provenance = {"source": os.path.basename(path), "sha256": digest, "format": "NIR",
                  "nir_version": getattr(nir, "__version__", ""), "framework": framework,
                  "dt": dt, "tool": "eventformer export"}
    if framework == "sinabs":  # what the file's floors were read with (older files lack it)
        provenance["min_v_mem"] = floor
    model = SnnModelFile(config, stages, provenance=provenance, path="")
    return model, report


def min_v_mem_setting(value, framework: str = "sinabs") -> str | float:
    """``min_v_mem`` as given (None, a choice of :data:`MIN_V_MEM_CHOICES`, or a number <= 0,
    also as text) in its checked form; a ModelFileError sentence for anything else."""
    if value is None:
        return "auto"
    if framework != "sinabs":
        raise ModelFileError(f"--min-v-mem is sinabs' membrane floor; {framework} neurons have "
                             "none")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in MIN_V_MEM_CHOICES:
            return text
        try:
            number = float(text)
        except ValueError:
            raise ModelFileError(f"--min-v-mem {value!r}: expected auto, none, -threshold or "
                                 "a number <= 0 (the membrane floor)") from None
    else:
        number = float(value)
    if not math.isfinite(number) or number > 0:
        raise ModelFileError(f"--min-v-mem {value!r}: a membrane floor must be a finite number "
                             "<= 0 (the membranes start at 0)")
    return number + 0.0  # -0.0 is a floor at zero


def _read_graph(nir, path):
    """``nir.read``, with whatever nir (or h5py beneath it) raises as one sentence that names
    the node nir could not read, when one can be told."""
    try:
        return nir.read(path, type_check=False)  # shapes are checked here, per stage
    except Exception as exc:  # nir validates in its nodes' constructors, with any exception
        culprit = _unreadable_node(nir, path)
        if culprit is None:
            raise ModelFileError(f"{path}: not a NIR graph nir can read "
                                 f"({_exception_text(exc)})") from None
        name, kind, problem = culprit
        raise ModelFileError(f"{path}: nir cannot read node {name!r} ({kind}): "
                             f"{problem}") from None


def _exception_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the message held
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unreadable_node(nir, path) -> tuple[str, str, str] | None:
    """The first node (a dotted path inside subgraphs) that nir cannot build on its own from
    the file, its type and what is wrong with it; None when every node builds."""
    import copy

    import h5py

    try:
        with h5py.File(path, "r") as f:
            tree = nir.serialization.hdf2dict(f["node"])
    except Exception:
        return None

    def walk(nodes, prefix):
        if not isinstance(nodes, dict):
            return None
        for name, spec in nodes.items():
            if not isinstance(spec, dict):
                return f"{prefix}{name}", "?", "it is not a group of parameters"
            kind = spec.get("type", "?")
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind == "NIRGraph":
                found = walk(spec.get("nodes"), f"{prefix}{name}.")
                if found is not None:
                    return found
                continue
            try:
                nir.dict2NIRNode(copy.deepcopy(spec))
            except Exception as exc:
                return f"{prefix}{name}", kind, _node_problem(kind, spec, exc)
        return None

    return walk(tree.get("nodes"), "")


def _node_problem(kind: str, spec: dict, exc: BaseException) -> str:
    """What is wrong with a node nir refused, in NIR's terms where the cause is a known one."""
    import re

    import nir

    if kind not in getattr(nir.ir, "__all__", (kind,)):
        return f"nir {getattr(nir, '__version__', '')} knows no node type {kind!r}"
    missing = re.findall(r"'(\w+)'", str(exc)) if "missing" in str(exc) else []
    if isinstance(exc, TypeError) and missing:
        return "it has no " + ", ".join(missing)
    shape = spec.get("input_shape")
    if kind in ("Conv1d", "Conv2d") and shape is not None:
        dims = np.atleast_1d(np.asarray(shape)).size
        want = 1 if kind == "Conv1d" else 2
        if dims != want:
            return (f"its input_shape {np.asarray(shape).tolist()} holds {dims} dimensions, "
                    f"where NIR's {kind} takes the {want} spatial ones (no channels)")
    return _exception_text(exc)


def _chain(graph, path) -> list[tuple[str, object]]:
    """The nodes from the one Input to the one Output, in order; any other shape is refused."""
    nodes = graph.nodes
    for name, node in nodes.items():
        kind = type(node).__name__
        if kind == "NIRGraph":
            raise ModelFileError(f"{path}: node {name!r} is a subgraph (NIRGraph, e.g. a "
                                 "recurrent layer); only flat feed-forward chains are supported")
        if kind not in SUPPORTED:
            raise ModelFileError(f"{path}: node {name!r} is a {kind}, which eventformer does "
                                 f"not run (supported: {', '.join(SUPPORTED)})")
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    for src, dst in graph.edges:
        src, dst = src.split(".")[0], dst.split(".")[0]
        for end in (src, dst):
            if end not in nodes:
                raise ModelFileError(f"{path}: an edge names {end!r}, which is not a node")
        succ[src].append(dst)
        pred[dst].append(src)
    inputs = [n for n, node in nodes.items() if type(node).__name__ == "Input"]
    outputs = [n for n, node in nodes.items() if type(node).__name__ == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(f"{path}: the graph has {len(inputs)} Input and {len(outputs)} "
                             "Output nodes; a chain has one of each")
    chain = []
    name = inputs[0]
    seen = set()
    while True:
        if name in seen:
            raise ModelFileError(f"{path}: node {name!r} closes a cycle (recurrence is not "
                                 "supported)")
        seen.add(name)
        chain.append((name, nodes[name]))
        if name == outputs[0]:
            break
        if len(pred[name]) > 1:
            raise ModelFileError(f"{path}: node {name!r} has {len(pred[name])} inputs; only "
                                 "chains are supported")
        if len(succ[name]) != 1:
            what = "no successor" if not succ[name] else f"{len(succ[name])} successors"
            raise ModelFileError(f"{path}: node {name!r} has {what}; only chains from the "
                                 "input to the output are supported")
        name = succ[name][0]
    if len(pred[outputs[0]]) > 1:
        raise ModelFileError(f"{path}: the output has {len(pred[outputs[0]])} inputs; only "
                             "chains are supported")
    stray = sorted(set(nodes) - seen)
    if stray:
        raise ModelFileError(f"{path}: node {stray[0]!r} is not on the chain from the input "
                             "to the output")
    return chain


def _shape_of(node, key) -> tuple[int, ...] | None:
    types = getattr(node, key, None) or {}
    for v in types.values():
        if v is not None:
            return tuple(int(x) for x in np.asarray(v).reshape(-1))
    return None


def _input_shape(node, path, name, given) -> tuple[tuple[int, int, int], bool]:
    """The input image (C, H, W) and whether the graph takes it flattened."""
    shape = _shape_of(node, "output_type") or _shape_of(node, "input_type")
    if shape is None:
        raise ModelFileError(f"{path}: input node {name!r} has no shape")
    while len(shape) > 1 and shape[0] == 1 and len(shape) != 3:  # batch / time dims of one
        shape = shape[1:]
    flat = len(shape) == 1
    if flat:
        if given is None:
            raise ModelFileError(f"{path}: input node {name!r} takes {shape[0]} features, a "
                                 "flattened frame; give --input-shape CxHxW, the image it "
                                 "flattens (PyTorch's C-major order)")
        if int(np.prod(given)) != shape[0]:
            raise ModelFileError(f"{path}: --input-shape {'x'.join(map(str, given))} has "
                                 f"{int(np.prod(given))} values, input node {name!r} takes "
                                 f"{shape[0]}")
        shape = tuple(int(x) for x in given)
    elif given is not None and tuple(given) != tuple(shape):
        raise ModelFileError(f"{path}: --input-shape {'x'.join(map(str, given))} does not match "
                             f"input node {name!r}'s {list(shape)}")
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ModelFileError(f"{path}: input node {name!r} has shape {list(shape)}; eventformer "
                             "runs image inputs (channels, height, width) with height = width")
    return shape, flat


def _pair(value, what, name, path) -> int:
    arr = np.atleast_1d(np.asarray(value)).reshape(-1)
    if arr.size > 2 or (arr.size == 2 and arr[0] != arr[1]):
        raise ModelFileError(f"{path}: node {name!r} has {what} {arr.tolist()}; only equal "
                             "height and width values are supported")
    return int(arr[0])


def _stages(nodes, shape, framework, dt, report, path, floor="auto") -> list[Stage]:
    """The chain's nodes (without Input and Output) as stages; ``shape`` is the input's."""
    stages: list[Stage] = []
    pending: Stage | None = None  # a synaptic layer waiting for its neurons
    pending_out: tuple[int, ...] = ()
    gain = None  # a Scale between a synaptic layer and its neurons
    for name, node in nodes:
        kind = type(node).__name__
        if pending is not None and kind not in NEURON_NODES and kind != "Scale":
            raise ModelFileError(f"{path}: node {pending.source!r} ({pending.op}) is followed by "
                                 f"{name!r} ({kind}), not by neurons; eventformer runs each "
                                 "synaptic layer into its own neurons")
        if kind == "Conv2d":
            if len(shape) != 3:
                raise ModelFileError(f"{path}: Conv2d {name!r} follows a flattened output")
            pending, pending_out = _conv(name, node, shape, path)
            gain = None
        elif kind in ("Affine", "Linear"):
            if len(shape) != 1:
                raise ModelFileError(f"{path}: node {name!r} ({kind}) takes an image "
                                     f"{list(shape)}; put a Flatten before it")
            w = np.asarray(node.weight, np.float64)
            b = np.asarray(node.bias, np.float64).reshape(-1) if kind == "Affine" \
                else np.zeros(w.shape[0])
            if w.ndim != 2 or w.shape[1] != shape[0] or b.shape != (w.shape[0],):
                raise ModelFileError(f"{path}: {kind} {name!r} has weight {list(w.shape)} and "
                                     f"bias {list(b.shape)} for {shape[0]} inputs")
            pending = Stage("linear", _clean(name), weight=w, bias=b, source=name)
            pending_out = (w.shape[0],)
            gain = None
        elif kind == "Scale":
            if pending is None:
                raise ModelFileError(f"{path}: Scale node {name!r} is not between a synaptic "
                                     "layer and its neurons (the only place it can fold)")
            g = _broadcast(node.scale, pending_out, "scale", name, path)
            gain = g if gain is None else gain * g
        elif kind in NEURON_NODES:
            if pending is None:
                raise ModelFileError(f"{path}: neuron node {name!r} ({kind}) does not follow a "
                                     "synaptic layer (Conv2d, Affine or Linear)")
            if (framework, kind) not in DISCRETISATION:
                known = ", ".join(k for f, k in DISCRETISATION if f == framework)
                raise ModelFileError(f"{path}: node {name!r} is a {kind}, which {framework} "
                                     f"does not export (its neuron nodes: {known})")
            neuron, input_gain = _neuron(framework, kind, node, pending_out, dt, name, path,
                                         floor)
            if gain is not None:
                input_gain = input_gain * gain
            _fold_gain(pending, input_gain, pending_out, name, path, report)
            pending.neuron = neuron
            pending.source = f"{pending.source} + {name}"
            report.rules[name] = DISCRETISATION[(framework, kind)]
            if framework == "sinabs":
                report.floors[name] = floor_description(neuron)
            stages.append(pending)
            shape, pending, gain = pending_out, None, None
        elif kind in ("SumPool2d", "AvgPool2d"):
            k = _pair(node.kernel_size, "kernel size", name, path)
            st = _pair(node.stride, "stride", name, path)
            p = _pair(node.padding, "padding", name, path)
            if len(shape) != 3:
                raise ModelFileError(f"{path}: pool {name!r} follows a flattened output")
            out = (shape[0], pooled_side(shape[1], k, st, p), pooled_side(shape[2], k, st, p))
            if min(out) <= 0 or 2 * p > k:
                raise ModelFileError(f"{path}: pool {name!r} (kernel {k}, stride {st}, padding "
                                     f"{p}) does not fit its input {list(shape)}")
            stages.append(Stage("sumpool" if kind == "SumPool2d" else "avgpool", _clean(name),
                                kernel=k, stride=st, padding=p, source=name))
            shape = out
        elif kind == "Flatten":
            start, end = int(node.start_dim), int(node.end_dim)
            if len(shape) == 3 and (start % 3, end % 3) != (0, 2):
                raise ModelFileError(f"{path}: Flatten {name!r} flattens dimensions {start}.."
                                     f"{end} of {list(shape)}; only a full flatten is supported")
            if len(shape) == 3:
                stages.append(Stage("flatten", _clean(name), source=name))
            shape = (int(np.prod(shape)),)
        else:  # Input / Output inside the chain
            raise ModelFileError(f"{path}: node {name!r} ({kind}) sits inside the chain")
    if pending is not None:
        raise ModelFileError(f"{path}: the last synaptic layer {pending.source!r} has no "
                             "neurons; the class scores are the output neurons' spike counts")
    if not stages or stages[-1].op not in ("conv2d", "linear"):
        raise ModelFileError(f"{path}: the graph does not end in spiking neurons")
    return stages


def _clean(name: str) -> str:
    """A stage name for the model file and the report (NIR node names may hold dots)."""
    return name.replace("/", "_") or "node"


def _conv(name, node, shape, path) -> tuple[Stage, tuple[int, int, int]]:
    w = np.asarray(node.weight, np.float64)
    if w.ndim != 4:
        raise ModelFileError(f"{path}: Conv2d {name!r} has a weight of shape {list(w.shape)}")
    groups = int(node.groups)
    dilation = _pair(node.dilation, "dilation", name, path)
    if dilation != 1:
        raise ModelFileError(f"{path}: Conv2d {name!r} is dilated ({dilation}); eventformer's "
                             "convolutions are not")
    stride = _pair(node.stride, "stride", name, path)
    kh, kw = w.shape[2], w.shape[3]
    if isinstance(node.padding, str):
        if node.padding == "valid":
            pad = 0
        elif node.padding == "same" and kh == kw and kh % 2 == 1 and stride == 1:
            pad = kh // 2
        else:
            raise ModelFileError(f"{path}: Conv2d {name!r} has padding {node.padding!r}, "
                                 "which eventformer does not run for this kernel and stride")
    else:
        pad = _pair(node.padding, "padding", name, path)
    b = np.asarray(node.bias, np.float64).reshape(-1) if node.bias is not None \
        else np.zeros(w.shape[0])
    if b.shape == (1,) and w.shape[0] != 1:
        b = np.full(w.shape[0], b[0])  # a scalar bias (zero when the module had none)
    if b.shape != (w.shape[0],):
        raise ModelFileError(f"{path}: Conv2d {name!r} has {b.size} biases for {w.shape[0]} "
                             "output channels")
    if groups < 1 or shape[0] % groups or w.shape[0] % groups or w.shape[1] * groups != shape[0]:
        raise ModelFileError(f"{path}: Conv2d {name!r} takes {w.shape[1] * groups} input "
                             f"channels ({groups} groups); the stage before gives {shape[0]}")
    h = (shape[1] + 2 * pad - kh) // stride + 1
    wd = (shape[2] + 2 * pad - kw) // stride + 1
    if h <= 0 or wd <= 0:
        raise ModelFileError(f"{path}: Conv2d {name!r} does not fit its input {list(shape)}")
    st = Stage("conv2d", _clean(name), weight=w, bias=b, stride=stride, padding=pad,
               groups=groups, source=name)
    return st, (w.shape[0], h, wd)


def _broadcast(value, shape, what, name, path) -> np.ndarray:
    """A parameter as one value per neuron of a layer of ``shape`` (C, H, W) or (features,):
    a scalar, an array of that shape, or one value per channel."""
    arr = np.asarray(value, np.float64)
    if arr.size == 1:
        return np.full(shape, float(arr.reshape(-1)[0]))
    if tuple(arr.shape) == tuple(shape):
        return arr.copy()
    if len(shape) == 3 and arr.reshape(-1).shape == (shape[0],):
        return np.broadcast_to(arr.reshape(-1)[:, None, None], shape).copy()
    if arr.size == int(np.prod(shape)):
        return arr.reshape(shape).copy()
    raise ModelFileError(f"{path}: node {name!r} has {what} of shape {list(arr.shape)} for a "
                         f"layer of {list(shape)} neurons")


def _neuron(framework, kind, node, shape, dt, name, path, floor="auto"
            ) -> tuple[NeuronParams, np.ndarray]:
    """The framework's discrete neuron for a NIR neuron node, and the gain its input gets
    (folded into the synaptic weights); ``floor`` is sinabs' min_v_mem setting."""

    def get(attr, default=None):
        value = getattr(node, attr, None)
        if value is None:
            if default is None:
                raise ModelFileError(f"{path}: node {name!r} has no {attr}")
            value = default
        return _broadcast(value, shape, attr, name, path)

    theta = get("v_threshold")
    if np.any(theta <= 0):
        raise ModelFileError(f"{path}: node {name!r} has a threshold <= 0")
    r = get("r", 1.0)
    v_reset = get("v_reset", 0.0)
    zeros = np.zeros(shape)
    if framework == "sinabs":
        if np.any(v_reset != 0):
            raise ModelFileError(f"{path}: node {name!r} resets to a non-zero v_reset, which "
                                 "sinabs' subtractive reset does not do")
        if kind == "IF":
            alpha = np.ones(shape)  # IAF: sinabs' alpha = exp(-1 / inf)
            norm = 0
        else:
            tau = get("tau")
            if np.any(get("v_leak", 0.0) != 0):
                raise ModelFileError(f"{path}: node {name!r} has a non-zero v_leak, which "
                                     "sinabs' LIF does not have")
            # sinabs: alpha = exp(-1 / tau_mem); libm's exp, as torch's, not numpy's (they
            # differ in the last bit for some tau, e.g. 8)
            alpha = np.vectorize(lambda t: math.exp(-1.0 / t), otypes=[np.float64])(tau)
            norm = 1
        if floor == "none" or (floor == "auto" and kind == "LIF"):
            has_floor, min_v = 0, zeros  # sinabs' from_nir: LIFSqueeze(min_v_mem=None)
        elif floor in ("auto", "-threshold"):
            has_floor, min_v = 1, -theta  # from_nir: IAFSqueeze(min_v_mem=-v_threshold)
        else:
            has_floor, min_v = 1, np.full(shape, float(floor))
        params = {"alpha_mem": alpha, "alpha_syn": zeros, "theta": theta, "min_v": min_v,
                  "reset_value": zeros}
        options = {"synaptic": 0, "norm_input": norm, "multi_spike": 1, "max_spikes": 0,
                   "reset": "subtract", "floor": has_floor}
        return NeuronParams("sinabs", params, options), r
    if framework == "snntorch":
        tau = get("tau")
        if np.any(get("v_leak", 0.0) != 0):
            raise ModelFileError(f"{path}: node {name!r} has a non-zero v_leak, which snnTorch's "
                                 "Leaky does not have")
        beta = 1 - (dt / tau)  # snnTorch's own reading of an exported LIF
        gain = r * dt / tau  # 1 for every LIF snnTorch exports (r = tau / dt)
        params = {"beta": beta, "theta": theta}
        return NeuronParams("snntorch", params, {"reset": "subtract"}), gain
    if framework == "rockpool":
        return _rockpool_neuron(kind, node, get, theta, dt, name, path)
    # norse
    v_leak = get("v_leak", 0.0)
    if kind == "IF":
        params = {"tau_mem_inv": zeros, "tau_syn_inv": zeros, "v_leak": zeros, "theta": theta,
                  "v_reset": v_reset}
        options = {"synaptic": 0, "integrate": 1, "reset": "value", "dt": dt}
        return NeuronParams("norse", params, options), r
    if kind == "LIF":
        tau_mem_inv = dt / get("tau")  # Norse exports tau = dt / tau_mem_inv
        params = {"tau_mem_inv": tau_mem_inv, "tau_syn_inv": zeros, "v_leak": v_leak,
                  "theta": theta, "v_reset": v_reset}
        options = {"synaptic": 0, "integrate": 0, "reset": "value", "dt": dt}
        return NeuronParams("norse", params, options), r
    tau_mem_inv = dt / get("tau_mem")
    tau_syn_inv = dt / get("tau_syn")
    params = {"tau_mem_inv": tau_mem_inv, "tau_syn_inv": tau_syn_inv, "v_leak": v_leak,
              "theta": theta, "v_reset": v_reset}
    options = {"synaptic": 1, "integrate": 0, "reset": "value", "dt": dt}
    return NeuronParams("norse", params, options), r * get("w_in", 1.0)


def floor_description(neuron: NeuronParams) -> str:
    """A sinabs-rule layer's membrane floor (the last operation of its step) in words: what
    export and inspect print after the rule."""
    if not neuron.options.get("floor"):
        return "no membrane floor (min_v_mem None)"
    min_v = np.asarray(neuron.params["min_v"], np.float64)
    theta = np.broadcast_to(np.asarray(neuron.params["theta"], np.float64), min_v.shape)
    if np.array_equal(min_v, -theta):
        value = "-v_th"
    else:
        lo, hi = float(min_v.min()), float(min_v.max())
        value = f"{lo:g}" + (f"..{hi:g}" if lo != hi else "")
    return f"v = relu(v - m) + m, membrane floor m = min_v_mem = {value}"


def _rockpool_decay(tau: np.ndarray, dt: float) -> np.ndarray:
    """Rockpool's exp(-dt / tau) as torch evaluates it on a tensor: exp(fl(fl(1 / tau) * -dt)),
    with libm's exp (torch's, not numpy's, for float64)."""
    return np.vectorize(lambda t: math.exp((1.0 / t) * -dt), otypes=[np.float64])(tau)


def _rockpool_neuron(kind, node, get, theta, dt, name, path):
    """Rockpool's LIFNeuronTorch (a LIF node) or LIFTorch (CubaLIF): the decays from the stored
    time constants; its exporter writes r = tau exp(-dt / tau) / dt, which checks dt."""
    if kind == "IF":
        raise ModelFileError(f"{path}: node {name!r} is an IF, which Rockpool does not export "
                             "(its neuron nodes: LIF, CubaLIF)")
    if np.any(get("v_leak", 0.0) != 0):
        raise ModelFileError(f"{path}: node {name!r} has a non-zero v_leak, which Rockpool's "
                             "LIF does not have")
    tau = get("tau" if kind == "LIF" else "tau_mem")
    alpha = _rockpool_decay(tau, dt)
    r = get("r", 1.0)
    expect = (tau * alpha) / dt
    if not np.allclose(r, expect, rtol=1e-6, atol=0):
        raise ModelFileError(f"{path}: node {name!r} has r {float(np.median(r)):.6g}, but "
                             f"Rockpool's export at dt {dt:g} writes {float(np.median(expect)):.6g}; "
                             "give the --dt the model was exported with")
    gain = get("w_in", 1.0) if kind == "CubaLIF" else np.ones_like(theta)
    synaptic = kind == "CubaLIF"
    alpha_syn = _rockpool_decay(get("tau_syn"), dt) if synaptic else np.zeros_like(theta)
    params = {"alpha_mem": alpha, "alpha_syn": alpha_syn, "theta": theta}
    return NeuronParams("rockpool", params, {"synaptic": int(synaptic),
                                             "max_spikes": 2**16}), gain


def _fold_gain(stage: Stage, gain: np.ndarray, shape, name, path, report) -> None:
    """Fold a per-neuron input gain (r, w_in, a Scale) into the synaptic weights and bias; a
    gain of one (within rounding of the exporter's own arithmetic) is left out, so the weights
    stay bit-exact."""
    if np.allclose(gain, 1.0, rtol=1e-12, atol=0):
        return
    if len(shape) == 3:
        per_channel = gain.reshape(shape[0], -1)
        if np.any(per_channel != per_channel[:, :1]):
            raise ModelFileError(f"{path}: node {name!r} scales its input per pixel; eventformer "
                                 "folds input gains into the conv's weights, per channel only")
        g = per_channel[:, 0]
        stage.weight = stage.weight * g[:, None, None, None]
    else:
        g = gain.reshape(-1)
        stage.weight = stage.weight * g[:, None]
    stage.bias = stage.bias * g
    report.folded.append(f"{name}: input gain {float(g.min()):.6g}..{float(g.max()):.6g} "
                         f"folded into {stage.source}'s weights")
