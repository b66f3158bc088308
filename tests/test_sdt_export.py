"""``eventformer export`` of an official Spike-driven Transformer (v1) state_dict (issue 23).

- export tells SDT's keys (``patch_embed.proj_conv*`` + ``rpe_conv``, ``block.{i}.attn.
  talking_heads.weight``, Conv2d k1 q/k/v) from Spikformer's and QKFormer's; reads the input
  channels, width, depth, heads (talking_heads [H, H, 1]), MLP width and classes from the
  tensors; takes pooling_stat ("1111", the model code's), Erode (off, as train.py runs gesture)
  and the input side (128) from options or those defaults and says which; writes a v3 model
  file whose description is :func:`~eventformer.models.presets.sdt_description`, the trainer's
  preset;
- a missing, unknown, misshapen or parametric-LIF key, or an option that does not apply, is one
  sentence (exit 2 from the CLI);
- the command line: torch.save of SpikeDrivenTransformerRef.state_dict() -> ``eventformer
  export`` -> ``eventformer infer --json`` on a real DVS Gesture segment gives the float32
  reference's prediction and logits within 1e-4, and every LIF's spike count (with and without
  Erode).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import GESTURE_DIR, need_gesture, one_error_line  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from eventformer.errors import CheckpointError  # noqa: E402
from eventformer.events import dense_frames, read_events  # noqa: E402
from eventformer.modelfile import layer_specs, load, save  # noqa: E402
from eventformer.modelfile.export import checkpoint_family, export_checkpoint  # noqa: E402
from eventformer.models.presets import sdt_description, sdt_gesture  # noqa: E402
from eventformer.torch_successors import (SDTConfig, SpikeDrivenTransformerRef,  # noqa: E402
                                          random_successor_state_dict, successor_lif_names)
from eventformer.train.model import _LAYOUTS  # noqa: E402
from eventformer_cli.main import app  # noqa: E402

runner = CliRunner()

# 32x32 events, D 32, 2 heads, 2 blocks, MLP ratio 2, the gesture config's pooling (4x4 tokens)
TINY = SDTConfig(image_size=32, dim=32, heads=2, depth=2, mlp_ratio=2, steps=4,
                 pooling_stat="0111", num_classes=5)
TINY_OPTIONS = {"image_size": 32, "steps": 4, "pooling_stat": "0111"}


@pytest.fixture(scope="module")
def tiny_sd():
    return random_successor_state_dict(TINY, seed=0)


def save_sd(sd, path, wrap=None):
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, path)
    return path


# --- the layout -------------------------------------------------------------------------------

def test_preset_is_the_released_layout_and_the_trainers():
    """The gesture preset's checkpoint keys and shapes are the official model's, key for key
    (talking_heads aside: saved, never run); 16x16 tokens; its description is
    the trainer's preset, and sdt_description's default pooling is the model code's 1111."""
    config = sdt_gesture()
    assert [g.tokens for g in config.placement().geometry] == [256]
    assert (config.dim, config.heads, config.depth, config.mlp_hidden, config.steps,
            config.num_classes) == (256, 8, 2, 1024, 16, 11)
    official = {k: tuple(v.shape) for k, v in
                SpikeDrivenTransformerRef(SDTConfig()).state_dict().items()
                if not k.endswith(("num_batches_tracked", "talking_heads.weight"))}
    taken = {}
    for spec in layer_specs(config):
        if spec.kind == "attention" or not spec.source:
            continue
        taken[f"{spec.source}.weight"] = spec.tensor_shape
        if spec.conv_has_bias:
            taken[f"{spec.source}.bias"] = spec.bias_shape
        if spec.bn:
            taken.update({f"{spec.bn}.{t}": spec.bias_shape
                          for t in ("weight", "bias", "running_mean", "running_var")})
    assert taken == official
    assert config.layout == sdt_description(256, 8, 2, 1024, pooling_stat="0111")
    assert _LAYOUTS["sdt"] is sdt_description  # the trainer lays SDT out by this very preset
    assert sdt_description(64, 4, 3) == sdt_description(64, 4, 3, 256, pooling_stat="1111")


