"""`--plot DIR`: every figure rendered headless (Agg), checked as a valid, non-blank image of the
size it promises; the attention map drawn checked against the engine's own counters.

Runs the shipped tiny models on a real DVS Gesture segment (../shared) and the embedded synthetic
test set, a few samples each.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import GESTURE_DIR, need_gesture, one_error_line
from eventformer_cli.main import app
from typer.testing import CliRunner

pytest.importorskip("matplotlib")
from PIL import Image

from eventformer import plots
from eventformer.record import (
    Recorder,
    attention_counts,
    attention_layers,
    layer_names,
    map_entries,
    step_maps,
)

runner = CliRunner()
SEGMENT = GESTURE_DIR / "1.bs2"  # 128x128 sensor, no header: --sensor-size
STEPS = 8  # the shipped tiny models' T


@pytest.fixture(autouse=True)
def no_real_data(monkeypatch):
    """The embedded synthetic set for --dataset and compare, whatever the machine has."""
    monkeypatch.delenv("EVENTFORMER_DATA", raising=False)
    from eventformer import datasets

    monkeypatch.setattr(datasets, "find_dvs_gesture", lambda data_dir: None)


def check_png(path: Path, size: tuple[int, int]) -> None:
    """A valid PNG of ``size`` pixels (width, height) with a picture on it: many colours and
    contrast, not a blank canvas."""
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        assert im.size == size, (path.name, im.size, size)
        pixels = np.asarray(im.convert("RGB"), np.int64)
    colours = np.unique(pixels.reshape(-1, 3) @ np.array([65536, 256, 1]))
    assert colours.size > 30, (path.name, colours.size)
    assert pixels.std() > 10, path.name
    # ink (not the white background) covers a real part of the canvas
    assert (pixels.sum(axis=2) < 600).mean() > 0.01, path.name


def svg_text(path: Path) -> str:
    """The text of a valid SVG file (an <svg> root): its titles, axis labels, tick labels."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), root.tag
    return " ".join(t for t in root.itertext() if t.strip())


def written(result) -> list[Path]:
    return [Path(line[len("wrote "):]) for line in result.stderr.splitlines()
            if line.startswith("wrote ")]


def infer(*args):
    return runner.invoke(app, ["infer", *args])


def test_check_png_rejects_a_blank_or_wrong_sized_image(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 200), "white").save(blank)
    with pytest.raises(AssertionError):
        check_png(blank, (300, 200))
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)).save(noise)
    check_png(noise, (300, 200))
    with pytest.raises(AssertionError):
        check_png(noise, (301, 200))


def test_infer_file_writes_its_four_figures(tmp_path):
    need_gesture()
    out = tmp_path / "new" / "figs"  # created, parents too
    r = infer(str(SEGMENT), "--weights", "ds2ta", "--sensor-size", "128x128", "--plot", str(out))
    assert r.exit_code == 0, r.output
    names = {
        "1-input.png": plots.figure_size("input", STEPS),
        "1-layers.png": plots.figure_size("layers"),
        "1-raster-block.0.attn.attn_lif.png": plots.figure_size("raster"),
    }
    files = written(r)
    attention = [p for p in files if p.name.startswith("1-attention-block0-head0-step")]
    assert len(attention) == 1 and len(files) == 4, files
    assert {p.name for p in files} == set(names) | {attention[0].name}
    for name, size in names.items():
        check_png(out / name, size)
    check_png(attention[0], plots.figure_size("attention"))
    # 8 steps in 2 rows of 4 panels: each frame large enough to read at a page's column width
    assert plots._input_grid(STEPS) == (2, 4) and plots._input_grid(3) == (1, 3)
    assert plots.input_size(STEPS)[0] <= 1100


def test_svg_figures_say_what_they_show(tmp_path):
    need_gesture()
    r = infer(str(SEGMENT), "--weights", "ssa_bin", "--sensor-size", "128x128", "--plot",
              str(tmp_path), "--plot-format", "svg", "--plot-layer", "block.0.attn.q_lif",
              "--plot-head", "2", "--plot-step", "3")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in written(r)) == [
        "1-attention-block0-head2-step3.svg", "1-input.svg", "1-layers.svg",
        "1-raster-block.0.attn.q_lif.svg"]
    text = svg_text(tmp_path / "1-input.svg")
    assert "step 7" in text and "x (pixel)" in text and "ON events" in text and "OFF events" in text
    assert "ON and OFF in one pixel" in text  # the colour of an overlap has its legend entry
    assert "32x32" in text
    text = svg_text(tmp_path / "1-layers.svg")
    assert "firing rate" in text and "compare (binary)" in text and "block.0.mlp.fc1_lif" in text
    text = svg_text(tmp_path / "1-raster-block.0.attn.q_lif.svg")
    assert "time step" in text and "block.0.attn.q_lif" in text
    text = svg_text(tmp_path / "1-attention-block0-head2-step3.svg")
    assert "query token i" in text and "key token j" in text and "1(count > 0)" in text
    assert "head 2, step 3" in text and "--plot-step" in text
    # the title counts every head at the step, each panel the head drawn, and says so
    assert "all 4 heads together" in text and text.count("head 2: ") == 2
    assert "of 256 entries formed" in text and "white: no entry formed" in text


