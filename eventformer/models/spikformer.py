"""Spikformer assembled from event-driven layers; time-major ``step`` with persistent state.

One step of input (an event list over the HWC sensor grid, counts as multiplicities) passes
through every layer before the next step enters, so the offline path (a sample framed into T
steps) and the streaming path (windows from a growing file) drive the same :meth:`step`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import EventformerError
from ..fixedpoint import Fixed, arithmetic, residual_bound
from ..layers import (
    ATTENTION_OPERATORS,
    Conv2dLIF,
    LinearLIF,
    MeanLinearHead,
    PathPolicy,
    add_events,
)
from ..runtime import limit_blas_threads
from .config import sps_suffix

if TYPE_CHECKING:  # the model file package imports the config from here
    from ..modelfile import ModelFile

SPS_POOL = (3, 2, 1)  # MaxPool2d(kernel_size=3, stride=2, padding=1) after an SPS stage's LIF
DTYPES = {"float32": np.float32, "float64": np.float64}
#: What ``dtype`` may name: the float engines and the fixed-point ones (SPEC §6).
ARITHMETICS = ("float32", "float64", "int16", "int8")


class Block:
    def __init__(self, index: int, model: ModelFile, *, dtype, policy: PathPolicy):
        cfg = model.config
        layers = model.layers
        attention = ATTENTION_OPERATORS[cfg.attention]
        params = model.attention[index].params if model.attention else {}
        self.attn = attention(f"block.{index}.attn", layers, cfg, dtype=dtype, policy=policy,
                              params=params, multiplicity=residual_bound(index, False))
        m = f"block.{index}.mlp"
        self.fc1 = LinearLIF(layers[f"{m}.fc1_lif"], cfg.tokens, dtype=dtype,
                             input_kind="integers", policy=policy,
                             multiplicity=residual_bound(index, True))
        self.fc2 = LinearLIF(layers[f"{m}.fc2_lif"], cfg.tokens, dtype=dtype,
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
        xs = _residual(xs, self.attn.run_steps(xs))
        return _residual(xs, self.fc2.run_steps(self.fc1.run_steps(xs)))


def warm_up_densities(policy: PathPolicy) -> tuple[float, ...]:
    """Input densities of the warm-up steps that reach every path ``policy`` can take: one
    sparse step (scatter, gather) unless every step runs dense, one dense step (GEMM) unless
    none does."""
    return {"sparse": (0.02,), "gather": (0.02,), "dense": (0.9,)}.get(policy.mode, (0.02, 0.9))


def _residual(xs: list, ys: list) -> list:
    """x + y for every step of two event-list sequences."""
    return [add_events(x[0], x[1], y[0], y[1]) for x, y in zip(xs, ys)]


class Spikformer:
    """The event-driven engine for one model file.

    >>> model = Spikformer(load("model.h5"))
    >>> logits = model.run(steps)          # steps: [(idx, cnt), ...] from framing
    """

    def __init__(self, model: ModelFile, *, dtype="float32", policy: PathPolicy | None = None):
        cfg = model.config
        cfg.validate()
        if cfg.attention not in ATTENTION_OPERATORS:
            raise EventformerError(
                f"this engine runs the attention operators {', '.join(ATTENTION_OPERATORS)}; "
                f"{cfg.attention!r} is not implemented yet")
        limit_blas_threads()
        self.model_file = model
        self.config = cfg
        # float32 / float64, or a Fixed (int16, int8): every layer quantises at load
        self.dtype = arithmetic(DTYPES.get(dtype, dtype))
        self.fixed = self.dtype if isinstance(self.dtype, Fixed) else None
        self.arithmetic = self.fixed.name if self.fixed else self.dtype.name  # "int8", "float32"..
        self.policy = policy or PathPolicy()
        shape = (cfg.image_size, cfg.image_size, cfg.in_channels)
        self.sps = []
        for i, pooled in enumerate(cfg.sps_pool):
            layer = Conv2dLIF(model.layers[f"patch_embed.proj_lif{sps_suffix(i)}"], shape,
                              dtype=self.dtype, input_kind="counts" if i == 0 else "spikes",
                              pool=SPS_POOL if pooled else None, policy=self.policy)
            self.sps.append(layer)
            shape = layer.out_shape
        if shape[0] * shape[1] != cfg.tokens:
            raise ValueError(f"SPS output {shape[0]}x{shape[1]} does not match {cfg.tokens} tokens")
        self.rpe = Conv2dLIF(model.layers["patch_embed.rpe_lif"], shape, dtype=self.dtype,
                             input_kind="spikes", pool=None, policy=self.policy)
        self.blocks = [Block(b, model, dtype=self.dtype, policy=self.policy)
                       for b in range(cfg.depth)]
        # the head sums integers exactly; only the logits are float (float64 in integer modes)
        self.head = MeanLinearHead(model.layers["head"], cfg.tokens,
                                   np.float64 if self.fixed else self.dtype)
        self.input_sites = cfg.image_size * cfg.image_size * cfg.in_channels

    @property
    def layers(self):
        """Spiking layers in forward order (the report's rows), without the head."""
        out = list(self.sps) + [self.rpe]
        for block in self.blocks:
            out += block.layers
        return out

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

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> None:
        """Advance every layer by one time step on one frame of input events."""
        idx = np.asarray(idx, np.int32)
        cnt = np.asarray(cnt, np.int32)
        for layer in self.sps:
            idx, cnt = layer.step(idx, cnt)
        r_idx, r_cnt = self.rpe.step(idx, cnt)
        idx, cnt = add_events(idx, cnt, r_idx, r_cnt)  # x = x_feat + rpe: values 0..2
        for block in self.blocks:
            idx, cnt = block.step(idx, cnt)
        self.head.step(idx, cnt)

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
            self.step(idx, np.ones(n, np.int32))
        self.logits()
        if self.policy.mode in ("auto", "gather"):
            for layer in self.sps + [self.rpe]:
                layer.warm_up()
        self.reset()
        self.clear_stats()

    def logits(self) -> np.ndarray:
        """Logits from the steps seen since the last reset (mean over those steps)."""
        return self.head.logits()

    def run(self, steps) -> np.ndarray:
        """Classify one sample given as a sequence of (idx, cnt) input steps.

        With the whole sample at hand, layers run one after another over all steps (layer-major)
        so that small dense layers batch their steps into one GEMM. Every layer still sees its
        inputs in time order, so the result is that of calling :meth:`step` per step.
        """
        self.reset()
        xs = [(np.asarray(i, np.int32), np.asarray(c, np.int32)) for i, c in steps]
        for layer in self.sps:
            xs = layer.run_steps(xs)
        xs = _residual(xs, self.rpe.run_steps(xs))  # x = x_feat + rpe: values 0..2
        for block in self.blocks:
            xs = block.run_steps(xs)
        for idx, cnt in xs:
            self.head.step(idx, cnt)
        return self.logits()

    def layer_stats(self) -> list[dict]:
        return [layer.stats() for layer in self.layers] + [self.head.stats()]
