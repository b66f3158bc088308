"""Plain-PyTorch references of Spikformer's successors: Spike-driven Transformer (v1), QKFormer.

The oracle the event-driven engine is compared against for issue 23's models, in the style of
:mod:`eventformer.torch_model` and built from its parts (the SPEC §1 :class:`LIF`, the
:class:`Conv1d` / :class:`Conv2d` convs with their float64-accumulation switch): activations are
time-major ``[T, B, ...]``, convolutions and BatchNorms run on ``[T*B, ...]``, every LIF loops over
``T`` (SpikingJelly ``MultiStepLIFNode(tau=2, detach_reset=True)``, hard reset to 0), BatchNorms are
evaluated as BatchNorms in eval mode. Written from what the released code computes, op for op
(BICLab/Spike-Driven-Transformer ``module/sps.py``, ``module/ms_conv.py``, ``model/spikeformer.py``;
zhouchenlin2096/QKFormer ``dvs128-gesture/model.py``, ``cifar10-dvs/model.py``), without
SpikingJelly or timm. Module names are the official ones, so ``state_dict()`` has exactly the keys
of an official checkpoint and :func:`load_official_successor` loads one with ``strict=True``.
Parameter-free modules that the official trees build but never run (SDT's ``patch_embed.rpe_lif``
and ``attn.attn_lif``, QKFormer's ``ssa.qkv_mp``) are left out: they hold no tensors.

Spike-driven Transformer (``SpikeDrivenTransformerRef``; channel ``c = d*h + j`` of head ``h``,
token ``n = W*row + col``)::

    MS_SPS  stage i = 0, 1, 2 (proj_conv, proj_conv1, proj_conv2; widths D/8, D/4, D/2):
                x = LIF(BN(Conv2d k3 p1, no bias)(x)), then MaxPool(k3, s2, p1) if pooling_stat[i]
            stage 3 (proj_conv3, width D): x_feat = BN(conv(x)), MaxPool'ed if pooling_stat[3]:
                the pool runs BEFORE the LIF, on the real-valued BN output
            x = rpe_bn(rpe_conv(proj_lif3(x_feat))) + x_feat      # real valued, no rpe LIF
    Block   membrane shortcuts: the residual stream x stays real valued
      attn  s = shortcut_lif(x); q, k, v = LIF(BN(Conv2d k1, no bias)(s))     # spikes
            dvs: K, V <- Erode as [T, B, C, H, W]   (3x3 max over the spatial grid)
            KV = K * V as [T, B, heads, N, d]; dvs: KV <- Erode (3x3 over (token, channel in head))
            kv = talking_heads_lif(sum of KV over the tokens)  (theta 0.5; [T, B, heads, 1, d])
            Y = Q * kv; dvs: Y <- Erode  (again over (token, channel in head))
            x = proj_bn(proj_conv(Y)) + x                  # Conv2d k1 with bias
      mlp   h = fc1_bn(fc1_conv(fc1_lif(x))); if hidden == D (the official ``res``): h = x + h,
            and h is then the identity; x = fc2_bn(fc2_conv(fc2_lif(h))) + identity
    head    logits = mean over T of head(head_lif(x.mean over tokens))    # head_lif on [T, B, D]

``Erode`` is ``MaxPool3d((1, 3, 3), stride 1, padding (0, 1, 1))`` applied to whatever 5-d tensor
the code has at that point: on K and V (``[T, B, C, H, W]``) it pools the grid; on KV and Y
(``[T, B, heads, N, d]``) it pools a 3x3 window of (token index, channel index within the head), so
that tokens n-1, n, n+1 are neighbours even across a grid row's end. In static-image mode the input
``[B, C, H, W]`` is repeated over ``steps`` and the first conv takes real pixels.

QKFormer (``QKFormerRef``, dvs128-gesture layout; heads 16 in both stages, the official code
hard-codes them)::

    patch_embed1  (width E = D/2; proj_conv E/8, proj1 E/4, proj2 E/2, proj3 E)
            x = proj_lif(BN(conv k3(x)))                            # no pool
            x = proj1_lif(maxpool1(BN(proj1_conv(x))));  x_feat = x  # pool BEFORE the LIF
            x = proj2_lif(maxpool2(BN(proj2_conv(x))))
            x = proj3_lif(maxpool3(BN(proj3_conv(x))))
            x = x + proj_res_lif(proj_res_bn(proj_res_conv(x_feat)))   # 1x1, stride 4; 0..2
    stage1  blocks x = x + tssa(x); x = x + mlp(x)   (SEW residuals of spikes: integer stream)
      tssa  q, k = LIF(BN1d(Conv1d k1, no bias)(x)) as [T, B, C, N]; per head and token
            a = attn_lif(sum of q over the head's d channels)   (theta 0.5; [T, B, heads, 1, N])
            y = a * k (a masks the key spikes; no V); out = proj_lif(proj_bn(proj_conv(y)))
      mlp   out = mlp2_lif(mlp2_bn(mlp2_conv(mlp1_lif(mlp1_bn(mlp1_conv(x))))))   # Conv2d k1, bias
    patch_embed2  (width D) x_feat = x (the integer stream)
            x = proj4_lif(proj4_maxpool(BN(proj4_conv(proj_lif(BN(proj_conv k3(x)))))))
            x = x + proj_res_lif(proj_res_bn(proj_res_conv(x_feat)))   # 1x1, stride 2
    stage2  blocks x = x + ssa(x); x = x + mlp(x)
      ssa   q, k, v spikes [T, B, heads, N, d]; y = (q @ (k^T @ v)) * scale  (scale 0.125)
            out = proj_lif(proj_bn(proj_conv(attn_lif(y))))
    head    logits = head(mean over T of (x.mean over tokens))

``cifar10-dvs/model.py`` is the same code with ``mlp_ratios=1`` and ``num_classes=10``: both are
:class:`QKFormerConfig` fields (``QKFormerConfig.cifar10_dvs()``). With ``mlp_ratio`` 1 QKFormer's
MLP stays as it is (it has no ``res`` branch).

One departure, deliberate: the official ``Spiking_Self_Attention`` applies ``proj_lif`` to the
``[T*B, C, N]`` tensor, so for a batch of B > 1 its membrane runs through T*B "steps" and carries
from one sample into the next. Here it runs over T per sample (the only reading under which a
sample's output does not depend on its batch mates, and what the engine computes); the two agree
exactly for B = 1.

Recording: ``model(x, record=True)`` returns ``(logits, spikes)`` with every LIF's output
``[T, B, ...]`` in the layout the code has at that point (``[T, B, C, H, W]`` for conv maps and
SDT blocks, ``[T, B, C, N]`` for QKFormer's attention, ``[T, B, heads, 1, d]`` for SDT's
``talking_heads_lif``, ``[T, B, heads, 1, N]`` for QKFormer's token ``attn_lif``, ``[T, B, D]``
for ``head_lif``) under its module name; :func:`successor_lif_names` lists them in forward order.
K and V are recorded as their LIFs emit them, before any Erode.

:func:`random_successor_state_dict` gives official-layout weights whose BatchNorms make every LIF
fire (see :func:`calibrate_successor_bn_`). float64 works (``model.double()``); nothing here needs
autograd: the models are meant for ``eval()`` under ``torch.no_grad()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointError
from .torch_model import LIF, Conv1d, Conv2d, SpikformerRef, _recorder, lif_steps

__all__ = [
    "QKFormerConfig",
    "QKFormerRef",
    "SDTConfig",
    "SpikeDrivenTransformerRef",
    "calibrate_successor_bn_",
    "dvs_like_frames",
    "erode",
    "load_official_successor",
    "random_successor_state_dict",
    "successor_family",
    "successor_lif_names",
]


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------


@dataclass
class SDTConfig:
    """Every shape and constant of a Spike-driven Transformer (v1). Defaults: ``conf/gesture/
    2_256_200E_t16.yml`` as the official ``train.py`` builds it.

    ``dvs`` switches the Erode max-pools on. The official ``train.py`` sets ``dvs_mode`` only for
    the CIFAR10-DVS datasets, so its DVS Gesture models run without Erode: the default is False
    (``SDTConfig.cifar10_dvs()`` has it on). ``steps`` is T: the repeat count of a static image
    (a DVS input brings its own T)."""

    in_channels: int = 2
    image_size: int = 128
    dim: int = 256
    heads: int = 8
    depth: int = 2
    mlp_ratio: float = 4
    steps: int = 16
    pooling_stat: str = "0111"  # stage i max-pools iff pooling_stat[i] == "1"
    dvs: bool = False
    num_classes: int = 11
    tau: float = 2.0
    theta: float = 1.0  # every LIF except talking_heads_lif
    attn_theta: float = 0.5  # talking_heads_lif

    def __post_init__(self) -> None:
        if len(self.pooling_stat) != 4 or set(self.pooling_stat) - {"0", "1"}:
            raise ValueError(f"pooling_stat must be 4 characters of 0/1, got {self.pooling_stat!r}")
        if self.dim % 8 or self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by 8 and by heads {self.heads}")
        if self.image_size % 2**self.pools:
            raise ValueError(f"image size {self.image_size} is not divisible by 2**{self.pools}")
        if self.depth < 0 or self.steps < 1 or self.hidden < 1:
            raise ValueError(f"depth {self.depth}, steps {self.steps}, hidden {self.hidden} "
                             "must be >= 0, >= 1, >= 1")

    @property
    def pools(self) -> int:
        return self.pooling_stat.count("1")

    @property
    def sps_channels(self) -> tuple[int, int, int, int]:
        return (self.dim // 8, self.dim // 4, self.dim // 2, self.dim)

    @property
    def grid(self) -> int:
        return self.image_size // 2**self.pools

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @classmethod
    def gesture(cls, **kw) -> SDTConfig:
        """``conf/gesture/2_256_200E_t16.yml`` (the defaults)."""
        return cls(**kw)

    @classmethod
    def cifar10_dvs(cls, **kw) -> SDTConfig:
        """``conf/cifar10-dvs/2_256_200E_t10_TET.yml``: 64x64 input, T 10, Erode on."""
        return cls(**{"image_size": 64, "steps": 10, "pooling_stat": "0011", "dvs": True,
                      "num_classes": 10, **kw})

    @classmethod
    def cifar10(cls, **kw) -> SDTConfig:
        """``conf/cifar10/2_512_300E_t4.yml``: static 32x32 RGB images repeated over T 4."""
        return cls(**{"in_channels": 3, "image_size": 32, "dim": 512, "steps": 4,
                      "pooling_stat": "0011", "num_classes": 10, **kw})

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], **overrides) -> SDTConfig:
        """The layout an official state dict's shapes show (in_channels, dim, heads from
        ``talking_heads``, depth, mlp_ratio, num_classes); ``image_size``, ``pooling_stat``,
        ``steps`` and ``dvs`` are not in a state dict: gesture defaults unless overridden."""
        sd = _unwrap(sd)
        w0 = _need(sd, "patch_embed.proj_conv.weight", "Spike-driven Transformer")
        dim = int(_need(sd, "patch_embed.rpe_conv.weight", "Spike-driven Transformer").shape[0])
        depth = _count(sd, "block")
        kw = {"in_channels": int(w0.shape[1]), "dim": dim, "depth": depth,
              "num_classes": int(_need(sd, "head.weight", "Spike-driven Transformer").shape[0])}
        if depth:
            kw["heads"] = int(_need(sd, "block.0.attn.talking_heads.weight",
                                    "Spike-driven Transformer").shape[0])
            kw["mlp_ratio"] = _ratio(_need(sd, "block.0.mlp.fc1_conv.weight",
                                           "Spike-driven Transformer").shape[0], dim)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class QKFormerConfig:
    """Every shape and constant of QKFormer's DVS layout. Defaults: ``dvs128-gesture/model.py``
    (``QKFormer``: embed_dims 256, heads 16 (hard-coded), mlp_ratio 4, 11 classes, one block per
    stage (``range(1)``: the ``depths=4`` argument only feeds the drop-path schedule), T 16 from
    ``train.py``). ``dim`` is the second stage's width; the first runs at ``dim // 2``."""

    in_channels: int = 2
    image_size: int = 128
    dim: int = 256
    heads: int = 16
    stage1_depth: int = 1
    stage2_depth: int = 1
    mlp_ratio: float = 4
    steps: int = 16
    num_classes: int = 11
    scale: float = 0.125  # Spiking_Self_Attention
    tau: float = 2.0
    theta: float = 1.0
    attn_theta: float = 0.5  # both attention LIFs

    def __post_init__(self) -> None:
        if self.dim % 16 or (self.dim // 2) % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by 16, and dim/2 by heads "
                             f"{self.heads}")
        if self.image_size % 16:
            raise ValueError(f"image size {self.image_size} is not divisible by 16")
        if min(self.stage1_depth, self.stage2_depth) < 0 or self.steps < 1:
            raise ValueError("stage depths must be >= 0 and steps >= 1")
        if int(self.dim // 2 * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} leaves no hidden channel")

    @property
    def grid(self) -> int:
        """Token grid side of stage 2 (stage 1 runs on a grid twice as wide)."""
        return self.image_size // 16

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    @classmethod
    def gesture(cls, **kw) -> QKFormerConfig:
        return cls(**kw)

    @classmethod
    def cifar10_dvs(cls, **kw) -> QKFormerConfig:
        """``cifar10-dvs/model.py``: the gesture code with mlp_ratios 1 and 10 classes."""
        return cls(**{"mlp_ratio": 1, "num_classes": 10, **kw})

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], **overrides) -> QKFormerConfig:
        """The layout an official state dict's shapes show; ``heads``, ``image_size``, ``steps``
        and ``scale`` are not in a state dict (official values unless overridden)."""
        sd = _unwrap(sd)
        w0 = _need(sd, "patch_embed1.proj_conv.weight", "QKFormer")
        dim = int(_need(sd, "patch_embed2.proj4_conv.weight", "QKFormer").shape[0])
        kw = {"in_channels": int(w0.shape[1]), "dim": dim,
              "stage1_depth": _count(sd, "stage1"), "stage2_depth": _count(sd, "stage2"),
              "num_classes": int(_need(sd, "head.weight", "QKFormer").shape[0])}
        if kw["stage2_depth"]:
            hidden = _need(sd, "stage2.0.mlp.mlp1_conv.weight", "QKFormer").shape[0]
            kw["mlp_ratio"] = _ratio(hidden, dim)
        elif kw["stage1_depth"]:
            hidden = _need(sd, "stage1.0.mlp.mlp1_conv.weight", "QKFormer").shape[0]
            kw["mlp_ratio"] = _ratio(hidden, dim // 2)
        kw.update(overrides)
        return cls(**kw)


def _ratio(hidden: int, dim: int) -> float:
    r = int(hidden) / dim
    return int(r) if r == int(r) else r


def _count(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of ``prefix.{i}.`` blocks a state dict holds (1 + the highest index)."""
    pat = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in sd if (m := pat.match(k))), default=-1)


def _need(sd: Mapping[str, Tensor], key: str, family: str) -> Tensor:
    if key not in sd:
        raise CheckpointError(f"the state dict lacks {key!r}, which every official {family} "
                              "state dict has")
    return sd[key]


# --------------------------------------------------------------------------------------------------
# Shared parts
# --------------------------------------------------------------------------------------------------


def erode(x: Tensor) -> Tensor:
    """SDT's ``Erode``: ``MaxPool3d(kernel (1, 3, 3), stride 1, padding (0, 1, 1))`` on a 5-d
    tensor, i.e. a 3x3 max over its last two axes (with -inf padding), separately for every index
    of the first three. Which axes those are is the caller's layout (see the module docstring)."""
    return F.max_pool3d(x, kernel_size=(1, 3, 3), stride=(1, 1, 1), padding=(0, 1, 1))


def _steps(x: Tensor, T: int) -> Tensor:
    """``[T*B, ...]`` -> ``[T, B, ...]`` (a contiguous view for the LIF loop)."""
    return x.reshape(T, -1, *x.shape[1:]).contiguous()


class _Successor(nn.Module):
    """What both references share: recording LIF outputs, the conv accumulation switch."""

    # the same switch as SpikformerRef's (float64-accumulated or jittered float32 convs), so that
    # tests/torch_reference.py's float32_spread can run these models too
    set_conv_accumulation = SpikformerRef.set_conv_accumulation

    def lif_names(self) -> list[str]:
        """Names of the LIFs that run, in forward order."""
        return [n for n, m in self.named_modules() if isinstance(m, LIF)]

    def _run(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, record: bool = False):
        spikes: dict[str, Tensor] = {}
        handles = []
        if record:
            mods = dict(self.named_modules())
            handles = [mods[n].register_forward_hook(_recorder(spikes, n))
                       for n in self.lif_names()]
        try:
            logits = self._run(x.to(self.head.weight.dtype))
        finally:
            for h in handles:
                h.remove()
        if record:
            spikes = {n: spikes[n] for n in self.lif_names()}  # forward order
            return logits, spikes
        return logits


def _lif(cfg, theta: float | None = None) -> LIF:
    return LIF(cfg.tau, cfg.theta if theta is None else theta)


# --------------------------------------------------------------------------------------------------
# Spike-driven Transformer (v1)
# --------------------------------------------------------------------------------------------------


def _sps_name(prefix: str, i: int) -> str:
    """MS_SPS naming: proj_conv, proj_conv1, proj_conv2, proj_conv3 (maxpool, maxpool1, ...)."""
    return prefix if i == 0 else f"{prefix}{i}"


class SDTPatchEmbed(nn.Module):
    """``MS_SPS``: four conv stages, the last one max-pooled before its LIF, and the membrane
    shortcut ``rpe_bn(rpe_conv(lif3(x_feat))) + x_feat`` (real valued)."""

    def __init__(self, cfg: SDTConfig):
        super().__init__()
        self.pooling_stat = cfg.pooling_stat
        c_in = cfg.in_channels
        for i, c in enumerate(cfg.sps_channels):
            setattr(self, _sps_name("proj_conv", i), Conv2d(c_in, c, 3, 1, 1, bias=False))
            setattr(self, _sps_name("proj_bn", i), nn.BatchNorm2d(c))
            setattr(self, _sps_name("proj_lif", i), _lif(cfg))
            setattr(self, _sps_name("maxpool", i), nn.MaxPool2d(3, 2, 1))
            c_in = c
        self.rpe_conv = Conv2d(cfg.dim, cfg.dim, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(cfg.dim)

    def stage(self, name: str, i: int) -> nn.Module:
        return getattr(self, _sps_name(name, i))

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        x = x.flatten(0, 1)  # [T*B, C, H, W]
        for i in range(3):
            x = self.stage("proj_bn", i)(self.stage("proj_conv", i)(x))
            x = self.stage("proj_lif", i)(_steps(x, T)).flatten(0, 1)
            if self.pooling_stat[i] == "1":
                x = self.stage("maxpool", i)(x)
        x = self.proj_bn3(self.proj_conv3(x))
        if self.pooling_stat[3] == "1":
            x = self.maxpool3(x)  # before the LIF: x_feat is real valued
        x_feat = x
        x = self.proj_lif3(_steps(x, T)).flatten(0, 1)
        x = self.rpe_bn(self.rpe_conv(x))
        return _steps(x + x_feat, T)  # [T, B, D, g, g]


class SDSA(nn.Module):
    """``MS_SSA_Conv``: spike-driven self-attention with its membrane shortcut (see the module
    docstring). ``talking_heads`` is built (it is in every checkpoint) but never runs."""

    def __init__(self, cfg: SDTConfig):
        super().__init__()
        D, H = cfg.dim, cfg.heads
        self.heads = H
        self.dvs = cfg.dvs
        for n in ("q", "k", "v"):  # registration order = the official one (hence the key order)
            setattr(self, f"{n}_conv", Conv2d(D, D, 1, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm2d(D))
            setattr(self, f"{n}_lif", _lif(cfg))
        self.talking_heads = nn.Conv1d(H, H, 1, 1, bias=False)  # saved, unused
        self.talking_heads_lif = _lif(cfg, cfg.attn_theta)
        self.proj_conv = Conv2d(D, D, 1, 1)
        self.proj_bn = nn.BatchNorm2d(D)
        self.shortcut_lif = _lif(cfg)

    LIFS = ("shortcut_lif", "q_lif", "k_lif", "v_lif", "talking_heads_lif")  # forward order

    def _split_heads(self, y: Tensor) -> Tensor:
        """[T, B, C, H, W] -> [T, B, heads, N, d] (c = d * h + j, n = W * row + col)."""
        T, B, C = y.shape[:3]
        return (y.flatten(3).transpose(-1, -2).reshape(T, B, -1, self.heads, C // self.heads)
                .permute(0, 1, 3, 2, 4).contiguous())

    def _spikes(self, n: str, s: Tensor, T: int) -> Tensor:
        """Branch ``n`` (q, k or v): LIF(BN(conv(s))) as [T, B, C, H, W]."""
        return getattr(self, f"{n}_lif")(_steps(getattr(self, f"{n}_bn")(
            getattr(self, f"{n}_conv")(s)), T))

    def core(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Y (before proj) from the q, k, v LIF outputs, all ``[T, B, C, H, W]``."""
        T, B, C, Hs, Ws = q.shape
        if self.dvs:
            k, v = erode(k), erode(v)  # [T, B, C, H, W]: 3x3 over the grid
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        kv = k.mul(v)  # K AND V, [T, B, heads, N, d]
        if self.dvs:
            kv = erode(kv)  # 3x3 over (token, channel in head)
        kv = self.talking_heads_lif(kv.sum(dim=-2, keepdim=True))  # [T, B, heads, 1, d]
        y = q.mul(kv)
        if self.dvs:
            y = erode(y)  # again over (token, channel in head)
        return y.transpose(3, 4).reshape(T, B, C, Hs, Ws).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        T, B, C, Hs, Ws = x.shape
        identity = x
        s = self.shortcut_lif(x).flatten(0, 1)  # the real stream, spiked
        y = self.core(*(self._spikes(n, s, T) for n in ("q", "k", "v")))
        y = self.proj_bn(self.proj_conv(y.flatten(0, 1))).reshape(T, B, C, Hs, Ws)
        return y + identity


class SDTMLP(nn.Module):
    """``MS_MLP_Conv`` with its membrane shortcut (and the ``res`` add when hidden == dim)."""

    def __init__(self, cfg: SDTConfig):
        super().__init__()
        D, Hd = cfg.dim, cfg.hidden
        self.res = D == Hd
        self.fc1_conv = Conv2d(D, Hd, 1, 1)
        self.fc1_bn = nn.BatchNorm2d(Hd)
        self.fc1_lif = _lif(cfg)
        self.fc2_conv = Conv2d(Hd, D, 1, 1)
        self.fc2_bn = nn.BatchNorm2d(D)
        self.fc2_lif = _lif(cfg)

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        identity = x
        h = _steps(self.fc1_bn(self.fc1_conv(self.fc1_lif(x).flatten(0, 1))), T)
        if self.res:
            h = identity + h
            identity = h
        h = _steps(self.fc2_bn(self.fc2_conv(self.fc2_lif(h).flatten(0, 1))), T)
        return h + identity


class SDTBlock(nn.Module):
    def __init__(self, cfg: SDTConfig):
        super().__init__()
        self.attn = SDSA(cfg)
        self.mlp = SDTMLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.attn(x))  # each adds its own shortcut


class SpikeDrivenTransformerRef(_Successor):
    """Spike-driven Transformer (v1). ``forward(x)`` with ``x`` DVS frames ``[T, B, C, H, W]``
    (time-major, counts) or static images ``[B, C, H, W]`` (repeated over ``cfg.steps``) ->
    logits ``[B, classes]``; ``forward(x, record=True)`` -> ``(logits, spikes)``."""

    def __init__(self, cfg: SDTConfig | None = None):
        super().__init__()
        cfg = cfg or SDTConfig()
        self.cfg = cfg
        self.patch_embed = SDTPatchEmbed(cfg)
        self.block = nn.ModuleList([SDTBlock(cfg) for _ in range(cfg.depth)])
        self.head_lif = _lif(cfg)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.set_conv_accumulation("native")

    def lif_names(self) -> list[str]:
        names = [f"patch_embed.{_sps_name('proj_lif', i)}" for i in range(4)]
        for b in range(self.cfg.depth):
            names += [f"block.{b}.attn.{n}" for n in SDSA.LIFS]
            names += [f"block.{b}.mlp.fc1_lif", f"block.{b}.mlp.fc2_lif"]
        return [*names, "head_lif"]

    def _run(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # static images: direct encoding, the same image at every step
            x = x.unsqueeze(0).repeat(self.cfg.steps, 1, 1, 1, 1)
        elif x.dim() != 5:
            raise ValueError(f"input must be [T, B, C, H, W] or [B, C, H, W], got {tuple(x.shape)}")
        x = self.patch_embed(x)
        for blk in self.block:
            x = blk(x)
        x = self.head_lif(x.flatten(3).mean(3))  # [T, B, D]: spikes of the token mean
        return self.head(x).mean(0)

    # ---- BatchNorm calibration plan (see calibrate_successor_bn_) ----

    def _context_modules(self) -> list[str]:
        names = ["patch_embed.proj_bn3"]
        for b in range(self.cfg.depth):
            names += [f"block.{b}.attn", f"block.{b}.mlp", f"block.{b}.mlp.fc1_bn"]
        return names

    def _bn_targets(self) -> dict[str, tuple[str, Callable[[Tensor, dict], Tensor]]]:
        cfg = self.cfg
        pe = self.patch_embed

        def T(y: Tensor) -> Tensor:  # [T*B, ...] -> [T, B, ...] at calibration's T
            return _steps(y, self._calib_T)
        targets: dict[str, tuple[str, Callable]] = {}
        for i in range(3):
            targets[f"patch_embed.{_sps_name('proj_bn', i)}"] = (
                f"patch_embed.{_sps_name('proj_lif', i)}", lambda y, ctx: T(y))
        pool3 = (lambda y: pe.maxpool3(y)) if cfg.pooling_stat[3] == "1" else (lambda y: y)
        targets["patch_embed.proj_bn3"] = ("patch_embed.proj_lif3", lambda y, ctx: T(pool3(y)))

        def stream_lif(b: int) -> tuple[str, Callable[[Tensor], Tensor]]:
            """The LIF that reads the residual stream entering block b (head_lif after the last)."""
            if b < cfg.depth:
                return f"block.{b}.attn.shortcut_lif", lambda s: s
            return "head_lif", lambda s: s.flatten(3).mean(3)

        lif, f = stream_lif(0)
        targets["patch_embed.rpe_bn"] = (
            lif, lambda y, ctx, f=f: f(T(y + pool3(ctx["patch_embed.proj_bn3"][1]))))
        for b in range(cfg.depth):
            a, m = f"block.{b}.attn", f"block.{b}.mlp"
            for n in ("q", "k", "v"):
                targets[f"{a}.{n}_bn"] = (f"{a}.{n}_lif", lambda y, ctx: T(y))
            targets[f"{a}.proj_bn"] = (f"{m}.fc1_lif", lambda y, ctx, a=a: T(y) + ctx[a][0])
            if cfg.hidden == cfg.dim:  # res: fc2_lif reads x + h, and x + h is the new identity
                targets[f"{m}.fc1_bn"] = (f"{m}.fc2_lif", lambda y, ctx, m=m: ctx[m][0] + T(y))
                identity = lambda ctx, m=m: ctx[m][0] + T(ctx[f"{m}.fc1_bn"][1])  # noqa: E731
            else:
                targets[f"{m}.fc1_bn"] = (f"{m}.fc2_lif", lambda y, ctx: T(y))
                identity = lambda ctx, m=m: ctx[m][0]  # noqa: E731
            lif, f = stream_lif(b + 1)
            targets[f"{m}.fc2_bn"] = (lif, lambda y, ctx, f=f, i=identity: f(T(y) + i(ctx)))
        return targets


# --------------------------------------------------------------------------------------------------
# QKFormer
# --------------------------------------------------------------------------------------------------


class PatchEmbedInit(nn.Module):
    """QKFormer's stem: four conv stages (max-pool before the LIF in stages 1-3) and the strided
    1x1 ``proj_res`` shortcut from stage 1's spikes; output = the sum of two spike maps."""

    POOLS = {"proj1": "maxpool1", "proj2": "maxpool2", "proj3": "maxpool3"}

    def __init__(self, cfg: QKFormerConfig):
        super().__init__()
        E = cfg.dim // 2
        self.proj_conv = Conv2d(cfg.in_channels, E // 8, 3, 1, 1, bias=False)
        self.proj_bn = nn.BatchNorm2d(E // 8)
        self.proj_lif = _lif(cfg)
        c_in = E // 8
        for i, c in ((1, E // 4), (2, E // 2), (3, E)):
            setattr(self, f"proj{i}_conv", Conv2d(c_in, c, 3, 1, 1, bias=False))
            setattr(self, f"proj{i}_bn", nn.BatchNorm2d(c))
            setattr(self, f"maxpool{i}", nn.MaxPool2d(3, 2, 1))
            setattr(self, f"proj{i}_lif", _lif(cfg))
            c_in = c
        self.proj_res_conv = Conv2d(E // 4, E, 1, 4, 0, bias=False)
        self.proj_res_bn = nn.BatchNorm2d(E)
        self.proj_res_lif = _lif(cfg)

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        x = self.proj_lif(_steps(self.proj_bn(self.proj_conv(x.flatten(0, 1))), T)).flatten(0, 1)
        x_feat = None
        for i in (1, 2, 3):
            x = getattr(self, f"proj{i}_bn")(getattr(self, f"proj{i}_conv")(x))
            x = getattr(self, f"proj{i}_lif")(_steps(getattr(self, f"maxpool{i}")(x), T))
            if i == 1:
                x_feat = x.flatten(0, 1)  # stage 1's spikes feed the shortcut
            if i < 3:
                x = x.flatten(0, 1)
        res = self.proj_res_lif(_steps(self.proj_res_bn(self.proj_res_conv(x_feat)), T))
        return x + res


class PatchEmbeddingStage(nn.Module):
    """QKFormer's patch merging: two conv stages (the second max-pooled before its LIF) and a
    strided 1x1 ``proj_res`` shortcut from the (integer) stream itself."""

    POOLS = {"proj4": "proj4_maxpool"}

    def __init__(self, cfg: QKFormerConfig):
        super().__init__()
        D = cfg.dim
        self.proj_conv = Conv2d(D // 2, D, 3, 1, 1, bias=False)
        self.proj_bn = nn.BatchNorm2d(D)
        self.proj_lif = _lif(cfg)
        self.proj4_conv = Conv2d(D, D, 3, 1, 1, bias=False)
        self.proj4_bn = nn.BatchNorm2d(D)
        self.proj4_maxpool = nn.MaxPool2d(3, 2, 1)
        self.proj4_lif = _lif(cfg)
        self.proj_res_conv = Conv2d(D // 2, D, 1, 2, 0, bias=False)
        self.proj_res_bn = nn.BatchNorm2d(D)
        self.proj_res_lif = _lif(cfg)

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        x_feat = x = x.flatten(0, 1)
        x = self.proj_lif(_steps(self.proj_bn(self.proj_conv(x)), T)).flatten(0, 1)
        x = self.proj4_lif(_steps(self.proj4_maxpool(self.proj4_bn(self.proj4_conv(x))), T))
        res = self.proj_res_lif(_steps(self.proj_res_bn(self.proj_res_conv(x_feat)), T))
        return x + res


class TokenQKAttention(nn.Module):
    """``Token_QK_Attention``: per head and token, the q spikes summed over the head's channels
    are spiked (theta 0.5) and mask the key spikes; no V."""

    def __init__(self, dim: int, cfg: QKFormerConfig):
        super().__init__()
        self.heads = cfg.heads
        for n in ("q", "k"):
            setattr(self, f"{n}_conv", Conv1d(dim, dim, 1, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{n}_lif", _lif(cfg))
        self.attn_lif = _lif(cfg, cfg.attn_theta)
        self.proj_conv = Conv1d(dim, dim, 1, 1)
        self.proj_bn = nn.BatchNorm1d(dim)
        self.proj_lif = _lif(cfg)

    def forward(self, x: Tensor) -> Tensor:
        T, B, C, Hs, Ws = x.shape
        xf = x.flatten(3).flatten(0, 1)  # [T*B, C, N]
        q = self.q_lif(_steps(self.q_bn(self.q_conv(xf)), T))  # [T, B, C, N]
        k = self.k_lif(_steps(self.k_bn(self.k_conv(xf)), T))
        q = q.reshape(T, B, self.heads, C // self.heads, -1)  # channel c = d * h + j
        k = k.reshape(T, B, self.heads, C // self.heads, -1)
        a = self.attn_lif(torch.sum(q, dim=3, keepdim=True))  # [T, B, heads, 1, N]
        y = torch.mul(a, k).flatten(2, 3)  # [T, B, C, N]
        y = self.proj_bn(self.proj_conv(y.flatten(0, 1))).reshape(T, B, C, Hs, Ws)
        return self.proj_lif(y)


class SpikingSelfAttention(nn.Module):
    """QKFormer's ``Spiking_Self_Attention``: y = (q @ (k^T @ v)) * scale -> attn_lif -> proj."""

    def __init__(self, dim: int, cfg: QKFormerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.scale = cfg.scale
        for n in ("q", "k", "v"):
            setattr(self, f"{n}_conv", Conv1d(dim, dim, 1, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{n}_lif", _lif(cfg))
        self.attn_lif = _lif(cfg, cfg.attn_theta)
        self.proj_conv = Conv1d(dim, dim, 1, 1)
        self.proj_bn = nn.BatchNorm1d(dim)
        self.proj_lif = _lif(cfg)

    def split_heads(self, s: Tensor) -> Tensor:
        """[T, B, C, N] -> [T, B, heads, N, d] (channel c = d * h + j)."""
        T, B, C, N = s.shape
        return (s.transpose(-1, -2).reshape(T, B, N, self.heads, C // self.heads)
                .permute(0, 1, 3, 2, 4).contiguous())

    def current(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """attn_lif's input [T, B, C, N] from q, k, v spikes [T, B, heads, N, d]."""
        T, B, H, N, d = q.shape
        y = (q @ (k.transpose(-2, -1) @ v)) * self.scale
        return y.transpose(3, 4).reshape(T, B, H * d, N).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        T, B, C, Hs, Ws = x.shape
        xf = x.flatten(3).flatten(0, 1)  # [T*B, C, N]

        def heads(n: str) -> Tensor:
            s = getattr(self, f"{n}_lif")(_steps(getattr(self, f"{n}_bn")(
                getattr(self, f"{n}_conv")(xf)), T))  # [T, B, C, N]
            return self.split_heads(s)

        y = self.attn_lif(self.current(heads("q"), heads("k"), heads("v")))
        y = self.proj_bn(self.proj_conv(y.flatten(0, 1)))
        # per sample over T (the official code runs this LIF over the T*B axis: see the docstring)
        return self.proj_lif(_steps(y, T)).reshape(T, B, C, Hs, Ws)


class QKMLP(nn.Module):
    def __init__(self, dim: int, cfg: QKFormerConfig):
        super().__init__()
        hidden = int(dim * cfg.mlp_ratio)
        self.mlp1_conv = Conv2d(dim, hidden, 1, 1)
        self.mlp1_bn = nn.BatchNorm2d(hidden)
        self.mlp1_lif = _lif(cfg)
        self.mlp2_conv = Conv2d(hidden, dim, 1, 1)
        self.mlp2_bn = nn.BatchNorm2d(dim)
        self.mlp2_lif = _lif(cfg)

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        x = self.mlp1_lif(_steps(self.mlp1_bn(self.mlp1_conv(x.flatten(0, 1))), T))
        return self.mlp2_lif(_steps(self.mlp2_bn(self.mlp2_conv(x.flatten(0, 1))), T))


class TokenSpikingTransformer(nn.Module):
    def __init__(self, dim: int, cfg: QKFormerConfig):
        super().__init__()
        self.tssa = TokenQKAttention(dim, cfg)
        self.mlp = QKMLP(dim, cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.tssa(x)
        return x + self.mlp(x)


class SpikingTransformer(nn.Module):
    def __init__(self, dim: int, cfg: QKFormerConfig):
        super().__init__()
        self.ssa = SpikingSelfAttention(dim, cfg)
        self.mlp = QKMLP(dim, cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ssa(x)
        return x + self.mlp(x)


class QKFormerRef(_Successor):
    """QKFormer (DVS layout). ``forward(frames [T, B, C, H, W])`` -> logits ``[B, classes]``;
    ``forward(frames, record=True)`` -> ``(logits, spikes)``."""

    def __init__(self, cfg: QKFormerConfig | None = None):
        super().__init__()
        cfg = cfg or QKFormerConfig()
        self.cfg = cfg
        self.patch_embed1 = PatchEmbedInit(cfg)
        self.stage1 = nn.ModuleList([TokenSpikingTransformer(cfg.dim // 2, cfg)
                                     for _ in range(cfg.stage1_depth)])
        self.patch_embed2 = PatchEmbeddingStage(cfg)
        self.stage2 = nn.ModuleList([SpikingTransformer(cfg.dim, cfg)
                                     for _ in range(cfg.stage2_depth)])
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.set_conv_accumulation("native")

    def _run(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"frames must be [T, B, C, H, W], got {tuple(x.shape)}")
        x = self.patch_embed1(x)
        for blk in self.stage1:
            x = blk(x)
        x = self.patch_embed2(x)
        for blk in self.stage2:
            x = blk(x)
        return self.head(x.flatten(3).mean(3).mean(0))

    # ---- BatchNorm calibration plan: every BN feeds the LIF of its own name ----

    def _context_modules(self) -> list[str]:
        return [f"stage2.{b}.ssa.{n}_lif" for b in range(self.cfg.stage2_depth) for n in "qk"]

    def _bn_targets(self) -> dict[str, tuple[str, Callable[[Tensor, dict], Tensor]]]:
        mods = dict(self.named_modules())
        targets = {}
        for name, m in mods.items():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm):
                continue
            parent, _, leaf = name.rpartition(".")
            stem = leaf[: -len("_bn")]
            pool_name = getattr(type(mods[parent]), "POOLS", {}).get(stem)
            pool = mods[f"{parent}.{pool_name}"] if pool_name else (lambda y: y)
            targets[name] = (f"{parent}.{stem}_lif",
                             lambda y, ctx, pool=pool: _steps(pool(y), self._calib_T))
        for b in range(self.cfg.stage2_depth):
            # v sets the rate of the attention LIF (its input is a product of three spike maps
            # scaled by 1/8: q, k, v at their own rates leave it silent on small token grids)
            a = f"stage2.{b}.ssa"
            ssa = mods[a]

            def attn_input(y, ctx, a=a, ssa=ssa):
                v = ssa.split_heads(ssa.v_lif(_steps(y, self._calib_T)))
                q, k = (ssa.split_heads(ctx[f"{a}.{n}_lif"][1]) for n in "qk")
                return ssa.current(q, k, v)
            targets[f"{a}.v_bn"] = (f"{a}.attn_lif", attn_input)
        return targets


# --------------------------------------------------------------------------------------------------
# Names, random weights, BatchNorm calibration
# --------------------------------------------------------------------------------------------------

Successor = SpikeDrivenTransformerRef | QKFormerRef


def _build(config: SDTConfig | QKFormerConfig) -> Successor:
    if isinstance(config, SDTConfig):
        return SpikeDrivenTransformerRef(config)
    if isinstance(config, QKFormerConfig):
        return QKFormerRef(config)
    raise TypeError(f"expected an SDTConfig or a QKFormerConfig, got {type(config).__name__}")


def successor_lif_names(model: Successor | SDTConfig | QKFormerConfig) -> list[str]:
    """Module names of every LIF that runs, in forward order: the keys of ``model(x,
    record=True)[1]``. SDT's ``rpe_lif`` and ``attn_lif`` never run and are not listed."""
    if isinstance(model, (SDTConfig, QKFormerConfig)):
        model = _build(model)
    return model.lif_names()


def dvs_like_frames(steps: int, batch: int = 1, channels: int = 2, size: int = 128,
                    seed: int = 0, blobs: int = 3) -> Tensor:
    """Synthetic DVS-like event counts ``[steps, batch, channels, size, size]`` (float32): a few
    Gaussian blobs per sample drift across the sensor, each polarity drawing Poisson counts from
    their rate map (peak ~1.5 events per pixel and step) over a faint background (0.01): a few
    percent of the pixels are active per step, in moving clusters, like a gesture recording."""
    g = torch.Generator().manual_seed(int(seed))
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                            torch.arange(size, dtype=torch.float64), indexing="ij")
    rate = torch.full((steps, batch, channels, size, size), 0.01, dtype=torch.float64)
    for b in range(batch):
        for c in range(channels):
            for _ in range(blobs):
                p0 = torch.rand(2, generator=g, dtype=torch.float64) * size
                vel = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * size / max(steps, 1)
                r = size * (0.04 + 0.06 * float(torch.rand(1, generator=g)))
                for t in range(steps):
                    cy, cx = p0 + vel * t
                    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
                    rate[t, b, c] += 1.5 * torch.exp(-d2 / (2 * r * r))
    return torch.poisson(rate, generator=g).float()


def _default_rate(lif: str) -> float:
    # q, k, v fire more so that the attention's own LIFs (no BatchNorm of their own) fire too
    return 0.2 if lif.rsplit(".", 1)[-1] in ("q_lif", "k_lif", "v_lif") else 0.1


@torch.no_grad()
def calibrate_successor_bn_(model: Successor, frames: Tensor,
                            target_rate: float | Callable[[str], float] = _default_rate,
                            tol: float = 2e-3, max_iter: int = 40) -> dict[str, float]:
    """Re-set every BatchNorm so that the LIF it drives fires at about ``target_rate`` on
    ``frames`` (the model's input; default rate 0.2 for q/k/v LIFs, 0.1 for every other one).

    One forward pass in forward order; a pre-hook on each BatchNorm sees its real input (all
    earlier layers already calibrated) and

    1. sets ``running_mean`` / ``running_var`` to the per-channel mean / (unbiased) variance of
       that input over steps, samples and positions: the BN output is ``gamma * z + beta`` with
       ``z`` standardised on these frames (gamma and beta as they were);
    2. adds one shift shared by all channels to ``beta``, found by bisection so that the LIF the
       BN drives fires at the target rate (fraction of neuron-steps) on this very input.

    "The LIF it drives": the LIF of its own name (``q_bn`` -> ``q_lif``), through the max-pool
    where one sits between; for QKFormer's ``ssa.v_bn`` the attention's ``attn_lif`` (through
    ``v_lif`` and the attention on this pass's q and k); for SDT's BatchNorms that feed the real
    residual stream instead, the LIF that reads the stream next: ``rpe_bn`` ->
    ``block.0.attn.shortcut_lif``, ``attn.proj_bn`` -> ``mlp.fc1_lif``, ``mlp.fc2_bn`` -> the
    next block's ``shortcut_lif`` or ``head_lif`` (on the token mean), each on the stream as it
    is there (BN output + identity). The LIFs without
    a BatchNorm (SDT's ``talking_heads_lif``, QKFormer's token ``attn_lif``) fire as their
    inputs make them. Returns every LIF's firing rate on ``frames`` after calibration."""
    model.eval()
    mods = dict(model.named_modules())
    targets = model._bn_targets()
    ctx: dict[str, list] = {}
    model._calib_T = int(frames.shape[0]) if frames.dim() == 5 else model.cfg.steps
    handles = []

    def capture(name):
        def pre(module, inputs):
            ctx[name] = [inputs[0], None]

        def post(module, inputs, output):
            ctx[name][1] = output
        return pre, post

    def calibrate(lif_name: str, to_input: Callable[[Tensor, dict], Tensor]):
        lif = mods[lif_name]
        target = float(target_rate(lif_name) if callable(target_rate) else target_rate)

        def hook(bn, inputs):
            (x,) = inputs
            dims = [d for d in range(x.dim()) if d != 1]
            bn.running_mean.copy_(x.mean(dim=dims))
            bn.running_var.copy_(x.var(dim=dims))
            beta0 = bn.bias.detach().clone()

            def rate(delta: float) -> float:
                bn.bias.copy_(beta0 + delta)
                z = to_input(bn.forward(x), ctx)
                return sum(int(s.sum()) for s in lif_steps(z, lif.tau, lif.theta)) / z.numel()

            lo, hi = -4.0, 4.0
            while rate(lo) > target and lo > -1e3:
                lo *= 2
            while rate(hi) < target and hi < 1e3:
                hi *= 2
            for _ in range(max_iter):
                mid = 0.5 * (lo + hi)
                r = rate(mid)
                if abs(r - target) <= tol:
                    break
                lo, hi = (mid, hi) if r < target else (lo, mid)
        return hook

    try:
        for name in model._context_modules():
            pre, post = capture(name)
            handles += [mods[name].register_forward_pre_hook(pre),
                        mods[name].register_forward_hook(post)]
        for bn_name, (lif_name, to_input) in targets.items():
            handles.append(mods[bn_name].register_forward_pre_hook(calibrate(lif_name, to_input)))
        model(frames)
    finally:
        for h in handles:
            h.remove()
        del model._calib_T
    _, spikes = model(frames, record=True)
    return {n: float(s.mean()) for n, s in spikes.items()}


def random_successor_state_dict(config: SDTConfig | QKFormerConfig, seed: int = 0,
                                frames: Tensor | None = None,
                                target_rate: float | Callable[[str], float] = _default_rate,
                                ) -> dict[str, Tensor]:
    """An official-layout state dict (float32) whose BatchNorms make every LIF fire.

    Convs and the Linear head are torch-initialised under ``torch.manual_seed(seed)``; every
    BatchNorm gets gamma ~ U(0.5, 1.5) and beta ~ U(-0.5, 0.5) per channel (seeded, so that
    channels differ), then :func:`calibrate_successor_bn_` on ``frames`` (default
    :func:`dvs_like_frames` of the config's steps, 2 samples, ``seed``) sets the running stats
    and one shared beta shift per BatchNorm: each LIF fed by a BatchNorm fires at about 10 %
    (q, k, v: 20 %) on those frames, except QKFormer's stage-2 ``v_lif``, whose BatchNorm is set
    so that the attention's ``attn_lif`` fires at 10 % (on a token grid too small for that, v
    fires everywhere and attn_lif as much as it can: the tests use 64x64 inputs). The other LIFs
    without a BatchNorm fire as their inputs make them: SDT's ``talking_heads_lif`` sees a column
    sum over all tokens and fires in most columns (~50 % without Erode, ~90 % with it, as Erode
    spreads K, V and KV over 3x3 windows); QKFormer's token ``attn_lif`` fires where a head's
    query has any spike (1 - 0.8**d of the tokens: ~80 % at the official d = 8)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _build(config)
    g = torch.Generator().manual_seed(int(seed) + 7919)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    if frames is None:
        frames = dvs_like_frames(config.steps, 2, config.in_channels, config.image_size, seed)
    calibrate_successor_bn_(model, frames, target_rate)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Official checkpoints
# --------------------------------------------------------------------------------------------------

_FAMILY_NAMES = {"sdt": "Spike-driven Transformer", "qkformer": "QKFormer"}


def _unwrap(sd: Mapping) -> Mapping[str, Tensor]:
    for wrapper in ("model", "state_dict"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            return sd[wrapper]
    return sd


def successor_family(sd: Mapping[str, Tensor]) -> str:
    """``"sdt"`` or ``"qkformer"``: which successor an official state dict's keys belong to.
    Raises CheckpointError (one sentence) for a Spikformer state dict or anything else."""
    sd = _unwrap(sd)
    keys = list(sd)
    if any(k.startswith(("patch_embed1.", "patch_embed2.", "stage1.", "stage2.")) for k in keys):
        return "qkformer"
    q = sd.get("block.0.attn.q_conv.weight")
    spikformer = ("pos_embed" in sd or any(re.match(r"block\.\d+\.norm[12]\.", k) for k in keys)
                  or (isinstance(q, Tensor) and q.dim() == 3))
    if spikformer:
        raise CheckpointError("this is a Spikformer state dict (pos_embed, LayerNorms or Conv1d "
                              "attention), not a Spike-driven Transformer or QKFormer one: load it "
                              "with eventformer.torch_model.load_official_checkpoint")
    if "patch_embed.rpe_conv.weight" in sd or any(".talking_heads." in k for k in keys):
        return "sdt"
    raise CheckpointError("the state dict is neither a Spike-driven Transformer (patch_embed.*, "
                          "block.*) nor a QKFormer (patch_embed1.*, stage1.*) one")


def load_official_successor(source: str | Path | Mapping, dtype: torch.dtype = torch.float32,
                            **overrides) -> Successor:
    """Load an official Spike-driven Transformer or QKFormer state dict (a path to a
    ``torch.save``d file, or the mapping; ``{'model': sd}`` and ``{'state_dict': sd}`` are
    unwrapped), telling the two apart by their keys. The layout is inferred from the shapes;
    ``overrides`` set what a state dict cannot show (SDT: ``image_size``, ``pooling_stat``,
    ``steps``, ``dvs``; QKFormer: ``heads``, ``image_size``, ``steps``, ``scale``). Loads with
    ``strict=True`` into a model in eval mode and ``dtype``. Raises CheckpointError (an
    EventformerError) in one sentence for a missing file, a Spikformer or unknown state dict,
    and missing, unknown or misshapen keys."""
    what = "the state dict"
    if isinstance(source, (str, Path)):
        what = str(source)
        try:
            source = torch.load(source, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{what} does not exist") from None
        except Exception as e:  # noqa: BLE001  (torch raises many kinds for a bad file)
            raise CheckpointError(f"{what} is not a readable torch checkpoint "
                                  f"({type(e).__name__})") from None
    if not isinstance(source, Mapping):
        raise CheckpointError(f"{what} holds a {type(source).__name__}, not a state dict")
    sd = dict(_unwrap(source))
    family = successor_family(sd)
    config_cls = SDTConfig if family == "sdt" else QKFormerConfig
    known = {f.name for f in fields(config_cls)}
    if set(overrides) - known:
        raise ValueError(f"unknown {config_cls.__name__} fields {sorted(set(overrides) - known)}")
    try:
        cfg = config_cls.from_state_dict(sd, **overrides)
    except ValueError as e:
        raise CheckpointError(f"{what} describes no valid {_FAMILY_NAMES[family]}: {e}") from None
    model = _build(cfg)
    _check_keys(model.state_dict(), sd, f"{what} ({_FAMILY_NAMES[family]})")
    model.load_state_dict(sd, strict=True)
    return model.to(dtype).eval()


def _check_keys(expected: Mapping[str, Tensor], sd: Mapping[str, Tensor], what: str) -> None:
    missing = [k for k in expected if k not in sd]
    unknown = [k for k in sd if k not in expected]
    if any(k.endswith("_lif.w") for k in unknown):
        raise CheckpointError(f"{what} has parametric LIFs (spike_mode 'plif', keys *_lif.w): "
                              "only the 'lif' models are supported")
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} key(s) of the official layout "
                         f"(first {missing[0]!r})")
        if unknown:
            parts.append(f"has {len(unknown)} unknown key(s) (first {unknown[0]!r})")
        raise CheckpointError(f"{what} " + " and ".join(parts))
    for k, t in expected.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{what}: {k!r} has shape {tuple(sd[k].shape)}, the layout its "
                                  f"other tensors imply needs {tuple(t.shape)}")

