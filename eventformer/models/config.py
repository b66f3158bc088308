"""Architecture configuration of a Spikformer-family model (SPEC §2).

Everything the papers leave open is a field here and is stored in the model file; no layer
hard-codes it. The defaults are the official Spikformer CIFAR10-DVS model with 11 classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


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

    @property
    def grid(self) -> int:
        """Side of the token grid after the SPS stages."""
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
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.clip_us is not None and self.clip_us <= 0:
            raise ValueError(f"clip_us must be positive, got {self.clip_us}")
        if self.split_by not in ("number", "time"):
            raise ValueError(f"split_by must be 'number' or 'time', got {self.split_by!r}")
        if self.attention not in ATTENTION_OPERATOR_NAMES:
            raise ValueError(f"unknown attention operator {self.attention!r} "
                             f"(known: {', '.join(ATTENTION_OPERATOR_NAMES)})")
        if self.grid <= 0:
            raise ValueError(f"image size {self.image_size} is too small for the SPS stages")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.num_classes} classes"
            )

    def to_dict(self) -> dict:
        return asdict(self)

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
        return cls(**d)


def sps_suffix(stage: int) -> str:
    """Official naming: proj_conv, proj_conv1, proj_conv2, ..."""
    return "" if stage == 0 else str(stage)


#: Attention operators a model file can name (SPEC §4); the engine runs those in
#: ``layers.ATTENTION_OPERATORS``.
ATTENTION_OPERATOR_NAMES = ("ssa", "ds2ta", "ssa_bin", "saformer")


def lif_layer_names(config: SpikformerConfig) -> list[str]:
    """Every spiking layer's module name, in forward order (the checkpoint's own naming)."""
    names = [f"patch_embed.proj_lif{sps_suffix(i)}" for i in range(len(config.sps_channels))]
    names.append("patch_embed.rpe_lif")
    for b in range(config.depth):
        branches = ("q", "k", "attn", "proj") if config.attention == "saformer" else \
            ("q", "k", "v", "attn", "proj")  # SAFormer has no V branch (SPEC §4)
        names += [f"block.{b}.attn.{n}_lif" for n in branches]
        names += [f"block.{b}.mlp.fc1_lif", f"block.{b}.mlp.fc2_lif"]
    return names
