"""A whole Spikformer-family network in numpy, run from its model description (no autograd).

The network is the configuration's description (:attr:`SpikformerConfig.description`,
:mod:`eventformer.models.description`): per block stage its embedding (conv stages that read the
previous map or a saved one, save theirs, add one), then its blocks, then the head. The same
executor runs every layout the pairs of :mod:`eventformer.train.layers`,
:mod:`eventformer.train.attention` and :mod:`eventformer.train.successors` can differentiate:

* Spikformer (``config.layout`` None: SPS with the max-pool after each LIF, ``x = x_feat + rpe``,
  SEW blocks ``x = x + ATTN(x); x = x + MLP(x)``, head ``Linear(x.mean(tokens).mean(steps))``);
* the Spike-driven Transformer v1 (:func:`eventformer.models.presets.sdt_description`: MS_SPS
  whose last stage pools before its LIF and keeps the real current as ``x_feat``,
  ``x = rpe_bn(rpe_conv(...)) + x_feat`` real valued, membrane-shortcut blocks with SDSA, head
  ``mean_T head(head_lif(x.mean(tokens)))``);
* QKFormer (:func:`eventformer.models.presets.qkformer_description`: PatchEmbedInit with
  strided 1x1 shortcuts, token QK attention blocks, patch merging, Spikformer SSA blocks).

Block operators by registry name (:data:`BLOCK_OPERATORS`), for a residual stream of spikes:
``ssa``; ``ds2ta`` (TASA between the q/k/v/proj convs and their BatchNorms, NSAD on the count map,
trainable per-head f parameters ``nsad_a`` .. ``nsad_e`` that :func:`state_dict` turns into the
rounded ``nsad_table``); ``ssa_bin`` (binary map, buffer ``vbar``); ``saformer`` (no V branch,
SASA gate + depthwise conv ``dwc_conv`` -> ``dwc_bn``); ``token_qk`` (QKFormer: no V, per token
and head the q count spiked masks K, no attention LIF after it); and for a membrane stream
``sdsa`` (SDT's block; its Erode max-pools where ``erode`` is 1, off by default as the official
DVS Gesture models run). The operators' buffers and fixed settings (``tau``, ``taw``, ``nsad_u``,
``delta``, ``vbar``, ``pool_rows``, ``erode``, SDT's ``talking_heads.weight``, which the official
code saves but never runs) live in ``state``
(:func:`init_state`): they are carried, not trained.

Parameters live in a flat dict keyed exactly like the official checkpoint
(``patch_embed.proj_conv.weight``, ``block.0.attn.q_conv.weight``, ``stage1.0.tssa.q_conv.weight``,
..., ``head.weight``); BatchNorm running statistics in ``state`` (``<bn>.running_mean``,
``<bn>.running_var``, ``<bn>.num_batches_tracked``). ``state_dict(params, state)`` is the official
state dict (Spikformer's unused ``pos_embed`` / ``norm*`` tensors aside).

``forward(params, state, frames, training, config) -> (logits, cache)`` and
``backward(dlogits, cache) -> grads`` (same keys as ``params``). Training mode normalises with
batch statistics and updates ``state`` in place (``state=None``: no tracking); eval mode uses the
running statistics. The LIF gradient is the sigmoid surrogate (alpha 4), reset detached, BPTT.
``cache["spikes"]`` maps every LIF's module name to its output, in forward order.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import numpy as np

from ..models.config import SpikformerConfig
from ..models.description import INPUT, BlockStage, Placement, place
from ..models.presets import qkformer_description, sdt_description
from . import attention as A
from . import layers as L
from . import successors as S

__all__ = [
    "BLOCK_OPERATORS",
    "CONFIGS",
    "DEFAULT_POOL_ROWS",
    "DEFAULT_TAW",
    "MODEL_NAMES",
    "NSAD_U",
    "SUCCESSOR_CONFIGS",
    "attention_options",
    "backward",
    "bn_names",
    "config_by_name",
    "forward",
    "init_params",
    "init_state",
    "input_halvings",
    "loss_and_grads",
    "param_shapes",
    "state_dict",
    "with_config",
]

#: Named Spikformer training configurations (SpikformerConfig fields).
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"in_channels": 2, "image_size": 32, "sps_channels": (16, 32, 64),
             "sps_pool": (True,) * 3, "dim": 64, "heads": 4, "depth": 1, "mlp_hidden": 256,
             "num_classes": 11, "steps": 8},
    "small": {"in_channels": 2, "image_size": 64, "sps_channels": (32, 64, 128),
              "sps_pool": (True,) * 3, "dim": 128, "heads": 8, "depth": 2, "mlp_hidden": 512,
              "num_classes": 11, "steps": 8},
}

#: Named configurations of Spikformer's successors: (layout builder, its arguments, the
#: configuration's other fields). Widths follow the official ratios (SDT: stages D/8, D/4, D/2,
#: D; QKFormer: stage 1 at D/2 with a stem of D/16 .. D/2) at the shipped tiny models' size.
SUCCESSOR_CONFIGS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "sdt-tiny": ("sdt", {"dim": 64, "heads": 8, "depth": 1, "mlp_ratio": 4,
                         "pooling_stat": "0111"},
                 {"in_channels": 2, "image_size": 32, "num_classes": 11, "steps": 8}),
    "qkformer-tiny": ("qkformer", {"dim": 64, "heads": 4, "stage1_depth": 1, "stage2_depth": 1,
                                   "mlp_ratio": 4},
                      {"in_channels": 2, "image_size": 32, "num_classes": 11, "steps": 8}),
}

#: Every name ``--model`` takes, with what it is (the CLI's help).
MODEL_NAMES: dict[str, str] = {
    "tiny": "Spikformer, SPS 16-32-64, D 64, 4 heads, 1 block (the shipped models' size)",
    "small": "Spikformer, SPS 32-64-128, D 128, 8 heads, 2 blocks",
    "sdt-tiny": "Spike-driven Transformer v1: MS_SPS 8-16-32-64 (pooling 0111), D 64, 8 heads, "
                "1 membrane-shortcut SDSA block, head LIF",
    "qkformer-tiny": "QKFormer: stem 4-8-16-32 with stride-4 shortcut, 1 token-QK block at "
                     "width 32 (4x4 tokens), patch merging to 64 (2x2 tokens), 1 SSA block",
}

BN_MOMENTUM = S.BN_MOMENTUM
BN_EPS = S.BN_EPS
SURROGATE_ALPHA = S.SURROGATE_ALPHA
DEFAULT_TAW = 3  # DS2TA's window T_AW (SPEC §4, DVS)
DEFAULT_TASA_TAU = 2  # DS2TA's decay exponents of q, k, v, proj (SPEC §4, DVS)
NSAD_U = 2.0  # DS2TA's NSAD threshold u_h, fixed (SPEC §4, DVS)
DEFAULT_POOL_ROWS = 4  # SAFormer's L (SPEC §4)
SSA_BIN_MOMENTUM = 0.1

#: Block operators the trainer runs: the SPEC §4 ones and QKFormer's on a stream of spikes,
#: SDT's on a membrane stream.
SPIKE_OPERATORS = (*A.OPERATORS, "token_qk")
MEMBRANE_OPERATORS = ("sdsa",)
BLOCK_OPERATORS = SPIKE_OPERATORS + MEMBRANE_OPERATORS

_POOLS = {"none": None, "before": "bn", "after": "spikes"}  # description -> conv_bn_lif's


# --------------------------------------------------------------------------------------------------
# Layouts and named configurations
# --------------------------------------------------------------------------------------------------


#: each family's description, as every executor reads it (:mod:`eventformer.models.presets`)
_LAYOUTS = {"sdt": sdt_description, "qkformer": qkformer_description}


def config_by_name(name: str, **overrides) -> SpikformerConfig:
    """A named configuration (:data:`MODEL_NAMES`) as a validated :class:`SpikformerConfig`.

    ``overrides``: configuration fields (``image_size``, ``steps``, ``num_classes``, ...); for a
    successor also its layout's arguments (SDT: ``dim``, ``heads``, ``depth``, ``mlp_ratio``,
    ``pooling_stat``; QKFormer: ``dim``, ``heads``, ``stage1_depth``, ``stage2_depth``,
    ``mlp_ratio``, ``scale``). A successor's ``attention`` is its layout's: naming another is a
    ValueError."""
    if name in CONFIGS:
        kw = dict(CONFIGS[name])
        kw.update(overrides)
        cfg = SpikformerConfig(**kw)
    elif name in SUCCESSOR_CONFIGS:
        family, layout_kw, fields_ = SUCCESSOR_CONFIGS[name]
        layout_kw, fields_ = dict(layout_kw), dict(fields_)
        attention = overrides.pop("attention", None)
        arguments = inspect.signature(_LAYOUTS[family]).parameters
        for k, v in overrides.items():
            (layout_kw if k in arguments else fields_)[k] = v
        cfg = SpikformerConfig.described(_LAYOUTS[family](**layout_kw), **fields_)
        if attention is not None and attention != cfg.attention:
            raise ValueError(f"{name}'s attention is its layout's ({_operators(cfg)}), not "
                             f"{attention}")
    else:
        raise ValueError(f"unknown model configuration {name!r}; known: "
                         f"{', '.join(MODEL_NAMES)}")
    _check_config(cfg)
    return cfg


def _operators(cfg: SpikformerConfig) -> str:
    return " then ".join(dict.fromkeys(s.attention for s in cfg.description.stages))


def input_halvings(name: str) -> int:
    """How many times a named model halves its input side (pools, strided merges): the input
    must be a multiple of 2 to that power."""
    cfg = config_by_name(name, image_size=128)
    return round(math.log2(cfg.image_size / _placement(cfg).final.grid))


def with_config(cfg: SpikformerConfig, **changes) -> SpikformerConfig:
    """A copy of ``cfg`` with some fields replaced (validated)."""
    out = dataclasses.replace(cfg, **changes)
    _check_config(out)
    return out


def _placement(cfg: SpikformerConfig) -> Placement:
    """The description on this input, checked against the trainer's operators (not the
    engine's: the trainer may run an operator before the engine does)."""
    return place(cfg.description, cfg.in_channels, cfg.image_size, BLOCK_OPERATORS)


