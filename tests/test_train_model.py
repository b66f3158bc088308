"""The numpy Spikformer of eventformer.train.model against torch autograd on tests/torch_reference.py,
AdamW against torch.optim.AdamW, and the exported model file run by the engine."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as R

from eventformer.events import EVENT_DTYPE, dense_frames, frame_events
from eventformer.modelfile.format import load, save
from eventformer.models import Spikformer
from eventformer.train import model as M
from eventformer.train.export import to_model_file
from eventformer.train.optim import AdamW, CosineSchedule, cosine_lr, no_decay_keys

TINY = {"in_channels": 2, "image_size": 16, "sps_channels": (8, 16), "sps_pool": (True, True),
        "dim": 16, "heads": 2, "depth": 1, "mlp_hidden": 64, "num_classes": 5, "steps": 4}
T, B = 4, 2


def lively_params(cfg, seed, dtype=np.float64):
    """Torch-like init, then BN gamma/beta spread so that every LIF fires now and then."""
    rng = np.random.default_rng(seed + 1000)
    params = M.init_params(cfg, seed, dtype)
    for bn in M.bn_names(cfg):
        n = params[f"{bn}.weight"].shape[0]
        params[f"{bn}.weight"] = rng.uniform(0.6, 1.6, n).astype(dtype)
        params[f"{bn}.bias"] = (rng.standard_normal(n) * 0.3 + 0.8).astype(dtype)
    return params


def random_frames(rng, cfg, T=T, B=B):
    return rng.integers(0, 3, size=(T, B, cfg.in_channels, cfg.image_size, cfg.image_size)) \
        .astype(np.float64)


def test_config_by_name_and_shapes():
    for name in ("tiny", "small"):
        cfg = M.config_by_name(name)
        params = M.init_params(cfg, 0)
        state = M.init_state(cfg)
        assert {k: v.shape for k, v in params.items()} == M.param_shapes(cfg)
        ref = R.SpikformerRef(R.ref_config(cfg))
        sd = ref.state_dict()
        merged = M.state_dict(params, state)
        # exactly the official keys, minus the unused pos_embed / norm tensors
        unused = {k for k in sd if k == "pos_embed" or k.startswith("norm.") or ".norm" in k}
        assert set(merged) == set(sd) - unused
        for k, v in merged.items():
            assert tuple(v.shape) == tuple(sd[k].shape), k
    assert M.config_by_name("tiny").grid == 4 and M.config_by_name("small").grid == 8
    with pytest.raises(ValueError):
        M.config_by_name("huge")


def test_init_is_seeded_and_torch_like():
    cfg = M.config_by_name("tiny")
    a, b, c = M.init_params(cfg, 3), M.init_params(cfg, 3), M.init_params(cfg, 4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["head.weight"], c["head.weight"])
    w = a["block.0.mlp.fc1_conv.weight"]
    assert w.dtype == np.float32 and np.abs(w).max() <= 1 / math.sqrt(cfg.dim)
    assert np.all(a["patch_embed.proj_bn.weight"] == 1) and np.all(a["patch_embed.proj_bn.bias"] == 0)


def test_loss_and_every_gradient_match_torch_autograd(monkeypatch):
    """(a) float64, BN in training mode: loss, EVERY parameter gradient and the updated running
    statistics equal torch autograd on SpikformerRef with the same surrogate and detached reset."""
    cfg = M.with_config(M.config_by_name("tiny"), **TINY)
    rng = np.random.default_rng(5)
    params = lively_params(cfg, 5)
    state = M.init_state(cfg, np.float64)
    frames = random_frames(rng, cfg)
    labels = rng.integers(0, cfg.num_classes, B)

    monkeypatch.setattr(R.LIF, "forward", R.surrogate_lif_forward)
    ref = R.SpikformerRef(R.ref_config(cfg)).double()
    missing, unexpected = ref.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in M.state_dict(params, state).items()},
        strict=False)
    assert not unexpected and all(k == "pos_embed" or "norm" in k for k in missing)
    ref.train()

    loss, grads, logits = M.loss_and_grads(params, state, frames, labels, cfg,
                                           label_smoothing=0.1)
    tlogits = ref(torch.from_numpy(frames))
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(labels),
                                              label_smoothing=0.1)
    tloss.backward()
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert abs(loss - tloss.item()) <= 1e-9 * abs(loss)
    named = dict(ref.named_parameters())
    assert set(grads) == set(params)
    alive = 0
    for k, g in grads.items():
        tg = named[k].grad.numpy()
        err = np.abs(g - tg).max() / max(np.abs(tg).max(), 1e-300)
        assert err < 1e-6 or np.abs(g - tg).max() < 1e-14, (k, err)
        alive += np.abs(tg).max() > 0
    assert alive == len(grads)  # every parameter actually receives gradient
    tsd = ref.state_dict()
    for k, v in state.items():
        np.testing.assert_allclose(np.asarray(v), tsd[k].numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=k)


def test_eval_mode_forward_matches_reference_and_leaves_state():
    cfg = M.with_config(M.config_by_name("tiny"), **TINY)
    rng = np.random.default_rng(8)
    params = lively_params(cfg, 8)
    state = M.init_state(cfg, np.float64)
    frames = random_frames(rng, cfg)
    M.forward(params, state, frames, True, cfg)  # running statistics move
    before = {k: np.array(v) for k, v in state.items()}
    logits, _ = M.forward(params, state, frames, False, cfg)
    assert all(np.array_equal(before[k], np.asarray(state[k])) for k in state)
    ref = R.SpikformerRef(R.ref_config(cfg)).double()
    ref.load_state_dict({k: torch.from_numpy(np.array(v))
                         for k, v in M.state_dict(params, state).items()}, strict=False)
    with torch.no_grad():
        want = ref.eval()(torch.from_numpy(frames)).numpy()
    np.testing.assert_allclose(logits, want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError):
        M.forward(params, None, frames, False, cfg)


@pytest.mark.parametrize("weight_decay,exempt", [(1e-2, False), (0.05, True)])
def test_adamw_matches_torch(weight_decay, exempt):
    """(b) a few AdamW steps on the same gradients equal torch.optim.AdamW (with a cosine lr)."""
    rng = np.random.default_rng(1)
    params = {"a.weight": rng.standard_normal((4, 3)), "a.bias": rng.standard_normal(4),
              "b.weight": rng.standard_normal((2, 4, 1))}
    no_decay = no_decay_keys(params) if exempt else set()
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    groups = [{"params": [tparams[k] for k in sorted(params) if k not in no_decay]}]
    if no_decay:
        groups.append({"params": [tparams[k] for k in sorted(no_decay)], "weight_decay": 0.0})
    topt = torch.optim.AdamW(groups, lr=3e-3, weight_decay=weight_decay, foreach=False)
    opt = AdamW(params, lr=3e-3, weight_decay=weight_decay, no_decay=no_decay)
    sched = CosineSchedule(3e-3, total_steps=6, warmup_steps=2, min_lr=1e-4)
    for step in range(6):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        lr = sched(step)
        for gr in topt.param_groups:
            gr["lr"] = lr
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        opt.step(grads, lr=lr)
        for k, v in params.items():
            np.testing.assert_allclose(v, tparams[k].detach().numpy(), rtol=1e-13,
                                       atol=1e-15, err_msg=f"{k} step {step}")


def test_cosine_schedule():
    base, total = 0.1, 20
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.001)
    for step in range(total + 1):
        assert abs(cosine_lr(step, total, base, 0, 0.001) - opt.param_groups[0]["lr"]) < 1e-12
        opt.step()
        tsched.step()
    s = CosineSchedule(1.0, total_steps=10, warmup_steps=4, min_lr=0.0)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0 and abs(s(7) - 0.5) < 1e-12 and s(10) == 0.0 and s(50) == 0.0
    lrs = [s(i) for i in range(4, 11)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    with pytest.raises(ValueError):
        CosineSchedule(1.0, total_steps=3, warmup_steps=5)


def random_events(rng, n, size):
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 1_000_000, n))
    ev["x"] = rng.integers(0, size, n)
    ev["y"] = rng.integers(0, size, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def test_trained_export_runs_in_engine_with_same_logits(tmp_path):
    """(c) a few AdamW steps, export (BN folded), the engine (float64) on framed events gives the
    numpy eval-mode logits on the same dense frames; the float32 file saves and loads."""
    cfg = M.with_config(M.config_by_name("tiny"), **TINY)
    rng = np.random.default_rng(11)
    params = lively_params(cfg, 11)
    state = M.init_state(cfg, np.float64)
    opt = AdamW(params, lr=1e-2, no_decay=no_decay_keys(params))
    samples = [random_events(rng, 1500, cfg.image_size) for _ in range(3)]
    S = cfg.image_size
    frames = np.stack([dense_frames(e, T, S, S) for e in samples], axis=1).astype(np.float64)
    labels = rng.integers(0, cfg.num_classes, len(samples))
    losses = []
    for _ in range(3):
        loss, grads, _ = M.loss_and_grads(params, state, frames, labels, cfg)
        opt.step(grads)
        losses.append(loss)
    assert all(np.isfinite(losses)) and state["patch_embed.proj_bn.num_batches_tracked"] == 3

    want, cache = M.forward(params, state, frames, False, cfg)
    # the comparison is not vacuous: the last LIFs fire in eval mode
    assert all(s.any() for s in cache["spikes"].values()), \
        [k for k, s in cache["spikes"].items() if not s.any()]

    meta = {"steps": 3, "optimizer": "AdamW", "losses": losses}
    mf64 = to_model_file(params, state, cfg, meta, dtype=np.float64)
    engine = Spikformer(mf64, dtype="float64")
    for i, ev in enumerate(samples):
        got = engine.run(frame_events(ev, T, S, S))
        np.testing.assert_allclose(got, want[i], rtol=1e-9, atol=1e-9)

    mf = to_model_file(params, state, cfg, meta)
    assert mf.provenance["training"] == meta and mf.provenance["exported_by"] == "eventformer.train"
    path = tmp_path / "trained.h5"
    save(path, mf)
    back = load(path)
    assert back.provenance["training"] == meta and back.config == cfg
    for name, p in mf64.layers.items():
        if p.weight is not None:
            np.testing.assert_array_equal(back.layers[name].weight, p.weight.astype(np.float32))
            np.testing.assert_array_equal(back.layers[name].bias, p.bias.astype(np.float32))


def test_float32_named_config_smoke():
    """The 'tiny' configuration trains in float32: dtypes kept, a step lowers nothing to NaN."""
    cfg = M.config_by_name("tiny")
    params, state = M.init_params(cfg, 0), M.init_state(cfg)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 3, size=(cfg.steps, 2, 2, cfg.image_size, cfg.image_size))
    loss, grads, logits = M.loss_and_grads(params, state, frames, np.array([1, 7]), cfg)
    assert np.isfinite(loss) and logits.dtype == np.float32 and logits.shape == (2, 11)
    assert all(g.dtype == np.float32 and g.shape == params[k].shape for k, g in grads.items())
    AdamW(params).step(grads)
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in params.values())
    assert state["patch_embed.rpe_bn.running_var"].dtype == np.float32
