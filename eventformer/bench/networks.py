"""The networks ``eventformer bench`` times: Spikformer-DVS and its successors at full size.

``--model spikformer`` (the default) is the full-size Spikformer-DVS with one of the seed
attention operators (``--attention``), random weights calibrated by the engine
(:mod:`.calibrate`); its dense side is the package's plain-torch Spikformer run on the model file.

``--model qkformer`` and ``--model sdt`` are the successors in their released DVS Gesture
configurations (:func:`eventformer.models.presets.qkformer_gesture`, QKFormer's
``dvs128-gesture/model.py``; :func:`~eventformer.models.presets.sdt_gesture`, the Spike-driven
Transformer's ``conf/gesture/2_256_200E_t16.yml``, without Erode as its ``train.py`` runs it).
Their weights are an official-layout state_dict: torch-initialised, every BatchNorm then
calibrated on the bench's own inputs so that every LIF it drives fires at the requested rate
(:func:`eventformer.torch_successors.random_successor_state_dict`). The engine's model file is
built from that state_dict by the one model-file builder (:func:`~eventformer.modelfile.
build_model_file`, BatchNorm folded, as ``eventformer export`` does), and the dense side is the
plain-torch reference (:class:`~eventformer.torch_successors.QKFormerRef`,
:class:`~eventformer.torch_successors.SpikeDrivenTransformerRef`) loaded with the very same
state_dict: both sides compute the same network.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from ..errors import EventformerError
from ..modelfile import ModelFile, build_model_file, layer_specs
from ..models import Spikformer, SpikformerConfig
from ..models.presets import qkformer_gesture, sdt_gesture

#: ``--model``: the networks the bench times.
BENCH_MODELS = ("spikformer", "qkformer", "sdt")
SUCCESSORS = ("qkformer", "sdt")
TITLES = {"spikformer": "Spikformer-DVS", "qkformer": "QKFormer",
          "sdt": "Spike-driven Transformer"}


def full_size_reference(name: str, steps: int):
    """The released DVS Gesture configuration of a successor, as its torch reference takes it
    (:class:`~eventformer.torch_successors.QKFormerConfig` or ``SDTConfig``), at T ``steps``."""
    from ..torch_successors import QKFormerConfig, SDTConfig

    return (QKFormerConfig if name == "qkformer" else SDTConfig).gesture(steps=steps)


def engine_config(reference) -> SpikformerConfig:
    """The model-file configuration of a successor's torch configuration: the presets' layout
    (``qkformer_gesture`` / ``sdt_gesture``) at the reference's sizes and neuron constants."""
    from ..torch_successors import QKFormerConfig, SDTConfig

    common = {"image_size": reference.image_size, "in_channels": reference.in_channels,
              "num_classes": reference.num_classes, "steps": reference.steps,
              "tau": reference.tau, "theta": reference.theta,
              "attn_theta": reference.attn_theta}
    if isinstance(reference, QKFormerConfig):
        return qkformer_gesture(dim=reference.dim, heads=reference.heads,
                                stage1_depth=reference.stage1_depth,
                                stage2_depth=reference.stage2_depth,
                                mlp_ratio=reference.mlp_ratio, scale=reference.scale, **common)
    if isinstance(reference, SDTConfig):
        return sdt_gesture(dim=reference.dim, heads=reference.heads, depth=reference.depth,
                           mlp_ratio=reference.mlp_ratio, pooling_stat=reference.pooling_stat,
                           **common)
    raise TypeError(f"expected a QKFormerConfig or an SDTConfig, got {type(reference).__name__}")


@dataclass
class BenchNetwork:
    """What the bench times: the engine's configuration and, for a successor, the configuration
    of its torch reference (None for Spikformer-DVS, whose dense side comes from the file)."""

    name: str  # a BENCH_MODELS entry
    config: SpikformerConfig
    reference: object | None = None  # QKFormerConfig / SDTConfig

    @property
    def title(self) -> str:
        return TITLES[self.name]

    @property
    def operators(self) -> str:
        """The attention operators of its block stages, in order ("token_qk, ssa")."""
        return ", ".join(dict.fromkeys(s.attention for s in self.config.description.stages))

    def synapse_widths(self) -> list[int]:
        """Output widths of its synaptic layers but the head (the scatter rows' widths)."""
        return sorted({spec.weight_shape[0] for spec in layer_specs(self.config)
                       if spec.weight_shape is not None and spec.kind != "head"})

    def summary(self) -> str:
        """The network in a line: its input, widths, heads, blocks and operators."""
        cfg = self.config
        stages = cfg.description.stages
        size = f"{cfg.in_channels}x{cfg.image_size}x{cfg.image_size}"
        dims = " -> ".join(str(s.dim) for s in stages)
        heads = " / ".join(dict.fromkeys(str(s.heads) for s in stages))
        blocks = " + ".join(str(s.count) for s in stages)
        what = f"{size}, D {dims}, {heads} heads, {blocks} block(s), {self.operators} attention"
        if self.name == "sdt":
            what += " without Erode, as its train.py runs DVS Gesture"
        if self.name in SUCCESSORS:
            what = f"the DVS Gesture release: {what}"
        return f"{self.title} ({what})"

    def cache_key(self) -> dict:
        key = {"config": self.config.to_dict()}
        if self.reference is not None:
            key["reference"] = dataclasses.asdict(self.reference)
        return key


