"""What a Spikformer-family network is made of, as data: its model description.

A network is a sequence of **block stages**. Each block stage first runs its **embedding**, a
sequence of conv stages (the tokenizer, or a patch-merging step between stages of different width
and token count), then ``count`` transformer blocks of one width, one attention operator (by its
registry name) and one naming scheme. Saved maps let a stage read an earlier map than its
predecessor's output and add one to its own: Spikformer's ``x = x_feat + rpe``, QKFormer's strided
1x1 shortcut convs, the Spike-driven Transformer's real-valued ``x_feat`` shortcut.

An embedding stage (:class:`EmbedStage`) is ``conv -> BatchNorm -> [max-pool] -> LIF -> [max-pool]``
(the pool is k3 s2 p1, before the LIF on the real current, or after it on the spikes); without a
LIF it outputs its real-valued current. Its output may have a saved map added to it: spikes plus
spikes are integers, real plus real is real.

Everything here is plain, frozen and JSON-serialisable (:meth:`Description.to_dict`), stored in
the model file's configuration. :func:`place` lays a description on an input size and checks it:
every map's shape and kind, and one sentence (``ValueError``) for the first inconsistency. Today's
configurations (``sps_channels``, ``sps_pool``, ``depth``, ...) are one description among others:
:func:`spikformer_description` derives it.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields

#: What the first layer takes: event counts per (polarity, y, x), or real pixel values (static
#: images; the same input at every step: direct encoding).
INPUT_KINDS = ("events", "pixels")
#: Residual streams: "spikes" (Spikformer, QKFormer: x = x + spikes, an integer stream) or
#: "membrane" (Spike-driven Transformer: a real-valued stream that each block spikes first).
RESIDUAL_KINDS = ("spikes", "membrane")
#: Where an embedding stage max-pools (k3 s2 p1): not, on the real current before the LIF, or on
#: the spikes after it.
POOLS = ("none", "before", "after")
POOL = (3, 2, 1)  # MaxPool2d(kernel_size=3, stride=2, padding=1), the only pool of the family
#: How a checkpoint holds a token-wise linear layer's weight [out, in]: Conv1d k1 [out, in, 1],
#: Conv2d k1 [out, in, 1, 1] or nn.Linear [out, in] (its module then ends in ``_linear``).
KERNEL_LAYOUTS = ("conv1d", "conv2d", "linear")
#: The saved name under which an embedding's input is always available.
INPUT = "input"

# Plausibility bounds: a model file's description sizes buffers, so a damaged value is refused.
MAX_CHANNELS = 1 << 16
MAX_KERNEL = 15
MAX_STRIDE = 64
MAX_BLOCKS = 256
MAX_STAGES = 16
MAX_EMBED_STAGES = 32


@dataclass(frozen=True)
class EmbedStage:
    """One conv stage of an embedding, named as the checkpoint names its modules."""

    conv: str  # checkpoint prefix of the conv ("patch_embed.proj_conv1")
    bn: str  # checkpoint prefix of the BatchNorm folded into it; "" for none
    lif: str  # LIF module name; "" for none: the stage outputs its real-valued current
    channels: int  # output channels
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    bias: bool = False  # the conv itself has a bias (before folding)
    pool: str = "none"  # "none" | "before" (the current, before the LIF) | "after" (the spikes)
    input: str = ""  # "" the previous stage's output (the embedding's input for the first); else
    #                 a saved name ("input": the embedding's input)
    save: str = ""  # keep the output (after ``add``) under this name
    save_current: str = ""  # keep the real map that reaches the LIF (after a pool before it)
    add: str = ""  # add this saved map to the output

    @property
    def name(self) -> str:
        """The stage's layer name (model file group, report row): its LIF, else its conv."""
        return self.lif or self.conv