# --- the export -------------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_export_recognises_an_sdt_state_dict(tiny_sd, wrap, tmp_path):
    path = save_sd(tiny_sd, tmp_path / "sdt.pth", wrap)
    model, report = export_checkpoint(path, **TINY_OPTIONS)
    assert checkpoint_family({k: v.numpy() for k, v in tiny_sd.items()}) == "sdt"
    assert report.family == "sdt" and report.code.startswith("Spike-driven Transformer v1")
    assert model.config == sdt_gesture(dim=32, heads=2, depth=2, mlp_ratio=2,
                                       pooling_stat="0111", image_size=32, steps=4,
                                       num_classes=5)
    assert report.inferred == {"in_channels": 2, "sps_channels": [4, 8, 16, 32], "dim": 32,
                               "depth": 2, "heads": 2, "mlp_hidden": 64, "mlp_ratio": 2,
                               "num_classes": 5}
    assert report.given == {"image_size": 32, "steps": 4, "pooling_stat": "0111"}
    assert set(report.defaults) == {"erode"} and report.defaults["erode"][0] == 0
    assert report.attention["operator"] == "sdsa"
    assert report.attention["options"]["erode"] == {"value": 0, "from": "default"}
    assert [b.operator for b in model.attention] == ["sdsa", "sdsa"]
    assert all(int(b.params["erode"]) == 0 for b in model.attention)
    # every LIF of the reference is a layer, in forward order, with the synapses that have no
    # LIF of their own (rpe, proj, fc1, fc2: their currents join the membrane stream)
    lifs = [n for n in model.layers if "_lif" in n]
    assert lifs == successor_lif_names(TINY) and list(model.layers)[-1] == "head"
    assert report.stages == ["block: embedding 4-8-16-32-32, 4x4 tokens, width 32, 2 heads of "
                             "16, MLP 64, 2 block(s) of sdsa"]
    assert sorted(report.ignored_keys) == sorted(
        k for k in tiny_sd if k.endswith(("num_batches_tracked", "talking_heads.weight")))
    save(tmp_path / "m.h5", model)
    back = load(tmp_path / "m.h5")
    assert back.format_version == 3 and back.config == model.config
    assert back.provenance["source_code"].startswith("Spike-driven Transformer v1")
    for name, p in model.layers.items():
        if p.weight is not None:
            np.testing.assert_array_equal(back.layers[name].weight, p.weight)


def test_export_defaults_are_the_released_codes(tiny_sd, tmp_path):
    """Without options: pooling_stat 1111 (the model code's), 128x128 (8x8 tokens), T 16, Erode
    off, each said as a default; --erode switches sdsa's flag on, as given."""
    path = save_sd(tiny_sd, tmp_path / "sdt.pth")
    model, report = export_checkpoint(path)
    assert set(report.defaults) == {"pooling_stat", "image_size", "erode"}
    assert report.defaults["pooling_stat"][0] == "1111"
    assert "the gesture config runs 0111" in report.defaults["pooling_stat"][1]
    assert model.config == sdt_gesture(dim=32, heads=2, depth=2, mlp_ratio=2,
                                       pooling_stat="1111", num_classes=5)
    assert [g.tokens for g in model.config.placement().geometry] == [64]
    model, report = export_checkpoint(path, erode=True, **TINY_OPTIONS)
    assert report.given["erode"] == 1 and "erode" not in report.defaults
    assert report.attention["options"]["erode"] == {"value": 1, "from": "option"}
    assert all(int(b.params["erode"]) == 1 for b in model.attention)


