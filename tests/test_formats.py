"""Camera formats (AEDAT 2/3.1/4, Prophesee EVT 2/3 and DAT) and incremental decoding.

Real recordings from ../shared/data/events/formats are checked against the README's counts and
against independent decoders; AEDAT 3.1 (no small real file exists) against files built here
packet by packet. Decoding must not depend on how the bytes are split: hypothesis feeds every file
in random pieces (cutting records, words and headers in half) and through a file that grows while
it is read, and fuzzes every reader with truncated, empty and random bytes.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventformer.events.formats import AEDAT4_INSTALL_HINT, aedat4_available
from eventformer.events.readers import (
    EVENT_DTYPE,
    HEAD_BYTES,
    NO_EVENTS_WARNING,
    EventFileError,
    EventStream,
    Recording,
    _reader_for_head,
    decode_file,
    detect_reader,
    read_events,
    registered_readers,
)

FORMATS_DIR = SHARED / "data" / "events" / "formats"

#: README table: file -> (reader, events).
REAL_FILES = {
    "dvxplorer.aedat4": ("aedat4", 111_954),
    "evt3_sample.raw": ("evt3", 219_596),
    "evt2_sample.raw": ("evt2", 539_481),
    "ncars.dat": ("dat", 2_009),
    "davis240c_imu.aedat": ("aedat2", 162_771),
    "aedat2_header_only.aedat": ("aedat2", 0),
    "nmnist.bin": ("bs2", 4_325),
    "evt3_sample.npy": ("npy", 219_596),
}


def need_formats(name: str) -> Path:
    if not FORMATS_DIR.is_dir():
        pytest.skip(f"real format samples not found at {FORMATS_DIR} (../shared is absent)")
    return FORMATS_DIR / name


def need_aedat4() -> None:
    if not aedat4_available():
        pytest.skip(f"the optional 'aedat' package is not installed ({AEDAT4_INSTALL_HINT})")


def need_real(name: str) -> Path:
    path = need_formats(name)
    if REAL_FILES[name][0] == "aedat4":
        need_aedat4()
    return path


def fields_equal(events: np.ndarray, reference: np.ndarray, names: str = "txyp") -> None:
    assert len(events) == len(reference)
    for name in names:
        np.testing.assert_array_equal(events[name].astype(np.int64), reference[name].astype(np.int64),
                                      err_msg=f"field {name}")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------------
# Hand-built files
# --------------------------------------------------------------------------------------------------


def aedat3_file(*packets: bytes, source: str | None = "DVS128") -> bytes:
    lines = ["#!AER-DAT3.1", "#Format: RAW"]
    if source:
        lines.append(f"#Source 1: {source}")
    lines += ["#Start-Time: 2017-04-07 12:10:23 (TZ+0000)", "#!END-HEADER"]
    return "".join(line + "\r\n" for line in lines).encode() + b"".join(packets)


def polarity_packet(events: list[tuple[int, int, int, int, int]], *, overflow: int = 0,
                    unused: list[tuple[int, int, int, int, int]] = ()) -> bytes:
    """A polarity packet of (timestamp, x, y, p, valid) events; ``unused`` fill the slots between
    eventNumber and eventCapacity (a reader must ignore them)."""
    def pack(ts: int, x: int, y: int, p: int, valid: int) -> bytes:
        return struct.pack("<Ii", valid | (p << 1) | (y << 2) | (x << 17), ts)

    body = b"".join(pack(*e) for e in [*events, *unused])
    valid = sum(e[4] for e in events)
    header = struct.pack("<hhiiiiii", 1, 1, 8, 4, overflow, len(events) + len(unused), len(events), valid)
    return header + body


def other_packet(kind: int, size: int, capacity: int) -> bytes:
    """A non-polarity packet whose body would decode as valid polarity events if misread."""
    header = struct.pack("<hhiiiiii", kind, 1, size, 4, 0, capacity, capacity, capacity)
    return header + (struct.pack("<Ii", 1 | (3 << 2) | (5 << 17), 77) * (size * capacity // 8 + 1))[:size * capacity]


def tricky_aedat3() -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """Special, frame-sized and IMU packets between polarity packets, a clock overflow, unused
    capacity, invalidated events; and the (t, x, y, p) a correct reader returns."""
    data = aedat3_file(
        other_packet(kind=0, size=8, capacity=3),
        polarity_packet([(100, 1, 2, 1, 1), (101, 3, 4, 0, 0), (102, 127, 127, 0, 1)]),
        other_packet(kind=2, size=36, capacity=2),
        polarity_packet([(5, 10, 20, 1, 1), (6, 11, 21, 0, 1)], overflow=2,
                        unused=[(7, 12, 22, 1, 1), (8, 13, 23, 1, 1)]),
        other_packet(kind=3, size=36, capacity=1),
        polarity_packet([(9, 0, 0, 0, 0)]),
        polarity_packet([]),
    )
    expected = [(100, 1, 2, 1), (102, 127, 127, 0), ((2 << 31) | 5, 10, 20, 1), ((2 << 31) | 6, 11, 21, 0)]
    return data, expected


def evt3_file(words: list[int], header: str = "% evt 3.0\n% geometry 64x32\n% end\n") -> bytes:
    return header.encode() + np.array(words, dtype="<u2").tobytes()


def addr_y(y: int) -> int: return y
def addr_x(x: int, p: int) -> int: return (2 << 12) | (p << 11) | x
def base_x(x: int, p: int) -> int: return (3 << 12) | (p << 11) | x
def vect_12(mask: int) -> int: return (4 << 12) | mask
def vect_8(mask: int) -> int: return (5 << 12) | mask
def time_low(v: int) -> int: return (6 << 12) | v
def time_high(v: int) -> int: return (8 << 12) | v
def trigger() -> int: return (10 << 12) | 0x101


EVT3_WORDS = [
    time_high(1), time_low(2), addr_y(5),
    base_x(10, 1), vect_12(0b101), vect_8(0b1000_0001), addr_x(3, 0), trigger(),
    time_high(4095), time_low(4095), addr_y(7), addr_x(1, 1),
    time_high(0), time_low(0), addr_x(2, 0),  # the 24-bit clock wraps
]
EVT3_EXPECTED = [(4098, 10, 5, 1), (4098, 12, 5, 1), (4098, 22, 5, 1), (4098, 29, 5, 1), (4098, 3, 5, 0),
                 ((1 << 24) - 1, 1, 7, 1), (1 << 24, 2, 7, 0)]


def evt2_word(kind: int, payload: int) -> int:
    return (kind << 28) | payload


def cd(p: int, t_low: int, x: int, y: int) -> int:
    return evt2_word(p, (t_low << 22) | (x << 11) | y)


def evt2_file(words: list[int], header: str = "% evt 2.0\n% format EVT2;height=4;width=8\n") -> bytes:
    return header.encode() + np.array(words, dtype="<u4").tobytes()


def aedat2_file(records: list[tuple[int, int]], chip: str | None) -> bytes:
    header = "#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
    if chip:
        header += f"# AEChip: {chip}\r\n"
    header += "# Timestamps tick: 1 us\r\n"
    return header.encode() + np.array(records, dtype=[("a", ">u4"), ("t", ">u4")]).tobytes()


def davis_address(x: int, y: int, p: int) -> int:
    return (y << 22) | (x << 12) | (p << 11)


def dat_file(records: list[tuple[int, int, int, int]], header: str = "% Data file containing Event2D events.\n"
             "% Version 2\n% Width 16\n% Height 8\n") -> bytes:
    body = np.array([(t, x | (y << 14) | (p << 28)) for t, x, y, p in records], dtype="<u4").tobytes()
    return header.encode() + bytes([0, 8]) + body


HAND_BUILT = {
    "tricky.aedat3": tricky_aedat3()[0],
    "vectors.evt3": evt3_file(EVT3_WORDS),
    "small.evt2": evt2_file([cd(1, 5, 1, 2), evt2_word(8, 3), cd(0, 1, 7, 3), evt2_word(10, 1), cd(1, 2, 2, 0)]),
    "davis.aedat2": aedat2_file([(davis_address(3, 4, 1), 10), (1 << 31, 11), (1 << 10, 12),
                                 (davis_address(239, 0, 0), 20)], "eu.seebetter.ini.chips.davis.DAVIS240C"),
    "small.dat": dat_file([(1, 2, 3, 1), (4, 15, 7, 0)]),
}


def as_tuples(events: np.ndarray) -> list[tuple[int, int, int, int]]:
    return [tuple(int(v) for v in e) for e in events.tolist()]


# --------------------------------------------------------------------------------------------------
# Real recordings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_counts_and_detection(name: str) -> None:
    path = need_real(name)
    reader_name, count = REAL_FILES[name]
    assert detect_reader(path).name == reader_name
    rec = read_events(path)
    assert rec.format == reader_name and rec.events.dtype == EVENT_DTYPE
    assert len(rec.events) == count
    assert rec.warnings == ([] if count else [NO_EVENTS_WARNING])
    if count:
        assert rec.events["x"].min() >= 0 and rec.events["y"].min() >= 0
        assert set(np.unique(rec.events["p"]).tolist()) <= {0, 1}


def test_evt3_matches_the_reference_decode() -> None:
    """x, y, p and the event order equal the reference decode (expelliarmus) exactly. Its t runs
    ahead by 4096 us at every TIME_LOW decrease (see the evt3 module docstring); ours follows the
    format: the difference is exactly that, and the recording spans the 8.8 ms its words encode."""
    rec = read_events(need_formats("evt3_sample.raw"))
    reference = np.load(need_formats("evt3_sample.npy"))
    fields_equal(rec.events, reference, "xyp")
    extra = reference["t"] - rec.events["t"]
    assert np.all(extra % 4096 == 0) and np.all(np.diff(extra) >= 0) and extra[0] == 0
    assert rec.events["t"][0] == reference["t"][0] == 2861 << 12
    assert rec.duration_us == 8_801
    assert rec.sensor_size is None  # the header has no geometry line
    assert rec.events["x"].max() < 1280 and rec.events["y"].max() < 720


def test_evt2_matches_expelliarmus() -> None:
    expelliarmus = pytest.importorskip("expelliarmus")
    path = need_formats("evt2_sample.raw")
    reference = expelliarmus.Wizard(encoding="evt2").read(str(path))
    rec = read_events(path)
    fields_equal(rec.events, reference)
    assert rec.duration_us == 50_000 and rec.events["x"].max() < 640 and rec.events["y"].max() < 480


def test_dat_matches_expelliarmus() -> None:
    """tonic 1.7 has no DAT reader, so expelliarmus is the one reference."""
    expelliarmus = pytest.importorskip("expelliarmus")
    path = need_formats("ncars.dat")
    fields_equal(read_events(path).events, expelliarmus.Wizard(encoding="dat").read(str(path)))


def test_aedat4_matches_tonic() -> None:
    need_aedat4()
    tonic_io = pytest.importorskip("tonic.io")
    path = need_formats("dvxplorer.aedat4")
    rec = read_events(path)
    reference = tonic_io.read_aedat4(str(path))
    fields_equal(rec.events, reference, "txy")
    np.testing.assert_array_equal(rec.events["p"], reference["p"].astype(np.uint8))
    assert rec.sensor_size == (320, 240)
    assert rec.events["t"][0] > 1_500_000_000_000_000  # absolute Unix microseconds


def test_davis240c_skips_imu_and_mirrors_into_image_coordinates() -> None:
    path = need_formats("davis240c_imu.aedat")
    rec = read_events(path)
    assert rec.sensor_size == (240, 180)
    raw = path.read_bytes()
    records = np.frombuffer(raw[175_268:], dtype=[("a", ">u4"), ("t", ">u4")])
    dvs = records[(records["a"] >> 31) == 0]
    assert len(dvs) == 162_771 and len(records) - len(dvs) == 33_837
    np.testing.assert_array_equal(rec.events["x"], 239 - ((dvs["a"] >> 12) & 0x3FF))
    np.testing.assert_array_equal(rec.events["y"], 179 - ((dvs["a"] >> 22) & 0x1FF))
    np.testing.assert_array_equal(rec.events["t"], dvs["t"])


def test_aedat2_header_only_is_an_empty_stream() -> None:
    """A header and no events is not an error (unlike an empty file), but it is said."""
    rec = read_events(need_formats("aedat2_header_only.aedat"))
    assert len(rec.events) == 0 and rec.warnings == [NO_EVENTS_WARNING] and rec.sensor_size == (346, 260)


# --------------------------------------------------------------------------------------------------
# AEDAT 3.1, hand-built
# --------------------------------------------------------------------------------------------------


def test_aedat3_tricky_packets(tmp_path: Path) -> None:
    data, expected = tricky_aedat3()
    rec = read_events(write(tmp_path, "gesture.aedat", data))
    assert rec.format == "aedat3" and rec.sensor_size == (128, 128)
    assert as_tuples(rec.events) == expected and rec.warnings == []


def test_aedat3_overflow_makes_time_monotonic(tmp_path: Path) -> None:
    data = aedat3_file(polarity_packet([((1 << 31) - 1, 0, 0, 1, 1)]),
                       polarity_packet([(0, 1, 1, 0, 1)], overflow=1))
    rec = read_events(write(tmp_path, "wrap.aedat", data))
    assert rec.events["t"].tolist() == [(1 << 31) - 1, 1 << 31] and rec.warnings == []


def test_aedat3_without_a_known_source_has_no_sensor_size(tmp_path: Path) -> None:
    data = aedat3_file(polarity_packet([(1, 500, 400, 1, 1)]), source=None)
    rec = read_events(write(tmp_path, "nosource.aedat", data))
    assert rec.sensor_size is None and as_tuples(rec.events) == [(1, 500, 400, 1)]


def test_aedat3_outside_the_sensor_is_kept_with_a_warning(tmp_path: Path) -> None:
    data = aedat3_file(polarity_packet([(1, 200, 5, 1, 1), (2, 5, 5, 0, 1)]))
    rec = read_events(write(tmp_path, "outside.aedat", data))
    assert len(rec.events) == 2
    assert rec.warnings == ["1 event(s) lie outside the 128x128 sensor named in the header; they are kept"]


@pytest.mark.parametrize("packet, match", [
    (struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 2, 3, 3) + b"\0" * 16, "eventNumber 3"),
    (struct.pack("<hhiiiiii", 1, 1, 4, 4, 0, 1, 1, 1) + b"\0" * 4, "4-byte events"),
    (struct.pack("<hhiiiiii", 5, 1, -8, 4, 0, 1, 1, 1), "corrupt AEDAT 3 packet header"),
])
def test_aedat3_corrupt_packet_headers(tmp_path: Path, packet: bytes, match: str) -> None:
    path = write(tmp_path, "corrupt.aedat", aedat3_file(polarity_packet([(1, 1, 1, 1, 1)]), packet))
    with pytest.raises(EventFileError, match=match) as info:
        read_events(path)
    assert "corrupt.aedat" in str(info.value)


def test_aedat3_cut_packet_keeps_whole_packets_and_warns(tmp_path: Path) -> None:
    data, expected = tricky_aedat3()
    rec = read_events(write(tmp_path, "cut.aedat", data[:-30]))  # the empty last packet and 2 bytes more
    assert as_tuples(rec.events) == expected
    assert rec.warnings == ["read 4 events; the last 34 bytes are an incomplete record"]


def test_aedat3_header_without_end_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "headless.aedat", b"#!AER-DAT3.1\r\n#Format: RAW\r\n")
    with pytest.raises(EventFileError, match="truncated inside its aedat3 header"):
        read_events(path)


# --------------------------------------------------------------------------------------------------
# EVT 2/3, DAT and AEDAT 2.0, hand-built
# --------------------------------------------------------------------------------------------------


def test_evt3_vectors_clock_wrap_and_geometry(tmp_path: Path) -> None:
    rec = read_events(write(tmp_path, "v.raw", HAND_BUILT["vectors.evt3"]))
    assert rec.format == "evt3" and rec.sensor_size == (64, 32)
    assert as_tuples(rec.events) == EVT3_EXPECTED and rec.warnings == []


def test_evt3_format_line_and_unknown_words(tmp_path: Path) -> None:
    data = evt3_file([addr_y(1), addr_x(2, 1), 0x9000, addr_x(3, 0)],
                     header="% format EVT3;height=720;width=1280\n")
    rec = read_events(write(tmp_path, "f.raw", data))
    assert rec.sensor_size == (1280, 720) and len(rec.events) == 2
    assert rec.warnings == ["words of unknown EVT 3.0 types were skipped"]


def test_evt2_time_high_outside_sensor_and_backwards(tmp_path: Path) -> None:
    rec = read_events(write(tmp_path, "s.raw", HAND_BUILT["small.evt2"]))
    assert rec.format == "evt2" and rec.sensor_size == (8, 4)
    assert as_tuples(rec.events) == [(5, 1, 2, 1), ((3 << 6) | 1, 7, 3, 0), ((3 << 6) | 2, 2, 0, 1)]
    data = evt2_file([evt2_word(8, 3), cd(1, 1, 9, 1), evt2_word(8, 2), cd(1, 0, 0, 0)])
    rec = read_events(write(tmp_path, "w.raw", data))
    assert rec.warnings == ["1 event(s) lie outside the 8x4 sensor named in the header; they are kept",
                            "timestamps go backwards 1 time(s); events are kept in stored order"]


def test_prophesee_encodings_not_supported_are_not_claimed(tmp_path: Path) -> None:
    path = write(tmp_path, "x.raw", b"% evt 2.1\n" + b"\0" * 16)
    with pytest.raises(EventFileError, match="unknown event file format"):
        read_events(path)


def test_dat_sensor_size_and_header_only(tmp_path: Path) -> None:
    rec = read_events(write(tmp_path, "a.dat", HAND_BUILT["small.dat"]))
    assert rec.format == "dat" and rec.sensor_size == (16, 8)
    assert as_tuples(rec.events) == [(1, 2, 3, 1), (4, 15, 7, 0)]
    empty = read_events(write(tmp_path, "b.dat", b"% Data file containing Event2D events.\n% Version 2\n"))
    assert len(empty.events) == 0 and empty.warnings == [NO_EVENTS_WARNING]


def test_aedat2_davis_skips_imu_and_special_events(tmp_path: Path) -> None:
    rec = read_events(write(tmp_path, "d.aedat", HAND_BUILT["davis.aedat2"]))
    assert rec.sensor_size == (240, 180) and rec.warnings == []
    assert as_tuples(rec.events) == [(10, 236, 175, 1), (20, 0, 179, 0)]


def test_aedat2_dvs128_layout(tmp_path: Path) -> None:
    records = [((x << 8) | (y << 1) | p, t) for t, x, y, p in [(1, 3, 100, 1), (2, 127, 0, 0)]]
    rec = read_events(write(tmp_path, "c.aedat", aedat2_file(records, "ch.unizh.ini.jaer.chip.retina.DVS128")))
    assert rec.sensor_size == (128, 128) and rec.warnings == []
    assert as_tuples(rec.events) == [(1, 3, 100, 1), (2, 127, 0, 0)]


def test_aedat2_without_a_chip_falls_back_to_dvs128_and_says_so(tmp_path: Path) -> None:
    records = [((5 << 8) | (6 << 1) | 1, 1), (davis_address(100, 50, 1), 2)]
    rec = read_events(write(tmp_path, "n.aedat", aedat2_file(records, None)))
    assert rec.sensor_size is None and rec.events[0].tolist() == (1, 5, 6, 1)
    assert len(rec.warnings) == 2
    assert "names no chip" in rec.warnings[0] and "DAVIS" in rec.warnings[1]


def test_aedat2_davis_of_unknown_size_keeps_raw_coordinates(tmp_path: Path) -> None:
    records = [(davis_address(3, 4, 1), 10)]
    rec = read_events(write(tmp_path, "u.aedat", aedat2_file(records, "eu.seebetter.ini.chips.davis.Davis999")))
    assert rec.sensor_size is None and as_tuples(rec.events) == [(10, 3, 4, 1)]
    assert "no known sensor size" in rec.warnings[0]


def test_aedat4_without_the_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aedat", None)  # import aedat -> ImportError
    path = write(tmp_path, "cam.aedat4", b"#!AER-DAT4.0\r\n" + b"\0" * 32)
    assert detect_reader(path).name == "aedat4"
    with pytest.raises(EventFileError) as info:
        read_events(path)
    assert "cam.aedat4" in str(info.value) and AEDAT4_INSTALL_HINT in str(info.value)


def test_every_camera_format_is_registered_before_bs2() -> None:
    names = [r.name for r in registered_readers()]
    assert {"aedat2", "aedat3", "aedat4", "evt2", "evt3", "dat"} <= set(names) and names[-1] == "bs2"


# --------------------------------------------------------------------------------------------------
# The incremental interface
# --------------------------------------------------------------------------------------------------


def test_decoder_holds_back_the_header_and_partial_records() -> None:
    data = HAND_BUILT["vectors.evt3"]
    header_end = data.index(b"% end\n") + len(b"% end\n")
    decoder = detect_reader_for_bytes(data).decoder("mem")
    assert len(decoder.feed(data[:header_end - 1])) == 0 and not decoder.header_complete
    assert len(decoder.feed(data[header_end - 1:header_end + 7])) == 0  # header + 3.5 words
    assert decoder.header_complete and decoder.sensor_size == (64, 32)
    assert decoder.offset == header_end + 6 and decoder.pending_bytes == 1
    rest = decoder.feed(data[header_end + 7:])
    assert as_tuples(rest) == EVT3_EXPECTED
    end = decoder.finish()
    assert end.torn_bytes == 0 and end.message is None and end.decoded == len(EVT3_EXPECTED)
    with pytest.raises(ValueError):
        decoder.feed(b"\0")


def test_leftover_reports_a_torn_record() -> None:
    decoder = detect_reader_for_bytes(HAND_BUILT["small.dat"]).decoder("mem")
    events = decoder.feed(HAND_BUILT["small.dat"] + b"\x01\x02\x03")
    end = decoder.finish()
    assert len(events) == 2 and end.torn_bytes == 3
    assert end.message == "read 2 events; the last 3 bytes are an incomplete record"


def detect_reader_for_bytes(data: bytes, name: str = "mem"):
    """The reader `read_events` picks for ``data`` in a file called ``name`` (its extension
    matters for headerless formats only)."""
    return _reader_for_head(data[:HEAD_BYTES], len(data), name)


def test_event_stream_waits_for_enough_bytes_to_detect_the_format(tmp_path: Path) -> None:
    data = HAND_BUILT["tricky.aedat3"]
    path = write(tmp_path, "growing.aedat", data[:5])  # "#!AER": could still be anything
    with EventStream(path) as stream:
        assert len(stream.read()) == 0 and stream.format is None
        with open(path, "ab") as f:
            f.write(data[5:200])
        first = stream.read()
        assert stream.format == "aedat3" and stream.sensor_size == (128, 128)
        with open(path, "ab") as f:
            f.write(data[200:])
        rest = stream.read_available()
        end = stream.finish()
    assert as_tuples(np.concatenate([first, rest])) == tricky_aedat3()[1]
    assert end.torn_bytes == 0


def test_event_stream_on_a_missing_file() -> None:
    with pytest.raises(EventFileError, match="no such file"):
        EventStream("/nonexistent/file.raw")


def test_decode_file_chunk_size_does_not_matter() -> None:
    path = need_formats("evt3_sample.raw")
    reader = detect_reader(path)
    small = decode_file(reader, path, chunk_bytes=4099)
    whole = read_events(path)
    np.testing.assert_array_equal(small.events, whole.events)
    assert small.warnings == whole.warnings


# --------------------------------------------------------------------------------------------------
# Chunking invariance (hypothesis)
# --------------------------------------------------------------------------------------------------


def available_real_files() -> list[str]:
    """Real files this checkout can read: hypothesis tests draw from these and the hand-built
    files, so they still run (on the hand-built ones) where ../shared is absent."""
    if not FORMATS_DIR.is_dir():
        return []
    return [name for name, (reader, _) in REAL_FILES.items() if reader != "aedat4" or aedat4_available()]


CHUNK_SOURCES = [*(f"real:{name}" for name in available_real_files()), *(f"hand:{name}" for name in HAND_BUILT)]
_whole_decodes: dict[str, tuple[np.ndarray, list[str], int]] = {}


def source_bytes(source: str) -> bytes:
    kind, name = source.split(":", 1)
    if kind == "hand":
        return HAND_BUILT[name]
    return need_real(name).read_bytes()


def source_name(source: str) -> str:
    """A file name for ``source`` whose extension detection accepts (nmnist.bin needs its .bin)."""
    return source.split(":", 1)[1]


def decode_in_pieces(data: bytes, pieces: list[int], name: str = "mem") -> tuple[np.ndarray, list[str], int]:
    decoder = detect_reader_for_bytes(data, name).decoder("mem")
    parts, position = [], 0
    for size in pieces:
        parts.append(decoder.feed(data[position:position + size]))
        position += size
    assert position == len(data)
    end = decoder.finish()
    parts.append(end.events)
    return np.concatenate(parts), decoder.warnings, end.torn_bytes


def whole_decode(source: str) -> tuple[np.ndarray, list[str], int]:
    if source not in _whole_decodes:
        data = source_bytes(source)
        _whole_decodes[source] = decode_in_pieces(data, [len(data)], source_name(source))
    return _whole_decodes[source]


def draw_pieces(data: st.DataObject, size: int) -> list[int]:
    """Piece sizes covering ``size`` bytes: cuts at random places, each followed by a few 1..7-byte
    pieces (splitting records and words in half), the gaps between cut into pieces of one random
    size up to 64 KiB (never so small that a large file takes thousands of feeds)."""
    anchors = data.draw(st.lists(st.integers(0, size), max_size=10), label="anchors")
    cuts = {size}
    for anchor in anchors:
        cuts.add(anchor)
        for step in data.draw(st.lists(st.integers(1, 7), max_size=3), label="small steps"):
            anchor = min(size, anchor + step)
            cuts.add(anchor)
    stride = data.draw(st.integers(max(1, size // 150), 1 << 16), label="stride")
    pieces, position = [], 0
    for cut in sorted(cuts):
        while cut - position > stride:
            pieces.append(stride)
            position += stride
        if cut > position:
            pieces.append(cut - position)
            position = cut
    return pieces


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(CHUNK_SOURCES), data=st.data())
def test_any_split_gives_the_events_of_one_whole_feed(source: str, data: st.DataObject) -> None:
    blob = source_bytes(source)
    events, warnings, torn = decode_in_pieces(blob, draw_pieces(data, len(blob)), source_name(source))
    whole_events, whole_warnings, whole_torn = whole_decode(source)
    np.testing.assert_array_equal(events, whole_events)
    assert warnings == whole_warnings and torn == whole_torn


GROWING_SOURCES = [source for source in CHUNK_SOURCES if source not in ("real:evt2_sample.raw", "real:evt3_sample.npy")]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(GROWING_SOURCES), data=st.data())
def test_event_stream_follows_a_growing_file(source: str, data: st.DataObject) -> None:
    blob = source_bytes(source)
    appends = draw_pieces(data, len(blob))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"recording{Path(source_name(source)).suffix}"
        path.write_bytes(b"")
        stream = EventStream(path)
        parts, written = [], 0
        for size in appends:
            with open(path, "ab") as f:
                f.write(blob[written:written + size])
            written += size
            for _ in range(data.draw(st.integers(0, 2), label="reads")):
                parts.append(stream.read(data.draw(st.integers(1, 1 << 16), label="max_bytes")))
        parts.append(stream.read_available())
        end = stream.finish()
        parts.append(end.events)
    whole_events, whole_warnings, whole_torn = whole_decode(source)
    np.testing.assert_array_equal(np.concatenate(parts), whole_events)
    expected_warnings = whole_warnings + ([] if len(whole_events) else [NO_EVENTS_WARNING])
    assert end.torn_bytes == whole_torn and stream.warnings == expected_warnings


# --------------------------------------------------------------------------------------------------
# Fuzz: truncated, empty, random bytes -> a Recording or one EventFileError
# --------------------------------------------------------------------------------------------------


MAGIC_PREFIXES = [
    b"",
    b"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C\r\n",
    b"#!AER-DAT2.0\r\n",
    b"#!AER-DAT3.1\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n",
    b"#!AER-DAT3.1\r\n",
    b"#!AER-DAT4.0\r\n",
    b"% evt 2.0\n",
    b"% evt 3.0\n% end\n",
    b"% format EVT3;height=720;width=1280\n",
    b"% Data file containing Event2D events.\n% Version 2\n",
]
MEMORY_LIMIT = 64 << 20


def read_bytes_as_file(data: bytes, name: str = "fuzz.bin") -> Recording | None:
    """Read ``data`` as a file: a Recording, or None after one clean EventFileError; memory bounded.

    Whatever the bytes, bs2 is chosen only for a bs2 extension, an empty file is always the
    empty-file error, and a recording without events always carries the "no events" warning."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        tracemalloc.start()
        try:
            rec = read_events(path)
        except EventFileError as exc:
            assert name in str(exc) and "\n" not in str(exc)
            assert ("empty file: no header and no events" in str(exc)) == (not data)
            return None
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < MEMORY_LIMIT, f"reading {len(data)} bytes peaked at {peak} bytes"
    assert isinstance(rec, Recording) and rec.events.dtype == EVENT_DTYPE
    assert np.all(rec.events["x"] >= 0) and np.all(rec.events["y"] >= 0)
    assert all(isinstance(w, str) and "\n" not in w for w in rec.warnings)
    assert rec.format != "bs2" or Path(name).suffix in (".bs2", ".bin")
    assert len(rec.events) or NO_EVENTS_WARNING in rec.warnings
    return rec