def test_ssa_draws_the_raw_map_only(tmp_path):
    need_gesture()
    r = infer(str(SEGMENT), "--sensor-size", "128x128", "--plot", str(tmp_path),
              "--plot-format", "svg")
    assert r.exit_code == 0, r.output
    (path,) = [p for p in written(r) if "attention" in p.name]
    text = svg_text(path)
    assert "SSA: no denoiser" in text and "after" not in text


def test_saformer_has_no_attention_figure_and_says_so(tmp_path):
    need_gesture()
    r = infer(str(SEGMENT), "--weights", "saformer", "--sensor-size", "128x128", "--plot",
              str(tmp_path))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in written(r)) == [
        "1-input.png", "1-layers.png", "1-raster-block.0.attn.attn_lif.png"]
    notes = [line for line in r.stderr.splitlines() if "no attention figure" in line]
    assert len(notes) == 1 and "saformer" in notes[0]


@pytest.mark.parametrize("model", ["ds2ta", "ssa_bin"])
def test_the_map_drawn_is_the_one_the_engine_formed(model):
    """Entries formed and left non-zero by the numpy map of every step equal the attention
    core's own counters for that step, and the recorder sees every spike the report counts."""
    need_gesture()
    from eventformer.weights import shipped_model_path

    from eventformer.events import read_events
    from eventformer.inference import classify
    from eventformer.modelfile import load
    from eventformer.models import Spikformer

    model_file = load(shipped_model_path(model))
    engine = Spikformer(model_file)
    with Recorder(engine, layer_names(engine)) as rec:
        result = classify(engine, read_events(str(SEGMENT)), sensor_size=(128, 128))
        traces = rec.take()
    assert "fire" not in vars(engine.layers[0].neurons)  # unwrapped again
    for row in result.layers[:-1]:
        assert sum(s.size for s in traces[row["name"]].spikes) == row["spikes"], row["name"]
    maps = step_maps(traces, 0, engine.config, model, model_file.attention[0].params)
    core = traces[attention_layers(0)[2]]
    ours = [map_entries(c, m) for c, m in maps]
    engine_counts = list(zip(core.step_counts("attn_entries").tolist(),
                             core.step_counts("attn_nonzero").tolist()))
    assert ours == engine_counts
    assert len(ours) == STEPS and sum(f for f, _ in ours) > 0
    if model == "ds2ta":  # the NSAD table zeroes entries: the two panels differ
        assert sum(k for _, k in ours) < sum(f for f, _ in ours)


def test_recorder_on_other_kinds_of_layers():
    """Neurons that emit (idx, cnt) (multi-spike) are recorded by index; a stage without neurons
    (a pool) is refused in one sentence naming the layers that have some."""
    from types import SimpleNamespace

    from eventformer.errors import EventformerError

    class Neurons:
        size = 4

        def fire(self, current, counters):
            return np.array([1, 3], np.int32), np.array([2, 1], np.int32)

    def layer(name, neurons):
        return SimpleNamespace(name=name, neurons=neurons, n_neurons=4, cout=2,
                               counters=np.zeros(13, np.int64))

    engine = SimpleNamespace(layers=[layer("conv", Neurons()), layer("pool", None)])
    with pytest.raises(EventformerError, match="pool has no neurons.*layers with neurons: conv"):
        Recorder(engine, ["pool"])
    with Recorder(engine, ["conv"]) as rec:
        engine.layers[0].neurons.fire(None, None)
        trace = rec.take()["conv"]
    assert [s.tolist() for s in trace.spikes] == [[1, 3]] and trace.channels == 2
    assert "fire" not in vars(engine.layers[0].neurons)


def test_attention_counts_against_a_loop():
    rng = np.random.default_rng(1)
    tokens, dim, heads = 6, 12, 3
    d = dim // heads
    q = np.sort(rng.choice(tokens * dim, 30, replace=False))
    k = np.sort(rng.choice(tokens * dim, 25, replace=False))
    got = attention_counts(q, k, tokens, dim, heads)
    qs, ks = set(q.tolist()), set(k.tolist())
    for h in range(heads):
        for i in range(tokens):
            for j in range(tokens):
                want = sum(1 for c in range(h * d, (h + 1) * d)
                           if i * dim + c in qs and j * dim + c in ks)
                assert got[h, i, j] == want


