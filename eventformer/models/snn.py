"""Sequential spiking CNNs (imported from NIR) on the engine's event-driven layers.

The chain of a model file (``modelfile.snn``) becomes the engine's layers: convolutions and
linear maps by scatter, gather or GEMM per step as in Spikformer, each followed by the exporting
framework's own neurons; sum and average pools act on the event lists between them; a flatten
costs nothing (the next linear layer's columns are put into the engine's HWC order at load). The
class scores are the output layer's spike counts.
"""

from __future__ import annotations

import numpy as np

from ..fixedpoint import Fixed, arithmetic
from ..layers import PathPolicy
from ..layers.snn import (
    FrameworkConv2d,
    FrameworkLinear,
    SpikeCountOutput,
    SumPoolEvents,
    SynapseView,
)
from ..modelfile.snn import POOL_OPS, SnnModelFile
from ..runtime import limit_blas_threads
from .spikformer import warm_up_densities

DTYPES = {"float32": np.float32, "float64": np.float64}


def expand_groups(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv's weight [Cout, Cin/g, kh, kw] as a dense [Cout, Cin, kh, kw] with zeros
    outside each group's block (the engine's conv kernels take every input channel)."""
    if groups == 1:
        return weight
    cout, cin_g, kh, kw = weight.shape
    out = np.zeros((cout, cin_g * groups, kh, kw), weight.dtype)
    per = cout // groups
    for g in range(groups):
        out[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g] = weight[g * per:(g + 1) * per]
    return out


def chw_to_hwc_columns(weight: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """A linear weight [out, C*H*W] over PyTorch's flatten order, with its columns reordered to
    the engine's HWC flat index ((y * W + x) * C + c)."""
    c, h, w = chw
    return np.ascontiguousarray(
        weight.reshape(weight.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0],
                                                                                -1))


class SpikingNet:
    """The event-driven engine for a sequential SNN model file (architecture ``snn``); the same
    interface as :class:`~eventformer.models.Spikformer` (``step``, ``run``, ``logits``,
    ``layer_stats``), so ``infer``, ``stream``, datasets and ``compare`` run it alike.

    >>> net = SpikingNet(load("from-sinabs.h5"), dtype="float64")
    >>> scores = net.run(steps)          # the output layer's spike counts
    """

    def __init__(self, model: SnnModelFile, *, dtype="float32", policy: PathPolicy | None = None):
        cfg = model.config
        cfg.validate()
        limit_blas_threads()
        self.model_file = model
        self.config = cfg
        self.dtype = arithmetic(DTYPES.get(dtype, dtype))
        self.fixed = self.dtype if isinstance(self.dtype, Fixed) else None
        self.arithmetic = self.fixed.name if self.fixed else self.dtype.name
        self.policy = policy or PathPolicy()
        shapes = model.shapes()
        self.ops = []  # every stage that acts on events, in order (the layers plus pools)
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        kind, mult = "counts", None  # the first layer takes raw event counts
        scale = 1.0  # an average pool's 1/k^2, waiting for the next synaptic layer
        flattened = None  # the (C, H, W) a flatten saw, for the next linear layer's columns
        for st, out in zip(model.stages, shapes):
            if st.op == "flatten":
                flattened = shape
            elif st.op in POOL_OPS:
                h, w, c = shape[1], shape[2], shape[0]
                pool = SumPoolEvents(st.name, (h, w, c), st.kernel, st.stride, st.padding,
                                     kind, average=st.op == "avgpool")
                self.ops.append(pool)
                if st.op == "avgpool":
                    scale /= st.kernel * st.kernel
                if kind != "counts":
                    kind = "integers"
                    mult = None if mult is None else mult * st.kernel * st.kernel
            else:
                weight = np.asarray(st.weight, np.float64)
                if st.op == "conv2d":
                    weight = expand_groups(weight, st.groups)
                elif flattened is not None and len(flattened) == 3:
                    weight = chw_to_hwc_columns(weight, flattened)
                view = SynapseView(st.name, weight * scale, np.asarray(st.bias, np.float64),
                                   st.stride, st.padding, st.neuron, tuple(out))
                if st.op == "conv2d":
                    layer = FrameworkConv2d(view, (shape[1], shape[2], shape[0]),
                                            dtype=self.dtype, input_kind=kind,
                                            multiplicity=mult, policy=self.policy)
                else:
                    layer = FrameworkLinear(view, dtype=self.dtype, input_kind=kind,
                                            multiplicity=mult, policy=self.policy)
                self.ops.append(layer)
                scale, flattened = 1.0, None
                kind, mult = _output_kind(st.neuron)
            shape = tuple(out)
        self.head = SpikeCountOutput(cfg.num_classes)
        self.input_sites = cfg.image_size * cfg.image_size * cfg.in_channels

    @property
    def layers(self):
        """The reportable stages in forward order: synaptic layers and pools."""
        return list(self.ops)

    def reset(self) -> None:
        for op in self.ops:
            op.reset()
        self.head.reset()

    def clear_stats(self) -> None:
        for op in self.ops:
            op.clear_stats()

    @property
    def steps_seen(self) -> int:
        return self.head.steps

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> None:
        idx = np.asarray(idx, np.int32)
        cnt = np.asarray(cnt, np.int32)
        for op in self.ops:
            idx, cnt = op.step(idx, cnt)
        self.head.step(idx, cnt)

    def warm_up(self) -> None:
        """Load every kernel the engine's path policy may call, then forget the warm-up."""
        rng = np.random.default_rng(0)
        for density in warm_up_densities(self.policy):
            n = int(density * self.input_sites)
            idx = np.sort(rng.choice(self.input_sites, n, replace=False)).astype(np.int32)
            self.step(idx, np.ones(n, np.int32))
        if self.policy.mode in ("auto", "gather"):  # the gathers' kernels
            for op in self.ops:
                if hasattr(op, "warm_up"):
                    op.warm_up()
        self.reset()
        self.clear_stats()

    def logits(self) -> np.ndarray:
        """The output layer's spike counts since the last reset (float64)."""
        return self.head.logits()

    def run(self, steps) -> np.ndarray:
        """Classify one sample given as (idx, cnt) input steps: layer after layer over all
        steps (each layer still sees its inputs in time order), as :meth:`step` per step."""
        self.reset()
        xs = [(np.asarray(i, np.int32), np.asarray(c, np.int32)) for i, c in steps]
        for op in self.ops:
            xs = op.run_steps(xs)
        for idx, cnt in xs:
            self.head.step(idx, cnt)
        return self.logits()

    def layer_stats(self) -> list[dict]:
        return [op.stats() for op in self.ops]



def _output_kind(neuron) -> tuple[str, int | None]:
    """What a layer's neurons emit: single spikes, or multi-spike counts (bounded by the
    neurons' cap, else checked per step in the integer modes)."""
    o = neuron.options
    if neuron.rule == "sinabs" and o.get("multi_spike"):
        cap = int(o.get("max_spikes", 0))
        return "integers", (cap if cap > 0 else None)
    return "spikes", 1


def engine_for(model, *, dtype="float32", policy: PathPolicy | None = None):
    """The engine for a loaded model file: :class:`Spikformer` for the Spikformer family,
    :class:`SpikingNet` for a sequential SNN."""
    if isinstance(model, SnnModelFile):
        return SpikingNet(model, dtype=dtype, policy=policy)
    from .spikformer import Spikformer

    return Spikformer(model, dtype=dtype, policy=policy)

