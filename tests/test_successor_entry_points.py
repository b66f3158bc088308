"""QKFormer and the Spike-driven Transformer through the tools every model file goes through.

- ``eventformer.torch_model`` is the one plain-torch entry point: ``folded_reference`` of a model
  file (or a state dict, or a reference) of either successor gives its
  ``eventformer.torch_successors`` reference holding the folded weights, Spikformer's still
  ``SpikformerRef``; ``successor_config`` reads the released layouts back from their
  descriptions and refuses any other in one sentence. On the exact tiny models of
  tests/test_qkformer.py and tests/test_sdt_engine.py (dyadic weights, BatchNorms that fold
  exactly) the folded reference is the unfolded one, spike for spike, in float64.
- ``eventformer inspect`` names the network (Spikformer, QKFormer, Spike-driven Transformer) and
  every attention operator; ``eventformer compare`` shows QKFormer's as ``token_qk+ssa``.
- A max-pool of a current before its LIF (QKFormer's patch embeddings, SDT's last SPS stage)
  counts the window maxima it forms, as the spike max-pools do.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_qkformer import TINY, event_steps, grid_state_dict, tiny_config  # noqa: E402
from test_sdt_engine import exact_model  # noqa: E402
from test_sdt_engine import sample as sdt_sample  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import kernel_twins  # noqa: E402
from eventformer.kernels import counters as C  # noqa: E402
from eventformer.layers import PathPolicy  # noqa: E402
from eventformer.layers.synapses import Conv2dStage  # noqa: E402
from eventformer.modelfile import build_model_file, save  # noqa: E402
from eventformer.modelfile.format import LayerParams  # noqa: E402
from eventformer.models import Spikformer, SpikformerConfig  # noqa: E402
from eventformer.models.presets import (qkformer_cifar10_dvs, qkformer_description,  # noqa: E402
                                        qkformer_gesture, sdt_gesture)
from eventformer.torch_model import (SpikformerRef, folded_reference,  # noqa: E402
                                     random_state_dict, ref_config, reference_model,
                                     successor_config)
from eventformer.torch_successors import (QKFormerConfig, QKFormerRef, SDTConfig,  # noqa: E402
                                          SpikeDrivenTransformerRef, dvs_like_frames,
                                          random_successor_state_dict)
from eventformer_cli.main import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def qkformer(tmp_path_factory):
    """test_qkformer's TINY on its exact grid: (state dict, float64 model file, float32 file
    on disk, two samples [T, C, H, W])."""
    sd = grid_state_dict(TINY, 0, dvs_like_frames(TINY.steps, 2, 2, 64, seed=3))
    tensors = {k: v.numpy() for k, v in sd.items()}
    model = build_model_file(tiny_config(), tensors, source="exact QKFormer", dtype=np.float64)
    path = tmp_path_factory.mktemp("qk") / "qkformer.h5"
    save(path, build_model_file(tiny_config(), tensors, source="exact QKFormer"))
    samples = [dvs_like_frames(TINY.steps, 1, 2, 64, seed=s)[:, 0] for s in (11, 12)]
    return sd, model, path, samples


@pytest.fixture(scope="module")
def sdt(tmp_path_factory):
    """test_sdt_engine's exact 8x8 SDT with Erode: (state dict, float64 model file, float32 file
    on disk)."""
    _, model, sd = exact_model("8x8", True)
    path = tmp_path_factory.mktemp("sdt") / "sdt.h5"
    save(path, build_model_file(model.config, {k: v.numpy() for k, v in sd.items()},
                                source="exact SDT", erode=1))
    return sd, model, path


@pytest.fixture(scope="module")
def spikformer_file(tmp_path_factory):
    cfg = SpikformerConfig(image_size=32, sps_channels=(16, 32), sps_pool=(True, True), dim=32,
                           heads=4, depth=1, mlp_hidden=64, num_classes=11, steps=4)
    sd = random_state_dict(ref_config(cfg), seed=0)
    path = tmp_path_factory.mktemp("spikformer") / "spikformer.h5"
    save(path, build_model_file(cfg, {k: v.double().numpy() for k, v in sd.items()}))
    return path


def _run(ref, frames: torch.Tensor):
    with torch.no_grad():
        return ref(frames.double(), record=True)


def _same_run(got, want) -> None:
    """Two references' (logits, spikes) on one sample: every LIF fires, the same spikes, the
    logits to 1e-9."""
    (logits, spikes), (want_logits, want_spikes) = got, want
    silent = [n for n, s in want_spikes.items() if not s.any()]
    assert not silent, f"silent LIFs (the comparison would be vacuous): {silent}"
    assert list(spikes) == list(want_spikes)
    for name, s in want_spikes.items():
        assert torch.equal(spikes[name], s), name
    np.testing.assert_allclose(logits.numpy(), want_logits.numpy(), rtol=0, atol=1e-9)


# --- torch_model: one entry point -----------------------------------------------------------

def test_the_released_layouts_read_back_as_the_references_configurations():
    assert successor_config(sdt_gesture()) == SDTConfig.gesture()
    assert successor_config(sdt_gesture(), dvs=True) == SDTConfig.gesture(dvs=True)
    assert successor_config(qkformer_gesture()) == QKFormerConfig()
    assert successor_config(qkformer_cifar10_dvs()) == QKFormerConfig.cifar10_dvs()
    assert successor_config(qkformer_gesture(stage1_depth=0, dim=64, heads=4)) == \
        QKFormerConfig(stage1_depth=0, dim=64, heads=4)
    assert ref_config(tiny_config()) == TINY  # ref_config dispatches
    assert type(reference_model(sdt_gesture(depth=1, image_size=32, dim=32, heads=2))) is \
        SpikeDrivenTransformerRef
    assert type(reference_model(tiny_config())) is QKFormerRef
    assert type(reference_model(SpikformerConfig(image_size=32, sps_channels=(16, 32), dim=32,
                                                 heads=4, depth=1))) is SpikformerRef


def test_a_description_that_is_not_the_released_layout_is_refused_in_one_sentence():
    config = SpikformerConfig.described(qkformer_description(64, 4, mlp_hidden=(100, 300)),
                                        image_size=64)  # no single MLP ratio gives both
    with pytest.raises(ValueError) as err:
        reference_model(config)
    assert "not the released QKFormer layout" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("source", ["model file", "path", "state dict", "reference"])
def test_folded_reference_of_a_qkformer_is_its_reference(qkformer, source):
    """On the grid the fold is exact: the folded QKFormerRef is the checkpoint's own, spike for
    spike and logit for logit, from the model file (in memory or on disk, float32 there), the
    state dict or the unfolded reference."""
    sd, model, path, samples = qkformer
    ref = QKFormerRef(TINY).double().eval()
    ref.load_state_dict(sd)
    arg = {"model file": model, "path": path, "state dict": sd, "reference": ref}[source]
    options = {"heads": TINY.heads, "image_size": TINY.image_size, "steps": TINY.steps} \
        if source == "state dict" else {}
    folded = folded_reference(arg, **options)
    assert type(folded) is QKFormerRef and folded.cfg == TINY
    assert folded.head.weight.dtype == torch.float64 and not folded.training
    for frames in samples:
        _same_run(_run(folded, frames[:, None]), _run(ref, frames[:, None]))


@pytest.mark.parametrize("source", ["model file", "path", "state dict"])
def test_folded_reference_of_an_sdt_is_its_reference(sdt, source):
    """The same for the Spike-driven Transformer, Erode (dvs) taken from the file's sdsa
    blocks, or given for a state dict."""
    sd, model, path = sdt
    ref = SpikeDrivenTransformerRef(successor_config(model.config, dvs=True)).double().eval()
    ref.load_state_dict(sd)
    arg = {"model file": model, "path": path, "state dict": sd}[source]
    options = {"image_size": 32, "steps": 4, "pooling_stat": ref.cfg.pooling_stat,
               "dvs": True} if source == "state dict" else {}
    folded = folded_reference(arg, **options)
    assert type(folded) is SpikeDrivenTransformerRef and folded.cfg == ref.cfg
    assert folded.cfg.dvs
    for seed in (0, 1):
        frames, _ = sdt_sample(seed)
        _same_run(_run(folded, frames), _run(ref, frames))


def test_a_spikformer_file_still_gives_spikformers_reference(spikformer_file):
    ref = folded_reference(spikformer_file)
    assert type(ref) is SpikformerRef and ref.cfg.heads == 4


# --- inspect names the network --------------------------------------------------------------

@pytest.mark.parametrize("which, name, key, operators", [
    ("qkformer", "QKFormer", "qkformer", "token_qk+ssa"),
    ("sdt", "Spike-driven Transformer", "sdt", "sdsa"),
    ("spikformer", "Spikformer", "spikformer", "ssa"),
])
def test_inspect_names_the_network(which, name, key, operators, qkformer, sdt, spikformer_file):
    path = {"qkformer": qkformer[2], "sdt": sdt[2], "spikformer": spikformer_file}[which]
    r = runner.invoke(app, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines()[0].startswith(f"{path}: {name}, ")
    r = runner.invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["architecture"] == key and info["attention"]["operator"] == operators


# --- compare shows every operator -----------------------------------------------------------

def test_compare_shows_every_attention_operator_of_a_qkformer(tmp_path, monkeypatch):
    """A QKFormer for the embedded synthetic set (32x32, 11 classes): its run's attention is
    token_qk+ssa in the JSON and in the table."""
    monkeypatch.delenv("EVENTFORMER_DATA", raising=False)
    import eventformer.datasets as datasets

    monkeypatch.setattr(datasets, "find_dvs_gesture", lambda data_dir: None)
    cfg = QKFormerConfig(image_size=32, dim=32, heads=2, steps=4)
    sd = random_successor_state_dict(cfg, seed=0)
    path = tmp_path / "qk32.h5"
    save(path, build_model_file(qkformer_gesture(dim=32, heads=2, image_size=32, steps=4),
                                {k: v.double().numpy() for k, v in sd.items()}))
    args = ["compare", "--weights", str(path), "--dtype", "float32", "--limit", "1"]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    (run,) = json.loads(r.stdout)["runs"]
    assert run["attention"] == "token_qk+ssa"
    r = runner.invoke(app, [*args, "--wide"])
    assert r.exit_code == 0, r.output
    assert "token_qk+ssa" in r.stderr


def test_infer_shows_every_attention_operator_of_a_qkformer(tmp_path):
    """infer's JSON and its per-layer table name QKFormer's attention as token_qk+ssa."""
    from conftest import uniform_events
    from eventformer.events import write_npy

    events = uniform_events(np.random.default_rng(0), 3000, 128)
    rec = tmp_path / "rec.npy"
    write_npy(str(rec), events)
    args = ["infer", str(rec), "--weights", "qkformer"]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[0])["attention"] == "token_qk+ssa"
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "attention token_qk+ssa" in " ".join(r.stderr.split())


# --- a max-pool before the LIF counts its maxima --------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "int16"])
def test_a_max_pool_before_the_lif_counts_the_maxima_it_forms(dtype):
    """One window maximum per pooled value of every step whose current is pooled: the naive
    count (kernel_twins.maxpool2d_maxima) on a 7x6 map, step by step and offline; a quiet step
    (no input: the current is the bias everywhere, pooled once for all) forms none."""
    rng = np.random.default_rng(0)
    h, w, cin, cout = 7, 6, 2, 3
    params = LayerParams("stem.proj_lif", "conv", rng.normal(size=(cout, cin, 3, 3)),
                         rng.normal(size=cout), stride=1, padding=1)
    frames = rng.poisson(0.4, size=(3, cin, h, w))
    frames[1] = 0  # a quiet step
    steps = event_steps(frames)
    per_map = kernel_twins.maxpool2d_maxima(cout, h, w, 3, 2, 1)
    for offline in (False, True):
        layer = Conv2dStage(params, (h, w, cin), dtype=dtype, input_kind="counts",
                            policy=PathPolicy(), pool_before=(3, 2, 1))
        layer.reset()
        if offline:
            layer.run_steps(steps)
        else:
            for idx, cnt in steps:
                layer.step(idx, cnt)
        assert layer.counters[C.MAXIMA] == 2 * per_map
        assert layer.stats()["maxima"] == 2 * per_map


def test_qkformers_patch_embeddings_report_their_maxima(qkformer):
    """In a whole QKFormer, each stage that pools its current reports its maxima (the pooled
    map's size per step with input); no other layer of the embeddings does."""
    _, model, _, samples = qkformer
    engine = Spikformer(model, dtype="float64")
    engine.run(event_steps(samples[0].numpy()))
    rows = {r["name"]: r for r in engine.layer_stats()}
    pooled = [layer for layer in engine.layers if getattr(layer, "pool_before", None)]
    assert [layer.name for layer in pooled] == ["patch_embed1.proj1_lif", "patch_embed1.proj2_lif",
                                                "patch_embed1.proj3_lif",
                                                "patch_embed2.proj4_lif"]
    for layer in pooled:
        size = layer.cur_pool_h * layer.cur_pool_w * layer.cout
        maxima = rows[layer.name]["maxima"]
        assert maxima > 0 and maxima % size == 0 and maxima <= TINY.steps * size, layer.name
    for name in ("patch_embed1.proj_lif", "patch_embed1.proj_res_lif", "patch_embed2.proj_lif"):
        assert rows[name]["maxima"] == 0, name
