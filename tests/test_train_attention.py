"""The numpy trainer's SPEC §4 attention operators (eventformer.train.attention, wired into
eventformer.train.model): each forward/backward pair against torch autograd and central finite
differences (float64), every parameter gradient of a whole model per operator against torch
autograd on the torch model (surrogate LIF), the trainer's evaluation against the engine running
the exported file, and ``eventformer train --attention``."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import torch_reference as R
from conftest import assert_every_layer_fires, one_error_line
from eventformer_cli.main import app
from test_train_layers import num_grad
from typer.testing import CliRunner

from eventformer.datasets import embedded_synthetic_dir, embedded_synthetic_set
from eventformer.events import frame_events
from eventformer.modelfile import load, save
from eventformer.models import Spikformer
from eventformer.train import attention as A
from eventformer.train import layers as L
from eventformer.train import model as M
from eventformer.train.data import frame_set
from eventformer.train.export import to_model_file
from eventformer.train.loop import predict, train

ALPHA = 4.0
runner = CliRunner()


def t64(a):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


def close(a, b, rtol=1e-9, atol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def spikes(rng, shape, p=0.5):
    return (rng.random(shape) < p).astype(np.float64)


def split(t, heads):  # [T, B, C, N] -> [T, B, H, N, d], c = d * h + j (torch model's layout)
    T, B, C, N = t.shape
    return t.transpose(-1, -2).reshape(T, B, N, heads, C // heads).permute(0, 1, 3, 2, 4)


def merge(t):
    T, B, H, N, d = t.shape
    return t.transpose(3, 4).reshape(T, B, H * d, N)


class SurrogateStep(torch.autograd.Function):
    """1(x > 0) forward, SPEC §1's sigmoid surrogate (alpha 4) backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(ALPHA * x)
        return g * ALPHA * s * (1 - s)


# --------------------------------------------------------------------------------------------------
# torch definitions of the training-side operators (written from SPEC §4)
# --------------------------------------------------------------------------------------------------


def torch_nsad(q, k, v, p, u, heads, scale, rounded=True):
    """NSAD with straight-through rounding: A = f(S) + (round(f(S)) - f(S)).detach(); the step
    1(S > u) is a constant mask."""
    qh, kh, vh = split(q, heads), split(k, heads), split(v, heads)
    S = qh @ kh.transpose(-1, -2)
    uu = u.reshape(-1, 1, 1)
    mask = (S.detach().round() > uu).to(S.dtype)
    a, b, c, d, e = (p[key].reshape(-1, 1, 1) for key in A.NSAD_KEYS)
    f = mask * (a * S + b * (S - c) ** 2 + d * torch.sigmoid(e - S))
    Am = f + (f.round() - f).detach() if rounded else f
    return merge((Am @ vh) * scale)


def torch_ssa_bin(q, k, v, delta, vbar, heads, scale, training):
    qh, kh, vh = split(q, heads), split(k, heads), split(v, heads)
    S = qh @ kh.transpose(-1, -2)
    Bm = SurrogateStep.apply(S - delta.reshape(-1, 1, 1) - 0.5)
    bv = merge(Bm @ vh)
    m = bv.mean(dim=(0, 1, 3)) if training else vbar
    return (bv - m.reshape(-1, 1)) * scale, bv


def torch_sasa(q, k, rows, scale):
    TB = q.shape[:-2]
    qa = F.adaptive_avg_pool1d(q.reshape(-1, *q.shape[-2:]), rows).reshape(*TB, q.shape[-2], rows)
    ka = F.adaptive_avg_pool1d(k.reshape(-1, *k.shape[-2:]), rows).reshape(*TB, k.shape[-2], rows)
    a = (qa * ka).sum(-1)
    return scale * (k * a.unsqueeze(-1))


