"""The engine running the SPEC §4 attention operators (ssa_bin, ds2ta, saformer), end to end.

For each operator the engine runs, a tiny random model is calibrated so that every layer fires
(asserted), its weights, biases and operator parameters are put on a 2^-8 grid, and then:

(i) float64: the engine equals a plain numpy float64 reference of the whole forward pass written
    here from SPEC §1, §2 and §4 (dense arrays, straightforward loops, nothing shared with the
    engine's code): every layer's spikes at every step and the logits are identical, on every
    path policy (sums of grid values are exact in any order, and TASA's powers of two and
    SAFormer's pooled averages are exact too);
(ii) ``step`` (streaming, time-major) equals ``run`` (offline, layer-major) bit for bit, in float32
    and float64: spikes, logits, membranes and every op counter;
(iii) the op counters of the operator's own kinds (compare, lut, shift, attention entries, the
    attention core's ac and SAFormer's mac) are non-zero and equal what the reference counts.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_every_layer_fires, record_spikes
from conftest import drive as drive_steps

from eventformer.bench.calibrate import calibrate, random_model
from eventformer.errors import EventformerError
from eventformer.layers import ATTENTION_OPERATORS, PathPolicy
from eventformer.layers.attention import (BinaryAttentionLIF, NsadAttentionLIF,
                                          SaformerAttentionLIF)
from eventformer.layers.synapses import TasaLinearLIF
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.models.config import ATTENTION_OPERATOR_NAMES, sps_suffix

GRID = 2.0 ** -8
EMPTY = np.empty(0, np.int32)
OPERATORS = [op for op in ("ssa_bin", "ds2ta", "saformer") if op in ATTENTION_OPERATORS]


def config_for(op: str) -> SpikformerConfig:
    return SpikformerConfig(image_size=32, sps_channels=(16, 32), sps_pool=(True, True), dim=32,
                            heads=4, depth=2, mlp_hidden=128, num_classes=5, steps=10,
                            attention=op)


# --------------------------------------------------------------------------------------------
# inputs and models
# --------------------------------------------------------------------------------------------


def frames_of(rng, steps: int, size: int, events: int, empty=()) -> np.ndarray:
    """[T, 2, size, size] counts: a blob that moves plus noise; the steps in ``empty`` have none."""
    frames = np.zeros((steps, 2, size, size), np.int64)
    for t in range(steps):
        if t in empty:
            continue
        cx = size / 2 + size / 4 * np.sin(t / 3)
        x = np.clip(cx + rng.normal(0, size / 6, events), 0, size - 1).astype(int)
        y = np.clip(size / 2 + rng.normal(0, size / 5, events), 0, size - 1).astype(int)
        np.add.at(frames[t], (rng.integers(0, 2, events), y, x), 1)
    return frames


def to_events(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[C, H, W] counts -> the engine's HWC event list."""
    flat = frame.transpose(1, 2, 0).reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int32)
    return idx, flat[idx].astype(np.int32)


def on_grid(a) -> np.ndarray:
    return (np.round(np.asarray(a, np.float64) / GRID) * GRID).astype(np.float32)


def grid_model(op: str, seed: int = 0, grid: bool = True):
    """A calibrated random model of ``op`` with every float on the 2^-8 grid (``grid``; else
    the calibrated float32 values as they are), and its input."""
    cfg = config_for(op)
    model = random_model(cfg, seed)
    rng = np.random.default_rng(seed)
    for b, att in enumerate(model.attention):  # operator parameters that make a difference
        p = att.params
        if op == "ssa_bin":
            p["delta"] = np.array([0, 1, 2, 0][:cfg.heads], np.int32)
            p["vbar"] = on_grid(rng.uniform(0.0, 1.5, cfg.dim))
        elif op == "ds2ta":
            p["tau"] = np.array([1, 2, 0, 3], np.int32)
            p["taw"] = np.asarray(3, np.int32)
            table = rng.integers(-2, 6, (cfg.heads, cfg.head_dim + 1)).astype(np.int32)
            table[:, 0] = 0
            table[:, 1] = [0, 1, 0, 2][:cfg.heads]  # heads that denoise single-channel pairs
            p["nsad_table"] = table
        elif op == "saformer":
            p["dwc_weight"] = on_grid(3 * np.asarray(p["dwc_weight"]))
            p["dwc_bias"] = on_grid(np.asarray(p["dwc_bias"]) + 0.25)
    frames = [frames_of(np.random.default_rng(seed + 10 + s), cfg.steps, 32, 150)
              for s in range(2)]
    samples = [[to_events(f) for f in fr] for fr in frames]
    model = calibrate(model, samples, 0.2, seed=seed)
    if not grid:
        return model
    for p in model.layers.values():
        if p.weight is not None:
            p.weight = on_grid(p.weight)
            p.bias = on_grid(p.bias)
    return model


