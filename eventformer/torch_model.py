"""The plain-PyTorch Spikformer-DVS (SPEC §1 LIF, §2 architecture, §4 attention operators).

One of the three executors of the one architecture (DESIGN "One architecture, several executors"):
the tests' oracle, which the event-driven engine is compared against, and the bench's dense
baseline (:mod:`eventformer.bench.dense_torch`). It is written from SPEC.md, not from the engine,
and imports nothing of the engine (``eventformer.layers`` / ``kernels``): a model file reaches it
only through :func:`folded_reference`. That function (and :func:`reference_model` for a
configuration) is the one entry point for every network a model file holds: QKFormer's and the
Spike-driven Transformer's released layouts get their references from
:mod:`eventformer.torch_successors`, which keeps their modules (:func:`successor_config`).
Importing this module imports torch; the package imports it only where torch is wanted (export,
the bench baseline, the tests).

pass of the official Spikformer CIFAR10-DVS model (``cifar10dvs/model.py`` of the Spikformer
repository, SpikingJelly 0.0.0.0.14 ``MultiStepLIFNode(tau=2.0, detach_reset=True)``, torch backend)
without SpikingJelly, timm or torchvision, op for op, so that float32 results match the official
code bit for bit wherever the underlying torch kernels do.

Layout conventions (the same as the official code):

* activations are time-major: ``[T, B, ...]``; convolutions and BatchNorms run on ``[T*B, ...]``
  (time flattened into the batch), LIFs run on ``[T, B, ...]`` and loop over ``T``;
* tokens: after the SPS the ``[C, 8, 8]`` map is flattened to ``[C, N]`` with token
  ``n = 8 * row + col`` (``grid * row + col`` in general);
* heads: channel ``c = d * h + j`` belongs to head ``h`` (``d = dim // heads``), index ``j``.

Forward pass (names are the official module names, hence the checkpoint keys)::

    SPS   for each stage i (names proj_conv, proj_conv1, proj_conv2, ...):
              x = MaxPool(k3, s2, p1)(LIF(BN(Conv2d k3 p1, no bias)(x)))
          x_feat = x                                   # [T, B, D, g, g] spikes, g = size / 2**stages
          x = LIF(rpe_bn(rpe_conv(x_feat))) + x_feat   # values 0..2
          x = x.flatten(-2)                            # [T, B, D, N]
    Block x = x + SSA(x); x = x + MLP(x)               # integer-valued residual stream
    SSA   q, k, v = LIF(BN1d(Conv1d k1, no bias)(x))   # spikes, theta 1
          per head: y = ((q @ k^T) * scale) @ v        # [T, B, h, N, d], exact in float
          y = attn_lif(heads merged back)              # theta 0.5
          out = LIF(proj_bn(proj_conv(y)))             # Conv1d k1 with bias
    MLP   out = LIF(fc2_bn(fc2_conv(LIF(fc1_bn(fc1_conv(x))))))   # Conv1d k1 with bias, hidden 4 D
    head  logits = Linear(x.mean(over tokens).mean(over T))

The SPEC §4 variants replace the block's attention (``RefConfig.attention``; written from SPEC §4
alone, not from the engine's code), with modules and buffers named as the variants' checkpoint
keys, so that ``state_dict()`` is a checkpoint of the variant::

    ds2ta     q, k, v, proj: TASA on the synaptic input: c = conv(x) without its bias, attenuated
              a_t = sum_{m<taw} c_{t-m} 2^(-tau_l m), then + conv bias (proj), then BN -> LIF
              (buffer tau [4] int: q, k, v, proj); NSAD per head: A = AD_h[Q K^T] entry by entry
              (buffer nsad_table [heads, d+1] int), y = (A @ v) * scale -> attn_lif
    ssa_bin   per head B = 1(Q K^T > delta_h) (buffer delta [heads] int), y = (B @ v - vbar) *
              scale (buffer vbar [D], per channel c = d * h + j) -> attn_lif
    saformer  no v branch; a = sum_l AdaptiveAvgPool1d(L)(q) * AdaptiveAvgPool1d(L)(k) per step
              and channel, y = scale * (k * a) + dwc_bn(dwc_conv(k)) with dwc_conv a depthwise
              3x3 conv (padding 1, no bias) on the grid x grid tokens -> attn_lif

``taw`` (T_AW) and ``pool_rows`` (L) are configuration, as they are export options.

BatchNorms are evaluated as BatchNorms (not folded) in eval mode, as the official code does. The
``pos_embed``, ``block.{i}.norm{1,2}`` and ``norm`` tensors exist only so that official state dicts
load with ``strict=True``; they take no part in the forward pass.

Float32 caveat: convolution outputs depend on the kernel's accumulation order (oneDNN or not, ISA,
torch version). A neuron whose membrane lands within an ulp or so of threshold can then flip, and
one flip before the attention cascades into hundreds of spike differences downstream (the
attention map multiplies them). The golden outputs of ``spikformer-dvs-calibrated.pth`` are
therefore reproduced exactly only for some samples; see tests/test_torch_reference.py for the
measured agreement. ``conv_accumulation="float64"`` makes the reference machine independent
(every conv output correctly rounded to float32). Tests therefore hold float32 results to the
float64 reference only as closely as the reference's own float32 runs come to it
(``Float32Spread`` in tests/torch_reference.py), and check exactness in float64 (:func:`folded_reference`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "ATTENTIONS",
    "DS2TA",
    "LIF",
    "MLP",
    "SPS",
    "SSA",
    "Block",
    "Conv1d",
    "Conv2d",
    "RefConfig",
    "SAFormer",
    "SSABin",
    "SpikformerRef",
    "attention_of",
    "fold_bn",
    "folded_reference",
    "lif_multistep",
    "lif_names",
    "lif_steps",
    "load_official_checkpoint",
    "random_state_dict",
    "ref_config",
    "reference_model",
    "successor_config",
    "tasa",
]

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class RefConfig:
    """Every shape and constant of a Spikformer-DVS layout. Defaults = the official DVS model."""

    in_channels: int = 2
    image_size: int = 128
    sps_channels: tuple[int, ...] = (32, 64, 128, 256)  # one entry per SPS stage; last == dim
    dim: int = 256
    heads: int = 16
    depth: int = 2
    mlp_ratio: float = 4
    num_classes: int = 11
    scale: float = 0.25  # SSA scale: 0.25 in the official CIFAR10-DVS code, 0.125 in the paper
    tau: float = 2.0
    theta: float = 1.0  # every LIF except the attention LIF
    attn_theta: float = 0.5
    attention: str = "ssa"  # the attention operator (SPEC §4): ssa, ds2ta, ssa_bin, saformer
    taw: int = 3  # ds2ta: TASA window T_AW in steps (not in a checkpoint: an export option)
    pool_rows: int = 4  # saformer: rows L of the adaptive token pooling (an export option)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {self.attention!r} (known: {sorted(ATTENTIONS)})")
        self.taw, self.pool_rows = int(self.taw), int(self.pool_rows)
        if self.taw < 1 or self.pool_rows < 1:
            raise ValueError(f"taw and pool_rows must be >= 1, got {self.taw}, {self.pool_rows}")
        self.sps_channels = tuple(int(c) for c in self.sps_channels)
        if not self.sps_channels:
            raise ValueError("at least one SPS stage is required")
        if self.sps_channels[-1] != self.dim:
            raise ValueError(f"last SPS stage must output dim={self.dim}, got {self.sps_channels}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.image_size % (2**self.stages):
            raise ValueError(f"image size {self.image_size} is not divisible by 2**{self.stages}")
        if self.attention == "saformer" and self.num_tokens % self.pool_rows:
            raise ValueError(f"pool_rows {self.pool_rows} does not divide {self.num_tokens} tokens")

    @property
    def stages(self) -> int:
        return len(self.sps_channels)

    @property
    def grid(self) -> int:
        """Side of the token grid: image_size / 2**stages (8 for the official model)."""
        return self.image_size // 2**self.stages

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
    def from_state_dict(
        cls,
        sd: Mapping[str, Tensor],
        heads: int = 16,
        scale: float = 0.25,
        image_size: int | None = None,
        **overrides,
    ) -> RefConfig:
        """Infer the layout from tensor shapes. ``heads`` and ``scale`` are not visible in shapes.

        The image size follows from ``pos_embed`` ([1, N, D], N = (image_size / 2**stages)**2)
        unless ``image_size`` is given explicitly. The attention operator follows from the keys
        (:func:`attention_of`) unless given in ``overrides``, as do ``taw`` and ``pool_rows``
        (which no checkpoint holds).
        """
        sd = _unwrap(sd)
        stage_w = []
        for i in range(64):
            key = f"patch_embed.{_stage_name('proj_conv', i)}.weight"
            if key not in sd:
                break
            stage_w.append(sd[key])
        if not stage_w:
            raise KeyError("no patch_embed.proj_conv.weight in state dict")
        sps_channels = tuple(int(w.shape[0]) for w in stage_w)
        dim = int(sd["patch_embed.rpe_conv.weight"].shape[0])
        depth = 1 + max(
            (int(m.group(1)) for k in sd if (m := re.match(r"block\.(\d+)\.", k))), default=-1
        )
        if depth > 0:
            mlp_ratio = sd["block.0.mlp.fc1_conv.weight"].shape[0] / dim
            if mlp_ratio == int(mlp_ratio):
                mlp_ratio = int(mlp_ratio)
        else:
            mlp_ratio = 4
        if image_size is None:
            if "pos_embed" not in sd:
                raise ValueError("state dict has no pos_embed: pass image_size explicitly")
            n = int(sd["pos_embed"].shape[1])
            g = math.isqrt(n)
            if g * g != n:
                raise ValueError(f"pos_embed has {n} tokens, not a square grid")
            image_size = g * 2 ** len(sps_channels)
        kw = dict(  # noqa: C408
            in_channels=int(stage_w[0].shape[1]),
            image_size=int(image_size),
            sps_channels=sps_channels,
            dim=dim,
            heads=heads,
            depth=depth,
            mlp_ratio=mlp_ratio,
            num_classes=int(sd["head.weight"].shape[0]),
            scale=scale,
            attention=attention_of(sd),
        )
        kw.update(overrides)
        return cls(**kw)


def attention_of(sd: Mapping[str, Tensor]) -> str:
    """The attention operator a state dict's keys name (SPEC §4 "Checkpoints of the variants"):
    ``block.{i}.attn.nsad_table`` -> ds2ta, ``.delta`` -> ssa_bin, ``.dwc_conv.weight`` ->
    saformer, none of them -> ssa."""
    marks = {"ds2ta": ".attn.nsad_table", "ssa_bin": ".attn.delta", "saformer": ".attn.dwc_conv.weight"}
    found = {op for op, mark in marks.items() for k in _unwrap(sd) if k.endswith(mark)}
    if len(found) > 1:
        raise ValueError(f"state dict mixes attention operators: {sorted(found)}")
    return found.pop() if found else "ssa"


def _stage_name(prefix: str, i: int) -> str:
    """Official SPS naming: proj_conv, proj_conv1, proj_conv2, ..."""
    return prefix if i == 0 else f"{prefix}{i}"


def _unwrap(sd: Mapping) -> Mapping[str, Tensor]:
    if "model" in sd and isinstance(sd["model"], Mapping):
        return sd["model"]
    return sd


# --------------------------------------------------------------------------------------------------
# Neuron
# --------------------------------------------------------------------------------------------------


def lif_steps(x: Tensor, tau: float = 2.0, theta: float = 1.0) -> Iterator[Tensor]:
    """SpikingJelly 0.0.0.0.14 ``MultiStepLIFNode`` (decay_input=True, v_reset=0, hard reset), V0 = 0.

    ``x`` is ``[T, ...]``, the charging input of every step. Yields the spikes of each step as a bool
    tensor of shape ``x.shape[1:]``. Per step, in exactly this order of float operations (SPEC §1)::

        h = v + (x - v) / tau
        s = (h - theta >= 0)
        v = h * (1 - s)
    """
    v = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        s = h - theta >= 0
        v = h * (1.0 - s.to(x.dtype))
        yield s


def lif_multistep(x: Tensor, tau: float = 2.0, theta: float = 1.0) -> Tensor:
    """LIF over ``x [T, ...]`` (see :func:`lif_steps`): spikes (0./1.) of the same shape and dtype."""
    out = torch.empty_like(x)
    for t, s in enumerate(lif_steps(x, tau, theta)):
        out[t] = s
    return out


class LIF(nn.Module):
    """Parameter-free module wrapper of :func:`lif_multistep` (input and output ``[T, B, ...]``)."""

    def __init__(self, tau: float = 2.0, theta: float = 1.0):
        super().__init__()
        self.tau = tau
        self.theta = theta

    def forward(self, x: Tensor) -> Tensor:
        return lif_multistep(x, self.tau, self.theta)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, theta={self.theta}"


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class _AccumulatingConv:
    """Conv mixin: with ``accumulate_float64`` set, a float32 conv is computed in float64 and
    rounded once to float32 (a correctly rounded result, independent of the machine's kernel and
    its accumulation order). Off by default: plain torch, as the official code runs.

    With ``jitter_ulps = k > 0`` as well, every output element is then moved by a seeded random
    whole number of its own ulps in [-k, k]: a float32 result as legitimate as any other summation
    order's (torch's own float32 convs are off by ~10-30 ulps of the output on average on the
    official model), but one that is the same on every machine. Such runs measure how far float32
    rounding alone moves a chaotic spiking net (see :func:`float32_spread`)."""

    accumulate_float64 = False
    jitter_ulps = 0
    jitter_generator: torch.Generator | None = None

    def forward(self, x: Tensor, with_bias: bool = True) -> Tensor:
        """The conv; ``with_bias=False`` leaves the conv's bias out (TASA attenuates the synaptic
        part only and adds the bias afterwards, SPEC §4)."""
        b = self.bias if with_bias else None
        if self.accumulate_float64 and x.dtype != torch.float64:
            bias = None if b is None else b.double()
            y = self._conv_forward(x.double(), self.weight.double(), bias).to(x.dtype)
            if self.jitter_ulps:
                k = self.jitter_ulps
                steps = torch.randint(-k, k + 1, y.shape, generator=self.jitter_generator)
                mag = y.abs()
                ulp = torch.nextafter(mag, torch.full_like(mag, math.inf)) - mag
                y = y + steps.to(y.dtype) * ulp
            return y
        return self._conv_forward(x, self.weight, b)  # what nn.Conv{1,2}d.forward does


class Conv1d(_AccumulatingConv, nn.Conv1d):
    pass


class Conv2d(_AccumulatingConv, nn.Conv2d):
    pass



class SPS(nn.Module):
    """Spiking patch splitting: conv stages with LIF and max-pool, then the relative position conv."""

    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.stages = cfg.stages
        c_in = cfg.in_channels
        for i, c in enumerate(cfg.sps_channels):
            setattr(self, _stage_name("proj_conv", i), Conv2d(c_in, c, 3, 1, 1, bias=False))
            setattr(self, _stage_name("proj_bn", i), nn.BatchNorm2d(c))
            setattr(self, _stage_name("proj_lif", i), LIF(cfg.tau, cfg.theta))
            setattr(self, _stage_name("maxpool", i), nn.MaxPool2d(3, 2, 1))
            c_in = c
        self.rpe_conv = Conv2d(cfg.dim, cfg.dim, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(cfg.dim)
        self.rpe_lif = LIF(cfg.tau, cfg.theta)

    def forward(self, x: Tensor) -> Tensor:
        T, B = x.shape[:2]
        x = x.flatten(0, 1)  # [T*B, C, H, W]
        for i in range(self.stages):
            conv = getattr(self, _stage_name("proj_conv", i))
            bn = getattr(self, _stage_name("proj_bn", i))
            lif = getattr(self, _stage_name("proj_lif", i))
            pool = getattr(self, _stage_name("maxpool", i))
            x = bn(conv(x))
            x = lif(x.reshape(T, B, *x.shape[1:]).contiguous()).flatten(0, 1).contiguous()
            x = pool(x)
        x_feat = x.reshape(T, B, *x.shape[1:]).contiguous()
        x = self.rpe_bn(self.rpe_conv(x))
        x = self.rpe_lif(x.reshape(T, B, *x.shape[1:]).contiguous())
        x = x + x_feat
        return x.flatten(-2)  # [T, B, D, N], token n = grid * row + col


class SSA(nn.Module):
    """Spiking self-attention (official CIFAR10-DVS variant: Conv1d k1 projections).

    The base of the SPEC §4 variants too: ``branches`` are the spiking projections of the block's
    input (q, k, v), :meth:`_current` the synaptic input of a BN-fed LIF (overridden by DS2TA's
    TASA), :meth:`core` the attention proper (heads merged back, before ``attn_lif``)."""

    branches = ("q", "k", "v")

    def __init__(self, cfg: RefConfig):
        super().__init__()
        D = cfg.dim
        self.heads = cfg.heads
        self.scale = cfg.scale
        for n in self.branches:
            setattr(self, f"{n}_conv", Conv1d(D, D, 1, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm1d(D))
            setattr(self, f"{n}_lif", LIF(cfg.tau, cfg.theta))
        self.attn_lif = LIF(cfg.tau, cfg.attn_theta)
        self.proj_conv = Conv1d(D, D, 1, 1)
        self.proj_bn = nn.BatchNorm1d(D)
        self.proj_lif = LIF(cfg.tau, cfg.theta)

    def _current(self, n: str, x_flat: Tensor, T: int, B: int) -> Tensor:
        """The input of LIF ``n`` ([T*B, C, N]): BN(conv(x))."""
        return getattr(self, f"{n}_bn")(getattr(self, f"{n}_conv")(x_flat))

    def _spikes(self, n: str, x_flat: Tensor, T: int, B: int) -> Tensor:
        """LIF ``n`` on its current: spikes [T, B, C, N]."""
        y = self._current(n, x_flat, T, B)
        return getattr(self, f"{n}_lif")(y.reshape(T, B, *y.shape[1:]).contiguous())

    def _split_heads(self, y: Tensor) -> Tensor:
        """[T, B, C, N] -> [T, B, heads, N, d]; channel c = d * h + j."""
        T, B, C, N = y.shape
        return (
            y.transpose(-1, -2)
            .reshape(T, B, N, self.heads, C // self.heads)
            .permute(0, 1, 3, 2, 4)
            .contiguous()
        )

    @staticmethod
    def _merge_heads(y: Tensor) -> Tensor:
        """[T, B, heads, N, d] -> [T, B, C, N] (c = d * h + j)."""
        T, B, H, N, d = y.shape
        return y.transpose(3, 4).reshape(T, B, H * d, N).contiguous()

    def _qkv(self, x_flat: Tensor, n: str, T: int, B: int) -> Tensor:
        return self._split_heads(self._spikes(n, x_flat, T, B))

    def core(self, x_flat: Tensor, T: int, B: int) -> Tensor:
        """Y, the attention LIF's input [T, B, C, N], from the block input ``x_flat``."""
        q = self._qkv(x_flat, "q", T, B)
        k = self._qkv(x_flat, "k", T, B)
        v = self._qkv(x_flat, "v", T, B)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # [T, B, h, N, N]
        return self._merge_heads(attn @ v)  # [T, B, h, N, d] -> heads merged back

    def forward(self, x: Tensor) -> Tensor:
        T, B, C, N = x.shape
        x_flat = x.flatten(0, 1)
        x = self.attn_lif(self.core(x_flat, T, B))
        x = self._current("proj", x.flatten(0, 1), T, B).reshape(T, B, C, N)
        return self.proj_lif(x)


