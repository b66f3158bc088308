"""Hand-written forward/backward pairs of eventformer.train.layers against torch autograd and
central finite differences (float64), plus float32 smoke checks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from torch_reference import lif_multistep

from eventformer.train import layers as L


def t64(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def num_grad(f, x, eps=1e-6):
    """Central finite differences of scalar f() with respect to array x (modified in place)."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def assert_close(a, b, rtol=1e-9, atol=1e-9):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def fd_check(forward, arrays, dy, analytic, rtol=1e-6, atol=1e-7):
    """Check the analytic gradients of sum(forward() * dy) against finite differences for each array."""
    for name, arr in arrays.items():
        ng = num_grad(lambda: float(np.sum(forward() * dy)), arr)
        assert_close(analytic[name], ng, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# conv2d
# ------------------------------------------------------------------------------------------------

CONV_CASES = [
    # (M, Cin, H, W, Cout, K, stride, padding, bias)
    (2, 3, 7, 6, 4, 3, 1, 1, False),
    (2, 2, 8, 8, 3, 3, 2, 1, True),
    (1, 3, 9, 7, 2, (3, 2), (2, 1), (0, 2), True),
    (3, 4, 5, 5, 5, 1, 1, 0, True),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_vs_torch(case):
    M, C, H, W, O, K, s, p, bias = case
    rng = np.random.default_rng(0)
    kh, kw = K if isinstance(K, tuple) else (K, K)
    x = rng.standard_normal((M, C, H, W))
    w = rng.standard_normal((O, C, kh, kw))
    b = rng.standard_normal(O) if bias else None
    params = {"weight": w, "bias": b}
    y, cache = L.conv2d_forward(x, params, stride=s, padding=p)
    tx, tw = t64(x), t64(w)
    tb = t64(b) if bias else None
    ty = F.conv2d(tx, tw, tb, stride=s, padding=p)
    assert_close(y, ty.detach().numpy())
    dy = rng.standard_normal(y.shape)
    dx, grads = L.conv2d_backward(dy, cache)
    inputs = [tx, tw] + ([tb] if bias else [])
    tg = torch.autograd.grad(ty, inputs, torch.tensor(dy))
    assert_close(dx, tg[0].numpy())
    assert_close(grads["weight"], tg[1].numpy())
    if bias:
        assert_close(grads["bias"], tg[2].numpy())
    else:
        assert "bias" not in grads


def test_conv2d_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 5, 4))
    params = {"weight": rng.standard_normal((3, 2, 3, 3)), "bias": rng.standard_normal(3)}
    y, cache = L.conv2d_forward(x, params, stride=2, padding=1)
    dy = rng.standard_normal(y.shape)
    dx, grads = L.conv2d_backward(dy, cache)

    def fwd():
        return L.conv2d_forward(x, params, stride=2, padding=1)[0]

    fd_check(fwd, {"x": x, "weight": params["weight"], "bias": params["bias"]}, dy,
             {"x": dx, **grads})


