"""Every command behaves: package data, --version/--help, option checks, batches, interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from conftest import ROOT, one_error_line
from eventformer.events import EVENT_DTYPE, write_npy
from eventformer_cli.main import app

runner = CliRunner()


def gesture_like_events(n: int, size: int = 32, duration_us: int = 1_000_000, seed: int = 0):
    """A blob moving in a circle plus noise, time-ordered: enough to make every layer fire."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, duration_us, n))
    phase = ev["t"] / duration_us * 2 * np.pi
    ev["x"] = np.clip(size / 2 + size / 4 * np.cos(phase) + rng.normal(0, size / 10, n), 0,
                      size - 1).astype(int)
    ev["y"] = np.clip(size / 2 + size / 4 * np.sin(phase) + rng.normal(0, size / 10, n), 0,
                      size - 1).astype(int)
    ev["p"] = rng.integers(0, 2, n)
    return ev


@pytest.fixture()
def recording(tmp_path):
    write_npy(tmp_path / "rec.npy", gesture_like_events(20_000))
    return tmp_path / "rec.npy"


# --- the shipped model travels as package data -------------------------------------------------

@pytest.mark.slow
def test_wheel_carries_the_shipped_model_and_finds_it_installed(tmp_path):
    """`pip install .` (not editable) installs the wheel: its model must be inside it and be
    found from the installed copy, not from the source tree."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("eventformer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "eventformer/weights/spikformer-tiny-synth.h5" in names
    assert "eventformer/weights/MODEL_CARD.md" in names
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--no-compile", "--target", str(target), str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import eventformer.weights as w; "
            "p = w.shipped_model_path(); print(p)")
    found = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                           text=True, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    path = Path(found.stdout.strip())
    assert path.is_file() and target in path.parents


def test_no_shipped_model_is_one_sentence(recording, monkeypatch):
    import eventformer.weights

    monkeypatch.setattr(eventformer.weights, "shipped_model_path", lambda name=None: None)
    line = one_error_line(runner.invoke(app, ["infer", str(recording)]))
    assert "--weights" in line and "not installed" in line


# --- the command as its own process ------------------------------------------------------------

def test_the_console_script_runs_the_tuned_entry():
    """`eventformer` is :func:`eventformer_cli.main.run` (the collector tuned for one process),
    not the bare app."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="eventformer")
    assert script.value == "eventformer_cli.main:run"


