"""The numpy trainer's Spike-driven Transformer (v1) and QKFormer pairs
(eventformer.train.successors) against eventformer.torch_successors: forwards bit-exact on spikes
(float64), every backward against torch autograd of the reference's own modules with their LIF
swapped for the trainer's surrogate (tests/torch_reference.surrogate_lif_forward: sigmoid alpha 4,
reset detached)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as R

from eventformer import torch_successors as TS
from eventformer.train import layers as L
from eventformer.train import successors as S

T, B = 4, 2


@pytest.fixture
def surrogate(monkeypatch):
    """Every LIF of the torch references (torch_model.LIF, which torch_successors builds on)
    differentiable with the trainer's surrogate; its forward spikes are the same."""
    monkeypatch.setattr(R.LIF, "forward", R.surrogate_lif_forward)


def t64(a, grad=True):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=grad)


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def live(*arrays):
    """Each array is nonzero somewhere (a gradient that reaches, spikes that occur)."""
    for a in arrays:
        assert np.abs(np.asarray(a)).max() > 0


def mixed(s):
    """Spikes that occur and are absent: both branches of a LIF are exercised."""
    s = np.asarray(s)
    assert 0 < s.mean() < 1, s.mean()


def channel_spikes(rng, shape, rates):
    """Spikes ``[T, B, C, N]`` whose rate varies per channel (drawn from ``rates``, 0 included),
    so that some columns of an attention stay silent and others fire."""
    r = rng.choice(rates, size=(1, 1, shape[2], 1))
    return (rng.random(shape) < r).astype(np.float64)


def seeded(seed, cls, *args):
    """``cls(*args)`` in float64 with torch's default initialisation drawn under ``seed``: the
    same weights on every run."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(*args).double()


def module_params(mod, prefix):
    """A torch module's parameters and BatchNorm buffers as the trainer's flat dicts (float64
    copies) under ``prefix``."""
    p = {f"{prefix}.{k}": v.detach().numpy().copy() for k, v in mod.named_parameters()}
    st = {f"{prefix}.{k}": (int(v) if k.endswith("num_batches_tracked") else v.numpy().copy())
          for k, v in mod.named_buffers()}
    return p, st


def lively_(mod, seed, bias=(0.3, 0.8)):
    """BatchNorm gamma ~ U(0.5, 1.5), beta ~ N(mean, sd) per channel: channels that stay silent
    beside channels that fire often, so that every LIF downstream fires now and then."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in mod.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g, dtype=torch.float64))
                m.bias.copy_(bias[0] + bias[1] * torch.randn(m.bias.shape, generator=g,
                                                             dtype=torch.float64))
    return mod


def check_grads(mod, prefix, grads, skip=()):
    """Every parameter gradient of ``mod`` (torch autograd) against ``grads``; all nonzero."""
    named = {f"{prefix}.{k}": p for k, p in mod.named_parameters() if k not in skip}
    assert set(grads) == set(named)
    for k, p in named.items():
        close(grads[k], p.grad.numpy(), rtol=1e-9, atol=1e-11)
        assert np.abs(p.grad.numpy()).max() > 0, k


def check_state(mod, prefix, state):
    for k, v in mod.named_buffers():
        mine = state[f"{prefix}.{k}"]
        if k.endswith("num_batches_tracked"):
            assert int(mine) == int(v) == 1
        else:
            close(mine, v.numpy(), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# Erode
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(T, B, 3, 5, 6),  # K, V: [T, B, C, H, W]
                                   (T, B, 2, 12, 4)])  # KV, Y: [T, B, heads, N, d]
