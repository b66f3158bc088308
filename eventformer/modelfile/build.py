"""The one model-file builder: official checkpoint tensors -> a validated :class:`ModelFile`.

Every model file is assembled here, whatever made the tensors: a PyTorch checkpoint
(:mod:`eventformer.modelfile.export`), the numpy trainer (:mod:`eventformer.train.export`) or the
random full-size models of the benchmarks (:mod:`eventformer.bench.calibrate`). The input is a
mapping of official Spikformer checkpoint keys (SPEC §2, plus the variant keys of SPEC §4) to
numpy arrays; BatchNorm is folded in float64 and the result rounded once to ``dtype``:
W' = W * g, b' = beta + (b - mean) * g with g = gamma / sqrt(var + eps).

Which attention operator a checkpoint holds is told from its keys by :func:`detect_attention`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import CheckpointError
from ..models.config import SpikformerConfig
from .format import AttentionParams, LayerParams, ModelFile
from .provenance import portable
from .schema import (
    ATTENTION_NAMES,
    INT32,
    attention_block_name,
    attention_problem,
    block_specs,
    check_config,
    layer_specs,
)

__all__ = ["BN_EPS", "DEFAULT_POOL_ROWS", "DEFAULT_TAW", "VARIANT_KEYS", "build_model_file",
           "detect_attention", "fold_batchnorm", "is_ignored_key"]

BN_EPS = 1e-5
DEFAULT_TAW = 3  # SPEC §4: DVS default T_AW
DEFAULT_POOL_ROWS = 4  # SPEC §4: SAFormer's L
BN_KEYS = ("weight", "bias", "running_mean", "running_var")
# the Spike-driven Transformer's MS_SSA_Conv saves a ``talking_heads`` Conv1d [H, H, 1] that its
# forward pass never runs
_IGNORED = re.compile(r"^(pos_embed|norm\..*|block\.\d+\.norm[12]\..*|.*\.num_batches_tracked"
                      r"|block\.\d+\.attn\.talking_heads\.weight)$")
_BLOCK = re.compile(r"^block\.(\d+)\.")

# keys under block.{i}.attn. that tell a variant (SPEC §4); a trailing "." is a prefix
VARIANT_KEYS = {"ds2ta": ("tau", "nsad_table"), "ssa_bin": ("delta", "vbar"),
                "saformer": ("dwc_conv.", "dwc_bn.")}
_NO_VARIANT_KEYS = "none of the keys tau, nsad_table, delta, vbar, dwc_conv, dwc_bn"


def is_ignored_key(key: str) -> bool:
    """A checkpoint entry that exists but is not used (pos_embed, LayerNorms, batch counters,
    the Spike-driven Transformer's ``talking_heads.weight``)."""
    return bool(_IGNORED.match(key))


def fold_batchnorm(weight, conv_bias, gamma, beta, mean, var, eps=BN_EPS):
    """Fold an eval-mode BatchNorm into the preceding conv (float64 in, float64 out)."""
    g = gamma / np.sqrt(var + eps)
    w = weight * g.reshape((-1,) + (1,) * (weight.ndim - 1))
    b = beta + ((conv_bias if conv_bias is not None else 0.0) - mean) * g
    return w, b


def detect_attention(keys: Iterable[str], source: str = "checkpoint"
                     ) -> tuple[str | None, list[str]]:
    """The attention operator a checkpoint's keys say, and the keys that say it.

    Per block: ``tau`` + ``nsad_table`` -> ds2ta, ``delta`` + ``vbar`` -> ssa_bin, ``dwc_conv.*`` /
    ``dwc_bn.*`` (and no ``v_conv``) -> saformer, none of them -> ssa. Returns (None, []) for a
    checkpoint without blocks. A block holding keys of two operators, a saformer block with a V
    branch, or blocks of different operators are refused (:class:`CheckpointError`, one sentence).
    """
    keys = sorted(keys)
    blocks: dict[int, dict[str, list[str]]] = {}
    v_keys: dict[int, list[str]] = {}
    for key in keys:
        m = _BLOCK.match(key)
        if not m:
            continue
        b = int(m.group(1))
        found = blocks.setdefault(b, {})
        rest = key[len(f"{attention_block_name(b)}."):] \
            if key.startswith(f"{attention_block_name(b)}.") else None
        if rest is None:
            continue
        if rest.startswith(("v_conv.", "v_bn.")):
            v_keys.setdefault(b, []).append(key)
        for op, markers in VARIANT_KEYS.items():
            if any(rest == k or (k.endswith(".") and rest.startswith(k)) for k in markers):
                found.setdefault(op, []).append(key)
    if not blocks:
        return None, []
    ops: dict[int, str] = {}
    for b in sorted(blocks):
        found = blocks[b]
        named = [op for op in ATTENTION_NAMES if op in found]
        if len(named) > 1:
            a, c = named[:2]
            raise CheckpointError(
                f"{source}: {attention_block_name(b)} mixes {a} keys ({found[a][0]}) with {c} keys "
                f"({found[c][0]}); a block has one attention operator")
        if named == ["saformer"] and b in v_keys:
            raise CheckpointError(
                f"{source}: {attention_block_name(b)} has saformer keys ({found['saformer'][0]}) "
                f"and {v_keys[b][0]}, but saformer attention has no v branch")
        ops[b] = named[0] if named else "ssa"
    first = min(ops)
    for b in sorted(ops):
        if ops[b] != ops[first]:
            def why(i):
                return f"{blocks[i][ops[i]][0]}" if ops[i] != "ssa" else _NO_VARIANT_KEYS
            raise CheckpointError(
                f"{source}: {attention_block_name(first)} is {ops[first]} attention ({why(first)}) "
                f"but {attention_block_name(b)} is {ops[b]} ({why(b)}); a mixture of attention "
                "operators is not supported")
    op = ops[first]
    evidence = sorted({k for b in blocks for k in blocks[b].get(op, [])})
    return op, evidence


def build_model_file(config: SpikformerConfig, tensors: Mapping[str, np.ndarray], *,
                     source: str = "checkpoint", provenance: dict | None = None,
                     taw: int | None = None, pool_rows: int | None = None,
                     erode: int | None = None, dtype=np.float32,
                     architecture: str = "spikformer", what: str | None = None) -> ModelFile:
    """A validated :class:`ModelFile` from official checkpoint tensors (BatchNorm folded).

    The layers and keys are the configuration's model description's (:func:`.schema.layer_specs`:
    a token-wise linear weight as the description's checkpoint layout holds it, Conv1d k1
    ``[out, in, 1]`` by default). Each block's operator (``config.attention`` in Spikformer's own
    layout) says which operator's keys are taken for it (SPEC §4): ds2ta
    ``tau`` [4] and ``nsad_table`` [H, d+1] (integers), ssa_bin ``delta`` [H] (integers) and
    ``vbar`` [D], saformer ``dwc_conv.weight`` [D, 1, 3, 3] with ``dwc_bn.*`` (folded; no v
    branch). What a checkpoint cannot hold comes from the options: ``taw`` (ds2ta's T_AW, default
    3) and ``pool_rows`` (saformer's L, default 4); giving one for another operator is refused.
    sdsa (the Spike-driven Transformer) takes ``erode`` (1: the released code's DVS mode, its
    Erode max-pools; default 0, as its ``train.py`` runs every dataset but CIFAR10-DVS) and no
    tensor of its own (its ``talking_heads.weight`` is saved but never runs: ignored).
    Integer parameters may be integer arrays or floats with integral values.

    ``tensors`` maps keys to arrays (float arrays are read as float64). Every key must be used,
    except unused ones (``pos_embed``, LayerNorms, ``num_batches_tracked``). Float results are
    rounded once to ``dtype`` (float32 is what the file stores; float64 keeps an in-memory model
    exact). Every problem is a :class:`CheckpointError` that starts with ``source``; ``what``
    names the network in the sentence refusing an unexpected key ("a QKFormer with 1 + 1
    blocks"; default: from the configuration).
    """
    config = copy.deepcopy(config)
    try:
        check_config(config)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    try:
        blocks = block_specs(config)
        specs = layer_specs(config)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    operators = {blk.operator for blk in blocks} or {config.attention}
    op = config.attention if len(operators) == 1 else ", ".join(sorted(operators))
    taw = _option(source, op, operators, "ds2ta", "T_AW (taw)", taw, DEFAULT_TAW)
    pool_rows = _option(source, op, operators, "saformer", "the pool rows L (pool_rows)",
                        pool_rows, DEFAULT_POOL_ROWS)
    erode = _erode_option(source, op, operators, erode)
    for blk in blocks:
        if blk.operator == "saformer" and blk.geometry.tokens % pool_rows:
            raise CheckpointError(f"{source}: the pool rows L (pool_rows) {pool_rows} do not "
                                  f"divide the {blk.geometry.tokens} tokens")
    used: set[str] = set()

    def raw(key):
        if key not in tensors:
            raise CheckpointError(f"{source}: missing key {key!r}")
        used.add(key)
        return np.asarray(tensors[key])

    def take(key, shape):
        arr = raw(key)
        if tuple(arr.shape) != tuple(shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(arr.shape)}, "
                                  f"expected {tuple(shape)}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise CheckpointError(f"{source}: {key} has dtype {arr.dtype}, expected numbers")
        arr = arr.astype(np.float64, copy=False)
        if not np.all(np.isfinite(arr)):
            raise CheckpointError(f"{source}: {key} holds NaN or infinite values")
        return arr

    def take_int(key, shape):
        arr = raw(key)
        if tuple(arr.shape) != tuple(shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(arr.shape)}, "
                                  f"expected {tuple(shape)}")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise CheckpointError(f"{source}: {key} holds non-integer values")
        elif not np.issubdtype(arr.dtype, np.integer):
            raise CheckpointError(f"{source}: {key} has dtype {arr.dtype}, expected integers")
        if arr.size and (arr.min() < INT32.min or arr.max() > INT32.max):
            raise CheckpointError(f"{source}: {key} holds integers outside the int32 range")
        return arr.astype(np.int32)

    def fold(prefix, w, b, cout):
        bn = {k: take(f"{prefix}.{k}", (cout,)) for k in BN_KEYS}
        if np.any(bn["running_var"] < 0):
            raise CheckpointError(f"{source}: {prefix}.running_var has negative entries")
        return fold_batchnorm(w, b, bn["weight"], bn["bias"], bn["running_mean"],
                              bn["running_var"])

    def neuron(spec):
        return {"tau": config.tau, "theta": spec.theta, "v_reset": config.v_reset,
                "decay_input": config.decay_input}

    layers: dict[str, LayerParams] = {}
    attention: list[AttentionParams] = []
    block_iter = iter(blocks)
    for spec in specs:
        if spec.kind == "lif":  # a LIF without a synapse of its own (a membrane stream's)
            layers[spec.name] = LayerParams(spec.name, spec.kind, None, None, **neuron(spec))
            continue
        if spec.kind == "attention":
            layers[spec.name] = LayerParams(spec.name, spec.kind, None, None, **neuron(spec))
            blk = next(block_iter)  # the blocks' attention layers come in block order
            a, bop, geometry = blk.name, blk.operator, blk.geometry
            heads, d, dim = geometry.heads, geometry.head_dim, geometry.dim
            if bop in ("ssa", "token_qk"):  # QKFormer's token QK core has no parameters
                params = {}
            elif bop == "ds2ta":
                params = {"tau": take_int(f"{a}.tau", (4,)), "taw": np.asarray(taw, np.int32),
                          "nsad_table": take_int(f"{a}.nsad_table", (heads, d + 1))}
            elif bop == "ssa_bin":
                params = {"delta": take_int(f"{a}.delta", (heads,)),
                          "vbar": take(f"{a}.vbar", (dim,)).astype(dtype)}
            elif bop == "sdsa":  # no tensor: the Erode flag is the code's, not the checkpoint's
                params = {"erode": np.asarray(erode, np.int32)}
            elif bop == "saformer":  # depthwise conv (no bias) -> BN, folded like any BN
                w = take(f"{a}.dwc_conv.weight", (dim, 1, 3, 3))
                w, b = fold(f"{a}.dwc_bn", w, None, dim)
                params = {"dwc_weight": np.asarray(w[:, 0], dtype), "dwc_bias": np.asarray(b, dtype),
                          "pool_rows": np.asarray(pool_rows, np.int32)}
            else:  # an operator a model file may name whose tensors this builder cannot take yet
                raise CheckpointError(f"{source}: {a} is {bop} attention, which the model-file "
                                      "builder cannot assemble yet")
            problem = attention_problem(geometry, bop, params)
            if problem is not None:
                raise CheckpointError(f"{source}: {a}.{problem[0]} {problem[1]}")
            attention.append(AttentionParams(bop, params))
            continue
        cout, cin = spec.weight_shape[:2]
        # a token-wise linear layer as the checkpoint holds it (Conv1d k1, Conv2d k1, Linear)
        w = take(f"{spec.source}.weight", spec.tensor_shape).reshape(spec.weight_shape)
        b = take(f"{spec.source}.bias", (cout,)) if spec.conv_has_bias else None
        if spec.bn:
            w, b = fold(spec.bn, w, b, cout)
        layers[spec.name] = LayerParams(
            spec.name, spec.kind, np.asarray(w, dtype), np.asarray(b, dtype),
            stride=spec.stride, padding=spec.padding, source=spec.source, **neuron(spec))

    unexpected = sorted(k for k in tensors if k not in used and not is_ignored_key(k))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        if what is None and config.layout is None:
            what = (f"a Spikformer with {len(config.sps_channels)} SPS stages and "
                    f"{config.depth} blocks of {op} attention")
        elif what is None:
            what = (f"this model description ({len(specs) - 1} layers, {config.depth} blocks of "
                    f"{op} attention)")
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]!r}{more} for {what}")
    # the provenance travels with the file: names, not this machine's absolute paths
    return ModelFile(config, layers, architecture, portable(dict(provenance or {})),
                     attention=attention)


def _erode_option(source, op, operators, value):
    """sdsa's Erode flag: 0 when not given; refused when no block is sdsa, or not 0 or 1."""
    if "sdsa" not in operators:
        if value is not None:
            raise CheckpointError(f"{source}: the Erode flag (erode) is an sdsa parameter, but "
                                  f"the attention operator is {op}")
        return None
    if value is None:
        return 0
    if not isinstance(value, (bool, int, np.integer)) or int(value) not in (0, 1):
        raise CheckpointError(f"{source}: the Erode flag (erode) must be 0 or 1, got {value!r}")
    return int(value)


def _option(source, op, operators, owner, label, value, default):
    """An operator's option: its default when not given; refused when no block is ``owner``'s
    (``op``: the operators, as a sentence names them)."""
    if owner not in operators:
        if value is not None:
            raise CheckpointError(f"{source}: {label} is a {owner} parameter, but the attention "
                                  f"operator is {op}")
        return None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CheckpointError(f"{source}: {label} must be an integer, got {value!r}")
    if not 1 <= value <= INT32.max:
        raise CheckpointError(f"{source}: {label} must be at least 1, got {value}")
    return int(value)
