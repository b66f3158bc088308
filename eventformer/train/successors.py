"""Forward/backward pairs of the Spike-driven Transformer (v1) and QKFormer operators for the numpy
trainer (no autograd), as :mod:`eventformer.torch_successors` computes them (issue 23).

Conventions are those of :mod:`eventformer.train.layers` (cs231n style): ``*_forward(x, ...) ->
(y, cache)``, ``*_backward(dy, cache) -> (dx, grads)``; activations are time-major
``[T, B, ...]``, token tensors channel-major ``[T, B, C, N]`` (token ``n = W * row + col`` of an
``H x W`` grid), heads split as channel ``c = d * h + j``; every LIF is
:func:`~eventformer.train.layers.lif_forward` / ``lif_backward`` (SPEC §1, sigmoid surrogate
alpha 4, reset detached, BPTT). The composite pieces
(:func:`conv_bn_lif_forward`, :func:`sdt_block_forward`, :func:`sdt_head_forward`) take the flat
parameter dict keyed like the official checkpoint and a key prefix, and return gradients under the
same full keys; BatchNorm running statistics live in ``state`` (``<bn>.running_mean`` ...), updated
in place in training mode as :mod:`eventformer.train.model` does.

* **Erode** (SDT, DVS mode) — ``MaxPool3d((1, 3, 3), stride 1, padding (0, 1, 1))``: a 3x3 max
  over the last two axes of whatever tensor the code has there (:func:`erode_forward`). Its backward
  routes each window's gradient to the window's first maximum in row-major order — torch's CPU
  rule for ``max_pool3d`` as for ``max_pool2d`` (``tests/test_train_successors.py`` checks the
  routing bit for bit with integer gradients). On spikes ties are the rule, not the exception (a
  window of K spikes holds many 1s, or only 0s), so the rule decides which spike's surrogate
  gets the gradient: it has to be torch's.
* **SDSA** (:func:`sdsa_forward`) — the released ``MS_SSA_Conv`` core on spikes q, k, v: Erode K
  and V over the grid (dvs), ``KV = K * V`` per head ``[T, B, heads, N, d]``, Erode KV over
  (token, channel in head) (dvs), column sum over the tokens, ``talking_heads_lif`` (theta 0.5)
  -> kv spikes ``[T, B, heads, 1, d]``, ``Y = Q * kv``, Erode Y (dvs). Products differentiate by
  the product rule, the column sum broadcasts back.
* **Membrane shortcut block** (:func:`sdt_block_forward`) — the real-valued residual stream:
  ``x = x + proj_bn(proj_conv(SDSA(q, k, v of shortcut_lif(x))))``, then the MLP
  ``h = fc1_bn(fc1_conv(fc1_lif(x)))`` (``h = x + h`` and identity ``h`` when hidden == dim, the
  official ``res``), ``x = fc2_bn(fc2_conv(fc2_lif(h))) + identity``. :func:`sdt_head_forward`:
  ``mean over T of head(head_lif(mean over tokens of x))``.
* **Token QK attention** (QKFormer, :func:`token_qk_forward`) — per token and head the q spikes
  summed over the head's d channels, ``attn_lif`` (theta 0.5) -> ``a [T, B, heads, 1, N]``,
  ``Y = a * K`` (a masks the key spikes; no V).
* **Conv stages** (:func:`conv_bn_lif_forward`) — conv (Conv2d with stride/padding, or a 1x1 conv
  over tokens) -> BatchNorm -> optional LIF, with the ``MaxPool2d(3, 2, 1)`` either on the BN
  output before the LIF (QKFormer's patch embeddings, SDT's last SPS stage) or on the spikes
  (Spikformer, SDT's first stages). QKFormer's strided 1x1 ``proj_res`` convs are the same piece
  with a 1x1 kernel and stride 4 or 2 (:func:`~eventformer.train.layers.conv2d_forward` takes any
  kernel and stride).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import layers as L
from .layers import merge_heads, split_heads

__all__ = [
    "ATTN_THETA",
    "BN_EPS",
    "BN_MOMENTUM",
    "POOL",
    "SURROGATE_ALPHA",
    "conv_bn_lif_backward",
    "conv_bn_lif_forward",
    "erode_backward",
    "erode_forward",
    "sdsa_backward",
    "sdsa_forward",
    "sdt_block_backward",
    "sdt_block_forward",
    "sdt_head_backward",
    "sdt_head_forward",
    "token_qk_backward",
    "token_qk_forward",
]

Cache = dict[str, Any]

SURROGATE_ALPHA = 4.0
#: threshold of SDT's ``talking_heads_lif`` and QKFormer's attention LIFs
ATTN_THETA = 0.5
BN_MOMENTUM = 0.1
BN_EPS = 1e-5
#: ``nn.MaxPool2d(kernel 3, stride 2, padding 1)``: every patch-embedding pool of both models
POOL = (3, 2, 1)


def _attn_lif(lif: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments of an attention LIF: theta 0.5 and alpha 4 unless ``lif`` says else."""
    return {"theta": ATTN_THETA, "alpha": SURROGATE_ALPHA, **(lif or {})}


