"""Model files of the SPEC §4 variants (ds2ta, ssa_bin, saformer): export from checkpoints with the
SPEC's keys, format version 2 on disk, validation sentences, version 1 files, inspect, and the
engine's refusal of operators it does not run yet.

The checkpoints are built here from plain torch tensors under the SPEC's key names (tiny layout:
image 32, SPS (16, 32), D 32, 4 heads of 8, depth 2, 5 classes), and the expected folded arrays
are computed here too, in torch float64, independently of the exporter."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from eventformer.errors import CheckpointError, ModelFileError
from eventformer.modelfile import detect_attention, load, save
from eventformer.modelfile.export import export_checkpoint

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from eventformer_cli.main import app  # noqa: E402

runner = CliRunner()
D, HEADS, HEAD_DIM, DEPTH, CLASSES, HIDDEN, TOKENS = 32, 4, 8, 2, 5, 128, 64
VARIANTS = ("ssa", "ds2ta", "ssa_bin", "saformer")
EPS = 1e-5


def _bn(sd, prefix, n, g):
    sd[f"{prefix}.weight"] = torch.rand(n, generator=g) + 0.5
    sd[f"{prefix}.bias"] = torch.randn(n, generator=g) * 0.3
    sd[f"{prefix}.running_mean"] = torch.randn(n, generator=g) * 0.3
    sd[f"{prefix}.running_var"] = torch.rand(n, generator=g) + 0.5
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def make_state(variant: str = "ssa", seed: int = 0, blocks: tuple[str, ...] | None = None) -> dict:
    """A tiny checkpoint state_dict with SPEC key names; ``blocks`` gives each block's variant."""
    blocks = blocks or (variant,) * DEPTH
    g = torch.Generator().manual_seed(seed)
    sd = {"pos_embed": torch.zeros(1, TOKENS, D)}
    cin = 2
    for i, c in enumerate((16, D)):
        s = "" if i == 0 else str(i)
        sd[f"patch_embed.proj_conv{s}.weight"] = torch.randn(c, cin, 3, 3, generator=g) * 0.2
        _bn(sd, f"patch_embed.proj_bn{s}", c, g)
        cin = c
    sd["patch_embed.rpe_conv.weight"] = torch.randn(D, D, 3, 3, generator=g) * 0.1
    _bn(sd, "patch_embed.rpe_bn", D, g)
    for b, var in enumerate(blocks):
        a, m = f"block.{b}.attn", f"block.{b}.mlp"
        sd[f"block.{b}.norm1.weight"] = torch.ones(D)
        for n in ("q", "k") if var == "saformer" else ("q", "k", "v"):
            sd[f"{a}.{n}_conv.weight"] = torch.randn(D, D, 1, generator=g) * 0.2
            _bn(sd, f"{a}.{n}_bn", D, g)
        sd[f"{a}.proj_conv.weight"] = torch.randn(D, D, 1, generator=g) * 0.2
        sd[f"{a}.proj_conv.bias"] = torch.randn(D, generator=g) * 0.1
        _bn(sd, f"{a}.proj_bn", D, g)
        if var == "ds2ta":
            sd[f"{a}.tau"] = torch.tensor([2, 1, 3, 0])
            table = torch.randint(-2, 20, (HEADS, HEAD_DIM + 1), generator=g)
            table[:, 0] = 0
            sd[f"{a}.nsad_table"] = table
        elif var == "ssa_bin":
            sd[f"{a}.delta"] = torch.tensor([0, 1, 2, 0])
            sd[f"{a}.vbar"] = torch.randn(D, generator=g)
        elif var == "saformer":
            sd[f"{a}.dwc_conv.weight"] = torch.randn(D, 1, 3, 3, generator=g) * 0.3
            _bn(sd, f"{a}.dwc_bn", D, g)
        sd[f"{m}.fc1_conv.weight"] = torch.randn(HIDDEN, D, 1, generator=g) * 0.2
        sd[f"{m}.fc1_conv.bias"] = torch.randn(HIDDEN, generator=g) * 0.1
        _bn(sd, f"{m}.fc1_bn", HIDDEN, g)
        sd[f"{m}.fc2_conv.weight"] = torch.randn(D, HIDDEN, 1, generator=g) * 0.2
        sd[f"{m}.fc2_conv.bias"] = torch.randn(D, generator=g) * 0.1
        _bn(sd, f"{m}.fc2_bn", D, g)
    sd["head.weight"] = torch.randn(CLASSES, D, generator=g) * 0.2
    sd["head.bias"] = torch.randn(CLASSES, generator=g) * 0.1
    return sd