def test_a_run_in_its_own_process_ends_whole(recording, tmp_path):
    """Through :func:`~eventformer_cli.main.run` (frozen collector at exit), a process's results
    all reach stdout and its exit code is the command's: 0 with one JSON object per file, 2
    and one sentence for a missing file, 2 for a file that is not a recording."""
    cli = [sys.executable, "-m", "eventformer_cli.main", "infer"]
    ok = subprocess.run(cli + [str(recording), str(recording), "--json"], capture_output=True,
                        text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    lines = [json.loads(line) for line in ok.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["logits"] == lines[1]["logits"]
    missing = subprocess.run(cli + [str(tmp_path / "none.bs2")], capture_output=True,
                             text=True, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    (tmp_path / "junk.npy").write_bytes(b"not a recording")
    junk = subprocess.run(cli + [str(tmp_path / "junk.npy")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert junk.returncode == 2 and "Traceback" not in junk.stderr, junk.stderr


# --- --version and --help ----------------------------------------------------------------------

def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    from importlib.metadata import version

    assert r.stdout.strip() == f"eventformer {version('eventformer')}"


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_help_shows_every_default():
    """rich reads a hand-written "[default: ...]" in help text as markup and drops it: defaults
    that are not plain values are given as show_default strings, which help prints."""
    shown = 0
    for words, cmd in _commands(get_command(app)):
        r = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "300"}, terminal_width=300)
        assert r.exit_code == 0, (words, r.output)
        for param in cmd.params:
            assert "[default" not in (getattr(param, "help", None) or ""), (words, param.name)
            if isinstance(param.show_default, str):
                assert f"[default: ({param.show_default})]" in r.output, (words, param.name)
                shown += 1
    assert shown >= 11


def test_help_keeps_square_brackets_of_extras():
    """rich takes an unescaped "[cluster]" for markup and prints "needs eventformer": every
    extra an option's help names comes out whole."""
    import re

    for words, cmd in _commands(get_command(app)):
        r = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "300"}, terminal_width=300)
        for param in cmd.params:
            text = getattr(param, "help", None) or ""
            for extra in re.findall(r"eventformer\\?\[(\w+)\]", text):
                assert f"eventformer[{extra}]" in r.output, (words, param.name, extra)
        assert "(needs eventformer)" not in r.output, words


# --- option checks: one sentence, exit 2 -------------------------------------------------------

def _bad_values(param):
    """Values the option's declaration refuses: a choice it does not offer, a word for a number,
    a number below its minimum, nan and infinity for a float."""
    desc = param.type_descriptor
    annotation = desc.annotation
    inner = getattr(annotation, "__args__", None)
    if inner and len(inner) == 1:  # a repeatable option
        annotation = inner[0]
    if desc.choices:
        yield "no-such-choice"
    elif annotation in (int, float):
        yield "abc"
        low = desc.parameter_info.min
        if low is not None:
            yield str(low - 1)
        if annotation is float:
            yield from ("nan", "inf", "-inf")


def test_every_bad_option_value_is_one_sentence_naming_the_option():
    """Walk every command's options: each value its declaration refuses ends as one `error:`
    line naming the option and what it takes, exit code 2 (typer would print a usage panel
    with pydantic's wording)."""
    checked = 0
    for words, cmd in _commands(get_command(app)):
        for param in cmd.params:
            if not getattr(param, "opts", None) or not param.opts[0].startswith("-") or \
                    getattr(param, "is_flag", False):
                continue
            option = max(param.opts, key=len)
            for value in _bad_values(param):
                r = runner.invoke(app, [*words, option, value])
                line = one_error_line(r)
                assert line.startswith(f"error: {option} must be "), (words, option, value, line)
                assert value in line, (words, option, value, line)
                checked += 1
    assert checked >= 60


@pytest.mark.parametrize("args,expected", [
    (["infer", "x.npy", "--steps", "0"], "error: --steps must be a whole number of at least 1, "
                                         "got 0"),
    (["infer", "x.npy", "--dtype", "float16"], "error: --dtype must be one of float32, float64, "
                                               "int16, int8, got float16"),
    (["infer", "--dataset", "dvs-gesture", "--limit", "0"], "error: --limit must be a whole "
                                                            "number of at least 1, got 0"),
    (["compare", "--limit", "0"], "error: --limit must be a whole number of at least 1, got 0"),
    (["stream", "x.npy", "--idle-timeout", "nan"], "error: --idle-timeout must be a finite "
                                                   "number of at least 0, got nan"),
    (["stream", "x.npy", "--idle-timeout", "-1"], "error: --idle-timeout must be a finite "
                                                  "number of at least 0, got -1"),
])
def test_the_reported_option_values_are_one_sentence(args, expected):
    assert one_error_line(runner.invoke(app, args)) == expected


@pytest.mark.parametrize("args,needle", [
    (["infer", "--bogus"], "error: no such option: --bogus (see: eventformer infer --help)"),
    (["--bogus"], "error: no such option: --bogus"),
    (["nosuch"], "error: no such command 'nosuch'"),
    (["infer", "--steps"], "error: option '--steps' requires an argument"),
    (["export"], "error: missing argument"),
    (["data", "synth", "--users", "1"], "error: --users must be a whole number of at least 2"),
])
def test_other_command_line_mistakes_are_one_sentence(args, needle):
    assert one_error_line(runner.invoke(app, args)).startswith(needle)


def test_no_command_still_prints_the_help():
    r = runner.invoke(app, [])
    assert r.exit_code == 2 and "Usage" in r.output and "error:" not in r.output


@pytest.mark.parametrize("value", ["nan", "inf", "0.0001", "0", "-5"])
def test_window_ms_must_be_a_positive_finite_microsecond_count(recording, value):
    line = one_error_line(runner.invoke(app, ["stream", str(recording), "--window-ms", value]))
    assert "--window-ms" in line


@pytest.mark.parametrize("option", ["--pj-ac", "--pj-mac"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_energy_per_operation_must_be_finite_and_non_negative(recording, option, value):
    line = one_error_line(runner.invoke(app, ["infer", str(recording), option, value]))
    assert option in line


@pytest.mark.parametrize("option,value", [("--lr", "0"), ("--lr", "nan"),
                                          ("--weight-decay", "-0.1")])
def test_train_rejects_meaningless_rates(tmp_path, option, value):
    line = one_error_line(runner.invoke(app, ["train", "-o", str(tmp_path / "m.h5"), option,
                                              value]))
    assert option in line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from torch_reference import RefConfig, random_state_dict

    d = tmp_path_factory.mktemp("ckpt")
    cfg = RefConfig(image_size=32, sps_channels=(16, 32), dim=32, heads=4, depth=1, num_classes=4)
    torch.save({"model": random_state_dict(cfg, 3)}, d / "tiny.pth")
    return d / "tiny.pth"


def test_export_into_a_missing_folder(checkpoint, tmp_path):
    line = one_error_line(runner.invoke(app, ["export", str(checkpoint), "-o",
                                              str(tmp_path / "missing" / "x.h5"), "--heads", "4"]))
    assert "does not exist" in line


def test_export_refuses_to_overwrite_without_force(checkpoint, tmp_path):
    out = tmp_path / "m.h5"
    out.write_bytes(b"keep me")
    line = one_error_line(runner.invoke(app, ["export", str(checkpoint), "-o", str(out),
                                              "--heads", "4"]))
    assert "--force" in line and out.read_bytes() == b"keep me"
    r = runner.invoke(app, ["export", str(checkpoint), "-o", str(out), "--heads", "4", "--force"])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["inspect", str(out)]).exit_code == 0


def test_export_error_is_not_cut(tmp_path):
    """The reason torch gives for an unreadable checkpoint is quoted whole, not cut mid-word."""
    torch = pytest.importorskip("torch")
    bad = tmp_path / "c.pth"
    bad.write_bytes(b"PK\x03\x04" + b"x" * 300)  # a zip signature, then junk: a long torch error
    with pytest.raises(Exception) as exc:
        torch.load(bad, map_location="cpu", weights_only=True)
    reason = str(exc.value).strip().splitlines()[0]
    line = one_error_line(runner.invoke(app, ["export", str(bad), "-o", str(tmp_path / "o.h5")]))
    assert line.endswith(f"({reason})")


# --- batches: a bad file is named, the good ones are still shown -------------------------------

def test_one_bad_file_does_not_discard_the_others(recording, tmp_path):
    missing = tmp_path / "missing.npy"
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"\x93NUMPY" + b"\x00" * 10)  # an npy magic with a broken header
    r = runner.invoke(app, ["infer", str(recording), str(missing), str(junk)])
    assert r.exit_code == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "missing.npy" in errors[0] and "junk.npy" in errors[1]
    assert "rec.npy" in r.stderr  # the good file's row in the table
    assert "2 of 3 files could not be classified" in r.stderr


def test_one_bad_file_in_json_mode(recording, tmp_path):
    missing = tmp_path / "missing.npy"
    r = runner.invoke(app, ["infer", str(missing), str(recording), "--json"])
    assert r.exit_code == 2
    first, second = (json.loads(line) for line in r.stdout.splitlines())
    assert first["file"] == str(missing) and "no such file" in first["error"]
    assert second["file"] == str(recording) and "prediction" in second


def test_classify_files_yields_each_files_own_result(recording, tmp_path, shipped_engine):
    from eventformer.errors import EventformerError
    from eventformer.inference import Classification, classify_files

    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    paths = [tmp_path / "missing.npy", recording, empty, recording]
    out = list(classify_files(shipped_engine, paths))
    assert [p for p, _ in out] == [str(p) for p in paths]
    kinds = [type(r) for _, r in out]
    assert kinds[1] is kinds[3] is Classification
    assert issubclass(kinds[0], EventformerError) and issubclass(kinds[2], EventformerError)
    assert out[1][1].prediction == out[3][1].prediction


def _ctrl_c_on_call(real, n: int):
    """``real``, except that its n-th call raises KeyboardInterrupt (Ctrl-C mid-run)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapped


def test_infer_dataset_prints_partial_results_on_ctrl_c(monkeypatch):
    import eventformer.evaluate as evaluate

    monkeypatch.setattr(evaluate, "classify", _ctrl_c_on_call(evaluate.classify, 3))
    monkeypatch.delenv("EVENTFORMER_DATA", raising=False)
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/root"))
    r = runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "--json"])
    assert r.exit_code == 130, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 3 and lines[-1]["summary"] and lines[-1]["interrupted"]
    assert lines[-1]["samples"] == 2
    assert "interrupted" in r.stderr


@pytest.mark.parametrize("as_json", [True, False])
def test_infer_files_prints_the_files_finished_on_ctrl_c(recording, monkeypatch, as_json):
    """Ctrl-C while the third of four files is classified: the two finished are reported (their
    JSON lines, or the table), one line says how many, exit code 130."""
    import eventformer.inference as inference

    monkeypatch.setattr(inference, "classify_file", _ctrl_c_on_call(inference.classify_file, 3))
    r = runner.invoke(app, ["infer", *[str(recording)] * 4, *(["--json"] if as_json else [])])
    assert r.exit_code == 130, r.output
    assert "interrupted: the results above cover 2 of 4 files" in r.stderr
    if as_json:
        lines = [json.loads(line) for line in r.stdout.splitlines()]
        assert [x["file"] for x in lines] == [str(recording)] * 2
    else:
        assert r.stdout == "" and r.stderr.count("rec.npy") >= 2 and "prediction" in r.stderr


# --- streams -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_engine():
    from eventformer.modelfile import load
    from eventformer.models import Spikformer
    from eventformer.weights import shipped_model_path

    return Spikformer(load(shipped_model_path()))


class AllAtOnce:
    """A source whose first read hands over the whole recording (a fast disk, a big chunk)."""

    path = "memory"
    sensor_size = (32, 32)

    def __init__(self, events):
        self.events = events
        self.exhausted = False

    def read(self):
        if self.exhausted:
            return np.empty(0, EVENT_DTYPE)
        self.exhausted = True
        return self.events


def test_ctrl_c_closes_the_open_window_with_what_it_has(shipped_engine):
    from eventformer.stream import WindowSpec, run_stream

    events = gesture_like_events(20_000)
    windows = []
    handler = signal.getsignal(signal.SIGINT)  # default, or ignored when run in the background

    def on_window(w):
        windows.append(w)
        if len(windows) == 2:  # the user presses Ctrl-C while window 2 is computed
            os.kill(os.getpid(), signal.SIGINT)

    summary = run_stream(shipped_engine, AllAtOnce(events), WindowSpec(window_us=100_000),
                         on_window=on_window)
    t0 = int(events["t"][0])
    # window 2 finished, the open window 3 closed with its own events, nothing beyond it
    assert summary["interrupted"] and summary["windows"] == 3 == len(windows)
    assert [w["t_start_us"] for w in windows] == [t0, t0 + 100_000, t0 + 200_000]
    within = int(np.sum(events["t"] < t0 + 300_000))
    assert summary["events"] == within == sum(w["events"] for w in windows)
    assert summary["unprocessed_events"] == len(events) - within
    assert signal.getsignal(signal.SIGINT) is handler  # the handler before is back


def test_realtime_backlog_is_what_has_arrived(shipped_engine):
    from eventformer.stream import WindowSpec, run_stream

    events = gesture_like_events(6_000, duration_us=400_000)
    windows = []
    summary = run_stream(shipped_engine, AllAtOnce(events), WindowSpec(window_us=50_000),
                         realtime=True, on_window=windows.append)
    assert summary["events"] == len(events) and not summary["interrupted"]
    t = events["t"]
    for w in windows[:-1]:
        # waiting events arrived after the window's end, within the time it took to compute
        # (generously: two windows), never the rest of the recording
        arrived = int(np.sum((t >= w["t_end_us"]) & (t < w["t_end_us"] + 100_000)))
        assert w["backlog_events"] <= arrived, w
    assert summary["wall_s"] >= 0.35  # replayed at recording speed, not as fast as possible


def test_stream_without_a_terminal_prints_a_line_per_window(recording):
    r = runner.invoke(app, ["stream", str(recording), "--window-ms", "200"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if line.lstrip().startswith("t ")]
    assert len(lines) == 5  # 1 s of events in 200 ms windows
    assert "5 windows, 20,000 events" in r.stderr


# --- long waits are said -----------------------------------------------------------------------

def test_a_wait_that_runs_long_is_said_once_and_a_short_one_not(monkeypatch):
    """note_if_slow: a block still running when the watch expires gets its line on stderr; one
    that ends first gets none (a cached kernel load needs no word, a first compile does)."""
    import threading

    import eventformer_cli.common as common

    said, spoken = [], threading.Event()

    class Stderr:
        def print(self, message, **_):
            said.append(message)
            spoken.set()

    monkeypatch.setattr(common, "err", Stderr())
    with common.note_if_slow("compiling, please wait", after_s=0.0):
        assert spoken.wait(60)  # the block outlives the watch
    with common.note_if_slow("never said", after_s=600.0):
        pass
    assert said == ["compiling, please wait"]


def test_help_paragraphs_flow_to_the_terminal_width():
    """A command's description is laid out for the terminal, not for the source's line breaks:
    at 80 columns no description line ends in the middle of a sentence that the next line
    continues with a lower-case word cut by the source's width (the old ragged wrapping)."""
    from eventformer_cli.errors import reflow

    text = """First line.

    A paragraph written over
    two source lines.

    - an item
    - another item
    """
    assert reflow(text) == ("First line.\n\nA paragraph written over two source lines.\n\n"
                            "- an item\n- another item")
    from typer.testing import CliRunner

    from eventformer_cli.main import app

    r = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0
    assert "weights (with the attention operator of --attention)" in " ".join(
        line.strip() for line in r.output.splitlines())
    lines = [line.strip() for line in r.output.split("Arguments")[0].splitlines()]
    # a line that the next line continues is filled to near the width: no ragged stubs
    ragged = [a for a, b in zip(lines, lines[1:]) if a and b and len(a) < 55]
    assert not ragged, ragged