# --------------------------------------------------------------------------------------------------
# TASA
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau,taw", [(2, 3), (1, 2), (0, 4), (3, 1), (1, 9)])
def test_tasa_vs_torch_and_fd(tau, taw):
    rng = np.random.default_rng(tau * 10 + taw)
    c = rng.standard_normal((6, 2, 3, 4))
    y, cache = A.tasa_forward(c, tau, taw)
    tc = t64(c)
    ty = R.tasa(tc, tau, taw)
    np.testing.assert_array_equal(y, ty.detach().numpy())  # same order of float operations
    dy = rng.standard_normal(y.shape)
    dc, _ = A.tasa_backward(dy, cache)
    close(dc, torch.autograd.grad(ty, tc, torch.tensor(dy))[0].numpy())
    close(dc, num_grad(lambda: float(np.sum(A.tasa_forward(c, tau, taw)[0] * dy)), c),
          rtol=1e-6, atol=1e-7)
    y32, _ = A.tasa_forward(c.astype(np.float32), tau, taw)
    assert y32.dtype == np.float32


# --------------------------------------------------------------------------------------------------
# NSAD
# --------------------------------------------------------------------------------------------------

NSAD_P = {"nsad_a": np.array([1.0, 0.7, 1.3]), "nsad_b": np.array([0.1, -0.05, 0.02]),
          "nsad_c": np.array([1.0, 2.0, 0.5]), "nsad_d": np.array([0.5, 0.3, -0.4]),
          "nsad_e": np.array([2.0, 3.0, 1.0])}
NSAD_U = np.array([1.0, 2.0, 0.0])


def nsad_inputs(seed, heads=3, d=4, N=5):
    rng = np.random.default_rng(seed)
    q, k, v = (spikes(rng, (2, 2, heads * d, N), 0.6) for _ in range(3))
    return rng, q, k, v


def test_nsad_table_is_rounded_f_with_zero_below_u():
    d = 4
    table = A.nsad_table(NSAD_P, NSAD_U, d)
    s = np.arange(d + 1)
    for h in range(3):
        a, b, c, dd, e = (NSAD_P[k][h] for k in A.NSAD_KEYS)
        f = (s > NSAD_U[h]) * (a * s + b * (s - c) ** 2 + dd / (1 + np.exp(s - e)))
        np.testing.assert_array_equal(table[h], np.rint(f))
    assert table.dtype == np.int64 and np.all(table[:, 0] == 0)
    init = A.nsad_table(A.init_nsad_params(2), np.full(2, 2.0), 16)
    s = np.arange(17)
    np.testing.assert_array_equal(init, np.stack([s * (s > 2)] * 2))  # torch model's default
    with pytest.raises(ValueError):
        A.nsad_table(NSAD_P, -NSAD_U - 1, d)


def test_nsad_forward_is_the_torch_models_core():
    """Forward: exactly DS2TA.core's table lookup on the same spikes and table."""
    _, q, k, v = nsad_inputs(0)
    heads, scale = 3, 0.25
    y, _ = A.nsad_forward(q, k, v, NSAD_P, NSAD_U, heads, scale)
    table = torch.from_numpy(A.nsad_table(NSAD_P, NSAD_U, 4))
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    counts = (split(tq, heads) @ split(tk, heads).transpose(-2, -1)).round().long()
    a = table.to(torch.float64)[torch.arange(heads).reshape(-1, 1, 1), counts]
    want = merge((a @ split(tv, heads)) * scale)
    np.testing.assert_array_equal(y, want.numpy())
    assert np.abs(y).max() > 0


def test_nsad_backward_vs_torch_autograd():
    """Straight-through rounding, gradients to a..e through f, to Q, K through df/ds."""
    rng, q, k, v = nsad_inputs(1)
    heads, scale = 3, 0.25
    y, cache = A.nsad_forward(q, k, v, NSAD_P, NSAD_U, heads, scale)
    dy = rng.standard_normal(y.shape)
    (dq, dk, dv), grads = A.nsad_backward(dy, cache)
    tq, tk, tv = t64(q), t64(k), t64(v)
    tp = {key: t64(val) for key, val in NSAD_P.items()}
    ty = torch_nsad(tq, tk, tv, tp, torch.from_numpy(NSAD_U), heads, scale)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    tg = torch.autograd.grad(ty, [tq, tk, tv, *tp.values()], torch.tensor(dy))
    for mine, theirs in zip([dq, dk, dv, *(grads[key] for key in A.NSAD_KEYS)], tg):
        close(mine, theirs.numpy())
    assert set(grads) == set(A.NSAD_KEYS) and all(np.abs(grads[key]).max() > 0 for key in grads)
    assert np.abs(dq).max() > 0 and np.abs(dk).max() > 0