def tasa(c: Tensor, tau: int, taw: int) -> Tensor:
    """SPEC §4 TASA's attenuation over ``c [T, ...]``: out_t = sum_{m=0}^{taw-1} c_{t-m} *
    2^(-tau m) (c_{t-m} = 0 before the first step), summed in the order m = 0, 1, ..."""
    out = torch.empty_like(c)
    for t in range(c.shape[0]):
        acc = c[t]
        for m in range(1, taw):
            if t - m < 0:
                break
            acc = acc + c[t - m] * math.ldexp(1.0, -int(tau) * m)
        out[t] = acc
    return out


class DS2TA(SSA):
    """DS2TA (SPEC §4): TASA on the synaptic input of q, k, v and proj, NSAD on the count map.

    TASA, literally (BatchNorm acts on the attenuated sum): the conv output without its bias,
    attenuated over the last ``taw`` steps by 2^(-tau_l m), then the conv bias (proj has one; it
    is not attenuated), then BatchNorm (eval) -> LIF. After folding BN this is I_t = sum_m
    J_{t-m} 2^(-tau_l m) + b'. NSAD: per head, A = AD_h[Q K^T] entry by entry, Y = (A V) * scale.

    Buffers (checkpoint keys): ``tau`` [4] int (q, k, v, proj decay exponents), ``nsad_table``
    [heads, d + 1] int (AD_h[0] = 0)."""

    TASA_LAYERS = ("q", "k", "v", "proj")

    def __init__(self, cfg: RefConfig):
        super().__init__(cfg)
        self.taw = cfg.taw
        d = cfg.head_dim
        s = torch.arange(d + 1)
        # defaults: tau_l = 2 (DVS), u_h = 2 and AD_h[s] = s above it
        self.register_buffer("tau", torch.full((4,), 2, dtype=torch.int64))
        self.register_buffer("nsad_table", (s * (s > 2)).repeat(cfg.heads, 1).to(torch.int64))

    def _current(self, n: str, x_flat: Tensor, T: int, B: int) -> Tensor:
        conv, bn = getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn")
        c = conv(x_flat, with_bias=False)  # J: the synaptic part only
        c = tasa(c.reshape(T, B, *c.shape[1:]), int(self.tau[self.TASA_LAYERS.index(n)]),
                 self.taw).flatten(0, 1)
        if conv.bias is not None:
            c = c + conv.bias.reshape(-1, *([1] * (c.dim() - 2)))
        return bn(c)

    def core(self, x_flat: Tensor, T: int, B: int) -> Tensor:
        q = self._qkv(x_flat, "q", T, B)
        k = self._qkv(x_flat, "k", T, B)
        v = self._qkv(x_flat, "v", T, B)
        counts = (q @ k.transpose(-2, -1)).round().long()  # [T, B, h, N, N], 0..d
        heads = torch.arange(self.heads).reshape(-1, 1, 1)
        a = self.nsad_table.to(q.dtype)[heads, counts]  # A[i, j] = AD_h[(Q K^T)[i, j]]
        return self._merge_heads((a @ v) * self.scale)