@dataclass(frozen=True)
class BlockStage:
    """``count`` transformer blocks of one width after their embedding stages."""

    count: int
    dim: int
    heads: int
    mlp_hidden: int
    attention: str = "ssa"  # the operator's registry name (SPEC §4)
    scale: float = 0.25
    embed: tuple[EmbedStage, ...] = ()
    prefix: str = "block"  # block i is "{prefix}.{i}"
    attn: str = "attn"  # its attention module: "{prefix}.{i}.{attn}"
    mlp: str = "mlp"
    mlp_layers: tuple[str, str] = ("fc1", "fc2")
    attn_kernel: str = "conv1d"  # checkpoint layout of q, k, v, proj (KERNEL_LAYOUTS)
    mlp_kernel: str = "conv1d"
    qkv_bias: bool = False  # q, k, v have a bias of their own (nn.Linear's default)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def block_name(self, i: int) -> str:
        return f"{self.prefix}.{i}"

    def attention_name(self, i: int) -> str:
        return f"{self.prefix}.{i}.{self.attn}"

    def mlp_name(self, i: int) -> str:
        return f"{self.prefix}.{i}.{self.mlp}"


@dataclass(frozen=True)
class Description:
    """A whole network: its block stages (each with its embedding), input, residual and head."""

    stages: tuple[BlockStage, ...]
    input: str = "events"  # INPUT_KINDS
    residual: str = "spikes"  # RESIDUAL_KINDS
    head_lif: str = ""  # a LIF on the token mean before the head's Linear (SDT); "" for none

    def to_dict(self) -> dict:
        """Plain JSON types (lists for tuples)."""
        def plain(obj):
            if isinstance(obj, (EmbedStage, BlockStage, Description)):
                return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
            if isinstance(obj, tuple):
                return [plain(x) for x in obj]
            return obj
        return plain(self)

    @classmethod
    def from_dict(cls, d) -> "Description":
        """The description of :meth:`to_dict`'s output; a wrong type, an unknown or missing
        field is a ``ValueError`` naming it (``layout.stages[1].embed[0].channels``)."""
        return _parse(cls, d, "layout")

    def blocks(self) -> list[tuple[BlockStage, int]]:
        """Every block in forward order, as (its stage, its index in the stage)."""
        return [(s, i) for s in self.stages for i in range(s.count)]

    @property
    def depth(self) -> int:
        return sum(s.count for s in self.stages)


# --- parsing from JSON, a field at a time ---------------------------------------------------

_NESTED = {"stages": BlockStage, "embed": EmbedStage}


def _parse(cls, d, where: str):
    if not isinstance(d, dict):
        raise ValueError(f"{where} is {_shown(d)}, expected an object")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where} has an unknown field {unknown[0]!r}")
    out = {}
    for name, f in known.items():
        what = f"{where}.{name}"
        if name not in d:
            if f.default is MISSING and f.default_factory is MISSING:  # required
                raise ValueError(f"{what} is missing")
            continue
        out[name] = _value(name, d[name], f.type, what)
    return cls(**out)


def _value(name: str, v, kind: str, what: str):
    if name in _NESTED:
        if not isinstance(v, list):
            raise ValueError(f"{what} is {_shown(v)}, expected a list")
        if len(v) > (MAX_STAGES if name == "stages" else MAX_EMBED_STAGES):
            raise ValueError(f"{what} has {len(v)} entries, too many")
        return tuple(_parse(_NESTED[name], x, f"{what}[{i}]") for i, x in enumerate(v))
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{what} is {_shown(v)}, expected an integer")
        return v
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{what} is {_shown(v)}, expected a finite number")
        return float(v)
    if kind == "bool":
        if not isinstance(v, bool):
            raise ValueError(f"{what} is {_shown(v)}, expected true or false")
        return v
    if kind == "str":
        if not isinstance(v, str):
            raise ValueError(f"{what} is {_shown(v)}, expected text")
        return v
    if kind == "tuple[str, str]":
        if not (isinstance(v, (list, tuple)) and len(v) == 2
                and all(isinstance(x, str) for x in v)):
            raise ValueError(f"{what} is {_shown(v)}, expected two names")
        return tuple(v)
    raise AssertionError(f"no parser for {what} ({kind})")


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# --- placing a description on an input ------------------------------------------------------

#: Kinds of maps: raw event counts (the network input), spikes, integers (sums of spikes and
#: integers), real values (pixels, currents).
EVENT_KINDS = ("counts", "spikes", "integers")


