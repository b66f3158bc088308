"""Scale-out on Dask: real local clusters (worker processes on 127.0.0.1), results as serial.

One two-worker cluster is shared by the module (the killed-worker case runs last, on it); the CLI
cases reach it with --scheduler, and one case starts its own with --workers.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import assert_every_layer_fires, one_error_line

distributed = pytest.importorskip("distributed")

from eventformer.cluster import (EngineSpec, StreamJob, evaluate_on_cluster,  # noqa: E402
                                 follow_streams, warm_workers)
from eventformer_cli.main import app  # noqa: E402

runner = CliRunner()
LIMIT = 8
STREAM_EVENTS = 40_000  # per followed stream: 14 windows of 3000 events
TIMING = {"samples_per_s", "events_per_s", "engine_seconds", "engine_ms_per_sample"}


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    import logging

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as lc, \
            Client(lc) as client:
        yield lc, client


@pytest.fixture(scope="module")
def shipped():
    from eventformer.weights import shipped_model_path

    return str(shipped_model_path())


@pytest.fixture(scope="module")
def synthetic():
    from eventformer.datasets import open_dataset

    return open_dataset("synthetic-gesture", None, "test")


def _json_lines(result):
    return [json.loads(line) for line in result.stdout.splitlines()]


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds" and k not in TIMING}


@pytest.fixture(scope="module")
def serial_run():
    r = runner.invoke(app, ["infer", "--dataset", "synthetic-gesture", "--limit", str(LIMIT),
                            "--json"])
    assert r.exit_code == 0, r.output
    return _json_lines(r)


def test_scheduler_run_is_identical_to_serial(cluster, serial_run):
    """Predictions, logits, per-layer rows and ops of every sample, in dataset order, and the
    summary: all as the serial run's (only timings differ)."""
    lc, _ = cluster
    r = runner.invoke(app, ["infer", "--dataset", "synthetic-gesture", "--limit", str(LIMIT),
                            "--json", "--scheduler", lc.scheduler_address])
    assert r.exit_code == 0, r.output
    lines = _json_lines(r)
    assert len(lines) == len(serial_run) == LIMIT + 1
    for ours, theirs in zip(lines[:-1], serial_run[:-1]):
        assert _without_timing(ours) == _without_timing(theirs)
    summary = lines[-1]
    assert summary.pop("failed") == 0
    assert _without_timing(summary) == _without_timing(serial_run[-1])
    assert_every_layer_fires(lines[0]["layers"])  # identical, and not vacuously so


def test_neurobench_metrics_on_the_cluster_are_the_serial_ones(cluster):
    """--neurobench on the cluster: each sample's "neurobench" object and the summary's mean
    are the serial run's."""
    lc, _ = cluster
    args = ["infer", "--dataset", "synthetic-gesture", "--limit", "2", "--json", "--neurobench"]
    serial = runner.invoke(app, args)
    on_dask = runner.invoke(app, [*args, "--scheduler", lc.scheduler_address])
    assert serial.exit_code == 0, serial.output
    assert on_dask.exit_code == 0, on_dask.output
    ours, theirs = _json_lines(on_dask), _json_lines(serial)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert a["neurobench"] == b["neurobench"]
    assert ours[0]["neurobench"]["SynapticOperations"]["Effective_ACs"] > 0


