"""Streaming: causal windows, state carried across windows, nothing lost or read twice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eventformer.events import EVENT_DTYPE
from eventformer.stream import CausalFramer, WindowSpec, run_stream


def events(n, rng, t_max=1_000_000, size=32):
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, t_max, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, size, n), rng.integers(0, size, n), rng.integers(0, 2, n)
    return ev


class ChunkSource:
    """Hands out a recording in given chunk sizes, like a file being written."""

    def __init__(self, ev, sizes):
        self.ev, self.sizes, self.pos, self.i = ev, sizes, 0, 0

    def read(self):
        if self.pos >= len(self.ev):
            return self.ev[:0]
        n = self.sizes[self.i % len(self.sizes)]
        self.i += 1
        out = self.ev[self.pos:self.pos + n]
        self.pos += n
        return out

    @property
    def exhausted(self):
        return self.pos >= len(self.ev)


@pytest.mark.parametrize("spec", [WindowSpec(window_us=50_000), WindowSpec(window_events=333)])
@pytest.mark.parametrize("sizes", [[1], [7, 1000, 3], [100_000]])
def test_windows_partition_the_stream(spec, sizes):
    ev = events(5000, np.random.default_rng(0))
    framer = CausalFramer(spec)
    src = ChunkSource(ev, sizes)
    got = []
    while not src.exhausted:
        framer.push(src.read())
        got += list(framer.complete_windows())
    got += list(framer.flush())
    joined = np.concatenate([w[2] for w in got])
    np.testing.assert_array_equal(joined, ev)  # nothing lost, reordered or read twice
    for t0, t1, chunk in got:
        assert chunk.shape[0] == 0 or (chunk["t"].min() >= t0 and chunk["t"].max() < t1)
    if spec.window_us:
        starts = [w[0] for w in got]
        assert all(b - a == spec.window_us for a, b in zip(starts, starts[1:]))


def test_window_spec_validation():
    with pytest.raises(ValueError):
        WindowSpec()
    with pytest.raises(ValueError):
        WindowSpec(window_us=10, window_events=10)
    with pytest.raises(ValueError):
        WindowSpec(window_us=0)


@pytest.fixture(scope="module")
def stream_model(tmp_path_factory):
    """A tiny model calibrated on this file's kind of input (uniform 32x32 events, steps of ~1000
    events) so that every layer fires: two paths that agree on a silent net prove nothing."""
    pytest.importorskip("torch")
    from conftest import calibrated_checkpoint
    from torch_reference import RefConfig

    from eventformer.modelfile.export import export_checkpoint

    cfg = RefConfig(image_size=32, sps_channels=(8, 16), dim=16, heads=2, depth=1, num_classes=4)
    rng = np.random.default_rng(11)
    path = calibrated_checkpoint(tmp_path_factory.mktemp("stream") / "m.pth", cfg,
                                 [events(4000, rng) for _ in range(2)], 4, seed=5, wrap=False)
    model, _ = export_checkpoint(path, heads=2, image_size=32, steps=4)
    return model


def test_run_stream_carries_state_and_matches_offline_steps(stream_model):
    from conftest import assert_every_layer_fires

    from eventformer.events import frame_events
    from eventformer.models import Spikformer

    model = stream_model
    ev = events(4000, np.random.default_rng(1))
    records = []
    summary = run_stream(Spikformer(model, dtype="float64"), ChunkSource(ev, [123]),
                         WindowSpec(window_us=250_000), on_window=records.append)
    assert summary["windows"] == len(records) == 4 and summary["events"] == 4000
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("t_start_us", "t_end_us", "events", "prediction", "logits", "ops", "latency_ms",
                "backlog_events"):
        assert key in records[0]
    # the same windows fed offline as steps give the same logits after every window
    offline = Spikformer(model, dtype="float64")
    offline.reset()
    t0 = int(ev["t"][0])
    for k in range(4):
        chunk = ev[(ev["t"] >= t0 + k * 250_000) & (ev["t"] < t0 + (k + 1) * 250_000)]
        assert records[k]["events"] == chunk.shape[0]
        (idx, cnt), = frame_events(chunk, 1, 32, 32)
        offline.step(idx, cnt)
        np.testing.assert_array_equal(offline.logits(), records[k]["logits"])
    assert_every_layer_fires(offline.layer_stats())  # the streams compared were not silent


def test_follow_stops_after_idle_timeout(stream_model):
    import time

    from eventformer.models import Spikformer

    ev = events(1000, np.random.default_rng(2))
    start = time.perf_counter()
    summary = run_stream(Spikformer(stream_model), ChunkSource(ev, [400]),
                         WindowSpec(window_events=300), follow=True, idle_timeout=0.3,
                         poll_s=0.01)
    assert summary["events"] == 1000 and 0.3 <= time.perf_counter() - start < 5


def test_cli_follow_reads_a_file_while_it_is_written(tmp_path):
    """A writer process appends a real recording in odd-sized chunks (cutting 5-byte records in
    half) while `stream --follow` reads: every event arrives exactly once."""
    import json
    import subprocess
    import sys

    from conftest import GESTURE_DIR, need_gesture

    pytest.importorskip("torch")
    need_gesture()
    from conftest import assert_every_layer_fires, calibrated_checkpoint
    from torch_reference import RefConfig

    from eventformer.events import frame_events, read_events
    from eventformer.modelfile import load
    from eventformer.models import Spikformer

    # a model that fires in every layer on this recording's 5000-event windows
    recorded = read_events(GESTURE_DIR / "1.bs2").events
    cfg = RefConfig(image_size=128, sps_channels=(8, 8, 16, 16), dim=16, heads=2, depth=1)
    calibrated_checkpoint(tmp_path / "m.pth", cfg, [recorded[:40_000]], 8, seed=0)
    cli = [sys.executable, "-m", "eventformer_cli.main"]
    subprocess.run(cli + ["export", str(tmp_path / "m.pth"), "-o", str(tmp_path / "m.h5"),
                          "--heads", "2"], check=True, capture_output=True)
    engine = Spikformer(load(tmp_path / "m.h5"))
    for k in range(0, recorded.shape[0], 5000):
        (idx, cnt), = frame_events(recorded[k:k + 5000], 1, 128, 128)
        engine.step(idx, cnt)
    assert_every_layer_fires(engine.layer_stats())
    source = (GESTURE_DIR / "1.bs2").read_bytes()
    growing = tmp_path / "live.bs2"
    growing.write_bytes(b"")
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
data = open({str(GESTURE_DIR / '1.bs2')!r}, 'rb').read()
sizes = [7, 4093, 1, 20000, 333]
pos = i = 0
with open({str(growing)!r}, 'ab', buffering=0) as f:
    while pos < len(data):
        n = sizes[i % len(sizes)]; i += 1
        f.write(data[pos:pos + n]); pos += n
        time.sleep(0.002)
"""])
    proc = subprocess.run(cli + ["stream", str(growing), "-w", str(tmp_path / "m.h5"), "--follow",
                                 "--window-events", "5000", "--idle-timeout", "1.5", "--json"],
                          capture_output=True, text=True, timeout=120)
    writer.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    windows, summary = lines[:-1], lines[-1]
    total = len(source) // 5
    assert summary["events"] == sum(w["events"] for w in windows) == total
    assert [w["events"] for w in windows[:-1]] == [5000] * (len(windows) - 1)
    assert all(w["t_end_us"] > w["t_start_us"] for w in windows)