class SSABin(SSA):
    """SSA_Bin (SPEC §4): per head B = 1((Q K^T) > delta_h) (kappa = 1), Y = (B V - vbar) *
    scale. Buffers (checkpoint keys): ``delta`` [heads] int, ``vbar`` [D] float."""

    def __init__(self, cfg: RefConfig):
        super().__init__(cfg)
        self.register_buffer("delta", torch.zeros(cfg.heads, dtype=torch.int64))
        self.register_buffer("vbar", torch.zeros(cfg.dim))

    def core(self, x_flat: Tensor, T: int, B: int) -> Tensor:
        q = self._qkv(x_flat, "q", T, B)
        k = self._qkv(x_flat, "k", T, B)
        v = self._qkv(x_flat, "v", T, B)
        counts = q @ k.transpose(-2, -1)  # [T, B, h, N, N]
        b = (counts > self.delta.to(q.dtype).reshape(-1, 1, 1)).to(q.dtype)  # strictly greater
        bv = self._merge_heads(b @ v)  # [T, B, C, N]
        return (bv - self.vbar.to(q.dtype).reshape(-1, 1)) * self.scale


class SAFormer(SSA):
    """SAFormer (SPEC §4): SASA + DWC, no V branch. Q, K spikes; Qa, Ka = AdaptiveAvgPool1d(L)
    over the tokens; a = sum_l Qa[l] * Ka[l] (per channel); Y = scale * (K * a) + BN(DWC(K)),
    DWC a depthwise 3x3 conv (padding 1, no bias) on the sqrt(N) x sqrt(N) token grid
    (token n = grid * row + col). Modules (checkpoint keys): ``dwc_conv`` (weight [D, 1, 3, 3]),
    ``dwc_bn``; no ``v_conv`` / ``v_bn`` / ``v_lif``."""

    branches = ("q", "k")

    def __init__(self, cfg: RefConfig):
        super().__init__(cfg)
        D = cfg.dim
        self.grid = cfg.grid
        self.pool = nn.AdaptiveAvgPool1d(cfg.pool_rows)
        self.dwc_conv = Conv2d(D, D, 3, 1, 1, groups=D, bias=False)
        self.dwc_bn = nn.BatchNorm2d(D)
        self._sasa: Tensor | None = None  # scale * (K * a) while dwc_bn runs (BN calibration)

    def core(self, x_flat: Tensor, T: int, B: int) -> Tensor:
        q = self._spikes("q", x_flat, T, B).flatten(0, 1)  # [T*B, C, N]
        k = self._spikes("k", x_flat, T, B).flatten(0, 1)
        TB, C, N = k.shape
        a = (self.pool(q) * self.pool(k)).sum(-1)  # [T*B, C]: sum over the L pooled rows
        sasa = self.scale * (k * a.unsqueeze(-1))
        g = self.grid
        self._sasa = sasa.reshape(TB, C, g, g)
        try:
            dwc = self.dwc_bn(self.dwc_conv(k.reshape(TB, C, g, g))).reshape(TB, C, N)
        finally:
            self._sasa = None
        return (sasa + dwc).reshape(T, B, C, N)


