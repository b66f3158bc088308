"""eventformer's HDF5 event file and `eventformer convert`: exact round trips, time cuts, a
writer process appending while a reader follows (SWMR), and one sentence for every bad file."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ROOT, need_gesture, one_error_line
from eventformer_cli.main import app
from typer.testing import CliRunner

from eventformer.events import (
    EVENT_DTYPE,
    EventFileError,
    EventStream,
    detect_reader,
    read_events,
    readers,
    write_npy,
)
from eventformer.events.h5events import (
    FORMAT_NAME,
    EventFileWriter,
    H5Reader,
    write_events_h5,
)

runner = CliRunner()


def make_events(n: int, seed: int = 0, t_max: int = 2_000_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.empty(n, dtype=EVENT_DTYPE)
    events["t"] = np.sort(rng.integers(0, t_max, n))
    events["x"] = rng.integers(0, 346, n)
    events["y"] = rng.integers(0, 260, n)
    events["p"] = rng.integers(0, 2, n)
    return events


def convert(*args: object):
    return runner.invoke(app, ["convert", *map(str, args)])


def converted(result, count: int, formats: str) -> None:
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines()[-1] == f"converted {count} events (format {formats})"


# --------------------------------------------------------------------------------------------------
# Writing and reading back
# --------------------------------------------------------------------------------------------------


def test_writer_layout_and_read_back(tmp_path: Path) -> None:
    events = make_events(5000)
    path = tmp_path / "rec.h5"
    with EventFileWriter(path, width=346, height=260, source="unit test") as writer:
        for piece in np.array_split(events, [0, 1, 1, 1000, 4999]):  # empty and 1-event appends too
            writer.append(piece)
        assert writer.count == len(events)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"].decode() == FORMAT_NAME and f.attrs["format_version"] == 1
        assert (f.attrs["width"], f.attrs["height"], f.attrs["source"].decode()) == (346, 260, "unit test")
        assert not f.attrs.get_id("format").dtype.kind == "O"  # no global heap (see test_a_flipped_byte...)
        group = f["events"]
        assert {n: group[n].dtype for n in "txyp"} == {n: EVENT_DTYPE[n] for n in "txyp"}
        assert all(group[n].maxshape == (None,) and group[n].chunks for n in "txyp")
        assert int(group["n_valid"][()]) == len(events)
    assert detect_reader(path).name == "h5"
    rec = read_events(path)
    assert rec.format == "h5" and rec.sensor_size == (346, 260) and rec.warnings == []
    np.testing.assert_array_equal(rec.events, events)


def test_stored_order_is_kept_and_oddities_warn_like_other_formats(tmp_path: Path) -> None:
    events = make_events(100)
    events["t"][50:] -= 10_000_000  # a clock jump backwards
    events["x"][3] = 400  # outside the 346x260 sensor
    write_events_h5(tmp_path / "odd.h5", events, 346, 260)
    rec = read_events(tmp_path / "odd.h5")
    np.testing.assert_array_equal(rec.events, events)
    assert any("backwards" in w for w in rec.warnings)
    assert any("outside the 346x260 sensor" in w for w in rec.warnings)


def test_npy_to_h5_to_npy_is_exact(tmp_path: Path) -> None:
    events = make_events(20_000, seed=1)
    events[7] = (np.iinfo(np.int64).max, 32767, 32767, 1)  # extremes of every field survive
    events[8] = (-5, 0, 0, 0)
    write_npy(tmp_path / "a.npy", events)
    converted(convert(tmp_path / "a.npy", tmp_path / "b.h5"), len(events), "npy -> h5")
    converted(convert(tmp_path / "b.h5", tmp_path / "c.npy"), len(events), "h5 -> npy")
    back = np.load(tmp_path / "c.npy")
    assert back.dtype == EVENT_DTYPE
    for name in "txyp":
        np.testing.assert_array_equal(back[name], events[name])
    assert read_events(tmp_path / "b.h5").sensor_size is None  # .npy records no sensor size


def test_conversion_in_small_chunks_loses_and_reorders_nothing(tmp_path: Path, monkeypatch) -> None:
    events = make_events(3001, seed=2)
    write_npy(tmp_path / "a.npy", events)
    monkeypatch.setattr(readers, "CHUNK_BYTES", 997)  # dozens of reads, records cut at every edge
    converted(convert(tmp_path / "a.npy", tmp_path / "b.hdf5"), 3001, "npy -> h5")
    converted(convert(tmp_path / "b.hdf5", tmp_path / "c.npy"), 3001, "h5 -> npy")
    converted(convert(tmp_path / "b.hdf5", tmp_path / "d.h5"), 3001, "h5 -> h5")
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), events)
    np.testing.assert_array_equal(read_events(tmp_path / "d.h5").events, events)


def test_real_gesture_recording_converts_exactly(tmp_path: Path, monkeypatch) -> None:
    original = need_gesture() / "1.bs2"
    expected = read_events(original)
    converted(convert(original, tmp_path / "g.h5"), len(expected), "bs2 -> h5")
    converted(convert(original, tmp_path / "g.npy"), len(expected), "bs2 -> npy")
    for path in (tmp_path / "g.h5", tmp_path / "g.npy"):
        np.testing.assert_array_equal(read_events(path).events, expected.events)
    monkeypatch.setattr(readers, "CHUNK_BYTES", 4099)
    converted(convert(tmp_path / "g.h5", tmp_path / "g2.npy"), len(expected), "h5 -> npy")
    np.testing.assert_array_equal(np.load(tmp_path / "g2.npy"), expected.events)


def test_start_end_cuts_are_exact(tmp_path: Path, monkeypatch) -> None:
    events = make_events(4000, seed=3, t_max=1000)  # many events share each timestamp
    write_npy(tmp_path / "a.npy", events)
    monkeypatch.setattr(readers, "CHUNK_BYTES", 1500)
    t = events["t"]
    for start, end in ((250, 750), (250, None), (None, 750), (0, 1), (999, 5000), (-10, 0)):
        options = [*(["--start", start] if start is not None else []),
                   *(["--end", end] if end is not None else [])]
        keep = (t >= (start if start is not None else -(1 << 62))) & (t < (end if end is not None else 1 << 62))
        for out in ("cut.npy", "cut.h5"):
            result = convert(tmp_path / "a.npy", tmp_path / out, *options, "--force")
            if not keep.any():  # an empty window is refused and the earlier output left as it was
                before = (tmp_path / out).read_bytes()
                assert result.exit_code == 2, result.output
                assert "no events in [-10, 0) µs" in result.stderr
                assert (tmp_path / out).read_bytes() == before
                continue
            converted(result, int(keep.sum()), f"npy -> {out[4:]}")
            np.testing.assert_array_equal(read_events(tmp_path / out).events, events[keep])


def test_reader_warnings_are_printed_and_the_events_kept(tmp_path: Path) -> None:
    events = make_events(10, t_max=1 << 23)
    raw = bytearray()
    for t, x, y, p in events.tolist():
        raw += bytes([x % 256, y % 256, (p << 7) | (t >> 16), (t >> 8) & 0xFF, t & 0xFF])
    (tmp_path / "torn.bs2").write_bytes(bytes(raw) + b"\x01\x02\x03")
    result = convert(tmp_path / "torn.bs2", tmp_path / "torn.h5")
    converted(result, 10, "bs2 -> h5")
    assert f"warning: {tmp_path / 'torn.bs2'}: read 10 events; the last 3 bytes are an incomplete record" \
        in result.stderr
    np.testing.assert_array_equal(read_events(tmp_path / "torn.h5").events,
                                  read_events(tmp_path / "torn.bs2").events)


# --------------------------------------------------------------------------------------------------
# Following a file while another process appends to it (SWMR)
# --------------------------------------------------------------------------------------------------


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from eventformer.events.h5events import EventFileWriter

    events = np.load(sys.argv[2])
    sizes = [1, 0, 7, 333, 1, 4096, 2, 12345, 17, 999, 5000, 3]
    with EventFileWriter(sys.argv[1], 128, 128, source="writer process") as writer:
        time.sleep(0.2)  # readers may look before anything is appended
        done, k = 0, 0
        while done < len(events):
            size = sizes[k % len(sizes)]
            writer.append(events[done:done + size])
            done += size
            k += 1
            time.sleep(0.005)
""")


