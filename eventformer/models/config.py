"""Architecture configuration of a Spikformer-family model (SPEC §2).

Everything the papers leave open is a field here and is stored in the model file; no layer
hard-codes it. The defaults are the official Spikformer CIFAR10-DVS model with 11 classes.

What the network is made of is its model description (:mod:`.description`): ``layout``, or, when
that is None (every configuration written before descriptions existed), Spikformer's own layout
derived from the shorthand fields ``sps_channels``, ``sps_pool``, ``dim``, ``heads``, ``depth``,
``mlp_hidden``, ``scale`` and ``attention`` (:attr:`SpikformerConfig.description`). A configuration
with a ``layout`` leaves ``sps_channels`` and ``sps_pool`` empty, and its other shorthand fields
summarise the description (the last block stage's width, heads, MLP, scale and operator; the total
depth): :meth:`SpikformerConfig.described` fills them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .description import (Description, Placement, place, spikformer_description,
                          sps_suffix)

__all__ = ["ATTENTION_OPERATOR_NAMES", "MEMBRANE_OPERATORS", "SpikformerConfig", "lif_layer_names",
           "sps_suffix"]


@dataclass
class SpikformerConfig:
    in_channels: int = 2
    image_size: int = 128
    sps_channels: tuple[int, ...] = (32, 64, 128, 256)
    sps_pool: tuple[bool, ...] = (True, True, True, True)  # MaxPool k3 s2 p1 after each stage's LIF
    dim: int = 256
    heads: int = 16
    depth: int = 2
    mlp_hidden: int = 1024
    num_classes: int = 11
    steps: int = 16
    scale: float = 0.25  # official CIFAR10-DVS code; the paper says 0.125
    split_by: str = "number"
    clip_us: int | None = None  # frame only the first clip_us of a sample (as trained); None: all
    tau: float = 2.0
    theta: float = 1.0
    attn_theta: float = 0.5
    v_reset: float | None = 0.0  # None = soft reset (subtract theta)
    decay_input: bool = True
    attention: str = "ssa"
    class_names: tuple[str, ...] = field(default_factory=tuple)
    layout: Description | None = None  # None: Spikformer's layout from the fields above

    def __post_init__(self):
        if isinstance(self.layout, dict):
            self.layout = Description.from_dict(self.layout)

    @classmethod
    def described(cls, layout: Description, **fields_) -> "SpikformerConfig":
        """A configuration of ``layout`` whose shorthand fields summarise it (``fields_``: the
        others: input size, classes, steps, neurons, framing)."""
        last = layout.stages[-1]
        return cls(layout=layout, sps_channels=(), sps_pool=(), dim=last.dim, heads=last.heads,
                   depth=layout.depth, mlp_hidden=last.mlp_hidden, scale=last.scale,
                   attention=last.attention, **fields_)

    @property
    def description(self) -> Description:
        """What the network is made of: ``layout``, or Spikformer's layout from the shorthand."""
        if self.layout is not None:
            return self.layout
        return spikformer_description(
            sps_channels=self.sps_channels, sps_pool=self.sps_pool, dim=self.dim,
            heads=self.heads, depth=self.depth, mlp_hidden=self.mlp_hidden, scale=self.scale,
            attention=self.attention)

    def placement(self) -> Placement:
        """The description laid on this input (shapes and kinds of every map); ValueError with one
        sentence for an inconsistent description."""
        return place(self.description, self.in_channels, self.image_size,
                     ATTENTION_OPERATOR_NAMES)

    @property
    def grid(self) -> int:
        """Side of the token grid the head reads (after the SPS stages)."""
        if self.layout is not None:
            return self.placement().final.grid
        side = self.image_size
        for pooled in self.sps_pool:
            if pooled:
                side = (side + 2 * 1 - 3) // 2 + 1
        return side

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def validate(self) -> None:
        """Raise ValueError with one sentence for an inconsistent configuration."""
        if self.layout is not None:
            self._validate_described()
            return
        if len(self.sps_channels) == 0:
            raise ValueError("the model needs at least one SPS stage")
        if len(self.sps_pool) != len(self.sps_channels):
            raise ValueError(
                f"sps_pool has {len(self.sps_pool)} entries for {len(self.sps_channels)} SPS stages"
            )
        if self.sps_channels[-1] != self.dim:
            raise ValueError(
                f"the last SPS stage outputs {self.sps_channels[-1]} channels but dim is {self.dim}"
            )
        if self.heads <= 0 or self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by {self.heads} heads")
        self._validate_run()
        if self.attention not in ATTENTION_OPERATOR_NAMES:
            raise ValueError(f"unknown attention operator {self.attention!r} "
                             f"(known: {', '.join(ATTENTION_OPERATOR_NAMES)})")
        if self.grid <= 0:
            raise ValueError(f"image size {self.image_size} is too small for the SPS stages")

    def _validate_described(self) -> None:
        if self.sps_channels or self.sps_pool:
            raise ValueError("a configuration with a layout gives its tokenizer there, not in "
                             "sps_channels and sps_pool (leave them empty)")
        self._validate_run()
        self.placement()
        last = self.layout.stages[-1]
        summary = {"dim": last.dim, "heads": last.heads, "mlp_hidden": last.mlp_hidden,
                   "scale": last.scale, "attention": last.attention,
                   "depth": self.layout.depth}
        for key, want in summary.items():
            if getattr(self, key) != want:
                raise ValueError(f"{key} is {getattr(self, key)!r} but the layout says {want!r} "
                                 "(the shorthand fields summarise the layout)")

    def _validate_run(self) -> None:
        """The fields that are not the architecture's: steps, framing, classes."""
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.clip_us is not None and self.clip_us <= 0:
            raise ValueError(f"clip_us must be positive, got {self.clip_us}")
        if self.split_by not in ("number", "time"):
            raise ValueError(f"split_by must be 'number' or 'time', got {self.split_by!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.num_classes} classes"
            )

    def to_dict(self) -> dict:
        """Plain JSON types; ``layout`` only when there is one (a configuration of Spikformer's
        own layout reads as it always did)."""
        d = asdict(self)
        d.pop("layout")
        if self.layout is not None:
            d["layout"] = self.layout.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SpikformerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        for key in ("sps_channels", "class_names"):
            if key in d:
                d[key] = tuple(d[key])
        if "sps_pool" in d:
            d["sps_pool"] = tuple(bool(b) for b in d["sps_pool"])
        if d.get("layout") is not None:
            d["layout"] = Description.from_dict(d["layout"])
        return cls(**d)