ATTENTIONS: dict[str, type[SSA]] = {"ssa": SSA, "ds2ta": DS2TA, "ssa_bin": SSABin,
                                    "saformer": SAFormer}


class MLP(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        D, Hd = cfg.dim, cfg.hidden
        self.fc1_conv = Conv1d(D, Hd, 1, 1)
        self.fc1_bn = nn.BatchNorm1d(Hd)
        self.fc1_lif = LIF(cfg.tau, cfg.theta)
        self.fc2_conv = Conv1d(Hd, D, 1, 1)
        self.fc2_bn = nn.BatchNorm1d(D)
        self.fc2_lif = LIF(cfg.tau, cfg.theta)

    def forward(self, x: Tensor) -> Tensor:
        T, B, C, N = x.shape
        x = self.fc1_bn(self.fc1_conv(x.flatten(0, 1)))
        x = self.fc1_lif(x.reshape(T, B, -1, N).contiguous())
        x = self.fc2_bn(self.fc2_conv(x.flatten(0, 1)))
        return self.fc2_lif(x.reshape(T, B, C, N).contiguous())


class Block(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)  # unused (exists in the official checkpoint)
        self.attn = ATTENTIONS[cfg.attention](cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)  # unused
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return x


class SpikformerRef(nn.Module):
    """Spikformer-DVS. ``forward(frames [T, B, C, H, W]) -> logits [B, classes]``.

    ``forward(frames, record=True)`` returns ``(logits, spikes)`` where ``spikes`` maps every LIF's
    module name (``patch_embed.proj_lif``, ..., ``block.0.attn.attn_lif``, ...) to its output
    ``[T, B, ...]`` in the layout of the torch code: ``[T, B, C, H, W]`` for SPS stages (before the
    max-pool), ``[T, B, D, g, g]`` for ``rpe_lif``, ``[T, B, C, N]`` for the blocks (heads merged,
    ``c = d * h + j``), including ``attn_lif`` (a saformer block has no ``v_lif``).

    ``conv_accumulation``: ``"native"`` (default) runs torch's float32 convolutions as the official
    code does (results depend on the kernel's accumulation order, see the module docstring);
    ``"float64"`` computes every float32 conv in float64 and rounds once (machine independent).
    """

    def __init__(self, cfg: RefConfig | None = None, conv_accumulation: str = "native"):
        super().__init__()
        cfg = cfg or RefConfig()
        self.cfg = cfg
        self._conv_accumulation = conv_accumulation
        self.patch_embed = SPS(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))  # unused
        self.block = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)  # unused
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.set_conv_accumulation(conv_accumulation)

    def set_conv_accumulation(self, mode: str, jitter_ulps: int = 0,
                              seed: int = 0) -> SpikformerRef:
        """``"native"`` (torch float32 convs) or ``"float64"`` (accumulate in float64, round once;
        with ``jitter_ulps`` > 0 then jittered by up to that many ulps, seeded by ``seed``: see
        :class:`_AccumulatingConv`). The jitter streams restart here."""
        if mode not in ("native", "float64"):
            raise ValueError(f"conv_accumulation must be 'native' or 'float64', got {mode!r}")
        if jitter_ulps and mode != "float64":
            raise ValueError("jitter_ulps needs conv_accumulation='float64'")
        self._conv_accumulation = mode
        convs = [m for m in self.modules() if isinstance(m, _AccumulatingConv)]
        for i, m in enumerate(convs):
            m.accumulate_float64 = mode == "float64"
            m.jitter_ulps = int(jitter_ulps)
            m.jitter_generator = torch.Generator().manual_seed(1009 * seed + i) if jitter_ulps else None
        return self

    def lif_names(self) -> list[str]:
        """Names of all LIF modules in forward order."""
        return [n for n, m in self.named_modules() if isinstance(m, LIF)]

    def forward(self, frames: Tensor, record: bool = False):
        if frames.dim() != 5:
            raise ValueError(f"frames must be [T, B, C, H, W], got {tuple(frames.shape)}")
        spikes: dict[str, Tensor] = {}
        handles = []
        if record:
            for name, m in self.named_modules():
                if isinstance(m, LIF):
                    handles.append(m.register_forward_hook(_recorder(spikes, name)))
        try:
            x = self.patch_embed(frames.to(self.head.weight.dtype))
            for blk in self.block:
                x = blk(x)
            x = x.mean(3)  # over tokens: [T, B, D]
            logits = self.head(x.mean(0))  # over steps, then Linear
        finally:
            for h in handles:
                h.remove()
        return (logits, spikes) if record else logits


