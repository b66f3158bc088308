"""Event readers: real bs2 / N-MNIST / npy recordings, detection by header bytes, and user mistakes
that must surface as one `EventFileError` sentence naming the file."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventformer.events import (
    EVENT_DTYPE,
    EventFileError,
    EventStream,
    Recording,
    detect_reader,
    read_events,
    registered_readers,
    write_npy,
)
from eventformer.events.readers import NO_EVENTS_WARNING, decode_file

EVENTS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "events"
GESTURE_COUNTS = {1: 63_471, 2: 84_260, 3: 113_063, 4: 151_879, 5: 181_179}


def real_file(*parts: str) -> Path:
    if not EVENTS_DIR.is_dir():
        pytest.skip(f"real recordings not available: {EVENTS_DIR} is absent (CI has it; a fresh clone does not)")
    return EVENTS_DIR.joinpath(*parts)


def hand_decode_bs2(path: Path) -> tuple[np.ndarray, ...]:
    """Byte-by-byte reading of the README's layout, kept deliberately simple."""
    raw = path.read_bytes()
    rows = [raw[i:i + 5] for i in range(0, len(raw), 5)]
    x = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    p = np.array([r[2] >> 7 for r in rows])
    t = np.array([((r[2] & 0x7F) << 16) | (r[3] << 8) | r[4] for r in rows])
    return t, x, y, p


def sample_events(n: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["t"] = np.sort(rng.integers(0, 10**9, n))
    events["x"] = rng.integers(0, 640, n)
    events["y"] = rng.integers(0, 480, n)
    events["p"] = rng.integers(0, 2, n)
    return events


# --------------------------------------------------------------------------------------------------
# Real recordings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("number, count", GESTURE_COUNTS.items())
def test_real_gesture_bs2(number: int, count: int) -> None:
    path = real_file("dvs-gesture", f"{number}.bs2")
    rec = read_events(path)
    assert isinstance(rec, Recording)
    assert rec.format == "bs2" and rec.sensor_size is None and rec.warnings == []
    assert rec.events.dtype == EVENT_DTYPE and len(rec.events) == count
    ev = rec.events
    assert ev["x"].min() >= 0 and ev["x"].max() <= 127
    assert ev["y"].min() >= 0 and ev["y"].max() <= 127
    assert np.all(np.diff(ev["t"]) >= 0)
    assert set(np.unique(ev["p"]).tolist()) == {0, 1}
    assert 1_440_000 < rec.duration_us <= 1_450_000  # README: 1.450 s span


def test_real_gesture_bs2_matches_a_hand_decode() -> None:
    path = real_file("dvs-gesture", "1.bs2")
    ev = read_events(path).events
    t, x, y, p = hand_decode_bs2(path)
    np.testing.assert_array_equal(ev["t"], t)
    np.testing.assert_array_equal(ev["x"], x)
    np.testing.assert_array_equal(ev["y"], y)
    np.testing.assert_array_equal(ev["p"], p)


def test_real_nmnist_bin_matches_tonic() -> None:
    tonic_io = pytest.importorskip("tonic.io")
    path = real_file("formats", "nmnist.bin")
    rec = read_events(path)
    assert rec.format == "bs2" and len(rec.events) == 4_325
    ev = rec.events
    assert ev["x"].max() <= 33 and ev["y"].max() <= 33
    ref = tonic_io.read_mnist_file(str(path), dtype=np.dtype([("x", int), ("y", int), ("t", int), ("p", int)]))
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(ev[name], ref[name])


def test_real_structured_npy() -> None:
    rec = read_events(real_file("formats", "evt3_sample.npy"))
    assert rec.format == "npy" and len(rec.events) == 219_596
    assert rec.events.dtype == EVENT_DTYPE
    assert rec.events["x"].max() < 1280 and rec.events["y"].max() < 720


# --------------------------------------------------------------------------------------------------
# Round trips and detection by header bytes
# --------------------------------------------------------------------------------------------------


def test_npy_round_trip(tmp_path: Path) -> None:
    events = sample_events()
    path = tmp_path / "events.npy"
    write_npy(path, events)
    rec = read_events(path)
    assert rec.format == "npy" and rec.warnings == []
    np.testing.assert_array_equal(rec.events, events)


def test_format_is_detected_from_header_not_extension(tmp_path: Path) -> None:
    events = sample_events()
    disguised = tmp_path / "recording.bin"
    write_npy(disguised, events)
    assert disguised.exists() and not (tmp_path / "recording.bin.npy").exists()
    rec = read_events(disguised)
    assert rec.format == "npy"
    np.testing.assert_array_equal(rec.events, events)


@pytest.mark.parametrize("name", ["looks.npy", "noextension", "events.txt", "cam.raw"])
def test_bs2_bytes_without_a_bs2_extension_are_refused_unless_forced(tmp_path: Path, name: str) -> None:
    """Headerless formats are accepted by extension only: any bytes decode as bs2 events."""
    path = tmp_path / name
    path.write_bytes(bytes([3, 4, 0x80 | 1, 2, 3]) * 2)
    with pytest.raises(EventFileError, match=r"unknown event file format .*bs2 by the extension \.bs2 or \.bin") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)
    rec = read_events(path, format="bs2")
    assert rec.format == "bs2"
    assert rec.events[0].tolist() == ((1 << 16) | (2 << 8) | 3, 3, 4, 1)