def test_reader_follows_a_writer_process(tmp_path: Path) -> None:
    events = make_events(60_000, seed=4)
    events["x"] %= 128
    events["y"] %= 128
    np.save(tmp_path / "source.npy", events)
    path = tmp_path / "live.h5"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(tmp_path / "source.npy")],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer never created the file"
            time.sleep(0.005)
        parts, reads = [], 0
        with EventStream(path) as stream:
            while True:
                finished = writer.poll() is not None
                got = stream.read(max_bytes=13 * 5000)
                reads += 1
                parts.append(got)
                if finished and not len(got):  # the writer is done and one more read found nothing
                    break
                assert time.monotonic() < deadline, "the reader never caught up"
                if not len(got):
                    time.sleep(0.002)
            assert stream.format == "h5" and stream.sensor_size == (128, 128)
            end = stream.finish()
    finally:
        if writer.poll() is None:
            writer.kill()
        _, stderr = writer.communicate()
    assert writer.returncode == 0, stderr
    followed = np.concatenate(parts)
    assert end.decoded == len(events) and end.message is None and stream.warnings == []
    assert sum(1 for p in parts if len(p)) > 5, "the reader should have seen the file grow"
    np.testing.assert_array_equal(followed, events)


HOLDER = textwrap.dedent("""
    import sys
    import h5py
    import numpy as np

    f = h5py.File(sys.argv[1], "w", libver="latest")  # a writer that never switches to SWMR mode
    f.attrs.update({"format": "eventformer-events", "format_version": 1, "width": 0, "height": 0})
    for name, dtype in (("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")):
        f.create_dataset("events/" + name, data=np.arange(3).astype(dtype) % 2)
    f.flush()
    print("holding", flush=True)
    sys.stdin.readline()
    f.close()
""")