def _recorder(store: dict, name: str):
    def hook(module, inputs, output):
        store[name] = output.detach()

    return hook


def lif_names(cfg: RefConfig) -> list[str]:
    """LIF module names of a configuration, in forward order (the golden file's keys)."""
    names = [f"patch_embed.{_stage_name('proj_lif', i)}" for i in range(cfg.stages)]
    names.append("patch_embed.rpe_lif")
    branches = ATTENTIONS[cfg.attention].branches
    for b in range(cfg.depth):
        names += [f"block.{b}.attn.{n}_lif" for n in (*branches, "attn", "proj")]
        names += [f"block.{b}.mlp.fc1_lif", f"block.{b}.mlp.fc2_lif"]
    return names


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def load_official_checkpoint(
    path: str | Path,
    heads: int = 16,
    scale: float = 0.25,
    image_size: int | None = None,
    conv_accumulation: str = "native",
) -> SpikformerRef:
    """Load an official-format checkpoint (``state_dict`` or ``{'model': state_dict}``), strict,
    in eval mode, float32."""
    sd = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    cfg = RefConfig.from_state_dict(sd, heads=heads, scale=scale, image_size=image_size)
    model = SpikformerRef(cfg, conv_accumulation=conv_accumulation)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def random_state_dict(config: RefConfig, seed: int = 0, init: str = "torch") -> dict[str, Tensor]:
    """State dict of a freshly built model under ``torch.manual_seed(seed)``.

    ``init="torch"``: torch default initialisation (kaiming-uniform conv/linear weights and biases,
    BN gamma 1, beta 0, running mean 0, var 1, LayerNorm 1/0, ``pos_embed`` zeros).
    ``init="official"``: then, as the official ``Spikformer.__init__`` does, ``pos_embed`` and every
    Linear weight ~ trunc_normal(std 0.02) (in that order), Linear biases 0. Same RNG stream as the
    official code: with seed 0 this reproduces every non-BatchNorm tensor of
    ``spikformer-dvs-calibrated.pth``.

    The SPEC §4 variants' own parameters are drawn from a separate generator (``seed``), per
    block: ds2ta ``tau`` in 1..2 and NSAD tables AD_h[s] = 1(s > u_h) round(a_h s + b_h s^2)
    (u_h in {0, 1}, a_h in [0.5, 1.5], b_h in [0, 0.15]: AD_h[0] = 0, non-decreasing); ssa_bin
    ``delta`` in 0..1 and ``vbar`` in [0.05, 0.5]; saformer's ``dwc_conv`` is torch-initialised
    like every conv (and ``dwc_bn`` the identity, as every BN).
    """
    if init not in ("torch", "official"):
        raise ValueError(f"init must be 'torch' or 'official', got {init!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SpikformerRef(config)
        if init == "official":
            with torch.no_grad():
                nn.init.trunc_normal_(model.pos_embed, std=0.02)
                for m in model.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.trunc_normal_(m.weight, std=0.02)
                        nn.init.zeros_(m.bias)
    _randomize_attention_(model, seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _randomize_attention_(model: SpikformerRef, seed: int) -> None:
    """Random valid SPEC §4 operator parameters (see :func:`random_state_dict`)."""
    g = torch.Generator().manual_seed(int(seed))

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    for blk in model.block:
        a = blk.attn
        if isinstance(a, DS2TA):
            a.tau.copy_(torch.randint(1, 3, (4,), generator=g))
            H, d1 = a.nsad_table.shape
            s = torch.arange(d1, dtype=torch.float64)
            u = torch.randint(0, 2, (H, 1), generator=g)
            f = uniform(0.5, 1.5, H, 1) * s + uniform(0.0, 0.15, H, 1) * s**2
            a.nsad_table.copy_(torch.round(f).long() * (s > u))
        elif isinstance(a, SSABin):
            a.delta.copy_(torch.randint(0, 2, a.delta.shape, generator=g))
            a.vbar.copy_(uniform(0.05, 0.5, *a.vbar.shape))


# --------------------------------------------------------------------------------------------------
# BatchNorm calibration
# --------------------------------------------------------------------------------------------------


def _bn_lif_pairs(model: SpikformerRef) -> list[tuple[str, nn.Module, LIF]]:
    """(lif name, BatchNorm, LIF) for every BatchNorm that feeds a LIF, in forward order."""
    mods = dict(model.named_modules())
    pairs = []
    for name in model.lif_names():
        parent, _, leaf = name.rpartition(".")
        bn_name = f"{parent}.{leaf.replace('_lif', '_bn')}"
        if bn_name in mods:  # attn_lif has no BatchNorm
            pairs.append((name, mods[bn_name], mods[name]))
    return pairs



# --------------------------------------------------------------------------------------------------
# BatchNorm folding (the independent fold the engine's exporter is checked against)
# --------------------------------------------------------------------------------------------------


def fold_bn(
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    bn_state: Mapping[str, Tensor] | nn.Module,
    eps: float = 1e-5,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the preceding conv: ``BN(conv(x)) == conv'(x)``.

    ``w' = w * g``, ``b' = (b - running_mean) * g + beta`` with ``g = gamma / sqrt(running_var + eps)``
    (per output channel, ``b = 0`` when the conv has no bias). Computed in float64, returned in
    ``dtype``. ``bn_state`` is a BatchNorm module or a mapping with keys ``weight``, ``bias``,
    ``running_mean``, ``running_var`` (extra keys such as ``num_batches_tracked`` are ignored).
    """
    if isinstance(bn_state, nn.Module):
        bn_state = bn_state.state_dict()
    w = conv_weight.detach().to(torch.float64)
    b = (
        torch.zeros(w.shape[0], dtype=torch.float64)
        if conv_bias is None
        else conv_bias.detach().to(torch.float64)
    )
    gamma = bn_state["weight"].detach().to(torch.float64)
    beta = bn_state["bias"].detach().to(torch.float64)
    mean = bn_state["running_mean"].detach().to(torch.float64)
    var = bn_state["running_var"].detach().to(torch.float64)
    g = gamma / torch.sqrt(var + eps)
    w_f = w * g.reshape(-1, *([1] * (w.dim() - 1)))
    b_f = (b - mean) * g + beta
    return w_f.to(dtype), b_f.to(dtype)



def ref_config(cfg, **options):
    """The reference configuration of an eventformer ``SpikformerConfig``: a :class:`RefConfig`
    for Spikformer (``options``: ``taw``, ``pool_rows``, which a model file keeps with the
    attention parameters), or for a description of the released QKFormer or Spike-driven
    Transformer layout its :mod:`~eventformer.torch_successors` configuration
    (:func:`successor_config`; ``options``: SDT's ``dvs``, the Erode flag a model file keeps
    with its sdsa blocks).

    Raises ValueError (one sentence) for a layout these models do not describe: SPEC §2 pools
    after every SPS stage and its LIF resets hard to 0 with a decaying input."""
    if getattr(cfg, "layout", None) is not None:
        from .modelfile.format import network_of

        if network_of(cfg) != "spikformer":
            return successor_config(cfg, **options)
    pools = tuple(getattr(cfg, "sps_pool", ()))
    if pools and not all(pools):
        raise ValueError(f"the torch model pools after every SPS stage, the config does not "
                         f"(sps_pool {list(pools)})")
    if getattr(cfg, "v_reset", 0.0) != 0.0 or not getattr(cfg, "decay_input", True):
        raise ValueError("the torch model's LIF resets hard to 0 with a decaying input (SPEC §1), "
                         f"the config has v_reset {cfg.v_reset} and decay_input {cfg.decay_input}")
    return RefConfig(in_channels=cfg.in_channels, image_size=cfg.image_size,
                     sps_channels=cfg.sps_channels, dim=cfg.dim, heads=cfg.heads,
                     depth=cfg.depth, mlp_ratio=cfg.mlp_hidden / cfg.dim,
                     num_classes=cfg.num_classes, scale=cfg.scale, tau=cfg.tau,
                     theta=cfg.theta, attn_theta=cfg.attn_theta,
                     attention=getattr(cfg, "attention", "ssa"), **options)


def folded_reference(source, dtype: torch.dtype = torch.float64, heads: int | None = None,
                     scale: float | None = None, **options) -> nn.Module:
    """The reference with BatchNorm folded exactly as a model file holds it: each conv carries the
    folded weight W' (float32 values) and its BatchNorm adds the folded bias b' and nothing else
    (gamma 1, mean 0, var 1, eps 0: ``(x - 0) / sqrt(1 + 0) * 1 + b' == x + b'`` exactly).

    Run in float64 this is what the engine computes in float64 up to summation order (the weights
    are the same float32 numbers, every product and sum is float64). ``source``: an eventformer
    ``ModelFile`` or the path of one (its layers' weights and attention parameters as they are), or a
    ``SpikformerRef`` or a state dict (with ``heads``, ``scale`` and the variant ``options``
    ``taw`` / ``pool_rows``; Spikformer's defaults 16 and 0.25), folded here with :func:`fold_bn`
    in float64 and rounded once to float32 as the exporter does.

    The one entry point for every network a model file may hold: a file of QKFormer's or the
    Spike-driven Transformer's released layout gives their reference
    (:class:`~eventformer.torch_successors.QKFormerRef`,
    :class:`~eventformer.torch_successors.SpikeDrivenTransformerRef`, configured by
    :func:`successor_config`, SDT's Erode from its sdsa blocks) holding the file's folded
    weights, each layer's conv and BatchNorm named by the description's checkpoint names; so
    does one of their state dicts (read by
    :func:`~eventformer.torch_successors.load_official_successor`: ``heads``, ``scale`` and
    ``options`` are its overrides) or references, folded here with :func:`fold_bn` too.

    The SPEC §4 operators' parameters come along: ds2ta ``tau`` and ``nsad_table`` (TASA still
    attenuates the conv's output and the BN adds b' once per step), ssa_bin ``delta`` and
    ``vbar`` (float32), saformer's depthwise conv folded with ``dwc_bn`` like every other BN."""
    if isinstance(source, (str, Path)):  # a model file on disk
        from .modelfile import load

        source = load(source)
    successor = _successor_source(source, heads, scale, options)
    if successor is not None:
        return successor.to(dtype).eval()
    heads = 16 if heads is None else heads
    scale = 0.25 if scale is None else scale
    if hasattr(source, "layers") and hasattr(source, "config"):  # an eventformer ModelFile
        blocks = [dict(a.params) for a in getattr(source, "attention", [])]
        if source.config.attention == "ds2ta":
            options.setdefault("taw", int(blocks[0]["taw"]))
        if source.config.attention == "saformer":
            options.setdefault("pool_rows", int(blocks[0]["pool_rows"]))
        cfg = ref_config(source.config, **options)
        folded = {name: (torch.from_numpy(p.weight), torch.from_numpy(p.bias))
                  for name, p in source.layers.items() if p.weight is not None}
        attn = [{k: torch.as_tensor(v) for k, v in p.items()} for p in blocks]
    else:
        base = source if isinstance(source, SpikformerRef) else None
        if base is None:
            sd = _unwrap(source)
            base = SpikformerRef(RefConfig.from_state_dict(sd, heads=heads, scale=scale, **options))
            base.load_state_dict(sd)
        cfg = base.cfg
        mods = dict(base.named_modules())
        folded = {}
        for name, bn, _ in _bn_lif_pairs(base):
            parent, _, leaf = name.rpartition(".")
            conv = mods[f"{parent}.{leaf.replace('_lif', '_conv')}"]
            folded[name] = fold_bn(conv.weight, conv.bias, bn, eps=bn.eps, dtype=torch.float32)
        folded["head"] = (base.head.weight.detach().float(), base.head.bias.detach().float())
        attn = []
        for blk in base.block:
            a, p = blk.attn, {}
            if isinstance(a, DS2TA):
                p = {"tau": a.tau.clone(), "nsad_table": a.nsad_table.clone()}
            elif isinstance(a, SSABin):
                p = {"delta": a.delta.clone(), "vbar": a.vbar.detach().float()}
            elif isinstance(a, SAFormer):
                w, b = fold_bn(a.dwc_conv.weight, None, a.dwc_bn, eps=a.dwc_bn.eps,
                               dtype=torch.float32)
                p = {"dwc_weight": w[:, 0], "dwc_bias": b}
            attn.append(p)
    ref = SpikformerRef(cfg)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for name, (w, b) in folded.items():
            if name == "head":
                ref.head.weight.copy_(w)
                ref.head.bias.copy_(b)
                continue
            parent, _, leaf = name.rpartition(".")
            conv = mods[f"{parent}.{leaf.replace('_lif', '_conv')}"]
            bn = mods[f"{parent}.{leaf.replace('_lif', '_bn')}"]
            _set_folded(conv, bn, w, b)
        for blk, p in zip(ref.block, attn, strict=True):
            a = blk.attn
            if isinstance(a, DS2TA):
                a.tau.copy_(p["tau"])
                a.nsad_table.copy_(p["nsad_table"])
            elif isinstance(a, SSABin):
                a.delta.copy_(p["delta"])
                a.vbar.copy_(p["vbar"])
            elif isinstance(a, SAFormer):
                _set_folded(a.dwc_conv, a.dwc_bn, p["dwc_weight"], p["dwc_bias"])
    return ref.to(dtype).eval()


# --------------------------------------------------------------------------------------------------
# The successors (QKFormer, the Spike-driven Transformer): their modules live in torch_successors
# --------------------------------------------------------------------------------------------------


def successor_config(cfg, **options):
    """The :mod:`~eventformer.torch_successors` configuration (``SDTConfig`` or
    ``QKFormerConfig``) of an eventformer configuration whose model description is the released
    Spike-driven Transformer or QKFormer layout (``models.presets.sdt_description``,
    ``qkformer_description``) at some sizes; ``options`` set the fields a description does not
    hold (SDT's ``dvs``: the Erode flag). Raises ValueError (one sentence) for any other
    description: the references compute the released layouts only."""
    from itertools import product

    from .modelfile.format import NETWORK_NAMES, network_of
    from .models.presets import qkformer_description, sdt_description
    from .torch_successors import QKFormerConfig, SDTConfig, _ratio

    network = network_of(cfg)
    desc = cfg.layout
    if network not in ("sdt", "qkformer") or desc is None:
        raise ValueError(f"the configuration lays out {NETWORK_NAMES[network]}, not QKFormer or "
                         "the Spike-driven Transformer")
    if cfg.v_reset != 0.0 or not cfg.decay_input:
        raise ValueError(f"the {NETWORK_NAMES[network]} reference's LIF resets hard to 0 with a "
                         f"decaying input, the config has v_reset {cfg.v_reset} and decay_input "
                         f"{cfg.decay_input}")
    common = {"in_channels": cfg.in_channels, "image_size": cfg.image_size, "steps": cfg.steps,
              "num_classes": cfg.num_classes, "tau": cfg.tau, "theta": cfg.theta,
              "attn_theta": cfg.attn_theta, **options}
    stages = desc.stages
    if network == "sdt" and len(stages) == 1:
        st = stages[0]
        for pooling in ("".join(bits) for bits in product("01", repeat=4)):
            if sdt_description(st.dim, st.heads, st.count, st.mlp_hidden,
                               pooling_stat=pooling) == desc:
                config = SDTConfig(dim=st.dim, heads=st.heads, depth=st.count,
                                   mlp_ratio=_ratio(st.mlp_hidden, st.dim),
                                   pooling_stat=pooling, **common)
                if config.hidden == st.mlp_hidden:
                    return config
    elif network == "qkformer" and len(stages) == 2:
        s1, s2 = stages
        # the code has one MLP ratio; a stage without blocks shows only the other's
        ratio = _ratio(s2.mlp_hidden, s2.dim) if s2.count or not s1.count else \
            _ratio(s1.mlp_hidden, s1.dim)
        config = QKFormerConfig(dim=s2.dim, heads=s2.heads, stage1_depth=s1.count,
                                stage2_depth=s2.count, mlp_ratio=ratio, scale=s2.scale, **common)
        if qkformer_description(config.dim, config.heads, config.stage1_depth,
                                config.stage2_depth, mlp_ratio=config.mlp_ratio,
                                scale=config.scale) == desc:
            return config
    raise ValueError(f"the model description is not the released {NETWORK_NAMES[network]} "
                     "layout (models.presets), the only one its plain-torch reference computes")


def reference_model(cfg, **options) -> nn.Module:
    """The plain-torch model of an eventformer configuration, torch-initialised: a
    :class:`SpikformerRef` for Spikformer, :mod:`~eventformer.torch_successors`'
    ``SpikeDrivenTransformerRef`` or ``QKFormerRef`` for theirs (``options``: :func:`ref_config`'s).
    Module names are the checkpoint's, so ``state_dict()`` loads a checkpoint of it."""
    return _reference_of(ref_config(cfg, **options))


def _reference_of(config) -> nn.Module:
    if isinstance(config, RefConfig):
        return SpikformerRef(config)
    from .torch_successors import QKFormerConfig, QKFormerRef, SDTConfig, SpikeDrivenTransformerRef

    if isinstance(config, SDTConfig):
        return SpikeDrivenTransformerRef(config)
    if isinstance(config, QKFormerConfig):
        return QKFormerRef(config)
    raise TypeError(f"no plain-torch model for a {type(config).__name__}")


def _successor_source(source, heads, scale, options) -> nn.Module | None:
    """:func:`folded_reference` of a QKFormer or Spike-driven Transformer model file, state dict
    or reference (float64, to be cast), or None for Spikformer's."""
    from .errors import CheckpointError
    from .torch_successors import load_official_successor, successor_family

    if hasattr(source, "layers") and hasattr(source, "config"):  # an eventformer ModelFile
        from .modelfile.format import network_of

        if network_of(source.config) == "spikformer":
            return None
        return _folded_successor_file(source, **options)
    if isinstance(source, SpikformerRef):
        return None
    if isinstance(source, nn.Module):  # a successor's reference
        return _folded_successor_module(source)
    try:
        successor_family(source)
    except CheckpointError:  # Spikformer's keys (or nobody's: Spikformer's path says so)
        return None
    overrides = {k: v for k, v in (("heads", heads), ("scale", scale)) if v is not None}
    return _folded_successor_module(load_official_successor(source, torch.float64,
                                                            **overrides, **options))


@torch.no_grad()
def _folded_successor_file(model, **options) -> nn.Module:
    """The successor reference of a model file, in float64, holding its folded weights."""
    erode = {int(a.params["erode"]) for a in model.attention if a.operator == "sdsa"}
    if len(erode) > 1:
        raise ValueError("the sdsa blocks disagree on Erode; the reference has one dvs flag")
    if erode:
        options.setdefault("dvs", bool(erode.pop()))
    from .modelfile import layer_specs

    ref = reference_model(model.config, **options).double()  # float64 weights stay as they are
    mods = dict(ref.named_modules())
    for spec in layer_specs(model.config):
        p = model.layers.get(spec.name)
        if p is None or p.weight is None:  # a LIF of a membrane stream, an attention core
            continue
        w, b = torch.from_numpy(p.weight), torch.from_numpy(p.bias)
        if spec.bn:
            _set_folded(mods[spec.source], mods[spec.bn], w, b)
        else:  # the head
            mods[spec.source].weight.copy_(w.reshape(mods[spec.source].weight.shape))
            mods[spec.source].bias.copy_(b)
    return ref


@torch.no_grad()
def _folded_successor_module(base: nn.Module) -> nn.Module:
    """A copy of a successor reference in float64 with every BatchNorm folded into the conv
    before it (``<name>_bn<i>`` follows ``<name>_conv<i>`` in both codes) by :func:`fold_bn`,
    rounded once to float32 as the exporter does; the Linear head rounded to float32 too."""
    ref = _reference_of(base.cfg).double()
    ref.load_state_dict(base.state_dict())
    mods, base_mods = dict(ref.named_modules()), dict(base.named_modules())
    for name, bn in base_mods.items():
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        parent, _, leaf = name.rpartition(".")
        before, _, after = leaf.rpartition("_bn")
        conv_name = f"{parent}.{before}_conv{after}"
        conv = base_mods[conv_name]
        w, b = fold_bn(conv.weight, conv.bias, bn, eps=bn.eps, dtype=torch.float32)
        _set_folded(mods[conv_name], mods[name], w, b)
    ref.head.weight.copy_(ref.head.weight.float())
    ref.head.bias.copy_(ref.head.bias.float())
    return ref


def _set_folded(conv: nn.Module, bn: nn.Module, w: Tensor, b: Tensor) -> None:
    """conv <- the folded weight (no bias), bn <- a pure shift by the folded bias."""
    conv.weight.copy_(w.reshape(conv.weight.shape))
    if conv.bias is not None:
        conv.bias.zero_()
    bn.weight.fill_(1.0)
    bn.bias.copy_(b)
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.eps = 0.0