def test_erode_is_the_references_and_routes_ties_like_torch(shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.random(shape) < 0.35).astype(np.float64)
    y, cache = S.erode_forward(x)
    tx = t64(x)
    ty = TS.erode(tx)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    # integer gradients sum exactly: the routing of every window to its argmax is torch's, bit
    # for bit, on spikes where most windows hold several maxima (ties: several 1s, or all 0s)
    dy = rng.integers(-9, 10, size=shape).astype(np.float64)
    dx, grads = S.erode_backward(dy, cache)
    (g,) = torch.autograd.grad(ty, tx, torch.tensor(dy), retain_graph=True)
    np.testing.assert_array_equal(dx, g.numpy())
    assert grads == {}
    pad = np.pad(x.reshape(-1, *shape[-2:]), ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    windows = np.lib.stride_tricks.sliding_window_view(pad, (3, 3), axis=(1, 2))
    maxima = (windows == windows.max(axis=(-1, -2), keepdims=True)).sum(axis=(-1, -2))
    assert (maxima > 1).mean() > 0.5  # ties are the rule
    dy = rng.standard_normal(shape)
    (g,) = torch.autograd.grad(ty, tx, torch.tensor(dy))
    close(S.erode_backward(dy, cache)[0], g.numpy(), rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# SDSA core
# --------------------------------------------------------------------------------------------------


def sdsa_module(dim, heads, dvs):
    cfg = TS.SDTConfig(image_size=32, dim=dim, heads=heads, depth=1, dvs=dvs)
    return seeded(0, TS.SDSA, cfg)


SDSA_CASES = [  # dvs, grid, heads, d, per-channel rates of q / k / v
    (False, (4, 4), 2, 4, (0.4,), (0.0, 0.1, 0.3), (0.0, 0.2, 0.5)),
    (True, (4, 4), 2, 4, (0.4,), (0.0, 0.01, 0.03), (0.0, 0.03, 0.1)),
    (True, (3, 5), 4, 2, (0.3,), (0.0, 0.02), (0.0, 0.05)),
]


@pytest.mark.parametrize("dvs,grid,heads,d,qr,kr,vr", SDSA_CASES)
def test_sdsa_forward_is_the_references_core(dvs, grid, heads, d, qr, kr, vr):
    rng = np.random.default_rng(11)
    shape = (T, B, heads * d, grid[0] * grid[1])
    q, k, v = (channel_spikes(rng, shape, r) for r in (qr, kr, vr))
    y, cache = S.sdsa_forward(q, k, v, heads, grid, dvs)
    ref = sdsa_module(heads * d, heads, dvs)
    maps = (torch.from_numpy(a.reshape(T, B, -1, *grid)) for a in (q, k, v))
    want = ref.core(*maps).numpy().reshape(shape)
    np.testing.assert_array_equal(y, want)
    mixed(y)
    mixed(cache["kv_spikes"])


@pytest.mark.parametrize("dvs,grid,heads,d,qr,kr,vr", SDSA_CASES)
def test_sdsa_backward_vs_torch_autograd(surrogate, dvs, grid, heads, d, qr, kr, vr):
    rng = np.random.default_rng(12)
    shape = (T, B, heads * d, grid[0] * grid[1])
    q, k, v = (channel_spikes(rng, shape, r) for r in (qr, kr, vr))
    y, cache = S.sdsa_forward(q, k, v, heads, grid, dvs)
    mixed(cache["kv_spikes"])
    ref = sdsa_module(heads * d, heads, dvs)
    tq, tk, tv = (t64(a.reshape(T, B, -1, *grid)) for a in (q, k, v))
    ty = ref.core(tq, tk, tv)
    np.testing.assert_array_equal(y, ty.detach().numpy().reshape(shape))
    dy = rng.standard_normal(shape)
    (dq, dk, dv), grads = S.sdsa_backward(dy, cache)
    tg = torch.autograd.grad(ty, [tq, tk, tv], torch.tensor(dy.reshape(ty.shape)))
    for mine, theirs in zip((dq, dk, dv), tg):
        close(mine, theirs.numpy().reshape(shape))
    live(dq, dk, dv)
    assert grads == {}


def test_sdsa_refuses_a_wrong_grid_or_shapes():
    q = np.zeros((T, B, 8, 12))
    with pytest.raises(ValueError, match="grid"):
        S.sdsa_forward(q, q, q, 2, (3, 3))
    with pytest.raises(ValueError, match="one shape"):
        S.sdsa_forward(q, q, q[..., :6], 2, (3, 4))


# --------------------------------------------------------------------------------------------------
# QKFormer: token QK attention
# --------------------------------------------------------------------------------------------------


def torch_token_qk(q, k, heads, lif):
    """Token_QK_Attention's core, the lines of torch_successors.TokenQKAttention.forward between
    the LIFs of q, k and proj_conv, with its attn_lif module."""
    T_, B_, C, N = q.shape
    qh = q.reshape(T_, B_, heads, C // heads, N)
    kh = k.reshape(T_, B_, heads, C // heads, N)
    a = lif(torch.sum(qh, dim=3, keepdim=True))
    return torch.mul(a, kh).flatten(2, 3)


@pytest.mark.parametrize("heads,d,N", [(2, 4, 6), (4, 2, 9)])
def test_token_qk_forward_and_backward_vs_torch(surrogate, heads, d, N):
    rng = np.random.default_rng(heads * 10 + d)
    shape = (T, B, heads * d, N)
    q, k = (channel_spikes(rng, shape, (0.0, 0.05, 0.15)), channel_spikes(rng, shape, (0.5,)))
    y, cache = S.token_qk_forward(q, k, heads)
    mixed(cache["a"])
    attn_lif = TS.TokenQKAttention(heads * d, TS.QKFormerConfig(heads=heads)).attn_lif
    assert attn_lif.theta == S.ATTN_THETA
    tq, tk = t64(q), t64(k)
    ty = torch_token_qk(tq, tk, heads, attn_lif)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    mixed(y)
    dy = rng.standard_normal(shape)
    (dq, dk), grads = S.token_qk_backward(dy, cache)
    tg = torch.autograd.grad(ty, [tq, tk], torch.tensor(dy))
    close(dq, tg[0].numpy())
    close(dk, tg[1].numpy())
    live(dq, dk)
    # a head's channels share one gradient: the gradient of their sum
    assert np.all(dq.reshape(T, B, heads, d, N) == dq.reshape(T, B, heads, d, N)[:, :, :, :1])
    assert grads == {}


def test_token_qk_attention_branch_vs_torch(surrogate):
    """The whole Token_QK_Attention (q, k: conv1d -> BN1d -> LIF; the core; proj conv -> BN ->
    LIF), BatchNorms in training mode, chained from the trainer's pieces: output, input gradient,
    every parameter gradient and the running statistics against torch_successors' module."""
    C, heads, grid = 8, 2, (3, 3)
    N = grid[0] * grid[1]
    mod = lively_(seeded(3, TS.TokenQKAttention, C, TS.QKFormerConfig(heads=heads)), 3).train()
    params, state = module_params(mod, "tssa")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(T, B, C, N)).astype(np.float64)  # QKFormer's integer stream
    lif = {"tau": 2.0, "theta": 1.0, "alpha": S.SURROGATE_ALPHA}
    sq, cq = S.conv_bn_lif_forward(x, params, state, "tssa.q_conv", "tssa.q_bn", True, lif)
    sk, ck = S.conv_bn_lif_forward(x, params, state, "tssa.k_conv", "tssa.k_bn", True, lif)
    yc, cc = S.token_qk_forward(sq, sk, heads)
    out, cp = S.conv_bn_lif_forward(yc, params, state, "tssa.proj_conv", "tssa.proj_bn", True,
                                    lif)
    for s in (sq, sk, cc["a"], out):
        mixed(s)
    tx = t64(x.reshape(T, B, C, *grid))
    tout = mod(tx)
    close(out, tout.detach().numpy().reshape(out.shape), rtol=0, atol=0)  # spikes
    dout = rng.standard_normal(out.shape)
    tout.backward(torch.tensor(dout.reshape(tout.shape)))
    dyc, grads = S.conv_bn_lif_backward(dout, cp)
    (dq, dk), _ = S.token_qk_backward(dyc, cc)
    dxq, g = S.conv_bn_lif_backward(dq, cq)
    grads.update(g)
    dxk, g = S.conv_bn_lif_backward(dk, ck)
    grads.update(g)
    close(dxq + dxk, tx.grad.numpy().reshape(x.shape))
    live(dxq + dxk)
    check_grads(mod, "tssa", grads)
    check_state(mod, "tssa", state)


def test_qkformer_stage2_ssa_current_is_the_ssa_core():
    """QKFormer's stage-2 attention computes q (k^T v) * scale, the trainer's SSA core
    ((q k^T) * scale) v: on spikes with scale 1/8 every product and sum is an exact integer
    multiple of 1/8, so the two orders agree bit for bit and the existing pair serves."""
    rng = np.random.default_rng(4)
    heads, d, N = 2, 4, 9
    ssa = seeded(4, TS.SpikingSelfAttention, heads * d, TS.QKFormerConfig(heads=heads))
    q, k, v = ((rng.random((T, B, heads * d, N)) < 0.4).astype(np.float64) for _ in range(3))
    y, _ = L.ssa_attention_forward(q, k, v, heads, ssa.scale)
    want = ssa.current(*(ssa.split_heads(torch.from_numpy(a)) for a in (q, k, v))).numpy()
    np.testing.assert_array_equal(y, want)
    live(y)


# --------------------------------------------------------------------------------------------------
# Patch embeddings: max-pool before the LIF, strided 1x1 shortcut convs
# --------------------------------------------------------------------------------------------------

LIF1 = {"tau": 2.0, "theta": 1.0, "alpha": S.SURROGATE_ALPHA}


def test_qkformer_patch_embed_init_vs_torch(surrogate):
    """PatchEmbedInit: conv -> BN -> LIF; three conv -> BN -> max-pool -> LIF stages; the 1x1
    stride-4 proj_res conv from stage 1's spikes; the sum of both spike maps."""
    cfg = TS.QKFormerConfig(image_size=16, dim=32, heads=2)  # E = 16: widths 2, 4, 8, 16
    mod = lively_(seeded(5, TS.PatchEmbedInit, cfg), 5).train()
    P, st = module_params(mod, "pe")
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, size=(T, B, 2, 16, 16)).astype(np.float64)
    caches = []
    h, c = S.conv_bn_lif_forward(x, P, st, "pe.proj_conv", "pe.proj_bn", True, LIF1, 1, 1)
    caches.append(c)
    for i in (1, 2, 3):
        h, c = S.conv_bn_lif_forward(h, P, st, f"pe.proj{i}_conv", f"pe.proj{i}_bn", True, LIF1,
                                     1, 1, pool="bn")
        caches.append(c)
        if i == 1:
            feat = h
    res, cr = S.conv_bn_lif_forward(feat, P, st, "pe.proj_res_conv", "pe.proj_res_bn", True,
                                    LIF1, stride=4)
    out = h + res
    assert out.shape == (T, B, 16, 2, 2)
    for c in (*caches, cr):
        mixed(c["spikes"])
    tx = t64(x)
    tout = mod(tx)
    np.testing.assert_array_equal(out, tout.detach().numpy())
    dout = rng.standard_normal(out.shape)
    tout.backward(torch.tensor(dout))
    grads = {}
    dfeat, g = S.conv_bn_lif_backward(dout, cr)
    grads.update(g)
    d = dout
    for i in (3, 2, 1, 0):
        if i == 1:
            d = d + dfeat  # stage 1's spikes feed stage 2 and proj_res
        d, g = S.conv_bn_lif_backward(d, caches[i])
        grads.update(g)
    close(d, tx.grad.numpy())
    live(d)
    check_grads(mod, "pe", grads)
    check_state(mod, "pe", st)


def test_qkformer_patch_embedding_stage_vs_torch(surrogate):
    """PatchEmbeddingStage: conv -> BN -> LIF, conv -> BN -> max-pool -> LIF, and the 1x1
    stride-2 proj_res conv from the (integer) stream itself."""
    cfg = TS.QKFormerConfig(image_size=16, dim=16, heads=2)
    mod = lively_(seeded(6, TS.PatchEmbeddingStage, cfg), 6).train()
    P, st = module_params(mod, "pe2")
    rng = np.random.default_rng(6)
    x = rng.integers(0, 3, size=(T, B, 8, 6, 6)).astype(np.float64)
    h, c1 = S.conv_bn_lif_forward(x, P, st, "pe2.proj_conv", "pe2.proj_bn", True, LIF1, 1, 1)
    h, c4 = S.conv_bn_lif_forward(h, P, st, "pe2.proj4_conv", "pe2.proj4_bn", True, LIF1, 1, 1,
                                  pool="bn")
    res, cr = S.conv_bn_lif_forward(x, P, st, "pe2.proj_res_conv", "pe2.proj_res_bn", True, LIF1,
                                    stride=2)
    out = h + res
    assert out.shape == (T, B, 16, 3, 3)
    for c in (c1, c4, cr):
        mixed(c["spikes"])
    tx = t64(x)
    tout = mod(tx)
    np.testing.assert_array_equal(out, tout.detach().numpy())
    dout = rng.standard_normal(out.shape)
    tout.backward(torch.tensor(dout))
    dres, grads = S.conv_bn_lif_backward(dout, cr)
    d, g = S.conv_bn_lif_backward(dout, c4)
    grads.update(g)
    d, g = S.conv_bn_lif_backward(d, c1)
    grads.update(g)
    close(d + dres, tx.grad.numpy())
    check_grads(mod, "pe2", grads)
    check_state(mod, "pe2", st)


def test_sdt_patch_embed_vs_torch(surrogate):
    """MS_SPS from the same pieces: stages pooled after the LIF per pooling_stat, the last one
    pooled before it (x_feat real valued), rpe conv -> BN without a LIF, + x_feat."""
    cfg = TS.SDTConfig(image_size=16, dim=16, heads=2, pooling_stat="0111")
    mod = lively_(seeded(7, TS.SDTPatchEmbed, cfg), 7).train()
    P, st = module_params(mod, "patch_embed")
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, size=(T, B, 2, 16, 16)).astype(np.float64)
    caches = []
    h = x
    for i, name in enumerate(("proj_conv", "proj_conv1", "proj_conv2")):
        pool = "spikes" if cfg.pooling_stat[i] == "1" else None
        h, c = S.conv_bn_lif_forward(h, P, st, f"patch_embed.{name}",
                                     f"patch_embed.{name.replace('conv', 'bn')}", True, LIF1, 1,
                                     1, pool=pool)
        caches.append(c)
    feat, c3 = S.conv_bn_lif_forward(h, P, st, "patch_embed.proj_conv3", "patch_embed.proj_bn3",
                                     True, None, 1, 1, pool="bn")
    s3, l3 = L.lif_forward(feat, **LIF1)
    r, cr = S.conv_bn_lif_forward(s3, P, st, "patch_embed.rpe_conv", "patch_embed.rpe_bn", True,
                                  None, 1, 1)
    out = r + feat
    for c in caches:
        mixed(c["spikes"])
    mixed(s3)
    tx = t64(x)
    tout = mod(tx)
    close(out, tout.detach().numpy())
    dout = rng.standard_normal(out.shape)
    tout.backward(torch.tensor(dout))
    ds3, grads = S.conv_bn_lif_backward(dout, cr)
    dfeat = dout + L.lif_backward(ds3, l3)[0]
    d, g = S.conv_bn_lif_backward(dfeat, c3)
    grads.update(g)
    for c in reversed(caches):
        d, g = S.conv_bn_lif_backward(d, c)
        grads.update(g)
    close(d, tx.grad.numpy())
    check_grads(mod, "patch_embed", grads)
    check_state(mod, "patch_embed", st)


def test_conv_bn_lif_refuses_what_it_cannot_do():
    P = {"c.weight": np.ones((4, 4, 3, 3)), "b.weight": np.ones(4), "b.bias": np.zeros(4)}
    tokens = np.ones((T, B, 4, 9))
    with pytest.raises(ValueError, match="1x1"):
        S.conv_bn_lif_forward(tokens, P, None, "c", "b", True)
    with pytest.raises(ValueError, match="pool"):
        S.conv_bn_lif_forward(np.ones((T, B, 4, 3, 3)), P, None, "c", "b", True, pool="lif")
    with pytest.raises(ValueError, match="running statistics"):
        S.conv_bn_lif_forward(np.ones((T, B, 4, 3, 3)), P, None, "c", "b", False)


# --------------------------------------------------------------------------------------------------
# SDT: membrane-shortcut block and head
# --------------------------------------------------------------------------------------------------


SEED = 8


@pytest.mark.parametrize("dvs,mlp_ratio", [(False, 2), (True, 2), (False, 1), (True, 1)])
def test_sdt_block_vs_torch_autograd(surrogate, dvs, mlp_ratio):
    """SDTBlock (SDSA and the MLP with their membrane shortcuts; mlp_ratio 1: the official
    ``res`` add), BatchNorms in training mode: the output, the stream's gradient, every
    parameter gradient (talking_heads never runs: none) and the running statistics. Then eval
    mode on the updated statistics."""
    D, heads, grid = 8, 2, (3, 4)
    cfg = TS.SDTConfig(image_size=32, dim=D, heads=heads, depth=1, dvs=dvs, mlp_ratio=mlp_ratio)
    blk = lively_(seeded(SEED, TS.SDTBlock, cfg), SEED + mlp_ratio, bias=(0.2, 1.0)).train()
    P, st = module_params(blk, "block.0")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((T, B, D, *grid)) * 1.2 + 0.6  # the real-valued stream
    xt = x.reshape(T, B, D, -1)
    y, cache = S.sdt_block_forward(xt, P, st, "block.0", True, heads, grid, dvs, LIF1)
    assert list(cache["spikes"]) == [n for n in TS.successor_lif_names(cfg)
                                     if n.startswith("block.0.")]  # official names, forward order
    assert cache["res"] == (mlp_ratio == 1)
    for s in cache["spikes"].values():
        mixed(s)
    mixed(cache["proj"]["conv_cache"]["x"])  # Y, the attention's output spikes
    tx = t64(x)
    ty = blk(tx)
    close(y, ty.detach().numpy().reshape(y.shape))
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy.reshape(ty.shape)))
    dx, grads = S.sdt_block_backward(dy, cache)
    close(dx, tx.grad.numpy().reshape(dx.shape))
    check_grads(blk, "block.0", grads, skip=("attn.talking_heads.weight",))
    assert blk.attn.talking_heads.weight.grad is None
    check_state(blk, "block.0", st)
    # eval mode: the running statistics, state untouched
    blk.eval()
    before = {k: np.copy(v) for k, v in st.items()}
    ye, _ = S.sdt_block_forward(xt, P, st, "block.0", False, heads, grid, dvs, LIF1)
    with torch.no_grad():
        close(ye, blk(torch.from_numpy(x)).numpy().reshape(ye.shape))
    assert all(np.array_equal(before[k], st[k]) for k in st)