@dataclass(frozen=True)
class MapInfo:
    """One map flowing between stages: HWC shape, the kind of its values, and for spikes and
    integers the largest value one site can hold (the integer modes' overflow bound)."""

    h: int
    w: int
    c: int
    kind: str  # "counts" | "spikes" | "integers" | "real"
    bound: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.h, self.w, self.c)

    @property
    def events(self) -> bool:
        return self.kind in EVENT_KINDS


@dataclass(frozen=True)
class PlacedStage:
    """An embedding stage on its input: the map it reads, its conv output size, its output."""

    stage: EmbedStage
    source: MapInfo  # what the conv reads
    conv_h: int
    conv_w: int
    out: MapInfo  # after pool and add

    @property
    def cin(self) -> int:
        return self.source.c


@dataclass(frozen=True)
class BlockGeometry:
    """What one stage's blocks (and their attention operator) see: the fields of a
    configuration the operators read (``tokens``, ``dim``, ``heads``, ``scale``, ``grid``)."""

    grid: int
    dim: int
    heads: int
    scale: float
    attention: str
    mlp_hidden: int

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass(frozen=True)
class Placement:
    """A description laid on an input: per block stage its placed embedding stages, its
    geometry, and the bound of the residual stream entering its first block."""

    description: Description
    embeds: tuple[tuple[PlacedStage, ...], ...]
    geometry: tuple[BlockGeometry, ...]
    stream_bounds: tuple[int | None, ...]

    @property
    def final(self) -> BlockGeometry:
        return self.geometry[-1]


def conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def place(desc: Description, in_channels: int, image_size: int,
          known_operators: tuple[str, ...] | None = None) -> Placement:
    """Lay ``desc`` on an ``image_size`` square input of ``in_channels`` channels; every
    inconsistency is a ``ValueError`` of one sentence naming the stage at fault.

    ``known_operators``: the attention operators a model file may name (checked when given)."""
    if desc.input not in INPUT_KINDS:
        raise ValueError(f"the input is {desc.input!r}, expected one of {', '.join(INPUT_KINDS)}")
    if desc.residual not in RESIDUAL_KINDS:
        raise ValueError(f"the residual stream is {desc.residual!r}, expected one of "
                         f"{', '.join(RESIDUAL_KINDS)}")
    if not desc.stages:
        raise ValueError("the description has no block stage")
    x = MapInfo(image_size, image_size, in_channels,
                "counts" if desc.input == "events" else "real")
    names: dict[str, str] = {}  # layer or module name -> what uses it

    def claim(name: str, what: str):
        if not name:
            return
        if name in names:
            raise ValueError(f"{what} reuses the name {name!r} of {names[name]}")
        names[name] = what

    claim("head", "the head")
    claim(desc.head_lif, "the head's LIF")
    embeds, geometry, bounds = [], [], []
    for si, stage in enumerate(desc.stages):
        where = f"block stage {si} ({stage.prefix})"
        x, placed = _place_embedding(stage.embed, x, where, claim)
        if desc.residual == "spikes" and not x.events:
            raise ValueError(f"{where}: its embedding outputs real values, but blocks with a "
                             "residual stream of spikes take spikes or integers")
        if x.h != x.w:
            raise ValueError(f"{where}: its embedding outputs a {x.h}x{x.w} map, expected a "
                             "square token grid")
        _check_block_stage(stage, where, known_operators)
        if x.c != stage.dim:
            raise ValueError(f"{where}: its embedding outputs {x.c} channels but its blocks "
                             f"take dim {stage.dim}")
        for i in range(stage.count):
            claim(stage.block_name(i), f"{where}'s block {i}")
        if desc.residual == "spikes" and x.kind == "counts":
            raise ValueError(f"{where}: blocks cannot take the raw event counts; give it an "
                             "embedding stage")
        embeds.append(tuple(placed))
        geometry.append(BlockGeometry(x.h, stage.dim, stage.heads, stage.scale, stage.attention,
                                      stage.mlp_hidden))
        bounds.append(x.bound)
        if desc.residual == "spikes":  # each block's attention and MLP add one spike per site
            bound = None if x.bound is None else x.bound + 2 * stage.count
            x = MapInfo(x.h, x.w, x.c, "integers" if stage.count else x.kind, bound)
        else:
            x = MapInfo(x.h, x.w, x.c, "real")
    return Placement(desc, tuple(embeds), tuple(geometry), tuple(bounds))


