"""Naive numpy twins of :mod:`eventformer.kernels.spikedriven`, written the way the official code
computes: dense spike tensors on the released models' layouts, reshaped and transposed as they
do, and a plain max-pool with the padding that never wins.

- SDT (``module/ms_conv.py``, ``MS_SSA_Conv``, ``dvs=True``): K, V as [T, B, C, H, W]; q, k, v as
  [T, B, heads, N, d] (``flatten(3).transpose(-1, -2).reshape(T, B, N, heads, d).permute(0, 1,
  3, 2, 4)``); ``Erode`` = ``MaxPool3d((1, 3, 3), 1, (0, 1, 1))`` on whichever of the two it gets.
- QKFormer (``dvs128-gesture/model.py``, ``Token_QK_Attention``): q, k as [T, B, C, N] reshaped
  to [T, B, heads, d, N]; ``q.sum(dim=3)``; ``attn * k`` flattened back to [T, B, C, N].

One step and one sample here: T = B = 1. Op counts are derived from the dense tensors (which
sites are set), not from the kernels' walk. Nothing here shares code with the kernels.
"""

import numpy as np

# --------------------------------------------------------------------------------------------
# event lists <-> the engine's dense [N, D] map
# --------------------------------------------------------------------------------------------


def dense(idx, tokens, dim):
    """The engine's flat list (``n * dim + c``) as a dense 0/1 [tokens, dim] map."""
    x = np.zeros(tokens * dim, np.int64)
    x[np.asarray(idx, np.int64)] = 1
    return x.reshape(tokens, dim)


def sites(x):
    """A dense [tokens, dim] map back to the engine's sorted flat list (int32)."""
    return np.flatnonzero(np.asarray(x).reshape(-1)).astype(np.int32)


# --------------------------------------------------------------------------------------------
# the official layouts
# --------------------------------------------------------------------------------------------


def to_tbchw(x, grid_h, grid_w):
    """[N, C] -> SDT's [T=1, B=1, C, H, W] (token n = row * W + col)."""
    return x.T.reshape(1, 1, x.shape[1], grid_h, grid_w)


def from_tbchw(x):
    """[1, 1, C, H, W] -> [N, C]."""
    c = x.shape[2]
    return x.reshape(c, -1).T


