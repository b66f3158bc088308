"""Damaged model files end as one sentence, never a traceback or an internal error.

A valid model file (each shipped Spikformer variant, and a sequential SNN) is damaged one way at
a time: every attribute (and every field of the JSON configuration) and every dataset is given
the wrong type, emptied, made huge, negative or NaN, reshaped or deleted, and bytes of the file
are flipped. ``eventformer inspect F`` must then exit 0 or exit 2 with exactly one ``error:``
line; ``eventformer infer EVENTS --weights F`` must too, on a tiny recording, for every damaged
file the loader accepts (those are the ones that reach the engine) and for a sample of the others.

Layers of one kind repeat the same attributes, so every attribute name is damaged on one layer
of each kind (conv2d, linear, attention, head) rather than on all of them: that keeps the test to
a few seconds per model.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from eventformer.errors import ModelFileError
from eventformer.events import write_npy
from eventformer.modelfile import load, save
from eventformer.modelfile.snn import NeuronParams, SnnConfig, SnnModelFile, Stage
from eventformer.weights import SHIPPED_MODELS, shipped_model_path
from eventformer_cli.main import app

runner = CliRunner()

DELETE = object()
# attribute values that are wrong for every attribute (or for most: those right by chance load)
ATTRIBUTE_DAMAGE = {
    "text": "bogus", "number": 7, "empty text": "", "null": h5py.Empty("f8"),
    "huge": 1e300, "huge integer": np.int64(2**62), "negative": -1, "nan": np.nan,
    "array": np.arange(3), "deleted": DELETE,
}
# values of a JSON field (the configuration, the provenance)
FIELD_DAMAGE = {
    "text": "bogus", "null": None, "huge": 1e9, "huge integer": 2**70, "negative": -1,
    "nan": float("nan"), "empty list": [], "object": {"a": 1}, "float": 2.5, "deleted": DELETE,
}
DATASET_DAMAGE = ("text", "integers", "empty", "null", "huge", "negative", "nan", "shape",
                  "deleted", "group")


def _damage_attribute(obj, key, value):
    if value is DELETE:
        del obj.attrs[key]
    else:
        obj.attrs[key] = value


def _damage_field(f, attr, field, value):
    d = json.loads(f.attrs[attr])
    if value is DELETE:
        d.pop(field)
    else:
        d[field] = value
    f.attrs[attr] = json.dumps(d)


def _damage_dataset(group, key, how):
    ds = group[key]
    shape, dtype = ds.shape, ds.dtype
    old = ds[()]
    del group[key]
    if how == "deleted":
        return
    if how == "group":
        group.create_group(key)
    elif how == "text":
        group.create_dataset(key, data=np.full(shape, b"bogus"))
    elif how == "integers":
        group.create_dataset(key, data=np.ones(shape, np.int64))
    elif how == "empty":
        group.create_dataset(key, data=np.zeros((0,), dtype))
    elif how == "null":
        group.create_dataset(key, data=h5py.Empty(dtype))
    elif how == "shape":
        group.create_dataset(key, data=np.zeros(shape + (2,), dtype))
    else:
        fill = {"huge": 3e38 if dtype.kind == "f" else np.iinfo(dtype).max,
                "negative": -1, "nan": np.nan if dtype.kind == "f" else -(2**31)}[how]
        group.create_dataset(key, data=np.full(np.shape(old), fill, dtype))


def _representatives(f) -> list:
    """The groups whose attributes are damaged: the root, one layer of each kind (or every SNN
    stage and neuron group), every attention block."""
    picked, kinds = [f], set()

    def visit(name, obj):
        if not isinstance(obj, h5py.Group):
            return
        kind = obj.attrs.get("kind")
        if name.startswith("layers/") and kind is not None:
            if kind in kinds:
                return
            kinds.add(kind)
        picked.append(obj)
    f.visititems(visit)
    return picked


def damages(path):
    """Every (description, function damaging an open h5py.File) for the model file at ``path``."""
    out = []
    with h5py.File(path, "r") as f:
        for g in _representatives(f):
            for key in g.attrs:
                if key in ("config", "provenance"):
                    for field in json.loads(g.attrs[key]):
                        for how, value in FIELD_DAMAGE.items():
                            out.append((f"{key}.{field} {how}",
                                        lambda f, key=key, field=field, value=value:
                                        _damage_field(f, key, field, value)))
                for how, value in ATTRIBUTE_DAMAGE.items():
                    out.append((f"{g.name}@{key} {how}",
                                lambda f, name=g.name, key=key, value=value:
                                _damage_attribute(f[name], key, value)))
        datasets = []
        f.visititems(lambda name, obj: datasets.append(name)
                     if isinstance(obj, h5py.Dataset) else None)
        for name in datasets:
            parent, key = name.rsplit("/", 1)
            for how in DATASET_DAMAGE:
                out.append((f"/{name} {how}", lambda f, parent=parent, key=key, how=how:
                            _damage_dataset(f[parent], key, how)))
    return out


def _byte_flips(path, n, seed):
    """``n`` (description, file bytes) with one byte flipped each: half aimed at HDF5's metadata
    (object headers, B-trees, heaps), half anywhere (mostly weights)."""
    data = open(path, "rb").read()
    raw = np.zeros(len(data), bool)
    with h5py.File(path, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                start = obj.id.get_offset()
                raw[start:start + obj.id.get_storage_size()] = True
        f.visititems(visit)
    meta = np.flatnonzero(~raw)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pos = int(rng.choice(meta)) if i % 2 == 0 else int(rng.integers(len(data)))
        flipped = bytearray(data)
        flipped[pos] ^= int(rng.integers(1, 256))
        out.append((f"flipped byte {pos}", bytes(flipped)))
    return out


def _snn_model(path):
    """A small sequential SNN (snnTorch neurons): conv -> sum pool -> flatten -> linear."""
    rng = np.random.default_rng(0)
    cfg = SnnConfig(in_channels=2, image_size=32, num_classes=4, steps=4, neurons="snntorch",
                    class_names=("a", "b", "c", "d"))

    def neurons(shape):
        return NeuronParams("snntorch", {"beta": np.full(shape, 0.9), "theta": np.ones(shape)},
                            {"reset": "subtract"})

    stages = [
        Stage("conv2d", "conv", rng.normal(0, 0.5, (4, 2, 3, 3)), np.zeros(4), stride=2,
              padding=1, neuron=neurons((4, 16, 16))),
        Stage("sumpool", "pool", kernel=2, stride=2),
        Stage("flatten", "flat"),
        Stage("linear", "fc", rng.normal(0, 0.3, (4, 256)), np.zeros(4), neuron=neurons((4,))),
    ]
    save(path, SnnModelFile(cfg, stages, provenance={"source": "built by the test"}))
    return path


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    d = tmp_path_factory.mktemp("events")
    rng = np.random.default_rng(1)
    n = 600
    ev = np.zeros(n, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = np.sort(rng.integers(0, 20_000, n))
    ev["x"], ev["y"] = rng.integers(0, 32, n), rng.integers(0, 32, n)
    ev["p"] = rng.integers(0, 2, n)
    write_npy(d / "tiny.npy", ev)
    return d / "tiny.npy"


def _ends_cleanly(args, what):
    """Exit 0, or exit 2 with exactly one line, an ``error:`` one; never a traceback or an
    internal error."""
    r = runner.invoke(app, args)
    text = r.output + (r.stderr or "")
    assert "Traceback" not in text and "internal error" not in text, f"{what}: {text}"
    assert r.exception is None or isinstance(r.exception, SystemExit), (what, repr(r.exception))
    if r.exit_code == 0:
        return True
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        f"{what}: exit {r.exit_code}: {r.stderr}"
    return False


def _loads_or_one_sentence(path, what) -> bool:
    """The loader itself, in-process (fast enough for every case): a model, or one
    ModelFileError sentence; any other exception fails the test."""
    try:
        load(path)
    except ModelFileError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path)), f"{what}: {exc}"
        return False
    return True


def _cli_ends_cleanly(path, recording, what) -> None:
    _ends_cleanly(["inspect", str(path)], what)
    _ends_cleanly(["infer", str(recording), "--weights", str(path)], what)


def _check_cases(valid, cases, recording, tmp_path, cli_accepted=6, cli_refused=3):
    """Each case damages a copy of ``valid``: the loader must end cleanly on every one; the
    command line (inspect, then infer) runs on the first accepted file of each kind of damage
    (they reach the engine) and on a few refused ones. Returns (refused, accepted) counts."""
    damaged = tmp_path / "damaged.h5"
    refused, kinds = [], {}
    for what, damage in cases:
        if isinstance(damage, bytes):
            damaged.write_bytes(damage)
        else:
            shutil.copy(valid, damaged)
            with h5py.File(damaged, "r+") as f:
                damage(f)
        if _loads_or_one_sentence(damaged, what):
            kind = what.rsplit(" ", 1)[-1]
            if kind not in kinds and len(kinds) < cli_accepted:
                kinds[kind] = what
                _cli_ends_cleanly(damaged, recording, what)
        else:
            refused.append(what)
            if len(refused) % max(1, len(cases) // (cli_refused + 1)) == 1 and cli_refused:
                _cli_ends_cleanly(damaged, recording, what)
    return len(refused), len(cases) - len(refused)


def _valid_copy(model: str, tmp_path):
    """A valid model file to damage: an SNN built here, or a copy of a shipped model."""
    if model == "snn":
        return _snn_model(tmp_path / "valid.h5")
    if shipped_model_path(model) is None:
        pytest.skip(f"the shipped {model} is not installed")
    return shutil.copy(shipped_model_path(model), tmp_path / "valid.h5")


def _variant_specific(what: str) -> bool:
    return "attention" in what


@pytest.mark.parametrize("model", [*SHIPPED_MODELS, "snn"])
def test_every_damaged_attribute_and_dataset_is_one_sentence(model, recording, tmp_path):
    """The Spikformer variants share everything but their attention operator: each variant is
    damaged in its attention groups and parameters, and the damage common to all (root,
    configuration, layers) is shared out among the four, each case on one of them."""
    valid = _valid_copy(model, tmp_path)
    assert _ends_cleanly(["infer", str(recording), "--weights", str(valid)], "valid file")
    cases = damages(valid)
    if model != "snn":
        share = list(SHIPPED_MODELS).index(model)
        common = [c for c in cases if not _variant_specific(c[0])]
        cases = [c for c in cases if _variant_specific(c[0])] + common[share::len(SHIPPED_MODELS)]
    refused, accepted = _check_cases(valid, cases, recording, tmp_path)
    # the damage is real: most of it is refused (a test that accepts everything proves nothing)
    assert refused > 0.6 * len(cases), (refused, accepted)


@pytest.mark.parametrize("model", [*SHIPPED_MODELS, "snn"])
def test_flipped_bytes_are_one_sentence(model, recording, tmp_path):
    valid = _valid_copy(model, tmp_path)
    refused, _ = _check_cases(valid, _byte_flips(valid, 100, seed=3), recording, tmp_path,
                              cli_accepted=3)
    assert refused > 0


@pytest.mark.parametrize("damage, needle", [
    (lambda f: _damage_field(f, "config", "in_channels", "abc"),
     "configuration field in_channels is 'abc', expected an integer"),
    (lambda f: _damage_field(f, "config", "clip_us", "bogus"),
     "configuration field clip_us is 'bogus', expected an integer"),
    (lambda f: _damage_field(f, "config", "image_size", 1e9),
     "configuration field image_size is 1000000000.0, expected an integer"),
    (lambda f: _damage_field(f, "config", "image_size", 10**9),
     "configuration field image_size is 1000000000, expected an integer from 1 to 2048"),
    (lambda f: _damage_attribute(f["layers/block.0.attn.q_lif"], "theta", "bogus"),
     "layers/block.0.attn.q_lif attribute theta is 'bogus', expected a number"),
    (lambda f: _damage_attribute(f["layers/patch_embed.proj_lif"], "stride", 10**9),
     "layers/patch_embed.proj_lif attribute stride is 1000000000, expected 1"),
    (lambda f: _damage_dataset(f["layers/head"], "weight", "shape"),
     "layers/head/weight has shape (11, 64, 2), expected (11, 64)"),
    (lambda f: _damage_dataset(f["attention/block.0.attn"], "taw", "huge"),
     "block.0.attn/taw is 2147483647, expected a window T_AW of at most 4096"),
    (lambda f: _damage_attribute(f, "provenance", "{not json"),
     "the attribute provenance is not valid JSON"),
])
def test_damage_is_named(damage, needle, tmp_path):
    path = shutil.copy(shipped_model_path("ds2ta"), tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(ModelFileError) as exc:
        load(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_snn_config_of_none_is_named(tmp_path):
    path = _snn_model(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        _damage_field(f, "config", "steps", None)
    with pytest.raises(ModelFileError, match="configuration field steps is empty \\(null\\), "
                                             "expected an integer"):
        load(path)


@pytest.mark.parametrize("special", ["fifo", "directory", "device"])
def test_special_files_as_model_are_refused(special, recording, tmp_path):
    """A FIFO would block HDF5's open forever, a device would read without end."""
    writer = None
    if special == "fifo":
        path = tmp_path / "m.h5"
        os.mkfifo(path)
        assert stat.S_ISFIFO(os.stat(path).st_mode)
        needle = "is a FIFO (named pipe), not a model file"
        # should anything open the FIFO to read, it would wait for a writer forever (holding
        # the GIL, inside HDF5): a writer process that comes and goes makes the test fail on
        # the message instead of hanging
        writer = subprocess.Popen([sys.executable, "-c", WRITER_THAT_LEAVES, str(path)])
    elif special == "directory":
        path = tmp_path / "m.h5"
        path.mkdir()
        needle = "is a directory, not a model file"
    else:
        path = "/dev/zero"
        if not os.path.exists(path):
            pytest.skip("no /dev/zero here")
        needle = "is a character device, not a model file"
    try:
        for args in (["inspect", str(path)], ["infer", str(recording), "--weights", str(path)]):
            r = runner.invoke(app, args)
            assert r.exit_code == 2, r.output
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and needle in lines[0], r.stderr
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()


WRITER_THAT_LEAVES = """
import os, sys, time
while True:
    try:
        os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))  # fails without a reader
    except OSError:
        pass
    time.sleep(0.2)
"""