def fold(sd, conv, bn):
    """Independent BatchNorm fold in torch float64, rounded once to float32."""
    w = sd[f"{conv}.weight"].double()
    b = sd[f"{conv}.bias"].double() if f"{conv}.bias" in sd else torch.zeros(w.shape[0],
                                                                             dtype=torch.float64)
    g = sd[f"{bn}.weight"].double() / torch.sqrt(sd[f"{bn}.running_var"].double() + EPS)
    w = w * g.reshape(-1, *([1] * (w.dim() - 1)))
    b = sd[f"{bn}.bias"].double() + (b - sd[f"{bn}.running_mean"].double()) * g
    return w.float().numpy(), b.float().numpy()


def write(tmp_path, sd, name="ckpt.pth"):
    path = tmp_path / name
    torch.save({"model": sd}, path)
    return path


def export(path, **kw):
    return export_checkpoint(path, heads=HEADS, steps=8, **kw)


def one_sentence(exc_info, start):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.startswith(start), msg
    return msg


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


# --------------------------------------------------------------------------------------------------
# Export round trip and detection
# --------------------------------------------------------------------------------------------------


def test_round_trip_matches_an_independent_fold(variant, tmp_path):
    sd = make_state(variant, seed=1)
    model, report = export(write(tmp_path, sd))
    assert report.attention["operator"] == variant and report.attention["from"] == "keys"
    save(tmp_path / "m.h5", model)
    back = load(tmp_path / "m.h5")
    assert back.format_version == 2 and back.config.attention == variant
    assert back.config == model.config
    branches = ("q", "k") if variant == "saformer" else ("q", "k", "v")
    expected_layers = {"patch_embed.proj_lif", "patch_embed.proj_lif1", "patch_embed.rpe_lif",
                       "head"}
    for b in range(DEPTH):
        expected_layers |= {f"block.{b}.attn.{n}_lif" for n in (*branches, "attn", "proj")}
        expected_layers |= {f"block.{b}.mlp.fc1_lif", f"block.{b}.mlp.fc2_lif"}
    assert set(back.layers) == expected_layers
    for name, p in back.layers.items():
        if p.weight is None:
            continue
        if name == "head":
            np.testing.assert_array_equal(p.weight, sd["head.weight"].numpy())
            np.testing.assert_array_equal(p.bias, sd["head.bias"].numpy())
            continue
        w, b = fold(sd, p.source, p.source.replace("_conv", "_bn"))
        np.testing.assert_array_equal(p.weight, w[:, :, 0] if p.kind == "linear" else w, name)
        np.testing.assert_array_equal(p.bias, b, name)
    assert len(back.attention) == DEPTH
    for b, att in enumerate(back.attention):
        a = f"block.{b}.attn"
        assert att.operator == variant
        params = att.params
        if variant == "ssa":
            assert params == {}
        elif variant == "ds2ta":
            assert set(params) == {"tau", "taw", "nsad_table"}
            assert params["tau"].dtype == np.int32 and params["tau"].tolist() == [2, 1, 3, 0]
            assert int(params["taw"]) == 3
            np.testing.assert_array_equal(params["nsad_table"], sd[f"{a}.nsad_table"].numpy())
            assert params["nsad_table"].dtype == np.int32
        elif variant == "ssa_bin":
            assert params["delta"].dtype == np.int32 and params["delta"].tolist() == [0, 1, 2, 0]
            np.testing.assert_array_equal(params["vbar"], sd[f"{a}.vbar"].numpy())
        else:
            w, bias = fold(sd, f"{a}.dwc_conv", f"{a}.dwc_bn")
            np.testing.assert_array_equal(params["dwc_weight"], w[:, 0])
            np.testing.assert_array_equal(params["dwc_bias"], bias)
            assert int(params["pool_rows"]) == 4
    with h5py.File(tmp_path / "m.h5") as f:  # version 2 on disk, integers as integer dtypes
        assert f.attrs["format_version"] == 2
        g = f["attention/block.1.attn"]
        assert g.attrs["operator"] == variant
        for key in g:
            kind = g[key].dtype.kind
            assert kind == ("i" if key in ("tau", "taw", "nsad_table", "delta", "pool_rows")
                            else "f"), key


