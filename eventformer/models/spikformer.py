"""Spikformer-family engines assembled from their model description; time-major ``step`` with
persistent state.

One step of input (an event list over the HWC sensor grid, counts as multiplicities; or, for a
model of static images, the real-valued image itself) passes through every layer before the next
step enters, so the offline path (a sample framed into T steps) and the streaming path (windows
from a growing file) drive the same :meth:`Spikformer.step`.

The network is its configuration's description (:mod:`.description`): per block stage an
:class:`Embedding` (conv stages over saved maps) and its :class:`Block` s, then the head. Maps flow
as event lists ``(idx, cnt)`` (spikes, integer sums, input counts) or, where a stage has no LIF
or the input is pixels, as dense real HWC arrays.

A description whose residual stream is "membrane" (the Spike-driven Transformer) runs
:class:`MembraneBlock` s instead: the stream is a dense real [tokens, D] array per step, each
block spikes it before its attention and before each MLP layer and adds real currents back,
and the head spikes its token mean (:class:`~eventformer.layers.successors.LIFLinearHead`). In
an integer mode the stream is int32 in one unit per channel that every current summed into it
shares (:func:`membrane_units`), bounded at load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import EventformerError
from ..fixedpoint import Fixed, FixedPointError, arithmetic, membrane_stream_bound, shared_unit
from ..layers import (
    ATTENTION_OPERATORS,
    Conv2dLIF,
    LinearLIF,
    MeanLinearHead,
    PathPolicy,
    add_events,
    ones,
)
from ..layers.successors import LIFLinearHead, LinearSynapse, StreamLIF
from ..layers.synapses import Conv2dStage
from ..runtime import (
    engine_threads,
    in_part,
    limit_blas_threads,
    run_parts,
    run_pipeline,
    split,
)
from .config import MEMBRANE_OPERATORS
from .description import INPUT, POOL, BlockGeometry, BlockStage, Description, PlacedStage

if TYPE_CHECKING:  # the model file package imports the config from here
    from ..modelfile import ModelFile

#: Chunks of a sample's steps in an offline pipeline (:meth:`Spikformer.run`): more chunks
#: overlap the stages sooner but batch fewer dense steps per GEMM and move each layer's state
#: through the cache more often (full-size Spikformer-DVS, T 16, 2 threads: 4 chunks best).
PIPELINE_CHUNKS = 4
#: Below this many neuron updates a sample (neurons of every layer x steps) the pipeline's
#: hand-offs (~0.8 ms a sample) cost more than the overlap gains: the shipped tiny models (0.3 M,
#: ~2 ms a sample) ran 1.4x slower pipelined; the full-size ones (17-53 M) run 1.2-1.3x faster.
PIPELINE_MIN_NEURON_STEPS = 2_000_000
SPS_POOL = POOL  # MaxPool2d(kernel_size=3, stride=2, padding=1): the family's one max-pool
DTYPES = {"float32": np.float32, "float64": np.float64}
#: What ``dtype`` may name: the float engines and the fixed-point ones (SPEC §6).
ARITHMETICS = ("float32", "float64", "int16", "int8")


def _add(a, b):
    """A saved map plus a stage's output: event lists merge (spikes + spikes are integers),
    real maps add."""
    if isinstance(a, tuple):
        return add_events(a[0], a[1], b[0], b[1])
    return a + b


class Embedding:
    """One embedding of a block stage (Spikformer's SPS, QKFormer's patch embeddings): its conv
    stages in order, each reading the previous output or a saved map, its output saved or a
    saved map added to it (:class:`~.description.EmbedStage`)."""

    def __init__(self, placed: tuple[PlacedStage, ...], layers: dict, *, dtype,
                 policy: PathPolicy, units: dict | None = None):
        """``units``: in an integer mode, the unit per channel shared by stages whose currents
        are summed into a membrane stream (stage name -> unit; :func:`membrane_units`)."""
        units = units or {}
        self.plan = []  # (layer, stage, takes real values)
        for p in placed:
            st, src = p.stage, p.source
            params = layers[st.name]
            pool_after = POOL if st.pool == "after" else None
            real = src.kind == "real"
            multiplicity = src.bound if src.bound is not None else 1
            if not real and st.lif and st.pool != "before" and not st.save_current:
                layer = Conv2dLIF(params, src.shape, dtype=dtype, input_kind=src.kind,
                                  pool=pool_after, policy=policy, multiplicity=multiplicity,
                                  unit=units.get(st.name))
            else:
                layer = Conv2dStage(params, src.shape, dtype=dtype, input_kind=src.kind,
                                    policy=policy, multiplicity=multiplicity, pool=pool_after,
                                    pool_before=POOL if st.pool == "before" else None,
                                    lif=bool(st.lif), keep_current=bool(st.save_current),
                                    unit=units.get(st.name))
            if layer.out_shape != (p.out.h, p.out.w, p.out.c):
                raise ValueError(f"{st.name}: outputs {layer.out_shape}, the description says "
                                 f"{p.out.shape}")
            self.plan.append((layer, st, real))

    @property
    def layers(self) -> list:
        return [layer for layer, _, _ in self.plan]

    def step(self, x):
        """One step: the embedding's input map -> its output map."""
        saved = {INPUT: x}
        for layer, st, real in self.plan:
            src = saved[st.input] if st.input else x
            out = layer.step_real(src) if real else layer.step(*src)
            if st.save_current:
                saved[st.save_current] = layer.kept.pop()
            if st.add:
                out = _add(saved[st.add], out)
            if st.save:
                saved[st.save] = out
            x = out
        return x

    def run_steps(self, xs: list) -> list:
        """Every step of a sample, stage by stage (offline): the results of :meth:`step`."""
        saved = self.saved_maps(len(xs))
        for i in range(len(self.plan)):
            xs = self.run_stage(i, xs, saved, 0, len(xs))
        return xs

    def saved_maps(self, steps: int) -> dict:
        """Room for the maps a sample's stages save (each a list over its ``steps``), filled
        by :meth:`run_stage`."""
        names = [INPUT] + [n for _, st, _ in self.plan for n in (st.save, st.save_current) if n]
        return {name: [None] * steps for name in names}

    def run_stage(self, i: int, xs: list, saved: dict, a: int, b: int) -> list:
        """Stage ``i`` on steps a..b-1 of a sample (``xs``: their input to it), reading and
        writing those steps of the ``saved`` maps (:meth:`saved_maps`): the stages run over
        all steps one after another, or over chunks of steps in a pipeline
        (:meth:`Spikformer.run`), give the same maps."""
        layer, st, real = self.plan[i]
        if i == 0:
            saved[INPUT][a:b] = xs
        src = saved[st.input][a:b] if st.input else xs
        outs = [layer.step_real(x) for x in src] if real else layer.run_steps(src)
        if st.save_current:
            saved[st.save_current][a:b] = layer.kept
            layer.kept.clear()
        if st.add:
            outs = [_add(p, q) for p, q in zip(saved[st.add][a:b], outs)]
        if st.save:
            saved[st.save][a:b] = outs
        return outs


