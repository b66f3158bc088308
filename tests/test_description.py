"""Model descriptions: every network is one (models/description.py), the model file stores it, the
engine assembles itself from it.

- Every configuration of Spikformer's own layout maps onto a description that builds the same
  engine: the same layers and rows, and in float64 on weights of the 2^-8 grid every spike of every
  layer and the logits identical to the plain-torch reference (eventformer.torch_model), for every
  attention operator.
- The embedding features the released successors need are each checked in float64 against a
  plain torch computation: a max-pool of the current BEFORE the LIF, a stage without a LIF (a
  real-valued output) and a real ``x_feat`` shortcut, strided 1x1 shortcut convs from a saved map
  added to spikes, real-pixel input (direct encoding); QKFormer's PatchEmbedInit and the
  Spike-driven Transformer's MS_SPS against transcriptions of their released forward passes;
  whole networks (a two-stage hierarchy with patch merging, Spikformer's CIFAR10 layout on
  pixels) spike for spike. Every LIF compared fires.
- In an integer mode a max-pool of currents is exact in each channel's unit (int16 against a
  numpy integer reference).
- A description round-trips through the model file (format version 3; Spikformer's own layout
  still writes version 2), and a bad one is refused in one sentence.
"""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kernel_twins  # noqa: E402
from conftest import record_spikes  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from eventformer.errors import EventformerError, ModelFileError  # noqa: E402
from eventformer.fixedpoint import FixedPointError  # noqa: E402
from eventformer.kernels import counters as C  # noqa: E402
from eventformer.kernels.pooling import maxpool_current  # noqa: E402
from eventformer.layers import PathPolicy  # noqa: E402
from eventformer.modelfile import build_model_file, layer_specs, load, save  # noqa: E402
from eventformer.modelfile.build import BN_EPS  # noqa: E402
from eventformer.modelfile.export import RELEASED_LAYOUTS, export_checkpoint  # noqa: E402
from eventformer.modelfile.schema import block_specs  # noqa: E402
from eventformer.models import Spikformer, SpikformerConfig  # noqa: E402
from eventformer.models.description import (BlockStage, Description, EmbedStage,  # noqa: E402
                                            place, qkformer_patch_embed_init,
                                            qkformer_patch_embedding_stage, sdt_sps)
from eventformer.models.presets import spikformer_cifar10, spikformer_imagenet  # noqa: E402
from eventformer.models.spikformer import Embedding  # noqa: E402
from eventformer.torch_model import RefConfig, folded_reference, lif_multistep  # noqa: E402
from eventformer.torch_model import Block as TorchBlock  # noqa: E402

GRID = 2.0 ** -8
T = 8
MODES = ("auto", "sparse", "dense", "gather")


# --- models with weights on the grid ------------------------------------------------------

def on_grid(x, grid=GRID):
    return np.round(np.asarray(x) / grid) * grid


def grid_model(config: SpikformerConfig, seed: int = 0, **kw):
    """A model file of ``config`` built from :func:`grid_tensors` by the model-file builder."""
    return build_model_file(config, grid_tensors(config, seed, **kw), source="grid model")


def grid_tensors(config: SpikformerConfig, seed: int = 0, gain: float = 1.5,
                 bias: tuple[float, float] = (0.25, 1.0)) -> dict:
    """Checkpoint tensors of ``config`` (each under its key and in its checkpoint layout,
    BatchNorm an exact identity): weights and BN shifts on the 2^-8 grid (so float64 sums are
    exact in any order), shifts large enough that every LIF fires."""
    rng = np.random.default_rng(seed)
    tensors = {}

    def identity_bn(prefix, shift):
        n = shift.shape[0]
        tensors.update({f"{prefix}.weight": np.full(n, np.sqrt(1.0 + BN_EPS)),
                        f"{prefix}.bias": on_grid(shift), f"{prefix}.running_mean": np.zeros(n),
                        f"{prefix}.running_var": np.ones(n)})

    for blk in block_specs(config):  # the SPEC §4 operators' own parameters
        a, g = blk.name, blk.geometry
        if blk.operator == "ds2ta":
            s = np.arange(g.head_dim + 1)
            tensors[f"{a}.tau"] = np.array([1, 2, 1, 2])
            tensors[f"{a}.nsad_table"] = np.tile(np.where(s > 1, s + 1, 0), (g.heads, 1))
        elif blk.operator == "ssa_bin":
            tensors[f"{a}.delta"] = np.ones(g.heads, np.int64)
            tensors[f"{a}.vbar"] = on_grid(rng.uniform(0, 1, g.dim))
        elif blk.operator == "saformer":
            tensors[f"{a}.dwc_conv.weight"] = on_grid(rng.normal(0, 0.3, (g.dim, 1, 3, 3)))
            identity_bn(f"{a}.dwc_bn", rng.uniform(0, 0.5, g.dim))
    for spec in layer_specs(config):
        if spec.kind == "attention":
            continue
        fan_in = int(np.prod(spec.weight_shape[1:]))
        tensors[f"{spec.source}.weight"] = on_grid(
            rng.normal(0, gain / np.sqrt(fan_in), spec.tensor_shape))
        if not spec.bn:  # the head
            tensors[f"{spec.source}.bias"] = on_grid(rng.normal(0, 0.5, spec.bias_shape))
            continue
        if spec.conv_has_bias:
            tensors[f"{spec.source}.bias"] = np.zeros(spec.bias_shape)
        identity_bn(spec.bn, rng.uniform(*bias, spec.bias_shape[0]))
    return tensors