@pytest.mark.parametrize("variant", VARIANTS)
def test_detection_from_keys(variant):
    op, keys = detect_attention(make_state(variant), "c.pth")
    assert op == variant
    markers = {"ssa": set(), "ds2ta": {"tau", "nsad_table"}, "ssa_bin": {"delta", "vbar"},
               "saformer": {"dwc_conv.weight", "dwc_bn.weight", "dwc_bn.bias",
                            "dwc_bn.running_mean", "dwc_bn.running_var",
                            "dwc_bn.num_batches_tracked"}}[variant]
    assert set(keys) == {f"block.{b}.attn.{k}" for b in range(DEPTH) for k in markers}


def test_detection_without_blocks():
    assert detect_attention({"head.weight": None, "patch_embed.proj_conv.weight": None}) == (None, [])


def test_attention_option_agreeing_with_keys(tmp_path):
    model, report = export(write(tmp_path, make_state("ssa_bin")), attention="ssa_bin")
    assert report.attention["from"] == "keys and option" and model.config.attention == "ssa_bin"


def test_options_taw_and_pool_rows_are_stored(tmp_path):
    model, report = export(write(tmp_path, make_state("ds2ta")), taw=5)
    assert [int(a.params["taw"]) for a in model.attention] == [5, 5]
    assert report.attention["options"] == {"taw": {"value": 5, "from": "option"}}
    model, report = export(write(tmp_path, make_state("saformer")), pool_rows=8)
    assert [int(a.params["pool_rows"]) for a in model.attention] == [8, 8]
    assert report.attention["options"] == {"pool_rows": {"value": 8, "from": "option"}}


def test_integral_float_tables_are_accepted(tmp_path):
    sd = make_state("ds2ta")
    sd["block.0.attn.tau"] = sd["block.0.attn.tau"].double()
    sd["block.0.attn.nsad_table"] = sd["block.0.attn.nsad_table"].float()
    model, _ = export(write(tmp_path, sd))
    assert model.attention[0].params["tau"].dtype == np.int32
    assert model.attention[0].params["tau"].tolist() == [2, 1, 3, 0]


# --------------------------------------------------------------------------------------------------
# Export refusals: one sentence naming the checkpoint and the first problem
# --------------------------------------------------------------------------------------------------


def _refused(tmp_path, sd, match, **kw):
    with pytest.raises(CheckpointError, match=match) as exc:
        export(write(tmp_path, sd), **kw)
    return one_sentence(exc, "ckpt.pth: ")


def test_attention_option_disagreeing_with_the_keys(tmp_path):
    _refused(tmp_path, make_state("ssa"), r"--attention ds2ta, but the checkpoint's keys say ssa",
             attention="ds2ta")
    msg = _refused(tmp_path, make_state("ds2ta"), r"--attention ssa, but the checkpoint's keys say "
                   r"ds2ta", attention="ssa")
    assert "block.0.attn.nsad_table" in msg
    _refused(tmp_path, make_state("saformer"), "keys say saformer", attention="ssa_bin")


def test_unknown_attention_name(tmp_path):
    with pytest.raises(CheckpointError, match="unknown attention operator 'linear'"):
        export(write(tmp_path, make_state()), attention="linear")


@pytest.mark.parametrize("blocks", [("ds2ta", "ssa"), ("ssa", "saformer"), ("ssa_bin", "ds2ta")])
def test_mixture_across_blocks(tmp_path, blocks):
    msg = _refused(tmp_path, make_state(blocks=blocks), "a mixture of attention operators")
    assert f"block.0.attn is {blocks[0]}" in msg and f"block.1.attn is {blocks[1]}" in msg