class Block:
    """One transformer block: x = x + attention(x); x = x + MLP(x) (residuals of spikes).

    ``bound``: the largest value of the block input (an integer mode's overflow bound)."""

    def __init__(self, stage: BlockStage, index: int, geometry: BlockGeometry, layers: dict,
                 params: dict, *, dtype, policy: PathPolicy, bound: int):
        attention = ATTENTION_OPERATORS[stage.attention]
        self.name = stage.block_name(index)
        self.attn = attention(stage.attention_name(index), layers, geometry, dtype=dtype,
                              policy=policy, params=params, multiplicity=bound)
        m = stage.mlp_name(index)
        fc1, fc2 = stage.mlp_layers
        self.fc1 = LinearLIF(layers[f"{m}.{fc1}_lif"], geometry.tokens, dtype=dtype,
                             input_kind="integers", policy=policy, multiplicity=bound + 1)
        self.fc2 = LinearLIF(layers[f"{m}.{fc2}_lif"], geometry.tokens, dtype=dtype,
                             input_kind="spikes", policy=policy)

    @property
    def layers(self):
        return self.attn.layers + [self.fc1, self.fc2]

    def step(self, idx, cnt):
        a_idx, a_cnt = self.attn.step(idx, cnt)
        idx, cnt = add_events(idx, cnt, a_idx, a_cnt)
        h_idx, h_cnt = self.fc1.step(idx, cnt)
        m_idx, m_cnt = self.fc2.step(h_idx, h_cnt)
        return add_events(idx, cnt, m_idx, m_cnt)

    def run_steps(self, xs: list) -> list:
        return self.mlp_steps(self.attention_steps(xs))

    def attention_steps(self, xs: list) -> list:
        """x + attention(x) for steps of a sample, in time order (offline)."""
        return _residual(xs, self.attn.run_steps(xs))

    def mlp_steps(self, xs: list) -> list:
        """x + MLP(x) for steps of a sample, in time order (offline)."""
        return _residual(xs, self.fc2.run_steps(self.fc1.run_steps(xs)))

    @property
    def parts(self) -> list:
        """The block's halves as a pipeline runs them (:meth:`Spikformer.run`)."""
        return [self.attention_steps, self.mlp_steps]