def test_nsad_backward_finite_differences():
    """Against central differences of the smooth map the backward differentiates: A = f(S) with
    the step 1(S > u) held (it passes no gradient) and no rounding (straight through). The
    rounded forward's dv is checked against the rounded map."""
    rng, q, k, v = nsad_inputs(2)
    heads, scale, d = 3, 0.25, 4
    p = {key: val.copy() for key, val in NSAD_P.items()}
    y, cache = A.nsad_forward(q, k, v, p, NSAD_U, heads, scale)
    dy = rng.standard_normal(y.shape)
    (dq, dk, dv), grads = A.nsad_backward(dy, cache)
    mask_counts = np.rint(np.matmul(L.split_heads(q, heads),
                                    L.split_heads(k, heads).swapaxes(-1, -2)))

    def smooth():
        qh, kh, vh = (L.split_heads(x, heads) for x in (q, k, v))
        S = np.matmul(qh, kh.swapaxes(-1, -2))
        a, b, c, dd, e = (p[key].reshape(-1, 1, 1) for key in A.NSAD_KEYS)
        mask = mask_counts > NSAD_U.reshape(-1, 1, 1)
        f = mask * (a * S + b * (S - c) ** 2 + dd / (1 + np.exp(S - e)))
        return float(np.sum(L.merge_heads(np.matmul(f, vh) * scale) * dy))

    for name, arr, mine in (("q", q, dq), ("k", k, dk)):
        close(mine, num_grad(smooth, arr), rtol=1e-6, atol=1e-7)
    for key in A.NSAD_KEYS:
        close(grads[key], num_grad(smooth, p[key]), rtol=1e-6, atol=1e-7)
    rounded = lambda: float(np.sum(A.nsad_forward(q, k, v, p, NSAD_U, heads, scale)[0] * dy))
    close(dv, num_grad(rounded, v), rtol=1e-6, atol=1e-7)
    assert d == q.shape[2] // heads