def _check_block_stage(stage: BlockStage, where: str, known_operators) -> None:
    if not 0 <= stage.count <= MAX_BLOCKS:
        raise ValueError(f"{where} has {stage.count} blocks, expected 0 to {MAX_BLOCKS}")
    for key in ("dim", "heads", "mlp_hidden"):
        v = getattr(stage, key)
        if not 1 <= v <= MAX_CHANNELS:
            raise ValueError(f"{where}: {key} is {v}, expected 1 to {MAX_CHANNELS}")
    if stage.dim % stage.heads:
        raise ValueError(f"{where}: dim {stage.dim} is not divisible by {stage.heads} heads")
    if not (math.isfinite(stage.scale) and stage.scale > 0):
        raise ValueError(f"{where}: scale is {stage.scale}, expected more than 0")
    if known_operators is not None and stage.attention not in known_operators:
        raise ValueError(f"{where}: unknown attention operator {stage.attention!r} "
                         f"(known: {', '.join(known_operators)})")
    for key in ("attn_kernel", "mlp_kernel"):
        if getattr(stage, key) not in KERNEL_LAYOUTS:
            raise ValueError(f"{where}: {key} is {getattr(stage, key)!r}, expected one of "
                             f"{', '.join(KERNEL_LAYOUTS)}")
    for key in ("prefix", "attn", "mlp"):
        if not _module_name(getattr(stage, key)):
            raise ValueError(f"{where}: {key} {getattr(stage, key)!r} is not a module name")
    if not all(_module_name(n) for n in stage.mlp_layers) or \
            stage.mlp_layers[0] == stage.mlp_layers[1]:
        raise ValueError(f"{where}: mlp_layers {list(stage.mlp_layers)} are not two module "
                         "names")


def _module_name(name: str) -> bool:
    """A dotted module path of identifiers ("patch_embed.proj_conv1", "block")."""
    return bool(name) and all(p.isidentifier() or p.isdigit() for p in name.split("."))


