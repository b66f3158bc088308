"""The numpy trainer's Spike-driven Transformer (v1) and QKFormer (eventformer.train.model run from
their model descriptions) against eventformer.torch_successors: exactly the official keys; the
eval-mode forward bit-exact on every LIF's spikes in float64, logits to 1e-9; in training mode the
loss, every parameter's gradient and the running statistics against torch autograd with the
trainer's surrogate (sigmoid alpha 4, reset detached); a short training run learns; ``eventformer
train --model sdt-tiny / qkformer-tiny`` writes an official-layout state dict that the reference
loads strictly."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as R
from conftest import one_error_line
from eventformer_cli.main import app
from typer.testing import CliRunner

from eventformer import torch_successors as TS
from eventformer.datasets import embedded_synthetic_dir, embedded_synthetic_set
from eventformer.train import model as M
from eventformer.train.data import frame_set
from eventformer.train.export import model_file_from_state_dict, sidecar_path
from eventformer.train.loop import train

T, B = 4, 2
runner = CliRunner()

#: (the trainer's named configuration with its overrides, the reference's configuration): small
#: widths; two blocks where a stage's output feeds another block; SDT with mlp_ratio 1 takes the
#: official ``res`` branch of its MLP.
CASES = {
    "sdt": (("sdt-tiny", dict(image_size=32, steps=T, dim=32, heads=4, depth=2, num_classes=5)),
            TS.SDTConfig(image_size=32, dim=32, heads=4, depth=2, steps=T, pooling_stat="0111",
                         num_classes=5)),
    "sdt-res": (("sdt-tiny", dict(image_size=32, steps=T, dim=32, heads=2, depth=1, mlp_ratio=1,
                                  pooling_stat="1111", num_classes=5)),
                TS.SDTConfig(image_size=32, dim=32, heads=2, depth=1, mlp_ratio=1, steps=T,
                             pooling_stat="1111", num_classes=5)),
    "sdt-erode": (("sdt-tiny", dict(image_size=32, steps=T, dim=32, heads=4, depth=1,
                                    num_classes=5)),
                  TS.SDTConfig(image_size=32, dim=32, heads=4, depth=1, steps=T,
                               pooling_stat="0111", dvs=True, num_classes=5)),
    "qkformer": (("qkformer-tiny", dict(image_size=64, steps=T, dim=32, heads=2, stage1_depth=1,
                                        stage2_depth=2, num_classes=5)),
                 TS.QKFormerConfig(image_size=64, dim=32, heads=2, stage1_depth=1,
                                   stage2_depth=2, steps=T, num_classes=5)),
}


def case(name, seed=0):
    """The trainer's config, float64 params / state from the reference's calibrated weights
    (every LIF fires on the frames), those frames, and the reference in float64 holding the same
    weights."""
    (model, overrides), tcfg = CASES[name]
    cfg = M.config_by_name(model, **overrides)
    frames = TS.dvs_like_frames(T, B, 2, tcfg.image_size, seed=seed)
    sd = TS.random_successor_state_dict(tcfg, seed=seed, frames=frames)
    shapes = M.param_shapes(cfg)
    params = {k: sd[k].double().numpy().copy() for k in shapes}
    state = {k: (int(v) if k.endswith("num_batches_tracked") else v.double().numpy().copy())
             for k, v in sd.items() if k not in shapes}
    # what a state dict cannot hold: SDT's Erode (the reference's dvs mode) is the trainer's option
    erode = int(tcfg.dvs) if name.startswith("sdt") else None
    state.update({k: v for k, v in M.init_state(cfg, erode=erode).items()
                  if k.endswith(".erode")})
    ref = (TS.SpikeDrivenTransformerRef if name.startswith("sdt") else TS.QKFormerRef)(tcfg)
    ref.double().load_state_dict({k: v.double() for k, v in sd.items()}, strict=True)
    return cfg, params, state, frames.double().numpy(), ref


@pytest.mark.parametrize("name", list(CASES))
def test_parameters_and_state_are_the_official_keys(name):
    (model, overrides), tcfg = CASES[name]
    cfg = M.config_by_name(model, **overrides)
    params, state = M.init_params(cfg, 0), M.init_state(cfg)
    assert {k: v.shape for k, v in params.items()} == M.param_shapes(cfg)
    want = {k: tuple(v.shape) for k, v in TS._build(tcfg).state_dict().items()}
    merged = M.state_dict(params, state)
    assert list(merged) == [k for k in merged if k in want] and \
        {k: tuple(v.shape) for k, v in merged.items()} == want
    # SDT's talking_heads is carried (the checkpoint holds it) but never trained
    talking = [k for k in want if ".talking_heads." in k]
    assert bool(talking) == name.startswith("sdt")
    assert not set(talking) & set(params) and set(talking) <= set(state)


def test_named_configurations_and_their_grids():
    sdt, qk = M.config_by_name("sdt-tiny"), M.config_by_name("qkformer-tiny")
    assert (sdt.image_size, sdt.steps, sdt.attention) == (32, 8, "sdsa")
    assert [g.grid for g in M._placement(sdt).geometry] == [4]
    # QKFormer's three pools and its patch merging: 32 -> 4x4 tokens at width 32 -> 2x2 at 64
    assert [(g.grid, g.dim) for g in M._placement(qk).geometry] == [(4, 32), (2, 64)]
    assert M.input_halvings("sdt-tiny") == 3 and M.input_halvings("qkformer-tiny") == 4
    with pytest.raises(ValueError, match="its layout's"):
        M.config_by_name("qkformer-tiny", attention="ds2ta")
    # the CLI's --help lists exactly these models with these descriptions
    from eventformer_cli import train as cli_train

    assert cli_train._MODELS == M.MODEL_NAMES


@pytest.mark.parametrize("name", list(CASES))
def test_eval_forward_is_the_references_bit_for_bit(name):
    cfg, params, state, frames, ref = case(name)
    with torch.no_grad():
        want, spikes = ref.eval()(torch.from_numpy(frames), record=True)
    before = {k: np.array(v) for k, v in state.items()}
    logits, cache = M.forward(params, state, frames, False, cfg)
    assert all(np.array_equal(before[k], np.asarray(state[k])) for k in state)
    assert list(cache["spikes"]) == list(spikes)  # every LIF, in forward order
    silent = [k for k, s in spikes.items() if not s.any()]
    assert not silent, f"silent LIFs (the comparison would be vacuous): {silent}"
    for k, s in spikes.items():
        np.testing.assert_array_equal(cache["spikes"][k].reshape(s.shape), s.numpy(), err_msg=k)
    np.testing.assert_allclose(logits, want.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_training_mode_loss_gradients_and_statistics_match_torch_autograd(name, monkeypatch):
    cfg, params, state, frames, ref = case(name, seed=1)
    labels = np.array([1, 3])
    monkeypatch.setattr(R.LIF, "forward", R.surrogate_lif_forward)
    ref.train()
    tlogits = ref(torch.from_numpy(frames))
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(labels),
                                              label_smoothing=0.1)
    tloss.backward()
    loss, grads, logits = M.loss_and_grads(params, state, frames, labels, cfg, 0.1)
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert abs(loss - tloss.item()) <= 1e-9 * abs(loss)
    named = {k: p for k, p in ref.named_parameters() if ".talking_heads." not in k}
    assert set(grads) == set(named) == set(params)
    for k, g in grads.items():
        tg = named[k].grad.numpy()
        if k.endswith("_conv.bias"):  # a training-mode BatchNorm follows: zero up to rounding
            np.testing.assert_allclose(g, tg, atol=1e-14, err_msg=k)
            continue
        assert np.abs(tg).max() > 1e-8, k  # every other parameter is reached
        np.testing.assert_allclose(g, tg, rtol=1e-7, atol=1e-9 * np.abs(tg).max(), err_msg=k)
    tsd = ref.state_dict()
    for k, v in state.items():
        if k.endswith(".erode"):  # a trainer option, not a tensor
            continue
        if k.endswith("num_batches_tracked"):
            assert v == int(tsd[k]) == 1, k
        else:
            np.testing.assert_allclose(v, tsd[k].numpy(), rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.fixture(scope="module")
def gestures():
    """The embedded synthetic gestures at 32x32, T 4 (train: user 1, validation: user 2)."""
    return (frame_set(embedded_synthetic_set("train"), 32, T),
            frame_set(embedded_synthetic_set("test"), 32, T, limit=8))


@pytest.mark.parametrize("model", ["sdt-tiny", "qkformer-tiny"])
def test_a_short_training_run_learns(model, gestures):
    tr, va = gestures
    cfg = M.config_by_name(model, steps=T, dim=32, heads=4)
    r = train(cfg, tr, va, epochs=12, batch=8, lr=1e-2, seed=0, max_shift=1,
              label_smoothing=0.0, handle_sigint=False)
    losses = [e["train_loss"] for e in r.history]
    assert losses[-1] < losses[0] - 0.5, losses
    # all 11 classes: chance is 9 %
    assert max(e["train_accuracy"] for e in r.history[-3:]) >= 0.35, r.history
    assert all(np.all(np.isfinite(v)) for v in r.params.values())
    # talking_heads rode along untouched
    fresh = M.init_state(cfg)
    for k, v in r.state.items():
        if ".talking_heads." in k:
            np.testing.assert_array_equal(v, fresh[k])


@pytest.mark.parametrize("model, overrides", [
    ("sdt-tiny", {"image_size": 32, "steps": 2, "pooling_stat": "0111", "dvs": False}),
    ("qkformer-tiny", {"image_size": 32, "steps": 2, "heads": 4}),
])
def test_cli_writes_an_official_state_dict(model, overrides, tmp_path):
    base = ["train", "--model", model, "--dataset", "dvs-gesture", "--data-dir",
            str(embedded_synthetic_dir()), "--steps", "2", "--epochs", "1", "--batch", "8",
            "--limit", "8"]
    out = tmp_path / f"{model}.npz"
    r = runner.invoke(app, base + ["-o", str(out)])
    assert r.exit_code == 0, r.output
    assert sidecar_path(out).is_file()
    with np.load(out) as z:
        sd = {k: torch.from_numpy(z[k]) for k in z.files}
    ref = TS.load_official_successor(sd, **overrides)  # strict: every key, every shape
    assert ref.cfg.dim == 64 and ref.cfg.num_classes == 11
    # a model file: written once the builder takes the layout, until then refused in one
    # sentence before any data is read
    h5 = tmp_path / f"{model}.h5"
    try:
        model_file_from_state_dict(out)
    except Exception as exc:  # noqa: BLE001  (the builder's refusal)
        r = runner.invoke(app, base + ["-o", str(h5)])
        assert ".npz" in one_error_line(r) and not h5.exists(), str(exc)
    else:
        r = runner.invoke(app, base + ["-o", str(h5)])
        assert r.exit_code == 0 and h5.is_file(), r.output


def test_cli_refuses_what_a_successor_cannot_take(tmp_path):
    base = ["train", "--dataset", "dvs-gesture", "--data-dir", str(embedded_synthetic_dir()),
            "-o", str(tmp_path / "x.npz")]
    r = runner.invoke(app, base + ["--model", "sdt-tiny", "--attention", "ds2ta"])
    assert "has its own" in one_error_line(r)
    r = runner.invoke(app, base + ["--model", "qkformer-tiny", "--resolution", "8"])
    assert "multiple of 16" in one_error_line(r)


def hwc_steps(frames: np.ndarray) -> list:
    """One sample's dense counts ``[T, C, H, W]`` as the engine's HWC event lists."""
    steps = []
    for f in frames:
        flat = f.transpose(1, 2, 0).reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int32)
        steps.append((idx, flat[idx].astype(np.int32)))
    return steps


@pytest.mark.parametrize("name", list(CASES))
def test_the_exported_model_file_runs_in_the_engine_as_trained(name):
    """to_model_file (BatchNorm folded, float64) run by the engine on the same counts gives the
    trainer's eval logits, every layer firing; the Erode flag travels as the trainer's option."""
    from eventformer.models import Spikformer
    from eventformer.train.export import to_model_file

    cfg, params, state, frames, _ = case(name)
    want, _ = M.forward(params, state, frames, False, cfg)
    mf = to_model_file(params, state, cfg, {"test": name}, dtype=np.float64)
    flags = [int(p.params["erode"]) for p in mf.attention if p.operator == "sdsa"]
    assert flags == ([int(name == "sdt-erode")] * cfg.depth if name.startswith("sdt") else [])
    engine = Spikformer(mf, dtype="float64")
    for b in range(frames.shape[1]):
        engine.clear_stats()
        got = engine.run(hwc_steps(frames[:, b]))
        silent = [r["name"] for r in engine.layer_stats()  # layers with neurons, that is
                  if r["name"] != "head" and r["neurons"] and r["spikes"] <= 0]
        assert not silent, silent
        np.testing.assert_allclose(got, want[b], rtol=1e-9, atol=1e-9)