def event_frames(rng, shape, density=0.15):
    """Dense count frames [T, C, H, W] (small integers) and the engine's HWC event lists."""
    c, h, w = shape
    frames = rng.poisson(0.6, (T, c, h, w)) * (rng.random((T, c, h, w)) < density)
    steps = []
    for t in range(T):
        flat = frames[t].transpose(1, 2, 0).reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int32)
        steps.append((idx, flat[idx].astype(np.int32)))
    return torch.from_numpy(frames.astype(np.float64)), steps


def hwc_sets(x: torch.Tensor) -> list:
    """Spikes [T, C, H, W] or [T, C, N] -> per step the flat indices in the engine's layout."""
    s = x.double().numpy()
    s = s.transpose(0, 2, 3, 1) if s.ndim == 4 else s.transpose(0, 2, 1)
    return [np.flatnonzero(step.reshape(-1)) for step in s]


def dense_hwc(x, shape) -> np.ndarray:
    """An engine map (event list or flat real array) as a dense [C, H, W] float64 array."""
    h, w, c = shape
    if isinstance(x, tuple):
        flat = np.zeros(h * w * c)
        flat[x[0]] = x[1]
    else:
        flat = np.asarray(x, np.float64)
    return flat.reshape(h, w, c).transpose(2, 0, 1)


def assert_same_spikes(store, want: dict, names) -> None:
    for name in names:
        assert name in store, f"{name} never fired its neurons"
        assert len(store[name]) == len(want[name]) == T, name
        for t in range(T):
            np.testing.assert_array_equal(store[name][t], want[name][t],
                                          err_msg=f"{name} step {t}")
    fired = {name: sum(s.size for s in store[name]) for name in names}
    silent = [name for name, n in fired.items() if n == 0]
    assert not silent, f"silent LIFs (the comparison would be vacuous): {silent}"


# --- the plain-torch side: a description computed with dense torch ops ------------------------

def torch_embedding(placed, layers, x, cfg, spikes: dict):
    """An embedding in dense torch (float64, steps as the batch): conv with the folded weights,
    max-pools by F.max_pool2d, LIFs by torch_model.lif_multistep."""
    saved = {"input": x}
    for p in placed:
        st = p.stage
        src = saved[st.input] if st.input else x
        L = layers[st.name]
        cur = F.conv2d(src, torch.from_numpy(L.weight).double(),
                       torch.from_numpy(L.bias).double(), stride=st.stride, padding=st.padding)
        if st.pool == "before":
            cur = F.max_pool2d(cur, 3, 2, 1)
        if st.save_current:
            saved[st.save_current] = cur
        if st.lif:
            s = lif_multistep(cur, cfg.tau, cfg.theta)
            spikes[st.name] = hwc_sets(s)
            out = F.max_pool2d(s, 3, 2, 1) if st.pool == "after" else s
        else:
            out = cur
        if st.add:
            out = saved[st.add] + out
        if st.save:
            saved[st.save] = out
        x = out
    return x


def torch_block(stage: BlockStage, i: int, geometry, model):
    """torch_model's Spikformer block of this stage's width, carrying block ``i``'s folded
    weights (its BatchNorms pure shifts), and the map from its LIF module names to the engine's
    (the stage may name its attention and MLP modules otherwise)."""
    cfg = model.config
    ref = RefConfig(in_channels=1, image_size=2 * geometry.grid, sps_channels=(geometry.dim,),
                    dim=geometry.dim, heads=geometry.heads, depth=1,
                    mlp_ratio=geometry.mlp_hidden / geometry.dim, scale=geometry.scale,
                    tau=cfg.tau, theta=cfg.theta, attn_theta=cfg.attn_theta)
    blk = TorchBlock(ref).double().eval()
    a, m = stage.attention_name(i), stage.mlp_name(i)
    fc1, fc2 = stage.mlp_layers
    names = {f"attn.{n}_lif": f"{a}.{n}_lif" for n in ("q", "k", "v", "attn", "proj")}
    names.update({"mlp.fc1_lif": f"{m}.{fc1}_lif", "mlp.fc2_lif": f"{m}.{fc2}_lif"})
    mods = dict(blk.named_modules())
    with torch.no_grad():
        for torch_name, name in names.items():
            p = model.layers[name]
            if p.weight is None:  # the attention LIF
                continue
            conv = mods[torch_name.replace("_lif", "_conv")]
            bn = mods[torch_name.replace("_lif", "_bn")]
            conv.weight.copy_(torch.from_numpy(p.weight).double().reshape(conv.weight.shape))
            if conv.bias is not None:
                conv.bias.zero_()
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(p.bias).double())
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.eps = 0.0
    return blk, names


