"""Model file: export round trip against an independent torch fold, validation sentences, and the
one model-file builder that export, the trainer and the random benchmark models share."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from eventformer.bench.calibrate import random_model
from eventformer.errors import CheckpointError, ModelFileError
from eventformer.modelfile import build_model_file, layer_specs, load, save
from eventformer.modelfile.export import export_checkpoint
from eventformer.models import SpikformerConfig

torch = pytest.importorskip("torch")

from torch_reference import RefConfig, fold_bn, random_state_dict  # noqa: E402

TINY = RefConfig(image_size=32, sps_channels=(16, 32), dim=32, heads=4, depth=1, num_classes=5)


@pytest.fixture()
def tiny_ckpt(tmp_path):
    sd = random_state_dict(TINY, seed=1)
    g = torch.Generator().manual_seed(2)
    for k, v in sd.items():  # non-trivial BatchNorm statistics so the fold matters
        if k.endswith("running_mean") or k.endswith(".bias") and "_bn" in k:
            sd[k] = torch.randn(v.shape, generator=g) * 0.3
        elif k.endswith("running_var") or k.endswith(".weight") and "_bn" in k:
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
    path = tmp_path / "tiny.pth"
    torch.save({"model": sd}, path)
    return path, sd


def test_export_round_trip_matches_torch_fold(tiny_ckpt, tmp_path):
    path, sd = tiny_ckpt
    model, report = export_checkpoint(path, heads=4, scale=0.25, steps=8, image_size=32)
    assert report.inferred["sps_channels"] == [16, 32] and report.inferred["depth"] == 1
    save(tmp_path / "m.h5", model)
    loaded = load(tmp_path / "m.h5")
    assert loaded.config == model.config
    for name, p in loaded.layers.items():
        if p.weight is None or name == "head":
            continue
        conv_w = sd[f"{p.source}.weight"]
        conv_b = sd.get(f"{p.source}.bias")
        bn = {k: sd[f"{p.source.replace('_conv', '_bn')}.{k}"]
              for k in ("weight", "bias", "running_mean", "running_var")}
        w, b = fold_bn(conv_w, conv_b, bn)
        w = w.numpy()
        if p.kind == "linear":
            w = w[:, :, 0]
        np.testing.assert_array_equal(p.weight, w, err_msg=name)
        np.testing.assert_array_equal(p.bias, b.numpy(), err_msg=name)
    np.testing.assert_array_equal(loaded.layers["head"].weight, sd["head.weight"].numpy())


def test_checkpoint_with_missing_key_is_one_sentence(tiny_ckpt, tmp_path):
    path, sd = tiny_ckpt
    del sd["block.0.attn.k_bn.running_var"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing key 'block.0.attn.k_bn.running_var'"):
        export_checkpoint(tmp_path / "bad.pth", heads=4, image_size=32)


def test_checkpoint_with_unexpected_key(tiny_ckpt, tmp_path):
    path, sd = tiny_ckpt
    sd["block.0.attn.extra_conv.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="unexpected key 'block.0.attn.extra_conv.weight'"):
        export_checkpoint(tmp_path / "bad.pth", heads=4, image_size=32)


def test_checkpoint_with_wrong_shape(tiny_ckpt, tmp_path):
    path, sd = tiny_ckpt
    sd["block.0.mlp.fc2_conv.weight"] = torch.zeros(32, 100, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="fc2_conv.weight has shape"):
        export_checkpoint(tmp_path / "bad.pth", heads=4, image_size=32)


def test_checkpoint_with_nan(tiny_ckpt, tmp_path):
    path, sd = tiny_ckpt
    sd["patch_embed.proj_conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        export_checkpoint(tmp_path / "bad.pth", heads=4, image_size=32)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        export_checkpoint(bad)


@pytest.fixture()
def model_file(tiny_ckpt, tmp_path):
    model, _ = export_checkpoint(tiny_ckpt[0], heads=4, steps=8, image_size=32)
    out = tmp_path / "m.h5"
    save(out, model)
    return out


def test_model_file_of_another_version(model_file):
    with h5py.File(model_file, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ModelFileError, match="format version 99"):
        load(model_file)


def test_model_file_with_nan_weights(model_file):
    with h5py.File(model_file, "a") as f:
        w = f["layers/block.0.attn.q_lif/weight"]
        data = w[()]
        data[0, 0] = np.nan
        w[...] = data
    with pytest.raises(ModelFileError, match="block.0.attn.q_lif/weight holds NaN"):
        load(model_file)


def test_model_file_with_wrong_shape(model_file):
    with h5py.File(model_file, "a") as f:
        del f["layers/block.0.mlp.fc1_lif/bias"]
        f["layers/block.0.mlp.fc1_lif"].create_dataset("bias", data=np.zeros(7, np.float32))
    with pytest.raises(ModelFileError, match=r"fc1_lif/bias has shape \(7,\)"):
        load(model_file)


def test_model_file_missing_layer(model_file):
    with h5py.File(model_file, "a") as f:
        del f["layers/patch_embed.rpe_lif"]
    with pytest.raises(ModelFileError, match="layer 'patch_embed.rpe_lif' is missing"):
        load(model_file)


def test_not_hdf5_and_not_ours(tmp_path):
    (tmp_path / "a.h5").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="not an HDF5 file"):
        load(tmp_path / "a.h5")
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(ModelFileError, match="not an eventformer model"):
        load(tmp_path / "b.h5")
    with pytest.raises(ModelFileError, match="no such model file"):
        load(tmp_path / "missing.h5")


# --------------------------------------------------------------------------------------------------
# The one builder: export, the trainer and the random benchmark models all go through it
# --------------------------------------------------------------------------------------------------

SMALL = SpikformerConfig(image_size=32, sps_channels=(16, 32), sps_pool=(True, True), dim=32,
                         heads=4, depth=2, mlp_hidden=64, num_classes=5)


def test_saved_file_is_version_2_with_ssa_blocks(model_file):
    with h5py.File(model_file) as f:
        assert f.attrs["format_version"] == 2
        assert sorted(f["attention"]) == ["block.0.attn"]
        assert f["attention/block.0.attn"].attrs["operator"] == "ssa"
        assert len(f["attention/block.0.attn"]) == 0
    m = load(model_file)
    assert m.format_version == 2 and [a.operator for a in m.attention] == ["ssa"]


def test_random_model_is_the_plain_uniform_stream():
    """The random model's BatchNorms fold exactly to the identity: weights and biases are the
    uniform draws themselves, in layer order (what the benchmarks have always measured)."""
    model = random_model(SMALL, seed=3)
    rng = np.random.default_rng(3)
    for spec in layer_specs(SMALL):
        if spec.weight_shape is None:
            continue
        bound = 1.0 / np.sqrt(np.prod(spec.weight_shape[1:]))
        w = rng.uniform(-bound, bound, spec.weight_shape).astype(np.float32)
        b = rng.uniform(-bound, bound, spec.bias_shape).astype(np.float32)
        np.testing.assert_array_equal(model.layers[spec.name].weight, w, spec.name)
        np.testing.assert_array_equal(model.layers[spec.name].bias, b, spec.name)
    assert model.provenance == {"source_checkpoint": "random seed 3"}


@pytest.mark.parametrize("attention", ["ds2ta", "ssa_bin", "saformer"])
def test_random_model_of_a_variant(attention, tmp_path):
    cfg = SpikformerConfig(**{**SMALL.to_dict(), "attention": attention})
    save(tmp_path / "r.h5", random_model(cfg, seed=1))
    m = load(tmp_path / "r.h5")
    assert [a.operator for a in m.attention] == [attention] * 2
    p = m.attention[1].params
    if attention == "ds2ta":
        assert p["tau"].tolist() == [2, 2, 2, 2] and int(p["taw"]) == 3
        assert p["nsad_table"].tolist() == [[0, 0, 0, 3, 4, 5, 6, 7, 8]] * 4
    elif attention == "ssa_bin":
        assert p["delta"].tolist() == [0] * 4 and not p["vbar"].any()
    else:
        assert int(p["pool_rows"]) == 4 and p["dwc_weight"].shape == (32, 3, 3)
        assert np.abs(p["dwc_weight"]).max() <= 1 / 3 and np.unique(p["dwc_weight"]).size > 100
        assert "block.0.attn.v_lif" not in m.layers


def _tensors(cfg, seed=0):
    """Official-key tensors for ``cfg`` (ssa), as numpy float64."""
    rng = np.random.default_rng(seed)
    t = {}
    for spec in layer_specs(cfg):
        if spec.weight_shape is None:
            continue
        shape = spec.weight_shape + ((1,) if spec.kind == "linear" else ())
        t[f"{spec.source}.weight"] = rng.normal(size=shape)
        if spec.conv_has_bias:
            t[f"{spec.source}.bias"] = rng.normal(size=spec.bias_shape)
        if spec.bn:
            n = spec.bias_shape[0]
            t.update({f"{spec.bn}.weight": rng.random(n) + 0.5, f"{spec.bn}.bias": rng.normal(size=n),
                      f"{spec.bn}.running_mean": rng.normal(size=n),
                      f"{spec.bn}.running_var": rng.random(n) + 0.5,
                      f"{spec.bn}.num_batches_tracked": np.array(3)})
    return t


def test_builder_folds_in_float64_and_rounds_once():
    t = _tensors(SMALL)
    m32 = build_model_file(SMALL, t)
    m64 = build_model_file(SMALL, t, dtype=np.float64)
    name, conv, bn = "block.1.mlp.fc1_lif", "block.1.mlp.fc1_conv", "block.1.mlp.fc1_bn"
    g = t[f"{bn}.weight"] / np.sqrt(t[f"{bn}.running_var"] + 1e-5)
    w = t[f"{conv}.weight"][:, :, 0] * g[:, None]
    b = t[f"{bn}.bias"] + (t[f"{conv}.bias"] - t[f"{bn}.running_mean"]) * g
    np.testing.assert_array_equal(m64.layers[name].weight, w)
    np.testing.assert_array_equal(m64.layers[name].bias, b)
    assert m32.layers[name].weight.dtype == np.float32
    np.testing.assert_array_equal(m32.layers[name].weight, w.astype(np.float32))


def test_builder_problems_name_the_source():
    t = _tensors(SMALL)
    del t["block.1.attn.v_bn.running_mean"]
    with pytest.raises(CheckpointError, match="^mine: missing key 'block.1.attn.v_bn.running_mean'$"):
        build_model_file(SMALL, t, source="mine")
    t = _tensors(SMALL)
    t["block.0.attn.tau"] = np.zeros(4)  # a ds2ta key in an ssa model
    with pytest.raises(CheckpointError, match="unexpected key 'block.0.attn.tau'"):
        build_model_file(SMALL, t, source="mine")
    t = _tensors(SMALL)
    t["patch_embed.rpe_bn.running_var"][3] = -1.0
    with pytest.raises(CheckpointError, match="patch_embed.rpe_bn.running_var has negative"):
        build_model_file(SMALL, t)
    bad = SpikformerConfig(**{**SMALL.to_dict(), "heads": 5})
    with pytest.raises(CheckpointError, match="not divisible by 5 heads"):
        build_model_file(bad, _tensors(SMALL))


def test_trainer_export_goes_through_the_builder():
    from eventformer.train.export import to_model_file

    t = _tensors(SMALL)
    state = {k: v for k, v in t.items() if "running" in k or "num_batches" in k}
    params = {k: v for k, v in t.items() if k not in state}
    m = to_model_file(params, state, SMALL, {"epochs": 1})
    ref = build_model_file(SMALL, t)
    for name, p in ref.layers.items():
        if p.weight is not None:
            np.testing.assert_array_equal(m.layers[name].weight, p.weight)
            np.testing.assert_array_equal(m.layers[name].bias, p.bias)
    assert m.provenance["training"] == {"epochs": 1}
    params["block.0.mlp.fc2_conv.weight"] = params["block.0.mlp.fc2_conv.weight"] * np.nan
    with pytest.raises(CheckpointError, match="trainer parameters: block.0.mlp.fc2_conv.weight "
                                              "holds NaN"):
        to_model_file(params, state, SMALL)


def test_provenance_keeps_names_not_absolute_paths():
    from eventformer.modelfile.provenance import absolute_paths, portable

    record = {"data": "/root/.cache/eventformer/synthetic-dvs-gesture-v1-seed0",
              "command": "eventformer train --lr 3e-3 -o /tmp/run/m.h5 --data-dir=/srv/dvs",
              "windows": "C:\\Users\\me\\ckpt.pth", "home": "~/models/m.h5",
              "kept": ["weights/m.h5", "x // f", "https://example.org/a/b", 1.5, None]}
    assert portable(record) == {
        "data": "synthetic-dvs-gesture-v1-seed0",
        "command": "eventformer train --lr 3e-3 -o m.h5 --data-dir=dvs",
        "windows": "ckpt.pth", "home": "m.h5",
        "kept": ["weights/m.h5", "x // f", "https://example.org/a/b", 1.5, None]}
    assert absolute_paths(portable(record)) == []
    assert len(absolute_paths(record)) == 5


def test_writers_store_no_absolute_paths(tmp_path, tiny_ckpt):
    """The trainer's metadata goes through the builder, the file through save: neither keeps
    the writing machine's paths; checkpoint export names the checkpoint by its file name."""
    from eventformer.modelfile.provenance import absolute_paths
    from eventformer.train.export import to_model_file

    t = _tensors(SMALL)
    state = {k: v for k, v in t.items() if "running" in k or "num_batches" in k}
    params = {k: v for k, v in t.items() if k not in state}
    meta = {"data": {"data": str(tmp_path / "cache" / "train-set")},
            "command": f"eventformer train -o {tmp_path / 'm.h5'}"}
    m = to_model_file(params, state, SMALL, meta)
    assert m.provenance["training"] == {"data": {"data": "train-set"},
                                        "command": "eventformer train -o m.h5"}
    m.provenance["later"] = str(tmp_path / "added" / "after-building")  # save cuts it too
    save(tmp_path / "m.h5", m)
    assert load(tmp_path / "m.h5").provenance["later"] == "after-building"
    assert str(tmp_path).encode() not in (tmp_path / "m.h5").read_bytes()

    path, _ = tiny_ckpt
    exported, _ = export_checkpoint(path.resolve(), heads=4, image_size=32)
    save(tmp_path / "e.h5", exported)
    prov = load(tmp_path / "e.h5").provenance
    assert prov["source_checkpoint"] == "tiny.pth" and absolute_paths(prov) == []