def test_a_file_held_by_a_non_swmr_writer_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "held.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(EventFileError, match="is held by an HDF5 writer that has not switched to SWMR"):
            read_events(path)
        stream = EventStream(path)
        assert len(stream.read()) == 0 and stream.format == "h5" and stream.offset == 0
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
        np.testing.assert_array_equal(stream.read_available()["p"], [0, 1, 0])
        assert stream.finish().decoded == 3
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()


def test_event_stream_reads_a_finished_file_in_pieces(tmp_path: Path) -> None:
    events = make_events(10_000, seed=5)
    write_events_h5(tmp_path / "r.h5", events, 346, 260)
    with EventStream(tmp_path / "r.h5", format="h5") as stream:
        first = stream.read(max_bytes=13 * 123)
        assert len(first) == 123 and stream.offset == 123 and stream.total == 10_000
        rest = stream.read_available(chunk_bytes=13 * 1000)
        assert len(stream.read()) == 0
        end = stream.finish()
    np.testing.assert_array_equal(np.concatenate([first, rest]), events)
    assert end.decoded == 10_000 and end.torn_bytes == 0


def test_a_half_committed_append_is_not_read(tmp_path: Path) -> None:
    """What a reader sees mid-append (or after a writer died in one): fields longer than n_valid."""
    events = make_events(50)
    write_events_h5(tmp_path / "r.h5", events[:40])
    with h5py.File(tmp_path / "r.h5", "a") as f:
        for name in ("t", "x"):
            f["events"][name].resize((50,))
            f["events"][name][40:] = events[name][40:]
    rec = read_events(tmp_path / "r.h5")
    np.testing.assert_array_equal(rec.events, events[:40])
    assert rec.warnings == [("10 stored value(s) beyond the 40 committed events were ignored (an append "
                             "still in progress, or cut short)")]


# --------------------------------------------------------------------------------------------------
# Bad files and bad commands: one sentence
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from eventformer.bench.calibrate import random_model
    from eventformer.modelfile import save
    from eventformer.models import SpikformerConfig

    cfg = SpikformerConfig(image_size=32, sps_channels=(16, 32), sps_pool=(True, True), dim=32, heads=4,
                           depth=1, mlp_hidden=64, num_classes=4)
    path = tmp_path_factory.mktemp("model") / "tiny.h5"
    save(path, random_model(cfg))
    return path