def test_local_cluster_from_the_cli(serial_run):
    """--workers N starts (and closes) a local cluster; the human summary is the serial one."""
    r = runner.invoke(app, ["infer", "--dataset", "synthetic-gesture", "--limit", "4",
                            "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "local Dask cluster of 2 worker processes" in r.stderr
    assert "start-up takes several seconds, which pays off on larger sets" in r.stderr
    assert "accuracy" in r.stderr and "per layer, mean per sample" in r.stderr


def _write_npz(path, events):
    np.savez(path, t=events["t"], x=events["x"], y=events["y"], p=events["p"])


def test_a_bad_file_is_reported_and_the_rest_go_on(cluster, synthetic, tmp_path):
    """A SpikingJelly-layout folder with one corrupt sample among good ones: that sample is an
    error record (and one error line), the others are classified, exit code 2 at the end."""
    lc, _ = cluster
    base = tmp_path / "events_np" / "test"
    good = [events for _, events in synthetic.iter_events(3)]
    for label, events in zip((0, 2), (good[0], good[2])):
        (base / str(label)).mkdir(parents=True)
        _write_npz(base / str(label) / "a.npz", events)
    (base / "1").mkdir()
    (base / "1" / "a.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
    r = runner.invoke(app, ["infer", "--dataset", "dvs-gesture", "--data-dir", str(tmp_path),
                            "--json", "--scheduler", lc.scheduler_address])
    assert r.exit_code == 2, r.output
    first, bad, third, summary = _json_lines(r)
    assert "prediction" in first and "prediction" in third
    assert bad["label"] == 1 and "a.npz" in bad["error"] and "prediction" not in bad
    assert summary["summary"] and summary["samples"] == 2 and summary["failed"] == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a.npz" in errors[0]
    assert "1 of 3 samples could not be classified" in r.stderr


def test_ctrl_c_cancels_the_tasks_and_summarises_what_finished(cluster, shipped, synthetic):
    _, client = cluster

    spec = EngineSpec(shipped, threads=1)
    engine = spec.build()
    seen = []

    def on_sample(record, _result):
        seen.append(record["sample"]["name"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    summary = evaluate_on_cluster(client, spec, engine, synthetic, on_sample=on_sample)
    assert summary["interrupted"]
    assert 2 <= summary["samples"] == len(seen) < len(synthetic)
    assert seen == [ref.name for ref in synthetic.samples[:len(seen)]] or \
        seen[:2] == [ref.name for ref in synthetic.samples[:2]]
    deadline = time.monotonic() + 10  # the cancelled tasks leave the scheduler
    while time.monotonic() < deadline and any(
            str(k).startswith("eventformer-sample") for k in client.who_has()):
        time.sleep(0.1)
    assert not [k for k in client.who_has() if str(k).startswith("eventformer-sample")]


def _interrupt_after(monkeypatch, name: str, callback: str, n: int) -> None:
    """Wrap eventformer.cluster.NAME so that its ``callback`` raises KeyboardInterrupt (Ctrl-C in
    the client) right after its n-th call has done its work."""
    import eventformer.cluster as cluster_module

    real = getattr(cluster_module, name)

    def wrapped(*args, **kwargs):
        inner, calls = kwargs[callback], []

        def interrupting(*a):
            inner(*a)
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt

        kwargs[callback] = interrupting
        return real(*args, **kwargs)

    monkeypatch.setattr(cluster_module, name, wrapped)


def test_cli_ctrl_c_on_the_cluster_prints_the_samples_finished(cluster, monkeypatch):
    """`infer --dataset ... --scheduler` and Ctrl-C: as the serial run, the samples finished
    (JSON lines), a summary saying interrupted, one line saying how many, exit code 130."""
    lc, _ = cluster
    _interrupt_after(monkeypatch, "evaluate_on_cluster", "on_sample", 3)
    r = runner.invoke(app, ["infer", "--dataset", "synthetic-gesture", "--limit", str(LIMIT),
                            "--json", "--scheduler", lc.scheduler_address])
    assert r.exit_code == 130, r.output
    *samples, summary = _json_lines(r)
    assert summary["summary"] and summary["interrupted"]
    assert 3 <= summary["samples"] == len(samples) < LIMIT
    assert f"interrupted: the results above cover {len(samples)} of {LIMIT} samples" in r.stderr


def test_cli_ctrl_c_stops_every_stream_and_each_reports(cluster, synthetic, tmp_path,
                                                        monkeypatch):
    """`stream A B --follow --scheduler` and Ctrl-C after two windows: both streams stop long
    before their idle timeout, each one's windows and summary (saying interrupted) are printed,
    exit code 130."""
    lc, _ = cluster
    _stream_sources(synthetic, tmp_path)
    a, b = (str(tmp_path / n) for n in ("src_a.aedat", "src_b.aedat"))
    _interrupt_after(monkeypatch, "follow_streams", "on_window", 2)
    r = runner.invoke(app, ["stream", a, b, "--follow", "--idle-timeout", "120",
                            "--window-events", "3000", "--json", "--scheduler",
                            lc.scheduler_address])
    assert r.exit_code == 130, r.output
    lines = _json_lines(r)
    summaries = {x["stream"]: x for x in lines if x.get("summary")}
    assert set(summaries) == {a, b}
    for name, s in summaries.items():
        assert s["interrupted"]
        windows = [x for x in lines if x.get("stream") == name and "t_start_us" in x]
        assert len(windows) == s["windows"]
    assert "interrupted: the results above cover" in r.stderr


def test_cli_without_dask_says_how_to_install(monkeypatch, tmp_path):
    import eventformer.cluster

    monkeypatch.setattr(eventformer.cluster, "have_distributed", lambda: False)
    line = one_error_line(runner.invoke(app, ["infer", "--dataset", "synthetic-gesture",
                                              "--workers", "2"]))
    assert "pip install 'eventformer[cluster]'" in line
    line = one_error_line(runner.invoke(app, ["stream", str(tmp_path / "a"), str(tmp_path / "b"),
                                              "--follow", "--workers", "2"]))
    assert "pip install 'eventformer[cluster]'" in line


def test_several_streams_without_workers_is_one_sentence(tmp_path):
    line = one_error_line(runner.invoke(app, ["stream", str(tmp_path / "a"),
                                              str(tmp_path / "b")]))
    assert "--workers" in line


def _stream_sources(synthetic, tmp_path) -> dict:
    """Two different gestures as finished AEDAT 3.1 files src_a, src_b (their bytes by name)."""
    from eventformer.events.aedat3_writer import write_aedat31

    samples = list(synthetic.iter_events(6))
    sources = {}
    for name, k in (("a", 0), ("b", 5)):
        write_aedat31(tmp_path / f"src_{name}.aedat", samples[k][1][:STREAM_EVENTS])
        sources[name] = (tmp_path / f"src_{name}.aedat").read_bytes()
    return sources


def _serial_windows(engine, path) -> list:
    from eventformer.stream import FileSource, WindowSpec, run_stream

    engine.reset()
    windows = []
    run_stream(engine, FileSource(str(path), False), WindowSpec(window_events=3000),
               on_window=windows.append)
    return windows


def test_two_streams_followed_concurrently(cluster, shipped, synthetic, tmp_path):
    """Two AEDAT 3.1 files grow (a thread appends both, in odd-sized chunks, interleaved, over
    about two seconds) while both are followed at once, one per worker; a missing stream fails
    alone.
    Each stream's windows are those of a serial run over its finished file, each window once."""
    from eventformer.stream import WindowSpec

    _, client = cluster
    sources = _stream_sources(synthetic, tmp_path)
    for name in sources:
        (tmp_path / f"{name}.aedat").write_bytes(b"")

    def writer():
        pos = dict.fromkeys(sources, 0)
        sizes = [7, 4093, 1, 20000, 333, 9000]  # records cut in half, the header in pieces
        i = 0
        while any(pos[n] < len(sources[n]) for n in sources):
            for shift, (name, data) in enumerate(sources.items()):
                n = sizes[(i + shift) % len(sizes)]
                with open(tmp_path / f"{name}.aedat", "ab") as f:
                    f.write(data[pos[name]:pos[name] + n])
                pos[name] += n
            i += 1
            time.sleep(0.03)

    spec = EngineSpec(shipped, threads=1)
    jobs = [StreamJob(n, str(tmp_path / f"{n}.aedat"), WindowSpec(window_events=3000),
                      follow=True, idle_timeout=1.5) for n in ("missing", "a", "b")]
    windows, ended = [], []
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results, interrupted = follow_streams(client, spec, jobs, on_window=windows.append,
                                              on_end=ended.append)
    finally:
        thread.join()
    assert not interrupted
    assert ended[0]["stream"] == "missing" and "no such file" in ended[0]["error"]
    assert [r["stream"] for r in results] == ["missing", "a", "b"]
    engine = spec.build()
    for name, result in zip(("a", "b"), results[1:]):
        ours = [w for w in windows if w["stream"] == name]
        serial = _serial_windows(engine, tmp_path / f"src_{name}.aedat")
        assert len(ours) == len(serial) == result["summary"]["windows"] > 3
        assert result["summary"]["events"] == STREAM_EVENTS
        assert [w["step"] for w in ours] == list(range(1, len(serial) + 1))
        for w, s in zip(ours, serial):
            assert (w["events"], w["t_start_us"], w["logits"]) == \
                (s["events"], s["t_start_us"], s["logits"])
        assert_every_layer_fires(engine.layer_stats())
    assert windows[0]["logits"] != [w for w in windows if w["stream"] != windows[0]["stream"]][0][
        "logits"]  # two different streams, not one state shared
    # both were followed while they grew: each one's windows interleave with the other's
    order = [w["stream"] for w in windows]
    assert sum(1 for p, q in zip(order, order[1:]) if p != q) >= 2, order


def test_streams_from_the_cli_on_a_local_cluster(synthetic, tmp_path):
    """`stream A B MISSING --workers 2 --json`: one line per window with its stream's name, one
    summary line per stream, the missing one an error line; exit code 2."""
    _stream_sources(synthetic, tmp_path)
    a, b, missing = (str(tmp_path / n) for n in ("src_a.aedat", "src_b.aedat", "missing.aedat"))
    r = runner.invoke(app, ["stream", a, b, missing, "--follow", "--idle-timeout", "0.5",
                            "--window-events", "3000", "--workers", "2", "--json"])
    assert r.exit_code == 2, r.output
    lines = _json_lines(r)
    assert [x for x in lines if "error" in x] == [
        {"stream": missing, "error": f"{missing}: no such file"}]
    summaries = {x["stream"]: x for x in lines if x.get("summary")}
    assert set(summaries) == {a, b}
    for name in (a, b):
        windows = [x for x in lines if x.get("stream") == name and "t_start_us" in x]
        assert len(windows) == summaries[name]["windows"] > 3
        assert sum(w["events"] for w in windows) == summaries[name]["events"] == STREAM_EVENTS
    assert "1 of 3 streams failed" in r.stderr


def test_a_stream_whose_worker_is_killed_is_rerun_without_repeating_windows(
        cluster, shipped, synthetic, tmp_path):
    """SIGKILL the worker following a growing stream after its first windows: Dask reruns the
    stream on a worker from the file's start, the replayed windows are dropped, and the stream's
    windows are still each of a serial run's exactly once."""
    from eventformer.stream import WindowSpec

    _, client = cluster
    client.wait_for_workers(2, timeout=30)
    sources = _stream_sources(synthetic, tmp_path)
    data = sources["a"]
    (tmp_path / "a.aedat").write_bytes(b"")

    def writer():  # about three seconds of growth
        step = len(data) // 100 + 1
        for pos in range(0, len(data), step):
            with open(tmp_path / "a.aedat", "ab") as f:
                f.write(data[pos:pos + step])
            time.sleep(0.03)

    pids = client.run(os.getpid)
    killed = []

    def on_window(record):
        windows.append(record)
        if not killed:
            for addr, keys in client.processing().items():
                if any(str(k).startswith("eventformer-stream-") for k in keys):
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(addr)

    spec = EngineSpec(shipped, threads=1)
    windows = []
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        (result,), _ = follow_streams(
            client, spec, [StreamJob("a", str(tmp_path / "a.aedat"),
                                     WindowSpec(window_events=3000), follow=True,
                                     idle_timeout=1.5)], on_window=on_window)
    finally:
        thread.join()
    assert killed and "summary" in result, result
    serial = _serial_windows(spec.build(), tmp_path / "src_a.aedat")
    assert [w["step"] for w in windows] == list(range(1, len(serial) + 1))
    assert [w["logits"] for w in windows] == [s["logits"] for s in serial]
    assert result["summary"]["windows"] == len(serial)
    client.wait_for_workers(2, timeout=30)


def _shipped_path():
    from eventformer.weights import shipped_model_path

    return shipped_model_path()


def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost(cluster, shipped, synthetic):
    """SIGKILL a worker while it runs a sample (its first, while it builds its engine): Dask
    reschedules its work, the nanny starts a new worker, every sample comes back once, and the
    results are the serial run's. Runs last: it changes the shared cluster."""
    _, client = cluster
    from eventformer.evaluate import evaluate

    spec = EngineSpec(shipped, dtype="float64", threads=1)  # no worker holds this engine yet
    engine = spec.build()
    serial = []
    evaluate(engine, synthetic, limit=12, on_sample=lambda rec, _r: serial.append(rec))
    pids = client.run(os.getpid)
    killed = []

    def killer():
        deadline = time.monotonic() + 30
        while not killed and time.monotonic() < deadline:
            busy = [addr for addr, keys in client.processing().items() if keys]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.01)

    thread = threading.Thread(target=killer)
    thread.start()
    records = []
    summary = evaluate_on_cluster(client, spec, engine, synthetic, limit=12,
                                  on_sample=lambda rec, _r: records.append(rec))
    thread.join()
    assert killed, "no worker was busy to be killed"
    assert summary["samples"] == 12 and summary["failed"] == 0
    assert [r["sample"]["name"] for r in records] == [r["sample"]["name"] for r in serial]
    for ours, theirs in zip(records, serial):
        assert _without_timing(ours) == _without_timing(theirs)
    client.wait_for_workers(2, timeout=30)  # the nanny replaced the killed one
    assert killed[0] in pids and set(client.run(os.getpid).values()) != set(pids.values())
    warm_workers(client, spec)
