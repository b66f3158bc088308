"""Random Spikformer weights with folded BatchNorm calibrated so every LIF fires at a set rate.

Until trained full-size weights exist, benchmarks need models whose activity is realistic: the
speed of an event-driven engine depends on how much fires. This does with the engine what
BatchNorm calibration does in PyTorch: layer by layer in forward order, the layer's raw synaptic
drive is recorded on real input (earlier layers already calibrated), normalised per channel to
zero mean and unit variance (the BatchNorm statistics), and a shared shift (the BatchNorm bias)
is found by bisection so that the layer's LIF, replayed on the recorded drive, fires at the
target rate. The attention LIF has no BatchNorm in front of it and fires as the model makes it.
"""

from __future__ import annotations

import copy

import numpy as np

from ..kernels import lif_params, lif_step
from ..kernels.counters import N_COUNTERS
from ..modelfile import LayerParams, ModelFile, layer_specs
from ..modelfile.build import BN_EPS, build_model_file
from ..modelfile.schema import block_specs
from ..models import Spikformer, SpikformerConfig


def random_model(config: SpikformerConfig, seed: int = 0) -> ModelFile:
    """PyTorch-default-like initialisation (uniform +-1/sqrt(fan_in)); BN left as identity.

    The tensors are made under the official checkpoint keys, in the shapes the configuration's
    model description gives the checkpoint (``LayerSpec.tensor_shape``: Conv1d k1, Conv2d k1 or
    Linear), and go through the model-file builder like any checkpoint: each synapse's random
    bias is its BatchNorm's shift, and the BatchNorm's scale is sqrt(1 + eps) so that its fold is
    exactly the identity. Each block's operator parameters (SPEC §4) take their initial values:
    DS2TA the DVS decays (tau 2, T_AW 3) and an NSAD table that is the identity above u_h = 2
    (a_h = 1, the other coefficients 0); SSA_Bin delta_h = 0 and vbar = 0 (a running mean's
    start); SAFormer a random depthwise conv like the others and L = 4; ssa, token_qk and sdsa
    have no tensors of their own.
    """
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}

    def bn(prefix, shift):
        n = shift.shape[0]
        tensors.update({f"{prefix}.weight": np.full(n, np.sqrt(1.0 + BN_EPS)),
                        f"{prefix}.bias": shift, f"{prefix}.running_mean": np.zeros(n),
                        f"{prefix}.running_var": np.ones(n)})

    blocks = iter(block_specs(config))
    for spec in layer_specs(config):
        if spec.kind == "lif":  # a LIF without a synapse (a membrane stream's): no tensors
            continue
        if spec.kind == "attention":  # the blocks' attention layers come in block order
            blk = next(blocks)
            a, op = blk.name, blk.operator
            heads, d, dim = blk.geometry.heads, blk.geometry.head_dim, blk.geometry.dim
            if op == "ds2ta":
                s = np.arange(d + 1)
                tensors[f"{a}.tau"] = np.full(4, 2, np.int64)
                tensors[f"{a}.nsad_table"] = np.tile(np.where(s > 2, s, 0), (heads, 1))
            elif op == "ssa_bin":
                tensors[f"{a}.delta"] = np.zeros(heads, np.int64)
                tensors[f"{a}.vbar"] = np.zeros(dim)
            elif op == "saformer":
                bound = 1.0 / 3.0  # fan_in of a depthwise 3x3 conv: 9
                tensors[f"{a}.dwc_conv.weight"] = rng.uniform(-bound, bound, (dim, 1, 3, 3))
                bn(f"{a}.dwc_bn", rng.uniform(-bound, bound, dim))
            continue
        fan_in = int(np.prod(spec.weight_shape[1:]))
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, spec.weight_shape)
        b = rng.uniform(-bound, bound, spec.bias_shape)
        # as the description's checkpoint layout holds it (Conv1d k1, Conv2d k1 or Linear)
        tensors[f"{spec.source}.weight"] = w.reshape(spec.tensor_shape)
        if not spec.bn:  # the head: its own bias
            tensors[f"{spec.source}.bias"] = b
            continue
        if spec.conv_has_bias:
            tensors[f"{spec.source}.bias"] = np.zeros(spec.bias_shape)
        bn(spec.bn, b)
    return build_model_file(config, tensors, source=f"random model (seed {seed})",
                            provenance={"source_checkpoint": f"random seed {seed}"})