@pytest.fixture(scope="module", params=OPERATORS)
def case(request):
    op = request.param
    model = grid_model(op)
    # empty steps at the start, in the middle and at the end: quiet paths and TASA's skipped history
    frames = frames_of(np.random.default_rng(99), 12, 32, 150, empty=(0, 5, 6, 11))
    return op, model, frames, reference(model, frames)


# --------------------------------------------------------------------------------------------
# the numpy float64 reference (SPEC §1, §2, §4), layer-major over the whole sample
# --------------------------------------------------------------------------------------------


def lif_run(currents: np.ndarray, p) -> np.ndarray:
    """SpikingJelly LIF over [T, ...] currents, V0 = 0: H = V + (X - V) * (1/tau), S = H >= theta,
    hard reset to v_reset. Returns the 0/1 spikes [T, ...]."""
    assert p.decay_input and p.v_reset is not None
    v = np.zeros(currents.shape[1:])
    out = np.zeros(currents.shape, np.int64)
    inv = 1.0 / p.tau
    for t in range(currents.shape[0]):
        h = v + (currents[t] - v) * inv
        s = h >= p.theta
        out[t] = s
        v = np.where(s, p.v_reset, h)
    return out


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [Cin, H, W], w [Cout, Cin, 3, 3], padding 1, plus bias -> [Cout, H, W]."""
    cin, h, wd = x.shape
    xp = np.zeros((cin, h + 2, wd + 2))
    xp[:, 1:-1, 1:-1] = x
    out = np.zeros((w.shape[0], h, wd))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("oc,chw->ohw", w[:, :, ky, kx], xp[:, ky:ky + h, kx:kx + wd])
    return out + b[:, None, None]


def maxpool(x: np.ndarray) -> np.ndarray:
    """MaxPool2d(3, 2, 1) of [C, H, W]."""
    c, h, w = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = np.full((c, h + 2, w + 2), -np.inf)
    xp[:, 1:-1, 1:-1] = x
    out = np.empty((c, ho, wo))
    for y in range(ho):
        for xx in range(wo):
            out[:, y, xx] = xp[:, 2 * y:2 * y + 3, 2 * xx:2 * xx + 3].max(axis=(1, 2))
    return out


def heads_of(x: np.ndarray, heads: int):
    d = x.shape[1] // heads
    return [x[:, h * d:(h + 1) * d] for h in range(heads)]


def ssa_bin_core(q, k, v, heads, scale, params, ops):
    """SPEC §4 SSA_Bin on dense [N, D]: B = 1(Q K^T > delta_h), Y = (B V - vbar) * scale."""
    y = np.zeros(q.shape)
    d = q.shape[1] // heads
    for h, (qh, kh, vh) in enumerate(zip(*(heads_of(m, heads) for m in (q, k, v)))):
        counts = qh @ kh.T
        b = (counts > params["delta"][h]).astype(np.int64)
        y[:, h * d:(h + 1) * d] = b @ vh
        formed = counts > 0
        ops["compare"] += int(formed.sum())
        ops["attn_entries"] += int(formed.sum())
        ops["attn_nonzero"] += int(b.sum())
        ops["ac"] += int(counts.sum()) + int((b * vh.sum(axis=1)[None, :]).sum())
    return (y - params["vbar"].astype(np.float64)[None, :]) * scale


def nsad_core(q, k, v, heads, scale, params, ops):
    """SPEC §4 NSAD on dense [N, D]: A = AD_h[Q K^T] per entry, Y = (A V) * scale."""
    y = np.zeros(q.shape)
    d = q.shape[1] // heads
    table = params["nsad_table"].astype(np.int64)
    for h, (qh, kh, vh) in enumerate(zip(*(heads_of(m, heads) for m in (q, k, v)))):
        counts = qh @ kh.T
        a = np.zeros_like(counts)
        n = counts.shape[0]
        for i in range(n):
            for j in range(n):
                a[i, j] = table[h, int(counts[i, j])]
        y[:, h * d:(h + 1) * d] = a @ vh
        formed = counts > 0
        ops["lut"] += int(formed.sum())
        ops["attn_entries"] += int(formed.sum())
        ops["attn_nonzero"] += int(np.count_nonzero(a))
        ops["ac"] += int(counts.sum()) + int((np.abs(a) * vh.sum(axis=1)[None, :]).sum())
    return y * scale


def saformer_core(q, k, side, scale, params, ops):
    """SPEC §4 SASA + DWC on dense [N, D]: Y = scale * (K * a) + DWC(K)."""
    n, dim = q.shape
    rows = int(params["pool_rows"])
    qa = np.zeros((rows, dim))
    ka = np.zeros((rows, dim))
    for r in range(rows):
        lo, hi = (r * n) // rows, -((-(r + 1) * n) // rows)
        qa[r] = q[lo:hi].sum(axis=0) / (hi - lo)
        ka[r] = k[lo:hi].sum(axis=0) / (hi - lo)
    a = (qa * ka).sum(axis=0)
    w = params["dwc_weight"].astype(np.float64)
    bias = params["dwc_bias"].astype(np.float64)
    kg = k.T.reshape(dim, side, side)  # token n = row * side + col
    dwc = np.zeros((dim, side, side))
    taps = 0
    for c in range(dim):
        for y in range(side):
            for x in range(side):
                total = bias[c]
                for ky in range(3):
                    for kx in range(3):
                        iy, ix = y + ky - 1, x + kx - 1
                        if 0 <= iy < side and 0 <= ix < side:
                            total += w[c, ky, kx] * kg[c, iy, ix]
                            taps += int(kg[c, iy, ix])
                dwc[c, y, x] = total
    ops["ac"] += taps
    if q.any() and k.any():  # the gate: pooling counts, one add per K spike, 3 L D + D products
        for r in range(rows):  # each spike counted once per pooled row holding its token
            lo, hi = (r * n) // rows, -((-(r + 1) * n) // rows)
            ops["ac"] += int(q[lo:hi].sum()) + int(k[lo:hi].sum())
        ops["ac"] += int(k.sum())
        ops["mac"] += 3 * rows * dim + dim
    return scale * (k * a[None, :]) + dwc.reshape(dim, n).T


def tasa(js: list, tau: int, taw: int, bias: np.ndarray, live: list, ops) -> list:
    """SPEC §4 TASA: I_t = sum_{m=0}^{T_AW-1} J_{t-m} 2^(-tau m) + b' (J = 0 before the start);
    one shift per element of a decayed earlier current (steps without input have J = 0 and
    are not decayed)."""
    out = []
    for t in range(len(js)):
        total = np.zeros_like(js[t])
        for m in range(taw):
            if t - m < 0:
                continue
            total = total + js[t - m] * 2.0 ** (-tau * m)
            if m > 0 and live[t - m]:
                ops["shift"] += js[t - m].size
        out.append(total + bias)
    return out


def reference(model, frames: np.ndarray):
    """The whole forward pass in float64: (logits, {layer: [T] spike index arrays in the engine's
    layout}, {layer: op counts of the operator's own kinds})."""
    cfg = model.config
    L = model.layers
    T = frames.shape[0]
    spikes: dict[str, list[np.ndarray]] = {}
    ops: dict[str, dict[str, int]] = {}

    def record(name, s):  # s [T, C, H, W] (HWC layout) or [T, N, D]
        if s.ndim == 4:
            s = s.transpose(0, 2, 3, 1)
        spikes[name] = [np.flatnonzero(s[t].reshape(-1)) for t in range(T)]

    x = frames.astype(np.float64)
    for i, pooled in enumerate(cfg.sps_pool):
        p = L[f"patch_embed.proj_lif{sps_suffix(i)}"]
        w, b = p.weight.astype(np.float64), p.bias.astype(np.float64)
        s = lif_run(np.stack([conv3x3(x[t], w, b) for t in range(T)]), p)
        record(p.name, s)
        x = np.stack([maxpool(s[t]) for t in range(T)]) if pooled else s.astype(np.float64)
    p = L["patch_embed.rpe_lif"]
    w, b = p.weight.astype(np.float64), p.bias.astype(np.float64)
    s = lif_run(np.stack([conv3x3(x[t], w, b) for t in range(T)]), p)
    record(p.name, s)
    x = x + s
    side = x.shape[-1]
    x = x.reshape(T, cfg.dim, side * side).transpose(0, 2, 1)  # [T, N, D]

    def linear_lif(name, inp, tasa_params=None, block_ops=None):
        p = L[name]
        w, b = p.weight.astype(np.float64), p.bias.astype(np.float64)
        if tasa_params is None:
            cur = np.stack([inp[t] @ w.T + b for t in range(T)])
        else:
            tau, taw = tasa_params
            live = [bool(inp[t].any()) for t in range(T)]
            js = [inp[t] @ w.T for t in range(T)]
            cur = np.stack(tasa(js, tau, taw, b[None, :], live, block_ops))
        s = lif_run(cur, p)
        record(name, s)
        return s.astype(np.float64)

    for blk, att in enumerate(model.attention):
        a = f"block.{blk}.attn"
        params = att.params
        o = {"ac": 0, "mac": 0, "compare": 0, "lut": 0, "shift": 0, "attn_entries": 0,
             "attn_nonzero": 0}
        tasa_o = {"shift": 0}
        if cfg.attention == "ds2ta":
            tau = [int(v) for v in params["tau"]]
            taw = int(params["taw"])
            per = [(tau[i], taw) for i in range(4)]
        else:
            per = [None] * 4
        q = linear_lif(f"{a}.q_lif", x, per[0], tasa_o)
        k = linear_lif(f"{a}.k_lif", x, per[1], tasa_o)
        if cfg.attention != "saformer":
            v = linear_lif(f"{a}.v_lif", x, per[2], tasa_o)
        ys = []
        for t in range(T):
            if cfg.attention == "ssa_bin":
                ys.append(ssa_bin_core(q[t], k[t], v[t], cfg.heads, cfg.scale, params, o))
            elif cfg.attention == "ds2ta":
                ys.append(nsad_core(q[t], k[t], v[t], cfg.heads, cfg.scale, params, o))
            else:
                ys.append(saformer_core(q[t], k[t], side, cfg.scale, params, o))
        p = L[f"{a}.attn_lif"]
        s = lif_run(np.stack(ys), p)
        record(p.name, s)
        ops[p.name] = o
        out = linear_lif(f"{a}.proj_lif", s.astype(np.float64), per[3], tasa_o)
        ops[a] = tasa_o  # the TASA shifts of the block's q, k, v and proj together
        x = x + out
        m = f"block.{blk}.mlp"
        h = linear_lif(f"{m}.fc1_lif", x)
        x = x + linear_lif(f"{m}.fc2_lif", h)
    head = L["head"]
    features = x.mean(axis=1).mean(axis=0)
    logits = head.weight.astype(np.float64) @ features + head.bias.astype(np.float64)
    return logits, spikes, ops


# --------------------------------------------------------------------------------------------
# the engine, with every layer's spikes recorded
# --------------------------------------------------------------------------------------------




def drive(engine: Spikformer, frames: np.ndarray, path: str) -> np.ndarray:
    """:func:`conftest.drive` on dense frames, made event lists first."""
    return drive_steps(engine, [to_events(f) for f in frames], path)


# --------------------------------------------------------------------------------------------
# (i) float64 against the reference; (iii) the operator's op counts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["run", "step"])
@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
def test_float64_equals_numpy_reference(case, mode, path):
    op, model, frames, (ref_logits, ref_spikes, ref_ops) = case
    engine = Spikformer(model, dtype="float64", policy=PathPolicy(mode=mode))
    store = record_spikes(engine)
    logits = drive(engine, frames, path)
    stats = engine.layer_stats()
    assert_every_layer_fires(stats)
    names = [layer.name for layer in engine.layers]
    assert set(names) == set(ref_spikes)
    for name in names:
        got, want = store[name], ref_spikes[name]
        assert len(got) == len(want) == frames.shape[0]
        for t in range(frames.shape[0]):
            np.testing.assert_array_equal(got[t], want[t], err_msg=f"{op} {name} step {t}")
    np.testing.assert_array_equal(logits, ref_logits)
    check_op_counts(op, engine, ref_ops)


def check_op_counts(op: str, engine: Spikformer, ref_ops: dict) -> None:
    stats = {s["name"]: s for s in engine.layer_stats()}
    kinds = {"ssa_bin": ("compare", "attn_entries", "attn_nonzero", "ac"),
             "ds2ta": ("lut", "attn_entries", "attn_nonzero", "ac"),
             "saformer": ("ac", "mac")}[op]
    for b in range(engine.config.depth):
        name = f"block.{b}.attn.attn_lif"
        for kind in kinds:
            assert stats[name][kind] == ref_ops[name][kind] > 0, (name, kind)
        others = {"compare", "lut", "shift"} - set(kinds)
        assert all(stats[name][k] == 0 for k in others), name
        if op != "saformer":
            assert stats[name]["mac"] == 0
        tasa_layers = [f"block.{b}.attn.{n}_lif" for n in ("q", "k", "v", "proj")]
        shifts = sum(stats[n]["shift"] for n in tasa_layers if n in stats)
        if op == "ds2ta":
            assert shifts == ref_ops[f"block.{b}.attn"]["shift"] > 0
            for n in tasa_layers:
                assert stats[n]["shift"] > 0, n
        else:
            assert shifts == 0
    assert all(s["shift"] == 0 for n, s in stats.items() if ".attn." not in n)


# --------------------------------------------------------------------------------------------
# (ii) step == run, bit for bit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
def test_step_equals_run_bit_identical(case, dtype, mode):
    op, model, frames, _ = case
    runs = {}
    # offline, a linear layer whose dense steps share one GEMM goes dense from a lower density
    # (layers.base.LINEAR_DENSE_ABOVE) than step() does; with the band pinned both take the same
    # path each step, so float32 too is bit-identical (the lower edge: test_offline_linear_edge)
    band = (0.0, 0.45) if mode == "auto" else None
    for path in ("run", "step"):
        engine = Spikformer(model, dtype=dtype, policy=PathPolicy(mode=mode, gather_band=band))
        store = record_spikes(engine)
        logits = drive(engine, frames, path)
        runs[path] = (logits, store, engine.layer_stats(),
                      {layer.name: layer.neurons.v.copy() for layer in engine.layers})
    (l1, s1, st1, v1), (l2, s2, st2, v2) = runs["run"], runs["step"]
    assert l1.dtype == np.dtype(dtype) and l1.tobytes() == l2.tobytes()
    assert st1 == st2
    assert_every_layer_fires(st1)
    for name in s1:
        for t, (a, b) in enumerate(zip(s1[name], s2[name], strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"{op} {name} step {t}")
        assert v1[name].tobytes() == v2[name].tobytes(), name


def test_streaming_in_pieces_equals_one_run(case):
    """A stream that resets once and then steps through two halves of the sample (state, the
    TASA window included, carried across) equals the offline run; a reset forgets the window."""
    _, model, frames, _ = case
    xs = [to_events(f) for f in frames]
    offline = Spikformer(model, dtype="float32")
    want = offline.run(xs)
    stream = Spikformer(model, dtype="float32")
    stream.run(xs[::-1])  # some other sample first: reset must forget it
    stream.reset()
    for idx, cnt in xs[:5]:
        stream.step(idx, cnt)
    for idx, cnt in xs[5:]:
        stream.step(idx, cnt)
    assert stream.logits().tobytes() == want.tobytes()


def test_float32_is_close_to_float64(case):
    """float32 on the grid model stays close to the float64 reference."""
    _, model, frames, (ref_logits, _, _) = case
    engine = Spikformer(model, dtype="float32")
    np.testing.assert_allclose(drive(engine, frames, "run"), ref_logits, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# quiet steps and refusal
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPERATORS)
def test_long_empty_run_does_no_attention_work(op):
    """Biases below threshold: 300 empty steps cost no accumulate, compare, look-up or shift;
    the membranes settle and their steps are skipped, as for SSA."""
    model = random_model(config_for(op), seed=0)
    for att in model.attention:  # nothing fires, so nothing pairs: keep the unpaired current low
        if op == "ssa_bin":
            att.params["vbar"] = np.full(model.config.dim, 0.5, np.float32)
        if op == "saformer":
            att.params["dwc_bias"] = np.full(model.config.dim, 0.25, np.float32)
    engine = Spikformer(model, dtype="float32")
    engine.reset()
    for _ in range(300):
        engine.step(EMPTY, EMPTY)
    for s in engine.layer_stats()[:-1]:
        for kind in ("ac", "mac", "dense_mac", "compare", "lut", "shift", "attn_entries",
                     "spikes"):
            assert s[kind] == 0, (s["name"], kind)
    assert all(layer.neurons._settled for layer in engine.layers)


@pytest.mark.parametrize("op", ["ssa_bin", "ds2ta", "saformer"])
def test_an_operator_the_engine_lacks_is_refused_in_one_sentence(op, monkeypatch):
    """Every operator a model file can name runs; one taken out of the registry (as in a build
    that lacks it) is refused when the engine is built, in one sentence naming the others."""
    model = random_model(config_for(op), seed=0)
    Spikformer(model)
    monkeypatch.delitem(ATTENTION_OPERATORS, op)
    with pytest.raises(EventformerError, match=rf"ssa.*'{op}' is not implemented") as exc:
        Spikformer(model)
    assert "\n" not in str(exc.value)


def test_every_operator_a_model_file_can_name_is_registered():
    assert set(ATTENTION_OPERATORS) == set(ATTENTION_OPERATOR_NAMES)


# --------------------------------------------------------------------------------------------
# layer level: TASA over steps without input, the attention cores' shortcut for empty Q or K
# --------------------------------------------------------------------------------------------


def _lif_params(name, theta=1.0):
    return SimpleNamespace(name=name, tau=2.0, theta=theta, v_reset=0.0, decay_input=True)


@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
@pytest.mark.parametrize("taw,tau", [(1, 2), (3, 2), (4, 1), (2, 0)])
def test_tasa_layer_over_quiet_steps(taw, tau, mode):
    """A TASA layer fed bursts separated by runs of empty steps (shorter and longer than the
    window): every step's spikes equal the SPEC formula's (float64, grid weights), empty
    steps' currents are not decayed or counted, the window empties and the membranes settle
    on the bias alone; step() and run_steps() agree to the bit, also in float32."""
    rng = np.random.default_rng(taw * 10 + tau)
    tokens, cin, cout = 16, 8, 12
    weight = on_grid(rng.uniform(-1, 1, (cout, cin)) * 2).astype(np.float64)
    bias = on_grid(rng.uniform(0.2, 0.9, cout)).astype(np.float64)  # below threshold alone
    p = SimpleNamespace(name="tasa", weight=weight, bias=bias, tau=2.0, theta=1.0, v_reset=0.0,
                        decay_input=True)
    busy = [0, 1, 2, 5, 6, 12, 40, 41]
    xs = []
    steps = 120
    dense = np.zeros((steps, tokens, cin), np.int64)
    for t in range(steps):
        if t in busy:
            dense[t] = (rng.random((tokens, cin)) < 0.5) * rng.integers(1, 3, (tokens, cin))
        idx = np.flatnonzero(dense[t].reshape(-1)).astype(np.int32)
        xs.append((idx, dense[t].reshape(-1)[idx].astype(np.int32)))
    ops = {"shift": 0}
    live = [bool(dense[t].any()) for t in range(steps)]
    cur = tasa([dense[t] @ weight.T for t in range(steps)], tau, taw, bias[None, :], live, ops)
    want = lif_run(np.stack(cur), p)
    results = {}
    for dtype in (np.float64, np.float32):
        for path in ("step", "run"):
            layer = TasaLinearLIF(p, tokens, dtype=dtype, input_kind="integers",
                                  policy=PathPolicy(mode=mode), tau=tau, taw=taw)
            layer.run_steps(xs[::-1])  # another sample first: reset must forget its window
            layer.reset()
            layer.clear_stats()
            out = ([layer.step(i, c) for i, c in xs] if path == "step"
                   else layer.run_steps(xs))
            results[dtype, path] = ([o[0] for o in out], layer.stats(), layer.neurons.v.copy())
            assert layer.neurons._settled  # quiet since step 42: the window emptied, it settled
    for t in range(steps):
        np.testing.assert_array_equal(results[np.float64, "step"][0][t],
                                      np.flatnonzero(want[t].reshape(-1)), err_msg=f"step {t}")
    assert want.sum() > 0 and results[np.float64, "step"][1]["shift"] == ops["shift"]
    assert (ops["shift"] > 0) == (taw > 1)
    for dtype in (np.float64, np.float32):
        a, b = results[dtype, "step"], results[dtype, "run"]
        assert a[1] == b[1] and a[2].tobytes() == b[2].tobytes()
        for x, y in zip(a[0], b[0], strict=True):
            np.testing.assert_array_equal(x, y)


def _cores(dtype, tokens=16, dim=32, heads=4):
    """(operator, a maker of its core): two calls make two identical cores."""
    rng = np.random.default_rng(3)
    d = dim // heads
    table = rng.integers(-2, 6, (heads, d + 1))
    table[:, 0] = 0
    vbar = on_grid(rng.uniform(-1, 1, dim))
    dwc_weight = on_grid(rng.uniform(-1, 1, (dim, 3, 3)))
    dwc_bias = on_grid(rng.uniform(-1, 1.5, dim))
    lif = _lif_params("attn", 0.5)
    yield "ssa_bin", lambda: BinaryAttentionLIF(lif, tokens, dim, heads, 0.25, dtype=dtype,
                                                delta=np.array([0, 1, 2, 0]), vbar=vbar)
    yield "ds2ta", lambda: NsadAttentionLIF(lif, tokens, dim, heads, 0.25, dtype=dtype,
                                            table=table)
    yield "saformer", lambda: SaformerAttentionLIF(lif, tokens, dim, 4, 0.25, dtype=dtype,
                                                   dwc_weight=dwc_weight, dwc_bias=dwc_bias,
                                                   pool_rows=4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_cores_without_pairs_count_what_the_kernel_counts(dtype):
    """Every combination of empty and non-empty Q, K (and V) over many steps: a core that skips
    its kernel when nothing pairs (SSA_Bin, NSAD: empty Q or K; SAFormer: empty K) and one that
    always runs it agree on spikes, membranes and counters, and the skip did happen."""
    tokens, dim = 16, 32
    for op, make in _cores(dtype, tokens, dim):
        fast, full = make(), make()
        full._nothing_to_attend = lambda *n: False
        rng = np.random.default_rng(1)
        skipped = 0
        for step in range(24):
            lists = []
            for m in range(3):
                if (step >> m) & 1:
                    lists.append(EMPTY)
                else:
                    n = int(rng.integers(1, 450))
                    lists.append(np.sort(rng.choice(tokens * dim, n, replace=False))
                                 .astype(np.int32))
            args = lists if op != "saformer" else lists[:2]
            skipped += fast._nothing_to_attend(*(a.shape[0] for a in args))
            np.testing.assert_array_equal(fast.attend(*args), full.attend(*args),
                                          err_msg=f"{op} step {step}")
            assert fast.neurons.v.tobytes() == full.neurons.v.tobytes(), (op, step)
            np.testing.assert_array_equal(fast.counters, full.counters, err_msg=op)
        assert skipped > 0 and fast.spikes_total > 0, op


def test_operator_parameters_are_not_shared_with_the_model_file(case):
    """The engine copies what it needs: editing the model afterwards changes nothing."""
    _, model, frames, _ = case
    model = copy.deepcopy(model)
    want = drive(Spikformer(model, dtype="float32"), frames, "run")
    engine = Spikformer(model, dtype="float32")
    for att in model.attention:
        for value in att.params.values():
            if np.ndim(value):
                value[...] = 0
    assert drive(engine, frames, "run").tobytes() == want.tobytes()