class MembraneBlock:
    """One block of the Spike-driven Transformer on its membrane stream x (a dense real
    [tokens, D] array per step; ``MS_SSA_Conv`` then ``MS_MLP_Conv`` of the released code):

        x = x + attention(x)                      # shortcut_lif spikes x; proj's real current
        h = fc1(fc1_lif(x)), and h = x + h when hidden == D (the released ``res``; then h is
        the identity too); x = fc2(fc2_lif(h)) + identity     # fc1, fc2: linear+BN, no LIF

    The attention operator (``sdsa``) takes the stream and returns the current to add.

    In an integer mode the stream is int32 in ``unit`` (one per channel, shared by every current
    summed into it: :func:`membrane_units`): proj, fc2 and, with ``res``, fc1 are quantised in
    it and the LIFs reading the stream (or x + h) take their thresholds in it; without ``res``
    fc1 keeps its own unit, in which fc2_lif reads its current."""

    def __init__(self, stage: BlockStage, index: int, geometry: BlockGeometry, layers: dict,
                 params: dict, *, dtype, policy: PathPolicy, unit=None):
        attention = ATTENTION_OPERATORS[stage.attention]
        self.name = stage.block_name(index)
        attn_syn = "linear" if stage.attn_kernel == "linear" else "conv"
        mlp_syn = "linear" if stage.mlp_kernel == "linear" else "conv"
        self.attn = attention(stage.attention_name(index), layers, geometry, dtype=dtype,
                              policy=policy, params=params, synapse=attn_syn, unit=unit)
        m = stage.mlp_name(index)
        fc1, fc2 = stage.mlp_layers
        n, d, hidden = geometry.tokens, geometry.dim, geometry.mlp_hidden
        self.res = hidden == d
        self.fc1_lif = StreamLIF(layers[f"{m}.{fc1}_lif"], n * d, dtype=dtype, unit=unit)
        self.fc1 = LinearSynapse(layers[f"{m}.{fc1}_{mlp_syn}"], n, dtype=dtype, policy=policy,
                                 unit=unit if self.res else None)
        self.fc2_lif = StreamLIF(layers[f"{m}.{fc2}_lif"], n * hidden, dtype=dtype,
                                 unit=self.fc1.unit)
        self.fc2 = LinearSynapse(layers[f"{m}.{fc2}_{mlp_syn}"], n, dtype=dtype, policy=policy,
                                 unit=unit)

    @property
    def stream_currents(self) -> list:
        """The layers whose currents this block adds into the stream, in order."""
        return [self.attn.proj] + ([self.fc1] if self.res else []) + [self.fc2]

    @property
    def layers(self):
        return self.attn.layers + [self.fc1_lif, self.fc1, self.fc2_lif, self.fc2]

    def step(self, x: np.ndarray) -> np.ndarray:
        x = x + self.attn.step(x)
        s = self.fc1_lif.step(x)
        h = self.fc1.step(s, ones(s.shape[0]))
        identity = x
        if self.res:
            h = identity = x + h
        s = self.fc2_lif.step(h)
        return self.fc2.step(s, ones(s.shape[0])) + identity

    def run_steps(self, xs: list) -> list:
        """Every step of a sample, layer by layer (offline): the results of :meth:`step`."""
        xs = [x + a for x, a in zip(xs, self.attn.run_steps(xs))]
        hs = self.fc1.run_steps([(s, ones(s.shape[0])) for s in self.fc1_lif.run_steps(xs)])
        identities = xs
        if self.res:
            hs = identities = [x + h for x, h in zip(xs, hs)]
        outs = self.fc2.run_steps([(s, ones(s.shape[0])) for s in self.fc2_lif.run_steps(hs)])
        return [o + i for o, i in zip(outs, identities)]

    @property
    def parts(self) -> list:
        """The block as a pipeline runs it (:meth:`Spikformer.run`): whole."""
        return [self.run_steps]