def calibration_groups(config: SpikformerConfig) -> list[list[str]]:
    """Layers calibrated together: those whose input does not depend on each other (q, k, v)."""
    groups = []
    for spec in layer_specs(config):
        if spec.kind in ("attention", "head"):
            continue
        if spec.name.endswith((".k_lif", ".v_lif")):
            groups[-1].append(spec.name)
        else:
            groups.append([spec.name])
    return groups


def _replay_rate(drives: list[np.ndarray], shift: float, params: np.ndarray, hard: bool,
                 decay_input: bool) -> float:
    """Firing rate of a LIF population replayed on recorded drives [T, n] plus a shift."""
    counters = np.zeros(N_COUNTERS, np.int64)
    spikes = 0
    total = 0
    for d in drives:
        n = d.shape[1]
        v = np.zeros(n, d.dtype)
        out = np.empty(n, np.int32)
        for t in range(d.shape[0]):
            spikes += lif_step(v, d[t] + d.dtype.type(shift), params, hard, decay_input, out,
                               counters)
        total += d.shape[0] * n
    return spikes / max(total, 1)


def calibrate(model: ModelFile, samples: list, rate: float, *, max_neurons: int = 40000,
              seed: int = 0, progress=None) -> ModelFile:
    """A copy of ``model`` whose every BN-fed LIF fires at about ``rate`` on ``samples``.

    ``samples`` is a list of framed samples (lists of (idx, cnt) steps). Bisection replays the
    LIF on at most ``max_neurons`` randomly chosen neurons per layer (neurons are independent
    given their drive), which keeps calibration of a full-size model under a minute.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"firing rate must be in (0, 1), got {rate}")
    model = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    groups = calibration_groups(model.config)
    for gi, group in enumerate(groups):
        engine = Spikformer(model, dtype="float32")
        records: dict[str, list] = {name: [] for name in group}
        current_sample: dict[str, list] = {name: [] for name in group}
        by_name = {layer.name: layer for layer in engine.layers}

        def probe(layer, current, _store=current_sample):
            _store[layer.name].append(_drive(layer, current))

        for name in group:
            by_name[name].probe = probe
        for steps in samples:
            engine.run(steps)
            for name in group:
                records[name].append(np.stack(current_sample[name]))
                current_sample[name] = []
        for name in group:
            _fit_layer(model.layers[name], by_name[name], records[name], rate, rng, max_neurons)
        if progress is not None:
            progress(gi + 1, len(groups))
    model.provenance = dict(model.provenance, calibrated_rate=rate,
                            calibration_samples=len(samples))
    return model


def _drive(layer, current: np.ndarray) -> np.ndarray:
    """The raw synaptic drive W s of a step: the current without the layer's bias."""
    cout = layer.bias.shape[0]
    return (current.reshape(-1, cout) - layer.bias).reshape(-1).copy()


def _fit_layer(params: LayerParams, layer, drives: list[np.ndarray], rate: float, rng,
               max_neurons: int) -> None:
    cout = params.weight.shape[0]
    stacked = np.concatenate([d.reshape(-1, cout) for d in drives]).astype(np.float64)
    mean = stacked.mean(axis=0)
    std = stacked.std(axis=0)
    std[std < 1e-12] = 1.0
    n = drives[0].shape[1]
    pick = rng.choice(n, size=min(n, max_neurons), replace=False)
    chan = pick % cout
    norm = [((d[:, pick] - mean[chan]) / std[chan]).astype(np.float32) for d in drives]
    lp = lif_params(params.tau, params.theta, params.v_reset, np.float32)
    hard, decay = params.v_reset is not None, params.decay_input
    lo, hi = -8.0, 8.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if _replay_rate(norm, mid, lp, hard, decay) < rate:
            lo = mid
        else:
            hi = mid
    shift = 0.5 * (lo + hi)
    w = np.asarray(params.weight, np.float64)
    params.weight = (w / std.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    params.bias = (-mean / std + shift).astype(np.float32)