def test_families_are_told_apart():
    """SDT claims talking_heads or a Conv2d k1 q; Spikformer's Conv1d q and QKFormer's stages
    stay theirs."""
    conv1d_q = {"patch_embed.rpe_conv.weight": np.zeros((8, 8, 3, 3)),
                "block.0.attn.q_conv.weight": np.zeros((8, 8, 1))}
    assert checkpoint_family(conv1d_q) == "spikformer"
    conv2d_q = {**conv1d_q, "block.0.attn.q_conv.weight": np.zeros((8, 8, 1, 1))}
    assert checkpoint_family(conv2d_q) == "sdt"
    assert checkpoint_family({"block.3.attn.talking_heads.weight": np.zeros((2, 2, 1))}) == "sdt"
    assert checkpoint_family({"stage1.0.tssa.q_conv.weight": np.zeros((8, 8, 1))}) == "qkformer"


def _broken(sd: dict, how: str) -> dict:
    sd = dict(sd)
    if how == "missing":
        del sd["block.1.attn.k_conv.weight"]
    elif how == "unknown":
        sd["block.0.attn.qk_conv.weight"] = sd["block.0.attn.k_conv.weight"]
    elif how == "misshapen":
        sd["block.1.mlp.fc2_conv.weight"] = sd["block.1.mlp.fc2_conv.weight"][:, :40]
    elif how == "plif":
        sd["block.0.attn.q_lif.w"] = torch.zeros(())
    elif how == "no talking_heads":
        del sd["block.1.attn.talking_heads.weight"]
    elif how == "talking_heads":
        sd["block.1.attn.talking_heads.weight"] = torch.zeros(4, 4, 1)
    elif how == "no head":
        del sd["head.weight"]
    elif how == "sps":
        sd["patch_embed.proj_conv1.weight"] = sd["patch_embed.proj_conv1.weight"][:6]
    return sd


@pytest.mark.parametrize("how, needle", [
    ("missing", "missing key 'block.1.attn.k_conv.weight'"),
    ("unknown", "unexpected key 'block.0.attn.qk_conv.weight' for a Spike-driven Transformer "
                "with 2 block(s)"),
    ("misshapen", "block.1.mlp.fc2_conv.weight has shape (32, 40, 1, 1), expected "
                  "(32, 64, 1, 1)"),
    ("plif", "unexpected key 'block.0.attn.q_lif.w'"),
    ("no talking_heads", "missing key 'block.1.attn.talking_heads.weight' (every Spike-driven "
                         "Transformer checkpoint has it)"),
    ("talking_heads", "block.1.attn.talking_heads.weight has shape (4, 4, 1), expected "
                      "(2, 2, 1) as block 0's"),
    ("no head", "missing key 'head.weight'"),
    ("sps", "the SPS stages are 4-6-16-32 wide and the RPE conv 32, but MS_SPS runs at D/8"),
])
def test_export_refuses_in_one_sentence(tiny_sd, tmp_path, how, needle):
    save_sd(_broken(tiny_sd, how), tmp_path / "bad.pth", "model")
    with pytest.raises(CheckpointError) as exc:
        export_checkpoint(tmp_path / "bad.pth", **TINY_OPTIONS)
    assert needle in str(exc.value), str(exc.value)
    assert str(exc.value).startswith("bad.pth: ") and "\n" not in str(exc.value)
    line = one_error_line(runner.invoke(app, ["export", str(tmp_path / "bad.pth"), "-o",
                                              str(tmp_path / "o.h5"), "--image-size", "32",
                                              "--pooling-stat", "0111"]))
    assert needle in line


@pytest.mark.parametrize("options, needle", [
    ({"attention": "ssa"}, "--attention does not apply to a Spike-driven Transformer"),
    ({"scale": 0.125}, "--scale does not apply to a Spike-driven Transformer"),
    ({"heads": 4}, "--heads 4, but the talking_heads weights [H, H, 1] say 2 heads"),
    ({"pooling_stat": "011"}, "pooling_stat is '011', expected four of 0 and 1"),
    ({"taw": 3}, "T_AW (taw) is a ds2ta parameter"),
    ({"image_size": 0}, "does not fit its 0x0 input"),
])
def test_export_refuses_options_that_do_not_apply(tiny_sd, tmp_path, options, needle):
    path = save_sd(tiny_sd, tmp_path / "sdt.pth")
    with pytest.raises(CheckpointError) as exc:
        export_checkpoint(path, **{**TINY_OPTIONS, **options})
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_sdt_options_are_refused_for_other_families(tmp_path):
    from eventformer.torch_successors import QKFormerConfig

    sd = random_successor_state_dict(QKFormerConfig(image_size=32, dim=32, heads=2, steps=2),
                                     seed=1)
    path = save_sd(sd, tmp_path / "qk.pth")
    with pytest.raises(CheckpointError, match="--pooling-stat is the Spike-driven "
                                              "Transformer's SPS option, but this is a "
                                              "QKFormer checkpoint"):
        export_checkpoint(path, heads=2, image_size=32, pooling_stat="0111")
    with pytest.raises(CheckpointError, match=r"the Erode flag \(erode\) is an sdsa parameter"):
        export_checkpoint(path, heads=2, image_size=32, erode=True)