@pytest.mark.parametrize("name", ["rec.bs2", "digit.bin", "UPPER.BS2"])
def test_bs2_is_recognised_by_its_extensions(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(bytes([3, 4, 0x80 | 1, 2, 3]) * 2)
    assert detect_reader(path).name == "bs2"
    assert len(read_events(path).events) == 2


def test_a_text_file_is_not_read_as_events(tmp_path: Path) -> None:
    """'hello world...' used to decode as 6 bs2 events."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello world, this is not a recording\n")
    with pytest.raises(EventFileError, match="unknown event file format .*'hello world") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)
    with pytest.raises(EventFileError, match="unknown event file format"):
        EventStream(path).read()


def test_a_text_header_under_a_bs2_extension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "header.bs2"
    path.write_bytes(b"#!AER-DAT9.9\r\n# some header\r\n" + b"\x00" * 10)
    with pytest.raises(EventFileError, match="named like a headerless bs2 recording") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


def test_magic_formats_win_over_a_bs2_extension(tmp_path: Path) -> None:
    events = sample_events()
    path = tmp_path / "really_npy.bs2"
    write_npy(path, events)
    rec = read_events(path)
    assert rec.format == "npy"
    np.testing.assert_array_equal(rec.events, events)


def test_npy_with_other_integer_dtypes_and_field_order(tmp_path: Path) -> None:
    dtype = np.dtype([("p", "?"), ("y", ">u2"), ("x", "u1"), ("t", "<u4")])
    array = np.array([(True, 7, 3, 100), (False, 9, 1, 90)], dtype=dtype)
    path = tmp_path / "other.npy"
    np.save(path, array)
    rec = read_events(path)
    assert rec.events.tolist() == [(100, 3, 7, 1), (90, 1, 9, 0)]
    assert any("backwards" in w for w in rec.warnings)


def test_npy_polarity_minus_one_is_off(tmp_path: Path) -> None:
    array = np.array([(1, 0, 0, -1), (2, 0, 0, 1)], dtype=[("t", "i8"), ("x", "i2"), ("y", "i2"), ("p", "i1")])
    path = tmp_path / "pm.npy"
    np.save(path, array)
    rec = read_events(path)
    assert rec.events["p"].tolist() == [0, 1]
    assert rec.warnings


def test_npz_with_separate_fields(tmp_path: Path) -> None:
    events = sample_events()
    path = tmp_path / "fields.npz"
    np.savez(path, t=events["t"], x=events["x"], y=events["y"], p=events["p"])
    rec = read_events(path)
    assert rec.format == "npz"
    np.testing.assert_array_equal(rec.events, events)


def test_npz_with_one_structured_array(tmp_path: Path) -> None:
    events = sample_events()
    path = tmp_path / "one.npz"
    np.savez_compressed(path, anything=events)
    np.testing.assert_array_equal(read_events(path).events, events)


@pytest.mark.parametrize("name", ["empty.bs2", "empty.npy", "empty.aedat", "empty.raw", "empty"])
def test_empty_file_is_an_error_for_every_reader_path(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    message = f"{path}: empty file: no header and no events"
    for read in (lambda: read_events(path), lambda: read_events(path, format="bs2"),
                 lambda: read_events(path, format="npy"), lambda: detect_reader(path),
                 lambda: decode_file(registered_readers()[-1], path),
                 lambda: EventStream(path).finish(), lambda: list(EventStream(path).chunks()),
                 lambda: EventStream(path, format="bs2").finish()):
        with pytest.raises(EventFileError) as info:
            read()
        assert str(info.value) == message


def test_empty_file_that_is_still_being_written_is_waited_for(tmp_path: Path) -> None:
    """Following a file: empty only means nothing was written yet, until the read is final."""
    path = tmp_path / "live.bs2"
    path.write_bytes(b"")
    stream = EventStream(path)
    assert len(stream.read()) == 0 and len(stream.read_available()) == 0 and stream.format is None
    assert list(stream.chunks(final=False)) == []
    path.write_bytes(bytes([1, 2, 0x80, 0, 9]) * 3)
    assert len(stream.read_available()) == 3
    assert stream.finish().message is None and stream.warnings == []


def test_a_recording_without_events_reads_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "none.npy"
    write_npy(path, sample_events(0))
    rec = read_events(path)
    assert len(rec.events) == 0 and rec.events.dtype == EVENT_DTYPE and rec.duration_us == 0
    assert rec.warnings == [NO_EVENTS_WARNING] and "no events" in NO_EVENTS_WARNING
    stream = EventStream(path)
    assert len(stream.read_available()) == 0 and stream.warnings == []  # not final yet
    stream.finish()
    assert stream.warnings == [NO_EVENTS_WARNING]
    torn = tmp_path / "torn.bs2"
    torn.write_bytes(b"\x01\x02\x03")  # less than one record
    rec = read_events(torn)
    assert len(rec.events) == 0
    assert rec.warnings == ["read 0 events; the last 3 bytes are an incomplete record", NO_EVENTS_WARNING]


def test_backwards_bs2_timestamps_are_kept_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "wrap.bs2"
    path.write_bytes(bytes([1, 1, 0x7F, 0xFF, 0xFF, 2, 2, 0, 0, 5]))
    rec = read_events(path)
    assert rec.events["t"].tolist() == [(1 << 23) - 1, 5]
    assert len(rec.warnings) == 1 and "backwards" in rec.warnings[0]


def test_registry_consults_magic_formats_before_the_bs2_fallback() -> None:
    assert [r.name for r in registered_readers()][-1] == "bs2"


# --------------------------------------------------------------------------------------------------
# User mistakes -> one EventFileError sentence naming the file
# --------------------------------------------------------------------------------------------------


def assert_one_sentence_naming(exc: EventFileError, path: Path) -> None:
    message = str(exc)
    assert path.name in message
    assert "\n" not in message and "Traceback" not in message


def test_truncated_bs2_keeps_the_complete_events_and_warns(tmp_path: Path) -> None:
    source = real_file("dvs-gesture", "1.bs2")
    path = tmp_path / "cut.bs2"
    path.write_bytes(source.read_bytes()[:-2])
    rec = read_events(path)
    assert len(rec.events) == GESTURE_COUNTS[1] - 1
    np.testing.assert_array_equal(rec.events, read_events(source).events[:-1])
    assert rec.warnings == [f"read {GESTURE_COUNTS[1] - 1} events; the last 3 bytes are an incomplete record"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.bs2"
    with pytest.raises(EventFileError, match="no such file") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match="directory") as info:
        read_events(tmp_path)
    assert_one_sentence_naming(info.value, tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.bs2"
    path.write_bytes(b"\x00" * 5)
    path.chmod(0)
    try:
        with pytest.raises(EventFileError, match="permission") as info:
            read_events(path)
        assert_one_sentence_naming(info.value, path)
    finally:
        path.chmod(0o600)


def test_npy_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "nop.npy"
    np.save(path, np.zeros(3, dtype=[("t", "i8"), ("x", "i2"), ("y", "i2")]))
    with pytest.raises(EventFileError, match="lacks field.*p") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


@pytest.mark.parametrize("array, match", [
    (np.zeros((3, 4), dtype=np.int64), "not a structured array"),
    (np.zeros(3, dtype=[("t", "f8"), ("x", "i2"), ("y", "i2"), ("p", "u1")]), "'t' has dtype float64"),
    (np.array([(0, -1, 0, 0)], dtype=[("t", "i8"), ("x", "i2"), ("y", "i2"), ("p", "u1")]), "'x' holds -1"),
    (np.array([(0, 0, 70000, 0)], dtype=[("t", "i8"), ("x", "i2"), ("y", "i4"), ("p", "u1")]), "'y' holds 70000"),
    (np.array([(0, 0, 0, 3)], dtype=[("t", "i8"), ("x", "i2"), ("y", "i2"), ("p", "u1")]), "polarity"),
])
def test_npy_with_bad_content(tmp_path: Path, array: np.ndarray, match: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(EventFileError, match=match) as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


def test_npy_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"t": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(EventFileError, match="objects") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


def test_truncated_npy(tmp_path: Path) -> None:
    path = tmp_path / "short.npy"
    write_npy(path, sample_events())
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(EventFileError, match="truncated") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


def test_npz_with_unrelated_arrays(tmp_path: Path) -> None:
    path = tmp_path / "two.npz"
    np.savez(path, a=np.arange(3), b=np.arange(3))
    with pytest.raises(EventFileError, match="holds arrays a, b") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


def test_corrupt_zip(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 26)
    with pytest.raises(EventFileError, match="zip") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


def test_text_headed_file_of_an_unsupported_format_is_not_decoded_as_bs2(tmp_path: Path) -> None:
    path = tmp_path / "x.aedat"
    path.write_bytes(b"#!AER-DAT9.9\r\n# some header\r\n#!END-HEADER\r\n" + b"\x00" * 16)
    with pytest.raises(EventFileError, match="unknown event file format") as info:
        read_events(path)
    assert_one_sentence_naming(info.value, path)


def test_forcing_a_format_by_name(tmp_path: Path) -> None:
    path = tmp_path / "zipish.bs2"
    path.write_bytes(b"PK\x03\x04\x05")  # one bs2 event whose bytes spell the zip magic
    with pytest.raises(EventFileError, match="format='bs2'"):
        read_events(path)
    assert len(read_events(path, format="bs2").events) == 1
    with pytest.raises(EventFileError, match="unknown event format 'nope'"):
        read_events(path, format="nope")


# --------------------------------------------------------------------------------------------------
# Fuzz: arbitrary bytes give a Recording or an EventFileError, nothing else
# --------------------------------------------------------------------------------------------------


def _valid_npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, sample_events(8))
    return buffer.getvalue()


def _valid_npz_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("events.npy", _valid_npy_bytes())
    return buffer.getvalue()


VALID_NPY = _valid_npy_bytes()
VALID_NPZ = _valid_npz_bytes()


def _read_bytes_as_file(data: bytes, name: str = "fuzz.dat") -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            rec = read_events(path)
        except EventFileError as exc:
            assert name in str(exc) and "\n" not in str(exc)
            assert data or "empty file" in str(exc)
            return
        assert isinstance(rec, Recording) and rec.events.dtype == EVENT_DTYPE
        assert np.all(rec.events["x"] >= 0) and np.all(rec.events["y"] >= 0)
        assert rec.format != "bs2" or name.endswith(".bs2")  # never bs2 from the bytes alone
        assert len(rec.events) or NO_EVENTS_WARNING in rec.warnings


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from([b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"#!AER", b"% "]),
       body=st.binary(max_size=300), name=st.sampled_from(["fuzz.dat", "fuzz.bs2", "fuzz"]))
def test_random_bytes_never_escape_as_raw_exceptions(prefix: bytes, body: bytes, name: str) -> None:
    _read_bytes_as_file(prefix + body, name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from([VALID_NPY, VALID_NPZ]), data=st.data())
def test_mutated_npy_and_npz_never_escape_as_raw_exceptions(source: bytes, data: st.DataObject) -> None:
    mutated = bytearray(source)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    _read_bytes_as_file(bytes(mutated[:cut] if data.draw(st.booleans()) else mutated))


# --------------------------------------------------------------------------------------------------
# Headerless content that is not events (bs2 has no magic number)
# --------------------------------------------------------------------------------------------------


def bs2_bytes(events: np.ndarray) -> bytes:
    t = events["t"].astype(np.int64)
    records = np.stack([events["x"], events["y"], (events["p"] << 7) | (t >> 16), (t >> 8) & 0xFF, t & 0xFF],
                       axis=1).astype(np.uint8)
    return records.tobytes()


def bs2_events(n: int, seed: int = 0, t_span: int = 1 << 23) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["t"] = np.sort(rng.integers(0, t_span, n))
    events["x"], events["y"] = rng.integers(0, 128, n), rng.integers(0, 128, n)
    events["p"] = rng.integers(0, 2, n)
    return events


def test_random_bytes_named_bs2_are_refused_as_not_events(tmp_path: Path) -> None:
    path = tmp_path / "noise.bs2"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    for read in (read_events, lambda p: read_events(p, until_us=1_450_000)):
        with pytest.raises(EventFileError) as caught:
            read(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: does not look like bs2 events: timestamps go backwards at ")
        assert "(a headerless file is refused above 10%)" in message and "\n" not in message


def test_noise_is_refused_while_a_growing_bs2_file_is_fed_in_pieces() -> None:
    from eventformer.events.formats import Bs2Decoder

    noise = np.random.default_rng(2).integers(0, 256, 5 * 3000, dtype=np.uint8).tobytes()
    decoder = Bs2Decoder("live.bs2")
    fed = 0
    with pytest.raises(EventFileError, match="does not look like bs2 events"):
        for start in range(0, len(noise), 777):
            fed += len(noise[start:start + 777])
            decoder.feed(noise[start:start + 777])
    # judged as soon as 1000 successive timestamps were seen, not only when the file is finished
    assert 5 * 1000 <= fed < 5 * 1000 + 777


def test_a_few_backwards_timestamps_are_kept_with_a_warning(tmp_path: Path) -> None:
    events = bs2_events(5000)
    swap = np.arange(10, 5000, 40)  # 2.5% of successive pairs go backwards: a merged stream, not noise
    events["t"][swap], events["t"][swap + 1] = events["t"][swap + 1], events["t"][swap].copy()
    events["t"][swap] += 1  # a strict step back where equal timestamps were swapped
    path = tmp_path / "merged.bs2"
    path.write_bytes(bs2_bytes(events))
    rec = read_events(path)
    assert len(rec.events) == 5000 and any("backwards" in w for w in rec.warnings)


def test_every_real_recording_still_reads() -> None:
    files = sorted(p for p in real_file().rglob("*") if p.suffix in (".bs2", ".bin", ".raw", ".dat", ".npy",
                                                                    ".aedat", ".aedat4"))
    assert len(files) >= 12
    for path in files:
        if path.suffix == ".aedat4":
            pytest.importorskip("aedat")
        read_events(path)  # none is refused by the plausibility rule


# --------------------------------------------------------------------------------------------------
# Reading only the start of a recording (infer's clip), in bounded memory
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dvs-gesture/3.bs2", "formats/evt2_sample.raw", "formats/evt3_sample.raw",
                                  "formats/davis240c_imu.aedat", "formats/evt3_sample.npy"])
@pytest.mark.parametrize("until_us", [1, 4000, 1_450_000, 10**12])
def test_read_start_is_the_clip_of_the_whole_recording(name: str, until_us: int) -> None:
    from eventformer.events.framing import clip_events
    from eventformer.events.readers import read_start

    path = real_file(*name.split("/"))
    whole = read_events(path)
    expected = clip_events(whole.events, until_us)
    for chunk_bytes in (997, 1 << 16, None):
        start = read_start(path, until_us, chunk_bytes=chunk_bytes)
        np.testing.assert_array_equal(start.events, expected)
        assert start.complete == (len(expected) == len(whole.events))
        assert start.sensor_size == whole.sensor_size and start.format == whole.format


def test_read_start_of_a_large_file_stops_after_the_clip(tmp_path: Path) -> None:
    import tracemalloc

    from eventformer.events.readers import read_start

    n = 4_000_000  # a 20 MB bs2 recording over 8 s; the clip below holds ~1/80 of it
    events = bs2_events(n, seed=5)
    path = tmp_path / "long.bs2"
    path.write_bytes(bs2_bytes(events))
    del events
    decoded_whole = n * EVENT_DTYPE.itemsize  # 52 MB: what reading it all would at least hold
    tracemalloc.start()
    try:
        start = read_start(path, 100_000, chunk_bytes=1 << 18)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not start.complete
    t = start.events["t"]
    assert len(t) and int(t.max()) < int(t[0]) + 100_000
    assert peak < decoded_whole / 10, f"peak {peak / 1e6:.1f} MB while reading a 100 ms clip"


def test_infer_classifies_the_clip_it_reads() -> None:
    from eventformer.inference import classify, classify_file
    from eventformer.modelfile import load
    from eventformer.models import engine_for
    from eventformer.weights import shipped_model_path

    engine = engine_for(load(shipped_model_path("ssa")), dtype="float64")
    path = real_file("formats", "davis240c_imu.aedat")  # 2.07 s, longer than the model's 1.45 s clip
    bounded = classify_file(engine, str(path))
    whole = classify(engine, read_events(path))
    np.testing.assert_array_equal(bounded.logits, whole.logits)
    assert bounded.ops == whole.ops and bounded.spatial == whole.spatial
    assert bounded.events == len(read_events(path, until_us=engine.config.clip_us).events) < whole.events