def torch_network(model, x):
    """Logits and every LIF's spikes of a description with residuals of spikes, in dense torch:
    the embeddings above, torch_model's blocks, mean over tokens and steps, Linear."""
    cfg = model.config
    placement = cfg.placement()
    spikes: dict = {}
    for stage, placed, geo in zip(cfg.description.stages, placement.embeds,
                                  placement.geometry):
        x = torch_embedding(placed, model.layers, x, cfg, spikes)
        tokens = x.flatten(2)[:, None]  # [T, 1, C, N], token n = row * grid + col
        for i in range(stage.count):
            blk, names = torch_block(stage, i, geo, model)
            hooks = [m.register_forward_hook(
                lambda mod, inp, out, name=names[n]: spikes.__setitem__(name, hwc_sets(out[:, 0])))
                for n, m in blk.named_modules() if n in names]
            tokens = blk(tokens)
            for h in hooks:
                h.remove()
        x = tokens[:, 0].reshape(x.shape)
    head = model.layers["head"]
    features = x.flatten(2).mean(2).mean(0)
    logits = torch.from_numpy(head.weight).double() @ features + \
        torch.from_numpy(head.bias).double()
    return logits.numpy(), spikes


def check_network(model, x, steps, modes=MODES):
    """The engine on ``model`` (float64, every path) against :func:`torch_network`."""
    with torch.no_grad():
        want_logits, want = torch_network(model, x)
    for mode in modes:
        engine = Spikformer(model, dtype="float64", policy=PathPolicy(mode=mode))
        store = record_spikes(engine)
        logits = engine.run(steps)
        assert_same_spikes(store, want, [n for n in want])
        np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-12)
        # streaming, one step at a time: the same
        stepped = Spikformer(model, dtype="float64", policy=PathPolicy(mode=mode))
        for s in steps:
            stepped.step(*s) if isinstance(s, tuple) else stepped.step(s)
        np.testing.assert_array_equal(stepped.logits(), logits)
        stepped.warm_up()  # leaves nothing behind
        np.testing.assert_array_equal(stepped.run(steps), logits)
    return engine


# --- the kernel ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_maxpool_current_matches_its_twin(dtype):
    """The pooled map, and the window maxima formed counted in MAXIMA (and nothing else)."""
    assert kernel_twins.MODULE_TWINS["eventformer.kernels.pooling.maxpool_current"] == (
        kernel_twins.maxpool2d, kernel_twins.maxpool2d_maxima)
    rng = np.random.default_rng(0)
    for h, w, c, (k, s, p) in [(1, 1, 3, (3, 2, 1)), (2, 5, 1, (3, 2, 1)), (7, 6, 4, (3, 2, 1)),
                               (8, 8, 16, (3, 2, 1)), (5, 9, 2, (2, 2, 0)), (6, 6, 3, (3, 1, 1))]:
        x = (rng.normal(size=(h, w, c)) * 100).astype(dtype)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        out = np.full(oh * ow * c, 7, dtype)
        counters = np.zeros(C.N_COUNTERS, np.int64)
        counters[C.AC] = 5  # added to, never reset
        maxpool_current(x.reshape(-1), h, w, c, k, s, p, oh, ow, out, counters)
        want = kernel_twins.maxpool2d(x.transpose(2, 0, 1).astype(np.float64), k, s, p)
        np.testing.assert_array_equal(out.reshape(oh, ow, c).transpose(2, 0, 1), want)
        booked = np.zeros(C.N_COUNTERS, np.int64)
        booked[C.AC] = 5
        booked[C.MAXIMA] = kernel_twins.maxpool2d_maxima(c, h, w, k, s, p)
        np.testing.assert_array_equal(counters, booked)


# --- Spikformer's own layout is a description ---------------------------------------------

LEGACY = [
    SpikformerConfig(image_size=32, sps_channels=(16, 32), sps_pool=(True, True), dim=32,
                     heads=4, depth=2, mlp_hidden=64, num_classes=5, steps=T),
    SpikformerConfig(image_size=16, sps_channels=(8, 16, 16), sps_pool=(False, True, True),
                     dim=16, heads=2, depth=1, mlp_hidden=32, num_classes=3, steps=T),
    SpikformerConfig(image_size=16, sps_channels=(8, 16), sps_pool=(True, True), dim=16,
                     heads=2, depth=0, num_classes=3, steps=T),
]


def explicit(config: SpikformerConfig) -> SpikformerConfig:
    """The same configuration with its description written out as a layout."""
    shorthand = {"sps_channels", "sps_pool", "dim", "heads", "depth", "mlp_hidden", "scale",
                 "attention", "layout"}
    rest = {k: v for k, v in dataclasses.asdict(config).items() if k not in shorthand}
    return SpikformerConfig.described(config.description, **rest)


