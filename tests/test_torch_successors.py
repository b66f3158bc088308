"""The plain-torch Spike-driven Transformer (v1) and QKFormer (eventformer.torch_successors).

The expected checkpoint keys below are the spec: written out from the official module trees
(BICLab/Spike-Driven-Transformer ``module/sps.py``, ``module/ms_conv.py``,
``model/spikeformer.py``; zhouchenlin2096/QKFormer ``dvs128-gesture/model.py``), not from the
code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_reference import float32_spread, reference_outputs

from eventformer.errors import EventformerError
from eventformer.torch_model import RefConfig, random_state_dict
from eventformer.torch_successors import (
    QKFormerConfig,
    QKFormerRef,
    SDTConfig,
    SpikeDrivenTransformerRef,
    dvs_like_frames,
    erode,
    load_official_successor,
    random_successor_state_dict,
    successor_family,
    successor_lif_names,
)

STEPS = 4
SDT_TINY = SDTConfig(image_size=32, dim=32, heads=4, depth=2, steps=STEPS, dvs=True)
SDT_OPTIONS = {"image_size": 32, "steps": STEPS, "dvs": True}  # what a state dict cannot show
# 64x64: stage 2 has 16 tokens, enough for its attention LIF to fire; heads 2 as the tiny width
QK_TINY = QKFormerConfig(image_size=64, dim=64, heads=2, steps=STEPS)
QK_OPTIONS = {"image_size": 64, "steps": STEPS, "heads": 2}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn(prefix: str) -> list[str]:
    return [f"{prefix}.{t}" for t in BN]


def official_sdt_keys(depth: int) -> set[str]:
    keys = []
    for s in ("", "1", "2", "3"):  # MS_SPS: proj_conv, proj_conv1, ... (LIFs, pools: no tensors)
        keys += [f"patch_embed.proj_conv{s}.weight", *bn(f"patch_embed.proj_bn{s}")]
    keys += ["patch_embed.rpe_conv.weight", *bn("patch_embed.rpe_bn")]
    for i in range(depth):
        a, m = f"block.{i}.attn", f"block.{i}.mlp"
        for n in "qkv":  # MS_SSA_Conv
            keys += [f"{a}.{n}_conv.weight", *bn(f"{a}.{n}_bn")]
        keys += [f"{a}.talking_heads.weight", f"{a}.proj_conv.weight", f"{a}.proj_conv.bias",
                 *bn(f"{a}.proj_bn")]
        for n in ("fc1", "fc2"):  # MS_MLP_Conv
            keys += [f"{m}.{n}_conv.weight", f"{m}.{n}_conv.bias", *bn(f"{m}.{n}_bn")]
    return {*keys, "head.weight", "head.bias"}


def official_qkformer_keys(stage1: int, stage2: int) -> set[str]:
    keys = []
    for n in ("proj", "proj1", "proj2", "proj3", "proj_res"):  # PatchEmbedInit
        keys += [f"patch_embed1.{n}_conv.weight", *bn(f"patch_embed1.{n}_bn")]
    for n in ("proj", "proj4", "proj_res"):  # PatchEmbeddingStage
        keys += [f"patch_embed2.{n}_conv.weight", *bn(f"patch_embed2.{n}_bn")]
    for stage, depth, attn, branches in (("stage1", stage1, "tssa", "qk"),
                                         ("stage2", stage2, "ssa", "qkv")):
        for i in range(depth):
            a, m = f"{stage}.{i}.{attn}", f"{stage}.{i}.mlp"
            for n in branches:
                keys += [f"{a}.{n}_conv.weight", *bn(f"{a}.{n}_bn")]
            keys += [f"{a}.proj_conv.weight", f"{a}.proj_conv.bias", *bn(f"{a}.proj_bn")]
            for n in ("mlp1", "mlp2"):
                keys += [f"{m}.{n}_conv.weight", f"{m}.{n}_conv.bias", *bn(f"{m}.{n}_bn")]
    return {*keys, "head.weight", "head.bias"}


@pytest.fixture(scope="module")
def sdt_sd():
    return random_successor_state_dict(SDT_TINY, seed=0)


@pytest.fixture(scope="module")
def qk_sd():
    return random_successor_state_dict(QK_TINY, seed=0)


def frames_for(cfg, seed: int, batch: int = 1) -> torch.Tensor:
    return dvs_like_frames(cfg.steps, batch, cfg.in_channels, cfg.image_size, seed=seed)


# --------------------------------------------------------------------------------------------------
# Module tree = the official one
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_sdt_keys_are_the_official_ones(depth):
    model = SpikeDrivenTransformerRef(SDTConfig(image_size=32, dim=32, heads=4, depth=depth))
    sd = model.state_dict()
    assert set(sd) == official_sdt_keys(depth)
    if depth:
        assert sd["block.0.attn.talking_heads.weight"].shape == (4, 4, 1)  # Conv1d(heads, heads, 1)
        assert sd["block.0.attn.q_conv.weight"].shape == (32, 32, 1, 1)  # Conv2d k1: 4-d
        assert sd["block.0.mlp.fc1_conv.weight"].shape == (128, 32, 1, 1)
    assert [sd[f"patch_embed.proj_conv{s}.weight"].shape[0] for s in ("", "1", "2", "3")] == \
        [4, 8, 16, 32]  # embed_dims // 8, // 4, // 2, embed_dims


def test_qkformer_keys_are_the_official_ones():
    for s1, s2 in ((1, 1), (2, 0), (0, 3)):
        model = QKFormerRef(QKFormerConfig(image_size=64, dim=64, heads=2, stage1_depth=s1,
                                           stage2_depth=s2))
        assert set(model.state_dict()) == official_qkformer_keys(s1, s2)
    sd = QKFormerRef(QKFormerConfig()).state_dict()  # full size: the official shapes
    assert sd["patch_embed1.proj_conv.weight"].shape == (16, 2, 3, 3)
    assert sd["patch_embed1.proj_res_conv.weight"].shape == (128, 32, 1, 1)  # 1x1 stride 4
    assert sd["patch_embed2.proj_res_conv.weight"].shape == (256, 128, 1, 1)  # 1x1 stride 2
    assert sd["stage1.0.tssa.q_conv.weight"].shape == (128, 128, 1)  # Conv1d
    assert sd["stage2.0.mlp.mlp1_conv.weight"].shape == (1024, 256, 1, 1)
    assert QKFormerRef(QKFormerConfig.cifar10_dvs()).state_dict()[
        "stage2.0.mlp.mlp1_conv.weight"].shape == (256, 256, 1, 1)  # mlp_ratios 1


def test_lif_names_in_forward_order_and_recorded():
    assert successor_lif_names(SDTConfig(depth=1)) == [
        "patch_embed.proj_lif", "patch_embed.proj_lif1", "patch_embed.proj_lif2",
        "patch_embed.proj_lif3", "block.0.attn.shortcut_lif", "block.0.attn.q_lif",
        "block.0.attn.k_lif", "block.0.attn.v_lif", "block.0.attn.talking_heads_lif",
        "block.0.mlp.fc1_lif", "block.0.mlp.fc2_lif", "head_lif"]
    assert successor_lif_names(QKFormerConfig()) == [
        *(f"patch_embed1.{n}_lif" for n in ("proj", "proj1", "proj2", "proj3", "proj_res")),
        *(f"stage1.0.tssa.{n}_lif" for n in ("q", "k", "attn", "proj")),
        "stage1.0.mlp.mlp1_lif", "stage1.0.mlp.mlp2_lif",
        *(f"patch_embed2.{n}_lif" for n in ("proj", "proj4", "proj_res")),
        *(f"stage2.0.ssa.{n}_lif" for n in ("q", "k", "v", "attn", "proj")),
        "stage2.0.mlp.mlp1_lif", "stage2.0.mlp.mlp2_lif"]


# --------------------------------------------------------------------------------------------------
# Every LIF fires, spikes are binary
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sdt", "qkformer"])
def test_every_lif_fires_on_dvs_like_input(family, sdt_sd, qk_sd):
    cfg, sd, options = ((SDT_TINY, sdt_sd, SDT_OPTIONS) if family == "sdt"
                        else (QK_TINY, qk_sd, QK_OPTIONS))
    model = load_official_successor(sd, **options)
    x = frames_for(cfg, seed=123, batch=2)  # not the calibration frames
    with torch.no_grad():
        logits, spikes = model(x, record=True)
    assert logits.shape == (2, cfg.num_classes) and torch.isfinite(logits).all()
    assert list(spikes) == successor_lif_names(model)
    rates = {}
    for name, s in spikes.items():
        assert s.shape[:2] == (STEPS, 2), name
        assert ((s == 0) | (s == 1)).all(), f"{name}: not binary"
        rates[name] = float(s.mean())
    silent = [n for n, r in rates.items() if r == 0]
    assert not silent, f"silent LIFs: {silent}"
    # a BatchNorm sets each of these near 10-20 % on the calibration frames
    bn_fed = {n: r for n, r in rates.items()
              if not n.endswith(("talking_heads_lif", "attn_lif", "ssa.v_lif"))}
    assert all(0.02 <= r <= 0.4 for r in bn_fed.values()), bn_fed


def test_calibration_targets_the_stated_rates(sdt_sd):
    model = load_official_successor(sdt_sd, **SDT_OPTIONS)
    with torch.no_grad():
        _, spikes = model(dvs_like_frames(STEPS, 2, 2, 32, seed=0), record=True)  # its frames
    for name, s in spikes.items():
        target = 0.2 if name.endswith(("q_lif", "k_lif", "v_lif")) else 0.1
        if not name.endswith("talking_heads_lif"):  # (the first layer's rate moves in steps:
            # every background pixel has the same input)
            assert abs(float(s.mean()) - target) < 0.015, (name, float(s.mean()))


def test_static_images_are_repeated_over_the_steps():
    cfg = SDTConfig.cifar10(dim=32, heads=4, depth=1)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    model = SpikeDrivenTransformerRef(cfg)
    model.load_state_dict(random_successor_state_dict(cfg, 1, frames=images[:2]))
    model = model.double().eval()
    with torch.no_grad():
        a, spikes = model(images.double(), record=True)
        b = model(images.double().unsqueeze(0).repeat(cfg.steps, 1, 1, 1, 1))
    assert all(s.sum() > 0 for s in spikes.values())
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["sdt", "qkformer"])
def test_samples_do_not_depend_on_their_batch(family, sdt_sd, qk_sd):
    """Each sample's LIFs run over T alone (QKFormer's official stage-2 proj_lif runs over the T*B
    axis instead: see the module docstring)."""
    cfg, sd, options = ((SDT_TINY, sdt_sd, SDT_OPTIONS) if family == "sdt"
                        else (QK_TINY, qk_sd, QK_OPTIONS))
    model = load_official_successor(sd, dtype=torch.float64, **options)
    x = frames_for(cfg, seed=5, batch=2).double()
    with torch.no_grad():
        both, sb = model(x, record=True)
        for b in range(2):
            one, so = model(x[:, b:b + 1], record=True)
            torch.testing.assert_close(one[0], both[b], rtol=0, atol=1e-12)
            for name in so:
                assert torch.equal(so[name][:, 0], sb[name][:, b]), (b, name)


# --------------------------------------------------------------------------------------------------
# SDT's Erode acts on the layouts the official code has
# --------------------------------------------------------------------------------------------------


def naive_lif(x: np.ndarray, tau: float, theta: float) -> np.ndarray:
    v = np.zeros_like(x[0])
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        out[t] = h >= theta
        v = np.where(out[t] > 0, 0.0, h)
    return out


def naive_max3x3(x: np.ndarray) -> np.ndarray:
    """3x3 max over the last two axes, the window clipped at the borders."""
    out = np.zeros_like(x)
    A, B = x.shape[-2:]
    for a in range(A):
        for b in range(B):
            out[..., a, b] = x[..., max(a - 1, 0):a + 2, max(b - 1, 0):b + 2].max(axis=(-1, -2))
    return out


def naive_sdsa(q, k, v, heads: int, grid_pool_for_kv: bool = False) -> np.ndarray:
    """SDT's attention core written from the official layouts: K, V pooled as [T, B, C, H, W];
    KV and Y as [T, B, heads, N, d]. ``grid_pool_for_kv`` pools KV and Y over the grid instead
    (the wrong reading), to show the cases below tell the two apart."""
    T, B, C, H, W = q.shape
    d = C // heads

    def split(x):  # [T, B, C, H, W] -> [T, B, heads, N, d], c = d*h + j, n = W*row + col
        return x.reshape(T, B, heads, d, H * W).transpose(0, 1, 2, 4, 3)

    def on_grid(y):  # [T, B, heads, N, d] -> 3x3 max over the grid -> back
        g = y.transpose(0, 1, 2, 4, 3).reshape(T, B, C, H, W)
        return split(naive_max3x3(g))

    pool_kv = on_grid if grid_pool_for_kv else naive_max3x3
    kh, vh = split(naive_max3x3(k)), split(naive_max3x3(v))
    kv = pool_kv(kh * vh).sum(axis=3, keepdims=True)  # over the tokens
    y = pool_kv(split(q) * naive_lif(kv, 2.0, 0.5))
    return y.transpose(0, 1, 2, 4, 3).reshape(T, B, C, H, W)


def test_erode_pools_kv_and_y_over_token_and_channel_in_head():
    cfg = SDTConfig(image_size=32, dim=8, heads=2, depth=1, dvs=True)  # grid 4x4, d = 4
    attn = SpikeDrivenTransformerRef(cfg).block[0].attn.double()
    T, C, G = 1, 8, 4
    q = np.zeros((T, 1, C, G, G))
    k = np.zeros_like(q)
    q[0, 0, 2, 0, 3] = 1  # one query spike: head 0, j = 2, token 3 (row 0, col 3)
    k[0, 0, 1, 0, 3] = 1  # K and V: head 0, j = 1, token 3
    v = k.copy()
    y = attn.core(*(torch.from_numpy(a) for a in (q, k, v))).numpy()
    np.testing.assert_array_equal(y, naive_sdsa(q, k, v, heads=2))
    # KV pooled over (token, channel in head) reaches j = 0..2 of head 0, so kv spikes there and
    # q (j = 2) passes; Y pooled over (token, j) reaches tokens 2, 3, 4 (token 4 = row 1, col 0:
    # a neighbour in token order, not on the grid) and j = 1..3, never head 1's channels
    hit = {(c, n) for c, n in zip(*np.nonzero(y[0, 0].reshape(C, -1)), strict=True)}
    assert hit == {(c, n) for c in (1, 2, 3) for n in (2, 3, 4)}
    # pooled over the grid instead, KV would stay in channel 1: q at j = 2 would not pass at all
    assert not naive_sdsa(q, k, v, heads=2, grid_pool_for_kv=True).any()


def test_erode_core_matches_the_naive_layouts_on_random_spikes():
    cfg = SDTConfig(image_size=64, dim=16, heads=2, depth=1, dvs=True)  # grid 8x8, d = 8
    attn = SpikeDrivenTransformerRef(cfg).block[0].attn.double()
    rng = np.random.default_rng(0)
    q, k, v = ((rng.random((3, 2, 16, 8, 8)) < p).astype(np.float64) for p in (0.3, 0.04, 0.04))
    y = attn.core(*(torch.from_numpy(a) for a in (q, k, v))).numpy()
    np.testing.assert_array_equal(y, naive_sdsa(q, k, v, heads=2))
    assert y.any() and not y.all()
    assert not np.array_equal(y, naive_sdsa(q, k, v, heads=2, grid_pool_for_kv=True))
    attn.dvs = False  # Erode off: no pooling anywhere
    kv = np.einsum("tbhnd,tbhnd->tbhd", *(a.reshape(3, 2, 2, 8, 64).transpose(0, 1, 2, 4, 3)
                                          for a in (k, v)))[:, :, :, None]
    want = (q.reshape(3, 2, 2, 8, 64) * naive_lif(kv, 2.0, 0.5).transpose(0, 1, 2, 4, 3))
    np.testing.assert_array_equal(attn.core(*(torch.from_numpy(a) for a in (q, k, v))).numpy(),
                                  want.reshape(q.shape))


def test_erode_is_maxpool3d_1x3x3():
    x = torch.rand(2, 3, 4, 5, 6)
    torch.testing.assert_close(erode(x), torch.nn.MaxPool3d((1, 3, 3), 1, (0, 1, 1))(x),
                               rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# float32 against float64
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sdt", "qkformer"])
def test_float32_within_the_float32_spread(family, sdt_sd, qk_sd):
    """Native float32 logits and spike counts are no further from float64 than the reference's
    own float32 realisations (convs jittered by whole ulps) are."""
    cfg, sd, options = ((SDT_TINY, sdt_sd, SDT_OPTIONS) if family == "sdt"
                        else (QK_TINY, qk_sd, QK_OPTIONS))
    frames = [frames_for(cfg, seed=s)[:, 0] for s in (31, 32)]  # [T, C, H, W] samples
    truth = reference_outputs(load_official_successor(sd, dtype=torch.float64, **options),
                              frames, torch.float64)
    assert all(n > 0 for t in truth for n in t.counts.values()), "a silent LIF"
    model32 = load_official_successor(sd, **options)
    spread = float32_spread(model32, frames, truth)
    spread.check(spread.runs["native"], "native", exclude=["native"])


# --------------------------------------------------------------------------------------------------
# Official state dicts: loading, inference of the layout, refusals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_load_official_successor_infers_the_layout(tmp_path, wrap, sdt_sd, qk_sd):
    for sd, cfg, options, cls in ((sdt_sd, SDT_TINY, SDT_OPTIONS, SpikeDrivenTransformerRef),
                                  (qk_sd, QK_TINY, QK_OPTIONS, QKFormerRef)):
        path = tmp_path / f"{cls.__name__}.pth"
        torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, path)
        model = load_official_successor(path, **options)
        assert isinstance(model, cls) and not model.training
        assert model.cfg == cfg
        for k, t in model.state_dict().items():
            assert torch.equal(t, sd[k]), k


def test_family_from_keys(sdt_sd, qk_sd):
    assert successor_family(sdt_sd) == "sdt"
    assert successor_family({"model": qk_sd}) == "qkformer"


def one_sentence(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert isinstance(exc.value, EventformerError)
    assert "\n" not in msg and msg.count(". ") == 0, msg
    return msg


@pytest.mark.parametrize("family", ["sdt", "qkformer"])
def test_load_refuses_missing_and_unknown_keys(family, sdt_sd, qk_sd):
    sd = dict(sdt_sd if family == "sdt" else qk_sd)
    name = "block.1.attn.talking_heads.weight" if family == "sdt" else "stage2.0.ssa.v_bn.bias"
    missing = {k: v for k, v in sd.items() if k != name}
    with pytest.raises(EventformerError) as e:
        load_official_successor(missing)
    assert name in one_sentence(e) and "lacks 1 key" in str(e.value)
    with pytest.raises(EventformerError) as e:
        load_official_successor({**sd, "block.0.attn.extra.weight": torch.zeros(1)})
    assert "block.0.attn.extra.weight" in one_sentence(e) and "unknown" in str(e.value)
    bad = dict(sd)
    key = next(k for k in sd if k.endswith("proj_conv.bias"))
    bad[key] = torch.zeros(3)
    with pytest.raises(EventformerError) as e:
        load_official_successor(bad)
    assert key in one_sentence(e)


def test_load_refuses_a_spikformer_state_dict(tmp_path):
    sd = random_state_dict(RefConfig(image_size=32, sps_channels=(8, 16), dim=16, heads=2,
                                     depth=1), seed=0)
    with pytest.raises(EventformerError) as e:
        load_official_successor({"model": sd})
    assert "Spikformer" in one_sentence(e)
    with pytest.raises(EventformerError) as e:
        load_official_successor({"conv.weight": torch.zeros(1)})
    assert "neither" in one_sentence(e)
    with pytest.raises(EventformerError) as e:
        load_official_successor(tmp_path / "absent.pth")
    assert "does not exist" in one_sentence(e)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EventformerError) as e:
        load_official_successor(tmp_path / "junk.pth")
    one_sentence(e)


def test_load_refuses_parametric_lif_checkpoints(sdt_sd):
    with pytest.raises(EventformerError) as e:
        load_official_successor({**sdt_sd, "patch_embed.proj_lif.w": torch.zeros(())})
    assert "plif" in one_sentence(e)