#: Attention operators a model file can name (SPEC §4, and the successors' cores: QKFormer's
#: token QK attention ``token_qk``, the Spike-driven Transformer's SDSA ``sdsa``); the engine runs
#: those in ``layers.ATTENTION_OPERATORS``.
ATTENTION_OPERATOR_NAMES = ("ssa", "ds2ta", "ssa_bin", "saformer", "token_qk", "sdsa")
#: Operators without a V branch: SAFormer (SPEC §4) and QKFormer's token QK attention.
NO_V_BRANCH = ("saformer", "token_qk")
#: Operators whose blocks run on a membrane residual stream (a real-valued stream that each block
#: spikes first: the Spike-driven Transformer's); every other operator's blocks add spikes.
MEMBRANE_OPERATORS = ("sdsa",)


def lif_layer_names(config: SpikformerConfig) -> list[str]:
    """Every spiking layer's module name, in forward order (the checkpoint's own naming): the
    embedding stages that have a LIF, then per block its attention's LIFs (SAFormer has no V
    branch, SPEC §4) and its MLP's; a membrane-shortcut block (SDT) spikes the stream first and
    its attention LIF is ``talking_heads_lif``, its proj and MLP convs drive no LIF of their own."""
    desc = config.description
    names = []
    for stage in desc.stages:
        names += [st.lif for st in stage.embed if st.lif]
        if stage.attention in MEMBRANE_OPERATORS:
            fc1, fc2 = stage.mlp_layers
            for b in range(stage.count):
                a, m = stage.attention_name(b), stage.mlp_name(b)
                names += [f"{a}.{n}_lif" for n in ("shortcut", "q", "k", "v", "talking_heads")]
                names += [f"{m}.{fc1}_lif", f"{m}.{fc2}_lif"]
            continue
        branches = ("q", "k", "attn", "proj") if stage.attention in NO_V_BRANCH else \
            ("q", "k", "v", "attn", "proj")
        for b in range(stage.count):
            names += [f"{stage.attention_name(b)}.{n}_lif" for n in branches]
            names += [f"{stage.mlp_name(b)}.{n}_lif" for n in stage.mlp_layers]
    if desc.head_lif:
        names.append(desc.head_lif)
    return names