def spec2_layers(config: SpikformerConfig) -> list[tuple]:
    """SPEC §2's layers of Spikformer's own layout, as model files have always held them: (name,
    kind, checkpoint conv, BN, weight shape, checkpoint weight shape, conv bias, stride,
    padding)."""
    rows, cin = [], config.in_channels
    for i, c in enumerate(config.sps_channels):
        s = "" if i == 0 else str(i)
        rows.append((f"patch_embed.proj_lif{s}", "conv2d", f"patch_embed.proj_conv{s}",
                     f"patch_embed.proj_bn{s}", (c, cin, 3, 3), (c, cin, 3, 3), False, 1, 1))
        cin = c
    d, h = config.dim, config.mlp_hidden
    rows.append(("patch_embed.rpe_lif", "conv2d", "patch_embed.rpe_conv", "patch_embed.rpe_bn",
                 (d, d, 3, 3), (d, d, 3, 3), False, 1, 1))
    for b in range(config.depth):
        a, m = f"block.{b}.attn", f"block.{b}.mlp"
        for n in ("q", "k", "v"):
            rows.append((f"{a}.{n}_lif", "linear", f"{a}.{n}_conv", f"{a}.{n}_bn", (d, d),
                         (d, d, 1), False, 1, 0))
        rows.append((f"{a}.attn_lif", "attention", "", "", None, None, False, 1, 0))
        rows.append((f"{a}.proj_lif", "linear", f"{a}.proj_conv", f"{a}.proj_bn", (d, d),
                     (d, d, 1), True, 1, 0))
        rows.append((f"{m}.fc1_lif", "linear", f"{m}.fc1_conv", f"{m}.fc1_bn", (h, d),
                     (h, d, 1), True, 1, 0))
        rows.append((f"{m}.fc2_lif", "linear", f"{m}.fc2_conv", f"{m}.fc2_bn", (d, h),
                     (d, h, 1), True, 1, 0))
    rows.append(("head", "head", "head", "", (config.num_classes, d), (config.num_classes, d),
                 True, 1, 0))
    return rows


@pytest.mark.parametrize("config", LEGACY, ids=["tiny", "first-unpooled", "no-blocks"])
def test_existing_configurations_are_descriptions(config):
    """Spikformer's own layout read as a description: SPEC §2's layers, names and checkpoint
    keys, whether derived from the shorthand or written out as a layout."""
    embed = config.description.stages[0].embed
    n = len(config.sps_channels)
    assert [s.pool for s in embed] == ["after" if p else "none" for p in config.sps_pool] + \
        ["none"]
    assert embed[n - 1].save == "x_feat" and embed[n].add == "x_feat"
    described = explicit(config)
    described.validate()
    assert described.grid == config.grid and described.tokens == config.tokens
    for c in (config, described):
        rows = [(s.name, s.kind, s.source, s.bn, s.weight_shape, s.tensor_shape,
                 s.conv_has_bias, s.stride, s.padding) for s in layer_specs(c)]
        assert rows == spec2_layers(config)
    assert "layout" not in config.to_dict()  # what older readers read, unchanged


@pytest.mark.parametrize("attention", ["ssa", "ds2ta", "ssa_bin", "saformer"])
def test_existing_layout_as_a_description_builds_the_same_engine(attention):
    """The legacy configuration and the same network given as a layout: the same layer rows,
    and both spike for spike and logit for logit the float64 torch reference."""
    config = dataclasses.replace(LEGACY[0], attention=attention)
    model = grid_model(config, seed=1)
    ref = folded_reference(model)
    described = dataclasses.replace(model, config=explicit(config))
    rng = np.random.default_rng(2)
    frames, steps = event_frames(rng, (2, 32, 32))
    with torch.no_grad():
        want_logits, spikes = ref(frames[:, None], record=True)
    want = {name: hwc_sets(s[:, 0]) for name, s in spikes.items()}
    rows = None
    for m in (model, described):
        engine = Spikformer(m, dtype="float64", policy=PathPolicy(mode="auto"))
        store = record_spikes(engine)
        logits = engine.run(steps)
        assert_same_spikes(store, want, want)
        np.testing.assert_allclose(logits, want_logits[0].numpy(), rtol=0, atol=1e-12)
        names = [(r["name"], r["kind"], r["neurons"]) for r in engine.layer_stats()]
        assert rows is None or names == rows
        rows = names


# --- the new embedding features, each against dense torch ---------------------------------

def _tokenizer_model(embed, *, in_channels=2, image_size=32, dim=None, input="events",
                     residual="spikes", seed=0, **grid):
    dim = dim or embed[-1].channels
    layout = Description((BlockStage(0, dim, 1, dim, embed=embed),), input=input,
                         residual=residual)
    config = SpikformerConfig.described(layout, in_channels=in_channels, image_size=image_size,
                                        num_classes=3, steps=T)
    return grid_model(config, seed=seed, **grid)


