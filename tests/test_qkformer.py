"""QKFormer end to end: an official-layout checkpoint exported, run by the engine, checked
against the plain-torch reference (eventformer.torch_successors.QKFormerRef).

- ``export`` tells a QKFormer state_dict (raw, ``{'model': ...}``, ``{'state_dict': ...}``, with
  the training script's ``args``) from its keys, infers widths, depths, MLP sizes and classes,
  takes heads, scale and input size from options or the released code, folds BN and writes a
  v3 model file whose description is :func:`~eventformer.models.presets.qkformer_description`
  (the trainer lays it out by the same preset); a missing, unknown or misshapen key is one sentence.
- Exactness: a tiny QKFormer (64x64 input, widths 32/64, two token-QK blocks and one SSA block,
  T 4) whose weights lie on a dyadic grid and whose BatchNorms fold exactly (gamma, beta and
  running_mean on a grid, running_var + eps a power of 4): sums are exact in any order, so the
  float64 engine must give every LIF's spikes of every step and the logits of the float64
  reference exactly, on every path and step by step. Every LIF fires first.
- float32 on the real DVS Gesture segments within the reference's own float32 spread
  (tests/torch_reference.py); int16 and int8 against float64 per layer and in their predictions.
- Op counts: per-layer rows under the official LIF names; the token QK core does one add per Q
  spike and one mask test per (token, head) holding K spikes.
- The command line: torch.save of QKFormerRef.state_dict() -> ``eventformer export`` ->
  ``eventformer infer --json`` predicts as the reference.
"""

from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import (GESTURE_DIR, assert_every_layer_fires, drive, need_gesture,  # noqa: E402
                      one_error_line, pipelined_and_layer_major, record_spikes, ref_spike_sets)
from torch_reference import Outputs, float32_spread, reference_outputs  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from eventformer.errors import CheckpointError  # noqa: E402
from eventformer.events import dense_frames, read_events  # noqa: E402
from eventformer.layers import PathPolicy  # noqa: E402
from eventformer.modelfile import build_model_file, layer_specs, load, save  # noqa: E402
from eventformer.modelfile.build import BN_EPS  # noqa: E402
from eventformer.modelfile.export import checkpoint_family, export_checkpoint  # noqa: E402
from eventformer.models import Spikformer  # noqa: E402
from eventformer.models.presets import (qkformer_cifar10_dvs, qkformer_description,  # noqa: E402
                                        qkformer_gesture)
from eventformer.torch_successors import (QKFormerConfig, QKFormerRef,  # noqa: E402
                                          calibrate_successor_bn_, dvs_like_frames,
                                          random_successor_state_dict, successor_lif_names)
from eventformer_cli.main import app  # noqa: E402

runner = CliRunner()

STEPS = 4
# 64x64: stage 1 on 8x8 tokens, stage 2 on 4x4; two token-QK blocks so that a block reads an
# integer stream above 0..2; 4 heads (head dims 8 and 16)
TINY = QKFormerConfig(image_size=64, dim=64, heads=4, stage1_depth=2, stage2_depth=1,
                      steps=STEPS)
TINY_OPTIONS = {"heads": 4, "image_size": 64, "steps": STEPS}
MODES = ("auto", "sparse", "gather", "dense")
WEIGHT_GRID = 2.0 ** -10  # conv and head weights
BN_GRID = 2.0 ** -6  # gamma, beta, running_mean, conv and head biases


def tiny_config(**kw):
    """The model-file configuration export must infer for TINY."""
    return qkformer_gesture(dim=64, heads=4, stage1_depth=2, stage2_depth=1, image_size=64,
                            steps=STEPS, **kw)


# --- a checkpoint on a dyadic grid whose BatchNorms fold exactly ------------------------------

def snap(t: torch.Tensor, grid: float) -> torch.Tensor:
    return torch.round(t / grid) * grid


