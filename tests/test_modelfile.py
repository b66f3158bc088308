"""Model file: export round trip against an independent torch fold, validation sentences."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from eventformer.errors import CheckpointError, ModelFileError
from eventformer.modelfile import load, save
from eventformer.modelfile.export import export_checkpoint

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