def test_mixture_within_a_block(tmp_path):
    sd = make_state("ds2ta")
    sd["block.1.attn.delta"] = torch.tensor([0, 0, 0, 0])
    _refused(tmp_path, sd, r"block.1.attn mixes ds2ta keys \(block.1.attn.nsad_table\) with "
                           r"ssa_bin keys \(block.1.attn.delta\)")


def test_saformer_with_a_v_branch(tmp_path):
    sd = make_state("saformer")
    sd["block.0.attn.v_conv.weight"] = torch.zeros(D, D, 1)
    _refused(tmp_path, sd, "block.0.attn has saformer keys .* and block.0.attn.v_conv.weight, but "
                           "saformer attention has no v branch")


def test_variant_with_a_missing_key(tmp_path):
    sd = make_state("ds2ta")
    del sd["block.1.attn.nsad_table"]
    _refused(tmp_path, sd, "missing key 'block.1.attn.nsad_table'")
    sd = make_state("saformer")
    del sd["block.0.attn.dwc_bn.running_var"]
    _refused(tmp_path, sd, "missing key 'block.0.attn.dwc_bn.running_var'")


def test_variant_with_an_extra_key(tmp_path):
    sd = make_state("saformer")
    sd["block.0.attn.dwc_conv.bias"] = torch.zeros(D)
    _refused(tmp_path, sd, "unexpected key 'block.0.attn.dwc_conv.bias' .* saformer attention")


def test_nsad_table_with_nonzero_ad0(tmp_path):
    sd = make_state("ds2ta")
    sd["block.1.attn.nsad_table"][2, 0] = 1
    _refused(tmp_path, sd, r"block.1.attn.nsad_table has AD\[0\] = 1 for head 2, expected 0")


def test_nsad_table_of_the_wrong_length(tmp_path):
    sd = make_state("ds2ta")
    sd["block.0.attn.nsad_table"] = sd["block.0.attn.nsad_table"][:, :8]
    _refused(tmp_path, sd, r"block.0.attn.nsad_table has shape \(4, 8\), expected \(4, 9\)")


def test_negative_tau(tmp_path):
    sd = make_state("ds2ta")
    sd["block.0.attn.tau"] = torch.tensor([2, -1, 2, 2])
    _refused(tmp_path, sd, r"block.0.attn.tau holds \[2, -1, 2, 2\], expected non-negative")


def test_non_integer_tau(tmp_path):
    sd = make_state("ds2ta")
    sd["block.0.attn.tau"] = torch.tensor([2.0, 1.5, 2.0, 2.0])
    _refused(tmp_path, sd, "block.0.attn.tau holds non-integer values")


def test_negative_delta(tmp_path):
    sd = make_state("ssa_bin")
    sd["block.0.attn.delta"] = torch.tensor([0, -1, 0, 0])
    _refused(tmp_path, sd, r"block.0.attn.delta is -1 for head 1, expected >= 0")


def test_vbar_with_nan(tmp_path):
    sd = make_state("ssa_bin")
    sd["block.1.attn.vbar"][3] = float("nan")
    _refused(tmp_path, sd, "block.1.attn.vbar holds NaN")


def test_bad_options(tmp_path):
    _refused(tmp_path, make_state("ds2ta"), r"T_AW \(taw\) must be at least 1, got 0", taw=0)
    _refused(tmp_path, make_state("ssa"), r"T_AW \(taw\) is a ds2ta parameter, but the attention "
                                          "operator is ssa", taw=3)
    _refused(tmp_path, make_state("ds2ta"), r"pool rows L \(pool_rows\) is a saformer parameter",
             pool_rows=4)
    _refused(tmp_path, make_state("saformer"), r"pool_rows\) 5 do not divide the 64 tokens",
             pool_rows=5)


# --------------------------------------------------------------------------------------------------
# Loading version 2 files: every problem one sentence naming the block
# --------------------------------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path):
    def make(variant):
        model, _ = export(write(tmp_path, make_state(variant, seed=3), f"{variant}.pth"))
        out = tmp_path / f"{variant}.h5"
        save(out, model)
        return out
    return make