# --------------------------------------------------------------------------------------------------
# Erode
# --------------------------------------------------------------------------------------------------


def erode_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    """SDT's Erode on ``x [..., P, Q]``: the 3x3 max over the last two axes (stride 1, ``-inf``
    padding 1), separately for every leading index -> same shape. Which axes those are is the
    caller's layout: ``[T, B, C, H, W]`` pools the grid, ``[T, B, heads, N, d]`` pools (token,
    channel in head)."""
    shape = x.shape
    P, Q = shape[-2:]
    y, cache = L.maxpool2d_forward(x.reshape(-1, 1, P, Q), 3, 1, 1)
    return y.reshape(shape), {"pool": cache, "shape": shape}


def erode_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict]:
    """Gradient of :func:`erode_forward`: each window's ``dy`` to its first maximum (row-major),
    summed where windows overlap."""
    shape = cache["shape"]
    dx, _ = L.maxpool2d_backward(np.reshape(dy, (-1, 1) + shape[-2:]), cache["pool"])
    return dx.reshape(shape), {}


def _erode_grid(x: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, Cache]:
    """Erode of tokens ``[T, B, C, N]`` over their ``H x W`` grid (K and V in SDSA)."""
    T, B, C, N = x.shape
    y, cache = erode_forward(x.reshape(T, B, C, *grid))
    return y.reshape(T, B, C, N), cache


# --------------------------------------------------------------------------------------------------
# SDT: spike-driven self-attention (SDSA) core
# --------------------------------------------------------------------------------------------------


