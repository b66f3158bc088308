"""Tables at the widths people use: 80 and 100 columns (terminals) and 160 (piped). Every layer
name and every number shown is printed whole (no `…`, no line wider than the console); columns
left out for the width are named under the table, and `--wide` shows all of them.

Covers `infer FILE` for every shipped model, the `infer --dataset` summary, `compare` and
`bench`, each rendered through the command's own printing code.
"""

from __future__ import annotations

import io
import json

import pytest
from conftest import GESTURE_DIR, need_gesture
from eventformer_cli.common import err
from eventformer_cli.main import app
from eventformer_cli.tables import FitTable
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

runner = CliRunner()
WIDTHS = (80, 100, 160)
MODELS = ("ssa", "ds2ta", "ssa_bin", "saformer")
SEGMENT = GESTURE_DIR / "2.bs2"


@pytest.fixture(autouse=True)
def no_real_data(monkeypatch):
    """The embedded synthetic set for --dataset and compare, whatever the machine has."""
    monkeypatch.delenv("EVENTFORMER_DATA", raising=False)
    from eventformer import datasets

    monkeypatch.setattr(datasets, "find_dvs_gesture", lambda data_dir: None)


def at_width(monkeypatch, width: int) -> None:
    """The commands' stderr console laid out for a terminal of ``width`` columns."""
    monkeypatch.setattr(err, "width", width)


def check_lines(text: str, width: int) -> None:
    assert "…" not in text, text
    too_wide = [line for line in text.splitlines() if Text(line).cell_len > width]
    assert not too_wide, too_wide