def test_conv2d_float32():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y, cache = L.conv2d_forward(x, {"weight": w}, 1, 1)
    assert y.dtype == np.float32
    dx, g = L.conv2d_backward(np.ones_like(y), cache)
    assert dx.dtype == np.float32 and g["weight"].dtype == np.float32
    ty = F.conv2d(torch.tensor(x), torch.tensor(w), padding=1)
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# BatchNorm
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4, 5, 3), (8, 5, 7)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_vs_torch(shape, training):
    rng = np.random.default_rng(3)
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    state = L.init_bn_state(C, np.float64)
    state["running_mean"][:] = rng.standard_normal(C)
    state["running_var"][:] = rng.uniform(0.5, 2, C)
    rm0, rv0 = state["running_mean"].copy(), state["running_var"].copy()
    y, cache = L.batchnorm_forward(x, {"weight": gamma, "bias": beta}, state, training=training)
    tx, tg, tb = t64(x), t64(gamma), t64(beta)
    trm, trv = torch.tensor(rm0), torch.tensor(rv0)
    ty = F.batch_norm(tx, trm, trv, tg, tb, training=training, momentum=0.1, eps=1e-5)
    assert_close(y, ty.detach().numpy())
    assert_close(state["running_mean"], trm.numpy(), rtol=1e-12, atol=1e-12)
    assert_close(state["running_var"], trv.numpy(), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(shape)
    dx, grads = L.batchnorm_backward(dy, cache)
    g = torch.autograd.grad(ty, [tx, tg, tb], torch.tensor(dy))
    assert_close(dx, g[0].numpy())
    assert_close(grads["weight"], g[1].numpy())
    assert_close(grads["bias"], g[2].numpy())


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_finite_differences(training):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 2, 3))
    params = {"weight": rng.standard_normal(3), "bias": rng.standard_normal(3)}
    state = L.init_bn_state(3, np.float64)
    state["running_var"][:] = 1.7

    def fwd():
        return L.batchnorm_forward(x, params, None if training else state, training=training)[0]

    y, cache = L.batchnorm_forward(x, params, None if training else state, training=training)
    dy = rng.standard_normal(y.shape)
    dx, grads = L.batchnorm_backward(dy, cache)
    fd_check(fwd, {"x": x, "weight": params["weight"], "bias": params["bias"]}, dy,
             {"x": dx, **grads})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_running_stats_match_torch_modules(dtype):
    """A few training-mode calls on [T*B, C, H, W] and [T*B, C, N]: running stats == torch's."""
    rng = np.random.default_rng(5)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    for C, shape, mod in [(4, (3 * 2, 4, 5, 5), torch.nn.BatchNorm2d),
                          (6, (3 * 2, 6, 16), torch.nn.BatchNorm1d)]:
        bn = mod(C).to(tdt)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor(rng.standard_normal(C)))
            bn.bias.copy_(torch.tensor(rng.standard_normal(C)))
        params = {"weight": bn.weight.detach().numpy().copy(), "bias": bn.bias.detach().numpy().copy()}
        state = L.init_bn_state(C, dtype)
        bn.train()
        for step in range(4):
            x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
            y, _ = L.batchnorm_forward(x, params, state, training=True)
            ty = bn(torch.tensor(x))
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(y, ty.detach().numpy(), rtol=tol, atol=tol)
            assert y.dtype == dtype and state["running_mean"].dtype == dtype
        np.testing.assert_allclose(state["running_mean"], bn.running_mean.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(state["running_var"], bn.running_var.numpy(), rtol=tol, atol=tol)
        assert state["num_batches_tracked"] == int(bn.num_batches_tracked) == 4
        bn.eval()
        x = rng.standard_normal(shape).astype(dtype)
        y, _ = L.batchnorm_forward(x, params, state, training=False)
        np.testing.assert_allclose(y, bn(torch.tensor(x)).detach().numpy(), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------
# MaxPool
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 1, 1), ((3, 2), (1, 2), (1, 0))])
@pytest.mark.parametrize("data", ["random", "spikes"])
def test_maxpool_vs_torch(k, s, p, data):
    rng = np.random.default_rng(6)
    shape = (2, 3, 9, 8)
    if data == "spikes":  # many ties: the first maximum in window order takes the gradient
        x = (rng.random(shape) < 0.3).astype(np.float64)
    else:
        x = rng.standard_normal(shape)
    y, cache = L.maxpool2d_forward(x, k, s, p)
    tx = t64(x)
    ty = F.max_pool2d(tx, k, s, p)
    assert_close(y, ty.detach().numpy(), rtol=0, atol=0)
    dy = rng.standard_normal(y.shape)
    dx, grads = L.maxpool2d_backward(dy, cache)
    (g,) = torch.autograd.grad(ty, [tx], torch.tensor(dy))
    assert_close(dx, g.numpy(), rtol=1e-14, atol=1e-14)
    assert grads == {}
    # torch's argmax (indices) equals ours on the unpadded map
    _, idx = F.max_pool2d(tx, k, s, p, return_indices=True)
    x32 = x.astype(np.float32)
    y32, c32 = L.maxpool2d_forward(x32, k, s, p)
    assert y32.dtype == np.float32
    dx32, _ = L.maxpool2d_backward(np.ones_like(y32), c32)
    flat = idx.numpy().reshape(shape[0] * shape[1], -1)
    ref = np.zeros((shape[0] * shape[1], shape[2] * shape[3]))
    for r in range(flat.shape[0]):
        np.add.at(ref[r], flat[r], 1.0)
    assert_close(dx32.reshape(ref.shape), ref, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Linear / conv1x1
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_linear_vs_torch_and_fd(bias):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 5))
    params = {"weight": rng.standard_normal((6, 5))}
    if bias:
        params["bias"] = rng.standard_normal(6)
    y, cache = L.linear_forward(x, params)
    tx, tw = t64(x), t64(params["weight"])
    tb = t64(params["bias"]) if bias else None
    ty = F.linear(tx, tw, tb)
    assert_close(y, ty.detach().numpy())
    dy = rng.standard_normal(y.shape)
    dx, grads = L.linear_backward(dy, cache)
    g = torch.autograd.grad(ty, [tx, tw] + ([tb] if bias else []), torch.tensor(dy))
    assert_close(dx, g[0].numpy())
    assert_close(grads["weight"], g[1].numpy())
    if bias:
        assert_close(grads["bias"], g[2].numpy())
    fd_check(lambda: L.linear_forward(x, params)[0], {"x": x, **params}, dy, {"x": dx, **grads})