def test_sdt_head_vs_torch(surrogate):
    """head(head_lif(mean over tokens)).mean(0), as SpikeDrivenTransformerRef._run ends."""
    D, K, N = 8, 5, 6
    rng = np.random.default_rng(9)
    params = {"head.weight": rng.standard_normal((K, D)), "head.bias": rng.standard_normal(K)}
    x = rng.standard_normal((T, B, D, N)) * 1.5 + 0.7
    logits, cache = S.sdt_head_forward(x, params, LIF1)
    mixed(cache["spikes"])
    ref = seeded(9, TS.SpikeDrivenTransformerRef, TS.SDTConfig(image_size=16, dim=D, heads=2,
                                                               depth=0, num_classes=K))
    with torch.no_grad():
        ref.head.weight.copy_(torch.from_numpy(params["head.weight"]))
        ref.head.bias.copy_(torch.from_numpy(params["head.bias"]))
    tx = t64(x.reshape(T, B, D, 2, 3))
    tl = ref.head(ref.head_lif(tx.flatten(3).mean(3))).mean(0)
    close(logits, tl.detach().numpy())
    dl = rng.standard_normal(logits.shape)
    tl.backward(torch.tensor(dl))
    dx, grads = S.sdt_head_backward(dl, cache)
    close(dx, tx.grad.numpy().reshape(dx.shape))
    close(grads["head.weight"], ref.head.weight.grad.numpy())
    close(grads["head.bias"], ref.head.bias.grad.numpy())
    assert set(grads) == {"head.weight", "head.bias"}
    live(dx, grads["head.weight"])


def test_float32_stays_float32():
    """No silent promotion: float32 spikes and gradients stay float32 through both cores."""
    rng = np.random.default_rng(10)
    shape = (T, B, 8, 12)
    q, k, v = (channel_spikes(rng, shape, (0.0, 0.1, 0.4)).astype(np.float32) for _ in range(3))
    dy = rng.standard_normal(shape).astype(np.float32)
    y, cache = S.sdsa_forward(q, k, v, 2, (3, 4), dvs=True)
    y64, _ = S.sdsa_forward(*(a.astype(np.float64) for a in (q, k, v)), 2, (3, 4), dvs=True)
    np.testing.assert_array_equal(y, y64)  # spikes and integer sums: exact in float32 too
    grads = S.sdsa_backward(dy, cache)[0]
    y2, cache2 = S.token_qk_forward(q, k, 2)
    grads += S.token_qk_backward(dy, cache2)[0]
    assert all(a.dtype == np.float32 for a in (y, y2, *grads))