@pytest.mark.parametrize("mode", MODES)
def test_qkformer_patch_embed_init_against_its_forward(mode):
    """Max-pool of the current before three LIFs, a stride-4 1x1 shortcut conv from a saved map,
    its spikes added to the main path's (QKFormer dvs128-gesture PatchEmbedInit, written out as
    its forward pass is)."""
    embed = qkformer_patch_embed_init(32)
    model = _tokenizer_model(embed, image_size=32)
    cfg = model.config
    placed = cfg.placement().embeds[0]
    frames, steps = event_frames(np.random.default_rng(3), (2, 32, 32))
    L = model.layers

    def conv(x, name, stride=1, padding=1):
        p = L[name]
        return F.conv2d(x, torch.from_numpy(p.weight).double(), torch.from_numpy(p.bias).double(),
                        stride=stride, padding=padding)

    def lif(x):
        return lif_multistep(x, cfg.tau, cfg.theta)

    pool = lambda x: F.max_pool2d(x, 3, 2, 1)  # noqa: E731
    e = "patch_embed1"
    want = {}
    with torch.no_grad():
        x = lif(conv(frames, f"{e}.proj_lif"))
        want[f"{e}.proj_lif"] = x
        x = lif(pool(conv(x, f"{e}.proj1_lif")))
        want[f"{e}.proj1_lif"] = x_feat = x
        x = want[f"{e}.proj2_lif"] = lif(pool(conv(x, f"{e}.proj2_lif")))
        x = want[f"{e}.proj3_lif"] = lif(pool(conv(x, f"{e}.proj3_lif")))
        x_feat = want[f"{e}.proj_res_lif"] = lif(conv(x_feat, f"{e}.proj_res_lif", 4, 0))
        x = x + x_feat
    embedding = Embedding(placed, L, dtype=np.float64, policy=PathPolicy(mode=mode))
    store = record_spikes(embedding.layers)
    outs = embedding.run_steps(steps)
    assert_same_spikes(store, {k: hwc_sets(v) for k, v in want.items()}, want)
    for t in range(T):
        np.testing.assert_array_equal(dense_hwc(outs[t], (4, 4, 32)), x[t].numpy())
    assert x.max() == 2  # spikes plus spikes: integers
    assert [type(layer).__name__ for layer in embedding.layers] == \
        ["Conv2dLIF", "Conv2dStage", "Conv2dStage", "Conv2dStage", "Conv2dLIF"]
    assert embedding.layers[-1].stride == 4 and not embedding.layers[-1].can_gather
    # one step at a time: the same maps
    for layer in embedding.layers:
        layer.reset()
    for t in range(T):
        out = embedding.step(steps[t])
        np.testing.assert_array_equal(out[0], outs[t][0])
        np.testing.assert_array_equal(out[1], outs[t][1])


@pytest.mark.parametrize("pooling", ["1111", "0111"])
@pytest.mark.parametrize("mode", ["auto", "dense", "gather"])
def test_sdt_sps_against_its_forward(pooling, mode):
    """The Spike-driven Transformer's MS_SPS: its last stage max-pools the real BN output before
    its LIF and keeps it as x_feat; the RPE stage has no LIF, and its real output plus x_feat is
    the real-valued residual stream (module/sps.py, written out as its forward pass is)."""
    dim = 32
    embed = sdt_sps(dim, pooling)
    model = _tokenizer_model(embed, image_size=32, residual="membrane")
    cfg = model.config
    placed = cfg.placement().embeds[0]
    frames, steps = event_frames(np.random.default_rng(4), (2, 32, 32))
    L = model.layers

    def conv(x, name):
        p = L[name]
        return F.conv2d(x, torch.from_numpy(p.weight).double(), torch.from_numpy(p.bias).double(),
                        padding=1)

    def lif(x):
        return lif_multistep(x, cfg.tau, cfg.theta)

    pool = lambda x: F.max_pool2d(x, 3, 2, 1)  # noqa: E731
    want = {}
    with torch.no_grad():
        x = frames
        for i, s in enumerate(("", "1", "2")):
            x = want[f"patch_embed.proj_lif{s}"] = lif(conv(x, f"patch_embed.proj_lif{s}"))
            if pooling[i] == "1":
                x = pool(x)
        x = conv(x, "patch_embed.proj_lif3")
        if pooling[3] == "1":
            x = pool(x)
        x_feat = x
        x = want["patch_embed.proj_lif3"] = lif(x)
        x = conv(x, "patch_embed.rpe_conv") + x_feat
    side = x.shape[-1]
    embedding = Embedding(placed, L, dtype=np.float64, policy=PathPolicy(mode=mode))
    assert embedding.layers[-1].name == "patch_embed.rpe_conv" and \
        embedding.layers[-1].neurons is None
    store = record_spikes(embedding.layers)
    outs = embedding.run_steps(steps)
    assert_same_spikes(store, {k: hwc_sets(v) for k, v in want.items()}, want)
    for t in range(T):
        np.testing.assert_array_equal(dense_hwc(outs[t], (side, side, dim)), x[t].numpy())
    assert np.any(x.numpy() != np.round(x.numpy()))  # really real valued
    with pytest.raises(EventformerError, match="membrane"):
        Spikformer(model, dtype="float64")
    with pytest.raises(FixedPointError, match="real"):
        Embedding(placed, L, dtype="int16", policy=PathPolicy())


