"""Forward/backward pairs of every Spikformer layer, pure numpy, hand-written gradients (no autograd).

Conventions (cs231n style):

* ``*_forward(x, params, ...) -> (y, cache)`` and ``*_backward(dy, cache) -> (dx, grads)``;
  ``params`` / ``grads`` are dicts keyed like the torch state dict (``"weight"``, ``"bias"``); layers
  without parameters take no ``params`` and return ``grads == {}``; layers with several inputs
  return ``dx`` as a tuple in argument order.
* Arithmetic stays in the dtype of the activations (float32 or float64); hyper-parameters are
  Python floats or rounded once to that dtype, so nothing is silently promoted.
* Layouts are those of ``tests/torch_reference.py``: activations are time-major ``[T, B, ...]``;
  convolutions, BatchNorms and pools run on ``[T*B, ...]`` (time folded into the batch, NCHW /
  NCL), LIFs on ``[T, B, ...]`` (loop over ``T``); token tensors are ``[M, C, N]``; heads split
  channel ``c = d * h + j``.

Speed: the GEMMs are numpy/BLAS calls (time folded into the batch, so one call per layer); the
memory-bound rest (im2col / col2im, max-pool, BatchNorm in training mode, the LIF loops over T)
runs in the Numba kernels of :mod:`eventformer.train.kernels`, each tested against the numpy
formulation it replaced. Large GEMMs and the kernels are split over the engine's threads
(:func:`eventformer.runtime.engine_threads`, ``EVENTFORMER_THREADS``) with BLAS itself on one
thread, as the engine runs (``benchmarks/train_speed.py`` measures both against torch).

The LIF's backward uses the sigmoid surrogate of SpikingJelly (``surrogate.Sigmoid(alpha=4)``):
``dS/dH = alpha * sigmoid(alpha (H - theta)) * (1 - sigmoid(alpha (H - theta)))``, with the reset
detached (``detach_reset=True``) and gradients flowing through the membrane across steps (BPTT).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from .. import runtime
from . import kernels as K

__all__ = [
    "add_backward",
    "add_forward",
    "attention_core_backward",
    "attention_core_forward",
    "batchnorm_backward",
    "batchnorm_forward",
    "conv1x1_backward",
    "conv1x1_forward",
    "conv2d_backward",
    "conv2d_forward",
    "cross_entropy",
    "init_bn_state",
    "lif_backward",
    "lif_forward",
    "linear_backward",
    "linear_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "mean_tokens_steps_backward",
    "mean_tokens_steps_forward",
    "merge_heads",
    "sigmoid_surrogate_grad",
    "split_heads",
    "ssa_attention_backward",
    "ssa_attention_forward",
]

Cache = dict[str, Any]


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


# --------------------------------------------------------------------------------------------------
# Conv2d (im2col + one GEMM)
# --------------------------------------------------------------------------------------------------


#: Below this many elements a kernel runs on the calling thread alone (a hand-off costs ~50 us).
PARALLEL_MIN_ELEMENTS = 1 << 16


def _run(kernel, n: int, work: int, *args) -> None:
    """``kernel(*args, lo, hi)`` over ``[0, n)``: split into disjoint ranges over the engine's
    threads (:func:`eventformer.runtime.engine_threads`) when ``work`` (elements touched) is
    large enough, else one call."""
    parts = min(runtime.engine_threads(), n)
    if parts <= 1 or work < PARALLEL_MIN_ELEMENTS:
        kernel(*args, 0, n)
        return
    bounds = runtime.split(n, parts)
    runtime.run_parts(lambda i: kernel(*args, bounds[i], bounds[i + 1]), parts)


#: Below this many multiply-adds a GEMM runs on the calling thread alone.
PARALLEL_GEMM_MIN_MACS = 1 << 21


def _gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (2-D), split into row or column blocks (whichever side is longer) over the
    engine's threads when large; each block is one single-threaded BLAS call. BLAS's own threads
    are pinned to one (:func:`eventformer.runtime.limit_blas_threads`, as the engine does) the
    first time a product is split: its spinning workers made the trainer 2x slower on a busy
    2-core machine. Blocks may round differently from the whole product at their edges
    (OpenBLAS's edge kernels): float rounding only."""
    rows, cols = a.shape[0], b.shape[1]
    threads = runtime.engine_threads()
    if threads == 1 or rows * a.shape[1] * cols < PARALLEL_GEMM_MIN_MACS:
        return a @ b
    runtime.limit_blas_threads()
    out = np.empty((rows, cols), dtype=np.result_type(a, b))
    if rows >= cols:
        bounds = runtime.split(rows, min(threads, rows))
        runtime.run_parts(lambda i: np.matmul(a[bounds[i]:bounds[i + 1]], b,
                                              out=out[bounds[i]:bounds[i + 1]]), len(bounds) - 1)
    else:
        bounds = runtime.split(cols, min(threads, cols))
        runtime.run_parts(lambda i: np.matmul(a, b[:, bounds[i]:bounds[i + 1]],
                                              out=out[:, bounds[i]:bounds[i + 1]]), len(bounds) - 1)
    return out