def sdsa_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int,
                 grid: tuple[int, int], dvs: bool = False, lif: dict[str, Any] | None = None
                 ) -> tuple[np.ndarray, Cache]:
    """The released SDSA core on spikes ``q, k, v [T, B, C, N]`` (``N = H * W`` for ``grid = (H,
    W)``) -> ``Y [T, B, C, N]`` (spikes, the input of ``proj_conv``).

    ``dvs``: Erode K and V over the grid, KV and Y over (token, channel in head). ``lif``:
    keyword arguments of ``talking_heads_lif`` for :func:`~eventformer.train.layers.lif_forward`
    (default theta 0.5, tau 2, hard reset to 0). The cache's ``"kv_spikes"`` are that LIF's
    output ``[T, B, heads, 1, d]``."""
    if not (q.shape == k.shape == v.shape) or q.ndim != 4:
        raise ValueError(f"sdsa: q, k, v must be [T, B, C, N] of one shape, got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    grid = (int(grid[0]), int(grid[1]))
    if grid[0] * grid[1] != q.shape[-1]:
        raise ValueError(f"sdsa: {q.shape[-1]} tokens are not a {grid[0]}x{grid[1]} grid")
    cache: Cache = {"heads": heads, "grid": grid, "dvs": bool(dvs)}
    if dvs:
        k, cache["erode_k"] = _erode_grid(k, grid)
        v, cache["erode_v"] = _erode_grid(v, grid)
    qh, kh, vh = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    kv = kh * vh  # K AND V, [T, B, heads, N, d]
    if dvs:
        kv, cache["erode_kv"] = erode_forward(kv)
    col = kv.sum(axis=-2, keepdims=True)  # per channel, over the tokens: [T, B, heads, 1, d]
    kvs, cache["lif"] = L.lif_forward(col, **_attn_lif(lif))
    y = qh * kvs
    if dvs:
        y, cache["erode_y"] = erode_forward(y)
    cache.update(q=qh, k=kh, v=vh, kv_spikes=kvs, kv_shape=kv.shape)
    return merge_heads(y), cache


def sdsa_backward(dy: np.ndarray, cache: Cache) -> tuple[tuple[np.ndarray, ...], dict]:
    """Gradients of :func:`sdsa_forward`: ``((dq, dk, dv), {})``, each ``[T, B, C, N]``."""
    qh, kh, vh, kvs = cache["q"], cache["k"], cache["v"], cache["kv_spikes"]
    dvs = cache["dvs"]
    dyh = split_heads(dy, cache["heads"])
    if dvs:
        dyh, _ = erode_backward(dyh, cache["erode_y"])
    dq = dyh * kvs
    dcol, _ = L.lif_backward((dyh * qh).sum(axis=-2, keepdims=True), cache["lif"])
    dkv = np.broadcast_to(dcol, cache["kv_shape"])
    if dvs:
        dkv, _ = erode_backward(dkv, cache["erode_kv"])
    dk, dv = merge_heads(dkv * vh), merge_heads(dkv * kh)
    if dvs:
        T, B, C, N = dk.shape
        dk = erode_backward(dk.reshape(T, B, C, *cache["grid"]), cache["erode_k"])[0]
        dv = erode_backward(dv.reshape(T, B, C, *cache["grid"]), cache["erode_v"])[0]
        dk, dv = dk.reshape(T, B, C, N), dv.reshape(T, B, C, N)
    return (merge_heads(dq), dk, dv), {}


# --------------------------------------------------------------------------------------------------
# QKFormer: token QK attention core
# --------------------------------------------------------------------------------------------------


def token_qk_forward(q: np.ndarray, k: np.ndarray, heads: int, lif: dict[str, Any] | None = None
                     ) -> tuple[np.ndarray, Cache]:
    """QKFormer's ``Token_QK_Attention`` core on spikes ``q, k [T, B, C, N]``: per token and head
    ``a = attn_lif(sum of q over the head's d channels)`` (``[T, B, heads, 1, N]``; ``lif``:
    keyword arguments of that LIF, default theta 0.5), ``Y = a * K`` -> ``[T, B, C, N]`` (the
    input of ``proj_conv``). The cache's ``"a"`` is attn_lif's output."""
    if q.shape != k.shape or q.ndim != 4:
        raise ValueError(f"token_qk: q, k must be [T, B, C, N] of one shape, got {q.shape}, "
                         f"{k.shape}")
    T, B, C, N = q.shape
    if C % heads:
        raise ValueError(f"{C} channels are not divisible by {heads} heads")
    split = (T, B, heads, C // heads, N)  # channel c = d * h + j
    kh = k.reshape(split)
    a, lc = L.lif_forward(q.reshape(split).sum(axis=3, keepdims=True), **_attn_lif(lif))
    y = (a * kh).reshape(T, B, C, N)
    return y, {"a": a, "k": kh, "lif": lc, "split": split}


def token_qk_backward(dy: np.ndarray, cache: Cache) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    """Gradients of :func:`token_qk_forward`: ``((dq, dk), {})``; every q channel of a head
    receives the gradient of that head's sum."""
    a, kh, split = cache["a"], cache["k"], cache["split"]
    shape = split[:2] + (split[2] * split[3], split[4])
    dyh = dy.reshape(split)
    dk = (dyh * a).reshape(shape)
    dsum, _ = L.lif_backward((dyh * kh).sum(axis=3, keepdims=True), cache["lif"])
    dq = np.ascontiguousarray(np.broadcast_to(dsum, split)).reshape(shape)
    return (dq, dk), {}


# --------------------------------------------------------------------------------------------------
# conv -> BatchNorm -> [max-pool] -> [LIF] -> [max-pool]
# --------------------------------------------------------------------------------------------------


def _sub(params: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in params.items() if k.startswith(p)}


def _bn(x, params, state, bn, training):
    """BatchNorm ``bn`` (key prefix) with its running statistics ``state[f"{bn}.running_mean"]``
    ... (updated in place in training mode; ``state=None``: no tracking, training mode only)."""
    st = None
    if state is not None:
        st = {k: state[f"{bn}.{k}"] for k in ("running_mean", "running_var")}
        st["num_batches_tracked"] = state.get(f"{bn}.num_batches_tracked", 0)
    elif not training:
        raise ValueError(f"{bn}: eval mode needs the BatchNorm running statistics (state)")
    y, cache = L.batchnorm_forward(x, _sub(params, bn), st, training=training,
                                   momentum=BN_MOMENTUM, eps=BN_EPS)
    if st is not None and training:
        state[f"{bn}.num_batches_tracked"] = st["num_batches_tracked"]
    return y, cache


def conv_bn_lif_forward(x: np.ndarray, params: dict[str, np.ndarray],
                        state: dict[str, Any] | None, conv: str, bn: str, training: bool,
                        lif: dict[str, Any] | None = None, stride=1, padding=0,
                        pool: str | None = None) -> tuple[np.ndarray, Cache]:
    """``x [T, B, C, H, W]`` through ``Conv2d`` (``params[f"{conv}.weight"]`` ``[O, C, KH, KW]``,
    optional bias; ``stride``, ``padding``) or ``x [T, B, C, N]`` through a 1x1 conv over tokens
    (weight ``[O, C, 1]`` or ``[O, C, 1, 1]``), then BatchNorm ``bn`` over ``[T*B, ...]``, then
    the LIF of keyword arguments ``lif`` (None: no LIF, the real BN output comes out).

    ``pool``: ``"bn"`` max-pools (``MaxPool2d(3, 2, 1)``) the BN output, before the LIF
    (QKFormer, SDT's last SPS stage); ``"spikes"`` pools the LIF's output (Spikformer's and SDT's
    other stages); None: no pool. Returns ``[T, B, O, ...]``; the cache's ``"spikes"`` is the
    LIF's output (before a ``"spikes"`` pool) or None."""
    if pool not in (None, "bn", "spikes"):
        raise ValueError(f"pool must be None, 'bn' or 'spikes', got {pool!r}")
    if pool == "spikes" and lif is None:
        raise ValueError("pool='spikes' needs a LIF")
    if pool is not None and x.ndim != 5:
        raise ValueError("a max-pool needs maps [T, B, C, H, W]")
    T, B = x.shape[:2]
    xf = x.reshape(T * B, *x.shape[2:])
    cp = _sub(params, conv)
    if x.ndim == 5:
        y, cc = L.conv2d_forward(xf, cp, stride, padding)
    elif x.ndim == 4:
        w = cp["weight"]
        if any(s != 1 for s in w.shape[2:]) or stride not in (1, (1, 1)) \
                or padding not in (0, (0, 0)):
            raise ValueError(f"{conv}: tokens [T, B, C, N] take only a 1x1 conv (stride 1, no "
                             f"padding), the weight is {w.shape}")
        y, cc = L.conv1x1_forward(xf, cp)
    else:
        raise ValueError(f"{conv}: x must be [T, B, C, H, W] or [T, B, C, N], got {x.shape}")
    y, cb = _bn(y, params, state, bn, training)
    cache: Cache = {"conv": conv, "bn": bn, "conv_cache": cc, "bn_cache": cb, "pool": pool,
                    "lif": None, "spikes": None, "T": T}
    if pool == "bn":
        y, cache["pool_cache"] = L.maxpool2d_forward(y, *POOL)
    y = y.reshape(T, B, *y.shape[1:])
    if lif is not None:
        y, cache["lif"] = L.lif_forward(y, **lif)
        cache["spikes"] = y
    if pool == "spikes":
        p, cache["pool_cache"] = L.maxpool2d_forward(y.reshape(T * B, *y.shape[2:]), *POOL)
        y = p.reshape(T, B, *p.shape[1:])
    return y, cache


def conv_bn_lif_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of :func:`conv_bn_lif_forward`: ``(dx, grads)`` with ``grads`` under the full
    keys (``f"{conv}.weight"``, ``f"{conv}.bias"`` if any, ``f"{bn}.weight"``, ``f"{bn}.bias"``)."""
    T, pool = cache["T"], cache["pool"]
    B = dy.shape[1]
    if pool == "spikes":
        d, _ = L.maxpool2d_backward(dy.reshape(T * B, *dy.shape[2:]), cache["pool_cache"])
        dy = d.reshape(T, B, *d.shape[1:])
    if cache["lif"] is not None:
        dy, _ = L.lif_backward(dy, cache["lif"])
    d = dy.reshape(T * B, *dy.shape[2:])
    if pool == "bn":
        d, _ = L.maxpool2d_backward(d, cache["pool_cache"])
    d, gb = L.batchnorm_backward(d, cache["bn_cache"])
    if d.ndim == 4:
        dx, gc = L.conv2d_backward(d, cache["conv_cache"])
    else:
        dx, gc = L.conv1x1_backward(d, cache["conv_cache"])
    grads = {f"{cache['conv']}.{k}": v for k, v in gc.items()}
    grads.update({f"{cache['bn']}.{k}": v for k, v in gb.items()})
    return dx.reshape(T, B, *dx.shape[1:]), grads


# --------------------------------------------------------------------------------------------------
# SDT: membrane-shortcut block and head
# --------------------------------------------------------------------------------------------------


def sdt_block_forward(x: np.ndarray, params: dict[str, np.ndarray], state: dict[str, Any] | None,
                      prefix: str, training: bool, heads: int, grid: tuple[int, int],
                      dvs: bool, lif: dict[str, Any], attn_theta: float = ATTN_THETA
                      ) -> tuple[np.ndarray, Cache]:
    """One SDT block (``MS_SSA_Conv`` then ``MS_MLP_Conv``, each with its membrane shortcut) on
    the real-valued stream ``x [T, B, D, N]`` -> ``[T, B, D, N]``. Parameters and BatchNorm
    statistics under ``f"{prefix}.attn."`` / ``f"{prefix}.mlp."`` with the official names
    (``q_conv`` ``[D, D, 1, 1]`` no bias, ``q_bn``, ..., ``proj_conv`` with bias, ``fc1_conv``
    ``[hidden, D, 1, 1]``, ``fc2_conv``; ``talking_heads.weight`` is saved by the official code
    but never runs, so it is not read and gets no gradient). ``lif``: keyword arguments of every
    LIF but ``talking_heads_lif``, which takes them with theta ``attn_theta``. The cache's
    ``"spikes"`` maps each LIF's official name (``f"{prefix}.attn.shortcut_lif"`` ...) to its
    output, in forward order."""
    if x.ndim != 4:
        raise ValueError(f"sdt block: the stream must be [T, B, D, N], got {x.shape}")
    T, B, D, N = x.shape
    a, m = f"{prefix}.attn", f"{prefix}.mlp"
    cache: Cache = {"shape": x.shape}
    # ---- attention, membrane shortcut around it
    s, cache["shortcut_lif"] = L.lif_forward(x, **lif)
    qkv = []
    for n in ("q", "k", "v"):
        sp, cache[n] = conv_bn_lif_forward(s, params, state, f"{a}.{n}_conv", f"{a}.{n}_bn",
                                           training, lif)
        qkv.append(sp)
    y, cache["core"] = sdsa_forward(*qkv, heads, grid, dvs, {**lif, "theta": attn_theta})
    p, cache["proj"] = conv_bn_lif_forward(y, params, state, f"{a}.proj_conv", f"{a}.proj_bn",
                                           training)
    x = x + p
    # ---- MLP, membrane shortcut (and the official `res` when hidden == dim)
    s1, cache["fc1_lif"] = L.lif_forward(x, **lif)
    h, cache["fc1"] = conv_bn_lif_forward(s1, params, state, f"{m}.fc1_conv", f"{m}.fc1_bn",
                                          training)
    cache["res"] = h.shape[2] == D
    identity = x
    if cache["res"]:
        h = x + h
        identity = h
    s2, cache["fc2_lif"] = L.lif_forward(h, **lif)
    o, cache["fc2"] = conv_bn_lif_forward(s2, params, state, f"{m}.fc2_conv", f"{m}.fc2_bn",
                                          training)
    cache["spikes"] = {f"{a}.shortcut_lif": s, f"{a}.q_lif": qkv[0], f"{a}.k_lif": qkv[1],
                       f"{a}.v_lif": qkv[2], f"{a}.talking_heads_lif": cache["core"]["kv_spikes"],
                       f"{m}.fc1_lif": s1, f"{m}.fc2_lif": s2}
    return o + identity, cache


def sdt_block_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of :func:`sdt_block_forward`: ``(dx, grads)`` under the full parameter keys."""
    grads: dict[str, np.ndarray] = {}
    # ---- MLP: out = fc2(fc2_lif(h)) + identity
    ds2, g = conv_bn_lif_backward(dy, cache["fc2"])
    grads.update(g)
    dh, _ = L.lif_backward(ds2, cache["fc2_lif"])
    if cache["res"]:  # h2 = x + h is both fc2_lif's input and the identity
        dh = dh + dy
        dx = dh
    else:
        dx = dy
    ds1, g = conv_bn_lif_backward(dh, cache["fc1"])
    grads.update(g)
    dx = dx + L.lif_backward(ds1, cache["fc1_lif"])[0]
    # ---- attention: x1 = x + proj(SDSA(...))
    dyc, g = conv_bn_lif_backward(dx, cache["proj"])
    grads.update(g)
    dqkv, _ = sdsa_backward(dyc, cache["core"])
    ds = None
    for n, d in zip(("q", "k", "v"), dqkv):
        dsn, g = conv_bn_lif_backward(d, cache[n])
        grads.update(g)
        ds = dsn if ds is None else ds + dsn
    return dx + L.lif_backward(ds, cache["shortcut_lif"])[0], grads


def sdt_head_forward(x: np.ndarray, params: dict[str, np.ndarray], lif: dict[str, Any],
                     prefix: str = "head") -> tuple[np.ndarray, Cache]:
    """SDT's head on the real stream ``x [T, B, D, N]``: ``head_lif`` (keyword arguments ``lif``)
    of the token mean ``[T, B, D]``, the Linear ``f"{prefix}.weight"`` / ``.bias`` per step, the
    mean over T -> logits ``[B, classes]``. The cache's ``"spikes"`` is head_lif's output."""
    m = x.mean(axis=3)
    s, lc = L.lif_forward(m, **lif)
    z, hc = L.linear_forward(s, _sub(params, prefix))
    return z.mean(axis=0), {"lif": lc, "linear": hc, "shape": x.shape, "prefix": prefix,
                            "spikes": s}


def sdt_head_backward(dlogits: np.ndarray, cache: Cache
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of :func:`sdt_head_forward`: ``(dx [T, B, D, N], {f"{prefix}.weight": ...,
    f"{prefix}.bias": ...})``."""
    T, B, D, N = cache["shape"]
    dt = dlogits.dtype.type
    dz = np.ascontiguousarray(np.broadcast_to(dlogits / dt(T), (T,) + dlogits.shape))
    ds, g = L.linear_backward(dz, cache["linear"])
    dm, _ = L.lif_backward(ds, cache["lif"])
    dx = np.ascontiguousarray(np.broadcast_to((dm / dt(N))[..., None], (T, B, D, N)))
    return dx, {f"{cache['prefix']}.{k}": v for k, v in g.items()}