FUZZ_NAMES = ["fuzz.bin", "fuzz.bs2", "fuzz.raw", "fuzz.txt"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(MAGIC_PREFIXES), body=st.binary(max_size=400), name=st.sampled_from(FUZZ_NAMES))
def test_random_bytes_after_each_magic_never_escape(prefix: bytes, body: bytes, name: str) -> None:
    read_bytes_as_file(prefix + body, name)


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_detected_the_same_under_a_wrong_extension(name: str) -> None:
    """Formats with a magic number do not care about the name; the headerless N-MNIST .bin is
    refused under a name that does not say what it is (and read by ``format='bs2'``)."""
    path = need_real(name)
    data = path.read_bytes()[:HEAD_BYTES]
    reader_name = REAL_FILES[name][0]
    for wrong in ("renamed.txt", "renamed.aedat", "renamed"):
        if reader_name == "bs2":
            with pytest.raises(EventFileError, match="unknown event file format"):
                _reader_for_head(data, path.stat().st_size, wrong)
        else:
            assert _reader_for_head(data, path.stat().st_size, wrong).name == reader_name


@pytest.mark.parametrize("name", [None, *REAL_FILES])
def test_an_empty_file_is_an_error_under_every_name(tmp_path: Path, name: str | None) -> None:
    path = write(tmp_path, name or "empty", b"")
    for read in (lambda: read_events(path), lambda: EventStream(path).finish()):
        with pytest.raises(EventFileError, match="empty file: no header and no events"):
            read()


