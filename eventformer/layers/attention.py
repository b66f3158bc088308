"""Attention operators: pluggable parts of a block, from the residual stream to its update.

An operator takes the block input (an integer event list over [tokens, D]) and returns the
event list added back to the residual stream. It lists its spiking layers for the report. The
DS2TA, SSA_Bin and SAFormer operators (SPEC §4) register here beside SSA.
"""

from __future__ import annotations

import numpy as np

from ..kernels import counters as C, ssa_step
from .base import PathPolicy, SpikingLayer, ones, period
from .neurons import LIFNeurons
from .synapses import LinearLIF


class AttentionLIF(SpikingLayer):
    """SSA core: Y = (Q K^T) V * scale per head, over active pairs only, then the attention LIF."""

    kind = "attention"

    def __init__(self, params, tokens: int, dim: int, heads: int, scale: float, *, dtype,
                 order: int = 0):
        super().__init__(params.name, tokens * dim, "spikes")
        self.tokens, self.dim, self.heads = tokens, dim, heads
        self.scale = np.array([scale], dtype)
        self.neurons = LIFNeurons.from_params(self.n_neurons, params, dtype)
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

    def attend(self, q, k, v) -> np.ndarray:
        counters = self.counters
        nq, nk, nv = q.shape[0], k.shape[0], v.shape[0]
        if self._nothing_to_attend(nq, nk, nv):
            # what ssa_step would do: every head in pairs order (kv when forced), no op, Y = 0
            self.orders_used[2 if self.order == 2 else 1] += self.heads
            counters[C.INPUT_EVENTS] += nq + nk + nv
            if self.probe is None:
                current = self._zero_period
            else:
                current = self.current
                current[:] = self._zero[0]
        else:
            used = ssa_step(q, k, v, self.tokens, self.dim, self.heads, self.scale,
                            self.current, counters, self.order)
            self.orders_used += np.bincount(used, minlength=3)
            current = self.current
        counters[C.INPUT_SITES] += 3 * self.tokens * self.dim
        counters[C.SPARSE_STEPS] += 1
        return self.fire(current)

    def stats(self) -> dict:
        out = super().stats()
        out["qk_v_heads"] = int(self.orders_used[1])
        out["q_kv_heads"] = int(self.orders_used[2])
        return out


class SpikingSelfAttention:
    """Spikformer's SSA: q/k/v linear+LIF, attention core + LIF, proj linear+LIF."""

    name = "ssa"

    def __init__(self, prefix: str, layers: dict, config, *, dtype, policy: PathPolicy):
        n, d = config.tokens, config.dim
        self.q = LinearLIF(layers[f"{prefix}.q_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy)
        self.k = LinearLIF(layers[f"{prefix}.k_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy)
        self.v = LinearLIF(layers[f"{prefix}.v_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy)
        self.core = AttentionLIF(layers[f"{prefix}.attn_lif"], n, d, config.heads,
                                 config.scale, dtype=dtype)
        self.proj = LinearLIF(layers[f"{prefix}.proj_lif"], n, dtype=dtype, input_kind="spikes",
                              policy=policy)

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
        q = self.q.run_steps(inputs)
        k = self.k.run_steps(inputs)
        v = self.v.run_steps(inputs)
        s = [self.core.attend(q[t][0], k[t][0], v[t][0]) for t in range(len(inputs))]
        return self.proj.run_steps([(x, ones(x.shape[0])) for x in s])


ATTENTION_OPERATORS = {"ssa": SpikingSelfAttention}