def _edit_refused(path, edit, match):
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(ModelFileError, match=match) as exc:
        load(path)
    return one_sentence(exc, f"{path}: ")


def _replace(f, key, data):
    del f[key]
    f[key] = data


def test_load_nsad_table_with_nonzero_ad0(saved):
    def edit(f):
        t = f["attention/block.1.attn/nsad_table"][()]
        t[0, 0] = 4
        _replace(f, "attention/block.1.attn/nsad_table", t)
    _edit_refused(saved("ds2ta"), edit, r"block.1.attn/nsad_table has AD\[0\] = 4 for head 0")


def test_load_nsad_table_of_the_wrong_length(saved):
    _edit_refused(saved("ds2ta"), lambda f: _replace(f, "attention/block.0.attn/nsad_table",
                                                     np.zeros((4, 10), np.int32)),
                  r"block.0.attn/nsad_table has shape \(4, 10\), expected \(4, 9\)")


def test_load_negative_tau(saved):
    _edit_refused(saved("ds2ta"), lambda f: _replace(f, "attention/block.0.attn/tau",
                                                     np.array([0, 0, -2, 0], np.int32)),
                  "block.0.attn/tau holds .* expected non-negative")


def test_load_taw_below_one(saved):
    _edit_refused(saved("ds2ta"), lambda f: _replace(f, "attention/block.1.attn/taw",
                                                     np.int32(0)),
                  "block.1.attn/taw is 0, expected a window T_AW >= 1")


def test_load_negative_delta(saved):
    _edit_refused(saved("ssa_bin"), lambda f: _replace(f, "attention/block.0.attn/delta",
                                                       np.array([0, 0, 0, -3], np.int32)),
                  "block.0.attn/delta is -3 for head 3, expected >= 0")


def test_load_pool_rows_not_dividing_the_tokens(saved):
    _edit_refused(saved("saformer"), lambda f: _replace(f, "attention/block.0.attn/pool_rows",
                                                        np.int32(6)),
                  "block.0.attn/pool_rows is 6, expected a divisor of the 64 tokens")


def test_load_float_where_integers_belong(saved):
    _edit_refused(saved("ds2ta"), lambda f: _replace(f, "attention/block.0.attn/tau",
                                                     np.array([2.0, 2, 2, 2])),
                  "block.0.attn/tau has dtype float64, expected integers")


def test_load_missing_dataset(saved):
    def edit(f):
        del f["attention/block.1.attn/nsad_table"]
    _edit_refused(saved("ds2ta"), edit, r"block.1.attn \(ds2ta\) has no dataset 'nsad_table'")


def test_load_extra_dataset(saved):
    def edit(f):
        f["attention/block.0.attn/delta"] = np.zeros(4, np.int32)
    _edit_refused(saved("ds2ta"), edit,
                  r"block.0.attn \(ds2ta\) has an unexpected dataset 'delta'")


def test_load_extra_dataset_in_an_ssa_block(saved):
    def edit(f):
        f["attention/block.1.attn/vbar"] = np.zeros(D, np.float32)
    _edit_refused(saved("ssa"), edit, r"block.1.attn \(ssa\) has an unexpected dataset 'vbar'")


def test_load_block_of_another_operator(saved):
    def edit(f):
        f["attention/block.1.attn"].attrs["operator"] = "ssa"
    _edit_refused(saved("ds2ta"), edit,
                  "block.1.attn is 'ssa' attention but the configuration says 'ds2ta'")


def test_load_without_attention_groups(saved):
    path = saved("ssa_bin")

    def edit(f):
        del f["attention/block.1.attn"]
    _edit_refused(path, edit, "attention group 'block.1.attn' is missing")

    def edit(f):
        del f["attention"]
    _edit_refused(path, edit, "has no 'attention' group")


def test_load_extra_attention_group(saved):
    def edit(f):
        f.create_group("attention/block.2.attn").attrs["operator"] = "ssa"
    _edit_refused(saved("ssa"), edit, "unexpected attention group 'block.2.attn' for 2 blocks")