def test_a_file_of_non_event_records_warns_no_events(tmp_path: Path) -> None:
    """AEDAT 3.1 with IMU and special packets only: read, no events, and said."""
    data = aedat3_file(other_packet(kind=0, size=8, capacity=3), other_packet(kind=2, size=36, capacity=2))
    rec = read_events(write(tmp_path, "imu.aedat", data))
    assert len(rec.events) == 0 and rec.warnings == [NO_EVENTS_WARNING]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(CHUNK_SOURCES), data=st.data())
def test_truncated_and_mutated_files_never_escape(source: str, data: st.DataObject) -> None:
    blob = bytearray(source_bytes(source)[:1 << 16])
    for _ in range(data.draw(st.integers(0, 4), label="mutations")):
        position = data.draw(st.integers(0, min(len(blob), 4096) - 1), label="position")
        blob[position] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(blob)), label="cut")
    read_bytes_as_file(bytes(blob[:cut]), source_name(source))


@pytest.mark.parametrize("prefix", MAGIC_PREFIXES[1:])
def test_magic_alone_reads_or_fails_cleanly(prefix: bytes) -> None:
    if prefix.startswith(b"#!AER-DAT4"):
        need_aedat4()
    rec = read_bytes_as_file(prefix)
    if rec is not None:
        assert len(rec.events) == 0


