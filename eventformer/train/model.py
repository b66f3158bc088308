"""A whole Spikformer in numpy, assembled from :mod:`eventformer.train.layers` (no autograd).

The architecture is exactly that of ``tests/torch_reference.py`` (SPEC §2)::

    SPS    per stage i: x = MaxPool(k3 s2 p1)(LIF(BN(Conv2d k3 p1, no bias)(x)))
           x = x_feat + LIF(rpe_bn(rpe_conv(x_feat)))          -> tokens [T, B, D, N]
    Block  x = x + ATTN(x); x = x + MLP(x)
    head   logits = Linear(x.mean(tokens).mean(steps))

ATTN is the operator ``config.attention`` names (SPEC §4; the pairs live in
:mod:`eventformer.train.attention`): ``ssa``; ``ds2ta`` (TASA between the q/k/v/proj convs and
their BatchNorms, NSAD on the count map, trainable per-head f parameters ``nsad_a`` .. ``nsad_e``
that :func:`state_dict` turns into the rounded ``nsad_table``); ``ssa_bin`` (binary map, buffer
``vbar``); ``saformer`` (no V branch, SASA gate + depthwise conv ``dwc_conv`` -> ``dwc_bn``).
The operators' buffers and fixed settings (``tau``, ``taw``, ``nsad_u``, ``delta``, ``vbar``,
``pool_rows``) live in ``state`` (:func:`init_state`).

Parameters live in a flat dict keyed exactly like the official checkpoint
(``patch_embed.proj_conv.weight``, ``patch_embed.proj_bn.weight``, ``block.0.attn.q_conv.weight``
``[D, D, 1]``, ..., ``head.weight``); BatchNorm running statistics in a separate ``state`` dict
(``<bn>.running_mean``, ``<bn>.running_var``, ``<bn>.num_batches_tracked``). ``params`` and
``state`` together load into the torch reference (``load_state_dict(strict=False)``: only the
unused ``pos_embed`` / ``norm*`` tensors are missing).

``forward(params, state, frames [T, B, C, H, W], training, config) -> (logits, cache)`` and
``backward(dlogits, cache) -> grads`` (same keys as ``params``). Training mode normalises with
batch statistics and updates ``state`` in place (``state=None``: no tracking); eval mode uses the
running statistics. The LIF gradient is the sigmoid surrogate (alpha 4), reset detached, BPTT.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..models.config import SpikformerConfig, sps_suffix
from . import attention as A
from . import layers as L

__all__ = [
    "CONFIGS",
    "DEFAULT_POOL_ROWS",
    "DEFAULT_TAW",
    "NSAD_U",
    "attention_options",
    "backward",
    "bn_names",
    "config_by_name",
    "forward",
    "init_params",
    "init_state",
    "loss_and_grads",
    "param_shapes",
    "state_dict",
    "with_config",
]

#: Named training configurations (SpikformerConfig fields).
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"in_channels": 2, "image_size": 32, "sps_channels": (16, 32, 64),
             "sps_pool": (True,) * 3, "dim": 64, "heads": 4, "depth": 1, "mlp_hidden": 256,
             "num_classes": 11, "steps": 8},
    "small": {"in_channels": 2, "image_size": 64, "sps_channels": (32, 64, 128),
              "sps_pool": (True,) * 3, "dim": 128, "heads": 8, "depth": 2, "mlp_hidden": 512,
              "num_classes": 11, "steps": 8},
}

BN_MOMENTUM = 0.1
BN_EPS = 1e-5
SURROGATE_ALPHA = 4.0
DEFAULT_TAW = 3  # DS2TA's window T_AW (SPEC §4, DVS)
DEFAULT_TASA_TAU = 2  # DS2TA's decay exponents of q, k, v, proj (SPEC §4, DVS)
NSAD_U = 2.0  # DS2TA's NSAD threshold u_h, fixed (SPEC §4, DVS)
DEFAULT_POOL_ROWS = 4  # SAFormer's L (SPEC §4)
SSA_BIN_MOMENTUM = 0.1


def config_by_name(name: str, **overrides) -> SpikformerConfig:
    """``"tiny"`` or ``"small"`` as a validated :class:`SpikformerConfig` (fields overridable)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model configuration {name!r}; known: {', '.join(CONFIGS)}")
    kw = dict(CONFIGS[name])
    kw.update(overrides)
    cfg = SpikformerConfig(**kw)
    _check_config(cfg)
    return cfg