def test_load_saformer_with_a_v_layer(saved):
    def edit(f):
        f.copy(f["layers/block.0.attn.q_lif"], "layers/block.0.attn.v_lif")
    _edit_refused(saved("saformer"), edit, "unexpected layer 'block.0.attn.v_lif'")


def test_load_unknown_operator(saved):
    def edit(f):
        cfg = json.loads(f.attrs["config"])
        cfg["attention"] = "linformer"
        f.attrs["config"] = json.dumps(cfg)
    _edit_refused(saved("ssa"), edit, "unknown attention operator 'linformer'")


def test_load_accepts_wider_integer_datasets(saved):
    path = saved("ds2ta")
    with h5py.File(path, "a") as f:
        _replace(f, "attention/block.0.attn/nsad_table",
                 f["attention/block.0.attn/nsad_table"][()].astype(np.int64))
    m = load(path)
    assert m.attention[0].params["nsad_table"].dtype == np.int32


# --------------------------------------------------------------------------------------------------
# Version 1 files
# --------------------------------------------------------------------------------------------------


def write_v1(path, model, attention="ssa"):
    """The version 1 writer as it was before the variants: no /attention group."""
    cfg = model.config.to_dict()
    cfg["attention"] = attention
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "eventformer"
        f.attrs["format_version"] = 1
        f.attrs["architecture"] = "spikformer"
        f.attrs["config"] = json.dumps(cfg)
        f.attrs["provenance"] = json.dumps(model.provenance)
        layers = f.create_group("layers")
        for name, p in model.layers.items():
            g = layers.create_group(name)
            g.attrs.update({"kind": p.kind, "source": p.source, "stride": p.stride,
                            "padding": p.padding, "tau": p.tau, "theta": p.theta,
                            "reset": "hard", "v_reset": 0.0, "decay_input": p.decay_input})
            if p.weight is not None:
                g.create_dataset("weight", data=p.weight)
                g.create_dataset("bias", data=p.bias)


def test_version_1_file_loads_as_ssa(tmp_path):
    model, _ = export(write(tmp_path, make_state("ssa", seed=4)))
    write_v1(tmp_path / "v1.h5", model)
    back = load(tmp_path / "v1.h5")
    assert back.format_version == 1 and back.config.attention == "ssa"
    assert [(a.operator, a.params) for a in back.attention] == [("ssa", {})] * DEPTH
    for name, p in model.layers.items():
        if p.weight is not None:
            np.testing.assert_array_equal(back.layers[name].weight, p.weight)
    save(tmp_path / "v2.h5", back)  # re-saving writes version 2
    with h5py.File(tmp_path / "v2.h5") as f:
        assert f.attrs["format_version"] == 2 and f["attention/block.0.attn"].attrs["operator"] == "ssa"
    assert load(tmp_path / "v2.h5").format_version == 2


def test_version_1_file_naming_a_variant_is_refused(tmp_path):
    model, _ = export(write(tmp_path, make_state("ssa")))
    write_v1(tmp_path / "v1.h5", model, attention="ds2ta")
    with pytest.raises(ModelFileError, match="a version 1 file holds only ssa attention"):
        load(tmp_path / "v1.h5")


# --------------------------------------------------------------------------------------------------
# The command line: export prints what it found, inspect shows the operator
# --------------------------------------------------------------------------------------------------


def test_cli_export_prints_the_operator(tmp_path):
    ckpt = write(tmp_path, make_state("ds2ta"))
    r = runner.invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "m.h5"), "--heads", "4",
                            "--steps", "8"])
    assert r.exit_code == 0, r.output
    assert "attention: ds2ta (told by the keys block.0.attn.nsad_table" in r.stderr
    assert "taw 3 (default)" in r.stderr
    assert "block.1.attn: ds2ta, TASA tau q/k/v/proj 2/1/3/0, T_AW 3" in r.stderr
    r = runner.invoke(app, ["export", str(write(tmp_path, make_state("saformer"))), "-o",
                            str(tmp_path / "s.h5"), "--heads", "4", "--pool-rows", "8"])
    assert r.exit_code == 0, r.output
    assert "attention: saformer (told by the keys" in r.stderr and "pool_rows 8 (given)" in r.stderr