def test_model_file_given_as_events(model_file: Path, tmp_path: Path) -> None:
    assert detect_reader(model_file).name == "h5"  # never decoded as headerless bs2 garbage
    with pytest.raises(EventFileError, match=r"tiny\.h5: is an eventformer model file, not events$"):
        read_events(model_file)
    with pytest.raises(EventFileError, match="is an eventformer model file, not events"):
        EventStream(model_file).read()
    line = one_error_line(convert(model_file, tmp_path / "x.npy"))
    assert line == f"error: {model_file}: is an eventformer model file, not events"
    assert not (tmp_path / "x.npy").exists()


def h5_file(path: Path, attrs: dict | None = None, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT_NAME, "format_version": 1, "width": 0, "height": 0}
                       if attrs is None else attrs)
        group = f.create_group("events")
        for name, data in datasets.items():
            group.create_dataset(name, data=data)
    return path


GOOD = {"t": np.arange(5, dtype="<i8"), "x": np.ones(5, "<i2"), "y": np.ones(5, "<i2"), "p": np.ones(5, "u1")}


@pytest.mark.parametrize("change, message", [
    ({"p": None}, "the 'events' group lacks dataset(s) p (events need t, x, y, p)"),
    ({"t": None, "x": None}, "the 'events' group lacks dataset(s) t, x"),
    ({"p": np.ones(4, "u1")}, "the event fields have unequal lengths t=5, x=5, y=5, p=4"),
    ({"n_valid": np.int64(6)}, "'events/n_valid' says 6 events, but 'events/t' holds only 5 values"),
    ({"t": np.arange(5.0)}, "dataset 'events/t' has dtype float64, but events need integer fields"),
    ({"x": np.ones((5, 1), "<i2")}, "dataset 'events/x' has shape (5, 1), but event fields must be 1-D"),
    ({"p": np.full(5, 2, "u1")}, "field 'p' holds 2, but polarity must be 0/1 (or -1/1)"),
])
def test_bad_datasets_are_one_sentence(tmp_path: Path, change: dict, message: str) -> None:
    datasets = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = h5_file(tmp_path / "bad.h5", **datasets)
    with pytest.raises(EventFileError) as info:
        read_events(path)
    assert str(info.value) == f"{path}: {message}" or str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)
    assert one_error_line(convert(path, tmp_path / "out.npy")) == f"error: {info.value}"


@pytest.mark.parametrize("attrs, message", [
    ({}, "an HDF5 file but not an eventformer event file (has no format attribute"),
    ({"format": "something-else"}, "its format attribute is 'something-else'"),
    ({"format": FORMAT_NAME, "format_version": 2}, "event file format version 2, this eventformer reads"),
])
def test_other_hdf5_files_are_one_sentence(tmp_path: Path, attrs: dict, message: str) -> None:
    path = h5_file(tmp_path / "other.h5", attrs, **GOOD)
    with pytest.raises(EventFileError, match=rf"^{re.escape(str(path))}: .*{re.escape(message)}"):
        read_events(path)


def test_a_corrupt_hdf5_file_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(EventFileError, match=r"starts like an HDF5 file but cannot be opened as one"):
        read_events(path)
    with pytest.raises(EventFileError, match="cannot be decoded from bytes"):
        H5Reader().decoder(str(path))