def reference_model(reference):
    """The torch reference of a successor's configuration (torch-initialised weights)."""
    from ..torch_successors import QKFormerConfig, QKFormerRef, SpikeDrivenTransformerRef

    if isinstance(reference, QKFormerConfig):
        return QKFormerRef(reference)
    return SpikeDrivenTransformerRef(reference)


@dataclass
class SuccessorWeights:
    """A successor's state_dict with the configuration of its torch reference: the dense side
    of the bench (:func:`.dense_torch.build_dense_model` runs it as the reference)."""

    reference: object  # QKFormerConfig / SDTConfig
    state_dict: dict  # name -> torch tensor (official keys)

    def torch_model(self, dtype):
        """The reference (eval mode, in the torch ``dtype``) holding these weights."""
        net = reference_model(self.reference)
        net.load_state_dict(self.state_dict, strict=True)
        return net.to(dtype).eval()

    def save(self, path: str) -> None:
        import torch

        torch.save(self.state_dict, path)

    @classmethod
    def load(cls, reference, path: str) -> SuccessorWeights:
        import torch

        return cls(reference, torch.load(path, map_location="cpu", weights_only=True))


def model_file(network: BenchNetwork, state_dict: dict, *, source: str,
               provenance: dict | None = None) -> ModelFile:
    """The engine's model file of a successor's state_dict, through the model-file builder (as
    ``eventformer export`` builds one from a released checkpoint)."""
    from ..torch_successors import SDTConfig

    tensors = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    erode = int(network.reference.dvs) if isinstance(network.reference, SDTConfig) else None
    return build_model_file(network.config, tensors, source=source, provenance=provenance,
                            erode=erode)


def calibrated_successor(network: BenchNetwork, frames: np.ndarray, rate: float,
                         seed: int) -> tuple[ModelFile, SuccessorWeights]:
    """A successor's random weights whose every BatchNorm-fed LIF fires at about ``rate`` on
    ``frames`` ([T, B, C, H, W] event counts: the bench's inputs, batched), as a model file
    and as the state_dict it was built from.

    :func:`~eventformer.torch_successors.random_successor_state_dict` with one target for every
    LIF (QKFormer's stage-2 ``v_bn`` is set by the rate of the attention's ``attn_lif``; the
    LIFs without a BatchNorm, SDT's ``talking_heads_lif`` and QKFormer's token ``attn_lif``,
    fire as their inputs make them)."""
    import torch

    from ..torch_successors import random_successor_state_dict

    state = random_successor_state_dict(network.reference, seed=seed,
                                        frames=torch.from_numpy(np.asarray(frames,
                                                                           np.float32)),
                                        target_rate=float(rate))
    model = model_file(network, state, source=f"random {network.title} (seed {seed})",
                       provenance={"source_checkpoint": f"random seed {seed}",
                                   "calibrated_rate": rate,
                                   "calibration_samples": int(frames.shape[1])})
    return model, SuccessorWeights(network.reference, state)


def untrained_model_file(network: BenchNetwork, seed: int = 0) -> ModelFile:
    """A model file of the network with untrained weights (nothing calibrated): enough to ask
    the engine whether it runs the network in an arithmetic."""
    if network.reference is None:
        from .calibrate import random_model

        return random_model(network.config, seed)
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = reference_model(network.reference).state_dict()
    return model_file(network, state, source=f"untrained {network.title}")


def arithmetic_refusal(network: BenchNetwork, dtype: str) -> str | None:
    """Why the engine does not run ``network`` in ``dtype`` (its one sentence), or None. Only the
    integer modes are asked about: every network runs in float32 and float64."""
    if not dtype.startswith("int"):
        return None
    try:
        Spikformer(untrained_model_file(network), dtype=dtype)
    except EventformerError as exc:
        return str(exc)
    return None


def cache_stem(network: BenchNetwork) -> str:
    """The start of a calibrated model's cache file name."""
    if network.name == "spikformer":
        return f"spikformer-dvs-{network.config.attention}"
    return f"{network.name}-gesture"


def weights_path(model_path: str) -> str:
    """Where the state_dict of a successor's cached model file lies (beside it)."""
    return os.path.splitext(model_path)[0] + ".pt"