def test_dataset_confusion_and_per_class(tmp_path):
    r = infer("--dataset", "dvs-gesture", "--limit", "3", "--plot", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in written(r)) == ["confusion.png", "per-class-accuracy.png"]
    check_png(tmp_path / "confusion.png", plots.figure_size("confusion"))
    check_png(tmp_path / "per-class-accuracy.png", plots.figure_size("per-class"))


def test_dataset_figures_name_the_classes(tmp_path):
    summary = {"confusion": [[2, 1, 0], [0, 3, 0], [0, 0, 0]],
               "per_class_accuracy": {"0": 2 / 3, "1": 1.0}, "samples": 6, "correct": 5,
               "accuracy": 5 / 6}
    paths = plots.dataset_figures(summary, ["wave", "clap", "roll"], tmp_path, "svg",
                                  title="test set")
    text = svg_text(paths[0])
    assert "wave" in text and "true class" in text and "predicted class" in text
    text = svg_text(paths[1])
    assert "no sample" in text and "accuracy (%)" in text and "overall 83.3%" in text


def test_stream_logits_over_time(tmp_path):
    need_gesture()
    r = runner.invoke(app, ["stream", str(SEGMENT), "--sensor-size", "128x128",
                            "--window-ms", "150", "--plot", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in written(r)] == ["1-logits.png"]
    check_png(tmp_path / "1-logits.png", plots.figure_size("stream"))


def test_on_dask_one_figure_per_stream_and_the_dataset_figures(tmp_path):
    """--workers: every stream gets its own figure (two files of one name stay apart), and a
    dataset's confusion and per-class figures come from the cluster's records."""
    need_gesture()
    pytest.importorskip("distributed")
    import shutil

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(SEGMENT, tmp_path / d / "1.bs2")
    out = tmp_path / "figs"
    r = runner.invoke(app, ["stream", str(tmp_path / "a" / "1.bs2"), str(tmp_path / "b" / "1.bs2"),
                            "--sensor-size", "128x128", "--workers", "2", "--plot", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in written(r)) == ["1-2-logits.png", "1-logits.png"]
    for name in ("1-logits.png", "1-2-logits.png"):
        check_png(out / name, plots.figure_size("stream"))
    r = infer("--dataset", "dvs-gesture", "--limit", "2", "--workers", "1", "--plot", str(out),
              "--plot-format", "svg")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in written(r)) == ["confusion.svg", "per-class-accuracy.svg"]
    assert "2 samples" in svg_text(out / "confusion.svg")


def test_stream_figure_marks_windows_and_decision(tmp_path):
    windows = [{"t_start_us": 1000 + 50_000 * i, "t_end_us": 51_000 + 50_000 * i,
                "logits": [0.1 * i, -0.1 * i, 0.0]} for i in range(5)]
    path = plots.plot_stream(windows, ["a", "b", "c"], tmp_path / "s.svg", title="s")
    text = svg_text(path)
    assert "final: 0 a" in text and "time since the stream's start (ms)" in text
    assert "softmax probability" in text and "5 windows" in text


def test_compare_accuracy_vs_energy(tmp_path):
    r = runner.invoke(app, ["compare", "--weights", "ssa", "--weights", "ds2ta", "--limit", "2",
                            "--plot", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert [p.name for p in written(r)] == ["compare.png"]
    check_png(tmp_path / "compare.png", plots.figure_size("compare"))


def test_compare_figure_labels_every_run(tmp_path):
    runs = [{"model": m, "dtype": d, "accuracy": a, "samples": 4,
             "ops_per_sample": {"energy_uj": e}}
            for m, d, a, e in (("ssa", "float32", 0.75, 5.2), ("ssa", "int8", 0.75, 0.27),
                               ("ds2ta", "float32", 1.0, 5.3))]
    path = plots.plot_compare(runs, tmp_path / "c.svg", title="t")
    text = svg_text(path)
    for label in ("ssa float32", "ssa int8", "ds2ta float32", "log scale", "accuracy (%)"):
        assert label in text


def _drawn_compare(runs, monkeypatch, tmp_path):
    """The figure plot_compare saves (points, labels), kept instead of written."""
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.append(fig) or Path(path))
    plots.plot_compare(runs, tmp_path / "c.png", title="t")
    (fig,) = kept
    fig.canvas.draw()
    return fig, fig.axes[0], fig.canvas.get_renderer()


def test_compare_points_that_coincide_stay_visible_and_labels_apart(monkeypatch, tmp_path):
    """Three models at 100% with the same energy (as the shipped ones score on the embedded
    set), in two arithmetics: every point is drawn where no other covers it, every run has its
    own label, and no label overlaps another label or a point."""
    runs = [{"model": m, "dtype": d, "accuracy": a, "samples": 4,
             "ops_per_sample": {"energy_uj": e * (0.27 if d == "int8" else 5.3)}}
            for d in ("float32", "int8")
            for m, a, e in (("ssa", 1.0, 1.0), ("ds2ta", 1.0, 1.0), ("ssa_bin", 1.0, 1.01),
                            ("saformer", 0.75, 0.97))]
    fig, ax, renderer = _drawn_compare(runs, monkeypatch, tmp_path)
    spots = np.array([c.get_offset_transform().transform(c.get_offsets())[0]
                      for c in ax.collections])
    assert len(spots) == len(runs)
    gaps = [np.hypot(*(a - b)) for i, a in enumerate(spots) for b in spots[i + 1:]]
    assert min(gaps) >= plots.COINCIDE_PX - 0.5  # no marker hides another
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(f"{r['model']} {r['dtype']}"
                                                          for r in runs)
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the words only
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
        for x, y in spots:
            assert not a.contains(x, y)
    assert "side by side" in ax.get_title()


def test_compare_points_apart_are_drawn_where_they_are(monkeypatch, tmp_path):
    runs = [{"model": m, "dtype": "float32", "accuracy": a, "samples": 2,
             "ops_per_sample": {"energy_uj": e}}
            for m, a, e in (("ssa", 0.5, 1.0), ("ds2ta", 1.0, 4.0))]
    fig, ax, _ = _drawn_compare(runs, monkeypatch, tmp_path)
    for c, r in zip(ax.collections, runs):
        at = c.get_offset_transform().transform(c.get_offsets())[0]
        want = ax.transData.transform([r["ops_per_sample"]["energy_uj"], r["accuracy"] * 100])
        assert np.allclose(at, want, atol=0.5)
    assert "side by side" not in ax.get_title()


def test_large_layer_raster_shows_a_channel_sorted_subset(tmp_path):
    rng = np.random.default_rng(0)
    spikes = [np.sort(rng.choice(20_000, 300, replace=False)).astype(np.int32) for _ in range(4)]
    path = plots.plot_raster(spikes, 20_000, 16, tmp_path / "r.svg", layer="big", title="t",
                             max_rows=500)
    text = svg_text(path)
    assert "500 of 20,000 neurons" in text and "sorted by channel" in text
    png = plots.plot_raster(spikes, 20_000, 16, tmp_path / "r.png", layer="big", title="t",
                            max_rows=500)
    check_png(png, plots.figure_size("raster"))


def test_same_data_same_bytes(tmp_path):
    rows = [{"name": f"layer{i}", "neurons": 100, "firing_rate": 0.01 * i, "ac": 10 ** i,
             "mac": 0, "lut": 0, "shift": 0, "compare": 0} for i in range(1, 5)]
    a = plots.plot_layers(rows, tmp_path / "a.png", title="t")
    b = plots.plot_layers(rows, tmp_path / "b.png", title="t")
    assert a.read_bytes() == b.read_bytes()
    check_png(a, plots.figure_size("layers"))
    a = plots.plot_layers(rows, tmp_path / "a.svg", title="t")
    b = plots.plot_layers(rows, tmp_path / "b.svg", title="t")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("args", [
    ["infer", "missing.bs2"],  # checked before the file is even looked at
    ["infer", "--dataset", "dvs-gesture"],
    ["stream", "missing.bs2"],
    ["compare", "--weights", "ssa"],
])
def test_without_matplotlib_one_sentence(monkeypatch, tmp_path, args):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    out = tmp_path / "figs"
    line = one_error_line(runner.invoke(app, [*args, "--plot", str(out)]))
    assert line == "error: --plot needs matplotlib: pip install 'eventformer[plot]'"
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--plot-layer", "nope"], ["no layer 'nope'", "block.0.attn.q_lif",
                                "patch_embed.proj_lif2"]),
    (["--plot-head", "4"], ["--plot-head", "0 to 3"]),
    (["--plot-step", "8"], ["--plot-step", "0 to 7"]),
    (["--plot-step", "-1"], ["--plot-step"]),
    (["--plot-format", "gif"], ["png or svg"]),
])
def test_bad_choices_are_one_sentence(tmp_path, args, words):
    need_gesture()
    line = one_error_line(infer(str(SEGMENT), "--sensor-size", "128x128", "--plot",
                                str(tmp_path / "f"), *args))
    for w in words:
        assert w in line, line
    assert not list((tmp_path / "f").glob("*.png"))


def test_choices_need_plot(tmp_path):
    line = one_error_line(infer(str(tmp_path / "x.npy"), "--plot-head", "1"))
    assert "--plot DIR" in line
    line = one_error_line(infer("--dataset", "dvs-gesture", "--plot", str(tmp_path),
                                "--plot-layer", "block.0.attn.q_lif"))
    assert "--dataset" in line


def test_plot_onto_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    line = one_error_line(runner.invoke(app, ["compare", "--plot", str(target)]))
    assert "not a folder" in line