def to_heads(x, heads):
    """[N, D] -> SDT's [T=1, B=1, heads, N, d]: ``x_conv.flatten(3).transpose(-1, -2)`` is [N, C]
    already; then ``reshape(T, B, N, heads, d).permute(0, 1, 3, 2, 4)``."""
    n, dim = x.shape
    return x.reshape(1, 1, n, heads, dim // heads).transpose(0, 1, 3, 2, 4)


def from_heads(y):
    """[1, 1, heads, N, d] -> [N, D]: the official ``x.transpose(3, 4).reshape(T, B, C, H, W)``
    (channel c = h * d + j, token n), then the engine's [N, C]."""
    _, _, heads, n, d = y.shape
    return y.transpose(0, 1, 2, 4, 3).reshape(heads * d, n).T


def maxpool_133(x):
    """``MaxPool3d(kernel (1, 3, 3), stride 1, padding (0, 1, 1))`` of a 5-d [T, B, A, P, Q]
    tensor written plainly: MaxPool3d reads it as (batch T, channel B, depth A, height P, width
    Q); the depth window is 1, so every (t, b, a) plane is max-pooled 3x3 over (P, Q), padded
    with -inf (which never wins)."""
    t, b, a, p, q = x.shape
    padded = np.full((t, b, a, p + 2, q + 2), -np.inf)
    padded[:, :, :, 1:-1, 1:-1] = x
    out = np.full(x.shape, -np.inf)
    for dp in range(3):
        for dq in range(3):
            out = np.maximum(out, padded[:, :, :, dp:dp + p, dq:dq + q])
    return out.astype(x.dtype)


# --------------------------------------------------------------------------------------------
# the kernels' twins
# --------------------------------------------------------------------------------------------


def erode_grid(idx, grid_h, grid_w, channels):
    """SDT's Erode on K or V ([T, B, C, H, W]). Returns (sites, maxima formed = output spikes)."""
    x = dense(idx, grid_h * grid_w, channels)
    y = from_tbchw(maxpool_133(to_tbchw(x, grid_h, grid_w)))
    out = sites(y)
    return out, out.size


def erode_heads(idx, tokens, dim, heads):
    """SDT's Erode on KV or Y ([T, B, heads, N, d]). Returns (sites, maxima formed)."""
    x = dense(idx, tokens, dim)
    y = from_heads(maxpool_133(to_heads(x, heads)))
    out = sites(y)
    return out, out.size


def and_lists(a_idx, b_idx, tokens, dim):
    """``k.mul(v)`` of two spike maps. Returns (sites, bit tests): one test per site of the
    first list up to the second's last site (beyond it nothing can match), none when either
    list is empty."""
    a = dense(a_idx, tokens, dim)
    b = dense(b_idx, tokens, dim)
    out = sites(a * b)
    if len(a_idx) and len(b_idx):
        tests = int(np.count_nonzero(np.asarray(a_idx) <= b_idx[-1]))
    else:
        tests = 0
    return out, tests


def column_sums(idx, tokens, dim, heads):
    """``kv.sum(dim=-2, keepdim=True)`` on [T, B, heads, N, d], flattened to channel h * d + j.
    Returns (int32 [dim] counts, adds = spikes)."""
    kv = to_heads(dense(idx, tokens, dim), heads)
    s = kv.sum(axis=-2, keepdims=True)  # [1, 1, heads, 1, d]
    return s.reshape(dim).astype(np.int32), len(idx)


def mask_channels(idx, tokens, dim, heads, flags):
    """``q.mul(kv)``, kv the [T, B, heads, 1, d] talking-heads spikes (``flags`` as [D]).
    Returns (sites, flag tests = Q spikes)."""
    q = to_heads(dense(idx, tokens, dim), heads)
    kv = (np.asarray(flags) != 0).astype(np.int64).reshape(1, 1, heads, 1, dim // heads)
    return sites(from_heads(q * kv)), len(idx)


def to_tbcn(x):
    """[N, C] -> QKFormer's [T=1, B=1, C, N] (``x.flatten(3)``)."""
    return x.T[None, None]


def head_counts(idx, tokens, dim, heads):
    """QKFormer's ``q.unsqueeze(2).reshape(T, B, heads, d, N)`` summed over d ([T, B, heads, 1,
    N]), as flat ``counts[n * heads + h]``. Returns (int32 counts, adds = spikes)."""
    q = to_tbcn(dense(idx, tokens, dim)).reshape(1, 1, heads, dim // heads, tokens)
    s = q.sum(axis=3, keepdims=True)  # [1, 1, heads, 1, N]
    return s[0, 0, :, 0, :].T.reshape(-1).astype(np.int32), len(idx)


def mask_heads(idx, tokens, dim, heads, flags):
    """QKFormer's ``torch.mul(attn, k)`` ([T, B, heads, 1, N] times [T, B, heads, d, N]) then
    ``flatten(2, 3)`` back to [T, B, C, N]; ``flags[n * heads + h]`` is attn's (h, n). Returns
    (sites, flag tests = the (token, head) pairs holding a K spike)."""
    d = dim // heads
    k = to_tbcn(dense(idx, tokens, dim)).reshape(1, 1, heads, d, tokens)
    attn = (np.asarray(flags) != 0).astype(np.int64).reshape(tokens, heads).T
    x = (attn[None, None, :, None, :] * k).reshape(1, 1, dim, tokens)
    held = int(np.count_nonzero(k.sum(axis=3)))  # (head, token) pairs with a spike
    return sites(x[0, 0].T), held