@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_vs_torch_and_fd(bias):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 5, 7))  # [T*B, C, N]
    params = {"weight": rng.standard_normal((3, 5, 1))}
    if bias:
        params["bias"] = rng.standard_normal(3)
    y, cache = L.conv1x1_forward(x, params)
    tx, tw = t64(x), t64(params["weight"])
    tb = t64(params["bias"]) if bias else None
    ty = F.conv1d(tx, tw, tb)
    assert_close(y, ty.detach().numpy())
    dy = rng.standard_normal(y.shape)
    dx, grads = L.conv1x1_backward(dy, cache)
    assert grads["weight"].shape == (3, 5, 1)
    g = torch.autograd.grad(ty, [tx, tw] + ([tb] if bias else []), torch.tensor(dy))
    assert_close(dx, g[0].numpy())
    assert_close(grads["weight"], g[1].numpy())
    if bias:
        assert_close(grads["bias"], g[2].numpy())
    fd_check(lambda: L.conv1x1_forward(x, params)[0], {"x": x, **params}, dy, {"x": dx, **grads})


# ------------------------------------------------------------------------------------------------
# LIF
# ------------------------------------------------------------------------------------------------


class SigmoidSpike(torch.autograd.Function):
    """Heaviside(x >= 0) forward, SpikingJelly sigmoid surrogate backward."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * x)
        return g * ctx.alpha * sg * (1 - sg), None


def torch_lif(x, tau=2.0, theta=1.0, alpha=4.0, hard=True):
    """Multi-step LIF with surrogate gradient and detached reset (SpikingJelly detach_reset=True)."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) * (1.0 / tau)
        s = SigmoidSpike.apply(h - theta, alpha)
        if hard:
            v = h * (1 - s.detach())
        else:
            v = h - s.detach() * theta
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("tau,theta,hard", [(2.0, 1.0, True), (2.0, 0.5, True), (3.0, 1.0, True),
                                            (2.0, 1.0, False)])
def test_lif_surrogate_vs_torch(tau, theta, hard):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 3, 4, 5)) * 1.5 + 0.8  # [T, B, C, N]
    s, cache = L.lif_forward(x, tau=tau, theta=theta, v_reset=0.0 if hard else None)
    tx = t64(x)
    ts = torch_lif(tx, tau, theta, 4.0, hard)
    assert_close(s, ts.detach().numpy(), rtol=0, atol=0)
    assert 0.05 < s.mean() < 0.95  # both branches exercised
    ds = rng.standard_normal(s.shape)
    dx, grads = L.lif_backward(ds, cache)
    (g,) = torch.autograd.grad(ts, [tx], torch.tensor(ds))
    assert_close(dx, g.numpy(), rtol=1e-12, atol=1e-13)
    assert grads == {}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lif_forward_matches_reference_bits(dtype):
    """Forward spikes equal torch_reference.lif_multistep (SPEC §1) in float32 and float64."""
    rng = np.random.default_rng(10)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    for theta in (1.0, 0.5):
        # values on a fine grid make many membranes land exactly on threshold
        x = (rng.integers(-8, 24, size=(10, 2, 16, 16)) / 8).astype(dtype)
        s, _ = L.lif_forward(x, tau=2.0, theta=theta)
        ref = lif_multistep(torch.tensor(x, dtype=tdt), 2.0, theta).numpy()
        assert s.dtype == dtype
        np.testing.assert_array_equal(s, ref)