@torch.no_grad()
def grid_state_dict(cfg: QKFormerConfig, seed: int, frames: torch.Tensor) -> dict:
    """An official-layout float64 state dict whose every value lies on a dyadic grid and whose
    BatchNorms fold exactly: convs and the head on WEIGHT_GRID, their biases on BN_GRID; each
    BatchNorm calibrated on ``frames`` (calibrate_successor_bn_: every LIF it drives fires),
    then running_var + eps moved to the nearest power of 4 (sqrt is a power of 2) with gamma
    rescaled to keep gamma / sqrt(var + eps), and gamma, beta, running_mean snapped to BN_GRID.
    W' = W * gamma / 2^k and b' = beta + (b - mean) * gamma / 2^k are then exact in float64,
    and few enough bits for float32."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = QKFormerRef(cfg).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in model.modules():
        if m in bns:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g, dtype=torch.float64))
            m.bias.copy_(torch.rand(m.bias.shape, generator=g, dtype=torch.float64) - 0.5)
        elif isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            m.weight.copy_(snap(m.weight, WEIGHT_GRID))
            if m.bias is not None:
                m.bias.copy_(snap(m.bias, BN_GRID))
    calibrate_successor_bn_(model, frames)
    for m in bns:
        std = torch.sqrt(m.running_var + BN_EPS)
        four = 4.0 ** torch.round(torch.log(m.running_var + BN_EPS) / math.log(4.0))
        var = four - BN_EPS
        assert torch.equal(var + BN_EPS, four)  # exact in float64, as the builder adds it
        m.weight.copy_(snap(m.weight * torch.sqrt(four) / std, BN_GRID))
        m.bias.copy_(snap(m.bias, BN_GRID))
        m.running_mean.copy_(snap(m.running_mean, BN_GRID))
        m.running_var.copy_(var)
    return {k: v.clone() for k, v in model.state_dict().items()}


def event_steps(frames) -> list:
    """Dense count frames [T, C, H, W] -> the engine's per-step HWC event lists."""
    frames = np.asarray(frames)
    steps = []
    for t in range(frames.shape[0]):
        flat = frames[t].transpose(1, 2, 0).reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int32)
        steps.append((idx, flat[idx].astype(np.int32)))
    return steps


def reference_run(ref: QKFormerRef, frames) -> tuple[np.ndarray, dict]:
    """Logits [classes] and every LIF's spikes of one sample [T, C, H, W]."""
    x = torch.as_tensor(np.asarray(frames)).to(ref.head.weight.dtype)[:, None]
    with torch.no_grad():
        logits, spikes = ref(x, record=True)
    return logits[0].numpy(), spikes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """TINY on the grid, saved as the official code saves it, exported; the float64 reference
    and two samples of DVS-like event counts (not the calibration's)."""
    d = tmp_path_factory.mktemp("qkformer")
    sd = grid_state_dict(TINY, 0, dvs_like_frames(STEPS, 2, 2, 64, seed=3))
    path = d / "qkformer-tiny.pth"
    torch.save({"model": sd, "args": argparse.Namespace(T=STEPS, model="QKFormer"),
                "epoch": 7}, path)
    model, report = export_checkpoint(path, **TINY_OPTIONS)
    ref = QKFormerRef(TINY).double().eval()
    ref.load_state_dict(sd)
    samples = [dvs_like_frames(STEPS, 1, 2, 64, seed=s)[:, 0].numpy() for s in (11, 12)]
    return SimpleNamespace(sd=sd, path=path, model=model, report=report, ref=ref,
                           samples=samples, dir=d)


# --- the layout and the export --------------------------------------------------------------