def hierarchy_config(image_size=32, input="events", in_channels=2):
    """QKFormer's hierarchy with Spikformer attention in both stages: PatchEmbedInit (pools
    before the LIFs, a stride-4 shortcut), a stage of blocks at width 16 on 4x4 tokens, patch
    merging to width 32 on 2x2 (its first conv and its stride-2 shortcut read the integer residual
    stream), a stage of blocks at width 32."""
    layout = Description((
        BlockStage(1, 16, 2, 32, embed=qkformer_patch_embed_init(16), prefix="stage1"),
        BlockStage(2, 32, 4, 64, scale=0.5, embed=qkformer_patch_embedding_stage(32),
                   prefix="stage2", mlp_layers=("mlp1", "mlp2")),
    ), input=input)
    return SpikformerConfig.described(layout, in_channels=in_channels, image_size=image_size,
                                      num_classes=4, steps=T)


def test_hierarchy_of_stages_against_torch():
    config = hierarchy_config()
    placement = config.placement()
    assert [g.tokens for g in placement.geometry] == [16, 4]
    assert [g.dim for g in placement.geometry] == [16, 32]
    assert placement.stream_bounds == (2, 2)
    model = grid_model(config, seed=5)
    frames, steps = event_frames(np.random.default_rng(6), (2, 32, 32), density=0.25)
    engine = check_network(model, frames, steps)
    names = [layer.name for layer in engine.layers]
    assert names[:5] == [st.name for st in qkformer_patch_embed_init(16)]
    assert "stage2.1.mlp.mlp2_lif" in names and len(engine.blocks) == 3
    merge = engine.stages[1][0].layers
    assert [layer.input_kind for layer in merge] == ["integers", "spikes", "integers"]


def test_real_maps_between_stages_against_torch():
    """A stage without a LIF, a real map kept before a LIF and added to it, and that real map
    read by the next conv through the dense path: the Spike-driven Transformer's tokenizer pieces
    in a network with residuals of spikes."""
    embed = (
        EmbedStage("e.conv0", "e.bn0", "e.lif0", 8, pool="after"),
        EmbedStage("e.conv1", "e.bn1", "e.lif1", 16, pool="before", save_current="feat"),
        EmbedStage("e.conv2", "e.bn2", "", 16, add="feat"),
        EmbedStage("e.conv3", "e.bn3", "e.lif3", 16),
    )
    layout = Description((BlockStage(1, 16, 2, 32, embed=embed),))
    config = SpikformerConfig.described(layout, in_channels=2, image_size=16, num_classes=3,
                                        steps=T)
    model = grid_model(config, seed=7)
    frames, steps = event_frames(np.random.default_rng(8), (2, 16, 16), density=0.3)
    engine = check_network(model, frames, steps)
    real = engine.stages[0][0].layers[3]
    assert real.real_input and real.stats()["mac"] > 0 and real.stats()["ac"] == 0
    assert engine.stages[0][0].layers[2].stats()["neurons"] == 0


def test_pixels_direct_encoding_against_torch():
    """Spikformer's CIFAR10 layout, tiny: real pixels into the first conv at every step, pools
    only after the last two SPS stages, nn.Linear blocks with q/k/v biases."""
    config = spikformer_cifar10(dim=32, depth=1, heads=4, image_size=16, steps=T)
    model = grid_model(config, seed=9)
    rng = np.random.default_rng(10)
    image = on_grid(rng.normal(0, 1, (16, 16, 3)), 2.0 ** -4)  # normalised pixels, HWC
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None].repeat(T, 1, 1, 1)
    engine = check_network(model, x, [image] * T)
    logits = engine.run([image] * T)
    engine.clear_stats()
    np.testing.assert_array_equal(engine.run_image(image), logits)
    first = engine.layers[0].stats()
    # direct encoding: the same image each step, its current computed once; a pixel's
    # multiplies are its taps that land inside the output (2 or 3 per axis) times 4 channels
    taps = np.array([2] + [3] * 14 + [2])
    multiplies = int(((image != 0).sum(axis=2) * np.outer(taps, taps)).sum()) * 4
    assert (first["dense_steps"], first["mac"], first["input_sites"]) == \
        (1, multiplies, T * 16 * 16 * 3)
    with pytest.raises(EventformerError, match="images"):
        engine.step(np.zeros(5), np.zeros(5))
    with pytest.raises(EventformerError, match="16x16 images of 3 channels"):
        engine.step(np.zeros(7))


