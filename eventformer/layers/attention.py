"""Attention operators: pluggable parts of a block, from the residual stream to its update.

An operator takes the block input (an integer event list over [tokens, D]) and returns the
event list added back to the residual stream. It lists its spiking layers for the report.
Registered by name in :data:`ATTENTION_OPERATORS` (SPEC §2 and §4):

- ``ssa``: Spikformer's SSA, Y = (Q K^T) V * scale;
- ``ssa_bin``: binary attention, Y = (1(Q K^T > delta_h) V - vbar) * scale;
- ``ds2ta``: NSAD, Y = (AD_h[Q K^T] V) * scale, with TASA on the q, k, v and proj layers;
- ``saformer``: no V branch, Y = scale * (K * a) + DWC(K), a the pooled Q/K channel gate.

Each is built from the block's layers and its operator parameters (the model file's
``AttentionParams.params``).
"""

from __future__ import annotations

import numpy as np

from ..fixedpoint import (ACC_LIMIT, ATTENTION_UNIT, GATE_SHIFT, Fixed, FixedPointError,
                          arithmetic, attention_theta, quantise, shift_of)
from ..kernels import (counters as C, nsad_step, saformer_step, saformer_step_fixed, ssa_bin_step,
                       ssa_bin_step_fixed, ssa_step)
from ..runtime import engine_threads, run_dynamic, run_parts
from .base import PathPolicy, SpikingLayer, ones, period
from .neurons import FixedLIFNeurons, LIFNeurons
from .synapses import LinearLIF, TasaLinearLIF


def _core_arithmetic(layer, params, dim: int, scale: float, dtype):
    """Set an attention core's arithmetic: ``dtype`` (of its current), ``scale`` (an array the
    kernels multiply the integer Y by) and ``neurons``. In an integer mode the current is Y in
    units of scale / ATTENTION_UNIT (SPEC §6), so the kernels multiply by ATTENTION_UNIT and the
    LIF's threshold is theta / scale * ATTENTION_UNIT."""
    arith = arithmetic(dtype)
    layer.fixed = arith if isinstance(arith, Fixed) else None
    if layer.fixed is None:
        layer.dtype = arith
        layer.scale = np.array([scale], arith)
        layer.neurons = LIFNeurons.from_params(layer.n_neurons, params, arith)
        return
    if params.v_reset is not None and params.v_reset != 0:
        raise FixedPointError(f"{params.name}: integer mode supports v_reset 0 or a soft reset, "
                              f"got v_reset {params.v_reset:g}")
    layer.dtype = np.dtype(np.int32)
    layer.scale = np.array([ATTENTION_UNIT], np.int32)
    theta = np.full(dim, attention_theta(params.theta, scale), np.int32)
    layer.neurons = FixedLIFNeurons(layer.n_neurons, shift=shift_of(params.tau, params.name),
                                    theta=theta, soft_reset=params.v_reset is None,
                                    decay_input=params.decay_input)


class AttentionCore(SpikingLayer):
    """What the attention cores share: a step's Y (:meth:`_core_current`, written into a given
    buffer with given counters, or a shared period where nothing pairs), then the attention
    LIF. A step's Y depends only on its own q, k (and v) spikes, so :meth:`attend_steps` forms
    the Y of a sample's steps on all engine threads at once and fires them in time order."""

    kind = "attention"

    def _core_current(self, *args):
        raise NotImplementedError

    def attend(self, *spikes) -> np.ndarray:
        """One step: the core's Y from the step's spikes (q, k[, v]), then the LIF."""
        return self.fire(self._core_current(*spikes, self.current, self.counters))

    def attend_steps(self, steps: list) -> list:
        """:meth:`attend` for every step of a sample (a list of spike tuples): the same spikes
        and counts. On several engine threads the steps' Y are formed at once, each thread
        taking every n-th step into its own buffer and counters (the work per step varies with
        its activity); the LIF then runs in time order. A probe or a recorder watching the
        neurons sees each step as :meth:`attend` gives it."""
        parts = min(engine_threads(), len(steps))
        if parts < 2 or self.probe is not None or "fire" in vars(self.neurons):
            return [self.attend(*spikes) for spikes in steps]
        bufs = getattr(self, "_step_bufs", None)
        if bufs is None or bufs.shape[0] < len(steps):
            bufs = self._step_bufs = np.empty((len(steps), self.current.shape[0]),
                                              self.current.dtype)
        counters = np.zeros((parts, C.N_COUNTERS), np.int64)
        currents = [None] * len(steps)

        def part(i):
            for t in range(i, len(steps), parts):
                currents[t] = self._core_current(*steps[t], bufs[t], counters[i])

        run_parts(part, parts)
        self.counters += counters.sum(axis=0)
        return [self.fire(current) for current in currents]