def test_preset_is_the_released_layout_and_the_trainers():
    """The gesture preset's checkpoint keys and shapes are the official model's, key for key;
    its token grids are 16x16 then 8x8; the trainer lays it out by the same preset."""
    from eventformer.train.model import _LAYOUTS

    config = qkformer_gesture()
    assert [g.tokens for g in config.placement().geometry] == [256, 64]
    assert (config.heads, config.steps, config.num_classes, config.scale) == (16, 16, 11, 0.125)
    official = {k: tuple(v.shape) for k, v in QKFormerRef(QKFormerConfig()).state_dict().items()
                if not k.endswith("num_batches_tracked")}
    taken = {}
    for spec in layer_specs(config):
        if spec.kind == "attention":
            continue
        taken[f"{spec.source}.weight"] = spec.tensor_shape
        if spec.conv_has_bias:
            taken[f"{spec.source}.bias"] = spec.bias_shape
        if spec.bn:
            taken.update({f"{spec.bn}.{t}": spec.bias_shape
                          for t in ("weight", "bias", "running_mean", "running_var")})
    assert taken == official
    assert _LAYOUTS["qkformer"] is qkformer_description  # the trainer lays it out by this preset
    cifar = qkformer_cifar10_dvs()
    assert (cifar.num_classes, [s.mlp_hidden for s in cifar.layout.stages]) == (10, [128, 256])


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_export_recognises_a_qkformer_state_dict(tiny, wrap, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(tiny.sd if wrap is None else {wrap: tiny.sd, "epoch": 3}, path)
    model, report = export_checkpoint(path, **TINY_OPTIONS)
    assert checkpoint_family(tiny.sd) == "qkformer" and report.family == "qkformer"
    assert model.config == tiny_config()
    assert report.inferred == {"in_channels": 2, "widths": [32, 64], "stem": [4, 8, 16, 32],
                               "depths": [2, 1], "mlp_hidden": [128, 256], "mlp_ratio": 4,
                               "num_classes": 11}
    assert report.given == TINY_OPTIONS and set(report.defaults) == {"scale"}
    assert report.attention["operator"] == "token_qk, ssa"
    assert [b.operator for b in model.attention] == ["token_qk", "token_qk", "ssa"]
    assert list(model.layers) == successor_lif_names(TINY) + ["head"]
    assert report.stages[0].startswith("stage1: embedding 4-8-16-32, 8x8 tokens, width 32, "
                                       "4 heads of 8, MLP 128, 2 block(s) of token_qk")
    assert sorted(report.ignored_keys) == sorted(k for k in tiny.sd
                                                 if k.endswith("num_batches_tracked"))
    # the model file stores the description (format version 3) and reads back the same
    save(tmp_path / "m.h5", model)
    back = load(tmp_path / "m.h5")
    assert back.format_version == 3 and back.config == model.config
    assert back.provenance["source_code"].startswith("QKFormer")
    for name, p in model.layers.items():
        if p.weight is not None:
            np.testing.assert_array_equal(back.layers[name].weight, p.weight)


def test_export_defaults_are_the_released_codes(tmp_path):
    """Without options: 16 heads (hard-coded in vit_snn), scale 0.125, 128x128, T 16; a
    checkpoint whose widths 16 heads do not divide needs --heads."""
    sd = random_successor_state_dict(QKFormerConfig(image_size=32, dim=64, heads=16, steps=2,
                                                    num_classes=3), seed=2)
    torch.save(sd, tmp_path / "c.pth")
    model, report = export_checkpoint(tmp_path / "c.pth")
    assert (model.config.heads, model.config.scale, model.config.image_size,
            model.config.steps) == (16, 0.125, 128, 16)
    assert set(report.defaults) == {"heads", "scale", "image_size"}
    assert [g.tokens for g in model.config.placement().geometry] == [256, 64]
    path = tmp_path / "w48.pth"  # stage widths 24 and 48
    torch.save(random_successor_state_dict(QKFormerConfig(image_size=32, dim=48, heads=8,
                                                          steps=2), seed=0), path)
    with pytest.raises(CheckpointError, match="stage 1 is 24 wide, not divisible by the "
                                              "released code's 16 heads; give --heads"):
        export_checkpoint(path)
    assert export_checkpoint(path, heads=8)[0].config.heads == 8



@pytest.mark.parametrize("cfg, want", [
    (QKFormerConfig.cifar10_dvs(image_size=32, dim=32, heads=2, steps=2),
     lambda: qkformer_cifar10_dvs(dim=32, heads=2, image_size=32, steps=2)),
    (QKFormerConfig(image_size=32, dim=32, heads=2, steps=2, stage1_depth=3, stage2_depth=0,
                    mlp_ratio=2),
     lambda: qkformer_gesture(dim=32, heads=2, stage1_depth=3, stage2_depth=0, mlp_ratio=2,
                              image_size=32, steps=2)),
])
def test_export_reads_the_cifar10_dvs_code_and_other_depths(cfg, want, tmp_path):
    """The CIFAR10-DVS code (MLP ratio 1, 10 classes) and any blocks per stage: a stage without
    blocks takes the other's MLP ratio."""
    torch.save({"state_dict": random_successor_state_dict(cfg, seed=5)}, tmp_path / "c.pth")
    model, report = export_checkpoint(tmp_path / "c.pth", heads=2, image_size=32, steps=2)
    assert model.config == want()
    assert report.inferred["mlp_ratio"] == cfg.mlp_ratio

def _broken(sd: dict, how: str) -> dict:
    sd = dict(sd)
    if how == "missing":
        del sd["stage1.1.tssa.k_conv.weight"]
    elif how == "unknown":
        sd["stage1.0.tssa.v_conv.weight"] = sd["stage1.0.tssa.k_conv.weight"]
    elif how == "misshapen":
        sd["stage2.0.mlp.mlp2_conv.weight"] = sd["stage2.0.mlp.mlp2_conv.weight"][:, :100]
    elif how == "plif":
        sd["stage1.0.tssa.q_lif.w"] = torch.zeros(())
    elif how == "no head":
        del sd["head.weight"]
    return sd


@pytest.mark.parametrize("how, needle", [
    ("missing", "missing key 'stage1.1.tssa.k_conv.weight'"),
    ("unknown", "unexpected key 'stage1.0.tssa.v_conv.weight' for a QKFormer with 2 + 1 blocks"),
    ("misshapen", "stage2.0.mlp.mlp2_conv.weight has shape (64, 100, 1, 1), expected "
                  "(64, 256, 1, 1)"),
    ("plif", "unexpected key 'stage1.0.tssa.q_lif.w'"),
    ("no head", "missing key 'head.weight' (every QKFormer checkpoint has it)"),
])
def test_export_refuses_in_one_sentence(tiny, tmp_path, how, needle):
    torch.save({"model": _broken(tiny.sd, how)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        export_checkpoint(tmp_path / "bad.pth", **TINY_OPTIONS)
    assert needle in str(exc.value) and str(exc.value).startswith("bad.pth: ")
    assert "\n" not in str(exc.value)
    line = one_error_line(runner.invoke(app, ["export", str(tmp_path / "bad.pth"), "-o",
                                              str(tmp_path / "o.h5"), "--heads", "4",
                                              "--image-size", "64"]))
    assert needle in line


@pytest.mark.parametrize("options, needle", [
    ({"attention": "ssa"}, "--attention does not apply to a QKFormer checkpoint"),
    ({"taw": 3}, "T_AW (taw) is a ds2ta parameter"),
    ({"heads": 5}, "stage 1 is 32 wide, not divisible by 5 heads"),
    ({"image_size": 0}, "does not fit its 0x0 input"),
])
def test_export_refuses_options_that_do_not_apply(tiny, options, needle):
    with pytest.raises(CheckpointError) as exc:
        export_checkpoint(tiny.path, **{**TINY_OPTIONS, **options})
    assert needle in str(exc.value), str(exc.value)


# --- float64: the engine is the reference ---------------------------------------------------

def test_folding_is_exact_on_the_grid(tiny):
    """The exported float32 file holds the float64 fold exactly (the grid leaves few bits)."""
    exact = build_model_file(tiny.model.config, {k: v.numpy() for k, v in tiny.sd.items()},
                             dtype=np.float64)
    for name, p in exact.layers.items():
        if p.weight is not None:
            np.testing.assert_array_equal(tiny.model.layers[name].weight, p.weight, name)
            np.testing.assert_array_equal(tiny.model.layers[name].bias, p.bias, name)


@pytest.mark.parametrize("mode", MODES)
def test_float64_engine_is_the_reference_on_every_path(tiny, mode):
    """Every LIF's spikes of every step, the logits to 1e-9 (observed: equal), offline and
    step by step; every LIF fires in the reference first."""
    names = successor_lif_names(TINY)
    for frames in tiny.samples:
        want_logits, spikes = reference_run(tiny.ref, frames)
        silent = [n for n in names if not spikes[n].any()]
        assert not silent, f"silent LIFs (the comparison would be vacuous): {silent}"
        steps = event_steps(frames)
        for how in ("run", "step"):
            engine = Spikformer(tiny.model, dtype="float64", policy=PathPolicy(mode=mode))
            store = record_spikes(engine)
            logits = drive(engine, steps, how)
            assert sorted(store) == sorted(names)
            for name in names:
                want = ref_spike_sets(spikes, name)
                assert len(store[name]) == STEPS, (how, name)
                for t in range(STEPS):
                    np.testing.assert_array_equal(store[name][t], want[t],
                                                  err_msg=f"{mode} {how} {name} step {t}")
            np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-9)



@pytest.mark.parametrize("dtype", ["float32", "int16", "int8"])
def test_step_by_step_is_the_offline_run(tiny, dtype):
    """In every arithmetic, time-major steps give the offline (layer-major) run's spikes and
    logits exactly."""
    steps = event_steps(tiny.samples[1])
    offline = Spikformer(tiny.model, dtype=dtype)
    want = record_spikes(offline)
    logits = offline.run(steps)
    stepped = Spikformer(tiny.model, dtype=dtype)
    got = record_spikes(stepped)
    stepped.reset()
    for idx, cnt in steps:
        stepped.step(idx, cnt)
    np.testing.assert_array_equal(stepped.logits(), logits)
    assert sorted(got) == sorted(want) == sorted(successor_lif_names(TINY))
    for name in want:
        assert sum(s.size for s in want[name]) > 0, f"{name} silent"
        for t in range(STEPS):
            np.testing.assert_array_equal(got[name][t], want[name][t], err_msg=f"{name} {t}")

# --- op counts ----------------------------------------------------------------------------

def test_op_counts_are_the_token_cores_real_work(tiny):
    """Per-layer rows under the official LIF names; the token QK core adds once per Q spike
    (its AC) and tests each (token, head) holding K spikes once while any attention neuron
    fired (its MASK): both counted from the reference's own spikes."""
    frames = tiny.samples[0]
    _, spikes = reference_run(tiny.ref, frames)
    engine = Spikformer(tiny.model, dtype="float64")
    engine.run(event_steps(frames))
    rows = {r["name"]: r for r in engine.layer_stats()}
    assert list(rows) == successor_lif_names(TINY) + ["head"]
    d = 32 // TINY.heads
    for b in range(TINY.stage1_depth):
        a = f"stage1.{b}.tssa"
        q, k = (spikes[f"{a}.{n}_lif"][:, 0].numpy() for n in "qk")  # [T, C, N]
        attn = spikes[f"{a}.attn_lif"][:, 0].numpy()  # [T, heads, 1, N]
        k_heads = k.reshape(STEPS, TINY.heads, d, -1).any(axis=2)  # [T, heads, N]
        tested = sum(int(k_heads[t].sum()) for t in range(STEPS) if attn[t].any())
        core = rows[f"{a}.attn_lif"]
        assert core["ac"] == int(q.sum()) > 0
        assert core["mask"] == tested > 0
        assert core["mac"] == 0 and core["spikes"] == int(attn.sum())
    for name, row in rows.items():  # no other layer masks
        assert row.get("mask", 0) == 0 or name.endswith("tssa.attn_lif"), name


# --- real DVS Gesture segments: float32, int16, int8 ------------------------------------------

def gesture_frames(size: int, steps: int) -> list[np.ndarray]:
    """The five real segments framed by number into ``steps`` count frames at ``size`` (the
    128x128 sensor divided down by an integer factor, as infer's spatial plan does)."""
    gestures = need_gesture()
    out = []
    for path in sorted(gestures.glob("*.bs2")):
        ev = read_events(path).events.copy()
        ev["x"] //= 128 // size
        ev["y"] //= 128 // size
        out.append(dense_frames(ev, steps, size, size))
    return out


def calibrated_gesture_model(cfg: QKFormerConfig, frames, tmp_path, seed=1):
    """An official-layout checkpoint calibrated on the real segments (every BN-fed LIF at its
    target rate), exported; the float32 reference of it."""
    sd = random_successor_state_dict(cfg, seed=seed,
                                     frames=torch.from_numpy(np.stack(frames, 1)).float())
    path = tmp_path / "qkformer-gesture.pth"
    torch.save({"model": sd}, path)
    model, _ = export_checkpoint(path, heads=cfg.heads, image_size=cfg.image_size,
                                 steps=cfg.steps)
    ref32 = QKFormerRef(cfg).eval()
    ref32.load_state_dict(sd)
    return model, ref32, sd


def engine_outputs(model, dtype, frames) -> list[Outputs]:
    engine = Spikformer(model, dtype=dtype)
    out = []
    for f in frames:
        engine.clear_stats()
        logits = engine.run(event_steps(f))
        out.append(Outputs.of(logits, {s["name"]: s["spikes"] for s in engine.layer_stats()}))
    return out


def check_float32(model, ref32, sd, frames):
    ref64 = QKFormerRef(ref32.cfg).double().eval()
    ref64.load_state_dict(sd)
    truth = reference_outputs(ref64, frames, torch.float64)
    silent = [n for t in truth for n, c in t.counts.items() if c == 0]
    assert not silent, f"silent LIFs: {silent}"
    spread = float32_spread(ref32, frames, truth)
    spread.check(engine_outputs(model, "float32", frames), "engine float32")
    return truth


def _methods(layer) -> str:
    return "attend" if hasattr(layer, "attend") else "step"


def teacher_forced(model, mode: str, steps) -> dict:
    """Each layer of ``mode`` fed the float64 run's inputs (time-major): {layer: (spikes
    flipped, float64's spikes, mode's spikes)} over the sample."""
    ins, outs = {}, {}
    engine = Spikformer(model, dtype="float64")
    for layer in engine.layers:
        orig = getattr(layer, _methods(layer))

        def wrapped(*args, _orig=orig, _name=layer.name):
            ins.setdefault(_name, []).append([a.copy() for a in args])
            out = _orig(*args)
            outs.setdefault(_name, []).append((out[0] if isinstance(out, tuple) else out).copy())
            return out
        setattr(layer, _methods(layer), wrapped)
    engine.reset()
    for idx, cnt in steps:
        engine.step(idx, cnt)
    engine = Spikformer(model, dtype=mode)
    engine.reset()
    result = {}
    for layer in engine.layers:
        fn = getattr(layer, _methods(layer))
        flipped = want = got = 0
        for t, args in enumerate(ins[layer.name]):
            s = fn(*args)
            s = s[0] if isinstance(s, tuple) else s
            flipped += np.setxor1d(s, outs[layer.name][t]).size
            want += outs[layer.name][t].size
            got += s.size
        result[layer.name] = (flipped, want, got)
    return result


#: Integer modes against float64 (SPEC §6), floors at about twice the largest value measured
#: on the small model (5 segments): per layer fed float64's inputs, the share of its spikes
#: flipped over the five (int16 0.025%: a handful of flips, so the floor is 0.1%; int8 4.5%, in
#: the 1x1 stride-4 shortcut with 8 weights per output channel); end to end, each layer's spike
#: total over the five (int16 1.7%, int8 6.2%, both in stage 2's attention LIF, whose input is a
#: product of three spike maps). The full-size layout measures within these (int16 <= 0.005%
#: and 1.3%, int8 <= 4.2% and 1.9%) but for one layer, below.
INTEGER_FLOORS = {"int16": {"flips": 0.001, "totals": 0.035},
                  "int8": {"flips": 0.09, "totals": 0.12}}
#: int8's exception, in the full-size model only: the stem's first LIF (2 -> 16 channels, 18
#: weights per output channel) flips 13.6% of its spikes. Its channel 1 has a folded bias of
#: 1.065 (>= theta), so every pixel without events charges to 0.998 theta at step 4 in float
#: and fires at step 5; in int8 (bias 239 and threshold 224 units for 238.69 and 224.19) it
#: fires at step 4: one step early on every quiet pixel of that channel. int16 resolves it.
FULL_SIZE_FIRST_LIF_INT8_FLIPS = 0.16


def check_integer_modes(model, frames, first_lif_int8=None) -> dict:
    """The figures of both integer modes against float64 on ``frames``; asserts the floors
    and that every clearly decided float64 prediction stays (top-2 margin > 0.05)."""
    steps = [event_steps(f) for f in frames]
    figures = {}
    base = engine_outputs(model, "float64", frames)
    for mode, floor in INTEGER_FLOORS.items():
        flips = {}  # over the five samples: per sample, a layer holds few spikes
        for xs in steps:
            for name, (flipped, want, _) in teacher_forced(model, mode, xs).items():
                f, w = flips.get(name, (0, 0))
                flips[name] = (f + flipped, w + want)
        assert all(w > 0 for _, w in flips.values()), "a layer silent in float64"
        worst = {name: f / w for name, (f, w) in flips.items()}
        for name, share in worst.items():
            bound = floor["flips"]
            if mode == "int8" and first_lif_int8 is not None and \
                    name == "patch_embed1.proj_lif":
                bound = first_lif_int8
            assert share <= bound, f"{mode} {name}: {share:.4f} of its spikes flipped"
        got = engine_outputs(model, mode, frames)
        totals = {}
        for name in base[0].counts:
            want_n = sum(o.counts[name] for o in base)
            got_n = sum(o.counts[name] for o in got)
            totals[name] = abs(got_n - want_n) / want_n
            assert totals[name] <= floor["totals"], f"{mode} {name}: {got_n} vs {want_n}"
        clear = 0
        for o, b in zip(got, base):
            top2 = b.logits.topk(2).values
            if float(top2[0] - top2[1]) > 0.05:
                clear += 1
                assert o.prediction == b.prediction, (mode, b.logits, o.logits)
        assert clear, "no clearly decided prediction: the check would be vacuous"
        figures[mode] = {"flips": worst, "totals": totals,
                         "logits": max(float((o.logits - b.logits).abs().max())
                                       for o, b in zip(got, base))}
    return figures


GESTURE_SMALL = QKFormerConfig(image_size=64, dim=64, heads=4, steps=8)


@pytest.fixture(scope="module")
def gesture_small(tmp_path_factory):
    frames = gesture_frames(64, GESTURE_SMALL.steps)
    return (*calibrated_gesture_model(GESTURE_SMALL, frames, tmp_path_factory.mktemp("g")),
            frames)


def test_float32_on_real_gestures_within_the_float32_spread(gesture_small):
    """A small QKFormer (64x64: the segments divided by 2, T 8) calibrated on the five real
    segments: the float32 engine is no further from the float64 reference than the reference's
    own float32 realisations (native, jittered convs)."""
    model, ref32, sd, frames = gesture_small
    check_float32(model, ref32, sd, frames)


def test_integer_modes_on_real_gestures(gesture_small):
    model, _, _, frames = gesture_small
    check_integer_modes(model, frames)


@pytest.mark.slow
def test_full_size_gesture_layout_on_real_gestures(tmp_path):
    """The released gesture layout at full size (128x128, dim 256, 16 heads, T 16; about 40 s,
    most of it calibrating and the reference's float32 spread) calibrated on the five real
    segments: float32 within the reference's float32 spread; int16 and int8 at the floors."""
    frames = gesture_frames(128, 16)
    cfg = QKFormerConfig()
    model, ref32, sd = calibrated_gesture_model(cfg, frames, tmp_path)
    assert model.config == qkformer_gesture()
    check_float32(model, ref32, sd, frames)
    check_integer_modes(model, frames, first_lif_int8=FULL_SIZE_FIRST_LIF_INT8_FLIPS)


# --- the command line, end to end -----------------------------------------------------------

def test_cli_export_then_infer_predicts_as_the_reference(tmp_path):
    """torch.save of QKFormerRef.state_dict() (the released layout, 16 heads as the code has
    them) -> ``eventformer export`` -> ``eventformer infer --json`` on a real segment: the
    reference's prediction, and its logits within float32 reach."""
    cfg = QKFormerConfig(image_size=64, dim=64, heads=16, steps=8)
    frames = gesture_frames(64, cfg.steps)
    sd = random_successor_state_dict(cfg, seed=4,
                                     frames=torch.from_numpy(np.stack(frames, 1)).float())
    ref = QKFormerRef(cfg).eval()
    ref.load_state_dict(sd)
    torch.save(ref.state_dict(), tmp_path / "qkformer.pth")
    r = runner.invoke(app, ["export", str(tmp_path / "qkformer.pth"), "-o",
                            str(tmp_path / "qkformer.h5"), "--image-size", "64", "--steps", "8"])
    assert r.exit_code == 0, r.output
    assert "recognised: QKFormer DVS code" in r.stderr and "heads=16" in r.stderr
    segment = sorted(GESTURE_DIR.glob("*.bs2"))[0]
    r = runner.invoke(app, ["infer", str(segment), "--weights", str(tmp_path / "qkformer.h5"),
                            "--sensor-size", "128x128", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    want, spikes = reference_run(ref, frames[0])
    top2 = np.sort(want)[-2:]
    assert top2[1] - top2[0] > 1e-3  # a decided prediction, not a tie
    assert out["prediction"] == int(np.argmax(want))
    np.testing.assert_allclose(out["logits"], want, rtol=0, atol=1e-4)
    layers = {row["name"]: row for row in out["layers"]}
    assert list(layers) == successor_lif_names(cfg) + ["head"]
    assert {n: layers[n]["spikes"] for n in spikes} == {n: int(s.sum()) for n, s in
                                                        spikes.items()}
    assert layers["stage1.0.tssa.attn_lif"]["mask"] > 0 and out["ops"]["mask"] > 0
    r = runner.invoke(app, ["inspect", str(tmp_path / "qkformer.h5")])
    assert r.exit_code == 0 and "stage1: embedding 4-8-16-32, 8x8 tokens" in r.stderr


@pytest.mark.parametrize("dtype", ["float64", "int8"])
def test_the_offline_pipeline_is_the_layer_major_run(tiny, dtype):
    """Pipelined over both of QKFormer's stages (each stage's embedding and blocks one chain):
    the logits and every layer's spikes and op counts of the layer-major run."""
    samples = [event_steps(s) for s in tiny.samples]
    for (fast, fast_stats), (slow, slow_stats) in pipelined_and_layer_major(tiny.model, dtype,
                                                                            samples):
        np.testing.assert_array_equal(fast, slow)
        assert fast_stats == slow_stats
        assert_every_layer_fires(fast_stats)