def membrane_units(stage: BlockStage, layers: dict, arith: Fixed) -> tuple[np.ndarray, list]:
    """The integer unit per channel of a block stage's membrane stream, and the names of the
    embedding stages whose currents make its first map.

    Every current summed into the stream at channel c (the first map: the embedding's last
    stage, SDT's RPE, plus the current it adds, ``x_feat``; then each block's proj, fc2, and
    fc1 where the MLP adds h = x + fc1) is quantised in one unit s_c, the largest of their own
    per-channel units (:func:`~eventformer.fixedpoint.shared_unit`): the stream is then an exact
    int32 sum. A first map that is not such a sum of currents (spikes in it) has no integer
    form and is refused."""
    last = stage.embed[-1] if stage.embed else None
    saved = {st.save_current: st.name for st in stage.embed if st.save_current}
    if last is None or last.lif or (last.add and last.add not in saved):
        raise FixedPointError(
            f"{arith.name}: this membrane stream's first map is not a sum of real currents "
            "alone (SDT's RPE plus x_feat), so no shared integer unit holds it; run it in a "
            "float --dtype")
    first = [saved[last.add]] if last.add else []
    first.append(last.name)
    attn_syn = "linear" if stage.attn_kernel == "linear" else "conv"
    mlp_syn = "linear" if stage.mlp_kernel == "linear" else "conv"
    fc1, fc2 = stage.mlp_layers
    names = list(first)
    for i in range(stage.count):
        m = stage.mlp_name(i)
        names.append(f"{stage.attention_name(i)}.proj_{attn_syn}")
        if stage.mlp_hidden == stage.dim:
            names.append(f"{m}.{fc1}_{mlp_syn}")
        names.append(f"{m}.{fc2}_{mlp_syn}")
    return shared_unit([layers[n] for n in names], arith), first


def warm_up_densities(policy: PathPolicy) -> tuple[float, ...]:
    """Input densities of the warm-up steps that reach every path ``policy`` can take: one
    sparse step (scatter, gather) unless every step runs dense, one dense step (GEMM) unless
    none does."""
    return {"sparse": (0.02,), "gather": (0.02,), "dense": (0.9,)}.get(policy.mode, (0.02, 0.9))


def _residual(xs: list, ys: list) -> list:
    """x + y for every step of two event-list sequences: the steps are independent merges, so
    on several engine threads each takes every n-th step (the merge kernel releases the GIL)."""
    parts = min(engine_threads(), len(xs))
    if parts < 2:
        return [add_events(x[0], x[1], y[0], y[1]) for x, y in zip(xs, ys)]
    out = [None] * len(xs)

    def part(i):
        for t in range(i, len(xs), parts):
            out[t] = add_events(xs[t][0], xs[t][1], ys[t][0], ys[t][1])

    run_parts(part, parts)
    return out


def _watched(layer) -> bool:
    """Whether something watches a layer's steps as they happen: a probe on its currents, or a
    recorder's wrapper on its neurons' spikes (a recorder keeps the steps of several layers)."""
    if getattr(layer, "probe", None) is not None:
        return True
    neurons = getattr(layer, "neurons", None)
    return neurons is not None and any(name in vars(neurons) for name in ("fire", "fire_flags"))


def unsupported(desc: Description) -> str | None:
    """What in a description this engine cannot run yet, as one sentence; None if nothing."""
    if desc.residual == "membrane":
        if not desc.head_lif:
            return ("this engine ends a 'membrane' residual stream (the Spike-driven "
                    "Transformer's) in a head LIF on its token mean; the description's head "
                    "has none")
        for stage in desc.stages:
            if stage.count and stage.attention not in MEMBRANE_OPERATORS:
                return (f"this engine runs blocks on a 'membrane' residual stream with "
                        f"{' or '.join(MEMBRANE_OPERATORS)} attention, not {stage.attention!r}")
    elif desc.head_lif:
        return (f"this engine's head on a residual stream of spikes is mean, mean, linear; the "
                f"description's head LIF {desc.head_lif!r} is not implemented yet there")
    for stage in desc.stages:
        if stage.attention not in ATTENTION_OPERATORS:
            return (f"this engine runs the attention operators {', '.join(ATTENTION_OPERATORS)}; "
                    f"{stage.attention!r} is not implemented yet")
    return None


