"""Attention operators of the successor models: QKFormer's token QK attention.

QKFormer (``Token_QK_Attention`` in its released ``dvs128-gesture/model.py``): q and k are the
usual linear+BN+LIF branches of the block input; per token and head the Q spikes of the head's
channels are counted, and that count drives an attention LIF (threshold 0.5) with one neuron
per (token, head); its spikes mask K per (token, head): ``attn * k``. There is no V and no
token-by-token product: the operator does one add per Q spike and one test per (token, head)
run of K spikes (:func:`~eventformer.kernels.spikedriven.head_counts`,
:func:`~eventformer.kernels.spikedriven.mask_heads`), then the proj linear+LIF as in
Spikformer.

The operator has the interface of :data:`~eventformer.layers.ATTENTION_OPERATORS`' entries
(``step``, ``run_steps``, ``layers``, ``reset``).

The Spike-driven Transformer (v1, ``MS_SSA_Conv`` in its released ``module/ms_conv.py``) runs on a
membrane residual stream: the block input is a real-valued map [tokens, D] (a dense array per
step), which ``shortcut_lif`` spikes (:class:`StreamLIF`, a LIF without a synapse of its own);
q, k and v are linear+BN+LIF branches of those spikes; the SDSA core
(:class:`SpikeDrivenAttentionLIF`) forms KV = K AND V (K and V first eroded over the token grid
where the model's ``erode`` flag says, KV then eroded over (token, channel in head)), counts KV
per channel over the tokens and spikes the counts with ``talking_heads_lif`` (D neurons, theta
0.5); those spikes mask Q per channel (Y, eroded like KV); proj is a linear+BN map with no LIF
(:class:`LinearSynapse`) whose real current the block adds to the stream
(:class:`SpikeDrivenSelfAttention` returns it). Every product has a binary operand: ANDs, masks,
window maxima and counts (:mod:`eventformer.kernels.spikedriven`), accumulates in the synapses.
The head of such a model is :class:`LIFLinearHead`. In an integer mode the stream is int32 in one
unit per channel shared by every current summed into it (SPEC §6's per-channel unit, taken as
the largest of those layers' own: ``models.spikformer.membrane_units``), so the sums are exact
and the LIFs reading the stream take their thresholds in that unit.
"""

from __future__ import annotations

import numpy as np

from ..fixedpoint import ACC_LIMIT, Fixed, FixedPointError, arithmetic, shift_of
from ..kernels import counters as C
from ..kernels.spikedriven import (and_lists, column_sums, erode_grid, erode_heads, head_counts,
                                   mask_channels, mask_heads)
from .attention import (ATTENTION_OPERATORS, AttentionCore, SAFormerAttention, _core_arithmetic,
                        side_by_side)
from .base import EMPTY, PathPolicy, SpikingLayer, ones, period
from .neurons import FixedLIFNeurons, LIFNeurons
from .synapses import LinearLIF


class TokenQKAttentionLIF(AttentionCore):
    """The token QK core: per (token, head) the count of Q spikes over the head's channels,
    then the attention LIF on those counts (one neuron per (token, head), flat ``n * heads +
    h``). :meth:`mask` keeps the K spikes whose (token, head) fired.

    In an integer mode the current is the count in units of 1 / ATTENTION_UNIT (the unit
    SPEC §6 gives attention LIFs, with scale 1), so the threshold 0.5 is exact."""

    def __init__(self, params, tokens: int, dim: int, heads: int, *, dtype):
        super().__init__(params.name, tokens * heads, "spikes")
        if heads <= 0 or dim % heads:
            raise ValueError(f"{params.name}: dim {dim} is not divisible by {heads} heads")
        self.tokens, self.dim, self.heads = tokens, dim, heads
        _core_arithmetic(self, params, heads, 1.0, dtype)
        self.current = np.empty(tokens * heads, self.dtype)
        self._zero_period = period(np.zeros(heads, self.dtype), tokens * heads)
        self.neurons.steady = self._zero_period
        # a dense implementation sums every channel of Q per (token, head) and multiplies every
        # site of K by its flag
        self.dense_macs_per_step = 2 * tokens * dim
        self._flags = np.zeros(tokens * heads, np.uint8)
        self._kept = np.empty(tokens * dim, np.int32)

    def reset(self) -> None:
        self.neurons.reset()

    def _core_current(self, q, out, counters) -> np.ndarray:
        counters[C.INPUT_EVENTS] += q.shape[0]
        counters[C.INPUT_SITES] += self.tokens * self.dim
        counters[C.SPARSE_STEPS] += 1
        if q.shape[0] == 0 and self.probe is None:
            return self._zero_period  # no Q spike: every count is 0
        counts = np.empty(self.tokens * self.heads, np.int32)  # per call: steps run in threads
        head_counts(q, self.dim, self.heads, counts, counters)
        np.multiply(counts, self.scale[0], out=out, casting="unsafe")
        return out

    def mask(self, k: np.ndarray, attn: np.ndarray) -> np.ndarray:
        """K's spikes whose (token, head) is in the attention spikes ``attn``."""
        if k.shape[0] == 0 or attn.shape[0] == 0:
            self.counters[C.INPUT_EVENTS] += k.shape[0]
            return EMPTY
        flags = self._flags
        flags[attn] = 1
        n = mask_heads(k, self.dim, self.heads, flags, self._kept, self.counters)
        flags[attn] = 0
        self.counters[C.INPUT_EVENTS] += k.shape[0]
        return self._kept[:n].copy()