def _check_config(cfg: SpikformerConfig) -> None:
    cfg.validate()
    if not all(cfg.sps_pool):
        raise ValueError("the numpy trainer supports only SPS stages that all max-pool")
    if cfg.attention not in A.OPERATORS:
        raise ValueError(f"the numpy trainer has no {cfg.attention!r} attention")


# --------------------------------------------------------------------------------------------------
# Parameters and state
# --------------------------------------------------------------------------------------------------


def _conv_specs(cfg: SpikformerConfig) -> list[tuple[str, tuple[int, ...], bool, str]]:
    """(conv prefix, weight shape, has bias, BN prefix) for every conv, in forward order."""
    out = []
    cin = cfg.in_channels
    for i, c in enumerate(cfg.sps_channels):
        s = sps_suffix(i)
        out.append((f"patch_embed.proj_conv{s}", (c, cin, 3, 3), False, f"patch_embed.proj_bn{s}"))
        cin = c
    D, Hd = cfg.dim, cfg.mlp_hidden
    out.append(("patch_embed.rpe_conv", (D, D, 3, 3), False, "patch_embed.rpe_bn"))
    for b in range(cfg.depth):
        a, m = f"block.{b}.attn", f"block.{b}.mlp"
        for n in _branches(cfg):
            out.append((f"{a}.{n}_conv", (D, D, 1), False, f"{a}.{n}_bn"))
        if cfg.attention == "saformer":
            out.append((f"{a}.dwc_conv", (D, 1, 3, 3), False, f"{a}.dwc_bn"))
        out.append((f"{a}.proj_conv", (D, D, 1), True, f"{a}.proj_bn"))
        out.append((f"{m}.fc1_conv", (Hd, D, 1), True, f"{m}.fc1_bn"))
        out.append((f"{m}.fc2_conv", (D, Hd, 1), True, f"{m}.fc2_bn"))
    return out


def _branches(cfg: SpikformerConfig) -> tuple[str, ...]:
    """The spiking projections of the block input: SAFormer has no V branch."""
    return ("q", "k") if cfg.attention == "saformer" else ("q", "k", "v")


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
    if cfg.attention == "ds2ta":
        for b in range(cfg.depth):
            for k in A.NSAD_KEYS:
                shapes[f"block.{b}.attn.{k}"] = (cfg.heads,)
    shapes["head.weight"] = (cfg.num_classes, cfg.dim)
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
    if cfg.attention == "ds2ta":
        for b in range(cfg.depth):
            for k, v in A.init_nsad_params(cfg.heads, dt).items():
                params[f"block.{b}.attn.{k}"] = v
    K, D = cfg.num_classes, cfg.dim
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
               pool_rows: int | None = None) -> dict[str, Any]:
    """Fresh BatchNorm running statistics (mean 0, var 1, 0 batches tracked) and the attention
    operator's buffers and fixed settings, per block ``block.{i}.attn.``:

    * ds2ta: ``tau`` [4] int64 (decay exponents of q, k, v, proj; 2), ``taw`` (T_AW, int64
      scalar; ``taw`` or 3), ``nsad_u`` [H] (NSAD's fixed u_h; 2);
    * ssa_bin: ``delta`` [H] int64 (0), ``vbar`` [D] (running mean of B V; 0);
    * saformer: ``pool_rows`` (L, int64 scalar; ``pool_rows`` or 4).

    ``taw`` / ``pool_rows`` given for another operator are refused (ValueError)."""
    _check_config(cfg)
    op = cfg.attention
    if taw is not None and op != "ds2ta":
        raise ValueError(f"taw (T_AW) is a ds2ta setting, the attention is {op}")
    if pool_rows is not None and op != "saformer":
        raise ValueError(f"pool_rows (L) is a saformer setting, the attention is {op}")
    taw = DEFAULT_TAW if taw is None else int(taw)
    pool_rows = DEFAULT_POOL_ROWS if pool_rows is None else int(pool_rows)
    if taw < 1:
        raise ValueError(f"taw (T_AW) must be >= 1, got {taw}")
    if pool_rows < 1 or cfg.tokens % pool_rows:
        raise ValueError(f"pool_rows (L) must be a divisor of the {cfg.tokens} tokens, "
                         f"got {pool_rows}")
    state: dict[str, Any] = {}
    for bn in bn_names(cfg):
        for k, v in L.init_bn_state(param_shapes(cfg)[f"{bn}.weight"][0], dtype).items():
            state[f"{bn}.{k}"] = v
    for b in range(cfg.depth):
        a = f"block.{b}.attn"
        if op == "ds2ta":
            state[f"{a}.tau"] = np.full(4, DEFAULT_TASA_TAU, np.int64)
            state[f"{a}.taw"] = np.asarray(taw, np.int64)
            state[f"{a}.nsad_u"] = np.full(cfg.heads, NSAD_U, dtype)
        elif op == "ssa_bin":
            state[f"{a}.delta"] = np.zeros(cfg.heads, np.int64)
            state[f"{a}.vbar"] = np.zeros(cfg.dim, dtype)
        elif op == "saformer":
            state[f"{a}.pool_rows"] = np.asarray(pool_rows, np.int64)
    return state