def test_convert_command_errors(tmp_path: Path) -> None:
    events = make_events(100)
    write_npy(tmp_path / "a.npy", events)
    line = one_error_line(convert(tmp_path / "a.npy", tmp_path / "b.csv"))
    assert line == f"error: {tmp_path / 'b.csv'}: unknown output format '.csv'; OUT must end in .npy, .h5 or .hdf5"
    assert "unknown output format '(no extension)'" in one_error_line(convert(tmp_path / "a.npy", tmp_path / "b"))
    # never the input, even with --force
    for force in ([], ["--force"]):
        line = one_error_line(convert(tmp_path / "a.npy", tmp_path / "a.npy", *force))
        assert line == f"error: {tmp_path / 'a.npy'}: is the input file; refusing to overwrite it"
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), events)
    # an existing OUT needs --force
    (tmp_path / "old.h5").write_bytes(b"keep me")
    line = one_error_line(convert(tmp_path / "a.npy", tmp_path / "old.h5"))
    assert line == f"error: {tmp_path / 'old.h5'}: already exists; pass --force to overwrite it"
    assert (tmp_path / "old.h5").read_bytes() == b"keep me"
    converted(convert(tmp_path / "a.npy", tmp_path / "old.h5", "--force"), 100, "npy -> h5")
    np.testing.assert_array_equal(read_events(tmp_path / "old.h5").events, events)
    # a failed conversion leaves an existing OUT as it was, and no partial file behind
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "keep.npy").write_bytes(b"keep me")
    assert "not a valid numpy .npy file" in one_error_line(
        convert(tmp_path / "bad.npy", tmp_path / "keep.npy", "--force"))
    assert (tmp_path / "keep.npy").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "bad.npy", "keep.npy", "old.h5"]
    # missing input, empty range, missing output folder
    assert one_error_line(convert(tmp_path / "nope.bs2", tmp_path / "x.npy")) == \
        f"error: {tmp_path / 'nope.bs2'}: no such file"
    assert one_error_line(convert(tmp_path / "a.npy", tmp_path / "x.npy", "--start", 5, "--end", 5)) == \
        "error: --end (5) must be greater than --start (5)"
    assert "does not exist" in one_error_line(convert(tmp_path / "a.npy", tmp_path / "no" / "x.h5"))


# --------------------------------------------------------------------------------------------------
# Damaged files end in bounded time, read whole or followed
# --------------------------------------------------------------------------------------------------

_FLIP_EVERY_METADATA_BYTE = """
import sys
from pathlib import Path
from eventformer.events import EventFileError, EventStream, read_events
good = Path(sys.argv[1]).read_bytes()
bad = Path(sys.argv[1]).with_name("flipped.h5")
read = refused = 0
for pos in range(0, int(sys.argv[2]), 2):
    data = bytearray(good)
    data[pos] ^= 0xFF
    bad.write_bytes(data)
    for follow in (False, True):
        try:
            if follow:
                with EventStream(bad) as stream:
                    for _ in stream.chunks():
                        pass
            else:
                read_events(bad)
            read += 1
        except EventFileError:
            refused += 1
print(read, refused)
"""


def test_a_flipped_byte_anywhere_in_the_metadata_ends_in_bounded_time(tmp_path: Path) -> None:
    """Each flipped byte of the structure (superblock, object headers, B-trees, attributes: the
    bytes before the first data chunk) reads or is one EventFileError, whole and followed. Under
    SWMR libhdf5 retried a bad checksum without end, and a variable-length string attribute's
    damaged global heap looped; run in a child so a regression fails instead of hanging."""
    path = tmp_path / "good.h5"
    write_events_h5(path, make_events(2000, seed=4), 346, 260, source="flip test")
    with h5py.File(path, "r") as f:
        first_chunk = min(f["events"][name].id.get_chunk_info(0).byte_offset for name in "txyp")
    try:
        done = subprocess.run([sys.executable, "-c", _FLIP_EVERY_METADATA_BYTE, str(path), str(first_chunk)],
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a file with one flipped byte did not end")
    assert done.returncode == 0, done.stderr[-2000:]  # any other exception is a traceback here
    read, refused = map(int, done.stdout.split())
    assert read + refused == 2 * len(range(0, first_chunk, 2)) and refused > 0


def test_an_implausible_sensor_size_attribute_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    write_events_h5(path, make_events(10), 346, 260)
    with h5py.File(path, "a") as f:
        f.attrs["width"] = 1 << 20
    with pytest.raises(EventFileError, match=r"big.h5: its width and height attributes: a 1048576x260 sensor is "
                                             r"implausible \(event coordinates are 16-bit"):
        read_events(path)