def test_lif_float32_backward_close_to_torch():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((6, 2, 10)) + 0.7).astype(np.float32)
    s, cache = L.lif_forward(x)
    ds = rng.standard_normal(s.shape).astype(np.float32)
    dx, _ = L.lif_backward(ds, cache)
    assert dx.dtype == np.float32
    tx = torch.tensor(x, requires_grad=True)
    ts = torch_lif(tx)
    np.testing.assert_array_equal(s, ts.detach().numpy())
    (g,) = torch.autograd.grad(ts, [tx], torch.tensor(ds))
    np.testing.assert_allclose(dx, g.numpy(), rtol=1e-5, atol=1e-6)


def test_lif_bptt_reaches_earlier_steps():
    """A gradient only on the last step's spikes reaches earlier inputs through the membrane,
    and is cut at steps where the neuron fired (hard reset, detached)."""
    x = np.array([[0.4], [0.4], [3.0], [0.4], [0.4]])  # fires at t = 2 only
    s, cache = L.lif_forward(x)
    assert s[:, 0].tolist() == [0, 0, 1, 0, 0]
    ds = np.zeros_like(x)
    ds[4] = 1.0
    dx, _ = L.lif_backward(ds, cache)
    assert dx[4, 0] > 0 and dx[3, 0] > 0
    assert dx[2, 0] == 0 and dx[1, 0] == 0 and dx[0, 0] == 0


# ------------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------------


def test_attention_core_vs_torch_and_fd():
    rng = np.random.default_rng(12)
    shape = (2, 2, 3, 5, 4)  # [T, B, heads, N, d]
    q, k, v = (rng.standard_normal(shape) for _ in range(3))
    y, cache = L.attention_core_forward(q, k, v, 0.25)
    tq, tk, tv = t64(q), t64(k), t64(v)
    ty = ((tq @ tk.transpose(-2, -1)) * 0.25) @ tv
    assert_close(y, ty.detach().numpy())
    dy = rng.standard_normal(shape)
    (dq, dk, dv), _grads = L.attention_core_backward(dy, cache)
    g = torch.autograd.grad(ty, [tq, tk, tv], torch.tensor(dy))
    for a, b in zip((dq, dk, dv), g):
        assert_close(a, b.numpy())
    fd_check(lambda: L.attention_core_forward(q, k, v, 0.25)[0], {"q": q, "k": k, "v": v}, dy,
             {"q": dq, "k": dk, "v": dv})