def _check_config(cfg: SpikformerConfig) -> None:
    """A configuration the trainer can run, or one ValueError sentence saying why not."""
    if cfg.layout is None:
        cfg.validate()
    else:  # the engine's validate() knows only the engine's operators
        _placement(cfg)
        last = cfg.layout.stages[-1]
        for key, want in (("dim", last.dim), ("heads", last.heads), ("attention", last.attention),
                          ("depth", cfg.layout.depth), ("mlp_hidden", last.mlp_hidden)):
            if getattr(cfg, key) != want:
                raise ValueError(f"{key} is {getattr(cfg, key)!r} but the layout says {want!r}")
        if cfg.steps <= 0:
            raise ValueError(f"steps must be positive, got {cfg.steps}")
        if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
            raise ValueError(f"{len(cfg.class_names)} class names for {cfg.num_classes} classes")
    desc = cfg.description
    if desc.input != "events":
        raise ValueError("the numpy trainer takes event counts, not pixel images")
    for stage in desc.stages:
        where = f"block stage {stage.prefix}"
        if stage.attention not in BLOCK_OPERATORS:
            raise ValueError(f"the numpy trainer has no {stage.attention!r} attention")
        if (stage.attention in MEMBRANE_OPERATORS) != (desc.residual == "membrane"):
            raise ValueError(f"{where}: the {stage.attention} operator does not run on a "
                             f"residual stream of {desc.residual}")
        if "linear" in (stage.attn_kernel, stage.mlp_kernel):
            raise ValueError(f"{where}: the numpy trainer has no nn.Linear blocks "
                             "(Conv1d or Conv2d k1 only)")
        if stage.attention == "sdsa" and (stage.attn, stage.mlp, stage.mlp_layers) != \
                ("attn", "mlp", ("fc1", "fc2")):
            raise ValueError(f"{where}: SDT blocks are named attn and mlp (fc1, fc2)")
        for st in stage.embed:
            if not st.bn:
                raise ValueError(f"{st.name}: the numpy trainer needs a BatchNorm after each conv")
    if desc.head_lif and desc.head_lif != "head_lif":
        raise ValueError(f"the head's LIF is named head_lif, not {desc.head_lif!r}")