def rows(text: str, keys: int = 1) -> dict[tuple, list[str]]:
    """The cells of every table row, by its first ``keys`` cells; a row continued in a second
    table (--wide) gathers the cells of both."""
    out: dict[tuple, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            out.setdefault(tuple(cells[:keys]), []).extend(cells[keys:])
    return out


def hidden_note(text: str, width: int) -> str:
    """The words of the notes naming the columns left out, of every table ("" when none
    were)."""
    words = " ".join(text.split())
    notes, start = [], words.find(f"not shown at {width} columns:")
    while start >= 0:
        end = words.index("--wide shows them", start)
        notes.append(words[start:end])
        start = words.find(f"not shown at {width} columns:", end)
    return " ".join(notes)


def shown(row_cells: list[str], wanted: dict[str, str], note: str) -> None:
    """Each wanted cell (header -> text) is in the row whole, or its column is named as left
    out; layer, rate, spikes, path, AC and MAC are never left out."""
    for header, cell in wanted.items():
        if cell in row_cells:
            continue
        assert header not in ("layer", "spikes", "rate", "path", "AC", "MAC"), (header, cell)
        assert header in note, (header, cell, row_cells, note)


# --- the renderer ---------------------------------------------------------------------------------

def _table() -> FitTable:
    t = FitTable("a title long enough to wrap at forty columns, words only", caption="totals",
                 more_hint="--wide shows them")
    t.add_column("name", left=True, key=True)
    t.add_column("count", essential=True)
    for k in range(6):
        t.add_column(f"extra column {k}")
    for n in range(3):
        t.add_row(f"block.{n}.attn.proj_lif", f"{123_456_789 * (n + 1):,}",
                  *[f"{k * 1_000_003 + n:,}" for k in range(6)])
    return t


def render(table: FitTable, width: int, wide: bool = False) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    table.print(console, wide)
    return console.file.getvalue()


@pytest.mark.parametrize("width", (40, 60, 80, 100, 160))
def test_fit_table_never_cuts_a_cell(width):
    t = _table()
    text = render(t, width)
    check_lines(text, width)
    plan = t.layout(width)
    for r in range(3):
        cells = rows(text)[(f"block.{r}.attn.proj_lif",)]
        assert f"{123_456_789 * (r + 1):,}" in cells  # essential: always there
        for k in range(6):
            assert (f"{k * 1_000_003 + r:,}" in cells) == (2 + k not in plan.hidden)
    if plan.hidden:
        assert hidden_note(text, width) == f"not shown at {width} columns: " + ", ".join(
            f"extra column {i - 2}" for i in plan.hidden) + " ("
    else:
        assert "not shown" not in text
    # --wide: every cell, continued below the first table where needed
    text = render(t, width, wide=True)
    check_lines(text, width)
    assert "not shown" not in text
    for r in range(3):
        cells = rows(text)[(f"block.{r}.attn.proj_lif",)]
        assert {f"{k * 1_000_003 + r:,}" for k in range(6)} <= set(cells)
    assert ("(continued)" in text) == (len(t.layout(width, wide=True).groups) > 1)


def test_fit_table_prints_everything_when_it_fits_and_reads_no_markup():
    t = FitTable("[bold]t[/]")
    t.add_column("file", left=True, key=True)
    t.add_column("n")
    t.add_row("rec[1].npy", "7")
    text = render(t, 80)
    assert "[bold]t[/]" in text and rows(text) == {("rec[1].npy",): ["7"]}
    assert t.layout(80).hidden == [] and len(t.layout(80).groups) == 1


def test_a_cell_wider_than_the_console_is_folded_not_cut():
    t = FitTable("")
    t.add_column("file", left=True, key=True)
    t.add_column("n", essential=True)
    name = "a_recording_with_a_very_long_name_" * 3
    t.add_row(name, "12,345")
    text = render(t, 40)
    check_lines(text, 40)
    assert "12,345" in text
    folded = "".join(c[0] for c in rows(text).keys())
    assert folded.replace(" ", "") == name.replace(" ", "")


# --- the commands -------------------------------------------------------------------------------

def _json(args):
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.fixture(scope="module")
def classified():
    """Each shipped model's JSON report of the real segment (the numbers the tables show)."""
    need_gesture()
    return {m: json.loads(_json(["infer", str(SEGMENT), "--sensor-size", "128x128",
                                 "--weights", m])) for m in MODELS}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("wide", (False, True), ids=("default", "wide"))
def test_infer_layer_table(monkeypatch, classified, model, width, wide):
    at_width(monkeypatch, width)
    r = runner.invoke(app, ["infer", str(SEGMENT), "--sensor-size", "128x128", "--weights",
                            model, *(["--wide"] if wide else [])])
    assert r.exit_code == 0, r.output
    text = r.stderr
    check_lines(text, width)
    note = hidden_note(text, width)
    assert not (wide and note)
    report = classified[model]
    table = rows(text)
    o = report["ops"]
    shown(table[("2.bs2",)], {"events": f"{report['events']:,}", "T": str(report["steps"]),
                              "prediction": str(report["prediction"]),
                              "class": report["class_name"], "AC": f"{o['ac']:,}",
                              "MAC": f"{o['mac']:,}", "energy uJ": f"{o['energy_uj']:.2f}"},
          note)
    for layer in report["layers"]:
        cells = table[(layer["name"],)]  # every layer by its whole name
        shown(cells, {"spikes": f"{layer['spikes']:,}", "rate": f"{layer['firing_rate']:.3f}",
                      "path": layer["path"], "AC": f"{layer['ac']:,}",
                      "MAC": f"{layer['mac']:,}", "neurons": f"{layer['neurons']:,}",
                      "in density": f"{layer['input_density']:.3f}",
                      "dense MAC": f"{layer['dense_mac']:,}",
                      "SOP (paper)": f"{layer['sop_paper']:.3g}"}, note)
    if width == 160 and not wide:  # piped: the whole table, as before
        assert "SOP" in text and "neurons" in text
    if wide:
        counters = [k for k in ("lut", "shift", "compare", "attn_entries", "attn_nonzero")
                    if o[k]]
        for layer in report["layers"]:
            assert {f"{layer[k]:,}" for k in counters} <= set(table[(layer["name"],)])


@pytest.mark.parametrize("width", WIDTHS)
def test_dataset_summary(monkeypatch, width):
    args = ["infer", "--dataset", "dvs-gesture", "--limit", "3"]
    summary = [json.loads(line) for line in _json(args).splitlines()][-1]
    assert summary["summary"]
    at_width(monkeypatch, width)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    text = r.stderr
    check_lines(text, width)
    table = rows(text)
    for k, row in enumerate(summary["confusion"]):
        assert table[(str(k),)][-len(row) - 1:-1] == [str(v) for v in row]
    # each class's name whole: beside its row, or listed as k=name under the matrix
    words = {w.strip(",") for w in text.split()}
    for k, name in enumerate(class_names()):
        assert name in table[(str(k),)] or f"{k}={name}" in words, name
    for layer in summary["layers_per_sample"]:
        cells = table[(layer["name"],)]
        for key in ("spikes", "ac", "mac"):
            assert f"{layer[key]:.4g}" in cells


def class_names() -> list[str]:
    from eventformer.modelfile import load
    from eventformer.weights import shipped_model_path

    names = [n.strip() for n in load(shipped_model_path()).config.class_names]
    assert len(names) == 11
    return names


@pytest.fixture(scope="module")
def compared():
    return json.loads(_json(["compare", "--limit", "1", "--dtype", "float32", "--dtype",
                             "int8"]))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("wide", (False, True), ids=("default", "wide"))
def test_compare_table(monkeypatch, capsys, compared, width, wide):
    from eventformer_cli.compare import _OPS_COLUMNS, print_table

    at_width(monkeypatch, width)
    print_table(compared, wide)
    text = capsys.readouterr().err
    check_lines(text, width)
    note = hidden_note(text, width)
    assert not (wide and note)
    table = rows(text, keys=2)
    from eventformer.weights import installed_models

    # every shipped model in both arithmetics, less the integer modes a model refuses (said)
    assert len(compared["runs"]) == 2 * len(installed_models()) - len(compared["skipped"])
    for run in compared["runs"]:
        o = run["ops_per_sample"]
        cells = table[(run["model"], run["dtype"])]
        wanted = {"accuracy": f"{run['accuracy']:.1%}", "energy uJ": f"{o['energy_uj']:.4g}",
                  "engine ms": f"{run['engine_ms_per_sample']:.1f}", "attention":
                  run["attention"], **{c: f"{o[k]:.4g}" for c, k in _OPS_COLUMNS}}
        for header in ("accuracy", "energy uJ", "engine ms", "AC", "MAC"):
            assert wanted[header] in cells, (header, cells)
        shown(cells, wanted, note)


@pytest.mark.parametrize("width", (80, 100))
def test_compare_command_fits_the_terminal(monkeypatch, width):
    at_width(monkeypatch, width)
    r = runner.invoke(app, ["compare", "--weights", "ds2ta", "--weights", "ssa_bin", "--limit",
                            "1"])
    assert r.exit_code == 0, r.output
    check_lines(r.stderr, width)
    assert {k[:2] for k in rows(r.stderr, keys=2)} >= {("ds2ta", "float32"), ("ssa_bin", "int8")}


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    """A bench result of the tests' tiny model (test_bench.py's), timed by a fake clock (the
    times do not matter here, only how they are printed)."""
    pytest.importorskip("torch")
    import itertools

    from test_bench import _events, _tiny_opts

    from eventformer.bench.run import run_bench
    from eventformer.events import write_npy

    d = tmp_path_factory.mktemp("bench")
    path = d / "a_recording_of_a_longer_name.npy"
    write_npy(path, _events())
    ticks = itertools.count(0.0, 0.0625)  # every timed call "takes" a tick or more
    return run_bench(_tiny_opts(path, str(d / "cache")), log=lambda m: None,
                     warn=lambda m: None, clock=lambda: next(ticks))


@pytest.mark.parametrize("width", WIDTHS)
def test_bench_tables(monkeypatch, capsys, bench_result, width):
    from eventformer_cli.bench import _print_bench, _spread_cell

    at_width(monkeypatch, width)
    _print_bench(bench_result, dense=True)
    text = capsys.readouterr().err
    check_lines(text, width)
    assert "not shown" not in text  # the bench's report leaves no column out
    table = rows(text)
    for entry in bench_result["rates"]:
        for r in entry["files"]:
            cells = table[(r["file"],)]
            for cell in (f"{r['events']:,}", f"{r['firing_rate']:.3f}", _spread_cell(r["engine"]),
                         _spread_cell(r["dense"]), f"{r['speedup']:.2f}x",
                         f"{r['events_per_s']:.3g}", f"{r['realtime_factor']:.2f}",
                         f"{r['dense_mac']:.3g}"):
                assert cell in cells, (cell, cells)
        for layer in entry["layers"]:
            cells = table[(layer["name"],)]
            assert f"{layer['input_density']:.3f}" in cells and "/".join(layer["paths"]) in cells


def test_piped_output_honours_columns(tmp_path):
    """Piped (not a terminal), stderr is laid out at $COLUMNS when set, else 160 columns."""
    import subprocess
    import sys

    code = "from eventformer_cli.common import err; print(err.width)"
    env = {k: v for k, v in __import__("os").environ.items() if k != "COLUMNS"}
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True,  # noqa: E731
                                   text=True, check=True).stdout.strip()
    assert run(env) == "160"
    assert run({**env, "COLUMNS": "100"}) == "100"