def test_ssa_attention_heads_layout_vs_reference():
    """Channel-major SSA (split heads c = d*h + j, core, merge) equals the reference's reshapes."""
    rng = np.random.default_rng(13)
    T, B, C, N, heads = 2, 2, 8, 6, 2
    q, k, v = ((rng.random((T, B, C, N)) < 0.4).astype(np.float64) for _ in range(3))
    y, cache = L.ssa_attention_forward(q, k, v, heads, 0.125)

    def split(t):  # exactly SSA._qkv's reshape
        return t.transpose(-1, -2).reshape(T, B, N, heads, C // heads).permute(0, 1, 3, 2, 4)

    tq, tk, tv = t64(q), t64(k), t64(v)
    ty = ((split(tq) @ split(tk).transpose(-2, -1)) * 0.125) @ split(tv)
    ty = ty.transpose(3, 4).reshape(T, B, C, N)
    assert_close(y, ty.detach().numpy(), rtol=0, atol=0)
    dy = rng.standard_normal(y.shape)
    (dq, dk, dv), _ = L.ssa_attention_backward(dy, cache)
    g = torch.autograd.grad(ty, [tq, tk, tv], torch.tensor(dy))
    for a, b in zip((dq, dk, dv), g):
        assert_close(a, b.numpy())
    assert_close(L.merge_heads(L.split_heads(q, heads)), q, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Residual, readout, loss
# ------------------------------------------------------------------------------------------------


def test_add_and_mean_readout_vs_torch():
    rng = np.random.default_rng(14)
    a, b = rng.standard_normal((3, 2, 4, 5)), rng.standard_normal((3, 2, 4, 5))
    y, c = L.add_forward(a, b)
    (da, db), _ = L.add_backward(np.ones_like(y), c)
    assert_close(y, a + b, rtol=0, atol=0)
    assert_close(da, 1.0) and assert_close(db, 1.0)
    x = rng.standard_normal((3, 2, 4, 5))  # [T, B, D, N]
    m, c = L.mean_tokens_steps_forward(x)
    tx = t64(x)
    tm = tx.mean(3).mean(0)
    assert_close(m, tm.detach().numpy())
    dm = rng.standard_normal(m.shape)
    dx, _ = L.mean_tokens_steps_backward(dm, c)
    (g,) = torch.autograd.grad(tm, [tx], torch.tensor(dm))
    assert_close(dx, g.numpy())
    fd_check(lambda: L.mean_tokens_steps_forward(x)[0], {"x": x}, dm, {"x": dx})


def test_head_linear_fd():
    """The classifier head: readout -> Linear, chained, against finite differences."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((3, 2, 4, 5))
    params = {"weight": rng.standard_normal((6, 4)), "bias": rng.standard_normal(6)}

    def fwd():
        return L.linear_forward(L.mean_tokens_steps_forward(x)[0], params)[0]

    m, c1 = L.mean_tokens_steps_forward(x)
    y, c2 = L.linear_forward(m, params)
    dy = rng.standard_normal(y.shape)
    dm, grads = L.linear_backward(dy, c2)
    dx, _ = L.mean_tokens_steps_backward(dm, c1)
    fd_check(fwd, {"x": x, **params}, dy, {"x": dx, **grads})


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_cross_entropy_vs_torch_and_fd(smoothing):
    rng = np.random.default_rng(16)
    logits = rng.standard_normal((5, 7)) * 3
    labels = rng.integers(0, 7, 5)
    loss, dlogits = L.cross_entropy(logits, labels, smoothing)
    tl = t64(logits)
    tloss = F.cross_entropy(tl, torch.tensor(labels), label_smoothing=smoothing)
    assert abs(loss - float(tloss.detach())) < 1e-12
    (g,) = torch.autograd.grad(tloss, [tl])
    assert_close(dlogits, g.numpy())
    ng = num_grad(lambda: L.cross_entropy(logits, labels, smoothing)[0], logits)
    assert_close(dlogits, ng, rtol=1e-6, atol=1e-8)
    l32, d32 = L.cross_entropy(logits.astype(np.float32), labels, smoothing)
    assert d32.dtype == np.float32 and abs(l32 - loss) < 1e-5


def test_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError):
        L.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


# ------------------------------------------------------------------------------------------------
# Composition: a tiny Spikformer-shaped chain, every parameter gradient against torch autograd
# ------------------------------------------------------------------------------------------------


def test_chain_sps_ssa_head_vs_torch():
    """conv -> BN(train, time folded) -> LIF -> maxpool -> tokens -> q/k/v conv1x1 -> BN1d -> LIF ->
    SSA -> attn LIF (theta 0.5) -> residual -> mean -> Linear -> CE, chained by hand, equals torch
    autograd (same surrogate, detached reset) for the loss and every parameter gradient."""
    rng = np.random.default_rng(17)
    T, B, Cin, S, D, heads, K = 4, 2, 2, 8, 8, 2, 3
    x = rng.integers(0, 3, size=(T, B, Cin, S, S)).astype(np.float64)
    labels = rng.integers(0, K, B)
    P = {
        "conv.weight": rng.standard_normal((D, Cin, 3, 3)),
        "bn.weight": rng.uniform(0.5, 1.5, D), "bn.bias": rng.standard_normal(D) * 0.3 + 0.5,
        "head.weight": rng.standard_normal((K, D)), "head.bias": rng.standard_normal(K),
    }
    for n in "qkv":
        P[f"{n}.weight"] = rng.standard_normal((D, D, 1))
        P[f"{n}bn.weight"] = rng.uniform(0.5, 1.5, D)
        P[f"{n}bn.bias"] = rng.standard_normal(D) * 0.3 + 0.8

    def p(prefix):
        return {k.split(".", 1)[1]: v for k, v in P.items() if k.split(".", 1)[0] == prefix}

    # ---- numpy forward
    c1 = L.conv2d_forward(x.reshape(T * B, Cin, S, S), p("conv"), 1, 1)
    b1 = L.batchnorm_forward(c1[0], p("bn"), None, training=True)
    l1 = L.lif_forward(b1[0].reshape(T, B, D, S, S))
    m1 = L.maxpool2d_forward(l1[0].reshape(T * B, D, S, S), 3, 2, 1)
    tok = m1[0].reshape(T * B, D, -1)  # [T*B, D, N]
    N = tok.shape[-1]
    qkv = {}
    for n in "qkv":
        c = L.conv1x1_forward(tok, p(n))
        b = L.batchnorm_forward(c[0], p(f"{n}bn"), None, training=True)
        lf = L.lif_forward(b[0].reshape(T, B, D, N))
        qkv[n] = (c, b, lf)
    att = L.ssa_attention_forward(*(qkv[n][2][0] for n in "qkv"), heads, 0.25)
    al = L.lif_forward(att[0], theta=0.5)
    res = L.add_forward(tok.reshape(T, B, D, N), al[0])
    mean = L.mean_tokens_steps_forward(res[0])
    head = L.linear_forward(mean[0], p("head"))
    loss, dlogits = L.cross_entropy(head[0], labels, 0.1)
    assert 0.05 < l1[0].mean() < 0.95 and al[0].any()

    # ---- numpy backward
    G = {}
    dm, g = L.linear_backward(dlogits, head[1])
    G.update({f"head.{k}": v for k, v in g.items()})
    dres, _ = L.mean_tokens_steps_backward(dm, mean[1])
    (dtok_res, dal), _ = L.add_backward(dres, res[1])
    datt, _ = L.lif_backward(dal, al[1])
    dqkv, _ = L.ssa_attention_backward(datt, att[1])
    dtok = dtok_res.reshape(T * B, D, N).copy()
    for n, ds in zip("qkv", dqkv):
        c, b, lf = qkv[n]
        db_, _ = L.lif_backward(ds, lf[1])
        dc, g = L.batchnorm_backward(db_.reshape(T * B, D, N), b[1])
        G.update({f"{n}bn.{k}": v for k, v in g.items()})
        dt_, g = L.conv1x1_backward(dc, c[1])
        G.update({f"{n}.{k}": v for k, v in g.items()})
        dtok += dt_
    dl1, _ = L.maxpool2d_backward(dtok.reshape(m1[0].shape), m1[1])
    db1, _ = L.lif_backward(dl1.reshape(T, B, D, S, S), l1[1])
    dc1, g = L.batchnorm_backward(db1.reshape(T * B, D, S, S), b1[1])
    G.update({f"bn.{k}": v for k, v in g.items()})
    _, g = L.conv2d_backward(dc1, c1[1])
    G.update({f"conv.{k}": v for k, v in g.items()})

    # ---- torch
    TP = {k: t64(v) for k, v in P.items()}
    tx = torch.tensor(x).flatten(0, 1)
    y = F.conv2d(tx, TP["conv.weight"], padding=1)
    y = F.batch_norm(y, None, None, TP["bn.weight"], TP["bn.bias"], training=True)
    y = torch_lif(y.reshape(T, B, D, S, S)).flatten(0, 1)
    ttok = F.max_pool2d(y, 3, 2, 1).flatten(-2)
    outs = []
    for n in "qkv":
        z = F.conv1d(ttok, TP[f"{n}.weight"])
        z = F.batch_norm(z, None, None, TP[f"{n}bn.weight"], TP[f"{n}bn.bias"], training=True)
        z = torch_lif(z.reshape(T, B, D, N))
        outs.append(z.transpose(-1, -2).reshape(T, B, N, heads, D // heads).permute(0, 1, 3, 2, 4))
    tq, tk, tv = outs
    ta = (((tq @ tk.transpose(-2, -1)) * 0.25) @ tv).transpose(3, 4).reshape(T, B, D, N)
    ta = torch_lif(ta, theta=0.5)
    tr = ttok.reshape(T, B, D, N) + ta
    tlogits = F.linear(tr.mean(3).mean(0), TP["head.weight"], TP["head.bias"])
    tloss = F.cross_entropy(tlogits, torch.tensor(labels), label_smoothing=0.1)
    assert abs(loss - float(tloss.detach())) < 1e-10
    names = sorted(P)
    tg = torch.autograd.grad(tloss, [TP[k] for k in names])
    assert sorted(G) == names
    for k, g in zip(names, tg):
        assert_close(G[k], g.numpy(), rtol=1e-8, atol=1e-10)
        assert np.abs(G[k]).max() > 0, k  # every parameter actually receives gradient