# --- the command line, end to end -------------------------------------------------------------

def gesture_frames(size: int, steps: int) -> list[np.ndarray]:
    """The real segments framed by number into ``steps`` count frames at ``size`` (the 128x128
    sensor divided down by an integer factor, as infer's spatial plan does)."""
    out = []
    for path in sorted(need_gesture().glob("*.bs2")):
        ev = read_events(path).events.copy()
        ev["x"] //= 128 // size
        ev["y"] //= 128 // size
        out.append(dense_frames(ev, steps, size, size))
    return out


@pytest.mark.parametrize("pooling, erode", [("0111", False), ("0011", True)])
def test_cli_export_then_infer_predicts_as_the_reference(tmp_path, pooling, erode):
    """torch.save(SpikeDrivenTransformerRef.state_dict()) -> ``eventformer export`` ->
    ``eventformer infer --json`` on a real segment: the float32 reference's prediction, its
    logits within 1e-4 and every LIF's spike count (each LIF fires)."""
    cfg = SDTConfig(image_size=32, dim=32, heads=4, depth=2, mlp_ratio=1, steps=8,
                    pooling_stat=pooling, dvs=erode, num_classes=11)
    frames = gesture_frames(32, cfg.steps)
    sd = random_successor_state_dict(cfg, seed=4,
                                     frames=torch.from_numpy(np.stack(frames, 1)).float())
    ref = SpikeDrivenTransformerRef(cfg).eval()
    ref.load_state_dict(sd)
    torch.save(ref.state_dict(), tmp_path / "sdt.pth")
    args = ["export", str(tmp_path / "sdt.pth"), "-o", str(tmp_path / "sdt.h5"),
            "--image-size", "32", "--steps", "8", "--pooling-stat", pooling]
    r = runner.invoke(app, args + (["--erode"] if erode else []))
    assert r.exit_code == 0, r.output
    assert "recognised: Spike-driven Transformer v1 code" in r.stderr
    assert "heads=4" in r.stderr and f"pooling_stat={pooling}" in r.stderr
    assert ("erode=1" if erode else "erode=0 (off: the released train.py") in r.stderr
    assert "talking_heads (saved, never run)" in r.stderr
    segment = sorted(GESTURE_DIR.glob("*.bs2"))[0]
    r = runner.invoke(app, ["infer", str(segment), "--weights", str(tmp_path / "sdt.h5"),
                            "--sensor-size", "128x128", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    x = torch.as_tensor(frames[0])[:, None].float()
    with torch.no_grad():
        logits, spikes = ref(x, record=True)
    want = logits[0].numpy()
    assert all(int(s.sum()) > 0 for s in spikes.values()), \
        [n for n, s in spikes.items() if not s.sum()]
    top2 = np.sort(want)[-2:]
    assert top2[1] - top2[0] > 1e-3  # a decided prediction, not a tie
    assert out["prediction"] == int(np.argmax(want))
    np.testing.assert_allclose(out["logits"], want, rtol=0, atol=1e-4)
    layers = {row["name"]: row for row in out["layers"]}
    assert {n: layers[n]["spikes"] for n in spikes} == {n: int(s.sum())
                                                        for n, s in spikes.items()}