def test_integer_max_pool_of_currents_is_exact():
    """int16: each pooled-before-LIF stage of QKFormer's PatchEmbedInit against a numpy integer
    reference of its quantised conv, max-pool and shift LIF (SPEC §6)."""
    embed = qkformer_patch_embed_init(32)
    model = _tokenizer_model(embed, image_size=32, seed=11)
    placed = model.config.placement().embeds[0]
    _, steps = event_frames(np.random.default_rng(12), (2, 32, 32))
    embedding = Embedding(placed, model.layers, dtype="int16", policy=PathPolicy())
    store = record_spikes(embedding.layers)
    embedding.run_steps(steps)

    def conv_int(x, layer):  # x [C, H, W] int64 -> [Cout, h, w] int64, exactly
        w = layer.quant.weight.astype(np.int64)
        out = F.conv2d(torch.from_numpy(x)[None].double(), torch.from_numpy(w).double(),
                       stride=layer.stride, padding=layer.pad)[0].numpy()
        return np.rint(out).astype(np.int64) + layer.quant.bias[:, None, None]

    maps = {"input": [dense_hwc(s, (32, 32, 2)).astype(np.int64) for s in steps]}
    x = maps["input"]
    for p, layer in zip(placed, embedding.layers):
        st = p.stage
        src = maps[st.input] if st.input else x
        v = np.zeros((1, 1, 1), np.int64)
        out = []
        for t in range(T):
            cur = conv_int(src[t], layer)
            if st.pool == "before":
                cur = np.rint(kernel_twins.maxpool2d(cur.astype(np.float64), 3, 2, 1)).astype(
                    np.int64)
            theta = layer.quant.theta[:, None, None]
            h = v + ((cur - v) >> layer.shift)
            s = h >= theta
            v = np.where(s, 0, h)
            np.testing.assert_array_equal(store[st.name][t],
                                          np.flatnonzero(s.transpose(1, 2, 0).reshape(-1)),
                                          err_msg=f"{st.name} step {t}")
            out.append(s.astype(np.int64))
        assert sum(int(o.sum()) for o in out) > 0, st.name
        if st.add:
            out = [a + b for a, b in zip(maps[st.add], out)]
        if st.save:
            maps[st.save] = out
        x = out


def test_described_networks_run_in_integer_modes():
    model = grid_model(hierarchy_config(), seed=5)
    _, steps = event_frames(np.random.default_rng(6), (2, 32, 32), density=0.25)
    for dtype in ("int16", "int8"):
        engine = Spikformer(model, dtype=dtype)
        logits = engine.run(steps)
        stepped = Spikformer(model, dtype=dtype)
        for s in steps:
            stepped.step(*s)
        np.testing.assert_array_equal(stepped.logits(), logits)
        assert all(r["spikes"] > 0 for r in engine.layer_stats()[:-1])
    pixels = grid_model(spikformer_cifar10(dim=32, depth=1, heads=4, image_size=16), seed=9)
    with pytest.raises(FixedPointError, match="takes real values"):
        Spikformer(pixels, dtype="int8")


# --- the model file -----------------------------------------------------------------------

def test_description_round_trips_through_the_model_file(tmp_path):
    for config in (hierarchy_config(), spikformer_cifar10(dim=32, depth=1, heads=4,
                                                          image_size=16)):
        model = grid_model(config, seed=3)
        assert model.format_version == 3
        path = tmp_path / "m.h5"
        save(path, model)
        with h5py.File(path, "r") as f:
            assert f.attrs["format_version"] == 3
            stored = json.loads(f.attrs["config"])
            assert stored["layout"] == config.layout.to_dict() and stored["sps_channels"] == []
            assert sorted(f["attention"]) == sorted(
                s.attention_name(i) for s, i in config.description.blocks())
        back = load(path)
        assert back.config == config and back.format_version == 3
        assert list(back.layers) == list(model.layers)
        for name, p in model.layers.items():
            if p.weight is not None:
                np.testing.assert_array_equal(back.layers[name].weight, p.weight)
                np.testing.assert_array_equal(back.layers[name].bias, p.bias)
    legacy = grid_model(LEGACY[0])
    save(tmp_path / "legacy.h5", legacy)
    with h5py.File(tmp_path / "legacy.h5", "r") as f:
        assert f.attrs["format_version"] == 2 and "layout" not in json.loads(f.attrs["config"])
    assert load(tmp_path / "legacy.h5").config == LEGACY[0]


def test_presets_match_the_released_layouts():
    cifar = spikformer_cifar10()
    assert (cifar.tokens, cifar.dim, cifar.heads, cifar.depth, cifar.mlp_hidden, cifar.steps,
            cifar.in_channels, cifar.num_classes) == (64, 384, 12, 4, 1536, 4, 3, 10)
    assert [s.pool for s in cifar.description.stages[0].embed] == \
        ["none", "none", "after", "after", "none"]
    specs = {s.source: s for s in layer_specs(cifar)}
    assert specs["block.0.attn.q_linear"].tensor_shape == (384, 384)
    assert specs["block.0.attn.q_linear"].conv_has_bias
    imagenet = spikformer_imagenet()
    assert (imagenet.tokens, imagenet.dim, imagenet.depth, imagenet.num_classes) == \
        (196, 512, 8, 1000)
    specs = {s.source: s for s in layer_specs(imagenet)}
    assert specs["block.7.mlp.fc1_conv"].tensor_shape == (2048, 512, 1, 1)
    assert specs["block.7.attn.q_conv"].tensor_shape == (512, 512, 1)


@pytest.mark.parametrize("preset, layout", [(spikformer_cifar10, "cifar10"),
                                            (spikformer_imagenet, "imagenet")])
