"""The training loop on synthetic DVS Gesture: it learns, resumes bit for bit, stops cleanly on a
diverging loss, its eval predictions are the engine's, and ``eventformer train`` writes a model
file that ``eventformer inspect`` reads."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from conftest import assert_every_layer_fires, one_error_line
from eventformer_cli.main import app
from typer.testing import CliRunner

from eventformer.datasets import embedded_synthetic_dir, embedded_synthetic_set
from eventformer.errors import EventformerError
from eventformer.events import dense_frames, frame_events
from eventformer.inference import downsample
from eventformer.modelfile import load
from eventformer.models import Spikformer
from eventformer.train import model as M
from eventformer.train.data import (
    CLIP_US,
    FrameSet,
    batches,
    check_resolution,
    clip_events,
    frame_set,
    shift_frames,
)
from eventformer.train.loop import (
    TrainingDiverged,
    TrainingInterrupted,
    load_checkpoint,
    predict,
    train,
)

S, T = 16, 4
runner = CliRunner()


@pytest.fixture(scope="module")
def sets():
    """Embedded synthetic set (user 1 train, user 2 test), 16x16, T 4; val keeps its events."""
    tr = frame_set(embedded_synthetic_set("train"), S, T)
    va = frame_set(embedded_synthetic_set("test"), S, T, limit=6, keep_events=True)
    return tr, va


def small_config(**kw):
    """A smaller-than-tiny model, so that the exactness tests run in a few seconds."""
    base = dict(image_size=S, steps=T, sps_channels=(8, 16, 32), dim=32, heads=2,
                mlp_hidden=64, split_by="number")
    base.update(kw)
    return M.config_by_name("tiny", **base)


# --- data ----------------------------------------------------------------------------------------

def test_frames_follow_the_engine_convention(sets):
    tr, va = sets
    assert tr.frames.shape == (len(tr), T, 2, S, S) and tr.frames.dtype == np.uint16
    assert len(tr) == 22 and set(tr.labels.tolist()) == set(range(11))
    assert va.info["downsample_factor"] == 8 and va.info["clip_us"] == 1_450_000
    ref, ev = next(embedded_synthetic_set("test").iter_events(1))
    clip = downsample(clip_events(ev, CLIP_US), 8)
    assert clip["t"][-1] - ev["t"][0] < 1_450_000 and len(clip) < len(ev)
    np.testing.assert_array_equal(va.events[0], clip)
    np.testing.assert_array_equal(va.frames[0], dense_frames(clip, T, S, S, "number"))
    assert va.labels[0] == ref.label


def test_resolution_checks():
    assert check_resolution(32) == 4 and check_resolution(16) == 8 and check_resolution(128) == 1
    with pytest.raises(EventformerError, match="does not divide"):
        check_resolution(48)
    with pytest.raises(EventformerError, match="too small"):
        check_resolution(4)


def test_shift_and_batches_are_seeded_without_flip():
    x = np.zeros((1, 2, 5, 5), np.float32)
    x[0, 1, 2, 3] = 7
    y = shift_frames(x, 1, -2)
    assert y[0, 1, 0, 4] == 7 and y.sum() == 7
    assert shift_frames(x, 2, 0).sum() == 0  # pushed off the edge, not wrapped
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 3, size=(10, T, 2, 8, 8)).astype(np.uint16)
    data = FrameSet(frames, np.arange(10) % 3)
    a = [b for b in batches(data, 4, np.random.default_rng(5), 1)]
    b = [b for b in batches(data, 4, np.random.default_rng(5), 1)]
    assert [x.shape for x, _ in a] == [(T, 4, 2, 8, 8)] * 2 + [(T, 2, 2, 8, 8)]
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    ev = [x for x, _ in batches(data, 4)]  # evaluation: in order, unshifted
    np.testing.assert_array_equal(ev[0][:, 1], frames[1])


# --- training -----------------------------------------------------------------------------------

def test_training_learns(sets):
    """All 11 classes, tiny model at 16x16 / T 4: the loss falls and train accuracy (chance 9%)
    rises well above chance."""
    tr, _ = sets
    cfg = M.config_by_name("tiny", image_size=S, steps=T)
    r = train(cfg, tr, None, epochs=12, batch=8, lr=5e-3, seed=0, max_shift=1,
              label_smoothing=0.0, handle_sigint=False)
    h = r.history
    assert len(h) == 12
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 0.3, [e["train_loss"] for e in h]
    assert max(e["train_accuracy"] for e in h[-3:]) >= 0.3, [e["train_accuracy"] for e in h]


def _same(a, b):
    assert set(a.params) == set(b.params)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k], err_msg=k)


def test_interrupt_and_resume_equal_an_uninterrupted_run(sets, tmp_path):
    tr, va = sets
    cfg = small_config()
    kw = dict(epochs=3, batch=8, lr=3e-3, seed=4, max_shift=1, handle_sigint=True)
    ref = train(cfg, tr, va, **kw)

    ck = tmp_path / "run.ckpt.npz"
    handler = signal.getsignal(signal.SIGINT)  # default, or ignored when run in the background

    def ctrl_c_mid_epoch_2(info):  # Ctrl-C after the 2nd batch of epoch 2: deferred to its end
        if info["kind"] == "batch" and info["epoch"] == 1 and info["batch"] == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as exc:
        train(cfg, tr, va, checkpoint_path=ck, progress=ctrl_c_mid_epoch_2, **kw)
    assert exc.value.saved and exc.value.epoch == 1 and exc.value.batch == 2
    assert signal.getsignal(signal.SIGINT) is handler  # the handler before is back
    meta = load_checkpoint(ck)["meta"]
    assert (meta["epoch"], meta["batch"], len(meta["history"])) == (1, 2, 1)

    with pytest.raises(TrainingInterrupted):  # stop again, this time at an epoch boundary
        train(cfg, tr, va, checkpoint_path=ck, resume=True, should_stop=lambda: True, **kw)
    assert load_checkpoint(ck)["meta"]["epoch"] == 2

    done = train(cfg, tr, va, checkpoint_path=ck, resume=ck, **kw)
    _same(ref, done)
    def timeless(h):
        return [{k: v for k, v in e.items() if "seconds" not in k} for e in h]

    assert timeless(done.history) == timeless(ref.history)
    with pytest.raises(EventformerError, match="batch=4"):
        train(cfg, tr, va, checkpoint_path=ck, resume=True, **{**kw, "batch": 4, "epochs": 4})


def test_nan_loss_stops_and_keeps_the_checkpoint(sets, tmp_path):
    tr, _ = sets
    cfg = small_config()
    ck = tmp_path / "ck.npz"
    train(cfg, tr, None, epochs=1, batch=8, checkpoint_path=ck, handle_sigint=False)
    before = ck.read_bytes()
    bad = FrameSet(tr.frames.astype(np.float32), tr.labels)
    bad.frames[:, 0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="diverged.*(nan|NaN).*last good checkpoint") as exc:
        train(cfg, bad, None, epochs=2, batch=8, checkpoint_path=ck, resume=True,
              handle_sigint=False)
    assert str(ck) in str(exc.value)
    assert ck.read_bytes() == before
    assert load_checkpoint(ck)["meta"]["epoch"] == 1


def _grid(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x, np.float64) * 256) / 256


def exactly_foldable(params, state, config, shift: float):
    """The trained parameters made exact to fold and to sum: weights and biases on a 2^-8 grid,
    every BatchNorm an identity (mean 0, var + eps == 1, gamma 1) plus its shift ``beta`` raised
    by ``shift`` so that every layer fires. The model file's float32 folded weights then equal
    the trainer's float64 ones, and float64 sums of grid values are exact in any order."""
    p = {k: _grid(v) for k, v in params.items()}
    st = {k: np.array(v, copy=True) for k, v in state.items()}
    for bn in M.bn_names(config):
        st[f"{bn}.running_mean"] = np.zeros_like(st[f"{bn}.running_mean"], np.float64)
        st[f"{bn}.running_var"] = np.full_like(st[f"{bn}.running_var"], 1.0 - M.BN_EPS,
                                               np.float64)
        assert np.all(st[f"{bn}.running_var"] + M.BN_EPS == 1.0)
        p[f"{bn}.weight"] = np.ones_like(p[f"{bn}.weight"])
        p[f"{bn}.bias"] = p[f"{bn}.bias"] + shift
    return p, st