def test_prophesee_stream_waits_for_the_header_that_names_the_encoding(tmp_path):
    """A growing .raw whose first line is '% Date ...' is not yet identifiable: no error, no
    events, until the line naming the encoding (or the end of the header) has arrived."""
    from eventformer.events import EventStream

    path = tmp_path / "growing.raw"
    header = b"% Date 2020-09-25 07:48:29\n% evt 3.0\n% geometry 1280x720\n% end\n"
    path.write_bytes(header[:27])
    with EventStream(path) as stream:
        assert stream.read().shape[0] == 0
        with open(path, "ab") as f:
            f.write(header[27:] + bytes.fromhex("0080") + bytes.fromhex("0000"))
        stream.read()
        assert stream.format == "evt3"


# --------------------------------------------------------------------------------------------------
# Sensor sizes in headers: implausible ones refused, indirect ones (plugin_name) kept as a hint
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, data", [
    ("g.raw", lambda: evt2_file([cd(1, 0, 1, 1)], header="% evt 2.0\n% geometry 1048576x1048576\n")),
    ("f.raw", lambda: evt3_file([addr_y(1), addr_x(2, 1)],
                                header="% format EVT3;height=1048576;width=1048576\n% end\n")),
    ("w.dat", lambda: dat_file([(1, 2, 3, 1)], header="% Data file containing Event2D events.\n"
                                                      "% Width 1048576\n% Height 480\n")),
])
def test_an_implausible_header_sensor_size_is_one_sentence(tmp_path: Path, name: str, data) -> None:
    path = write(tmp_path, name, data())
    for read in (read_events, lambda p: read_events(p, until_us=1000)):
        with pytest.raises(EventFileError) as caught:
            read(path)
        assert str(caught.value).startswith(f"{path}: its header: a ")
        assert "sensor is implausible (event coordinates are 16-bit, so no side can exceed 32768)" in str(caught.value)