def _wmatmul(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``np.matmul(w, x)`` for ``w [O, I]`` and ``x [M, I, N]`` -> ``[M, O, N]``, split over M on
    the engine's threads when large (as :func:`_gemm`)."""
    M, _, N = x.shape
    threads = min(runtime.engine_threads(), M)
    if threads <= 1 or M * w.shape[0] * w.shape[1] * N < PARALLEL_GEMM_MIN_MACS:
        return np.matmul(w, x)
    runtime.limit_blas_threads()
    out = np.empty((M, w.shape[0], N), dtype=np.result_type(w, x))
    bounds = runtime.split(M, threads)
    runtime.run_parts(lambda i: np.matmul(w, x[bounds[i]:bounds[i + 1]],
                                          out=out[bounds[i]:bounds[i + 1]]), threads)
    return out


def _im2col(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, oh: int,
            ow: int) -> np.ndarray:
    """``x [M, C, H, W]`` (C-contiguous; zero padding ``ph, pw`` implied) -> columns
    ``[C, KH, KW, M, OH, OW]`` (C-contiguous), by :func:`eventformer.train.kernels.im2col`."""
    M, C = x.shape[:2]
    cols = np.empty((C, kh, kw, M, oh, ow), dtype=x.dtype)
    _run(K.im2col, C, cols.size, x, kh, kw, sh, sw, ph, pw, cols)
    return cols


def _float(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float array (integer inputs become float64)."""
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return np.ascontiguousarray(x)


def conv2d_forward(
    x: np.ndarray, params: dict[str, np.ndarray], stride=1, padding=0
) -> tuple[np.ndarray, Cache]:
    """``torch.nn.functional.conv2d``: ``x [M, Cin, H, W]``, ``params["weight"] [Cout, Cin, KH, KW]``,
    optional ``params["bias"] [Cout]`` (absent or None = no bias). ``stride`` / ``padding``: int or
    pair (zero padding). Returns ``y [M, Cout, OH, OW]``.

    im2col + one GEMM ``[Cout, Cin*KH*KW] @ [Cin*KH*KW, M*OH*OW]`` with
    time folded into M, so all steps of a batch share one BLAS call."""
    w = params["weight"]
    b = params.get("bias")
    x = _float(x)
    M, C, H, W = x.shape
    O, Cw, KH, KW = w.shape
    if Cw != C:
        raise ValueError(f"conv2d: input has {C} channels, weight expects {Cw}")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    if OH <= 0 or OW <= 0:
        raise ValueError("conv2d: output would be empty")
    cols = _im2col(x, KH, KW, sh, sw, ph, pw, OH, OW).reshape(C * KH * KW, M * OH * OW)
    w2 = w.reshape(O, C * KH * KW)
    out = _gemm(w2, cols)
    y = np.empty((M, O, OH, OW), dtype=out.dtype)
    np.copyto(y, out.reshape(O, M, OH, OW).transpose(1, 0, 2, 3))
    if b is not None:
        y += b.reshape(1, O, 1, 1)
    cache = {
        "cols": cols, "w": w, "has_bias": b is not None, "x_shape": x.shape, "stride": (sh, sw), "padding": (ph, pw),
        "out": (OH, OW),
    }
    return y, cache


def conv2d_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of :func:`conv2d_forward`: ``(dx, {"weight": dw[, "bias": db]})``.

    Two GEMMs (``dW = dY2 cols^T``, ``dcols = W2^T dY2``) and a Numba col2im that sums the columns'
    gradients into ``dx`` in the order of the per-offset adds (bit-identical to them)."""
    cols, w = cache["cols"], cache["w"]
    M, C, H, W = cache["x_shape"]
    sh, sw = cache["stride"]
    ph, pw = cache["padding"]
    OH, OW = cache["out"]
    O, _, KH, KW = w.shape
    dy2 = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(O, M * OH * OW)
    # (cols @ dy2.T).T, not dy2 @ cols.T: OpenBLAS is ~40x slower on the latter layout here
    grads = {"weight": np.ascontiguousarray(_gemm(cols, dy2.T).T).reshape(w.shape)}
    if cache["has_bias"]:
        grads["bias"] = dy.sum(axis=(0, 2, 3))
    dcols = _gemm(w.reshape(O, -1).T, dy2).reshape(C, KH, KW, M, OH, OW)
    dx = np.empty((M, C, H, W), dtype=dcols.dtype)
    _run(K.col2im, C, dcols.size, dcols, sh, sw, ph, pw, dx)
    if dx.dtype != dy.dtype:
        dx = dx.astype(dy.dtype)
    return dx, grads


# --------------------------------------------------------------------------------------------------
# BatchNorm (1d and 2d: channel axis 1, statistics over every other axis)
# --------------------------------------------------------------------------------------------------


def init_bn_state(channels: int, dtype=np.float32) -> dict[str, Any]:
    """Fresh running statistics, as a new ``nn.BatchNorm*d``: mean 0, var 1, 0 batches tracked."""
    return {
        "running_mean": np.zeros(channels, dtype=dtype),
        "running_var": np.ones(channels, dtype=dtype),
        "num_batches_tracked": 0,
    }


def batchnorm_forward(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    state: dict[str, Any] | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[np.ndarray, Cache]:
    """``nn.BatchNorm1d/2d`` on ``x [M, C, ...]`` (Spikformer: ``M = T*B``, time folded into batch).

    ``params``: ``"weight"`` (gamma) and ``"bias"`` (beta), ``[C]``. ``state``: ``running_mean``,
    ``running_var`` (``[C]`` arrays, updated IN PLACE in training mode) and ``num_batches_tracked``
    (an int, incremented); ``None`` in training mode = do not track. Training mode normalises with
    the batch mean and biased variance over every axis but 1 and updates
    ``running = (1 - momentum) * running + momentum * batch_stat`` with the unbiased variance, as
    torch does. Eval mode normalises with the running statistics.
    """
    gamma, beta = params["weight"], params["bias"]
    x = _float(x)
    C = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, C) + (1,) * (x.ndim - 2)
    if training:
        n = x.size // C
        if n <= 1:
            raise ValueError("batchnorm: training mode needs more than one value per channel")
        dt = x.dtype
        x3 = x.reshape(x.shape[0], C, -1)
        mean, var, invstd = (np.empty(C, dt) for _ in range(3))
        xhat, y = np.empty_like(x), np.empty_like(x)
        _run(K.bn_forward_train, C, x.size, x3, np.ascontiguousarray(gamma, dt),
             np.ascontiguousarray(beta, dt), np.array([eps], dt), mean, var, invstd,
             xhat.reshape(x3.shape), y.reshape(x3.shape))
        if state is not None:
            m = momentum
            rm, rv = state["running_mean"], state["running_var"]
            rm *= 1.0 - m
            rm += (m * mean).astype(rm.dtype)
            rv *= 1.0 - m
            rv += (m * var * (n / (n - 1.0))).astype(rv.dtype)
            state["num_batches_tracked"] = state.get("num_batches_tracked", 0) + 1
    else:
        if state is None:
            raise ValueError("batchnorm: eval mode needs the running statistics (state)")
        mean = state["running_mean"].astype(x.dtype, copy=False)
        xc = x - mean.reshape(bshape)
        invstd = 1.0 / np.sqrt(state["running_var"].astype(x.dtype, copy=False) + x.dtype.type(eps))
        xhat = xc * invstd.reshape(bshape)
        y = xhat * gamma.reshape(bshape) + beta.reshape(bshape)
    cache = {"xhat": xhat, "invstd": invstd, "gamma": gamma, "training": training, "axes": axes, "bshape": bshape}
    return y, cache


def batchnorm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of :func:`batchnorm_forward`: ``(dx, {"weight": dgamma, "bias": dbeta})``; in
    training mode ``dx`` includes the paths through the batch mean and variance."""
    xhat, invstd, gamma = cache["xhat"], cache["invstd"], cache["gamma"]
    axes, bshape = cache["axes"], cache["bshape"]
    if not cache["training"]:
        grads = {"weight": np.sum(dy * xhat, axis=axes), "bias": dy.sum(axis=axes)}
        return dy * (gamma * invstd).reshape(bshape), grads
    dt = xhat.dtype
    C = xhat.shape[1]
    dy = np.ascontiguousarray(dy, dt).reshape(xhat.shape)
    shape3 = (xhat.shape[0], C, -1)
    dgamma, dbeta = np.empty(C, dt), np.empty(C, dt)
    dx = np.empty_like(xhat)
    _run(K.bn_backward_train, C, dy.size, dy.reshape(shape3), xhat.reshape(shape3),
         np.ascontiguousarray(gamma, dt), invstd, dgamma, dbeta, dx.reshape(shape3))
    return dx, {"weight": dgamma, "bias": dbeta}


# --------------------------------------------------------------------------------------------------
# MaxPool2d
# --------------------------------------------------------------------------------------------------


def maxpool2d_forward(
    x: np.ndarray, kernel_size=3, stride=2, padding=1
) -> tuple[np.ndarray, Cache]:
    """``nn.MaxPool2d(kernel_size, stride, padding)`` (dilation 1, floor mode) on ``x [M, C, H, W]``.
    Padding is ``-inf`` (never selected). The argmax of each window is its first maximum in window
    order (row-major over the kernel), as torch's CPU kernel picks it; the gradient goes there."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError("maxpool2d: padding must be at most half the kernel size")
    M, C, H, W = x.shape
    OH = (H + 2 * ph - kh) // sh + 1
    OW = (W + 2 * pw - kw) // sw + 1
    x = _float(x)
    y = np.empty((M, C, OH, OW), dtype=x.dtype)
    arg = np.empty((M, C, OH, OW), dtype=np.int16)
    _run(K.maxpool2d_forward, M, x.size, x, kh, kw, sh, sw, ph, pw, y, arg)
    cache = {"arg": arg, "x_shape": x.shape, "k": (kh, kw), "stride": (sh, sw), "padding": (ph, pw)}
    return y, cache


def maxpool2d_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict]:
    """Gradient of :func:`maxpool2d_forward`: ``dy`` routed to each window's argmax (summed where
    windows overlap)."""
    arg = cache["arg"]
    M, C, H, W = cache["x_shape"]
    kh, kw = cache["k"]
    sh, sw = cache["stride"]
    ph, pw = cache["padding"]
    dy = _float(dy)
    dx = np.empty((M, C, H, W), dtype=dy.dtype)
    _run(K.maxpool2d_backward, M, dx.size, dy, arg, kh, kw, sh, sw, ph, pw, dx)
    return dx, {}


# --------------------------------------------------------------------------------------------------
# Linear and 1x1 conv over tokens
# --------------------------------------------------------------------------------------------------


def linear_forward(x: np.ndarray, params: dict[str, np.ndarray]) -> tuple[np.ndarray, Cache]:
    """``nn.Linear``: ``x [..., I]``, ``weight [O, I]``, optional ``bias [O]`` -> ``[..., O]``."""
    w = params["weight"]
    b = params.get("bias")
    y = x @ w.T
    if b is not None:
        y = y + b
    return y, {"x": x, "w": w, "has_bias": b is not None}


def linear_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x, w = cache["x"], cache["w"]
    dy2 = dy.reshape(-1, dy.shape[-1])
    grads = {"weight": np.ascontiguousarray((x.reshape(-1, x.shape[-1]).T @ dy2).T)}
    if cache["has_bias"]:
        grads["bias"] = dy2.sum(axis=0)
    return dy @ w, grads


def conv1x1_forward(x: np.ndarray, params: dict[str, np.ndarray]) -> tuple[np.ndarray, Cache]:
    """``nn.Conv1d(I, O, 1)`` over tokens: ``x [M, I, N]``, ``weight [O, I, 1]`` (or ``[O, I]``),
    optional ``bias [O]`` -> ``[M, O, N]``."""
    w = params["weight"]
    b = params.get("bias")
    w2 = w.reshape(w.shape[0], w.shape[1])
    y = _wmatmul(w2, x)
    if b is not None:
        y = y + b.reshape(-1, 1)
    return y, {"x": x, "w": w, "has_bias": b is not None}


def conv1x1_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x, w = cache["x"], cache["w"]
    w2 = w.reshape(w.shape[0], w.shape[1])
    grads = {"weight": np.tensordot(dy, x, axes=([0, 2], [0, 2])).reshape(w.shape)}
    if cache["has_bias"]:
        grads["bias"] = dy.sum(axis=(0, 2))
    return _wmatmul(w2.T, dy), grads


# --------------------------------------------------------------------------------------------------
# LIF (multi-step, SPEC §1) with the sigmoid surrogate
# --------------------------------------------------------------------------------------------------


def sigmoid_surrogate_grad(h: np.ndarray, theta: float, alpha: float = 4.0) -> np.ndarray:
    """``alpha * sigmoid(alpha (h - theta)) * (1 - sigmoid(alpha (h - theta)))`` in ``h``'s dtype."""
    dt = h.dtype.type
    sg = expit(dt(alpha) * (h - dt(theta)))
    return dt(alpha) * sg * (dt(1) - sg)


def lif_forward(
    x: np.ndarray,
    tau: float = 2.0,
    theta: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    alpha: float = 4.0,
) -> tuple[np.ndarray, Cache]:
    """Multi-step LIF over ``x [T, ...]`` (SpikingJelly ``MultiStepLIFNode``, V0 = 0), spikes 0/1 in
    ``x``'s dtype. Per step, in exactly the engine's order of float operations (SPEC §1)::

        H = V + (X - (V - v_reset)) * (1/tau)        # decay_input; (1/tau) rounded to the dtype
        H = V - (V - v_reset) * (1/tau) + X          # not decay_input (soft reset: V * (1-1/tau) + X)
        S = H >= theta
        V = v_reset if S else H                      # hard reset; soft (v_reset None): V = H - S*theta

    With v_reset 0 the first line is ``V + (X - V) * (1/tau)``. ``alpha`` is the surrogate's slope
    used by :func:`lif_backward`; the cache keeps the spikes ``"S"`` and, instead of H, the
    surrogate's argument ``"Z" = -(alpha * (H - theta))`` (one Numba pass writes both)."""
    x = _float(x)
    hard = v_reset is not None
    if decay_input:
        mode = K.LIF_DECAY_HARD if (hard and v_reset != 0) else K.LIF_DECAY_ZERO
    else:
        mode = K.LIF_NODECAY_HARD if hard else K.LIF_NODECAY_SOFT
    p = _lif_params(x.dtype, tau, theta, v_reset, alpha)
    x2 = x.reshape(x.shape[0], -1)
    Z = np.empty_like(x)  # -(alpha * (H - theta)): the surrogate's exp argument, not H itself
    S = np.empty_like(x)
    _run(K.lif_forward, x2.shape[1], x2.size, x2, p, mode, Z.reshape(x2.shape), S.reshape(x2.shape))
    cache = {"Z": Z, "S": S, "tau": tau, "theta": theta, "hard": hard, "decay_input": decay_input, "alpha": alpha}
    return S, cache


def _lif_params(dtype, tau, theta, v_reset, alpha) -> np.ndarray:
    """The LIF kernels' scalars, each rounded once to ``dtype`` (v_reset None: NaN = soft reset)."""
    p = np.empty(5, dtype)
    p[K.P_INV_TAU] = 1.0 / tau
    p[K.P_KEEP] = 1.0 - 1.0 / tau
    p[K.P_THETA] = theta
    p[K.P_V_RESET] = np.nan if v_reset is None else v_reset
    p[K.P_ALPHA] = alpha
    return p


def lif_backward(ds: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict]:
    """BPTT through :func:`lif_forward` with the sigmoid surrogate for dS/dH and the reset detached
    (``detach_reset=True``): ``dV_t/dH_t = 1 - S_t`` (hard) or 1 (soft), no gradient through S in
    the reset. ``dH_t/dX_t = 1/tau`` (decay_input) or 1; ``dH_t/dV_{t-1} = 1 - 1/tau``. numpy's
    vectorised ``exp`` of the cached ``Z = -(alpha (H - theta))`` then one Numba pass
    (:func:`eventformer.train.kernels.lif_backward`) forms the surrogate and runs the BPTT."""
    Z, S = cache["Z"], cache["S"]
    T = Z.shape[0]
    p = _lif_params(Z.dtype, cache["tau"], cache["theta"], 0.0, cache["alpha"])
    ds2 = np.ascontiguousarray(ds, Z.dtype).reshape(T, -1)
    e = np.exp(Z)  # exp(-(alpha * (H - theta))), vectorised
    dx = np.empty_like(Z)
    _run(K.lif_backward, ds2.shape[1], ds2.size, ds2, e.reshape(T, -1), S.reshape(T, -1), p,
         bool(cache["hard"]), bool(cache["decay_input"]), dx.reshape(T, -1))
    return dx, {}


# --------------------------------------------------------------------------------------------------
# Spiking self-attention
# --------------------------------------------------------------------------------------------------


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """``[..., C, N]`` -> ``[..., heads, N, d]`` with channel ``c = d * h + j`` (a view when possible).
    Its gradient is :func:`merge_heads` (a permutation)."""
    C, N = x.shape[-2:]
    if C % heads:
        raise ValueError(f"{C} channels are not divisible by {heads} heads")
    return x.reshape(*x.shape[:-2], heads, C // heads, N).swapaxes(-1, -2)


def merge_heads(y: np.ndarray) -> np.ndarray:
    """``[..., heads, N, d]`` -> ``[..., C, N]`` (``c = d * h + j``), contiguous; inverse of
    :func:`split_heads`."""
    h, N, d = y.shape[-3:]
    return np.ascontiguousarray(y.swapaxes(-1, -2)).reshape(*y.shape[:-3], h * d, N)


def attention_core_forward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float
) -> tuple[np.ndarray, Cache]:
    """Per head ``Y = ((Q K^T) * scale) V`` on ``[..., N, d]`` operands (the reference's order)."""
    attn = np.matmul(q, k.swapaxes(-1, -2)) * q.dtype.type(scale)
    y = np.matmul(attn, v)
    return y, {"q": q, "k": k, "v": v, "attn": attn, "scale": scale}


def attention_core_backward(dy: np.ndarray, cache: Cache) -> tuple[tuple[np.ndarray, ...], dict]:
    """Gradients of :func:`attention_core_forward`: ``((dq, dk, dv), {})``."""
    q, k, v, attn = cache["q"], cache["k"], cache["v"], cache["attn"]
    dv = np.matmul(attn.swapaxes(-1, -2), dy)
    dattn = np.matmul(dy, v.swapaxes(-1, -2)) * dy.dtype.type(cache["scale"])
    dq = np.matmul(dattn, k)
    dk = np.matmul(dattn.swapaxes(-1, -2), q)
    return (dq, dk, dv), {}


def ssa_attention_forward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, scale: float
) -> tuple[np.ndarray, Cache]:
    """The SSA core on channel-major operands: ``q, k, v [..., C, N]`` -> split heads, per head
    ``((Q K^T) * scale) V``, heads merged back -> ``[..., C, N]`` (the attn LIF's input)."""
    y, cache = attention_core_forward(
        split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), scale
    )
    return merge_heads(y), {"core": cache, "heads": heads}