# --------------------------------------------------------------------------------------------------
# Parameters and state
# --------------------------------------------------------------------------------------------------


def _kernel(layout: str, out: int, cin: int) -> tuple[int, ...]:
    """A token-wise weight as the checkpoint holds it (KERNEL_LAYOUTS)."""
    return (out, cin, 1) if layout == "conv1d" else (out, cin, 1, 1)


def _branches(op: str) -> tuple[str, ...]:
    """The spiking projections of the block input: SAFormer and QKFormer's token attention
    have no V branch."""
    return ("q", "k") if op in ("saformer", "token_qk") else ("q", "k", "v")


def _conv_specs(cfg: SpikformerConfig) -> list[tuple[str, tuple[int, ...], bool, str]]:
    """(conv prefix, weight shape, has bias, BN prefix) for every conv, in forward order."""
    out = []
    placement = _placement(cfg)
    for stage, placed in zip(cfg.description.stages, placement.embeds):
        for p in placed:
            st = p.stage
            out.append((st.conv, (st.channels, p.cin, st.kernel, st.kernel), st.bias, st.bn))
        D, Hd = stage.dim, stage.mlp_hidden
        for i in range(stage.count):
            a, m = stage.attention_name(i), stage.mlp_name(i)
            attn = lambda o, c: _kernel(stage.attn_kernel, o, c)  # noqa: E731
            mlp = lambda o, c: _kernel(stage.mlp_kernel, o, c)  # noqa: E731
            for n in _branches(stage.attention):
                out.append((f"{a}.{n}_conv", attn(D, D), stage.qkv_bias, f"{a}.{n}_bn"))
            if stage.attention == "saformer":
                out.append((f"{a}.dwc_conv", (D, 1, 3, 3), False, f"{a}.dwc_bn"))
            out.append((f"{a}.proj_conv", attn(D, D), True, f"{a}.proj_bn"))
            f1, f2 = stage.mlp_layers
            out.append((f"{m}.{f1}_conv", mlp(Hd, D), True, f"{m}.{f1}_bn"))
            out.append((f"{m}.{f2}_conv", mlp(D, Hd), True, f"{m}.{f2}_bn"))
    return out


def bn_names(cfg: SpikformerConfig) -> list[str]:
    """Every BatchNorm prefix, in forward order."""
    return [bn for _, _, _, bn in _conv_specs(cfg)]