@pytest.mark.parametrize("dtype, ac, mac", [("float32", "fp32 add", "fp32 multiply + fp32 add"),
                                            ("float64", "fp64 add", "fp64 multiply + fp64 add"),
                                            ("int8", "int8 add", "int8 multiply + int32 add")])
def test_energy_line_names_the_arithmetic_run(dtype, ac, mac):
    """The line under the table names the operations the arithmetic does; float64, which the
    45 nm table has no entries for, says what it is priced as instead of calling it fp32."""
    from eventformer.report import EnergyTable, energy_sentence

    table = EnergyTable.for_arithmetic(dtype)
    line = energy_sentence(table.describe())
    assert f"an AC as {ac} ({table.ac_pj:g} pJ)" in line and f"a MAC as {mac} (" in line
    assert ("priced the AC as fp32 add, the MAC as fp32 multiply + fp32 add" in line) == \
        (dtype == "float64")
    if dtype == "float64":  # float64 is priced as float32, and the line says so
        assert (table.ac_pj, table.mac_pj) == (0.9, 4.6)
        table.ac_pj = 2.0  # a price given by the user is not the table's fp32 entry
        line = energy_sentence(table.describe())
        assert "an AC as fp64 add (2 pJ)" in line and "the AC as" not in line
        assert "priced the MAC as fp32 multiply + fp32 add" in line