def _one_error_line(r):
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.stderr
    return lines[0]


def test_cli_export_refusals_are_one_line(tmp_path):
    ckpt = str(write(tmp_path, make_state("ds2ta")))
    out = str(tmp_path / "m.h5")
    line = _one_error_line(runner.invoke(app, ["export", ckpt, "-o", out, "--heads", "4",
                                               "--attention", "ssa"]))
    assert line.startswith("error: ckpt.pth: --attention ssa, but the checkpoint's keys say ds2ta")
    line = _one_error_line(runner.invoke(app, ["export", ckpt, "-o", out, "--heads", "4",
                                               "--pool-rows", "4"]))
    assert "is a saformer parameter" in line
    r = runner.invoke(app, ["export", ckpt, "-o", out, "--heads", "4", "--taw", "0"])
    assert r.exit_code == 2 and "--taw" in r.output
    r = runner.invoke(app, ["export", ckpt, "-o", out, "--attention", "nope"])
    assert r.exit_code == 2 and "--attention" in r.output


@pytest.mark.parametrize("variant", ["ds2ta", "ssa_bin", "saformer"])
def test_cli_inspect_shows_the_operator(variant, saved):
    path = saved(variant)
    r = runner.invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format_version"] == 2 and info["attention"]["operator"] == variant
    blocks = info["attention"]["blocks"]
    assert [b["block"] for b in blocks] == ["block.0.attn", "block.1.attn"]
    m = load(path)
    if variant == "ds2ta":
        assert blocks[0]["tau"] == {"q": 2, "k": 1, "v": 3, "proj": 0} and blocks[0]["taw"] == 3
        assert blocks[1]["nsad_table"] == m.attention[1].params["nsad_table"].tolist()
    elif variant == "ssa_bin":
        assert blocks[0]["delta"] == [0, 1, 2, 0]
        assert blocks[0]["vbar"]["shape"] == [D]
        assert blocks[0]["vbar"]["max"] == pytest.approx(float(m.attention[0].params["vbar"].max()))
    else:
        assert blocks[1]["pool_rows"] == 4 and blocks[1]["dwc_weight"]["shape"] == [D, 3, 3]
    r = runner.invoke(app, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert f"block.0.attn: {variant}" in r.stderr
    if variant == "ds2ta":
        table = m.attention[0].params["nsad_table"]
        assert "T_AW 3" in r.stderr and f"head 3: {' '.join(map(str, table[3]))}" in r.stderr
    elif variant == "ssa_bin":
        assert "delta per head 0 1 2 0" in r.stderr
    else:
        assert "pool rows L 4" in r.stderr


def test_cli_inspect_version_1(tmp_path):
    model, _ = export(write(tmp_path, make_state("ssa")))
    write_v1(tmp_path / "v1.h5", model)
    r = runner.invoke(app, ["inspect", str(tmp_path / "v1.h5"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format_version"] == 1
    assert info["attention"] == {"operator": "ssa", "blocks": [
        {"block": "block.0.attn", "operator": "ssa"}, {"block": "block.1.attn", "operator": "ssa"}]}


# --------------------------------------------------------------------------------------------------
# Every operator's model file runs through infer, which names the operator and its counters
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["ds2ta", "ssa_bin", "saformer"])
def test_infer_runs_a_variant_model_file(variant, saved, tmp_path):
    from eventformer.events import write_npy

    rng = np.random.default_rng(0)
    ev = np.zeros(500, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = np.sort(rng.integers(0, 10_000, 500))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 32, 500), rng.integers(0, 32, 500), rng.integers(0, 2, 500)
    write_npy(tmp_path / "rec.npy", ev)
    r = runner.invoke(app, ["infer", str(tmp_path / "rec.npy"), "-w", str(saved(variant)), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["attention"] == variant
    assert set(out["ops"]) >= {"lut", "shift", "compare", "attn_entries", "attn_nonzero"}
    assert all({"lut", "shift", "compare", "attn_nonzero"} <= set(row) for row in out["layers"])
    names = [row["name"] for row in out["layers"]]
    assert ("block.0.attn.v_lif" in names) == (variant != "saformer")