#: trainer-only entries: settings that the model file takes as options, not checkpoint keys
_OPTION_KEYS = ("taw", "pool_rows", "nsad_u")


def attention_options(state: dict[str, Any]) -> dict[str, int]:
    """The builder's options stored in ``state``: ``{"taw": ...}`` (ds2ta), ``{"pool_rows":
    ...}`` (saformer) or ``{}``."""
    out = {}
    for key in ("taw", "pool_rows"):
        vals = {int(np.asarray(v)) for k, v in state.items()
                if k.startswith("block.") and k.endswith(f".attn.{key}")}
        if len(vals) > 1:
            raise ValueError(f"the blocks have different {key}: {sorted(vals)}")
        if vals:
            out[key] = vals.pop()
    return out


def state_dict(params: dict[str, np.ndarray], state: dict[str, Any]) -> dict[str, np.ndarray]:
    """``params`` and ``state`` merged into one official-style state dict of numpy arrays
    (``num_batches_tracked`` as an int64 scalar array) with the SPEC §4 keys of the attention
    operator: DS2TA's NSAD parameters a..e become ``nsad_table`` [H, d+1] (the rounded table,
    int64); the options (``taw``, ``pool_rows``) and ``nsad_u`` are left out (see
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
        d = params["head.weight"].shape[1] // len(u)
        out[f"{prefix}.nsad_table"] = A.nsad_table(p, u, d)
    return out


# --------------------------------------------------------------------------------------------------
# Forward / backward
# --------------------------------------------------------------------------------------------------


def _sub(params: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in params.items() if k.startswith(p)}


def _bn(x, params, state, prefix, training):
    st = None
    if state is not None:
        st = {k: state[f"{prefix}.{k}"] for k in ("running_mean", "running_var")}
        st["num_batches_tracked"] = state.get(f"{prefix}.num_batches_tracked", 0)
    y, cache = L.batchnorm_forward(x, _sub(params, prefix), st, training=training,
                                   momentum=BN_MOMENTUM, eps=BN_EPS)
    if state is not None and training:
        state[f"{prefix}.num_batches_tracked"] = st["num_batches_tracked"]
    return y, cache


def _lif(cfg: SpikformerConfig, theta: float):
    return {"tau": cfg.tau, "theta": theta, "v_reset": cfg.v_reset,
            "decay_input": cfg.decay_input, "alpha": SURROGATE_ALPHA}


def forward(params: dict[str, np.ndarray], state: dict[str, Any] | None, frames: np.ndarray,
            training: bool, config: SpikformerConfig) -> tuple[np.ndarray, dict]:
    """Logits ``[B, classes]`` of ``frames [T, B, C, H, W]`` (event counts; cast to the
    parameters' dtype) and the cache for :func:`backward`.

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
    dt = params["head.weight"].dtype
    lif_n = _lif(cfg, cfg.theta)
    cache: dict[str, Any] = {"config": cfg, "T": T, "B": B}

    # ---- SPS
    x = frames.astype(dt).reshape(T * B, C, H, W)
    stages = []
    for i in range(len(cfg.sps_channels)):
        s = sps_suffix(i)
        c = L.conv2d_forward(x, _sub(params, f"patch_embed.proj_conv{s}"), 1, 1)
        b = _bn(c[0], params, state, f"patch_embed.proj_bn{s}", training)
        lf = L.lif_forward(b[0].reshape(T, B, *b[0].shape[1:]), **lif_n)
        mp = L.maxpool2d_forward(lf[0].reshape(b[0].shape), 3, 2, 1)
        stages.append((c[1], b[1], lf[1], mp[1]))
        x = mp[0]
    cache["stages"] = stages
    D, g = x.shape[1], x.shape[2]
    N = g * x.shape[3]
    c = L.conv2d_forward(x, _sub(params, "patch_embed.rpe_conv"), 1, 1)
    b = _bn(c[0], params, state, "patch_embed.rpe_bn", training)
    lf = L.lif_forward(b[0].reshape(T, B, *b[0].shape[1:]), **lif_n)
    cache["rpe"] = (c[1], b[1], lf[1])
    cache["feat_shape"] = x.shape
    x = (x.reshape(T, B, D, g, -1) + lf[0]).reshape(T, B, D, N)

    # ---- blocks
    blocks = []
    for bi in range(cfg.depth):
        a, m = f"block.{bi}.attn", f"block.{bi}.mlp"
        bc: dict[str, Any] = {}
        xf = x.reshape(T * B, D, N)
        op = cfg.attention
        tasa = _tasa_settings(state, a, op)
        qkv = []
        for n in _branches(cfg):
            sp, bc[n] = _syn_bn_lif(xf, params, state, f"{a}.{n}", training, lif_n,
                                    (T, B, D, N), tasa.get(n))
            qkv.append(sp)
        if op == "ssa":
            att = L.ssa_attention_forward(*qkv, cfg.heads, cfg.scale)
        elif op == "ds2ta":
            att = A.nsad_forward(*qkv, {k: params[f"{a}.{k}"] for k in A.NSAD_KEYS},
                                 _need(state, f"{a}.nsad_u"), cfg.heads, cfg.scale)
        elif op == "ssa_bin":
            vbar = None if state is None else state[f"{a}.vbar"]
            att = A.ssa_bin_forward(*qkv, _need(state, f"{a}.delta"), cfg.heads, cfg.scale,
                                    vbar, training, SSA_BIN_MOMENTUM)
        else:  # saformer: scale * (K * a) + BN(DWC(K))
            q_, k_ = qkv
            rows = int(_need(state, f"{a}.pool_rows"))
            sa = A.sasa_forward(q_, k_, rows, cfg.scale)
            dw = A.depthwise_conv2d_forward(k_.reshape(T * B, D, g, g),
                                            _sub(params, f"{a}.dwc_conv"), 1)
            db = _bn(dw[0], params, state, f"{a}.dwc_bn", training)
            att = (sa[0] + db[0].reshape(T, B, D, N), {"sasa": sa[1], "dwc": dw[1], "bn": db[1]})
        al = L.lif_forward(att[0], **_lif(cfg, cfg.attn_theta))
        pl = _syn_bn_lif(al[0].reshape(T * B, D, N), params, state, f"{a}.proj",
                         training, lif_n, (T, B, D, N), tasa.get("proj"))
        bc["proj"] = pl[1]
        bc["att"], bc["attn_lif"] = att[1], al[1]
        x = x + pl[0]
        Hd = cfg.mlp_hidden
        c1 = L.conv1x1_forward(x.reshape(T * B, D, N), _sub(params, f"{m}.fc1_conv"))
        b1 = _bn(c1[0], params, state, f"{m}.fc1_bn", training)
        l1 = L.lif_forward(b1[0].reshape(T, B, Hd, N), **lif_n)
        c2 = L.conv1x1_forward(l1[0].reshape(T * B, Hd, N), _sub(params, f"{m}.fc2_conv"))
        b2 = _bn(c2[0], params, state, f"{m}.fc2_bn", training)
        l2 = L.lif_forward(b2[0].reshape(T, B, D, N), **lif_n)
        bc["fc1"], bc["fc2"] = (c1[1], b1[1], l1[1]), (c2[1], b2[1], l2[1])
        x = x + l2[0]
        blocks.append(bc)
    cache["blocks"] = blocks
    cache["tokens_shape"] = (T, B, D, N)

    # ---- head
    mean = L.mean_tokens_steps_forward(x)
    head = L.linear_forward(mean[0], _sub(params, "head"))
    cache["mean"], cache["head"] = mean[1], head[1]
    return head[0], cache


def _need(state, key):
    if state is None:
        raise ValueError(f"this attention operator needs its buffers in state ({key})")
    return state[key]


def _tasa_settings(state, a: str, op: str) -> dict[str, tuple[int, int]]:
    """DS2TA: branch -> (tau, taw) for q, k, v, proj; other operators: {}."""
    if op != "ds2ta":
        return {}
    tau = np.asarray(_need(state, f"{a}.tau"))
    taw = int(_need(state, f"{a}.taw"))
    return {n: (int(tau[i]), taw) for i, n in enumerate(("q", "k", "v", "proj"))}


def _syn_bn_lif(xf, params, state, name, training, lif_kw, shape, tasa):
    """conv1x1 -> BN -> LIF of branch ``name`` (``block.i.attn.q`` ...) on ``xf [T*B, I, N]``;
    with ``tasa = (tau, taw)`` (DS2TA) the conv's synaptic part is attenuated over the window
    first and its bias added after (SPEC §4). Returns ``(spikes [T, B, D, N], stack)``, the
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
    if len(dc.shape) == 4:
        dx, g = L.conv2d_backward(dc, cc)
    else:
        dx, g = L.conv1x1_backward(dc, cc)
    _put(grads, conv, g)
    return dx


def backward(dlogits: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """Gradients of every parameter (same keys as ``params``) given ``dL/dlogits``."""
    cfg = cache["config"]
    T, B = cache["T"], cache["B"]
    _, _, D, N = cache["tokens_shape"]
    grads: dict[str, np.ndarray] = {}
    dm, g = L.linear_backward(dlogits, cache["head"])
    _put(grads, "head", g)
    dx, _ = L.mean_tokens_steps_backward(dm, cache["mean"])

    for bi in range(cfg.depth - 1, -1, -1):
        a, m = f"block.{bi}.attn", f"block.{bi}.mlp"
        bc = cache["blocks"][bi]
        Hd = cfg.mlp_hidden
        # x = x + mlp(x)
        dl1 = _bn_lif_conv_backward(dx, bc["fc2"], grads, f"{m}.fc2_conv", f"{m}.fc2_bn")
        dxm = _bn_lif_conv_backward(dl1.reshape(T, B, Hd, N), bc["fc1"], grads,
                                    f"{m}.fc1_conv", f"{m}.fc1_bn")
        dx = dx + dxm.reshape(T, B, D, N)
        # x = x + attn(x)
        dal = _bn_lif_conv_backward(dx, bc["proj"], grads, f"{a}.proj_conv", f"{a}.proj_bn")
        datt, _ = L.lif_backward(dal.reshape(T, B, D, N), bc["attn_lif"])
        op = cfg.attention
        if op == "ssa":
            dqkv, _ = L.ssa_attention_backward(datt, bc["att"])
        elif op == "ds2ta":
            dqkv, g = A.nsad_backward(datt, bc["att"])
            _put(grads, a, g)
        elif op == "ssa_bin":
            dqkv, _ = A.ssa_bin_backward(datt, bc["att"])
        else:
            ac = bc["att"]
            (dq, dk), _ = A.sasa_backward(datt, ac["sasa"])
            dd, g = L.batchnorm_backward(datt.reshape(ac["dwc"]["x_shape"]), ac["bn"])
            _put(grads, f"{a}.dwc_bn", g)
            dkk, g = A.depthwise_conv2d_backward(dd, ac["dwc"])
            _put(grads, f"{a}.dwc_conv", g)
            dqkv = (dq, dk + dkk.reshape(T, B, D, N))
        dxf = dx.reshape(T * B, D, N).copy()
        for n, ds in zip(_branches(cfg), dqkv):
            dxf += _bn_lif_conv_backward(ds, bc[n], grads, f"{a}.{n}_conv", f"{a}.{n}_bn")
        dx = dxf.reshape(T, B, D, N)

    # x = x_feat + rpe(x_feat)
    fshape = cache["feat_shape"]
    dr = dx.reshape(T, B, *fshape[1:])
    dfeat = _bn_lif_conv_backward(dr, cache["rpe"], grads, "patch_embed.rpe_conv",
                                  "patch_embed.rpe_bn")
    dx = dfeat + dr.reshape(fshape)
    for i in range(len(cfg.sps_channels) - 1, -1, -1):
        s = sps_suffix(i)
        cc, bb, ll, mp = cache["stages"][i]
        dl, _ = L.maxpool2d_backward(dx, mp)
        dx = _bn_lif_conv_backward(dl.reshape(T, B, *dl.shape[1:]), (cc, bb, ll), grads,
                                   f"patch_embed.proj_conv{s}", f"patch_embed.proj_bn{s}")
    return grads


def loss_and_grads(params, state, frames, labels, config: SpikformerConfig,
                   label_smoothing: float = 0.0, training: bool = True):
    """One training-mode forward + cross-entropy + backward: ``(loss, grads, logits)``."""
    logits, cache = forward(params, state, frames, training, config)
    loss, dlogits = L.cross_entropy(logits, labels, label_smoothing)
    return loss, backward(dlogits, cache), logits


def with_config(cfg: SpikformerConfig, **changes) -> SpikformerConfig:
    """A copy of ``cfg`` with some fields replaced (validated)."""
    out = dataclasses.replace(cfg, **changes)
    _check_config(out)
    return out
