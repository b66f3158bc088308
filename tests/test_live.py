"""Live sources: wire formats decoded exactly, garbage rejected and counted, and a live run over a
recording's events giving the windows and decisions of `stream` on the file. Peers run on
127.0.0.1 only: the project's fake camera in a separate process. Timeouts are generous (a
loaded CI machine may pause a process for a minute); nothing here asserts on time."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eventformer.events import EVENT_DTYPE, read_events
from eventformer.events.formats import Evt2Decoder, Evt3Decoder
from eventformer.live.sources import ByteStreamSource, UdpSource, parse_address
from eventformer.live.wire import (Batch, datagram_decoder, encode_datagram_records,
                                   encode_evt2, encode_evt3, prophesee_header)
from eventformer.errors import EventformerError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "events"
GESTURE = DATA / "dvs-gesture" / "1.bs2"
EVT3 = DATA / "formats" / "evt3_sample.raw"
#: Long enough to outlast a process stopped for a minute on a loaded machine.
PATIENCE_S = 120

runner = CliRunner()


def needs(path):
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    return path


def gesture_events():
    return read_events(needs(GESTURE)).events


# --- wire formats ----------------------------------------------------------------------------

def batch_of(datagrams, decoder):
    kept = [d for d in datagrams if decoder.length_ok(d[:4], len(d))]
    return Batch(memoryview(b"".join(kept)), np.array([len(d) for d in kept], np.int64),
                 np.arange(len(kept), dtype=np.int64) * 1000), len(datagrams) - len(kept)


@pytest.mark.parametrize("fmt,timed", [("spif", True), ("spif", False), ("faery-13", True),
                                       ("faery-8", True)])
def test_udp_layouts_round_trip_and_reject_garbage_whole(fmt, timed):
    ev = gesture_events()[:5000]
    per = 37
    datagrams = [encode_datagram_records(ev[i:i + per], fmt, timed)
                 for i in range(0, len(ev), per)]
    good = len(datagrams)
    # garbage of a valid length: a pixel far outside the 128x128 sensor, in an otherwise fine
    # datagram; and for the layouts with flags, a word or record of the wrong kind
    off = ev[:3].copy()
    off["x"][1] = 5000
    datagrams.insert(4, encode_datagram_records(off, fmt, timed))
    if fmt == "spif":
        datagrams.insert(9, encode_datagram_records(ev[:4], fmt, not timed))
    if fmt == "faery-13":
        bad = bytearray(encode_datagram_records(ev[:2], fmt))
        bad[12] = 7  # "on" must be 0 or 1
        datagrams.insert(9, bytes(bad))
    datagrams.insert(2, b"\x01\x02\x03")  # no whole record
    decoder = datagram_decoder(fmt, 128, 128)
    batch, short = batch_of(datagrams, decoder)
    out = decoder.decode(batch)
    assert short == 1
    assert out.rejected_datagrams == len(datagrams) - good - short
    # records counted in the stream's own layout: 4 untimed words are 2 timed records, and
    # 4 timed records 8 untimed words
    wrong_kind = (2 if timed else 8) if fmt == "spif" else 2 if fmt == "faery-13" else 0
    assert out.rejected_events == 3 + wrong_kind
    np.testing.assert_array_equal(out.events[["x", "y", "p"]], ev[["x", "y", "p"]])
    if timed:
        np.testing.assert_array_equal(out.events["t"], ev["t"])
    else:  # no time on the wire: each event has its datagram's arrival (microseconds)
        assert np.all(np.diff(out.events["t"]) >= 0)
    assert out.reasons


@pytest.mark.parametrize("fmt", ["spif", "faery-8"])
def test_a_wrapping_32_bit_clock_is_unwrapped_across_datagrams(fmt):
    ev = np.zeros(6, EVENT_DTYPE)
    # every step below 2^31 us (the rule's bound), the clock going round twice
    ev["t"] = [(1 << 32) - 20, (1 << 32) - 5, (1 << 32) + 3, (1 << 32) + (1 << 30),
               (1 << 32) + (3 << 30), (2 << 32) + 5]
    ev["x"], ev["y"] = 3, 4
    decoder = datagram_decoder(fmt, 8, 8)
    got = []
    for i in range(0, 6, 2):  # one batch per pair: the wrap is carried between batches
        batch, _ = batch_of([encode_datagram_records(ev[i:i + 2], fmt)], decoder)
        got.append(decoder.decode(batch).events)
    t = np.concatenate(got)["t"]
    np.testing.assert_array_equal(t - t[0], ev["t"] - ev["t"][0])


@pytest.mark.parametrize("encode,decoder", [(encode_evt2, Evt2Decoder), (encode_evt3, Evt3Decoder)])
def test_evt_encoders_round_trip_through_the_file_decoders_in_any_pieces(encode, decoder):
    ev = gesture_events()
    fmt = "evt2" if decoder is Evt2Decoder else "evt3"
    data = prophesee_header(fmt, 128, 128) + encode(ev)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.integers(0, len(data), 40))
    d = decoder()
    parts = [d.feed(data[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(data)])]
    assert d.finish().message is None and d.sensor_size == (128, 128)
    np.testing.assert_array_equal(np.concatenate(parts), ev)


def test_addresses_are_checked_in_one_sentence():
    assert parse_address("udp://127.0.0.1:0") == ("udp", "127.0.0.1", 0)
    assert parse_address("tcp://localhost:7777") == ("tcp", "localhost", 7777)
    for bad in ("udp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://:5", "udp://h:99999"):
        with pytest.raises(EventformerError):
            parse_address(bad)


# --- a UDP socket on 127.0.0.1 ------------------------------------------------------------------

def test_udp_source_counts_datagrams_and_rejects_garbage_without_stopping():
    ev = gesture_events()[:2000]
    source = UdpSource("udp://127.0.0.1:0", "faery-13", (128, 128)).start()
    try:
        send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        datagrams = [encode_datagram_records(ev[i:i + 100], "faery-13")
                     for i in range(0, 2000, 100)]
        datagrams.insert(3, b"not an event at all")  # 19 bytes: no whole 13-byte record
        for d in datagrams:
            send.sendto(d, ("127.0.0.1", source.port))
        send.close()
        got = []
        while sum(len(g) for g in got) < 2000:
            source.wait(PATIENCE_S)
            got.append(source.read())
        c = source.counters()
    finally:
        source.close()
    np.testing.assert_array_equal(np.concatenate(got), ev)
    assert c["datagrams_received"] == 21 and c["datagrams_rejected"] == 1
    assert c["events_decoded"] == 2000 and c["events_rejected"] == 1
    assert any("not whole faery-13 records" in n for n in source.notes)


# --- the fake camera and the command line ---------------------------------------------------------

def fake_camera(*args):
    """The fake camera in its own process; returns it and its first line (where it is)."""
    proc = subprocess.Popen([sys.executable, "-m", "eventformer.live.fake_camera", *map(str, args)],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if not line:
        proc.wait(PATIENCE_S)
        pytest.fail(f"the fake camera did not start: {proc.stderr.read()}")
    return proc, line.strip()


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(PATIENCE_S)


def json_lines(output):
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [w for w in lines if "summary" not in w], lines[-1]


def decisions(windows):
    return [(w["t_start_us"], w["t_end_us"], w["events"], w["prediction"], w["logits"])
            for w in windows]


@pytest.fixture(scope="module")
def file_run():
    """`stream` on the gesture file: the windows a live run over its events must give."""
    from cli.main import app

    r = runner.invoke(app, ["stream", str(needs(GESTURE)), "--sensor-size", "128x128",
                            "--window-ms", "50", "--dtype", "float64", "--json"])
    assert r.exit_code == 0, r.output
    return json_lines(r.stdout)


def test_tcp_evt2_live_run_gives_the_files_windows_and_decisions(file_run, tmp_path):
    from cli.main import app

    proc, line = fake_camera(GESTURE, "--tcp-serve", 0, "--format", "evt2", "--speed", 0,
                             "--sensor-size", "128x128")
    try:
        port = int(line.rsplit(":", 1)[1])
        record = tmp_path / "received.h5"
        r = runner.invoke(app, ["stream", f"tcp://127.0.0.1:{port}", "--format", "evt2",
                                "--window-ms", "50", "--dtype", "float64", "--json",
                                "--idle-timeout", str(PATIENCE_S), "--record", str(record)])
    finally:
        stop(proc)
    assert r.exit_code == 0, r.output
    windows, summary = json_lines(r.stdout)
    assert decisions(windows) == decisions(file_run[0])  # float64: exactly the same logits
    assert all(w["arrival_latency_ms"] is None or w["arrival_latency_ms"] >= 0 for w in windows)
    assert summary["live"]["events_decoded"] == summary["events"] == len(gesture_events())
    assert summary["on_overload"] == "queue" and summary["dropped_windows"] == 0
    np.testing.assert_array_equal(read_events(record).events, gesture_events())


def test_udp_live_run_through_the_command_line(file_run, tmp_path):
    record = tmp_path / "udp.h5"
    cli = subprocess.Popen([sys.executable, "-m", "cli.main", "stream", "udp://127.0.0.1:0",
                            "--format", "faery-13", "--sensor-size", "128x128", "--window-ms",
                            "50", "--dtype", "float64", "--json", "--idle-timeout", "4",
                            "--record", str(record)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    camera = None
    try:
        line = ""
        while "listening on" not in line:
            line = cli.stderr.readline()
            assert line, "the stream ended before listening"
        port = line.split("127.0.0.1:", 1)[1].split()[0]
        camera, _ = fake_camera(GESTURE, "--udp", f"127.0.0.1:{port}", "--format", "faery-13",
                                "--speed", 0)
        camera.wait(PATIENCE_S)
        out, rest = cli.communicate(timeout=PATIENCE_S)
    finally:
        for proc in (cli, camera):
            if proc is not None:
                stop(proc)
    assert cli.returncode == 0, rest
    windows, summary = json_lines(out)
    c = summary["live"]
    n = len(gesture_events())
    # the socket's buffer holds the whole recording, so nothing is lost on 127.0.0.1
    assert c["datagrams_rejected"] == 0 and c["events_decoded"] == n == summary["events"]
    assert decisions(windows) == decisions(file_run[0])
    np.testing.assert_array_equal(read_events(record).events, gesture_events())


def test_standard_input_evt3_gives_the_files_decisions():
    from cli.main import app

    path = needs(EVT3)
    args = ["--window-ms", "2", "--dtype", "float64", "--json"]
    want = runner.invoke(app, ["stream", str(path), *args])
    got = runner.invoke(app, ["stream", "-", "--format", "evt3", *args], input=path.read_bytes())
    assert want.exit_code == 0 and got.exit_code == 0, got.output
    assert decisions(json_lines(got.stdout)[0]) == decisions(json_lines(want.stdout)[0])


def test_a_live_stream_draws_its_figures(tmp_path):
    """--plot on a live source draws what it draws for a file: one figure per stream."""
    pytest.importorskip("matplotlib")
    from cli.main import app

    path = needs(EVT3)
    r = runner.invoke(app, ["stream", "-", "--format", "evt3", "--window-ms", "2",
                            "--plot", str(tmp_path / "figs")], input=path.read_bytes())
    assert r.exit_code == 0, r.output
    figures = sorted((tmp_path / "figs").iterdir())
    assert figures and all(f.suffix == ".png" and f.stat().st_size > 0 for f in figures)


def test_a_refused_connection_is_one_sentence():
    from cli.main import app

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = runner.invoke(app, ["stream", f"tcp://127.0.0.1:{port}", "--format", "evt2"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "connection refused" in lines[0]


def test_a_dropped_connection_reports_what_came_then_one_error(tmp_path):
    from cli.main import app

    # at recording speed: the reset comes ~0.4 s after the connection, not during its set-up
    proc, line = fake_camera(GESTURE, "--tcp-serve", 0, "--format", "evt2", "--speed", 1,
                             "--sensor-size", "128x128", "--drop-after", 100_000)
    try:
        r = runner.invoke(app, ["stream", f"tcp://127.0.0.1:{line.rsplit(':', 1)[1]}",
                                "--format", "evt2", "--window-ms", "50",
                                "--idle-timeout", str(PATIENCE_S)])
    finally:
        stop(proc)
    assert r.exit_code == 2, r.output
    assert "windows" in r.stderr  # the summary of what came before the drop
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "dropped" in r.stderr


def test_reconnect_retries_and_restarts_the_windows_clock():
    proc, line = fake_camera(GESTURE, "--tcp-serve", 0, "--format", "evt2", "--speed", 1,
                             "--sensor-size", "128x128", "--clients", 2, "--drop-after", 100_000)
    notes = []
    try:
        from eventformer.modelfile import load
        from eventformer.models import Spikformer
        from eventformer.stream import WindowSpec, run_stream
        from eventformer.weights import shipped_model_path

        source = ByteStreamSource(f"tcp://127.0.0.1:{line.rsplit(':', 1)[1]}", "evt2",
                                  on_note=notes.append, reconnect=True).start()
        try:
            windows = []
            summary = run_stream(Spikformer(load(shipped_model_path())), source,
                                 WindowSpec(window_us=50_000), on_window=windows.append,
                                 idle_timeout=3)
        finally:
            source.close()
    finally:
        stop(proc)
    c = summary["live"]
    assert c["connections"] == 2 and c["reconnects"] >= 2  # dropped twice, then refused
    assert summary["restarts"] == 1
    assert any("retrying" in n for n in notes) and any("reconnected" in n for n in notes)
    # each connection's windows start at its own first event
    assert [w["t_start_us"] for w in windows].count(int(gesture_events()["t"][0])) == 2


def test_drop_classifies_the_newest_window_and_reports_every_dropped_one():
    from eventformer.modelfile import load
    from eventformer.models import Spikformer
    from eventformer.stream import WindowSpec, run_stream
    from eventformer.weights import shipped_model_path

    ev = gesture_events()
    data = prophesee_header("evt2", 128, 128) + encode_evt2(ev)
    runs = {}
    for policy in ("queue", "drop"):
        source = ByteStreamSource("-", "evt2", stdin=io.BytesIO(data)).start()
        records = []
        try:
            summary = run_stream(Spikformer(load(shipped_model_path())), source,
                                 WindowSpec(window_us=20_000), on_window=records.append,
                                 on_overload=policy, idle_timeout=PATIENCE_S)
        finally:
            source.close()
        runs[policy] = (summary, records)
    queued, dropped = runs["queue"], runs["drop"]
    s = dropped[0]
    assert s["on_overload"] == "drop" and "dropped" in s["on_overload_reason"]
    marked = [w for w in dropped[1] if w.get("dropped")]
    # a whole recording arriving at once: the engine is behind by many windows
    assert s["dropped_windows"] == len(marked) > 0
    assert s["dropped_events"] == sum(w["events"] for w in marked)
    assert s["windows"] + s["dropped_windows"] == queued[0]["windows"]
    assert s["events"] + s["dropped_events"] == queued[0]["events"] == len(ev)
    assert queued[0]["dropped_windows"] == 0


def test_ctrl_c_on_a_live_stream_reports_the_windows_done_and_exits_130():
    cli = subprocess.Popen([sys.executable, "-m", "cli.main", "stream", "udp://127.0.0.1:0",
                            "--format", "spif", "--sensor-size", "128x128", "--window-ms", "100",
                            "--json", "--idle-timeout", str(PATIENCE_S)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    camera = None
    try:
        line = ""
        while "listening on" not in line:
            line = cli.stderr.readline()
            assert line, "the stream ended before listening"
        port = line.split("127.0.0.1:", 1)[1].split()[0]
        camera, _ = fake_camera(GESTURE, "--udp", f"127.0.0.1:{port}", "--format", "spif",
                                "--speed", 1)
        first = cli.stdout.readline()  # a window has been classified
        assert first.startswith("{")
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=PATIENCE_S)
    finally:
        for proc in (cli, camera):
            if proc is not None:
                stop(proc)
    assert cli.returncode == 130, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["summary"] and summary["interrupted"]
    assert summary["windows"] >= 2 and "interrupted" in err


def test_live_options_are_refused_where_they_mean_nothing(tmp_path):
    from cli.main import app

    cases = [(["udp://127.0.0.1:0", "--format", "spif"], "--sensor-size"),
             (["udp://127.0.0.1:0", "--format", "evt3", "--sensor-size", "64x64"], "EVT 3.0"),
             (["tcp://127.0.0.1:9"], "--format"),
             (["-", "--format", "evt2", "--reconnect"], "--reconnect"),
             ([str(needs(GESTURE)), "--on-overload", "drop"], "live sources"),
             (["udp://127.0.0.1:0", "--format", "spif", "--sensor-size", "64x64",
               "--record", str(tmp_path / "no" / "such.h5")], "folder"),
             (["udp://127.0.0.1:0", "--format", "spif", "--sensor-size", "64x64",
               "--record", str(tmp_path / "events.txt")], ".aedat4")]
    for args, words in cases:
        r = runner.invoke(app, ["stream", *args])
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], args



# --- DV's network stream ------------------------------------------------------------------------

DV_COMPRESSIONS = ("none", "lz4", "lz4-high", "zstd", "zstd-high")


def dv_stream(events, compression, per=300, size=(128, 128), camera="DVXplorer_T1"):
    from eventformer.live.wire import encode_dv_header, encode_dv_packet

    return encode_dv_header(*size, camera, compression) + b"".join(
        encode_dv_packet(events[i:i + per], compression) for i in range(0, len(events), per))


@pytest.mark.parametrize("compression", DV_COMPRESSIONS)
def test_dv_stream_round_trips_in_any_pieces_with_its_header(compression):
    from eventformer.live.wire import dv_stream_decoder

    ev = gesture_events()[:3000]
    data = dv_stream(ev, compression)
    for piece in (1, 7, 4096, len(data)):
        decoder = dv_stream_decoder("dv://test")
        got = [decoder.feed(data[i:i + piece]) for i in range(0, len(data), piece)]
        np.testing.assert_array_equal(np.concatenate(got), ev)
        assert decoder.sensor_size == (128, 128) and decoder.camera == "DVXplorer_T1"
        assert decoder.compression == compression and decoder.packets == 10
        assert decoder.finish().torn_bytes == 0


def test_dv_stream_skips_other_streams_packets():
    from eventformer.live.wire import dv_stream_decoder, encode_dv_packet

    ev = gesture_events()[:500]
    data = dv_stream(ev[:250], "lz4") + encode_dv_packet(ev[:9], "lz4", stream_id=3) + \
        encode_dv_packet(ev[250:], "lz4")
    decoder = dv_stream_decoder("dv://test")
    np.testing.assert_array_equal(decoder.feed(data), ev)
    assert decoder.packets == 3 and decoder.packets_skipped == 1


def test_dv_stream_faults_are_one_sentence():
    from eventformer.events.readers import EventFileError
    from eventformer.live.wire import dv_stream_decoder, encode_dv_header

    ev = gesture_events()[:100]
    good = dv_stream(ev, "zstd")
    header_len = len(encode_dv_header(128, 128, "DVXplorer_T1", "zstd"))

    def error_of(data):
        with pytest.raises(EventFileError) as info:
            dv_stream_decoder("dv://h:1").feed(data)
        message = str(info.value)
        assert message.startswith("dv://h:1: ") and "\n" not in message
        return message

    evt2 = prophesee_header("evt2", 128, 128) + encode_evt2(ev)
    assert "not a DV network stream" in error_of(evt2)
    # the compression field is the IOHeader's first: after its u32 length, root offset,
    # identifier and vtable, at the table's start + 4 (found by value, 3 = zstd)
    header = bytearray(good[:header_len])
    at = header.index(bytes([3, 0, 0, 0]), 12)
    header[at] = 9
    assert "compression 9" in error_of(bytes(header) + good[header_len:])
    garbage = bytearray(good)
    garbage[header_len + 8:header_len + 24] = b"\xff" * 16  # the first packet's payload
    assert "does not decompress as zstd" in error_of(bytes(garbage))
    huge = bytearray(good)
    huge[header_len + 4:header_len + 8] = (2 ** 31).to_bytes(4, "little")
    assert "announces" in error_of(bytes(huge))


@pytest.mark.parametrize("compression,unix", [("lz4", False), ("zstd-high", False),
                                              ("none", True)])
def test_dv_live_run_gives_the_files_windows_and_decisions(file_run, tmp_path, compression, unix):
    from cli.main import app

    where = ["--dv-unix", tmp_path / "dv.sock"] if unix else ["--dv-serve", 0]
    proc, line = fake_camera(GESTURE, *where, "--compression", compression, "--speed", 0,
                             "--sensor-size", "128x128")
    try:
        url = line.split("serving ", 1)[1]
        r = runner.invoke(app, ["stream", url, "--window-ms", "50", "--dtype", "float64",
                                "--json", "--idle-timeout", str(PATIENCE_S)])
    finally:
        stop(proc)
    assert r.exit_code == 0, r.output
    windows, summary = json_lines(r.stdout)
    assert decisions(windows) == decisions(file_run[0])
    c = summary["live"]
    assert c["events_decoded"] == summary["events"] == len(gesture_events())
    assert c["compression"] == compression and c["camera"] == "eventformer-fake-camera"
    assert c["packets"] == -(-len(gesture_events()) // 2048)


def test_dv_addresses_and_options_are_checked_in_one_sentence():
    from cli.main import app

    for args, words in ((["dv+unix://relative/path"], "dv+unix:///ABSOLUTE/PATH"),
                        (["dv://127.0.0.1:1", "--format", "evt2"], "says its own format"),
                        (["dv://127.0.0.1"], "dv://HOST:PORT")):
        r = runner.invoke(app, ["stream", *args])
        assert r.exit_code == 2 and words in r.output, r.output
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    r = runner.invoke(app, ["stream", f"dv://127.0.0.1:{port}"])
    assert r.exit_code == 2 and "connection refused" in r.output, r.output


# --- --record FILE.aedat4 -----------------------------------------------------------------------

def aedat_package_events(path):
    """A file's events as the `aedat` package (iniVation's format, read in Rust) decodes them."""
    aedat = pytest.importorskip("aedat")
    packets = [p["events"] for p in aedat.Decoder(str(path)) if "events" in p]
    raw = np.concatenate(packets)
    out = np.empty(raw.shape[0], EVENT_DTYPE)
    out["t"], out["x"], out["y"], out["p"] = raw["t"], raw["x"], raw["y"], raw["p"]
    return out


@pytest.mark.parametrize("compression", DV_COMPRESSIONS)
def test_aedat4_writer_is_read_exactly_by_the_projects_reader_and_aedat(tmp_path, compression):
    from eventformer.events.aedat4_writer import Aedat4Writer

    ev = gesture_events()[:5000]
    path = tmp_path / "w.aedat4"
    with Aedat4Writer(path, 128, 128, compression=compression, packet_events=700) as writer:
        writer.append(ev[:1234])
        writer.append(ev[:0])
        writer.append(ev[1234:])
    got = read_events(path)
    np.testing.assert_array_equal(got.events, ev)
    assert got.sensor_size == (128, 128)
    np.testing.assert_array_equal(aedat_package_events(path), ev)
    # aedat stops at the header's data-table position: it points just past the last packet
    # (a wrong one would leave it reading the table as a packet, or stopping short)
    try:
        import dv_processing as dv
    except ImportError:
        return
    recording = dv.io.MonoCameraRecording(str(path))  # reads the data table's times
    assert recording.getTimeRange() == (int(ev["t"][0]), int(ev["t"][-1]))
    assert recording.getEventResolution() == (128, 128)


def test_an_unfinished_aedat4_recording_reads_to_its_last_whole_packet(tmp_path):
    from eventformer.events.aedat4_writer import Aedat4Writer

    ev = gesture_events()[:3000]
    path = tmp_path / "cut.aedat4"
    writer = Aedat4Writer(path, 128, 128, packet_events=1000)
    writer.append(ev)  # written through: a killed recorder leaves these, and no data table
    np.testing.assert_array_equal(read_events(path).events, ev)
    np.testing.assert_array_equal(aedat_package_events(path), ev)
    writer.close()


def test_dv_live_run_recorded_to_aedat4_replays_to_the_same_decisions(tmp_path):
    from cli.main import app

    proc, line = fake_camera(GESTURE, "--dv-serve", 0, "--compression", "zstd", "--speed", 0,
                             "--sensor-size", "128x128")
    record = tmp_path / "received.aedat4"
    args = ["--window-ms", "50", "--dtype", "float64", "--json"]
    try:
        live = runner.invoke(app, ["stream", line.split("serving ", 1)[1], *args,
                                   "--idle-timeout", str(PATIENCE_S), "--record", str(record)])
    finally:
        stop(proc)
    assert live.exit_code == 0, live.output
    windows, summary = json_lines(live.stdout)
    n = len(gesture_events())
    assert summary["live"]["recorded_events"] == n and summary["live"]["record"] == str(record)
    np.testing.assert_array_equal(read_events(record).events, gesture_events())
    np.testing.assert_array_equal(aedat_package_events(record), gesture_events())
    replay = runner.invoke(app, ["stream", str(record), *args])
    assert replay.exit_code == 0, replay.output
    assert decisions(json_lines(replay.stdout)[0]) == decisions(windows)


def test_aedat4_recording_without_a_sensor_size_is_one_sentence(tmp_path):
    from cli.main import app

    data = prophesee_header("evt2", None, None) + encode_evt2(gesture_events()[:2000])
    record = tmp_path / "r.aedat4"
    r = runner.invoke(app, ["stream", "-", "--format", "evt2", "--record", str(record)],
                      input=data)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "--sensor-size" in lines[-1]
    assert sum(line.startswith("error: ") for line in lines) == 1


# --- --workers: one live source per Dask task ---------------------------------------------------

def test_two_live_cameras_on_a_local_cluster_give_each_the_files_decisions(file_run):
    """`stream dv://A tcp://B --workers 2`: each worker reads its own camera; every window is
    tagged with its source, and each source's windows are those of `stream` on the file."""
    pytest.importorskip("distributed", reason="distributed is not installed "
                                              "(pip install 'eventformer[cluster]')")
    from cli.main import app

    dv_cam, dv_line = fake_camera(GESTURE, "--dv-serve", 0, "--compression", "lz4", "--speed", 0,
                                  "--sensor-size", "128x128")
    tcp_cam = None
    try:
        tcp_cam, tcp_line = fake_camera(GESTURE, "--tcp-serve", 0, "--format", "evt3",
                                        "--speed", 0, "--sensor-size", "128x128")
        sources = [dv_line.split("serving ", 1)[1],
                   f"tcp://127.0.0.1:{tcp_line.rsplit(':', 1)[1]}"]
        # --format names the tcp:// camera's bytes; the dv:// one says its own in its header
        r = runner.invoke(app, ["stream", *sources, "--format", "evt3", "--workers", "2",
                                "--window-ms", "50", "--dtype", "float64", "--json",
                                "--idle-timeout", str(PATIENCE_S)])
    finally:
        for proc in (dv_cam, tcp_cam):
            if proc is not None:
                stop(proc)
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    summaries = {x["stream"]: x for x in lines if x.get("summary")}
    assert set(summaries) == set(sources)
    n = len(gesture_events())
    for source in sources:
        windows = [x for x in lines if x.get("stream") == source and "t_start_us" in x]
        assert decisions(windows) == decisions(file_run[0])
        assert summaries[source]["live"]["events_decoded"] == summaries[source]["events"] == n
    assert summaries[sources[0]]["live"]["compression"] == "lz4"


