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
"""

from __future__ import annotations

import numpy as np

from ..kernels import counters as C
from ..kernels.spikedriven import head_counts, mask_heads
from .attention import ATTENTION_OPERATORS, AttentionCore, _core_arithmetic, side_by_side
from .base import EMPTY, PathPolicy, SpikingLayer, ones, period
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


class TokenQKAttention:
    """QKFormer's token QK attention: q/k linear+LIF, the token QK core + LIF masking K, proj
    linear+LIF. Parameters: none beyond the layers (``params`` is empty)."""

    name = "token_qk"

    def __init__(self, prefix: str, layers: dict, config, *, dtype, policy: PathPolicy,
                 params: dict | None = None, multiplicity: int = 1):
        n = config.tokens
        self.q = LinearLIF(layers[f"{prefix}.q_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy, multiplicity=multiplicity)
        self.k = LinearLIF(layers[f"{prefix}.k_lif"], n, dtype=dtype, input_kind="integers",
                           policy=policy, multiplicity=multiplicity)
        self.core = TokenQKAttentionLIF(layers[f"{prefix}.attn_lif"], n, config.dim,
                                        config.heads, dtype=dtype)
        self.proj = LinearLIF(layers[f"{prefix}.proj_lif"], n, dtype=dtype, input_kind="spikes",
                              policy=policy)

    @property
    def layers(self) -> list[SpikingLayer]:
        return [self.q, self.k, self.core, self.proj]

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

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


# The engine's registry is the one in layers.attention; the successors' operators join it here
# (importing this module from the package registers them), so layers.attention need not import
# its own subclasses' module.
ATTENTION_OPERATORS["token_qk"] = TokenQKAttention