def test_trainer_predictions_equal_the_engine(sets, tmp_path):
    """The trainer's eval forward and the engine running the exported file are one computation:
    in float64 on exactly representable parameters they agree to the bit, on a model whose
    every layer fires."""
    tr, va = sets
    cfg = small_config()
    out = tmp_path / "m.h5"
    r = train(cfg, tr, va, epochs=2, batch=8, lr=3e-3, out_path=out, handle_sigint=False,
              metadata={"command": "test"})
    prov = load(out).provenance["training"]
    assert prov["epochs"] == 2 and prov["seed"] == 0 and prov["command"] == "test"
    assert prov["augmentation"]["flip"] is False and prov["framing"]["split_by"] == "number"
    params, state = exactly_foldable(r.params, r.state, cfg, shift=1.0)
    exact = tmp_path / "exact.h5"
    from eventformer.modelfile import save
    from eventformer.train.export import to_model_file

    save(exact, to_model_file(params, state, cfg))
    want = predict(params, state, cfg, va)
    engine = Spikformer(load(exact), dtype="float64")
    for i, ev in enumerate(va.events):
        engine.clear_stats()
        got = engine.run(frame_events(ev, T, S, S))
        assert_every_layer_fires(engine.layer_stats())  # not two silent networks agreeing
        np.testing.assert_array_equal(got, want[i])


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_train_smoke(sets, tmp_path):
    out = tmp_path / "cli.h5"
    r = runner.invoke(app, ["train", "--dataset", "dvs-gesture", "--data-dir",
                            str(embedded_synthetic_dir()), "--resolution", "16", "--steps", "4",
                            "--epochs", "1", "--batch", "8", "--limit", "16", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "epoch 1/1: train loss" in r.stderr and out.is_file()
    assert (tmp_path / "cli.h5.ckpt.npz").is_file()
    i = runner.invoke(app, ["inspect", str(out), "--json"])
    assert i.exit_code == 0, i.output
    info = json.loads(i.stdout)
    assert info["config"]["image_size"] == 16 and info["config"]["steps"] == 4
    assert info["provenance"]["training"]["epochs"] == 1
    assert "eventformer" in info["provenance"]["training"]["command"]


@pytest.mark.parametrize("args, needle", [
    (["--resolution", "48"], "does not divide"),
    (["--resolution", "4"], "too small"),
    (["--model", "huge"], "unknown model"),
    (["--data-dir", "/nonexistent/eventformer"], "no such data directory"),
    (["--batch", "64", "--limit", "4"], "fewer than one batch"),
])
def test_cli_train_errors(sets, tmp_path, args, needle):
    base = ["train", "--dataset", "dvs-gesture", "--data-dir", str(embedded_synthetic_dir()),
            "--resolution", "16", "--steps", "4", "--epochs", "1", "-o", str(tmp_path / "x.h5")]
    r = runner.invoke(app, base + args)
    assert needle in one_error_line(r)


def test_train_cli_tonic_dataset_errors(tmp_path):
    from conftest import one_error_line
    from eventformer_cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    out = str(tmp_path / "m.h5")
    assert "needs --data-dir" in one_error_line(
        runner.invoke(app, ["train", "--dataset", "tonic:NMNIST", "-o", out]))
    assert "tonic has no dataset" in one_error_line(
        runner.invoke(app, ["train", "--dataset", "tonic:Nope", "--data-dir", str(tmp_path),
                            "-o", out]))
    assert "unknown dataset" in one_error_line(
        runner.invoke(app, ["train", "--dataset", "mnist", "-o", out]))


def test_training_progress_follows_the_loop_events():
    from eventformer.train.progress import TrainingProgress

    state = TrainingProgress()
    assert state.update({"kind": "start", "epochs": 2, "batches": 3, "epoch": 0,
                         "batch": 0}) is None
    assert state.description == "epoch 1/2" and state.batches == 3
    state.update({"kind": "batch", "epoch": 0, "batch": 2, "batches": 3, "loss": 2.5, "lr": 1e-3})
    assert (state.batch, state.description) == (2, "epoch 1/2 loss 2.500")
    line = state.update({"kind": "epoch", "epoch": 1, "train_loss": 2.25, "train_accuracy": 0.5,
                         "val_accuracy": None, "seconds": 1.0, "samples": 48})
    assert line == "epoch 1/2: train loss 2.2500 acc 50.0%, val acc - (1.0 s, 48 samples)"
    assert (state.batch, state.description, state.finished) == (0, "epoch 2/2", False)
    state.update({"kind": "epoch", "epoch": 2, "train_loss": 2.0, "train_accuracy": 0.75,
                  "val_accuracy": 0.5, "seconds": 1.0, "samples": 48})
    assert state.finished and state.description == "epoch 2/2"