class TokenQKAttention(SAFormerAttention):
    """QKFormer's token QK attention: q/k linear+LIF, the token QK core + LIF masking K, proj
    linear+LIF (SAFormer's layers, no V: another core). Parameters: none beyond the layers
    (``params`` is empty)."""

    name = "token_qk"

    def _core(self, lif, config, dtype, params):
        return TokenQKAttentionLIF(lif, config.tokens, config.dim, config.heads, dtype=dtype)

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q, _ = self.q.step(idx, cnt)
        k, _ = self.k.step(idx, cnt)
        s = self.core.mask(k, self.core.attend(q))
        return self.proj.step(s, ones(s.shape[0]))

    def run_steps(self, inputs: list) -> list:
        """All steps of a sample, layer by layer (offline): same results as :meth:`step`."""
        q, k = side_by_side([self.q, self.k], inputs)
        attn = self.core.attend_steps([(q[t][0],) for t in range(len(inputs))])
        s = [self.core.mask(k[t][0], attn[t]) for t in range(len(inputs))]
        return self.proj.run_steps([(x, ones(x.shape[0])) for x in s])


# --- the Spike-driven Transformer (v1): a membrane residual stream -----------------------------

def _real_only(name: str, dtype, what: str):
    """The float dtype of a layer that reads or writes real values; integer modes refused."""
    arith = arithmetic(dtype)
    if isinstance(arith, Fixed):
        raise FixedPointError(f"{name}: {what}, which the integer modes cannot carry exactly; "
                              "run it in a float --dtype")
    return arith


class StreamLIF(SpikingLayer):
    """A LIF without a synapse of its own: its current is a real map given whole (SDT's
    ``shortcut_lif``, ``fc1_lif`` and ``fc2_lif`` spike the membrane stream [tokens, C], the
    head's ``head_lif`` its token mean [D]). :meth:`step` takes the map (flat, channel
    innermost) and returns the sorted indices that spiked.

    In an integer mode the map is int32 in ``unit`` (the value of one unit per channel [C]: the
    stream's shared unit, or the unit of the layer whose current it is), so the threshold is
    round(theta / unit) per channel and the shift LIF of SPEC §6 runs on it as on any layer's
    current; a map without a unit has no integer form and is refused."""

    kind = "lif"

    def __init__(self, params, size: int, *, dtype, unit=None):
        super().__init__(params.name, size, "real")
        arith = arithmetic(dtype)
        if not isinstance(arith, Fixed):
            self.dtype = arith
            self.neurons = LIFNeurons.from_params(size, params, self.dtype)
            return
        if unit is None:
            _real_only(params.name, dtype, "spikes a real-valued map")
        if params.v_reset is not None and params.v_reset != 0:
            raise FixedPointError(f"{params.name}: integer mode supports v_reset 0 or a soft "
                                  f"reset, got v_reset {params.v_reset:g}")
        unit = np.asarray(unit, np.float64).reshape(-1)
        if size % unit.shape[0]:
            raise ValueError(f"{params.name}: {unit.shape[0]} channel units for a map of {size}")
        self.dtype = arith.dtype
        self.unit = unit
        theta = np.maximum(np.rint(params.theta / unit), 1)  # theta > 0: at least one unit
        if theta.max() > ACC_LIMIT:
            raise FixedPointError(f"{params.name}: in {arith.name} its threshold is beyond the "
                                  "int32 accumulator; run it in a float --dtype")
        self.neurons = FixedLIFNeurons(size, shift=shift_of(params.tau, params.name),
                                       theta=theta.astype(np.int32),
                                       soft_reset=params.v_reset is None,
                                       decay_input=params.decay_input)

    def reset(self) -> None:
        self.neurons.reset()

    def step(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, self.dtype).reshape(-1)
        if x.shape[0] != self.n_neurons:
            raise ValueError(f"{self.name}: a map of {x.shape[0]} values for "
                             f"{self.n_neurons} neurons")
        c = self.counters
        c[C.INPUT_SITES] += self.n_neurons
        c[C.INPUT_EVENTS] += int(np.count_nonzero(x))
        c[C.DENSE_STEPS] += 1  # every neuron reads its own value: a dense step by nature
        return self.fire(x)

    def run_steps(self, xs: list) -> list:
        return [self.step(x) for x in xs]