def _real_map(x, size: int, dtype) -> np.ndarray:
    """A map as a dense real array: event lists (spikes, integer sums) scattered; real maps
    as they are."""
    if not isinstance(x, tuple):
        return x
    out = np.zeros(size, dtype)
    out[x[0]] = x[1]
    return out


class Spikformer:
    """The event-driven engine for one model file, assembled from its model description.

    >>> model = Spikformer(load("model.h5"))
    >>> logits = model.run(steps)          # steps: [(idx, cnt), ...] from framing
    >>> logits = model.run_image(image)    # a model of static images: [H, W, C] real pixels

    ``stages``: per block stage its :class:`Embedding` and its :class:`Block` s; ``blocks`` all
    blocks in order; ``sps`` and ``rpe`` the first embedding's stages but its last, and its last
    (Spikformer's SPS and RPE).
    """

    def __init__(self, model: ModelFile, *, dtype="float32", policy: PathPolicy | None = None):
        cfg = model.config
        cfg.validate()
        desc = cfg.description
        refusal = unsupported(desc)
        if refusal is not None:
            raise EventformerError(refusal)
        limit_blas_threads()
        self.model_file = model
        self.config = cfg
        self.description = desc
        # float32 / float64, or a Fixed (int16, int8): every layer quantises at load
        self.dtype = arithmetic(DTYPES.get(dtype, dtype))
        self.fixed = self.dtype if isinstance(self.dtype, Fixed) else None
        self.arithmetic = self.fixed.name if self.fixed else self.dtype.name  # "int8", "float32"..
        self.policy = policy or PathPolicy()
        self.membrane = desc.residual == "membrane"
        placement = cfg.placement()
        params = iter(model.attention)
        self.stages: list[tuple[Embedding, list]] = []
        # in an integer mode a membrane stream is int32 in one unit per channel (membrane_units),
        # its largest |value| per channel bounded at load
        stream_unit = stream_bound = None
        for stage, placed, geometry, bound in zip(desc.stages, placement.embeds,
                                                  placement.geometry, placement.stream_bounds):
            units, first = {}, []
            if self.membrane and self.fixed:
                stream_unit, first = membrane_units(stage, model.layers, self.fixed)
                units = dict.fromkeys(first, stream_unit)
            embedding = Embedding(placed, model.layers, dtype=self.dtype, policy=self.policy,
                                  units=units)
            blocks = []
            for i in range(stage.count):  # each attention and MLP branch adds one spike
                p = next(params).params if model.attention else {}
                if self.membrane:
                    blocks.append(MembraneBlock(stage, i, geometry, model.layers, p,
                                                dtype=self.dtype, policy=self.policy,
                                                unit=stream_unit))
                    continue
                blocks.append(Block(stage, i, geometry, model.layers, p, dtype=self.dtype,
                                    policy=self.policy, bound=bound + 2 * i))
            if stream_unit is not None:
                currents = [layer for layer in embedding.layers if layer.name in first]
                currents += [layer for block in blocks for layer in block.stream_currents]
                stream_bound = membrane_stream_bound([(c.name, c.quant) for c in currents],
                                                     self.fixed)
            self.stages.append((embedding, blocks))
        final = placement.final
        # the residual stream's sites per block stage (a membrane stream is a dense map of them)
        self.stream_sites = [g.tokens * g.dim for g in placement.geometry]
        if self.membrane:  # the token mean of the real stream, spiked, then the Linear
            self.head = LIFLinearHead(model.layers[desc.head_lif], model.layers["head"],
                                      final.tokens, self.dtype, stream_unit=stream_unit,
                                      stream_bound=stream_bound)
        else:  # the head sums integers exactly; only the logits are float (float64 in integer
            #   modes)
            self.head = MeanLinearHead(model.layers["head"], final.tokens,
                                       np.float64 if self.fixed else self.dtype)
        self.pixels = desc.input == "pixels"
        self.input_shape = (cfg.image_size, cfg.image_size, cfg.in_channels)
        #: Offline runs still to go layer by layer whatever the threads: a first run on an empty
        #: Numba cache (see :mod:`eventformer.precompile`) compiles its kernels in forward order
        #: while a helper process compiles them backwards; a pipeline's first chunk would reach
        #: every layer at once and compile what the helper is compiling.
        self.layer_major_runs = 0
        self.input_sites = cfg.image_size * cfg.image_size * cfg.in_channels

    @property
    def blocks(self) -> list[Block]:
        return [block for _, blocks in self.stages for block in blocks]

    @property
    def embedding_layers(self) -> list:
        """The conv stages of every embedding, in forward order."""
        return [layer for embedding, _ in self.stages for layer in embedding.layers]

    @property
    def sps(self) -> list:
        """Spikformer's SPS stages: the first embedding's stages but its last."""
        return self.stages[0][0].layers[:-1]

    @property
    def rpe(self):
        """Spikformer's RPE: the first embedding's last stage."""
        return self.stages[0][0].layers[-1]

    @property
    def layers(self):
        """Spiking layers in forward order (the report's rows), without the head (but with its
        LIF, where it has one)."""
        out = []
        for embedding, blocks in self.stages:
            out += embedding.layers
            for block in blocks:
                out += block.layers
        lif = getattr(self.head, "lif", None)
        return out if lif is None else out + [lif]

    def reset(self) -> None:
        """Start a new sample: every membrane to rest, the head's running mean emptied."""
        for layer in self.layers:
            layer.reset()
        self.head.reset()

    def clear_stats(self) -> None:
        for layer in self.layers:
            layer.clear_stats()
        self.head.clear_stats()

    @property
    def steps_seen(self) -> int:
        return self.head.steps

    def _input(self, idx, cnt=None):
        """One step's input as the first embedding takes it: an event list, or for a model of
        static images the real-valued image (flat HWC)."""
        if not self.pixels:
            if cnt is None:
                raise EventformerError("this model takes events: give each step as (idx, cnt)")
            return np.asarray(idx, np.int32), np.asarray(cnt, np.int32)
        if cnt is not None:
            raise EventformerError("this model takes images (real pixels), not events")
        image = np.asarray(idx)
        if image.size != self.input_sites:
            h, w, c = self.input_shape
            raise EventformerError(f"this model takes {h}x{w} images of {c} channels (HWC), "
                                   f"got an array of shape {image.shape}")
        return image.reshape(-1)

    def step(self, idx: np.ndarray, cnt: np.ndarray | None = None) -> None:
        """Advance every layer by one time step on one frame of input events (``idx``, ``cnt``),
        or for a model of static images on one image (``idx``: real pixels, HWC)."""
        x = self._input(idx, cnt)
        for (embedding, blocks), sites in zip(self.stages, self.stream_sites):
            x = embedding.step(x)
            if self.membrane:  # the stream is real: blocks and head take one dense map
                x = _real_map(x, sites, self.dtype)
                for block in blocks:
                    x = block.step(x)
            else:
                for block in blocks:
                    x = block.step(*x)
        if self.membrane:
            self.head.step(x)
        else:
            self.head.step(*x)

    def warm_up(self) -> None:
        """Load every kernel this engine's path policy may call (Numba's cache loads lazily, per
        first call, and compiles what it does not hold), so the first real step is not slow;
        state and statistics are left as after a reset.

        Only the paths the policy can take are warmed (:func:`warm_up_densities`): a forced
        sparse or gather run never loads the GEMM path's kernels, a forced dense run never the
        scatters and gathers. (Each kernel compiled costs 0.1-2 s on the very first run; a
        caller that need not avoid a stall mid-run calls none of this and lets each kernel
        load on its first call.)"""
        rng = np.random.default_rng(0)
        for density in warm_up_densities(self.policy):
            n = int(density * self.input_sites)
            idx = np.sort(rng.choice(self.input_sites, n, replace=False)).astype(np.int32)
            if self.pixels:
                image = np.zeros(self.input_sites)
                image[idx] = rng.random(n)
                self.step(image)
            else:
                self.step(idx, np.ones(n, np.int32))
        self.logits()
        if self.policy.mode in ("auto", "gather"):
            for layer in self.embedding_layers:
                layer.warm_up()
        self.reset()
        self.clear_stats()

    def logits(self) -> np.ndarray:
        """Logits from the steps seen since the last reset (mean over those steps)."""
        return self.head.logits()

    def run(self, steps) -> np.ndarray:
        """Classify one sample given as a sequence of input steps: (idx, cnt) event lists, or
        for a model of static images real-valued images (:meth:`run_image` repeats one).

        With the whole sample at hand, layers run one after another over all steps (layer-major)
        so that small dense layers batch their steps into one GEMM. Every layer still sees its
        inputs in time order, so the result is that of calling :meth:`step` per step.
        """
        self.reset()
        xs = [self._input(x) for x in steps] if self.pixels else \
            [self._input(i, c) for i, c in steps]
        edges = self._pipeline_edges(len(xs))
        self.layer_major_runs = max(self.layer_major_runs - 1, 0)
        if edges is not None:
            xs = self._run_pipelined(xs, edges)
        else:
            for (embedding, blocks), sites in zip(self.stages, self.stream_sites):
                xs = embedding.run_steps(xs)
                if self.membrane:
                    xs = [_real_map(x, sites, self.dtype) for x in xs]
                for block in blocks:
                    xs = block.run_steps(xs)
        for x in xs:
            if self.membrane:
                self.head.step(x)
            else:
                self.head.step(*x)
        return self.logits()

    def _pipeline_edges(self, steps: int) -> list[int] | None:
        """Chunk edges over a sample's steps for :meth:`_run_pipelined`, or None to run the
        stages one after another: one engine thread, already inside a part, fewer than four
        steps (a chunk holds at least two, so that each layer takes the offline paths it
        takes over the whole sample: a small layer's dense steps share one GEMM), a small
        network (:data:`PIPELINE_MIN_NEURON_STEPS`), a first compile's run
        (:attr:`layer_major_runs`), or a layer watched as it steps (:func:`_watched`)."""
        chunks = min(PIPELINE_CHUNKS, steps // 2)
        if engine_threads() < 2 or in_part() or chunks < 2 or self.layer_major_runs > 0:
            return None
        if steps * sum(layer.n_neurons for layer in self.layers) < PIPELINE_MIN_NEURON_STEPS:
            return None
        if any(_watched(layer) for layer in self.layers):
            return None
        return split(steps, chunks)

    def _chain(self, steps: int) -> list:
        """The network as one chain of stages ``(xs, a, b) -> outs`` over steps a..b-1: each
        embedding's conv stages, a membrane stream's densifying, each block's halves."""
        links = []
        for (embedding, blocks), sites in zip(self.stages, self.stream_sites):
            saved = embedding.saved_maps(steps)
            links += [lambda xs, a, b, e=embedding, i=i, saved=saved: e.run_stage(i, xs, saved,
                                                                                    a, b)
                      for i in range(len(embedding.plan))]
            if self.membrane:
                links.append(lambda xs, a, b, sites=sites:
                             [_real_map(x, sites, self.dtype) for x in xs])
            links += [lambda xs, a, b, f=f: f(xs) for block in blocks for f in block.parts]
        return links

    def _run_pipelined(self, xs: list, edges: list[int]) -> list:
        """The chain of stages over a sample's steps as a pipeline on the engine's threads
        (:func:`~eventformer.runtime.run_pipeline`): stage s works on chunk c while stage
        s + 1 works on chunk c - 1. Every stage sees its steps in time order, so the maps are
        those of running the stages one after another."""
        links = self._chain(len(xs))
        streams = [xs] + [[None] * len(xs) for _ in links]  # streams[s]: stage s's input

        def stage(s):
            def run(a, b):
                streams[s + 1][a:b] = self._pipeline_stage(links[s], streams[s][a:b], a, b)
            return run

        run_pipeline([stage(s) for s in range(len(links))], edges, engine_threads())
        return streams[-1]

    @staticmethod
    def _pipeline_stage(link, xs: list, a: int, b: int) -> list:
        """One stage of the pipeline on steps a..b-1 (one method, so that a profiler can see
        which thread runs which stage)."""
        return link(xs, a, b)

    def run_image(self, image: np.ndarray) -> np.ndarray:
        """Classify a static image (real pixels, [H, W, C]): the same input at each of the
        configuration's steps (direct encoding)."""
        return self.run([image] * self.config.steps)

    def layer_stats(self) -> list[dict]:
        return [layer.stats() for layer in self.layers] + [self.head.stats()]
