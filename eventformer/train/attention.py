"""Forward/backward pairs of the SPEC §4 attention operators for the numpy trainer (no autograd).

Registry names as the engine (:mod:`eventformer.layers.attention`) and the torch model
(:mod:`eventformer.torch_model`): ``ssa`` (the core lives in :mod:`eventformer.train.layers`),
``ds2ta``, ``ssa_bin``, ``saformer``. Conventions are those of :mod:`eventformer.train.layers`
(cs231n style): ``*_forward(x, params, ...) -> (y, cache)``, ``*_backward(dy, cache) -> (dx,
grads)``; token tensors are channel-major ``[T, B, C, N]`` (heads split as ``c = d * h + j``).

* **DS2TA** — :func:`tasa_forward` attenuates a synaptic current over the window
  (``I_t = sum_{m<taw} J_{t-m} 2^(-tau m)``, BPTT through the window); :func:`nsad_forward`
  is the NSAD core: per head ``A = AD_h[Q K^T]`` with the rounded table ``AD_h[s] =
  round(f_h(s))``, ``f_h(s) = 1(s > u_h) (a s + b (s - c)^2 + d / (1 + exp(s - e)))``,
  ``Y = (A V) * scale``. Backward: straight-through for the rounding, gradients to a..e through
  f and to Q, K through df/ds of the smooth part; the step at u_h passes nothing, u_h is fixed.
* **SSA_Bin** — :func:`ssa_bin_forward`: ``B = 1(Q K^T > delta_h)``, ``Y = (B V - vbar) *
  scale``. The comparison's gradient is the sigmoid surrogate of SPEC §1 (alpha 4) centred at
  ``delta_h + 0.5``. ``vbar`` is a buffer handled like a BatchNorm mean: training mode subtracts
  the batch mean of ``B V`` (over batch, steps and tokens; the gradient flows through it) and
  updates the running ``vbar`` with momentum 0.1; eval mode subtracts the running ``vbar``.
* **SAFormer** — :func:`sasa_forward`: ``a = sum_l Qa[l] Ka[l]`` (adaptive average pooling of
  the tokens to L rows, PyTorch's rule), ``Y = scale * (K * a)``; :func:`depthwise_conv2d_forward`
  is the DWC (3x3, padding 1, no bias) whose BatchNorm the model adds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from .layers import merge_heads, sigmoid_surrogate_grad, split_heads

__all__ = [
    "NSAD_KEYS",
    "OPERATORS",
    "adaptive_pool_matrix",
    "depthwise_conv2d_backward",
    "depthwise_conv2d_forward",
    "init_nsad_params",
    "nsad_backward",
    "nsad_forward",
    "nsad_table",
    "sasa_backward",
    "sasa_forward",
    "ssa_bin_backward",
    "ssa_bin_forward",
    "tasa_backward",
    "tasa_forward",
]

Cache = dict[str, Any]

#: The attention operators the trainer knows (SPEC §4 registry names).
OPERATORS = ("ssa", "ds2ta", "ssa_bin", "saformer")

#: NSAD's trainable per-head parameters (f's a..e), as keys under ``block.{i}.attn.``.
NSAD_KEYS = ("nsad_a", "nsad_b", "nsad_c", "nsad_d", "nsad_e")

SURROGATE_ALPHA = 4.0


# --------------------------------------------------------------------------------------------------
# DS2TA: TASA
# --------------------------------------------------------------------------------------------------


def tasa_forward(c: np.ndarray, tau: int, taw: int) -> tuple[np.ndarray, Cache]:
    """TASA's attenuation over ``c [T, ...]`` (the synaptic current J, no bias or shift):
    ``out_t = c_t + c_{t-1} 2^-tau + ... + c_{t-taw+1} 2^(-tau (taw-1))`` (terms before step 0
    absent), summed in the order m = 0, 1, ... as the torch model does."""
    tau, taw = int(tau), int(taw)
    if tau < 0 or taw < 1:
        raise ValueError(f"tasa: need tau >= 0 and taw >= 1, got {tau}, {taw}")
    dt = c.dtype.type
    out = np.empty_like(c)
    for t in range(c.shape[0]):
        acc = c[t]
        for m in range(1, min(taw, t + 1)):
            acc = acc + c[t - m] * dt(np.ldexp(1.0, -tau * m))
        out[t] = acc
    return out, {"tau": tau, "taw": taw}


def tasa_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict]:
    """Gradient of :func:`tasa_forward`: ``dc_t = sum_m dy_{t+m} 2^(-tau m)`` (BPTT through the
    window)."""
    tau, taw = cache["tau"], cache["taw"]
    dt = dy.dtype.type
    T = dy.shape[0]
    dc = np.empty_like(dy)
    for t in range(T):
        acc = dy[t]
        for m in range(1, min(taw, T - t)):
            acc = acc + dy[t + m] * dt(np.ldexp(1.0, -tau * m))
        dc[t] = acc
    return dc, {}


# --------------------------------------------------------------------------------------------------
# DS2TA: NSAD
# --------------------------------------------------------------------------------------------------


def init_nsad_params(heads: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """f(s) = s above u_h at the start (a = 1, b = c = d = e = 0): the torch model's default
    table ``AD_h[s] = s * (s > u_h)``."""
    out = {k: np.zeros(heads, dtype) for k in NSAD_KEYS}
    out["nsad_a"][:] = 1
    return out


def _nsad_terms(params: dict[str, np.ndarray], u: np.ndarray, d: int, dtype):
    """Per head and count s = 0..d: the mask 1(s > u), the smooth f (masked) and the partial
    derivatives of the smooth part, all ``[H, d+1]`` in ``dtype``."""
    a, b, c, dd, e = (np.asarray(params[k], dtype).reshape(-1, 1) for k in NSAD_KEYS)
    s = np.arange(d + 1, dtype=dtype).reshape(1, -1)
    mask = (s > np.asarray(u, dtype).reshape(-1, 1)).astype(dtype)
    sig = expit(e - s)  # 1 / (1 + exp(s - e))
    f = mask * (a * s + b * (s - c) ** 2 + dd * sig)
    terms = {
        "mask": mask, "f": f,
        "ds": mask * (a + 2 * b * (s - c) - dd * sig * (1 - sig)),  # df/ds, smooth part
        "da": mask * s, "db": mask * (s - c) ** 2, "dc": mask * (-2 * b * (s - c)),
        "dd": mask * sig, "de": mask * dd * sig * (1 - sig),
    }
    return terms


def nsad_table(params: dict[str, np.ndarray], u, d: int) -> np.ndarray:
    """The stored integer table ``AD_h[s] = round(f_h(s))``, ``[H, d+1]`` int64 (computed in
    float64; ``AD_h[0] = 0`` because u_h >= 0)."""
    u = np.asarray(u, np.float64)
    if np.any(u < 0):
        raise ValueError("nsad: the thresholds u_h must be >= 0")
    p64 = {k: np.asarray(params[k], np.float64) for k in NSAD_KEYS}
    return np.rint(_nsad_terms(p64, u, d, np.float64)["f"]).astype(np.int64)


def nsad_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, params: dict[str, np.ndarray],
                 u, heads: int, scale: float) -> tuple[np.ndarray, Cache]:
    """NSAD core on channel-major spikes ``q, k, v [..., C, N]``: per head the count map
    ``S = Q K^T`` (integers 0..d), ``A[i, j] = AD_h[S[i, j]]`` with the rounded table of
    :func:`nsad_table`, ``Y = (A V) * scale``; heads merged back -> ``[..., C, N]``.
    ``params``: ``nsad_a`` .. ``nsad_e`` ``[H]``; ``u``: ``[H]`` (fixed)."""
    qh, kh, vh = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    d = qh.shape[-1]
    dt = q.dtype
    table = nsad_table(params, u, d).astype(dt)  # [H, d+1]
    counts = np.rint(np.matmul(qh, kh.swapaxes(-1, -2))).astype(np.intp)  # [..., H, N, N]
    if counts.min(initial=0) < 0 or counts.max(initial=0) > d:
        raise ValueError("nsad: q and k must be spikes (0/1)")
    hidx = np.arange(heads).reshape(-1, 1, 1)
    A = table[hidx, counts]
    y = np.matmul(A, vh) * dt.type(scale)
    cache = {"q": qh, "k": kh, "v": vh, "A": A, "counts": counts, "params": params, "u": u,
             "heads": heads, "scale": scale, "d": d}
    return merge_heads(y), cache


def nsad_backward(dy: np.ndarray, cache: Cache) -> tuple[tuple[np.ndarray, ...], dict]:
    """Gradients of :func:`nsad_forward`: ``((dq, dk, dv), {"nsad_a": [H], ..., "nsad_e": [H]})``."""
    qh, kh, vh, A, counts = cache["q"], cache["k"], cache["v"], cache["A"], cache["counts"]
    heads, d = cache["heads"], cache["d"]
    dt = dy.dtype
    dyh = split_heads(dy, heads) * dt.type(cache["scale"])
    dv = np.matmul(A.swapaxes(-1, -2), dyh)
    dA = np.matmul(dyh, vh.swapaxes(-1, -2))  # [..., H, N, N]; straight through the rounding
    terms = _nsad_terms(cache["params"], cache["u"], d, dt)
    # sum dA per (head, count value): [H, d+1]
    flat = np.moveaxis(dA, -3, 0).reshape(heads, -1)
    cflat = np.moveaxis(counts, -3, 0).reshape(heads, -1)
    per = np.zeros((heads, d + 1), dt)
    for h in range(heads):
        per[h] = np.bincount(cflat[h], weights=flat[h], minlength=d + 1)
    grads = {key: (per * terms[t]).sum(axis=1).astype(dt)
             for key, t in zip(NSAD_KEYS, ("da", "db", "dc", "dd", "de"))}
    hidx = np.arange(heads).reshape(-1, 1, 1)
    dS = dA * terms["ds"][hidx, counts]
    dq = np.matmul(dS, kh)
    dk = np.matmul(dS.swapaxes(-1, -2), qh)
    return tuple(merge_heads(g) for g in (dq, dk, dv)), grads


# --------------------------------------------------------------------------------------------------
# SSA_Bin
# --------------------------------------------------------------------------------------------------


def ssa_bin_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, delta, heads: int, scale: float,
                    vbar: np.ndarray | None, training: bool, momentum: float = 0.1
                    ) -> tuple[np.ndarray, Cache]:
    """SSA_Bin on ``q, k, v [T, B, C, N]``: per head ``B = 1(Q K^T > delta_h)``, ``BV = B V``
    (heads merged), ``Y = (BV - m) * scale`` with ``m`` the batch mean of ``BV`` per channel over
    (T, B, N) in training mode (``vbar``, a ``[C]`` buffer, then updated IN PLACE:
    ``vbar = (1 - momentum) vbar + momentum m``; None = no tracking) and ``m = vbar`` in eval
    mode."""
    qh, kh, vh = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    dt = q.dtype
    counts = np.matmul(qh, kh.swapaxes(-1, -2))
    thr = np.asarray(delta, dt).reshape(-1, 1, 1)
    Bm = (counts > thr).astype(dt)
    bv = merge_heads(np.matmul(Bm, vh))  # [T, B, C, N]
    C = bv.shape[-2]
    if training:
        m = bv.mean(axis=(0, 1, 3))
        if vbar is not None:
            vbar *= 1.0 - momentum
            vbar += (momentum * m).astype(vbar.dtype)
    else:
        if vbar is None:
            raise ValueError("ssa_bin: eval mode needs vbar")
        m = np.asarray(vbar).astype(dt, copy=False)
    y = (bv - m.reshape(C, 1)) * dt.type(scale)
    cache = {"q": qh, "k": kh, "v": vh, "B": Bm, "counts": counts, "thr": thr, "heads": heads,
             "scale": scale, "training": training}
    return y, cache


def ssa_bin_backward(dy: np.ndarray, cache: Cache) -> tuple[tuple[np.ndarray, ...], dict]:
    """Gradients of :func:`ssa_bin_forward`: ``((dq, dk, dv), {})``; the compare passes
    ``sigmoid'`` (alpha 4) at ``Q K^T - delta_h - 0.5``; in training mode ``dBV`` includes the path
    through the batch mean."""
    qh, kh, vh, Bm = cache["q"], cache["k"], cache["v"], cache["B"]
    dt = dy.dtype
    dbv = dy * dt.type(cache["scale"])
    if cache["training"]:
        dbv = dbv - dbv.mean(axis=(0, 1, 3), keepdims=True)
    dbvh = split_heads(dbv, cache["heads"])
    dv = np.matmul(Bm.swapaxes(-1, -2), dbvh)
    dB = np.matmul(dbvh, vh.swapaxes(-1, -2))
    dS = dB * sigmoid_surrogate_grad(cache["counts"] - cache["thr"], 0.5, SURROGATE_ALPHA)
    dq = np.matmul(dS, kh)
    dk = np.matmul(dS.swapaxes(-1, -2), qh)
    return tuple(merge_heads(g) for g in (dq, dk, dv)), {}


# --------------------------------------------------------------------------------------------------
# SAFormer
# --------------------------------------------------------------------------------------------------


def adaptive_pool_matrix(n: int, rows: int, dtype=np.float64) -> np.ndarray:
    """``P [n, rows]`` with ``x @ P`` = ``AdaptiveAvgPool1d(rows)(x)`` over the last axis: row l
    averages ``floor(l n / rows) .. ceil((l + 1) n / rows) - 1``."""
    if rows < 1:
        raise ValueError(f"pool rows must be >= 1, got {rows}")
    P = np.zeros((n, rows), dtype)
    for l in range(rows):
        lo, hi = (l * n) // rows, -((-(l + 1) * n) // rows)
        P[lo:hi, l] = 1.0 / (hi - lo)
    return P


def sasa_forward(q: np.ndarray, k: np.ndarray, rows: int, scale: float
                 ) -> tuple[np.ndarray, Cache]:
    """SASA on ``q, k [..., C, N]``: ``Qa = pool(q)``, ``Ka = pool(k)`` (``[..., C, L]``), gate
    ``a = sum_l Qa * Ka`` (``[..., C]``), ``Y = scale * (k * a)``."""
    P = adaptive_pool_matrix(q.shape[-1], rows, q.dtype)
    qa, ka = np.matmul(q, P), np.matmul(k, P)
    a = (qa * ka).sum(axis=-1)
    y = q.dtype.type(scale) * (k * a[..., None])
    return y, {"P": P, "qa": qa, "ka": ka, "a": a, "k": k, "scale": scale}


def sasa_backward(dy: np.ndarray, cache: Cache) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    """Gradients of :func:`sasa_forward`: ``((dq, dk), {})``."""
    P, qa, ka, a, k = cache["P"], cache["qa"], cache["ka"], cache["a"], cache["k"]
    g = dy * dy.dtype.type(cache["scale"])
    da = (g * k).sum(axis=-1)
    dk = g * a[..., None]
    dq = np.matmul(da[..., None] * ka, P.T)
    dk = dk + np.matmul(da[..., None] * qa, P.T)
    return (dq, dk), {}


def depthwise_conv2d_forward(x: np.ndarray, params: dict[str, np.ndarray], padding: int = 1
                             ) -> tuple[np.ndarray, Cache]:
    """Depthwise ``Conv2d(C, C, k, padding=p, groups=C, bias=False)``: ``x [M, C, H, W]``,
    ``params["weight"] [C, 1, KH, KW]`` (stride 1) -> ``[M, C, OH, OW]``."""
    w = params["weight"]
    M, C, H, W = x.shape
    KH, KW = w.shape[2:]
    p = int(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
    OH, OW = H + 2 * p - KH + 1, W + 2 * p - KW + 1
    y = np.zeros((M, C, OH, OW), x.dtype)
    for i in range(KH):
        for j in range(KW):
            y += xp[:, :, i:i + OH, j:j + OW] * w[:, 0, i, j].reshape(1, C, 1, 1)
    return y, {"xp": xp, "w": w, "p": p, "x_shape": x.shape}


def depthwise_conv2d_backward(dy: np.ndarray, cache: Cache
                              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of :func:`depthwise_conv2d_forward`: ``(dx, {"weight": dw})``."""
    xp, w, p = cache["xp"], cache["w"], cache["p"]
    _, C, H, W = cache["x_shape"]
    KH, KW = w.shape[2:]
    OH, OW = dy.shape[2:]
    dxp = np.zeros_like(xp, dtype=dy.dtype)
    dw = np.zeros(w.shape, dy.dtype)
    for i in range(KH):
        for j in range(KW):
            dw[:, 0, i, j] = np.einsum("mchw,mchw->c", dy, xp[:, :, i:i + OH, j:j + OW])
            dxp[:, :, i:i + OH, j:j + OW] += dy * w[:, 0, i, j].reshape(1, C, 1, 1)
    dx = dxp[:, :, p:p + H, p:p + W] if p else dxp
    return np.ascontiguousarray(dx), {"weight": dw}