def test_shipped_model_files_hold_no_absolute_paths():
    from eventformer.modelfile.provenance import absolute_paths
    from eventformer.weights import installed_models

    installed = installed_models()
    if not installed:
        pytest.skip("no shipped model installed")
    for name, path in installed.items():
        prov = load(path).provenance
        assert prov and absolute_paths(prov) == [], (name, absolute_paths(prov))
        raw = path.read_bytes()  # nor left in HDF5's free space
        assert not any(s in raw for s in (b"/root/", b"/tmp/", b"/home/", b"/Users/")), name


def test_inspect_takes_shipped_names_and_tells_provenance_in_rows():
    from typer.testing import CliRunner

    from eventformer.weights import installed_models, shipped_model_path
    from eventformer_cli.main import app

    if "ds2ta" not in installed_models():
        pytest.skip("the shipped ds2ta is not installed")
    runner = CliRunner()
    r = runner.invoke(app, ["inspect", "ds2ta"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("provenance"))
    rows = [line for line in lines[start + 1:] if line.startswith("    ")]
    assert 5 < len(rows) < 30 and not any("{'" in line for line in rows), rows
    values = [line[4:].split("  ", 1)[0].strip() for line in rows]
    assert "training.history" in values and "training.epochs" in values
    column = {len(line) - len(line[4:].split("  ", 1)[1].lstrip()) for line in rows
              if "  " in line[4:]}
    assert len(column) == 1, "the values start in one column"
    history = next(line for line in rows if "training.history" in line)
    assert "40 entries (epoch, " in history
    j = runner.invoke(app, ["inspect", "ds2ta", "--json"])
    assert j.exit_code == 0
    assert json.loads(j.stdout)["provenance"] == load(shipped_model_path("ds2ta")).provenance
    r = runner.invoke(app, ["inspect", "nosuch"])
    assert r.exit_code == 2 and "nor a shipped model's name" in r.stderr