class LinearSynapse(LinearLIF):
    """A token-wise linear map (Conv1d/Conv2d k1 or nn.Linear, BatchNorm folded) with no LIF:
    the output of a step is its real current (flat [tokens, Cout], bias included), which SDT
    adds to its membrane stream (``proj_conv``, ``fc1_conv``, ``fc2_conv``). The input is spikes;
    the current is formed as :class:`LinearLIF` forms it (scatter, gather or GEMM by the path
    policy; dense steps of a sample share one GEMM offline), counted the same way.

    In an integer mode the current is int32 in :attr:`unit` per channel: ``unit`` where it is
    summed into a stream of that shared unit, else the layer's own (SPEC §6)."""

    def __init__(self, params, tokens: int, *, dtype, policy: PathPolicy, unit=None):
        super().__init__(params, tokens, dtype=dtype, input_kind="spikes", policy=policy,
                         unit=unit)
        self.neurons = None  # no LIF: nothing to band either (see _band_bounds)
        self.n_neurons = 0
        self._size = tokens * self.cout

    @property
    def unit(self) -> np.ndarray | None:
        """The value of one unit of the current per channel (None in float)."""
        return None if self.quant is None else self.quant.scale

    def reset(self) -> None:
        pass  # no state: a step's current depends on its input alone

    def emit(self, current: np.ndarray) -> np.ndarray:
        """The step's current as a new dense array (a quiet step's is one period of the
        bias)."""
        if self.probe is not None:
            self.probe(self, current)
        if current.shape[0] == self._size:
            return current.copy()
        return np.tile(current, self._size // current.shape[0])


class SpikeDrivenAttentionLIF(AttentionCore):
    """The SDSA core of the released ``MS_SSA_Conv``: KV = K AND V over [tokens, D] (with
    ``erode``: K and V eroded over the token grid first, KV over (token, channel in head)
    after), its per-channel count over the tokens (``kv.sum(dim=-2)``), spiked by
    ``talking_heads_lif`` (one neuron per channel, flat c = h * d + j; theta 0.5). :meth:`mask`
    keeps the Q spikes whose channel fired (``q.mul(kv)``), eroded like KV with ``erode``.

    In an integer mode the current is the count in units of 1 / ATTENTION_UNIT (the unit SPEC
    §6 gives attention LIFs, with scale 1), so the threshold 0.5 is exact."""

    def __init__(self, params, grid: int, dim: int, heads: int, *, erode: bool, dtype):
        super().__init__(params.name, dim, "spikes")
        if heads <= 0 or dim % heads:
            raise ValueError(f"{params.name}: dim {dim} is not divisible by {heads} heads")
        self.grid, self.tokens, self.dim, self.heads = grid, grid * grid, dim, heads
        self.erode = bool(erode)
        _core_arithmetic(self, params, dim, 1.0, dtype)
        self.current = np.empty(dim, self.dtype)
        self._zero_period = period(np.zeros(dim, self.dtype) * self.scale[0], dim)
        self.neurons.steady = self._zero_period  # no K or no V spike: every count is 0
        # a dense implementation multiplies K by V, sums the products over the tokens and
        # multiplies Q by the column spikes: three passes over the map (Erode's maxima aside)
        self.dense_macs_per_step = 3 * self.tokens * dim
        self._flags = np.zeros(dim, np.uint8)

    def reset(self) -> None:
        self.neurons.reset()

    def _erode_grid(self, idx, counters) -> np.ndarray:
        out = np.empty(min(9 * idx.shape[0], self.tokens * self.dim), np.int32)
        n = erode_grid(idx, self.grid, self.grid, self.dim, out, counters)
        return out[:n]

    def _erode_heads(self, idx, counters) -> np.ndarray:
        out = np.empty(min(9 * idx.shape[0], self.tokens * self.dim), np.int32)
        n = erode_heads(idx, self.tokens, self.dim, self.heads, out, counters)
        return out[:n]

    def _core_current(self, k, v, out, counters) -> np.ndarray:
        """The talking-heads current of one step from its K and V spikes (buffers per call:
        the steps of a sample may run on several threads, see ``attend_steps``)."""
        counters[C.INPUT_EVENTS] += k.shape[0] + v.shape[0]
        counters[C.INPUT_SITES] += 2 * self.tokens * self.dim
        counters[C.SPARSE_STEPS] += 1
        if (k.shape[0] == 0 or v.shape[0] == 0) and self.probe is None:
            return self._zero_period  # nothing to AND (an Erode of nothing is nothing)
        if self.erode:
            k, v = self._erode_grid(k, counters), self._erode_grid(v, counters)
        kv = np.empty(min(k.shape[0], v.shape[0]) + 1, np.int32)
        kv = kv[:and_lists(k, v, kv, counters)]
        if self.erode:
            kv = self._erode_heads(kv, counters)
        sums = np.empty(self.dim, np.int32)
        column_sums(kv, self.dim, sums, counters)
        np.multiply(sums, self.scale[0], out=out, casting="unsafe")
        return out

    def mask(self, q: np.ndarray, kv: np.ndarray) -> np.ndarray:
        """Y: the Q spikes whose channel is in the talking-heads spikes ``kv`` (eroded over
        (token, channel in head) with ``erode``)."""
        c = self.counters
        c[C.INPUT_EVENTS] += q.shape[0]
        c[C.INPUT_SITES] += self.tokens * self.dim
        if q.shape[0] == 0 or kv.shape[0] == 0:
            return EMPTY
        flags = self._flags
        flags[kv] = 1
        out = np.empty(q.shape[0], np.int32)
        n = mask_channels(q, self.dim, flags, out, c)
        flags[kv] = 0
        if self.erode and n:
            return self._erode_heads(out[:n], c)
        return out[:n]


class SpikeDrivenSelfAttention:
    """The Spike-driven Transformer's attention (``MS_SSA_Conv``) on the membrane stream:
    ``shortcut_lif`` spikes the real block input, q/k/v linear+LIF, the SDSA core, and proj (a
    linear+BN map with no LIF): :meth:`step` returns proj's real current, which the block adds
    to the stream (the membrane shortcut). Parameters: ``erode`` (1 where the released code's
    DVS mode applies its Erode max-pools). ``synapse``: the checkpoint's name of the token-wise
    layers ("conv", or "linear" for nn.Linear), which names proj (``proj_conv``). ``unit``: in an
    integer mode the stream's unit per channel, which ``shortcut_lif`` reads and proj's current
    is quantised in (q, k, v and the core keep their own units, SPEC §6)."""

    name = "sdsa"

    def __init__(self, prefix: str, layers: dict, config, *, dtype, policy: PathPolicy,
                 params: dict | None = None, multiplicity: int = 1, synapse: str = "conv",
                 unit=None):
        n, dim = config.tokens, config.dim
        erode = int(np.asarray((params or {}).get("erode", 0)))
        self.shortcut = StreamLIF(layers[f"{prefix}.shortcut_lif"], n * dim, dtype=dtype,
                                  unit=unit)
        self.q, self.k, self.v = (
            LinearLIF(layers[f"{prefix}.{b}_lif"], n, dtype=dtype, input_kind="spikes",
                      policy=policy) for b in ("q", "k", "v"))
        self.core = SpikeDrivenAttentionLIF(layers[f"{prefix}.talking_heads_lif"], config.grid,
                                            dim, config.heads, erode=bool(erode), dtype=dtype)
        self.proj = LinearSynapse(layers[f"{prefix}.proj_{synapse}"], n, dtype=dtype,
                                  policy=policy, unit=unit)

    @property
    def layers(self) -> list[SpikingLayer]:
        return [self.shortcut, self.q, self.k, self.v, self.core, self.proj]

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def step(self, x: np.ndarray) -> np.ndarray:
        """One step: the stream ``x`` (flat [tokens, D]) -> proj's current (the same layout)."""
        s = self.shortcut.step(x)
        q, _ = self.q.step(s, ones(s.shape[0]))
        k, _ = self.k.step(s, ones(s.shape[0]))
        v, _ = self.v.step(s, ones(s.shape[0]))
        y = self.core.mask(q, self.core.attend(k, v))
        return self.proj.step(y, ones(y.shape[0]))

    def run_steps(self, xs: list) -> list:
        """All steps of a sample, layer by layer (offline): same results as :meth:`step`."""
        spikes = [(s, ones(s.shape[0])) for s in self.shortcut.run_steps(xs)]
        q, k, v = side_by_side([self.q, self.k, self.v], spikes)
        kv = self.core.attend_steps([(k[t][0], v[t][0]) for t in range(len(xs))])
        y = [self.core.mask(q[t][0], kv[t]) for t in range(len(xs))]
        return self.proj.run_steps([(s, ones(s.shape[0])) for s in y])


class LIFLinearHead:
    """The Spike-driven Transformer's head on the membrane stream: per step the token mean of
    the stream [D], spiked by ``head_lif`` (:attr:`lif`, a report row of its own), the Linear on
    those spikes; the logits are the mean over the steps of the Linear's outputs (the released
    ``head(head_lif(x.mean(tokens))).mean(0)``).

    In an integer mode the stream is int32 in its unit s_c per channel, and the mean's
    division is moved into the threshold: ``head_lif`` takes the token sum, exact, in units of
    s_c / tokens (the mean's own value in those units), so its threshold is round(theta *
    tokens / s_c). ``stream_bound`` (the stream's largest |value| per channel, from
    :func:`~eventformer.fixedpoint.membrane_stream_bound`) times the tokens must fit int32, or
    the head LIF is refused by name. The Linear sums float64 weights over the spikes: only the
    logits are float.

    Counts: the token mean's adds (``ac``, one per site) and in float its D divisions (``mac``),
    then one add of a weight column per spike and class (``ac``)."""

    name = "head"
    kind = "head"

    def __init__(self, lif_params, params, tokens: int, dtype, *, stream_unit=None,
                 stream_bound=None):
        arith = arithmetic(dtype)
        self.fixed = arith if isinstance(arith, Fixed) else None
        self.dtype = np.dtype(np.float64) if self.fixed else arith  # of the Linear and logits
        self.weight = np.asarray(params.weight, self.dtype)  # [classes, D]
        self.bias = np.asarray(params.bias, self.dtype)
        self.tokens = tokens
        self.dim = self.weight.shape[1]
        if self.fixed is None:
            self.lif = StreamLIF(lif_params, self.dim, dtype=self.dtype)
        else:
            if stream_unit is None or stream_bound is None:
                _real_only(lif_params.name, dtype, "spikes the real stream's token mean")
            worst = tokens * int(np.max(stream_bound))
            if worst > ACC_LIMIT:
                raise FixedPointError(
                    f"{lif_params.name}: in {arith.name} the token sum of the membrane stream "
                    f"could reach {worst:.3g} units, beyond the int32 accumulator; run it in a "
                    "float --dtype")
            self.lif = StreamLIF(lif_params, self.dim, dtype=arith,
                                 unit=np.asarray(stream_unit, np.float64) / tokens)
        self._weight_columns = np.ascontiguousarray(self.weight.T)  # [D, classes]: a spike's row
        self.sums = np.zeros(self.weight.shape[0], self.dtype)
        self.steps = 0
        self.counters = np.zeros(C.N_COUNTERS, np.int64)

    def reset(self) -> None:
        self.lif.reset()
        self.sums[:] = 0
        self.steps = 0

    def clear_stats(self) -> None:
        self.counters[:] = 0

    def step(self, x: np.ndarray) -> None:
        self.counters[C.AC] += self.tokens * self.dim
        if self.fixed is None:
            current = np.asarray(x, self.dtype).reshape(self.tokens, self.dim).sum(axis=0) \
                / self.dtype.type(self.tokens)
            self.counters[C.MAC] += self.dim
        else:  # the token sum in units of s_c / tokens: the mean, exactly (bounded at load)
            current = np.asarray(x).reshape(self.tokens, self.dim).sum(axis=0, dtype=np.int64)
            current = current.astype(np.int32)
        s = self.lif.step(current)
        self.sums += self._weight_columns[s].sum(axis=0) + self.bias
        self.counters[C.AC] += s.shape[0] * self.weight.shape[0]
        self.steps += 1

    def logits(self) -> np.ndarray:
        return self.sums / self.dtype.type(max(self.steps, 1))

    def stats(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "input": "spikes", "neurons": 0,
               "spikes": 0}
        out.update({name: int(self.counters[i]) for i, name in enumerate(C.NAMES)})
        out["input_density"] = 0.0
        out["dense_macs_per_step"] = 0
        return out


# The engine's registry is the one in layers.attention; the successors' operators join it here
# (importing this module from the package registers them), so layers.attention need not import
# its own subclasses' module.
ATTENTION_OPERATORS["token_qk"] = TokenQKAttention
ATTENTION_OPERATORS["sdsa"] = SpikeDrivenSelfAttention