def test_live_sources_on_a_cluster_are_checked_before_it_starts():
    from cli.main import app

    cases = [(["udp://127.0.0.1:0", "udp://127.0.0.1:5000"], "give a port"),
             (["-", "tcp://127.0.0.1:9"], "standard input"),
             (["tcp://127.0.0.1:9", "tcp://127.0.0.1:9"], "given twice"),
             (["tcp://127.0.0.1:9", str(GESTURE)], "not both"),
             (["tcp://127.0.0.1:9", "tcp://127.0.0.1:10", "--record", "x.h5"], "--record")]
    for args, words in cases:
        r = runner.invoke(app, ["stream", *args, "--format", "faery-13" if "udp" in args[0]
                                else "evt2", "--sensor-size", "128x128", "--workers", "2"])
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], args
    r = runner.invoke(app, ["stream", "tcp://127.0.0.1:9", "tcp://127.0.0.1:10", "--format",
                            "evt2"])
    assert r.exit_code == 2 and "--workers" in r.stderr


# --- the real peers (the optional 'live-peers' extra), each in a process of its own -------------

DV_WRITER = """
import sys, time
import numpy as np
import dv_processing as dv
port, compression, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
events = np.load(path)
stream = dv.io.Stream.EventStream(0, "events", "PeerCam_1", (128, 128))
stream.setCompression(getattr(dv.CompressionType, compression))
writer = dv.io.NetworkWriter("127.0.0.1", port, stream)
print("ready", file=sys.stderr, flush=True)
while writer.getClientCount() == 0:
    time.sleep(0.01)
for i in range(0, len(events), 1000):
    store = dv.EventStore()
    for t, x, y, p in events[i:i + 1000].tolist():
        store.push_back(t, x, y, bool(p))
    writer.writeEvents(store)
print("sent", file=sys.stderr, flush=True)
time.sleep(3600)  # the writer hangs on shutdown while a client is connected: the test kills it
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("compression", ["NONE", "LZ4", "LZ4_HIGH", "ZSTD", "ZSTD_HIGH"])
def test_dv_processing_network_writer_is_read_exactly(tmp_path, compression):
    pytest.importorskip("dv_processing", reason="dv-processing is not installed "
                                                "(pip install 'eventformer[live-peers]')")
    from eventformer.live.sources import open_live_source

    ev = gesture_events()[:5000]
    path = tmp_path / "events.npy"
    np.save(path, ev)
    port = free_port()
    writer = subprocess.Popen([sys.executable, "-c", DV_WRITER, str(port), compression,
                               str(path)], stderr=subprocess.PIPE, text=True)
    source = None
    try:
        assert writer.stderr.readline().strip() == "ready", writer.stderr.read()
        source = open_live_source(f"dv://127.0.0.1:{port}", None)
        got, n = [], 0
        # bounded: the writer may be paused on a loaded machine, never forever
        for _ in range(PATIENCE_S * 10):
            if n >= len(ev) or source.exhausted:
                break
            source.wait(0.1)
            got.append(source.read())
            n += got[-1].shape[0]
        assert source.sensor_size == (128, 128)
        c = source.counters()
        assert c["compression"] == compression.lower().replace("_", "-")
        assert c["camera"] == "PeerCam_1"
    finally:
        if source is not None:
            source.close()
        writer.kill()  # by its PID: NetworkWriter does not shut down while a client is connected
        writer.wait(PATIENCE_S)
    np.testing.assert_array_equal(np.concatenate(got), ev)


FAERY_SENDER = """
import sys
import numpy as np
import faery
port, layout, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ev = np.load(path)
out = np.zeros(len(ev), faery.EVENTS_DTYPE)
out["t"], out["x"], out["y"], out["on"] = ev["t"], ev["x"], ev["y"], ev["p"] == 1
faery.events_stream_from_array(out, (128, 128)).to_udp(("127.0.0.1", port), format=layout)
"""


@pytest.mark.parametrize("fmt,layout", [("faery-13", "t64_x16_y16_on8"),
                                        ("faery-8", "t32_x16_y15_on1")])
def test_faerys_udp_sender_is_read_exactly(tmp_path, fmt, layout):
    pytest.importorskip("faery", reason="faery is not installed "
                                        "(pip install 'eventformer[live-peers]')")
    ev = gesture_events()[:5000]
    path = tmp_path / "events.npy"
    np.save(path, ev)
    got, source = read_from_sender(fmt, len(ev), [sys.executable, "-c", FAERY_SENDER, "{port}",
                                                  layout, str(path)])
    assert source.counters()["datagrams_rejected"] == 0
    np.testing.assert_array_equal(got, ev)


def read_from_sender(fmt, count, command, sensor_size=(128, 128)):
    """Run a UDP sender (``command``, ``{port}`` standing for the source's port) in a process of
    its own and read ``count`` events from it: (the events, the closed source)."""
    source = UdpSource("udp://127.0.0.1:0", fmt, sensor_size).start()
    got, n = [], 0
    try:
        sender = subprocess.run([part.format(port=source.port) for part in command],
                                capture_output=True, text=True, timeout=PATIENCE_S)
        assert sender.returncode == 0, sender.stderr
        for _ in range(PATIENCE_S * 10):  # bounded; the datagrams are in the socket's buffer
            if n >= count:
                break
            source.wait(0.1)
            got.append(source.read())
            n += got[-1].shape[0]
    finally:
        source.close()
    return (np.concatenate(got) if got else np.empty(0, EVENT_DTYPE)), source


@pytest.mark.parametrize("timestamps", [False, True], ids=["untimed", "timed"])
def test_aestreams_udp_sender_is_read_exactly(tmp_path, timestamps):
    """aestream's own command line reads an AEDAT 4 recording and sends it as SPIF words, with
    or without timestamps. It reads LZ4-compressed AEDAT 4 files only (another compression
    sends nothing), so the recording is the project's own writer's, LZ4 its default."""
    import shutil

    from eventformer.events.aedat4_writer import write_aedat4

    aestream = shutil.which("aestream")
    if aestream is None:
        pytest.skip("aestream is not installed (pip install 'eventformer[live-peers]')")
    ev = gesture_events()[:20000]
    path = tmp_path / "gesture.aedat4"
    write_aedat4(path, ev, 128, 128)
    got, source = read_from_sender("spif", len(ev), [
        aestream, "input", "file", str(path), "output", "udp", "127.0.0.1", "{port}",
        "--include-timestamp", "true" if timestamps else "false"])
    counters = source.counters()
    assert counters["datagrams_rejected"] == 0 and counters["events_decoded"] == len(ev)
    for field in ("x", "y", "p"):
        np.testing.assert_array_equal(got[field], ev[field])
    if timestamps:  # SPIF's 32-bit microseconds, unwrapped: the recording's own times
        np.testing.assert_array_equal(got["t"], ev["t"])