# --------------------------------------------------------------------------------------------------
# SSA_Bin
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_ssa_bin_vs_torch_autograd(training):
    rng = np.random.default_rng(3)
    heads, scale = 2, 0.25
    q, k, v = (spikes(rng, (3, 2, 8, 6), 0.5) for _ in range(3))
    delta = np.array([0, 1])
    vbar0 = rng.uniform(0, 1, 8)
    vbar = vbar0.copy()
    y, cache = A.ssa_bin_forward(q, k, v, delta, heads, scale, vbar, training, 0.1)
    tq, tk, tv = t64(q), t64(k), t64(v)
    ty, tbv = torch_ssa_bin(tq, tk, tv, torch.from_numpy(delta).double(),
                            torch.from_numpy(vbar0), heads, scale, training)
    close(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    if training:  # running mean of B V over batch, steps and tokens, momentum 0.1
        close(vbar, 0.9 * vbar0 + 0.1 * tbv.detach().mean(dim=(0, 1, 3)).numpy(), rtol=1e-12)
    else:
        np.testing.assert_array_equal(vbar, vbar0)
    # the strict compare against the torch model's SSABin.core formula
    counts = split(torch.from_numpy(q), heads) @ split(torch.from_numpy(k), heads).transpose(-2, -1)
    bm = (counts > torch.from_numpy(delta).double().reshape(-1, 1, 1)).double()
    np.testing.assert_array_equal(cache["B"], bm.numpy())
    dy = rng.standard_normal(y.shape)
    (dq, dk, dv), _ = A.ssa_bin_backward(dy, cache)
    tg = torch.autograd.grad(ty, [tq, tk, tv], torch.tensor(dy))
    for mine, theirs in zip((dq, dk, dv), tg):
        close(mine, theirs.numpy())
    assert np.abs(dq).max() > 0 and np.abs(dv).max() > 0


@pytest.mark.parametrize("training", [True, False])
def test_ssa_bin_finite_differences(training):
    """dq, dk against central differences of the map with the step replaced by its surrogate's
    primitive sigmoid(4 (S - delta - 0.5)); dv against the forward itself (B does not move)."""
    rng = np.random.default_rng(4)
    heads, scale = 2, 0.25
    q, k, v = (spikes(rng, (2, 2, 6, 5), 0.5) for _ in range(3))
    delta = np.array([1, 0])
    vbar = rng.uniform(0, 1, 6)
    y, cache = A.ssa_bin_forward(q, k, v, delta, heads, scale, vbar.copy(), training)
    dy = rng.standard_normal(y.shape)
    (dq, dk, dv), _ = A.ssa_bin_backward(dy, cache)

    def soft():
        qh, kh, vh = (L.split_heads(x, heads) for x in (q, k, v))
        S = np.matmul(qh, kh.swapaxes(-1, -2))
        Bm = 1 / (1 + np.exp(-ALPHA * (S - delta.reshape(-1, 1, 1) - 0.5)))
        bv = L.merge_heads(np.matmul(Bm, vh))
        m = bv.mean(axis=(0, 1, 3)) if training else vbar
        return float(np.sum((bv - m.reshape(-1, 1)) * scale * dy))

    def hard():
        return float(np.sum(A.ssa_bin_forward(q, k, v, delta, heads, scale, vbar.copy(),
                                              training)[0] * dy))

    close(dq, num_grad(soft, q), rtol=1e-6, atol=1e-7)
    close(dk, num_grad(soft, k), rtol=1e-6, atol=1e-7)
    close(dv, num_grad(hard, v), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# SAFormer: SASA and the depthwise conv
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("N,rows", [(16, 4), (16, 2), (9, 3), (7, 3), (16, 1)])
def test_adaptive_pool_matrix_is_torchs(N, rows):
    x = np.random.default_rng(N).standard_normal((3, 5, N))
    P = A.adaptive_pool_matrix(N, rows)
    close(x @ P, F.adaptive_avg_pool1d(torch.from_numpy(x), rows).numpy(), rtol=1e-14)


@pytest.mark.parametrize("rows", [4, 2, 3])
def test_sasa_vs_torch_and_fd(rows):
    rng = np.random.default_rng(rows)
    q, k = spikes(rng, (2, 3, 6, 16)), spikes(rng, (2, 3, 6, 16))
    y, cache = A.sasa_forward(q, k, rows, 0.25)
    tq, tk = t64(q), t64(k)
    ty = torch_sasa(tq, tk, rows, 0.25)
    close(y, ty.detach().numpy(), rtol=1e-13, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    (dq, dk), _ = A.sasa_backward(dy, cache)
    tg = torch.autograd.grad(ty, [tq, tk], torch.tensor(dy))
    close(dq, tg[0].numpy())
    close(dk, tg[1].numpy())
    f = lambda: float(np.sum(A.sasa_forward(q, k, rows, 0.25)[0] * dy))
    close(dq, num_grad(f, q), rtol=1e-6, atol=1e-7)
    close(dk, num_grad(f, k), rtol=1e-6, atol=1e-7)


def test_depthwise_conv_vs_torch_and_fd():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 4, 4))
    w = {"weight": rng.standard_normal((4, 1, 3, 3))}
    y, cache = A.depthwise_conv2d_forward(x, w, 1)
    tx, tw = t64(x), t64(w["weight"])
    ty = F.conv2d(tx, tw, padding=1, groups=4)
    close(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, g = A.depthwise_conv2d_backward(dy, cache)
    tg = torch.autograd.grad(ty, [tx, tw], torch.tensor(dy))
    close(dx, tg[0].numpy())
    close(g["weight"], tg[1].numpy())
    f = lambda: float(np.sum(A.depthwise_conv2d_forward(x, w, 1)[0] * dy))
    close(dx, num_grad(f, x), rtol=1e-6, atol=1e-7)
    close(g["weight"], num_grad(f, w["weight"]), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Whole models against torch autograd
# --------------------------------------------------------------------------------------------------

TINY = {"in_channels": 2, "image_size": 16, "sps_channels": (8, 16), "sps_pool": (True, True),
        "dim": 16, "heads": 2, "depth": 1, "mlp_hidden": 32, "num_classes": 5, "steps": 4}
OPS = ("ds2ta", "ssa_bin", "saformer")
OPTIONS = {"ds2ta": {"taw": 2}, "ssa_bin": {}, "saformer": {"pool_rows": 2}}


def lively(cfg, seed, **options):
    """Torch-like init in float64, BN gamma/beta spread so that every LIF fires now and then,
    NSAD's f moved off its initial line so that every parameter receives gradient."""
    rng = np.random.default_rng(seed + 1000)
    params = M.init_params(cfg, seed, np.float64)
    for bn in M.bn_names(cfg):
        n = params[f"{bn}.weight"].shape[0]
        params[f"{bn}.weight"] = rng.uniform(0.6, 1.6, n)
        params[f"{bn}.bias"] = rng.standard_normal(n) * 0.3 + 0.8
    if cfg.attention == "ds2ta":
        for b in range(cfg.depth):
            for key, val in NSAD_P.items():
                params[f"block.{b}.attn.{key}"] = val[:cfg.heads].copy()
    state = M.init_state(cfg, np.float64, **options)
    if cfg.attention == "ds2ta":
        state["block.0.attn.tau"][:] = [1, 2, 0, 1]
        state["block.0.attn.nsad_u"][:] = [1.0, 0.0]
    return params, state


def _patched_cores(monkeypatch, nsad_params):
    """The torch model's cores with the training-side gradients: NSAD straight through, the
    SSA_Bin compare with the surrogate and a batch-mean vbar (running buffer updated)."""

    def ds2ta_core(self, x_flat, T, B):
        q, k, v = (self._spikes(n, x_flat, T, B) for n in ("q", "k", "v"))
        return torch_nsad(q, k, v, nsad_params, self.nsad_u, self.heads, self.scale)

    def ssa_bin_core(self, x_flat, T, B):
        q, k, v = (self._spikes(n, x_flat, T, B) for n in ("q", "k", "v"))
        y, bv = torch_ssa_bin(q, k, v, self.delta.double(), self.vbar, self.heads, self.scale,
                              self.training)
        if self.training:
            self.vbar.mul_(0.9).add_(0.1 * bv.detach().mean(dim=(0, 1, 3)))
        return y

    monkeypatch.setattr(R.DS2TA, "core", ds2ta_core)
    monkeypatch.setattr(R.SSABin, "core", ssa_bin_core)


@pytest.mark.parametrize("op", OPS)
def test_whole_model_gradients_match_torch_autograd(op, monkeypatch):
    """float64, BN in training mode: logits, loss, EVERY parameter gradient (NSAD's a..e
    included) and the updated buffers equal torch autograd on the torch model with the same
    surrogates."""
    cfg = M.with_config(M.config_by_name("tiny"), **TINY, attention=op)
    rng = np.random.default_rng(7)
    params, state = lively(cfg, 7, **OPTIONS[op])
    frames = rng.integers(0, 3, size=(4, 2, 2, 16, 16)).astype(np.float64)
    labels = rng.integers(0, cfg.num_classes, 2)

    monkeypatch.setattr(R.LIF, "forward", R.surrogate_lif_forward)
    tp = {key: torch.tensor(params[f"block.0.attn.{key}"], requires_grad=True)
          for key in A.NSAD_KEYS} if op == "ds2ta" else {}
    _patched_cores(monkeypatch, tp)
    ref = R.SpikformerRef(R.ref_config(cfg, **OPTIONS[op])).double()
    sd = M.state_dict(params, state)
    missing, unexpected = ref.load_state_dict({k: torch.from_numpy(np.array(v))
                                               for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k == "pos_embed" or "norm" in k for k in missing)
    if op == "ds2ta":
        ref.block[0].attn.nsad_u = torch.from_numpy(state["block.0.attn.nsad_u"])
        assert ref.block[0].attn.taw == 2
    ref.train()

    loss, grads, logits = M.loss_and_grads(params, state, frames, labels, cfg, 0.1)
    tlogits = ref(torch.from_numpy(frames))
    tloss = F.cross_entropy(tlogits, torch.from_numpy(labels), label_smoothing=0.1)
    tloss.backward()
    close(logits, tlogits.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert abs(loss - tloss.item()) <= 1e-9 * abs(loss)
    named = {**dict(ref.named_parameters()),
             **{f"block.0.attn.{k}": v for k, v in tp.items()}}
    assert set(grads) == set(params) == set(named) - {"pos_embed"} - {
        k for k in named if "norm" in k}
    for k, g in grads.items():
        tg = named[k].grad.numpy()
        assert np.abs(tg).max() > 0, k  # every parameter receives gradient
        err = np.abs(g - tg).max() / np.abs(tg).max()
        # (a conv bias right before a training-mode BN has a zero gradient up to rounding)
        assert err < 1e-6 or np.abs(g - tg).max() < 1e-14, (k, err)
    tsd = ref.state_dict()
    for k, v in M.state_dict(params, state).items():
        close(v, tsd[k].numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op", OPS)
def test_state_dict_has_the_spec_keys_and_loads_strictly(op):
    cfg = M.with_config(M.config_by_name("tiny"), attention=op)
    params, state = M.init_params(cfg, 0), M.init_state(cfg)
    assert {k: v.shape for k, v in params.items()} == M.param_shapes(cfg)
    sd = M.state_dict(params, state)
    ref = R.SpikformerRef(R.ref_config(cfg)).state_dict()
    unused = {k for k in ref if k == "pos_embed" or k.startswith("norm.") or ".norm" in k}
    assert set(sd) == set(ref) - unused
    for k, v in sd.items():
        assert tuple(v.shape) == tuple(ref[k].shape), k
    extra = {"ds2ta": {"tau", "nsad_table"}, "ssa_bin": {"delta", "vbar"},
             "saformer": {"dwc_conv.weight", "dwc_bn.weight", "dwc_bn.bias",
                          "dwc_bn.running_mean", "dwc_bn.running_var",
                          "dwc_bn.num_batches_tracked"}}[op]
    assert extra <= {k[len("block.0.attn."):] for k in sd if k.startswith("block.0.attn.")}
    if op == "ds2ta":
        assert sd["block.0.attn.nsad_table"].dtype == np.int64
        assert np.all(sd["block.0.attn.nsad_table"][:, 0] == 0)
    if op == "saformer":
        assert not any(".v_conv" in k or ".v_bn" in k for k in sd)
    for key, val in (("taw", 2), ("pool_rows", 2)):
        owner = "ds2ta" if key == "taw" else "saformer"
        if op != owner:
            with pytest.raises(ValueError, match=key):
                M.init_state(cfg, **{key: val})
    mf = to_model_file(params, state, cfg)
    assert mf.config.attention == op and [a.operator for a in mf.attention] == [op]


# --------------------------------------------------------------------------------------------------
# Trainer evaluation == the engine on the exported file
# --------------------------------------------------------------------------------------------------

S, T = 16, 4


@pytest.fixture(scope="module")
def sets():
    tr = frame_set(embedded_synthetic_set("train"), S, T)
    va = frame_set(embedded_synthetic_set("test"), S, T, limit=4, keep_events=True)
    return tr, va


def _grid(x):
    return np.round(np.asarray(x, np.float64) * 256) / 256


def exactly_foldable(params, state, cfg, shift):
    """Parameters on a 2^-8 grid, every BatchNorm an identity plus its shift raised by ``shift``
    (as tests/test_train_loop.py), SSA_Bin's vbar on the grid too: float64 sums are then exact
    in any order and the float32 file holds the trainer's values."""
    p = {k: _grid(v) for k, v in params.items()}
    st = {k: (np.array(v, copy=True) if not isinstance(v, int) else v) for k, v in state.items()}
    for bn in M.bn_names(cfg):
        st[f"{bn}.running_mean"] = np.zeros_like(st[f"{bn}.running_mean"], np.float64)
        st[f"{bn}.running_var"] = np.full_like(st[f"{bn}.running_var"], 1.0 - M.BN_EPS,
                                               np.float64)
        p[f"{bn}.weight"] = np.ones_like(p[f"{bn}.weight"])
        p[f"{bn}.bias"] = p[f"{bn}.bias"] + shift
    for k, v in list(st.items()):
        if k.endswith(".vbar"):  # a quarter of it: 4 tokens give B V <= 4, the attn LIF fires
            st[k] = _grid(v / 4)
            assert np.abs(st[k]).max() > 0
    return p, st


@pytest.mark.parametrize("op", OPS)
def test_trainer_predictions_equal_the_engine(op, sets, tmp_path):
    """One epoch with the operator's non-default option, export, then: the trainer's float64
    eval forward and the engine (float64) on the exported file agree to the bit, on a model
    whose every layer fires; the file names its operator and parameters."""
    tr, va = sets
    cfg = M.config_by_name("tiny", image_size=S, steps=T, sps_channels=(8, 16, 32), dim=32,
                           heads=2, mlp_hidden=64, split_by="number", attention=op)
    out = tmp_path / "m.h5"
    r = train(cfg, tr, None, epochs=1, batch=16, lr=3e-3, out_path=out, handle_sigint=False,
              **OPTIONS[op])
    mf = load(out)
    assert mf.config.attention == op and mf.attention[0].operator == op
    prov = mf.provenance["training"]["attention"]
    assert prov == {"operator": op, **OPTIONS[op]}
    ap = mf.attention[0].params
    if op == "ds2ta":
        assert int(ap["taw"]) == 2 and ap["tau"].tolist() == [2, 2, 2, 2]
        np.testing.assert_array_equal(ap["nsad_table"], M.state_dict(r.params, r.state)
                                      ["block.0.attn.nsad_table"])
    elif op == "ssa_bin":
        assert ap["delta"].tolist() == [0, 0] and np.abs(ap["vbar"]).max() > 0
        np.testing.assert_array_equal(ap["vbar"], r.state["block.0.attn.vbar"])
    else:
        assert int(ap["pool_rows"]) == 2

    params, state = exactly_foldable(r.params, r.state, cfg, shift=1.0)
    exact = tmp_path / "exact.h5"
    save(exact, to_model_file(params, state, cfg))
    want = predict(params, state, cfg, va)
    engine = Spikformer(load(exact), dtype="float64")
    for i, ev in enumerate(va.events):
        engine.clear_stats()
        got = engine.run(frame_events(ev, T, S, S))
        assert_every_layer_fires(engine.layer_stats())
        np.testing.assert_array_equal(got, want[i])


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def test_cli_train_attention_writes_the_operator(tmp_path):
    out = tmp_path / "cli.h5"
    r = runner.invoke(app, ["train", "--dataset", "dvs-gesture", "--data-dir",
                            str(embedded_synthetic_dir()), "--resolution", "16", "--steps", "4",
                            "--epochs", "1", "--batch", "8", "--limit", "16",
                            "--attention", "ds2ta", "--taw", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    i = runner.invoke(app, ["inspect", str(out), "--json"])
    assert i.exit_code == 0, i.output
    info = json.loads(i.stdout)
    assert info["config"]["attention"] == "ds2ta"
    assert info["provenance"]["training"]["attention"] == {"operator": "ds2ta", "taw": 2}
    assert int(load(out).attention[0].params["taw"]) == 2


@pytest.mark.parametrize("args, needle", [
    (["--attention", "linear"], "unknown attention operator"),
    (["--taw", "2"], "--taw is a ds2ta option"),
    (["--attention", "ssa_bin", "--pool-rows", "2"], "--pool-rows is a saformer option"),
    (["--attention", "saformer", "--pool-rows", "3"], "must divide"),
    (["--attention", "ds2ta", "--taw", "0"], "at least 1"),
])
def test_cli_train_attention_errors(tmp_path, args, needle):
    base = ["train", "--dataset", "dvs-gesture", "--data-dir", str(embedded_synthetic_dir()),
            "--resolution", "16", "--steps", "4", "--epochs", "1", "-o", str(tmp_path / "x.h5")]
    r = runner.invoke(app, base + args)
    assert r.exit_code != 0
    assert needle in one_error_line(r)
