"""The Spike-driven Transformer (v1) in the engine, from its model description, against the plain
torch reference (``eventformer.torch_successors.SpikeDrivenTransformerRef``, bit-exact with the
released code).

Tiny SDTs (32x32 events, D 32, 2-4 heads, 1-2 blocks, T 4, a 4x4 or 8x8 token grid; the MLP with
and without the released ``res`` branch; Erode on and off) start from torch's initialisation
and are made exact: every conv and head weight on the 2^-6 grid, ``calibrate_successor_bn_``
fitted to those weights, then every BatchNorm put where its folding is exact (running_var + eps
a power of 4, so its square root is a power of 2; gamma, beta and running_mean on the grid,
gamma compensating the variance's move). The model description is the numpy trainer's
(``models.presets.sdt_description``), the file the one builder's. Then:

- float64: every LIF of the engine spikes exactly as the reference's, at every step, and the
  logits agree to 1e-9, on every path (sparse, gather, dense, auto), offline (``run``) and per step
  (``step``), which give identical results; the test first asserts that every LIF fires;
- float32: the engine (float32 model file) is no further from the float64 truth than the
  reference's own float32 realisations are (``tests/torch_reference.Float32Spread``);
- counts: the kernels' work where it is done (ANDs and masks, Erode's maxima only with Erode,
  the column sums' adds, the synapses' accumulates, every neuron update);
- refusals, one sentence each: damaged membrane model files, blocks of the wrong kind for their
  stream.

The integer modes (the stream in one shared unit per channel) are ``tests/test_sdt_fixed.py``'s.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import (assert_every_layer_fires, pipelined_and_layer_major,  # noqa: E402
                      record_spikes)
from torch_reference import Outputs, float32_spread, reference_outputs  # noqa: E402

from eventformer.errors import CheckpointError, ModelFileError  # noqa: E402
from eventformer.layers import PathPolicy  # noqa: E402
from eventformer.modelfile import build_model_file, layer_specs, load, save  # noqa: E402
from eventformer.modelfile.build import BN_EPS  # noqa: E402
from eventformer.modelfile.schema import check_config  # noqa: E402
from eventformer.models import Spikformer, SpikformerConfig  # noqa: E402
from eventformer.models.config import lif_layer_names  # noqa: E402
from eventformer.torch_successors import (SDTConfig, SpikeDrivenTransformerRef,  # noqa: E402
                                          calibrate_successor_bn_, dvs_like_frames,
                                          random_successor_state_dict)
from eventformer.models.presets import sdt_description  # noqa: E402

T = 4
SIZE = 32
CLASSES = 5
GRID = 2.0 ** -6
MODES = ("sparse", "gather", "dense", "auto")
# (heads, depth, mlp_ratio, pooling_stat): a 4x4 grid, two blocks, hidden == dim (the released
# MLP's ``res`` branch); an 8x8 grid, one block, hidden 2 * dim
SHAPES = {"4x4-res": (2, 2, 1, "0111"), "8x8": (4, 1, 2, "0011")}


# --- exact tiny models ---------------------------------------------------------------------

def sdt_config(shape: str, dvs: bool) -> SDTConfig:
    heads, depth, ratio, pooling = SHAPES[shape]
    return SDTConfig(image_size=SIZE, dim=32, heads=heads, depth=depth, mlp_ratio=ratio,
                     steps=T, pooling_stat=pooling, dvs=dvs, num_classes=CLASSES)


def engine_config(cfg: SDTConfig) -> SpikformerConfig:
    """The configuration of the model file: the numpy trainer's description of SDT."""
    layout = sdt_description(cfg.dim, cfg.heads, cfg.depth, cfg.hidden,
                             pooling_stat=cfg.pooling_stat)
    return SpikformerConfig.described(layout, in_channels=cfg.in_channels,
                                      image_size=cfg.image_size, num_classes=cfg.num_classes,
                                      steps=T)


def snap(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t / GRID) * GRID