def side_by_side(layers: list, inputs: list) -> list:
    """``[layer.run_steps(inputs) for layer in layers]`` for layers that read the same input
    and nothing of each other (q, k, v), on the engine's threads at once: each layer then runs
    whole on one thread (none of them is large enough to split well on its own)."""
    if engine_threads() < 2:
        return [layer.run_steps(inputs) for layer in layers]
    outs = [None] * len(layers)

    def part(i):
        outs[i] = layers[i].run_steps(inputs)

    run_dynamic(part, len(layers))  # three layers on two threads: the first free takes the third
    return outs


def _check_bound(name: str, worst: float, arith) -> None:
    if worst > ACC_LIMIT:
        raise FixedPointError(f"{name}: in {arith.name} its worst-case current ({worst:.3g} "
                              "units) could overflow the int32 accumulator; run it in a float "
                              "--dtype")


class AttentionLIF(AttentionCore):
    """SSA core: Y = (Q K^T) V * scale per head, over active pairs only, then the attention LIF."""

    def __init__(self, params, tokens: int, dim: int, heads: int, scale: float, *, dtype,
                 order: int = 0):
        super().__init__(params.name, tokens * dim, "spikes")
        self.tokens, self.dim, self.heads = tokens, dim, heads
        _core_arithmetic(self, params, dim, scale, dtype)
        dtype = self.dtype
        if self.fixed is not None:  # Y <= N d (d shared channels with each of N keys)
            _check_bound(params.name, tokens * (dim // heads) * ATTENTION_UNIT, self.fixed)
        self.current = np.empty(tokens * dim, dtype)
        # Y = 0 (nothing pairs: see _nothing_to_attend): every site's current is 0 * scale, as the
        # kernel would write it
        self._zero = np.zeros(1, dtype) * self.scale
        self._zero_period = period(np.repeat(self._zero, dim), tokens * dim)
        self.neurons.steady = self._zero_period
        self.order = order  # 0 auto, 1 (QK^T)V, 2 Q(K^T V)
        self.orders_used = np.zeros(3, np.int64)
        self.dense_macs_per_step = 2 * tokens * tokens * dim  # Q K^T and (.) V, all heads

    def reset(self) -> None:
        self.neurons.reset()

    def _nothing_to_attend(self, nq: int, nk: int, nv: int) -> bool:
        """Whether the kernel would form no product at all (Y = 0, no op counted), so that it
        need not run: in pairs order (and auto, which then picks it for every head) an empty Q
        or K pairs nothing; kv order still counts K/V co-activations unless Q and K or V are
        empty."""
        if self.order == 2:
            return nq == 0 and (nk == 0 or nv == 0)
        return nq == 0 or nk == 0

    def _core_current(self, q, k, v, out, counters) -> np.ndarray:
        nq, nk, nv = q.shape[0], k.shape[0], v.shape[0]
        if self._nothing_to_attend(nq, nk, nv):
            # what ssa_step would do: every head in pairs order (kv when forced), no op, Y = 0
            self.orders_used[2 if self.order == 2 else 1] += self.heads
            counters[C.INPUT_EVENTS] += nq + nk + nv
            if self.probe is None:
                current = self._zero_period
            else:
                current = out
                current[:] = self._zero[0]
        else:
            used = ssa_step(q, k, v, self.tokens, self.dim, self.heads, self.scale, out,
                            counters, self.order)
            # a 3-element add: numpy keeps the GIL for it, so worker threads add safely
            self.orders_used += np.bincount(used, minlength=3)
            current = out
        counters[C.INPUT_SITES] += 3 * self.tokens * self.dim
        counters[C.SPARSE_STEPS] += 1
        return current

    def clear_stats(self) -> None:
        super().clear_stats()
        self.orders_used[:] = 0

    def stats(self) -> dict:
        out = super().stats()
        out["qk_v_heads"] = int(self.orders_used[1])
        out["q_kv_heads"] = int(self.orders_used[2])
        return out


class MappedAttentionLIF(AttentionCore):
    """Attention cores that form the (Q K^T) map explicitly over active pairs and map each entry
    (SSA_Bin's compare, NSAD's table), then the attention LIF. A subclass gives the kernel call
    (:meth:`_compute`) and the current of a step where nothing pairs (:meth:`_unpaired_row`)."""

    def __init__(self, params, tokens: int, dim: int, heads: int, scale: float, *, dtype):
        super().__init__(params.name, tokens * dim, "spikes")
        self.tokens, self.dim, self.heads = tokens, dim, heads
        _core_arithmetic(self, params, dim, scale, dtype)
        dtype = self.dtype
        if self.fixed is not None:
            _check_bound(params.name, self._worst(tokens) * ATTENTION_UNIT, self.fixed)
        self.current = np.empty(tokens * dim, dtype)
        # an empty Q or K pairs nothing: every token's current is this row, as the kernel writes it
        self._unpaired = self._unpaired_row(dtype)
        self._unpaired_period = period(self._unpaired, tokens * dim)
        self.neurons.steady = self._unpaired_period
        self.dense_macs_per_step = 2 * tokens * tokens * dim  # Q K^T and (.) V, all heads

    def _unpaired_row(self, dtype) -> np.ndarray:
        raise NotImplementedError

    def _worst(self, tokens: int) -> float:
        """The largest |Y| / scale a step can reach (for the integer overflow bound)."""
        raise NotImplementedError

    def _compute(self, q, k, v, out, counters) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.neurons.reset()

    def _nothing_to_attend(self, nq: int, nk: int, nv: int) -> bool:
        """Whether the kernel would form no pair (an empty Q or K): its current is then the
        unpaired row at every token and no op but the input events is counted."""
        return nq == 0 or nk == 0

    def _core_current(self, q, k, v, out, counters) -> np.ndarray:
        nq, nk, nv = q.shape[0], k.shape[0], v.shape[0]
        if self._nothing_to_attend(nq, nk, nv):
            counters[C.INPUT_EVENTS] += nq + nk + nv
            if self.probe is None:
                current = self._unpaired_period
            else:
                current = out
                current.reshape(-1, self.dim)[:] = self._unpaired
        else:
            current = out
            self._compute(q, k, v, current, counters)
        counters[C.INPUT_SITES] += 3 * self.tokens * self.dim
        counters[C.SPARSE_STEPS] += 1
        return current


class BinaryAttentionLIF(MappedAttentionLIF):
    """SSA_Bin core: B = 1((Q K^T) > delta_h), Y = (B V - vbar) * scale, then the attention LIF.
    In an integer mode vbar is held in units of scale / ATTENTION_UNIT (SPEC §6)."""

    def __init__(self, params, tokens, dim, heads, scale, *, dtype, delta, vbar):
        self.delta = np.array(delta, np.int64)  # copies: the model file's arrays stay its own
        if isinstance(arithmetic(dtype), Fixed):
            self.vbar = np.rint(np.asarray(vbar, np.float64) * ATTENTION_UNIT).astype(np.int64)
        else:
            self.vbar = np.array(vbar, dtype)
        if self.delta.shape != (heads,) or np.any(self.delta < 0):
            raise ValueError(f"{params.name}: delta must be {heads} integers >= 0")
        if self.vbar.shape != (dim,):
            raise ValueError(f"{params.name}: vbar must have {dim} entries")
        super().__init__(params, tokens, dim, heads, scale, dtype=dtype)

    def _worst(self, tokens):
        return tokens + float(np.abs(self.vbar).max(initial=0)) / ATTENTION_UNIT

    def _unpaired_row(self, dtype):
        if self.fixed is not None:
            return np.ascontiguousarray(-self.vbar, dtype)
        return (np.zeros(self.dim, dtype) - self.vbar) * self.scale[0]

    def _compute(self, q, k, v, out, counters):
        if self.fixed is not None:
            ssa_bin_step_fixed(q, k, v, self.tokens, self.dim, self.heads, self.delta, self.vbar,
                               ATTENTION_UNIT, out, counters)
            return
        ssa_bin_step(q, k, v, self.tokens, self.dim, self.heads, self.delta, self.vbar,
                     self.scale, out, counters)


class NsadAttentionLIF(MappedAttentionLIF):
    """DS2TA's NSAD core: A = AD_h[(Q K^T)] per entry, Y = (A V) * scale, then the attention LIF."""

    def __init__(self, params, tokens, dim, heads, scale, *, dtype, table):
        self.table = np.array(table, np.int64)  # copies: the model file's arrays stay its own
        d = dim // heads
        if self.table.shape != (heads, d + 1) or np.any(self.table[:, 0] != 0):
            raise ValueError(f"{params.name}: the NSAD table must be [{heads}, {d + 1}] with "
                             "AD[0] = 0")
        super().__init__(params, tokens, dim, heads, scale, dtype=dtype)

    def _worst(self, tokens):
        return tokens * float(np.abs(self.table).max(initial=0))

    def _unpaired_row(self, dtype):
        return np.zeros(self.dim, dtype) * self.scale[0]

    def _compute(self, q, k, v, out, counters):
        nsad_step(q, k, v, self.tokens, self.dim, self.heads, self.table, self.scale, out,
                  counters)


class SaformerAttentionLIF(AttentionCore):
    """SAFormer core: Y = scale * (K * a) + DWC(K) (a = sum_l Qa[l] * Ka[l], DWC a depthwise 3x3
    conv over the token grid, an event-driven scatter), then the attention LIF. No V."""

    def __init__(self, params, tokens: int, dim: int, grid: int, scale: float, *, dtype,
                 dwc_weight, dwc_bias, pool_rows: int):
        super().__init__(params.name, tokens * dim, "spikes")
        if grid * grid != tokens:
            raise ValueError(f"{params.name}: {tokens} tokens are not a {grid}x{grid} grid")
        self.tokens, self.dim, self.grid = tokens, dim, grid
        self.pool_rows = int(pool_rows)
        if not 1 <= self.pool_rows:
            raise ValueError(f"{params.name}: pool rows must be >= 1, got {self.pool_rows}")
        if np.shape(dwc_weight) != (dim, 3, 3) or np.shape(dwc_bias) != (dim,):
            raise ValueError(f"{params.name}: the DWC must be [{dim}, 3, 3] with a [{dim}] bias")
        arith = arithmetic(dtype)
        self.fixed = arith if isinstance(arith, Fixed) else None
        if self.fixed is None:
            self.dtype = arith
            self.scale = np.array([scale], dtype)
            self.dwc_weight = np.array(dwc_weight, dtype)  # copies, C-contiguous
            self.dwc_bias = np.array(dwc_bias, dtype)
            self.neurons = LIFNeurons.from_params(self.n_neurons, params, dtype)
        else:
            self._fixed_point(params, dwc_weight, dwc_bias, scale)
        dtype = self.dtype
        self.current = np.empty(tokens * dim, dtype)
        # no K spike: Y = DWC(0) = the DWC bias at every token (the gate term needs K too)
        self._quiet_period = period(self.dwc_bias, tokens * dim)
        self.neurons.steady = self._quiet_period
        # dense: the DWC's 9 taps and the gate term per site, the gate's L x D products
        self.dense_macs_per_step = 10 * tokens * dim + self.pool_rows * dim

    def _fixed_point(self, params, dwc_weight, dwc_bias, scale) -> None:
        """SPEC §6: the DWC quantised per channel like any synaptic layer (channel c's unit
        s_c), the gate a (an integer in units of 1 / (N/L)^2) brought to s_c by a fixed-point
        multiplier; the LIF in s_c."""
        name, arith = params.name, self.fixed
        if self.tokens % self.pool_rows:
            raise FixedPointError(f"{name}: integer mode needs the {self.tokens} tokens to split "
                                  f"evenly into {self.pool_rows} pooled rows")
        q = quantise(dwc_weight, dwc_bias, params.theta, params.v_reset, arith, name, 1)
        self.dtype = np.dtype(np.int32)
        self.dwc_weight = np.ascontiguousarray(q.weight.astype(arith.weight_dtype))
        self.dwc_bias = np.ascontiguousarray(q.bias)
        width = self.tokens // self.pool_rows
        self.gate_mult = np.rint(scale / width**2 / q.scale * 2**GATE_SHIFT).astype(np.int64)
        gate_peak = self.pool_rows * width**2  # every query and key site active
        _check_bound(name, q.worst + gate_peak * float(self.gate_mult.max()) / 2**GATE_SHIFT,
                     arith)
        self.neurons = FixedLIFNeurons(self.n_neurons, shift=shift_of(params.tau, name),
                                       theta=q.theta, soft_reset=params.v_reset is None,
                                       decay_input=params.decay_input)

    def reset(self) -> None:
        self.neurons.reset()

    def _nothing_to_attend(self, nq: int, nk: int) -> bool:
        """No key spike: the kernel would only write the DWC bias."""
        return nk == 0

    def _core_current(self, q, k, out, counters) -> np.ndarray:
        nq, nk = q.shape[0], k.shape[0]
        if self._nothing_to_attend(nq, nk):
            counters[C.INPUT_EVENTS] += nq + nk
            if self.probe is None:
                current = self._quiet_period
            else:
                current = out
                current.reshape(-1, self.dim)[:] = self.dwc_bias
        else:
            current = out
            if self.fixed is not None:
                saformer_step_fixed(q, k, self.tokens, self.dim, self.grid, self.pool_rows,
                                    self.dwc_weight, self.dwc_bias, self.gate_mult, GATE_SHIFT,
                                    current, counters)
            else:
                saformer_step(q, k, self.tokens, self.dim, self.grid, self.pool_rows,
                              self.dwc_weight, self.dwc_bias, self.scale, current, counters)
        counters[C.INPUT_SITES] += 2 * self.tokens * self.dim
        counters[C.SPARSE_STEPS] += 1
        return current


class SpikingSelfAttention:
    """Spikformer's SSA: q/k/v linear+LIF, attention core + LIF, proj linear+LIF."""

    name = "ssa"

    def __init__(self, prefix: str, layers: dict, config, *, dtype, policy: PathPolicy,
                 params: dict | None = None, multiplicity: int = 1):
        n = config.tokens
        m = multiplicity  # the largest value of the block input (an integer overflow bound)
        self.q = LinearLIF(layers[f"{prefix}.q_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy, multiplicity=m)
        self.k = LinearLIF(layers[f"{prefix}.k_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy, multiplicity=m)
        self.v = LinearLIF(layers[f"{prefix}.v_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy, multiplicity=m)
        self.core = self._core(layers[f"{prefix}.attn_lif"], config, dtype, params or {})
        self.proj = LinearLIF(layers[f"{prefix}.proj_lif"], n, dtype=dtype, input_kind="spikes",
                              policy=policy)

    def _core(self, lif, config, dtype, params):
        return AttentionLIF(lif, config.tokens, config.dim, config.heads, config.scale,
                            dtype=dtype)

    @property
    def layers(self) -> list[SpikingLayer]:
        return [self.q, self.k, self.v, self.core, self.proj]

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q, _ = self.q.step(idx, cnt)
        k, _ = self.k.step(idx, cnt)
        v, _ = self.v.step(idx, cnt)
        s = self.core.attend(q, k, v)
        return self.proj.step(s, ones(s.shape[0]))

    def run_steps(self, inputs: list) -> list:
        """All steps of a sample, layer by layer (offline): same results as :meth:`step`."""
        q, k, v = side_by_side([self.q, self.k, self.v], inputs)
        s = self.core.attend_steps([(q[t][0], k[t][0], v[t][0]) for t in range(len(inputs))])
        return self.proj.run_steps([(x, ones(x.shape[0])) for x in s])


class BinarySelfAttention(SpikingSelfAttention):
    """SSA_Bin (SPEC §4): SSA's layers with the binary core (parameters ``delta``, ``vbar``)."""

    name = "ssa_bin"

    def _core(self, lif, config, dtype, params):
        return BinaryAttentionLIF(lif, config.tokens, config.dim, config.heads, config.scale,
                                  dtype=dtype, delta=params["delta"], vbar=params["vbar"])


class DS2TAAttention(SpikingSelfAttention):
    """DS2TA (SPEC §4): TASA on q, k, v and proj (decay exponents ``tau``, window ``taw``) and
    the NSAD core (``nsad_table``)."""

    name = "ds2ta"

    def __init__(self, prefix: str, layers: dict, config, *, dtype, policy: PathPolicy,
                 params: dict, multiplicity: int = 1):
        n = config.tokens
        tau = [int(x) for x in np.asarray(params["tau"]).reshape(-1)]
        taw = int(np.asarray(params["taw"]))

        def tasa(name, i, kind):
            return TasaLinearLIF(layers[f"{prefix}.{name}_lif"], n, dtype=dtype,
                                 input_kind=kind, policy=policy, tau=tau[i], taw=taw,
                                 multiplicity=multiplicity if kind == "integers" else 1)

        self.q = tasa("q", 0, "integers")
        self.k = tasa("k", 1, "integers")
        self.v = tasa("v", 2, "integers")
        self.core = NsadAttentionLIF(layers[f"{prefix}.attn_lif"], n, config.dim, config.heads,
                                     config.scale, dtype=dtype, table=params["nsad_table"])
        self.proj = tasa("proj", 3, "spikes")


class SAFormerAttention:
    """SAFormer (SPEC §4): q/k linear+LIF (no V), the SASA + DWC core + LIF, proj linear+LIF."""

    name = "saformer"

    def __init__(self, prefix: str, layers: dict, config, *, dtype, policy: PathPolicy,
                 params: dict | None = None, multiplicity: int = 1):
        n = config.tokens
        self.q = LinearLIF(layers[f"{prefix}.q_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy, multiplicity=multiplicity)
        self.k = LinearLIF(layers[f"{prefix}.k_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy, multiplicity=multiplicity)
        self.core = self._core(layers[f"{prefix}.attn_lif"], config, dtype, params)
        self.proj = LinearLIF(layers[f"{prefix}.proj_lif"], n, dtype=dtype, input_kind="spikes",
                              policy=policy)

    def _core(self, lif, config, dtype, params):
        return SaformerAttentionLIF(
            lif, config.tokens, config.dim, config.grid, config.scale, dtype=dtype,
            dwc_weight=params["dwc_weight"], dwc_bias=params["dwc_bias"],
            pool_rows=int(np.asarray(params["pool_rows"])))

    @property
    def layers(self) -> list[SpikingLayer]:
        return [self.q, self.k, self.core, self.proj]

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q, _ = self.q.step(idx, cnt)
        k, _ = self.k.step(idx, cnt)
        s = self.core.attend(q, k)
        return self.proj.step(s, ones(s.shape[0]))

    def run_steps(self, inputs: list) -> list:
        """All steps of a sample, layer by layer (offline): same results as :meth:`step`."""
        q, k = side_by_side([self.q, self.k], inputs)
        s = self.core.attend_steps([(q[t][0], k[t][0]) for t in range(len(inputs))])
        return self.proj.run_steps([(x, ones(x.shape[0])) for x in s])


# The operators the engine runs (a model file naming another is refused by the engine).
ATTENTION_OPERATORS = {"ssa": SpikingSelfAttention, "ssa_bin": BinarySelfAttention,
                       "ds2ta": DS2TAAttention, "saformer": SAFormerAttention}