# --- Ctrl-C: what was done is reported, exit code 130 --------------------------------------------

@pytest.mark.parametrize("follow", [False, True])
@pytest.mark.parametrize("as_json", [True, False])
def test_cli_ctrl_c_reports_the_windows_done_and_exits_130(tmp_path, monkeypatch, follow,
                                                           as_json):
    """Ctrl-C (SIGINT to this process) while the second window is computed, with and without
    --follow: the windows done and the summary are printed (JSON lines or text), the summary
    says interrupted, one line says so, exit code 130 (not 0)."""
    import json
    import os
    import signal

    from typer.testing import CliRunner

    import eventformer.stream as stream_module
    from eventformer.events import write_npy
    from eventformer_cli.main import app

    ev = events(6000, np.random.default_rng(3))
    write_npy(tmp_path / "rec.npy", ev)
    real, calls = stream_module.summarize, []

    def summarize_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_module, "summarize", summarize_then_ctrl_c)
    args = ["stream", str(tmp_path / "rec.npy"), "--window-ms", "100", "--idle-timeout", "30"]
    r = CliRunner().invoke(app, args + (["--follow"] if follow else []) +
                           (["--json"] if as_json else []))
    assert r.exit_code == 130, r.output
    assert "interrupted: the results above cover 3 windows" in r.stderr
    if as_json:
        lines = [json.loads(line) for line in r.stdout.splitlines()]
        windows, summary = lines[:-1], lines[-1]
        assert summary["summary"] and summary["interrupted"] and summary["windows"] == 3
        assert len(windows) == 3 and sum(w["events"] for w in windows) == summary["events"]
        assert summary["events"] + summary["unprocessed_events"] == len(ev)
    else:
        assert "3 windows" in r.stderr and "final prediction" in r.stderr