def param_shapes(cfg: SpikformerConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every trainable parameter (official checkpoint keys)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for conv, wshape, has_bias, bn in _conv_specs(cfg):
        shapes[f"{conv}.weight"] = wshape
        if has_bias:
            shapes[f"{conv}.bias"] = (wshape[0],)
        shapes[f"{bn}.weight"] = (wshape[0],)
        shapes[f"{bn}.bias"] = (wshape[0],)
    for stage in cfg.description.stages:
        if stage.attention == "ds2ta":
            for i in range(stage.count):
                for k in A.NSAD_KEYS:
                    shapes[f"{stage.attention_name(i)}.{k}"] = (stage.heads,)
    dim = cfg.description.stages[-1].dim
    shapes["head.weight"] = (cfg.num_classes, dim)
    shapes["head.bias"] = (cfg.num_classes,)
    return shapes


def init_params(cfg: SpikformerConfig, seed: int = 0, dtype=np.float32,
                head_init: str = "torch") -> dict[str, np.ndarray]:
    """PyTorch-default initialisation from a numpy seed: conv/linear weights and biases
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (kaiming-uniform with a = sqrt 5), BN gamma 1, beta 0.
    ``head_init="official"``: head weight ~ trunc_normal(std 0.02, cut at +-2 std), bias 0, as the
    official Spikformer does. (Same distributions as torch, not the same random stream.)"""
    _check_config(cfg)
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    params: dict[str, np.ndarray] = {}

    def uniform(shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(dt)

    for conv, wshape, has_bias, bn in _conv_specs(cfg):
        fan_in = int(np.prod(wshape[1:]))
        params[f"{conv}.weight"] = uniform(wshape, fan_in)
        if has_bias:
            params[f"{conv}.bias"] = uniform((wshape[0],), fan_in)
        params[f"{bn}.weight"] = np.ones(wshape[0], dt)
        params[f"{bn}.bias"] = np.zeros(wshape[0], dt)
    for stage in cfg.description.stages:
        if stage.attention == "ds2ta":
            for i in range(stage.count):
                for k, v in A.init_nsad_params(stage.heads, dt).items():
                    params[f"{stage.attention_name(i)}.{k}"] = v
    K, D = param_shapes(cfg)["head.weight"]
    if head_init == "torch":
        params["head.weight"] = uniform((K, D), D)
        params["head.bias"] = uniform((K,), D)
    elif head_init == "official":
        w = rng.standard_normal((K, D))
        while np.any(bad := np.abs(w) > 2.0):
            w[bad] = rng.standard_normal(int(bad.sum()))
        params["head.weight"] = (0.02 * w).astype(dt)
        params["head.bias"] = np.zeros(K, dt)
    else:
        raise ValueError(f"head_init must be 'torch' or 'official', got {head_init!r}")
    return params


def init_state(cfg: SpikformerConfig, dtype=np.float32, taw: int | None = None,
               pool_rows: int | None = None, seed: int = 0, erode: int | None = None
               ) -> dict[str, Any]:
    """Fresh BatchNorm running statistics (mean 0, var 1, 0 batches tracked) and the attention
    operator's buffers and fixed settings, per block (``block.{i}.attn.`` ...):

    * ds2ta: ``tau`` [4] int64 (decay exponents of q, k, v, proj; 2), ``taw`` (T_AW, int64
      scalar; ``taw`` or 3), ``nsad_u`` [H] (NSAD's fixed u_h; 2);
    * ssa_bin: ``delta`` [H] int64 (0), ``vbar`` [D] (running mean of B V; 0);
    * saformer: ``pool_rows`` (L, int64 scalar; ``pool_rows`` or 4);
    * sdsa: ``talking_heads.weight`` [H, H, 1], torch's Conv1d initialisation drawn from
      ``seed``: the official checkpoint holds it though no computation reads it; ``erode``
      (int64 scalar; ``erode`` or 0): 1 runs the released code's DVS-mode Erode max-pools.

    ``taw`` / ``pool_rows`` / ``erode`` given for another operator are refused (ValueError)."""
    _check_config(cfg)
    stages = cfg.description.stages
    ops = {s.attention for s in stages}
    if taw is not None and "ds2ta" not in ops:
        raise ValueError(f"taw (T_AW) is a ds2ta setting, the attention is {cfg.attention}")
    if pool_rows is not None and "saformer" not in ops:
        raise ValueError(f"pool_rows (L) is a saformer setting, the attention is {cfg.attention}")
    if erode is not None and "sdsa" not in ops:
        raise ValueError(f"erode is an sdsa setting, the attention is {cfg.attention}")
    if erode is not None and erode not in (0, 1):
        raise ValueError(f"erode must be 0 or 1, got {erode!r}")
    taw = DEFAULT_TAW if taw is None else int(taw)
    pool_rows = DEFAULT_POOL_ROWS if pool_rows is None else int(pool_rows)
    if taw < 1:
        raise ValueError(f"taw (T_AW) must be >= 1, got {taw}")
    geometry = _placement(cfg).geometry
    for stage, g in zip(stages, geometry):
        if stage.attention == "saformer" and (pool_rows < 1 or g.tokens % pool_rows):
            raise ValueError(f"pool_rows (L) must be a divisor of the {g.tokens} tokens, "
                             f"got {pool_rows}")
    state: dict[str, Any] = {}
    shapes = param_shapes(cfg)
    for bn in bn_names(cfg):
        for k, v in L.init_bn_state(shapes[f"{bn}.weight"][0], dtype).items():
            state[f"{bn}.{k}"] = v
    rng = np.random.default_rng(seed)
    for stage in stages:
        op = stage.attention
        for i in range(stage.count):
            a = stage.attention_name(i)
            if op == "ds2ta":
                state[f"{a}.tau"] = np.full(4, DEFAULT_TASA_TAU, np.int64)
                state[f"{a}.taw"] = np.asarray(taw, np.int64)
                state[f"{a}.nsad_u"] = np.full(stage.heads, NSAD_U, dtype)
            elif op == "ssa_bin":
                state[f"{a}.delta"] = np.zeros(stage.heads, np.int64)
                state[f"{a}.vbar"] = np.zeros(stage.dim, dtype)
            elif op == "saformer":
                state[f"{a}.pool_rows"] = np.asarray(pool_rows, np.int64)
            elif op == "sdsa":
                H = stage.heads
                bound = 1.0 / np.sqrt(H)
                state[f"{a}.talking_heads.weight"] = rng.uniform(-bound, bound, (H, H, 1)) \
                    .astype(dtype)
                state[f"{a}.erode"] = np.asarray(erode or 0, np.int64)
    return state


#: trainer-only entries: settings that the model file takes as options, not checkpoint keys
_OPTION_KEYS = ("taw", "pool_rows", "erode", "nsad_u")


def attention_options(state: dict[str, Any]) -> dict[str, int]:
    """The builder's options stored in ``state``: ``{"taw": ...}`` (ds2ta), ``{"pool_rows":
    ...}`` (saformer), ``{"erode": ...}`` (sdsa) or ``{}``."""
    out = {}
    for key in ("taw", "pool_rows", "erode"):
        vals = {int(np.asarray(v)) for k, v in state.items() if k.endswith(f".{key}")}
        if len(vals) > 1:
            raise ValueError(f"the blocks have different {key}: {sorted(vals)}")
        if vals:
            out[key] = vals.pop()
    return out


def state_dict(params: dict[str, np.ndarray], state: dict[str, Any]) -> dict[str, np.ndarray]:
    """``params`` and ``state`` merged into one official-style state dict of numpy arrays
    (``num_batches_tracked`` as an int64 scalar array) with the SPEC §4 keys of the attention
    operator: DS2TA's NSAD parameters a..e become ``nsad_table`` [H, d+1] (the rounded table,
    int64); the options (``taw``, ``pool_rows``, ``erode``) and ``nsad_u`` are left out (see
    :func:`attention_options`)."""
    out = {}
    nsad: dict[str, dict[str, np.ndarray]] = {}
    for k, v in params.items():
        prefix, _, name = k.rpartition(".")
        if name in A.NSAD_KEYS:
            nsad.setdefault(prefix, {})[name] = np.asarray(v)
        else:
            out[k] = np.asarray(v)
    for k, v in state.items():
        prefix, _, name = k.rpartition(".")
        if name in _OPTION_KEYS:
            continue
        out[k] = np.asarray(v, np.int64) if k.endswith("num_batches_tracked") else np.asarray(v)
    for prefix, p in nsad.items():
        u = state[f"{prefix}.nsad_u"]
        d = params[f"{prefix}.q_conv.weight"].shape[0] // len(u)  # the block's head width
        out[f"{prefix}.nsad_table"] = A.nsad_table(p, u, d)
    return out


# --------------------------------------------------------------------------------------------------
# Forward / backward
# --------------------------------------------------------------------------------------------------


def _sub(params: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in params.items() if k.startswith(p)}


def _bn(x, params, state, prefix, training):
    return S._bn(x, params, state, prefix, training)


def _lif(cfg: SpikformerConfig, theta: float):
    return {"tau": cfg.tau, "theta": theta, "v_reset": cfg.v_reset,
            "decay_input": cfg.decay_input, "alpha": SURROGATE_ALPHA}


def forward(params: dict[str, np.ndarray], state: dict[str, Any] | None, frames: np.ndarray,
            training: bool, config: SpikformerConfig) -> tuple[np.ndarray, dict]:
    """Logits ``[B, classes]`` of ``frames [T, B, C, H, W]`` (event counts; cast to the
    parameters' dtype) and the cache for :func:`backward` (``cache["spikes"]``: every LIF's
    output by module name).

    ``training``: BatchNorms use batch statistics and update ``state`` in place (unless ``state`` is
    None); otherwise the running statistics in ``state`` (required)."""
    cfg = config
    frames = np.asarray(frames)
    if frames.ndim != 5:
        raise ValueError(f"frames must be [T, B, C, H, W], got shape {frames.shape}")
    T, B, C, H, W = frames.shape
    if (C, H, W) != (cfg.in_channels, cfg.image_size, cfg.image_size):
        raise ValueError(f"frames are {C}x{H}x{W}, the model takes "
                         f"{cfg.in_channels}x{cfg.image_size}x{cfg.image_size}")
    if not training and state is None:
        raise ValueError("eval mode needs the BatchNorm running statistics (state)")
    desc = cfg.description
    run = _Run(params, state, training, cfg)
    x = frames.astype(params["head.weight"].dtype)
    stages = []
    for stage in desc.stages:
        x, ec = _embed_forward(stage, x, run)
        T, B, D, gh, gw = x.shape
        x = x.reshape(T, B, D, gh * gw)
        blocks = []
        for i in range(stage.count):
            if stage.attention == "sdsa":
                erode = bool(int(_need(state, f"{stage.attention_name(i)}.erode")))
                x, bc = S.sdt_block_forward(x, params, state, stage.block_name(i), training,
                                            stage.heads, (gh, gw), erode, run.lif,
                                            cfg.attn_theta)
                run.spikes.update(bc["spikes"])
            else:
                x, bc = _block_forward(stage, i, x, (gh, gw), run)
            blocks.append(bc)
        stages.append((ec, blocks, (gh, gw)))
        x = x.reshape(T, B, D, gh, gw)
    x = x.reshape(T, B, D, -1)
    cache: dict[str, Any] = {"config": cfg, "stages": stages, "spikes": run.spikes}
    if desc.head_lif:
        logits, cache["head"] = S.sdt_head_forward(x, params, run.lif)
        run.spikes[desc.head_lif] = cache["head"]["spikes"]
    else:
        mean = L.mean_tokens_steps_forward(x)
        logits, hc = L.linear_forward(mean[0], _sub(params, "head"))
        cache["head"] = (mean[1], hc)
    return logits, cache


class _Run:
    """What one forward pass shares: parameters, state, mode, LIF settings, recorded spikes."""

    def __init__(self, params, state, training, cfg):
        self.params, self.state, self.training, self.cfg = params, state, training, cfg
        self.lif = _lif(cfg, cfg.theta)
        self.attn_lif = _lif(cfg, cfg.attn_theta)
        self.spikes: dict[str, np.ndarray] = {}


def _embed_forward(stage: BlockStage, x: np.ndarray, run: _Run):
    """One embedding on ``x [T, B, C, H, W]``: each conv stage reads the previous output or a
    saved map, pools where it says, spikes (or not), adds a saved map. A stage that keeps its
    current (``save_current``: SDT's ``x_feat``) runs its LIF apart, after the saved current.
    Maps are kept by key (``("in",)``, ``("out", j)``, ``("cur", j)``) so that the backward
    can sum every path's gradient into the map it came from."""
    maps = {("in",): x}
    names = {INPUT: ("in",)}
    prev = ("in",)
    records = []
    for j, st in enumerate(stage.embed):
        src = names[st.input] if st.input else prev
        pool = _POOLS[st.pool]
        if st.save_current:
            cur, cc = S.conv_bn_lif_forward(maps[src], run.params, run.state, st.conv, st.bn,
                                            run.training, None, st.stride, st.padding, pool)
            y, lc = L.lif_forward(cur, **run.lif)
            maps[("cur", j)] = cur
            names[st.save_current] = ("cur", j)
            run.spikes[st.lif] = y
        else:
            y, cc = S.conv_bn_lif_forward(maps[src], run.params, run.state, st.conv, st.bn,
                                          run.training, run.lif if st.lif else None, st.stride,
                                          st.padding, pool)
            lc = None
            if st.lif:
                run.spikes[st.lif] = cc["spikes"]
        add = names[st.add] if st.add else None
        if add is not None:
            y = y + maps[add]
        maps[("out", j)] = y
        if st.save:
            names[st.save] = ("out", j)
        prev = ("out", j)
        records.append((src, cc, lc, add))
    return maps[prev], {"records": records, "out": prev}


def _accumulate(grads: dict, key, d: np.ndarray) -> None:
    grads[key] = d if key not in grads else grads[key] + d


def _embed_backward(dy: np.ndarray, ec: dict, grads: dict) -> np.ndarray | None:
    """Gradients of :func:`_embed_forward` (parameters into ``grads``); returns dL/d(input)."""
    g = {ec["out"]: dy}
    for j in range(len(ec["records"]) - 1, -1, -1):
        src, cc, lc, add = ec["records"][j]
        d = g.pop(("out", j), None)
        dcur = g.pop(("cur", j), None)
        if d is not None and add is not None:
            _accumulate(g, add, d)
        if lc is not None:  # the LIF ran apart from its saved current
            if d is not None:
                d = L.lif_backward(d, lc)[0]
            if dcur is not None:
                d = dcur if d is None else d + dcur
        if d is None:
            continue
        dx, gr = S.conv_bn_lif_backward(d, cc)
        grads.update(gr)
        _accumulate(g, src, dx)
    return g.get(("in",))


def _tasa_settings(state, a: str, op: str) -> dict[str, tuple[int, int]]:
    """DS2TA: branch -> (tau, taw) for q, k, v, proj; other operators: {}."""
    if op != "ds2ta":
        return {}
    tau = np.asarray(_need(state, f"{a}.tau"))
    taw = int(_need(state, f"{a}.taw"))
    return {n: (int(tau[i]), taw) for i, n in enumerate(("q", "k", "v", "proj"))}


def _need(state, key):
    if state is None:
        raise ValueError(f"this attention operator needs its buffers in state ({key})")
    return state[key]


def _block_forward(stage: BlockStage, i: int, x: np.ndarray, grid: tuple[int, int], run: _Run):
    """One block on a residual stream of spikes ``x [T, B, D, N]``: ``x = x + ATTN(x); x = x +
    MLP(x)``, ATTN the stage's operator."""
    params, state, training = run.params, run.state, run.training
    a, m = stage.attention_name(i), stage.mlp_name(i)
    f1, f2 = stage.mlp_layers
    T, B, D, N = x.shape
    op = stage.attention
    bc: dict[str, Any] = {}
    xf = x.reshape(T * B, D, N)
    tasa = _tasa_settings(state, a, op)
    qkv = []
    for n in _branches(op):
        sp, bc[n] = _syn_bn_lif(xf, params, state, f"{a}.{n}", training, run.lif, (T, B, D, N),
                                tasa.get(n))
        run.spikes[f"{a}.{n}_lif"] = sp
        qkv.append(sp)
    heads, scale = stage.heads, stage.scale
    if op == "ssa":
        att = L.ssa_attention_forward(*qkv, heads, scale)
    elif op == "ds2ta":
        att = A.nsad_forward(*qkv, {k: params[f"{a}.{k}"] for k in A.NSAD_KEYS},
                             _need(state, f"{a}.nsad_u"), heads, scale)
    elif op == "ssa_bin":
        vbar = None if state is None else state[f"{a}.vbar"]
        att = A.ssa_bin_forward(*qkv, _need(state, f"{a}.delta"), heads, scale, vbar, training,
                                SSA_BIN_MOMENTUM)
    elif op == "saformer":  # scale * (K * a) + BN(DWC(K))
        q_, k_ = qkv
        rows = int(_need(state, f"{a}.pool_rows"))
        sa = A.sasa_forward(q_, k_, rows, scale)
        dw = A.depthwise_conv2d_forward(k_.reshape(T * B, D, *grid),
                                        _sub(params, f"{a}.dwc_conv"), 1)
        db = _bn(dw[0], params, state, f"{a}.dwc_bn", training)
        att = (sa[0] + db[0].reshape(T, B, D, N), {"sasa": sa[1], "dwc": dw[1], "bn": db[1]})
    else:  # token_qk: the attention LIF is inside the core, the masked K goes to proj
        att = S.token_qk_forward(*qkv, heads, run.attn_lif)
        run.spikes[f"{a}.attn_lif"] = att[1]["a"]
    bc["att"] = att[1]
    if op == "token_qk":
        y, bc["attn_lif"] = att[0], None
    else:
        y, bc["attn_lif"] = L.lif_forward(att[0], **run.attn_lif)
        run.spikes[f"{a}.attn_lif"] = y
    pl = _syn_bn_lif(y.reshape(T * B, D, N), params, state, f"{a}.proj", training, run.lif,
                     (T, B, D, N), tasa.get("proj"))
    bc["proj"] = pl[1]
    run.spikes[f"{a}.proj_lif"] = pl[0]
    x = x + pl[0]
    Hd = stage.mlp_hidden
    l1, bc["fc1"] = _syn_bn_lif(x.reshape(T * B, D, N), params, state, f"{m}.{f1}", training,
                                run.lif, (T, B, Hd, N), None)
    l2, bc["fc2"] = _syn_bn_lif(l1.reshape(T * B, Hd, N), params, state, f"{m}.{f2}", training,
                                run.lif, (T, B, D, N), None)
    run.spikes[f"{m}.{f1}_lif"], run.spikes[f"{m}.{f2}_lif"] = l1, l2
    return x + l2, bc


def _syn_bn_lif(xf, params, state, name, training, lif_kw, shape, tasa):
    """conv1x1 -> BN -> LIF of branch ``name`` (``block.i.attn.q`` ...) on ``xf [T*B, I, N]``;
    with ``tasa = (tau, taw)`` (DS2TA) the conv's synaptic part is attenuated over the window
    first and its bias added after (SPEC §4). Returns ``(spikes [T, B, O, N], stack)``, the
    stack being what the backward needs: (conv, BN, LIF[, TASA]) caches."""
    T, B, D, N = shape
    conv = _sub(params, f"{name}_conv")
    if tasa is None:
        cc = L.conv1x1_forward(xf, conv)
        pre, extra = cc[0], None
    else:
        bias = conv.pop("bias", None)
        cc = L.conv1x1_forward(xf, conv)
        tt = A.tasa_forward(cc[0].reshape(T, B, D, N), *tasa)
        pre = tt[0].reshape(T * B, D, N)
        if bias is not None:
            pre = pre + bias.reshape(-1, 1)
        extra = (tt[1], bias is not None)
    bb = _bn(pre, params, state, f"{name}_bn", training)
    ll = L.lif_forward(bb[0].reshape(T, B, D, N), **lif_kw)
    return ll[0], ((cc[1], bb[1], ll[1]) if extra is None else (cc[1], bb[1], ll[1], extra))


def _put(grads: dict, prefix: str, g: dict) -> None:
    for k, v in g.items():
        grads[f"{prefix}.{k}"] = v


def _bn_lif_conv_backward(ds, stack, grads, conv, bn):
    """Backward through conv [-> TASA] -> BN -> LIF given dL/dspikes; returns dL/d(conv input)."""
    cc, bb, ll = stack[:3]
    tasa = stack[3] if len(stack) > 3 else None
    dh, _ = L.lif_backward(ds, ll)
    dc, g = L.batchnorm_backward(dh.reshape((-1,) + dh.shape[2:]), bb)
    _put(grads, bn, g)
    if tasa is not None:
        tc, has_bias = tasa
        if has_bias:
            grads[f"{conv}.bias"] = dc.sum(axis=(0, 2))
        dc = A.tasa_backward(dc.reshape(ds.shape), tc)[0].reshape(dc.shape)
    dx, g = L.conv1x1_backward(dc, cc)
    _put(grads, conv, g)
    return dx


def _block_backward(stage: BlockStage, i: int, dx: np.ndarray, bc: dict, grads: dict
                    ) -> np.ndarray:
    """Gradients of :func:`_block_forward` given dL/d(block output) ``[T, B, D, N]``."""
    a, m = stage.attention_name(i), stage.mlp_name(i)
    f1, f2 = stage.mlp_layers
    T, B, D, N = dx.shape
    Hd = stage.mlp_hidden
    # x = x + mlp(x)
    dl1 = _bn_lif_conv_backward(dx, bc["fc2"], grads, f"{m}.{f2}_conv", f"{m}.{f2}_bn")
    dxm = _bn_lif_conv_backward(dl1.reshape(T, B, Hd, N), bc["fc1"], grads, f"{m}.{f1}_conv",
                                f"{m}.{f1}_bn")
    dx = dx + dxm.reshape(T, B, D, N)
    # x = x + attn(x)
    dal = _bn_lif_conv_backward(dx, bc["proj"], grads, f"{a}.proj_conv", f"{a}.proj_bn")
    datt = dal.reshape(T, B, D, N)
    if bc["attn_lif"] is not None:
        datt, _ = L.lif_backward(datt, bc["attn_lif"])
    op = stage.attention
    if op == "ssa":
        dqkv, _ = L.ssa_attention_backward(datt, bc["att"])
    elif op == "ds2ta":
        dqkv, g = A.nsad_backward(datt, bc["att"])
        _put(grads, a, g)
    elif op == "ssa_bin":
        dqkv, _ = A.ssa_bin_backward(datt, bc["att"])
    elif op == "saformer":
        ac = bc["att"]
        (dq, dk), _ = A.sasa_backward(datt, ac["sasa"])
        dd, g = L.batchnorm_backward(datt.reshape(ac["dwc"]["x_shape"]), ac["bn"])
        _put(grads, f"{a}.dwc_bn", g)
        dkk, g = A.depthwise_conv2d_backward(dd, ac["dwc"])
        _put(grads, f"{a}.dwc_conv", g)
        dqkv = (dq, dk + dkk.reshape(T, B, D, N))
    else:
        dqkv, _ = S.token_qk_backward(datt, bc["att"])
    dxf = dx.reshape(T * B, D, N).copy()
    for n, ds in zip(_branches(op), dqkv):
        dxf += _bn_lif_conv_backward(ds, bc[n], grads, f"{a}.{n}_conv", f"{a}.{n}_bn")
    return dxf.reshape(T, B, D, N)


def backward(dlogits: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """Gradients of every parameter (same keys as ``params``) given ``dL/dlogits``."""
    cfg = cache["config"]
    desc = cfg.description
    grads: dict[str, np.ndarray] = {}
    if desc.head_lif:
        dx, g = S.sdt_head_backward(dlogits, cache["head"])
        grads.update(g)
    else:
        mc, hc = cache["head"]
        dm, g = L.linear_backward(dlogits, hc)
        _put(grads, "head", g)
        dx, _ = L.mean_tokens_steps_backward(dm, mc)
    for stage, (ec, blocks, grid) in zip(desc.stages[::-1], cache["stages"][::-1]):
        T, B, D = dx.shape[:3]
        dx = dx.reshape(T, B, D, -1)
        for i in range(stage.count - 1, -1, -1):
            if stage.attention == "sdsa":
                dx, g = S.sdt_block_backward(dx, blocks[i])
                grads.update(g)
            else:
                dx = _block_backward(stage, i, dx, blocks[i], grads)
        dx = _embed_backward(dx.reshape(T, B, D, *grid), ec, grads)
        if dx is None:  # nothing reaches the input: earlier stages get no gradient
            break
    return grads


def loss_and_grads(params, state, frames, labels, config: SpikformerConfig,
                   label_smoothing: float = 0.0, training: bool = True):
    """One training-mode forward + cross-entropy + backward: ``(loss, grads, logits)``."""
    logits, cache = forward(params, state, frames, training, config)
    loss, dlogits = L.cross_entropy(logits, labels, label_smoothing)
    grads = backward(dlogits, cache)
    for k, v in params.items():  # a parameter no gradient reached (e.g. a silent branch): zero
        if k not in grads:
            grads[k] = np.zeros_like(v)
    return loss, grads, logits