def _place_embedding(stages, x: MapInfo, where: str, claim):
    """Walk one embedding's stages from its input ``x``: (its output, the placed stages)."""
    saved = {INPUT: x}
    placed = []
    for j, st in enumerate(stages):
        what = f"{where}, embedding stage {j} ({st.name or 'unnamed'})"
        if not _module_name(st.conv):
            raise ValueError(f"{what}: conv {st.conv!r} is not a module name")
        for key in ("bn", "lif"):
            if getattr(st, key) and not _module_name(getattr(st, key)):
                raise ValueError(f"{what}: {key} {getattr(st, key)!r} is not a module name")
        claim(st.conv, what)
        claim(st.bn, what)
        claim(st.lif, what)
        if st.pool not in POOLS:
            raise ValueError(f"{what}: pool is {st.pool!r}, expected one of {', '.join(POOLS)}")
        if st.pool == "after" and not st.lif:
            raise ValueError(f"{what}: pools after its LIF but has no LIF")
        if st.save_current and not st.lif:
            raise ValueError(f"{what}: keeps the current that reaches its LIF but has no LIF "
                             "(its output is that current)")
        if not 1 <= st.channels <= MAX_CHANNELS:
            raise ValueError(f"{what}: channels is {st.channels}, expected 1 to {MAX_CHANNELS}")
        if not 1 <= st.kernel <= MAX_KERNEL:
            raise ValueError(f"{what}: kernel is {st.kernel}, expected 1 to {MAX_KERNEL}")
        if not 1 <= st.stride <= MAX_STRIDE:
            raise ValueError(f"{what}: stride is {st.stride}, expected 1 to {MAX_STRIDE}")
        if not 0 <= st.padding < st.kernel:
            raise ValueError(f"{what}: padding is {st.padding}, expected 0 to {st.kernel - 1} "
                             f"for a kernel of {st.kernel}")
        if st.input and st.input not in saved:
            raise ValueError(f"{what}: reads {st.input!r}, which no earlier stage saves")
        source = saved[st.input] if st.input else x
        ch = conv_size(source.h, st.kernel, st.stride, st.padding)
        cw = conv_size(source.w, st.kernel, st.stride, st.padding)
        if ch < 1 or cw < 1:
            raise ValueError(f"{what}: a {st.kernel}x{st.kernel} conv does not fit its "
                             f"{source.h}x{source.w} input")
        h, w = ch, cw
        if st.pool != "none":
            k, s, p = POOL
            h, w = conv_size(h, k, s, p), conv_size(w, k, s, p)
        current = MapInfo(h, w, st.channels, "real")
        out = MapInfo(h, w, st.channels, "spikes", 1) if st.lif else current
        if st.add:
            if st.add not in saved:
                raise ValueError(f"{what}: adds {st.add!r}, which no earlier stage saves")
            other = saved[st.add]
            if other.shape != out.shape:
                raise ValueError(f"{what}: adds {st.add!r} of {_shape(other)} to its output of "
                                 f"{_shape(out)}")
            if other.kind == "counts":
                raise ValueError(f"{what}: adds the raw event counts {st.add!r}")
            if other.events != out.events:
                raise ValueError(f"{what}: adds {st.add!r} ({other.kind}) to its {out.kind} "
                                 "output; spikes add to spikes or integers, real values to "
                                 "real values")
            if out.events:
                out = MapInfo(h, w, st.channels, "integers", out.bound + other.bound)
        for key in ("save", "save_current"):
            name = getattr(st, key)
            if name and name in saved:
                raise ValueError(f"{what}: saves {name!r}, a name already taken")
            if name:
                saved[name] = current if key == "save_current" else out
        placed.append(PlacedStage(st, source, ch, cw, out))
        x = out
    return x, placed


def _shape(m: MapInfo) -> str:
    return f"{m.c}x{m.h}x{m.w}"


# --- the layouts of the released code -------------------------------------------------------

def sps_suffix(stage: int) -> str:
    """Spikformer's naming of SPS stages: proj_conv, proj_conv1, proj_conv2, ..."""
    return "" if stage == 0 else str(stage)


def spikformer_sps(channels, pools) -> tuple[EmbedStage, ...]:
    """Spikformer's SPS: per stage conv k3 -> BN -> LIF (-> max-pool after the LIF where
    ``pools`` says), the last stage's spikes saved as ``x_feat``; then RPE conv -> BN -> LIF with
    ``x = x_feat + rpe`` (an integer map, 0..2)."""
    out = []
    for i, (c, pooled) in enumerate(zip(channels, pools)):
        s = sps_suffix(i)
        out.append(EmbedStage(f"patch_embed.proj_conv{s}", f"patch_embed.proj_bn{s}",
                              f"patch_embed.proj_lif{s}", int(c),
                              pool="after" if pooled else "none",
                              save="x_feat" if i == len(channels) - 1 else ""))
    out.append(EmbedStage("patch_embed.rpe_conv", "patch_embed.rpe_bn", "patch_embed.rpe_lif",
                          int(channels[-1]), add="x_feat"))
    return tuple(out)


def spikformer_description(*, sps_channels, sps_pool, dim: int, heads: int, depth: int,
                           mlp_hidden: int, scale: float, attention: str = "ssa",
                           input: str = "events", attn_kernel: str = "conv1d",
                           mlp_kernel: str = "conv1d", qkv_bias: bool = False) -> Description:
    """Spikformer: the SPS tokenizer, then ``depth`` blocks ``block.{i}`` with SEW residuals of
    spikes. The defaults are the CIFAR10-DVS code's (events in, Conv1d k1 everywhere)."""
    return Description((BlockStage(depth, dim, heads, mlp_hidden, attention, scale,
                                   embed=spikformer_sps(sps_channels, sps_pool),
                                   attn_kernel=attn_kernel, mlp_kernel=mlp_kernel,
                                   qkv_bias=qkv_bias),),
                       input=input)