# --- jumps in time: runs of empty windows crossed exactly, in bounded time ---------------------

def _burst(rng, n, t0, size=32):
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = t0 + np.sort(rng.integers(0, 300_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, size, n), rng.integers(0, size, n), \
        rng.integers(0, 2, n)
    return ev


def test_a_jump_in_time_is_one_gap_and_short_lulls_stay_windows():
    """Events, a jump of 2^40 us, events, a lull of 50 windows, events: the jump comes out as
    one Gap, in O(1), the lull as 50 empty windows; the windows tile the timeline and nothing is
    lost."""
    from eventformer.stream import GAP_WINDOWS, Gap

    rng = np.random.default_rng(4)
    w = 100_000
    ev = np.concatenate([_burst(rng, 500, 0), _burst(rng, 500, 2 ** 40),
                         _burst(rng, 500, 2 ** 40 + 5_300_000)])
    framer = CausalFramer(WindowSpec(window_us=w))
    framer.push(ev)
    got = list(framer.complete_windows()) + list(framer.flush())
    gaps = [g for g in got if isinstance(g, Gap)]
    assert len(gaps) == 1 and gaps[0].windows > 10_000_000
    assert gaps[0].t_end_us - gaps[0].t_start_us == gaps[0].windows * w
    windows = [g for g in got if not isinstance(g, Gap)]
    t0, last_before_lull, first_after = int(ev["t"][0]), int(ev["t"][999]), int(ev["t"][1000])
    lull_start = t0 + ((last_before_lull - t0) // w + 1) * w  # the end of that event's window
    lull = (first_after - lull_start) // w  # about 50
    assert 45 <= lull < GAP_WINDOWS
    assert sum(1 for _, _, chunk in windows if chunk.shape[0] == 0) == lull
    spans = [(g.t_start_us, g.t_end_us) if isinstance(g, Gap) else g[:2] for g in got]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no window twice
    np.testing.assert_array_equal(np.concatenate([c for _, _, c in windows]), ev)


@pytest.mark.parametrize("model,dtype", [("ssa", "float64"), ("ds2ta", "int8"),
                                         ("saformer", "float64")])
def test_skipping_empty_steps_is_exactly_stepping_through_them(model, dtype):
    """The shipped models fire on their bias alone: without input their state enters a cycle
    rather than settling. Crossing 1,000 empty steps by whole cycles leaves the engine exactly
    where stepping through them does (membranes, DS2TA's ring, the head's sums and step count)
    and the next window's logits are the same to the bit (float64, integers)."""
    from eventformer.modelfile import load
    from eventformer.models import engine_for
    from eventformer.stream import _state_key, skip_empty_steps
    from eventformer.weights import shipped_model_path

    path = shipped_model_path(model)
    if path is None:
        pytest.skip(f"the shipped {model} is not installed")
    stepped, skipped = (engine_for(load(path), dtype=dtype) for _ in range(2))
    rng = np.random.default_rng(5)
    n = stepped.input_sites
    inputs = [np.sort(rng.choice(n, n // 8, replace=False)).astype(np.int32) for _ in range(4)]
    empty = np.empty(0, np.int32)
    for engine in (stepped, skipped):
        engine.reset()
        for idx in inputs[:3]:
            engine.step(idx, np.ones(idx.size, np.int32))
    for _ in range(1000):
        stepped.step(empty, empty)
    how = skip_empty_steps(skipped, 1000)
    assert how["period"] and how["computed"] < 1000  # whole cycles were added, not computed
    assert _state_key(stepped) == _state_key(skipped)
    assert stepped.steps_seen == skipped.steps_seen == 1003
    np.testing.assert_array_equal(stepped.head.sums, skipped.head.sums)
    assert stepped.head.sums.any()  # the cycle did reach the head: its sums were added up
    for engine in (stepped, skipped):
        engine.step(inputs[3], np.ones(inputs[3].size, np.int32))
    np.testing.assert_array_equal(stepped.logits(), skipped.logits())


def test_cli_stream_crosses_a_jump_of_2_to_the_40_us(tmp_path):
    """`stream` on a recording whose clock leaps 2^40 us (11 million windows of 100 ms): one gap
    record and one stderr line saying so; the window records tile the timeline and the step
    numbering counts the gap's windows."""
    import json

    from typer.testing import CliRunner

    from eventformer.events import write_npy
    from eventformer_cli.main import app

    rng = np.random.default_rng(6)
    ev = np.concatenate([_burst(rng, 3000, 0), _burst(rng, 3000, 2 ** 40)])
    write_npy(tmp_path / "jump.npy", ev)
    r = CliRunner().invoke(app, ["stream", str(tmp_path / "jump.npy"), "--json"])
    assert r.exit_code == 0, r.output
    *records, summary = [json.loads(line) for line in r.stdout.splitlines()]
    gaps = [x for x in records if "gap" in x]
    assert len(gaps) == 1 and gaps[0]["events"] == 0
    assert gaps[0]["gap"]["windows"] == summary["gap_windows"] > 10_000_000
    assert all(a["t_end_us"] == b["t_start_us"] for a, b in zip(records, records[1:]))
    assert [x["step"] for x in records] == list(np.cumsum(
        [x["gap"]["windows"] if "gap" in x else 1 for x in records]))
    assert summary["windows"] == records[-1]["step"] and summary["events"] == len(ev)
    assert "gap of 12.7 days without events" in r.stderr


def test_realtime_replay_crosses_a_jump_without_waiting_it_out(tmp_path, monkeypatch):
    """`stream --realtime` replays at recording speed, but a jump of an hour in the timestamps is
    crossed as one gap, not waited for: the records are those of the replay without
    --realtime. The replay runs on a virtual clock (sleeping advances it), so waiting the hour
    out would show as an hour of sleep, not hang the test."""
    import json
    import time as real_time
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import eventformer.stream as stream_module
    from eventformer.events import write_npy
    from eventformer_cli.main import app

    virtual = {"now": 0.0, "slept": 0.0}

    def sleep(seconds):
        virtual["now"] += seconds
        virtual["slept"] += seconds

    def perf_counter():
        virtual["now"] += 1e-6  # time moves on between readings
        return virtual["now"]

    rng = np.random.default_rng(8)
    hour = 3_600_000_000
    ev = np.concatenate([_burst(rng, 2000, 0), _burst(rng, 2000, hour)])
    write_npy(tmp_path / "hour.npy", ev)
    args = ["stream", str(tmp_path / "hour.npy"), "--json", "--window-ms", "10"]
    monkeypatch.setattr(stream_module, "time", SimpleNamespace(
        sleep=sleep, perf_counter=perf_counter, monotonic=real_time.monotonic,
        time=real_time.time))
    replayed = CliRunner().invoke(app, args + ["--realtime"])
    monkeypatch.undo()
    assert replayed.exit_code == 0, replayed.output
    # the bursts' 0.6 s replayed at recording speed; the hour between them never slept
    assert 0.3 < virtual["slept"] < 10
    fast = CliRunner().invoke(app, args)

    def records(r):
        return [{k: v for k, v in json.loads(line).items()
                 if k not in ("latency_ms", "backlog_events")}
                for line in r.stdout.splitlines() if "summary" not in line]

    assert records(replayed) == records(fast)
    assert any("gap" in x for x in records(replayed))


def test_stream_of_a_headerless_recording_assumes_and_says_its_sensor():
    """A DVS Gesture segment (bs2: no header) streams without --sensor-size: the first window's
    events fit the DVS128, which is assumed and said; the windows are those of the explicit
    size."""
    from conftest import GESTURE_DIR, need_gesture
    from typer.testing import CliRunner

    from eventformer_cli.main import app

    need_gesture()
    path = str(GESTURE_DIR / "2.bs2")
    assumed = CliRunner().invoke(app, ["stream", path, "--json"])
    given = CliRunner().invoke(app, ["stream", path, "--json", "--sensor-size", "128x128"])
    assert assumed.exit_code == 0, assumed.output
    assert "assumed 128x128 (DVS128" in assumed.stderr
    assert "assumed" not in given.stderr
    windows = [json.loads(line) for line in assumed.stdout.splitlines()]
    explicit = [json.loads(line) for line in given.stdout.splitlines()]
    assert [w.get("logits") for w in windows] == [w.get("logits") for w in explicit]