def test_the_largest_representable_sensor_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "big.raw", evt2_file([cd(1, 0, 1, 1)], header="% evt 2.0\n% geometry 32768x32768\n"))
    assert read_events(path).sensor_size == (32768, 32768)


@pytest.mark.parametrize("plugin, size", [("hal_plugin_gen3_fx3", (640, 480)),
                                          ("hal_plugin_gen41_evk3", (1280, 720)),
                                          ("hal_plugin_imx636_evk4", (1280, 720)),
                                          ("hal_plugin_genx320", (320, 320)),
                                          ("hal_plugin_something_else", None)])
def test_a_prophesee_plugin_name_is_a_sensor_hint_not_a_header_size(tmp_path: Path, plugin, size) -> None:
    header = f"% plugin_name {plugin}\n% evt 2.0\n"
    rec = read_events(write(tmp_path, "p.raw", evt2_file([cd(1, 0, 1, 1)], header=header)))
    assert rec.sensor_size is None  # only geometry lines are the header's size
    assert (rec.sensor_hint[0].size if rec.sensor_hint else None) == size
    if size:
        assert rec.sensor_hint[1] == f"the header's plugin_name {plugin}"


def test_real_prophesee_samples_name_their_sensor_by_plugin() -> None:
    assert read_events(need_formats("evt2_sample.raw")).sensor_hint[0].size == (640, 480)
    assert read_events(need_formats("evt3_sample.raw"), until_us=1000).sensor_hint[0].size == (1280, 720)