def sdt_sps(dim: int, pooling_stat: str = "1111") -> tuple[EmbedStage, ...]:
    """The Spike-driven Transformer's MS_SPS (``module/sps.py``): stages 0-2 conv -> BN -> LIF
    (-> max-pool where ``pooling_stat[i]`` is "1"); stage 3 conv -> BN (-> max-pool, BEFORE the
    LIF) whose real map is ``x_feat``, then ``proj_lif3``; RPE conv -> BN with no LIF, output
    ``rpe + x_feat``: real valued (the membrane-residual blocks spike it)."""
    if len(pooling_stat) != 4 or set(pooling_stat) - {"0", "1"}:
        raise ValueError(f"pooling_stat is {pooling_stat!r}, expected four of 0 and 1")
    widths = (dim // 8, dim // 4, dim // 2, dim)
    out = []
    for i in range(3):
        s = sps_suffix(i)
        out.append(EmbedStage(f"patch_embed.proj_conv{s}", f"patch_embed.proj_bn{s}",
                              f"patch_embed.proj_lif{s}", widths[i],
                              pool="after" if pooling_stat[i] == "1" else "none"))
    out.append(EmbedStage("patch_embed.proj_conv3", "patch_embed.proj_bn3",
                          "patch_embed.proj_lif3", dim,
                          pool="before" if pooling_stat[3] == "1" else "none",
                          save_current="x_feat"))
    out.append(EmbedStage("patch_embed.rpe_conv", "patch_embed.rpe_bn", "", dim, add="x_feat"))
    return tuple(out)


def qkformer_patch_embed_init(width: int, prefix: str = "patch_embed1") -> tuple[EmbedStage, ...]:
    """QKFormer's PatchEmbedInit (``dvs128-gesture/model.py``), output width ``width``: conv ->
    BN -> LIF; then three stages conv -> BN -> max-pool BEFORE the LIF -> LIF (the first one's
    spikes saved as ``x_feat``); a strided 1x1 shortcut conv (stride 4) from ``x_feat`` -> BN ->
    LIF, added: x = x + x_feat (integers 0..2)."""
    w = (width // 8, width // 4, width // 2, width)
    return (
        EmbedStage(f"{prefix}.proj_conv", f"{prefix}.proj_bn", f"{prefix}.proj_lif", w[0]),
        EmbedStage(f"{prefix}.proj1_conv", f"{prefix}.proj1_bn", f"{prefix}.proj1_lif", w[1],
                   pool="before", save="x_feat"),
        EmbedStage(f"{prefix}.proj2_conv", f"{prefix}.proj2_bn", f"{prefix}.proj2_lif", w[2],
                   pool="before"),
        EmbedStage(f"{prefix}.proj3_conv", f"{prefix}.proj3_bn", f"{prefix}.proj3_lif", w[3],
                   pool="before", save="x"),
        EmbedStage(f"{prefix}.proj_res_conv", f"{prefix}.proj_res_bn", f"{prefix}.proj_res_lif",
                   w[3], kernel=1, stride=4, padding=0, input="x_feat", add="x"),
    )


def qkformer_patch_embedding_stage(width: int, prefix: str = "patch_embed2"
                                   ) -> tuple[EmbedStage, ...]:
    """QKFormer's PatchEmbeddingStage (patch merging from width/2 to ``width``, half the grid):
    conv k3 -> BN -> LIF; conv k3 -> BN -> max-pool BEFORE the LIF -> LIF; a 1x1 stride-2
    shortcut conv from the stage input (the integer residual stream) -> BN -> LIF, added."""
    return (
        EmbedStage(f"{prefix}.proj_conv", f"{prefix}.proj_bn", f"{prefix}.proj_lif", width),
        EmbedStage(f"{prefix}.proj4_conv", f"{prefix}.proj4_bn", f"{prefix}.proj4_lif", width,
                   pool="before", save="x"),
        EmbedStage(f"{prefix}.proj_res_conv", f"{prefix}.proj_res_bn", f"{prefix}.proj_res_lif",
                   width, kernel=1, stride=2, padding=0, input=INPUT, add="x"),
    )
