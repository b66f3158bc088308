"""`convert_file` (eventformer.events.convert) and the `eventformer convert` options that reach it:
crops and scaling, time windows that hold nothing (said, not silent), the output's sensor size,
and errors that leave no output behind. The exact round trips live in test_h5events.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, one_error_line
from eventformer_cli.main import app
from typer.testing import CliRunner

from eventformer.errors import EventformerError
from eventformer.events import EVENT_DTYPE, EventFileError, read_events, write_npy
from eventformer.events.convert import ConversionSummary, convert_file
from eventformer.events.h5events import write_events_h5
from eventformer.events.transforms import SpatialTransform

runner = CliRunner()


def make_events(n: int, width: int = 640, height: int = 480, seed: int = 0, t_max: int = 1_000_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.zeros(n, EVENT_DTYPE)
    events["t"] = np.sort(rng.integers(0, t_max, n))
    events["x"], events["y"] = rng.integers(0, width, n), rng.integers(0, height, n)
    events["p"] = rng.integers(0, 2, n)
    return events


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_plain_conversion_summary(tmp_path: Path) -> None:
    events = make_events(1000)
    write_events_h5(tmp_path / "a.h5", events, 640, 480)
    seen = []
    summary = convert_file(tmp_path / "a.h5", tmp_path / "b.npy", progress=lambda done, total: seen.append(done),
                           chunk_bytes=4096)
    assert isinstance(summary, ConversionSummary)
    assert (summary.in_format, summary.out_format) == ("h5", "npy")
    assert summary.events_read == summary.events_written == 1000
    assert summary.sensor_size == (640, 480) and summary.spatial is None and summary.warnings == []
    assert (summary.t_first, summary.t_last) == (int(events["t"].min()), int(events["t"].max()))
    assert len(seen) > 1 and seen == sorted(seen)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), events)


@pytest.mark.parametrize("out", ["c.npy", "c.h5"])
def test_center_crop_and_size(tmp_path: Path, out: str) -> None:
    events = make_events(5000)
    write_events_h5(tmp_path / "a.h5", events, 640, 480)
    transform = SpatialTransform(center_crop=True)
    summary = convert_file(tmp_path / "a.h5", tmp_path / out, transform=transform, size=128, chunk_bytes=3000)
    expected = transform.plan((640, 480), 128).apply(events)
    assert summary.spatial == "center crop 480x480 at (80,0), scale x0.2667 (floor) to 128x128"
    assert summary.events_read == 5000 and summary.events_written == len(expected) < 5000
    assert summary.sensor_size == (128, 128)
    rec = read_events(tmp_path / out)
    np.testing.assert_array_equal(rec.events, expected)
    if out.endswith(".h5"):
        assert rec.sensor_size == (128, 128)  # the output's own size, not the camera's


def test_crop_without_size_only_crops_and_size_without_crop_only_scales(tmp_path: Path) -> None:
    events = make_events(3000)
    write_events_h5(tmp_path / "a.h5", events, 640, 480)
    summary = convert_file(tmp_path / "a.h5", tmp_path / "crop.h5", transform=SpatialTransform(crop=(100, 50, 300, 200)))
    rec = read_events(tmp_path / "crop.h5")
    keep = (events["x"] >= 100) & (events["x"] < 400) & (events["y"] >= 50) & (events["y"] < 250)
    assert summary.spatial == "crop 300x200 at (100,50)" and rec.sensor_size == (300, 200)
    np.testing.assert_array_equal(rec.events["x"], events["x"][keep] - 100)
    np.testing.assert_array_equal(rec.events["y"], events["y"][keep] - 50)
    np.testing.assert_array_equal(rec.events["t"], events["t"][keep])
    summary = convert_file(tmp_path / "a.h5", tmp_path / "small.h5", size=64)
    rec = read_events(tmp_path / "small.h5")
    assert summary.spatial == "downsample by 10 (x // 10) to 64x48" and rec.sensor_size == (64, 48)
    np.testing.assert_array_equal(rec.events["x"], events["x"] // 10)
    assert summary.events_written == 3000


def test_headerless_input_assumes_the_smallest_well_known_sensor_and_says_so(tmp_path: Path) -> None:
    events = make_events(500, 128, 128)
    events["x"][0], events["y"][0] = 127, 127  # the extent is the DVS128's exactly
    write_npy(tmp_path / "a.npy", events)
    for name, kwargs in (("b.npy", {"size": 32}), ("c.npy", {"transform": SpatialTransform(center_crop=True),
                                                              "size": 32})):
        summary = convert_file(tmp_path / "a.npy", tmp_path / name, chunk_bytes=1000, **kwargs)
        assert summary.warnings[0].startswith("the file records no sensor size; assumed 128x128 (DVS128")
        assert summary.spatial.endswith("; sensor 128x128 assumed (DVS128, the smallest well-known sensor "
                                        "holding every event)")
        np.testing.assert_array_equal(np.load(tmp_path / name)["y"], events["y"] // 4)
    given = convert_file(tmp_path / "a.npy", tmp_path / "d.h5", size=32, sensor_size=(256, 256))
    assert given.sensor_size == (32, 32) and given.warnings == [] and "assumed" not in given.spatial
    np.testing.assert_array_equal(read_events(tmp_path / "d.h5").events["y"], events["y"] // 8)


def test_events_beyond_every_well_known_sensor_ask_for_the_sensor_size(tmp_path: Path) -> None:
    events = make_events(50, 128, 128)
    events["x"][7] = 2000  # wider than any sensor in the list
    write_npy(tmp_path / "a.npy", events)
    with pytest.raises(EventformerError, match="x=2000, y=.*beyond every well-known npy sensor .*"
                                               "give the sensor size with --sensor-size WxH"):
        convert_file(tmp_path / "a.npy", tmp_path / "b.npy", size=32)
    assert listing(tmp_path) == ["a.npy"]  # nothing written, nothing left behind


def test_a_sensor_size_the_events_exceed_is_refused(tmp_path: Path) -> None:
    write_npy(tmp_path / "a.npy", make_events(500, 128, 128))
    with pytest.raises(EventformerError, match="outside the given 64x64 sensor size"):
        convert_file(tmp_path / "a.npy", tmp_path / "b.npy", size=32, sensor_size=(64, 64))
    assert listing(tmp_path) == ["a.npy"]


def test_an_empty_time_window_is_refused_and_nothing_written(tmp_path: Path) -> None:
    events = make_events(100, t_max=1000)
    events["t"] += 5000  # the recording spans [5000+, ...]
    write_npy(tmp_path / "a.npy", events)
    first, last = int(events["t"].min()), int(events["t"].max())
    for out, window, shown in (("b.npy", {"start": 0, "end": 100}, "[0, 100)"),
                               ("c.h5", {"start": last + 1}, f"[{last + 1}, inf)")):
        with pytest.raises(EventformerError) as caught:
            convert_file(tmp_path / "a.npy", tmp_path / out, chunk_bytes=500, **window)
        assert str(caught.value) == (f"{tmp_path / 'a.npy'}: no events in {shown} µs (the recording spans "
                                     f"[{first}, {last}] µs), so nothing was written")
        assert listing(tmp_path) == ["a.npy"]
    summary = convert_file(tmp_path / "a.npy", tmp_path / "d.npy", end=first + 1)
    assert summary.warnings == [] and summary.events_written >= 1


def test_a_crop_that_keeps_nothing_is_refused(tmp_path: Path) -> None:
    events = make_events(100, 64, 64)
    write_events_h5(tmp_path / "a.h5", events, 640, 480)
    with pytest.raises(EventformerError, match=r"the crop 40x80 at \(600,400\) keeps none of the 100 events, "
                                               "so nothing was written"):
        convert_file(tmp_path / "a.h5", tmp_path / "b.npy", transform=SpatialTransform(crop=(600, 400, 40, 80)))
    assert listing(tmp_path) == ["a.h5"]


def test_an_output_that_cannot_be_written_is_one_sentence_before_any_decoding(tmp_path: Path, monkeypatch) -> None:
    write_npy(tmp_path / "a.npy", make_events(10))
    decoded = []
    monkeypatch.setattr("eventformer.events.convert.EventStream.chunks",
                        lambda *a, **k: decoded.append(1) or iter(()))
    # a folder that exists but refuses new files even to root (/proc), or a read-only one
    target = Path("/proc/nope.npy")
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc")
    with pytest.raises(EventformerError, match=r"^/proc/nope.npy: cannot be written \(.+\)$"):
        convert_file(tmp_path / "a.npy", target)
    assert decoded == []


def test_empty_and_header_only_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty.bs2").write_bytes(b"")
    with pytest.raises(EventFileError, match="empty file: no header and no events"):
        convert_file(tmp_path / "empty.bs2", tmp_path / "out.npy")
    assert listing(tmp_path) == ["empty.bs2"]
    header_only = SHARED / "data" / "events" / "formats" / "aedat2_header_only.aedat"
    if header_only.exists():
        summary = convert_file(header_only, tmp_path / "out.h5")
        assert summary.events_written == 0 and summary.sensor_size == (346, 260)
        assert any(w.startswith("no events") for w in summary.warnings)
        assert read_events(tmp_path / "out.h5").sensor_size == (346, 260)


def test_option_errors_are_one_sentence(tmp_path: Path) -> None:
    write_npy(tmp_path / "a.npy", make_events(10))
    for kwargs, match in (({"start": 5, "end": 5}, r"--end \(5\) must be greater than --start \(5\)"),
                          ({"size": 0}, "--size must be a positive"),):
        with pytest.raises(EventformerError, match=match):
            convert_file(tmp_path / "a.npy", tmp_path / "b.npy", **kwargs)
    with pytest.raises(EventformerError, match="unknown output format '.csv'"):
        convert_file(tmp_path / "a.npy", tmp_path / "b.csv")


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


def convert(*args: object):
    return runner.invoke(app, ["convert", *map(str, args)])


def test_cli_crop_options(tmp_path: Path) -> None:
    events = make_events(2000)
    write_events_h5(tmp_path / "a.h5", events, 640, 480)
    r = convert(tmp_path / "a.h5", tmp_path / "b.h5", "--center-crop", "--size", 128)
    assert r.exit_code == 0, r.output
    expected = SpatialTransform(center_crop=True).plan((640, 480), 128).apply(events)
    assert r.stderr.strip().splitlines()[-1] == (
        f"converted {len(expected)} events (format h5 -> h5), center crop 480x480 at (80,0), "
        "scale x0.2667 (floor) to 128x128")
    np.testing.assert_array_equal(read_events(tmp_path / "b.h5").events, expected)
    r = convert(tmp_path / "a.h5", tmp_path / "c.npy", "--crop", "0,0,320,240")
    assert r.exit_code == 0, r.output
    assert "crop 320x240 at (0,0)" in r.stderr
    write_npy(tmp_path / "raw.npy", events)
    r = convert(tmp_path / "raw.npy", tmp_path / "d.npy", "--size", 64, "--sensor-size", "640x480")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy")["x"], events["x"] // 10)


@pytest.mark.parametrize("args, match", [
    (["--crop", "1,2,3"], "--crop must be four integers X,Y,W,H"),
    (["--crop", "0,0,4,4", "--center-crop"], "give either --crop or --center-crop, not both"),
    (["--crop", "600,0,100,100"], "the crop 100x100 at (600,0) reaches x=699, y=99, outside the 640x480 sensor"),
    (["--sensor-size", "12"], "--sensor-size must look like 128x128"),
])
def test_cli_bad_crop_options(tmp_path: Path, args: list[str], match: str) -> None:
    write_events_h5(tmp_path / "a.h5", make_events(10), 640, 480)
    assert match in one_error_line(convert(tmp_path / "a.h5", tmp_path / "b.npy", *args))
    assert listing(tmp_path) == ["a.h5"]


def test_cli_empty_window_is_one_error_line(tmp_path: Path) -> None:
    events = make_events(50, t_max=1000)
    write_npy(tmp_path / "a.npy", events)
    line = one_error_line(convert(tmp_path / "a.npy", tmp_path / "b.npy", "--start", 5000))
    assert line == (f"error: {tmp_path / 'a.npy'}: no events in [5000, inf) µs (the recording spans "
                    f"[{int(events['t'].min())}, {int(events['t'].max())}] µs), so nothing was written")
    assert listing(tmp_path) == ["a.npy"]


def test_cli_unwritable_output_is_one_error_line(tmp_path: Path) -> None:
    write_npy(tmp_path / "a.npy", make_events(10))
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc")
    assert one_error_line(convert(tmp_path / "a.npy", "/proc/nope.npy")).startswith(
        "error: /proc/nope.npy: cannot be written (")


def test_cli_empty_file_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "e.bs2").write_bytes(b"")
    line = one_error_line(convert(tmp_path / "e.bs2", tmp_path / "o.npy"))
    assert line == f"error: {tmp_path / 'e.bs2'}: empty file: no header and no events"
