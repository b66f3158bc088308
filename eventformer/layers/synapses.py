"""Synapse -> (folded BatchNorm) -> LIF layers, each choosing per step between scatter and GEMM."""

from __future__ import annotations

import numpy as np

from ..kernels import (conv2d_scatter, counters as C, densify_padded, im2col_padded,
                       linear_event_ops, linear_scatter, maxpool_flags, scatter_dense)
from ..runtime import gemm
from .base import PathPolicy, SpikingLayer
from .neurons import LIFNeurons


def _ones(n: int) -> np.ndarray:
    return np.ones(n, np.int32)


class Conv2dLIF(SpikingLayer):
    """Conv2d (BN folded, bias = BN shift) -> LIF, optionally followed by a spike max-pool.

    Input and output are HWC event lists. ``weighted`` inputs (raw event counts into the first
    layer) are counted as multiplies, all others as accumulates (SPEC §5).
    """

    kind = "conv2d"

    def __init__(self, params, in_shape: tuple[int, int, int], *, dtype, input_kind: str,
                 pool: tuple[int, int, int] | None, policy: PathPolicy):
        w = np.asarray(params.weight, np.float64)
        cout, cin, kh, kw = w.shape
        h, wd, c = in_shape
        if c != cin:
            raise ValueError(f"{params.name}: input has {c} channels, weight expects {cin}")
        self.stride, self.pad = int(params.stride), int(params.padding)
        self.out_h = (h + 2 * self.pad - kh) // self.stride + 1
        self.out_w = (wd + 2 * self.pad - kw) // self.stride + 1
        super().__init__(params.name, self.out_h * self.out_w * cout, input_kind)
        self.in_shape, self.kh, self.kw, self.cin, self.cout = in_shape, kh, kw, cin, cout
        self.weighted = input_kind == "counts"
        self.weight_rows = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(-1, cout), dtype)
        self.weight_gemm = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, cout), dtype)
        self.bias = np.asarray(params.bias, dtype)
        self.neurons = LIFNeurons.from_params(self.n_neurons, params, dtype)
        self.current = np.empty((self.out_h * self.out_w, cout), dtype)
        self.policy = policy
        self.in_sites = h * wd * cin
        self.pool = pool
        if pool is not None:
            k, s, p = pool
            self.pool_h = (self.out_h + 2 * p - k) // s + 1
            self.pool_w = (self.out_w + 2 * p - k) // s + 1
            self._pooled = np.empty(self.pool_h * self.pool_w * cout, np.int32)
            self.out_shape = (self.pool_h, self.pool_w, cout)
        else:
            self.out_shape = (self.out_h, self.out_w, cout)
        self._cols = None
        self.dense_macs_per_step = self.out_h * self.out_w * cout * cin * kh * kw

    def reset(self) -> None:
        self.neurons.reset()

    def synapse(self, idx: np.ndarray, cnt: np.ndarray) -> np.ndarray:
        """The step's input current (flat HWC), by whichever path the policy picks."""
        cur = self.current
        counters = self.counters
        counters[C.INPUT_SITES] += self.in_sites
        geometry = (self.in_shape[1], self.cin)
        taps = (self.kh, self.kw, self.stride, self.pad, self.out_h, self.out_w)
        if self.policy.dense(self.kind, idx.shape[0], self.in_sites):
            if self._cols is None:  # allocated on first dense step only
                h, w, c = self.in_shape
                self._padded = np.empty((h + 2 * self.pad, w + 2 * self.pad, c), cur.dtype)
                self._cols = np.empty((self.out_h * self.out_w, self.kh * self.kw * c), cur.dtype)
            densify_padded(idx, cnt, *geometry, self.cout, *taps, self._padded, counters,
                           self.weighted)
            im2col_padded(self._padded, self.kh, self.kw, self.stride, self.out_h, self.out_w,
                          self._cols)
            gemm(self._cols, self.weight_gemm, cur)
            cur += self.bias
            counters[C.DENSE_MAC] += self._cols.size * self.cout
            counters[C.DENSE_STEPS] += 1
        else:
            cur[:] = self.bias
            conv2d_scatter(idx, cnt, *geometry, self.weight_rows, *taps, cur.reshape(-1),
                           counters, self.weighted)
            counters[C.SPARSE_STEPS] += 1
        return cur.reshape(-1)

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        current = self.synapse(idx, cnt)
        if self.pool is None:
            spikes = self.fire(current)
            return spikes, _ones(spikes.shape[0])
        # LIF flags straight into the max-pool: the pre-pool spike list is never needed
        if self.probe is not None:
            self.probe(self, current)
        flags, n = self.neurons.fire_flags(current, self.counters)
        self.spikes_per_step.append(int(n))
        k, s, p = self.pool
        count = maxpool_flags(flags, self.out_h, self.out_w, self.cout, k, s, p, self.pool_h,
                              self.pool_w, self._pooled)
        return self._pooled[:count].copy(), _ones(count)


class LinearLIF(SpikingLayer):
    """Token-wise linear map (Conv1d k1; BN folded) -> LIF over [tokens, channels] event lists."""

    kind = "linear"

    def __init__(self, params, tokens: int, *, dtype, input_kind: str, policy: PathPolicy):
        w = np.asarray(params.weight, np.float64)
        cout, cin = w.shape
        super().__init__(params.name, tokens * cout, input_kind)
        self.tokens, self.cin, self.cout = tokens, cin, cout
        self.weighted = input_kind == "counts"
        self.weight = np.ascontiguousarray(w.T, dtype)  # [Cin, Cout]: one event, one row
        self.bias = np.asarray(params.bias, dtype)
        self.neurons = LIFNeurons.from_params(self.n_neurons, params, dtype)
        self.current = np.empty((tokens, cout), dtype)
        self._dense_in = np.zeros((tokens, cin), dtype)
        self.policy = policy
        self.in_sites = tokens * cin
        self.out_shape = (tokens, cout)
        self.dense_macs_per_step = tokens * cin * cout

    def reset(self) -> None:
        self.neurons.reset()

    def synapse(self, idx: np.ndarray, cnt: np.ndarray) -> np.ndarray:
        cur = self.current
        counters = self.counters
        counters[C.INPUT_SITES] += self.in_sites
        if self.policy.dense(self.kind, idx.shape[0], self.in_sites):
            scatter_dense(idx, cnt, self._dense_in.reshape(-1))
            gemm(self._dense_in, self.weight, cur)
            cur += self.bias
            linear_event_ops(cnt, self.cout, counters, self.weighted)
            counters[C.DENSE_MAC] += self.in_sites * self.cout
            counters[C.DENSE_STEPS] += 1
        else:
            cur[:] = self.bias
            linear_scatter(idx, cnt, self.cin, self.weight, cur.reshape(-1), counters,
                           self.weighted)
            counters[C.SPARSE_STEPS] += 1
        return cur.reshape(-1)

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spikes = self.fire(self.synapse(idx, cnt))
        return spikes, _ones(spikes.shape[0])