@torch.no_grad()
def calibrated_grid_state_dict(cfg: SDTConfig, seed: int = 0,
                               frames: torch.Tensor | None = None) -> dict:
    """An official-layout float32 state dict of ``cfg`` whose LIFs fire on ``frames``
    (``[T, B, C, H, W]`` counts; default DVS-like ones): torch's initialisation under ``seed``,
    convs and the head snapped to the grid, BatchNorms (gamma, beta drawn per channel as
    random_successor_state_dict draws them) calibrated on those weights in float32
    (``calibrate_successor_bn_``; at the released size float64 costs twice as much). Its
    BatchNorms are as calibration leaves them: they fold with rounding."""
    if frames is None:
        frames = dvs_like_frames(T, 2, cfg.in_channels, SIZE, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SpikeDrivenTransformerRef(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    for name, p in model.named_parameters():
        if "_bn." not in name:  # conv weights and biases, the head (exact in float32)
            p.copy_(snap(p))
    calibrate_successor_bn_(model, frames.float())
    return {k: v.clone() for k, v in model.state_dict().items()}


def exact_batchnorms(sd: dict) -> dict:
    """``sd`` in float64 with every BatchNorm moved to where its folding is exact (see the
    module notes): each LIF sees nearly the same input as before."""
    sd = {k: v.double() if v.is_floating_point() else v.clone() for k, v in sd.items()}
    for prefix in [k.removesuffix(".running_var") for k in sd if k.endswith(".running_var")]:
        gamma, var = sd[f"{prefix}.weight"], sd[f"{prefix}.running_var"]
        std = torch.sqrt(var + BN_EPS)
        k = torch.round(torch.log2(std))  # sqrt(var + eps) -> 2^k
        moved = torch.pow(4.0, k) - BN_EPS
        assert torch.equal(moved + BN_EPS, torch.pow(4.0, k))  # the fold divides exactly
        sd[f"{prefix}.weight"] = snap(gamma * torch.pow(2.0, k) / std)
        sd[f"{prefix}.bias"] = snap(sd[f"{prefix}.bias"])
        sd[f"{prefix}.running_mean"] = snap(sd[f"{prefix}.running_mean"])
        sd[f"{prefix}.running_var"] = moved
    return sd


def exact_state_dict(cfg: SDTConfig, seed: int = 0, frames: torch.Tensor | None = None) -> dict:
    """An official-layout state dict (float64) of ``cfg`` whose BatchNorms fold exactly and
    whose LIFs fire on ``frames``: :func:`calibrated_grid_state_dict`, then
    :func:`exact_batchnorms`."""
    return exact_batchnorms(calibrated_grid_state_dict(cfg, seed, frames))


_MODELS: dict = {}


def exact_model(shape: str, dvs: bool):
    """(reference in float64, model file in float64, state dict), built once per test run."""
    key = (shape, dvs)
    if key not in _MODELS:
        cfg = sdt_config(shape, dvs)
        sd = exact_state_dict(cfg)
        ref = SpikeDrivenTransformerRef(cfg).double().eval()
        ref.load_state_dict(sd)
        tensors = {k: v.numpy() for k, v in sd.items()}
        model = build_model_file(engine_config(cfg), tensors, source="exact SDT",
                                 dtype=np.float64, erode=int(dvs))
        _MODELS[key] = (ref, model, sd)
    return _MODELS[key]


def sample(seed: int):
    """DVS-like counts [T, 1, C, H, W] (torch) and the engine's HWC event lists."""
    frames = dvs_like_frames(T, 1, 2, SIZE, seed=100 + seed).double()
    steps = []
    for t in range(T):
        flat = frames[t, 0].permute(1, 2, 0).reshape(-1).numpy()
        idx = np.flatnonzero(flat).astype(np.int32)
        steps.append((idx, flat[idx].astype(np.int32)))
    return frames, steps


def engine_layout(name: str, s: torch.Tensor) -> list:
    """A reference LIF's spikes [T, 1, ...] -> per step the flat indices in the engine's layout:
    maps [C, H, W] as HWC (token n = row * W + col, channel innermost), talking_heads_lif's
    [heads, 1, d] as channel h * d + j, head_lif's [D] as it is."""
    s = s[:, 0].double().numpy()
    if s.ndim == 4 and not name.endswith("talking_heads_lif"):
        s = s.transpose(0, 2, 3, 1)
    return [np.flatnonzero(step.reshape(-1)) for step in s]


def reference(ref, frames):
    with torch.no_grad():
        logits, spikes = ref(frames, record=True)
    return logits[0].numpy(), {n: engine_layout(n, s) for n, s in spikes.items()}


def assert_same_spikes(got: dict, want: dict) -> None:
    silent = [name for name, steps in want.items() if sum(s.size for s in steps) == 0]
    assert not silent, f"silent LIFs (the comparison would be vacuous): {silent}"
    for name, steps in want.items():
        assert name in got, f"{name}: the engine has no such LIF"
        assert len(got[name]) == len(steps), (name, len(got[name]))
        for t in range(len(steps)):
            np.testing.assert_array_equal(got[name][t], steps[t], err_msg=f"{name} step {t}")


CASES = [(shape, dvs) for shape in SHAPES for dvs in (False, True)]


# --- float64: spike for spike --------------------------------------------------------------

@pytest.mark.parametrize("shape,dvs", CASES)
def test_every_lif_of_the_reference_fires(shape, dvs):
    """What the comparisons below mean: each LIF fires on the test samples (and the engine
    lists the reference's LIFs, in its order, among its layers)."""
    ref, model, _ = exact_model(shape, dvs)
    for seed in (0, 1):
        _, spikes = reference(ref, sample(seed)[0])
        silent = [n for n, s in spikes.items() if sum(x.size for x in s) == 0]
        assert not silent, f"silent LIFs: {silent}"
    names = list(spikes)
    assert lif_layer_names(model.config) == names
    engine = Spikformer(model, dtype="float64")
    assert [layer.name for layer in engine.layers if getattr(layer, "neurons", None)] == names


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,dvs", CASES)
def test_float64_is_the_reference_spike_for_spike(shape, dvs, mode):
    ref, model, _ = exact_model(shape, dvs)
    for seed in (0, 1):
        frames, steps = sample(seed)
        want_logits, want = reference(ref, frames)
        engine = Spikformer(model, dtype="float64", policy=PathPolicy(mode=mode))
        got = record_spikes(engine)
        logits = engine.run(steps)
        assert_same_spikes(got, want)
        np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", ["auto", "dense"])
@pytest.mark.parametrize("shape,dvs", CASES)
def test_step_and_run_give_identical_results(shape, dvs, mode):
    _, model, _ = exact_model(shape, dvs)
    _, steps = sample(2)
    offline = Spikformer(model, dtype="float64", policy=PathPolicy(mode=mode))
    got_run = record_spikes(offline)
    logits_run = offline.run(steps)
    online = Spikformer(model, dtype="float64", policy=PathPolicy(mode=mode))
    got_step = record_spikes(online)
    online.reset()
    for idx, cnt in steps:
        online.step(idx, cnt)
    np.testing.assert_array_equal(online.logits(), logits_run)
    assert got_step.keys() == got_run.keys()
    for name in got_run:
        for t in range(T):
            np.testing.assert_array_equal(got_step[name][t], got_run[name][t], err_msg=name)
    # and unrecorded (the layers may take other routes, e.g. bands): the same logits
    plain = Spikformer(model, dtype="float64", policy=PathPolicy(mode=mode))
    np.testing.assert_array_equal(plain.run(steps), logits_run)
    plain.warm_up()  # every path the policy can take, then a clean state
    np.testing.assert_array_equal(plain.run(steps), logits_run)


# --- float32: within the reference's own spread ----------------------------------------------

@pytest.mark.parametrize("shape,dvs", [("4x4-res", True), ("8x8", False)])
def test_float32_is_within_the_references_float32_spread(shape, dvs):
    """On float32 weights as training leaves them (not on a grid): the engine's float32 (BN
    folded in float64, rounded once) against the float64 truth, held to the spread of the
    reference's own float32 runs (native and with jittered accumulation)."""
    cfg = sdt_config(shape, dvs)
    sd = random_successor_state_dict(cfg, seed=3)
    tensors = {k: v.double().numpy() for k, v in sd.items()}
    model32 = build_model_file(engine_config(cfg), tensors, source="float32 SDT",
                               erode=int(dvs))
    ref32 = SpikeDrivenTransformerRef(cfg).eval()
    ref32.load_state_dict(sd)
    ref64 = SpikeDrivenTransformerRef(cfg).double().eval()
    ref64.load_state_dict(sd)
    samples = [sample(seed) for seed in range(4)]
    frames = [f[:, 0] for f, _ in samples]
    truth = reference_outputs(ref64, frames, torch.float64)
    spread = float32_spread(ref32, frames, truth)
    engine = Spikformer(model32, dtype="float32")
    names = set(truth[0].counts)
    outs = []
    for _, steps in samples:
        engine.clear_stats()
        logits = engine.run(steps)
        counts = {s["name"]: s["spikes"] for s in engine.layer_stats() if s["name"] in names}
        outs.append(Outputs.of(logits, counts))
    spread.check(outs, "engine float32")


# --- counts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dvs", CASES)
def test_each_kernel_counts_its_own_work(shape, dvs):
    ref, model, _ = exact_model(shape, dvs)
    cfg = sdt_config(shape, dvs)
    frames, steps = sample(0)
    _, want = reference(ref, frames)
    engine = Spikformer(model, dtype="float64", policy=PathPolicy(mode="sparse"))
    engine.run(steps)
    stats = {s["name"]: s for s in engine.layer_stats()}
    n, d = cfg.num_tokens, cfg.dim
    spikes = {name: sum(x.size for x in s) for name, s in want.items()}
    for b in range(cfg.depth):
        a, m = f"block.{b}.attn", f"block.{b}.mlp"
        core = stats[f"{a}.talking_heads_lif"]
        assert core["kind"] == "attention" and core["neurons"] == d
        assert core["neuron_updates"] == d * T
        assert core["spikes"] == spikes[f"{a}.talking_heads_lif"]
        assert core["mask"] > 0  # K AND V, Q masked by the column spikes
        assert core["ac"] > 0  # the column sums of KV: one add per KV spike
        assert (core["maxima"] > 0) == dvs  # Erode's window maxima, only in DVS mode
        assert core["mac"] == core["dense_mac"] == 0  # no multiply in the core
        for name, sites in ((f"{a}.shortcut_lif", n * d), (f"{m}.fc1_lif", n * d),
                            (f"{m}.fc2_lif", n * cfg.hidden)):
            s = stats[name]
            assert s["kind"] == "lif" and s["neuron_updates"] == sites * T
            assert s["ac"] == s["mac"] == 0 and s["spikes"] == spikes[name]
        # the synapses take spikes: accumulates only, a weight row per input spike
        for name, src, cout in ((f"{a}.q_lif", f"{a}.shortcut_lif", d),
                                (f"{m}.fc1_conv", f"{m}.fc1_lif", cfg.hidden),
                                (f"{m}.fc2_conv", f"{m}.fc2_lif", d)):
            s = stats[name]
            assert s["ac"] == spikes[src] * cout and s["mac"] == 0, name
        proj = stats[f"{a}.proj_conv"]
        assert proj["ac"] == proj["input_events"] * d and proj["neurons"] == 0
    head_lif = stats["head_lif"]
    assert head_lif["neuron_updates"] == d * T and head_lif["spikes"] == spikes["head_lif"]
    head = stats["head"]
    assert head["ac"] == T * n * d + spikes["head_lif"] * CLASSES and head["mac"] == T * d


# --- the model file ----------------------------------------------------------------------------

def test_the_layer_layout_of_a_membrane_block():
    _, model, sd = exact_model("4x4-res", True)
    specs = {s.name: s for s in layer_specs(model.config)}
    a, m = "block.0.attn", "block.0.mlp"
    for name in (f"{a}.shortcut_lif", f"{m}.fc1_lif", f"{m}.fc2_lif", "head_lif"):
        assert specs[name].kind == "lif" and model.layers[name].weight is None
    for n in ("q", "k", "v"):
        assert specs[f"{a}.{n}_lif"].tensor_shape == tuple(sd[f"{a}.{n}_conv.weight"].shape)
    assert specs[f"{a}.talking_heads_lif"].kind == "attention"
    assert model.layers[f"{a}.talking_heads_lif"].theta == 0.5
    for name in (f"{a}.proj_conv", f"{m}.fc1_conv", f"{m}.fc2_conv"):
        spec = specs[name]
        assert not spec.lif and spec.source == name and spec.conv_has_bias
        assert spec.tensor_shape == tuple(sd[f"{name}.weight"].shape)
    assert int(model.attention[0].params["erode"]) == 1
    names = list(specs)
    assert names.index("head_lif") == len(names) - 2  # before the head


def test_a_membrane_model_file_round_trips(tmp_path):
    _, model, _ = exact_model("8x8", True)
    path = tmp_path / "sdt.h5"
    save(path, model)
    back = load(path)
    assert back.config.description == model.config.description
    assert int(back.attention[0].params["erode"]) == 1
    frames, steps = sample(0)
    want = Spikformer(model, dtype="float32").run(steps)  # the file holds float32 weights
    np.testing.assert_allclose(Spikformer(back, dtype="float64").run(steps), want, atol=1e-5)


def _damage_erode(f):
    del f["attention/block.0.attn/erode"]
    f["attention/block.0.attn"].create_dataset("erode", data=np.int32(2))


def _drop(name):
    def damage(f):
        del f[f"layers/{name}"]
    return damage


def _misshape(name):
    def damage(f):
        del f[f"layers/{name}/weight"]
        f[f"layers/{name}"].create_dataset("weight", data=np.zeros((3, 3), np.float32))
    return damage


@pytest.mark.parametrize("damage,needle", [
    (_drop("block.0.attn.shortcut_lif"), "layer 'block.0.attn.shortcut_lif' is missing"),
    (_drop("head_lif"), "layer 'head_lif' is missing"),
    (_misshape("block.0.mlp.fc1_conv"), "block.0.mlp.fc1_conv"),
    (_damage_erode, "erode is 2, expected 0 or 1"),
])
def test_a_damaged_membrane_model_file_is_one_sentence(damage, needle, tmp_path):
    _, model, _ = exact_model("8x8", True)
    path = tmp_path / "sdt.h5"
    save(path, model)
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(ModelFileError) as err:
        load(path)
    text = str(err.value)
    assert needle in text and "\n" not in text, text


def test_what_the_builder_takes_and_refuses():
    cfg = sdt_config("8x8", False)
    _, _, sd = exact_model("8x8", False)
    tensors = {k: v.numpy() for k, v in sd.items()}
    config = engine_config(cfg)
    # the released code's talking_heads conv is saved but never runs: skipped, not refused
    assert "block.0.attn.talking_heads.weight" in tensors
    assert int(build_model_file(config, tensors).attention[0].params["erode"]) == 0
    with pytest.raises(CheckpointError, match="unexpected key 'block.0.attn.gate.weight'"):
        build_model_file(config, {**tensors, "block.0.attn.gate.weight": np.zeros(1)})
    missing = dict(tensors)
    del missing["block.0.attn.proj_conv.bias"]
    with pytest.raises(CheckpointError, match="missing key 'block.0.attn.proj_conv.bias'"):
        build_model_file(config, missing)
    with pytest.raises(CheckpointError, match="Erode flag .* must be 0 or 1"):
        build_model_file(config, tensors, erode=2)
    ssa = SpikformerConfig(in_channels=2, image_size=32, sps_channels=(16, 32), sps_pool=(1, 1),
                           dim=32, heads=2, depth=1, mlp_hidden=64, num_classes=3)
    with pytest.raises(CheckpointError, match="Erode flag .* is an sdsa parameter"):
        build_model_file(ssa, {}, erode=1)


def test_sdsa_blocks_run_on_a_membrane_stream_only():
    spikes = SpikformerConfig(in_channels=2, image_size=32, sps_channels=(16, 32),
                              sps_pool=(True, True), dim=32, heads=2, depth=1, mlp_hidden=64,
                              num_classes=3, attention="sdsa")
    with pytest.raises(ValueError, match="sdsa attention runs on a 'membrane' residual stream"):
        check_config(spikes)


def test_a_checkpoint_from_the_numpy_trainer_builds_and_runs():
    """The trainer's own SDT (init parameters, Erode off as it trains) through its export."""
    from eventformer.train.export import to_model_file
    from eventformer.train.model import config_by_name, init_params, init_state

    config = config_by_name("sdt-tiny", steps=T)
    params = init_params(config, seed=0)
    state = init_state(config)
    model = to_model_file(params, state, config, dtype=np.float64)
    assert int(model.attention[0].params["erode"]) == 0
    engine = Spikformer(model, dtype="float64")
    _, steps = sample(0)
    logits = engine.run(steps)
    assert logits.shape == (config.num_classes,) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("dtype", ["float64", "int8"])
def test_the_offline_pipeline_is_the_layer_major_run(dtype):
    """Pipelined on the membrane stream (its densifying one stage of the chain, each block
    whole): the logits and every layer's spikes and op counts of the layer-major run."""
    _, model, _ = exact_model("4x4-res", True)
    samples = [sample(s)[1] for s in (1, 2)]
    for (fast, fast_stats), (slow, slow_stats) in pipelined_and_layer_major(model, dtype,
                                                                            samples):
        np.testing.assert_array_equal(fast, slow)
        assert fast_stats == slow_stats
        # every LIF fires (the stream's synapse-only layers, *_conv, have no spikes)
        assert_every_layer_fires([r for r in fast_stats if not r["name"].endswith("_conv")])
