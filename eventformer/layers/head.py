"""Classifier head: mean over tokens, mean over steps, linear (SPEC §2)."""

from __future__ import annotations

import numpy as np

from ..kernels import channel_sums, counters as C


class MeanLinearHead:
    """Keeps exact integer channel sums over tokens and steps; divides once, then one GEMV.

    The residual stream holds small integers, so the sums are exact and the means are exact in
    float32 too (N and T powers of two in the reference models), which keeps the logits as close
    to PyTorch's as one dot product's rounding.
    """

    name = "head"
    kind = "head"

    def __init__(self, params, tokens: int, dtype):
        self.weight = np.asarray(params.weight, dtype)  # [classes, D]
        self.bias = np.asarray(params.bias, dtype)
        self.tokens = tokens
        self.dtype = np.dtype(dtype)
        self.sums = np.zeros(self.weight.shape[1], np.int64)
        self.steps = 0
        self.counters = np.zeros(C.N_COUNTERS, np.int64)

    def reset(self) -> None:
        self.sums[:] = 0
        self.steps = 0

    def clear_stats(self) -> None:
        self.counters[:] = 0

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> None:
        if idx.shape[0]:  # an empty step adds nothing (and counts nothing) but a step
            channel_sums(idx, cnt, self.sums.shape[0], self.sums)
            self.counters[C.AC] += int(cnt.sum())
        self.steps += 1

    def logits(self) -> np.ndarray:
        t = self.dtype.type
        steps = max(self.steps, 1)
        features = (self.sums.astype(self.dtype) / t(self.tokens)) / t(steps)
        self.counters[C.MAC] += self.weight.size
        return self.weight @ features + self.bias

    def stats(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "input": "integers", "neurons": 0,
               "spikes": 0}
        out.update({name: int(self.counters[i]) for i, name in enumerate(C.NAMES)})
        out["input_density"] = 0.0
        out["dense_macs_per_step"] = 0
        return out