def ssa_attention_backward(dy: np.ndarray, cache: Cache) -> tuple[tuple[np.ndarray, ...], dict]:
    """Gradients of :func:`ssa_attention_forward`: ``((dq, dk, dv), {})``, each ``[..., C, N]``."""
    d = attention_core_backward(split_heads(dy, cache["heads"]), cache["core"])[0]
    return tuple(merge_heads(g) for g in d), {}


# --------------------------------------------------------------------------------------------------
# Residual add, readout, loss
# --------------------------------------------------------------------------------------------------


def add_forward(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Residual add ``a + b`` (same shapes)."""
    if a.shape != b.shape:
        raise ValueError(f"residual add: shapes {a.shape} and {b.shape} differ")
    return a + b, {}


def add_backward(dy: np.ndarray, cache: Cache) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    return (dy, dy.copy()), {}


def mean_tokens_steps_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    """``x [T, B, D, N]`` -> ``x.mean(3).mean(0)`` ``[B, D]`` (the head's readout)."""
    return x.mean(axis=3).mean(axis=0), {"shape": x.shape}


def mean_tokens_steps_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict]:
    T, B, D, N = cache["shape"]
    g = (dy / dy.dtype.type(T)) / dy.dtype.type(N)
    return np.ascontiguousarray(np.broadcast_to(g[None, :, :, None], (T, B, D, N))), {}


def cross_entropy(
    logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0
) -> tuple[float, np.ndarray]:
    """``F.cross_entropy(logits, labels, label_smoothing=eps)`` (mean over the batch) and its
    gradient: target ``(1 - eps) * onehot + eps / K``; returns ``(loss, dlogits)``."""
    B, K = logits.shape
    labels = np.asarray(labels, dtype=np.intp)
    if labels.shape != (B,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= K:
        raise ValueError("cross_entropy: labels must be [B] integers in [0, K)")
    dt = logits.dtype.type
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp = z - lse
    eps = float(label_smoothing)
    target = np.full((B, K), dt(eps / K), dtype=logits.dtype)
    target[np.arange(B), labels] += dt(1.0 - eps)
    loss = float(-(target * logp).sum() / B)
    dlogits = (np.exp(logp) - target) / dt(B)
    return loss, dlogits