def test_export_tells_the_static_layouts_from_their_keys(preset, layout, tmp_path):
    config = preset(dim=32, depth=2, heads=4, image_size=32, steps=T)
    tensors = grid_tensors(config, seed=13)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()}}, path)
    model, report = export_checkpoint(path, heads=4, scale=0.125, steps=T, image_size=32)
    assert model.config == config and report.inferred["layout"] == RELEASED_LAYOUTS[layout]
    built = build_model_file(config, tensors)
    assert list(model.layers) == list(built.layers)
    for name, p in built.layers.items():
        if p.weight is not None:
            np.testing.assert_array_equal(model.layers[name].weight, p.weight)
    # a DVS checkpoint still exports as Spikformer's own layout
    legacy = tmp_path / "dvs.pth"
    torch.save({k: torch.from_numpy(np.asarray(v))
                for k, v in grid_tensors(LEGACY[0]).items()}, legacy)
    model, report = export_checkpoint(legacy, heads=4, steps=T, image_size=32)
    assert model.config.layout is None and "layout" not in report.inferred


# --- refusals, one sentence each ----------------------------------------------------------

def _with_embed(embed, dim=None, **stage):
    dim = dim or embed[-1].channels
    return Description((BlockStage(1, dim, 2, 2 * dim, embed=embed, **stage),))


A = EmbedStage("a.conv", "a.bn", "a.lif", 8, pool="after", save="s")
B = EmbedStage("b.conv", "b.bn", "b.lif", 16)

BAD = [
    (_with_embed((A, dataclasses.replace(B, input="nowhere"))), "reads 'nowhere', which no"),
    (_with_embed((A, dataclasses.replace(B, add="s"))),
     "adds 's' of 8x8x8 to its output of 16x8x8"),
    (_with_embed((A, dataclasses.replace(B, add="missing"))), "adds 'missing', which no"),
    (_with_embed((A, dataclasses.replace(B, lif="", channels=8, add="s"))),
     "adds 's' (spikes) to its real output"),
    (_with_embed((A, dataclasses.replace(B, pool="after", lif=""))), "pools after its LIF but has"),
    (_with_embed((A, dataclasses.replace(B, pool="sideways"))), "pool is 'sideways'"),
    (_with_embed((A, B), attention="flash"), "unknown attention operator 'flash'"),
    (_with_embed((A, B), dim=32), "outputs 16 channels but its blocks take dim 32"),
    (_with_embed((A, dataclasses.replace(B, kernel=11, padding=0))), "does not fit its 8x8"),
    (_with_embed((A, dataclasses.replace(B, lif="a.lif"))), "reuses the name 'a.lif'"),
    (_with_embed((A, dataclasses.replace(B, lif="", save="t"))), "embedding outputs real values"),
    (_with_embed((A, dataclasses.replace(B, save="s"))), "saves 's', a name already taken"),
    (Description(()), "no block stage"),
]


@pytest.mark.parametrize("desc, needle", BAD, ids=[n for _, n in BAD])
def test_bad_descriptions_are_one_sentence(desc, needle, tmp_path):
    with pytest.raises(ValueError) as err:
        place(desc, 2, 16, ("ssa",))
    message = str(err.value)
    assert needle in message and "\n" not in message, message
    # the same from a model file whose layout was edited into it
    good = grid_model(SpikformerConfig.described(
        _with_embed((A, B)), in_channels=2, image_size=16, num_classes=3), seed=0)
    path = tmp_path / "m.h5"
    save(path, good)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["layout"] = desc.to_dict()
        if desc.stages:
            last = desc.stages[-1]
            cfg.update(dim=last.dim, attention=last.attention, mlp_hidden=last.mlp_hidden)
        f.attrs["config"] = json.dumps(cfg)
    with pytest.raises(ModelFileError) as err:
        load(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("field, value, needle", [
    ("stages", {}, "layout.stages is {}, expected a list"),
    ("input", 3, "layout.input is 3, expected text"),
    ("colour", "red", "layout has an unknown field 'colour'"),
])
def test_damaged_layout_in_a_model_file_is_one_sentence(field, value, needle, tmp_path):
    model = grid_model(hierarchy_config(), seed=0)
    path = tmp_path / "m.h5"
    save(path, model)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["layout"][field] = value
        f.attrs["config"] = json.dumps(cfg)
    with pytest.raises(ModelFileError) as err:
        load(path)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    with h5py.File(path, "r+") as f:  # a layout in a version 2 file
        cfg = json.loads(f.attrs["config"])
        cfg["layout"] = model.config.layout.to_dict()
        f.attrs["config"] = json.dumps(cfg)
        f.attrs["format_version"] = 2
    with pytest.raises(ModelFileError, match="a version 2 file holds Spikformer's own layout"):
        load(path)


def test_what_the_engine_cannot_run_yet_is_refused_by_name():
    embed = qkformer_patch_embed_init(16)
    head_lif = Description((BlockStage(0, 16, 2, 32, embed=embed),), head_lif="head_lif")
    model = grid_model(SpikformerConfig.described(head_lif, in_channels=2, image_size=32,
                                                  num_classes=3), seed=0)
    with pytest.raises(EventformerError, match="head LIF 'head_lif' is not implemented yet"):
        Spikformer(model)
    membrane = Description((BlockStage(1, 32, 2, 64, embed=sdt_sps(32)),), residual="membrane")
    config = SpikformerConfig.described(membrane, in_channels=2, image_size=32, num_classes=3)
    with pytest.raises(EventformerError, match="cannot hold blocks with a 'membrane' residual"):
        grid_model(config)
