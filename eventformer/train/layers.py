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

The LIF's backward uses the sigmoid surrogate of SpikingJelly (``surrogate.Sigmoid(alpha=4)``):
``dS/dH = alpha * sigmoid(alpha (H - theta)) * (1 - sigmoid(alpha (H - theta)))``, with the reset
detached (``detach_reset=True``) and gradients flowing through the membrane across steps (BPTT).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

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


def _im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """Padded ``xp [M, C, Hp, Wp]`` -> columns ``[C, KH, KW, M, OH, OW]`` (C-contiguous)."""
    M, C = xp.shape[:2]
    cols = np.empty((C, kh, kw, M, oh, ow), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            cols[:, i, j] = patch.transpose(1, 0, 2, 3)
    return cols


def conv2d_forward(
    x: np.ndarray, params: dict[str, np.ndarray], stride=1, padding=0
) -> tuple[np.ndarray, Cache]:
    """``torch.nn.functional.conv2d``: ``x [M, Cin, H, W]``, ``params["weight"] [Cout, Cin, KH, KW]``,
    optional ``params["bias"] [Cout]`` (absent or None = no bias). ``stride`` / ``padding``: int or
    pair (zero padding). Returns ``y [M, Cout, OH, OW]``."""
    w = params["weight"]
    b = params.get("bias")
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
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
    cols = _im2col(xp, KH, KW, sh, sw, OH, OW).reshape(C * KH * KW, M * OH * OW)
    w2 = w.reshape(O, C * KH * KW)
    y = (w2 @ cols).reshape(O, M, OH, OW).transpose(1, 0, 2, 3)
    if b is not None:
        y = y + b.reshape(1, O, 1, 1)
    y = np.ascontiguousarray(y)
    cache = {
        "cols": cols, "w": w, "has_bias": b is not None, "x_shape": x.shape, "stride": (sh, sw), "padding": (ph, pw),
        "out": (OH, OW),
    }
    return y, cache


def conv2d_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of :func:`conv2d_forward`: ``(dx, {"weight": dw[, "bias": db]})``."""
    cols, w = cache["cols"], cache["w"]
    M, C, H, W = cache["x_shape"]
    sh, sw = cache["stride"]
    ph, pw = cache["padding"]
    OH, OW = cache["out"]
    O, _, KH, KW = w.shape
    dy2 = dy.transpose(1, 0, 2, 3).reshape(O, M * OH * OW)
    # (cols @ dy2.T).T, not dy2 @ cols.T: OpenBLAS is ~40x slower on the latter layout here
    grads = {"weight": np.ascontiguousarray((cols @ dy2.T).T).reshape(w.shape)}
    if cache["has_bias"]:
        grads["bias"] = dy.sum(axis=(0, 2, 3))
    dcols = (w.reshape(O, -1).T @ dy2).reshape(C, KH, KW, M, OH, OW)
    dxp = np.zeros((M, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for i in range(KH):
        for j in range(KW):
            dxp[:, :, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw] += dcols[
                :, i, j
            ].transpose(1, 0, 2, 3)
    dx = dxp[:, :, ph : ph + H, pw : pw + W] if (ph or pw) else dxp
    return np.ascontiguousarray(dx), grads


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
    C = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, C) + (1,) * (x.ndim - 2)
    if training:
        n = x.size // C
        if n <= 1:
            raise ValueError("batchnorm: training mode needs more than one value per channel")
        mean = x.mean(axis=axes)
        xc = x - mean.reshape(bshape)
        var = np.mean(xc * xc, axis=axes)
        invstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
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
    grads = {"weight": np.sum(dy * xhat, axis=axes), "bias": dy.sum(axis=axes)}
    g = (gamma * invstd).reshape(bshape)
    if not cache["training"]:
        return dy * g, grads
    n = dy.size // dy.shape[1]
    dxhat_mean = (grads["bias"] / n).reshape(bshape)
    dxhat_xhat_mean = (grads["weight"] / n).reshape(bshape)
    dx = g * (dy - dxhat_mean - xhat * dxhat_xhat_mean)
    return dx, grads


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
    if ph or pw:
        xp = np.full((M, C, H + 2 * ph, W + 2 * pw), -np.inf, dtype=x.dtype)
        xp[:, :, ph : ph + H, pw : pw + W] = x
    else:
        xp = x
    y = None
    arg = np.zeros((M, C, OH, OW), dtype=np.int16)
    for i in range(kh):
        for j in range(kw):
            cand = xp[:, :, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw]
            if y is None:
                y = cand.copy()
                continue
            better = cand > y  # strict: ties keep the earlier position
            np.copyto(y, cand, where=better)
            arg[better] = i * kw + j
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
    OH, OW = arg.shape[2:]
    dxp = np.zeros((M, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    zero = dy.dtype.type(0)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw] += np.where(
                arg == i * kw + j, dy, zero
            )
    dx = dxp[:, :, ph : ph + H, pw : pw + W] if (ph or pw) else dxp
    return np.ascontiguousarray(dx), {}


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
    y = np.matmul(w2, x)
    if b is not None:
        y = y + b.reshape(-1, 1)
    return y, {"x": x, "w": w, "has_bias": b is not None}


def conv1x1_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x, w = cache["x"], cache["w"]
    w2 = w.reshape(w.shape[0], w.shape[1])
    grads = {"weight": np.tensordot(dy, x, axes=([0, 2], [0, 2])).reshape(w.shape)}
    if cache["has_bias"]:
        grads["bias"] = dy.sum(axis=(0, 2))
    return np.matmul(w2.T, dy), grads


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
    used by :func:`lif_backward`."""
    dt = x.dtype.type
    inv_tau = dt(1.0 / tau)
    keep = dt(1.0 - 1.0 / tau)
    th = dt(theta)
    hard = v_reset is not None
    vr = dt(v_reset) if hard else dt(0)
    v = np.zeros_like(x[0])
    H = np.empty_like(x)
    S = np.empty_like(x)
    for t in range(x.shape[0]):
        if decay_input:
            h = v + (x[t] - (v - vr)) * inv_tau if (hard and vr != 0) else v + (x[t] - v) * inv_tau
        elif hard:
            h = v - (v - vr) * inv_tau + x[t]
        else:
            h = v * keep + x[t]
        s = h >= th
        H[t] = h
        S[t] = s
        if hard:
            v = np.where(s, vr, h)
        else:
            v = h - S[t] * th
    cache = {"H": H, "S": S, "tau": tau, "theta": theta, "hard": hard, "decay_input": decay_input, "alpha": alpha}
    return S, cache


def lif_backward(ds: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict]:
    """BPTT through :func:`lif_forward` with the sigmoid surrogate for dS/dH and the reset detached
    (``detach_reset=True``): ``dV_t/dH_t = 1 - S_t`` (hard) or 1 (soft), no gradient through S in
    the reset. ``dH_t/dX_t = 1/tau`` (decay_input) or 1; ``dH_t/dV_{t-1} = 1 - 1/tau``."""
    H, S = cache["H"], cache["S"]
    dt = H.dtype.type
    inv_tau = dt(1.0 / cache["tau"])
    keep = dt(1.0 - 1.0 / cache["tau"])
    sg = sigmoid_surrogate_grad(H, cache["theta"], cache["alpha"])
    dx = np.empty_like(H)
    dv = np.zeros_like(H[0])  # dL/dV_t coming from step t+1
    one = dt(1)
    for t in range(H.shape[0] - 1, -1, -1):
        dh = ds[t] * sg[t] + (dv * (one - S[t]) if cache["hard"] else dv)
        if cache["decay_input"]:
            dx[t] = dh * inv_tau
            dv = dh - dh * inv_tau
        else:
            dx[t] = dh
            dv = dh - dh * inv_tau if cache["hard"] else dh * keep
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
