"""Spatial crop and resize (eventformer.events.transforms) and its use by inference and streaming:
integer factors bit for bit as the old ``x // f``, other factors equal to tonic's ``Downsample``,
centre crops equal to tonic's ``CenterCrop``, real Prophesee / DAVIS / DVXplorer recordings mapped
onto a square input, and sensor sizes that the events contradict refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED
from hypothesis import given, settings
from hypothesis import strategies as st

from eventformer.errors import EventformerError
from eventformer.events import EVENT_DTYPE, Recording, read_events
from eventformer.events.transforms import SpatialTransform, parse_crop
from eventformer.inference import downsample

FORMATS_DIR = SHARED / "data" / "events" / "formats"


def make_events(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.zeros(n, EVENT_DTYPE)
    events["t"] = np.sort(rng.integers(0, 1_000_000, n))
    events["x"], events["y"] = rng.integers(0, width, n), rng.integers(0, height, n)
    events["p"] = rng.integers(0, 2, n)
    # the four corners, so the extremes of every mapping are exercised
    events[:4]["x"] = [0, width - 1, 0, width - 1]
    events[:4]["y"] = [0, 0, height - 1, height - 1]
    return events


def one_sentence(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip()
    return text


# --------------------------------------------------------------------------------------------------
# parse_crop and option checks
# --------------------------------------------------------------------------------------------------


def test_parse_crop() -> None:
    assert parse_crop("80,0,480,480") == (80, 0, 480, 480)
    assert parse_crop(" 1, 2 ,3,4 ") == (1, 2, 3, 4)


@pytest.mark.parametrize("text, match", [
    ("1,2,3", "four integers X,Y,W,H"), ("1,2,3,4,5", "four integers"), ("a,b,c,d", "four integers"),
    ("1.5,0,4,4", "four integers"), ("", "four integers"), ("0,0,0,5", "positive width and height"),
    ("-1,0,5,5", "x, y >= 0"), ("0,0,40000,5", "largest coordinate"),
])
def test_parse_crop_refuses_bad_text_in_one_sentence(text: str, match: str) -> None:
    with pytest.raises(EventformerError, match=match) as info:
        parse_crop(text)
    assert "--crop" in one_sentence(info.value)


def test_crop_and_center_crop_exclude_each_other() -> None:
    with pytest.raises(EventformerError, match="either --crop or --center-crop"):
        SpatialTransform.from_options("0,0,4,4", True)
    with pytest.raises(EventformerError, match="either --crop or --center-crop"):
        SpatialTransform(crop=(0, 0, 4, 4), center_crop=True)
    assert SpatialTransform.from_options(None, False) == SpatialTransform()
    assert SpatialTransform.from_options("1,2,3,4").crop == (1, 2, 3, 4)


# --------------------------------------------------------------------------------------------------
# Plans: what each sensor becomes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sensor, size, center, description", [
    ((640, 480), 128, True, "center crop 480x480 at (80,0), scale x0.2667 (floor) to 128x128"),
    ((1280, 720), 128, True, "center crop 720x720 at (280,0), scale x0.1778 (floor) to 128x128"),
    ((346, 260), 128, True, "center crop 260x260 at (43,0), scale x0.4923 (floor) to 128x128"),
    ((240, 180), 128, True, "center crop 180x180 at (30,0), scale x0.7111 (floor) to 128x128"),
    ((640, 480), 128, False, "downsample by 5 (x // 5) to 128x96"),
    ((346, 260), 128, False, "scale x0.3699 (floor) to 128x96"),
    ((128, 128), 32, False, "downsample by 4 (x // 4) to 32x32"),
    ((256, 128), 128, False, "downsample by 2 (x // 2) to 128x64"),
    ((34, 34), 128, False, "events as they are (34x34 sensor on the 128x128 input)"),
    ((128, 128), 128, True, "center crop 128x128 at (0,0)"),
    (None, 128, False, "events as they are (sensor size unknown)"),
])
def test_plans_and_their_descriptions(sensor, size, center, description) -> None:
    plan = SpatialTransform(center_crop=center).plan(sensor, size)
    assert plan.describe() == description
    if sensor is not None:
        events = make_events(5000, *sensor)
        mapped = plan.apply(events)
        width, height = plan.output_size
        assert width <= size and height <= size
        assert mapped["x"].max() == width - 1 and mapped["y"].max() == height - 1  # the corners reach the edge
        assert mapped["x"].min() >= 0 and mapped["y"].min() >= 0
        np.testing.assert_array_equal(mapped["t"], events["t"][_inside(events, plan.region)])
        np.testing.assert_array_equal(mapped["p"], events["p"][_inside(events, plan.region)])


def _inside(events: np.ndarray, region) -> np.ndarray:
    if region is None:
        return np.ones(len(events), bool)
    x, y, w, h = region
    return (events["x"] >= x) & (events["x"] < x + w) & (events["y"] >= y) & (events["y"] < y + h)


def test_exact_integer_factor_is_the_old_floor_division_bit_for_bit() -> None:
    for sensor, size in (((128, 128), 32), ((128, 128), 64), ((640, 480), 128), ((1280, 720), 128),
                         ((384, 384), 128)):
        events = make_events(20_000, *sensor, seed=sum(sensor))
        plan = SpatialTransform().plan(sensor, size)
        assert plan.divisor == max(sensor) // size and plan.scale is None
        np.testing.assert_array_equal(plan.apply(events), downsample(events, plan.divisor))


@pytest.mark.parametrize("sensor, size", [((346, 260), 128), ((240, 180), 128), ((640, 480), 100),
                                          ((1280, 720), 96), ((304, 240), 64), ((200, 200), 3)])
def test_non_integer_factor_equals_tonic_downsample(sensor, size) -> None:
    tonic_transforms = pytest.importorskip("tonic.transforms")
    events = make_events(50_000, *sensor, seed=size)
    plan = SpatialTransform().plan(sensor, size)
    assert plan.divisor == 1 and plan.scale == size / max(sensor)
    reference = tonic_transforms.Downsample(spatial_factor=size / max(sensor))(events)
    np.testing.assert_array_equal(plan.apply(events), reference)
    if sensor[0] == sensor[1]:  # tonic's target_size form gives the same factor on a square sensor
        reference = tonic_transforms.Downsample(sensor_size=(*sensor, 2), target_size=(size, size))(events)
        np.testing.assert_array_equal(plan.apply(events), reference)


@pytest.mark.parametrize("sensor", [(640, 480), (1280, 720), (346, 260), (240, 180), (321, 240), (128, 128)])
def test_center_crop_equals_tonic_center_crop(sensor) -> None:
    tonic_transforms = pytest.importorskip("tonic.transforms")
    events = make_events(20_000, *sensor)
    plan = SpatialTransform(center_crop=True).plan(sensor, None)  # crop only
    side = min(sensor)
    reference = tonic_transforms.CenterCrop(sensor_size=(*sensor, 2), size=side)(events)
    np.testing.assert_array_equal(plan.apply(events), reference)
    assert plan.output_size == (side, side)


def test_explicit_crop_drops_outside_events_and_shifts_the_rest() -> None:
    events = np.array([(1, 9, 5, 1), (2, 10, 5, 0), (3, 19, 24, 1), (4, 20, 5, 1), (5, 15, 25, 0), (6, 12, 4, 1)],
                      dtype=EVENT_DTYPE)
    plan = SpatialTransform(crop=(10, 5, 10, 20)).plan((64, 64), 128)
    out = plan.apply(events)
    assert out.tolist() == [(2, 0, 0, 0), (3, 9, 19, 1)]
    assert plan.output_size == (10, 20) and plan.describe() == "crop 10x20 at (10,5)"
    assert (plan.events_in, plan.events_kept) == (6, 2)
    assert events[1].tolist() == (2, 10, 5, 0)  # the input is never modified
    # a crop then scaled: 200x100 onto 50 -> x // 4
    plan = SpatialTransform(crop=(100, 0, 200, 100)).plan(None, 50)  # no sensor size needed
    assert plan.describe() == "crop 200x100 at (100,0), downsample by 4 (x // 4) to 50x25"
    events = make_events(1000, 400, 100)
    expected = events[_inside(events, (100, 0, 200, 100))].copy()
    expected["x"] = (expected["x"] - 100) // 4
    expected["y"] //= 4
    np.testing.assert_array_equal(plan.apply(events), expected)


def test_crop_outside_the_sensor_is_an_error() -> None:
    with pytest.raises(EventformerError, match=r"cam\.raw: the crop 600x600 at \(0,0\) reaches x=599, y=599, "
                                               r"outside the 640x480 sensor") as info:
        SpatialTransform(crop=(0, 0, 600, 600)).plan((640, 480), 128, name="cam.raw")
    one_sentence(info.value)
    SpatialTransform(crop=(0, 0, 640, 480)).plan((640, 480), 128)  # the whole sensor is fine


def test_center_crop_needs_a_sensor_size() -> None:
    with pytest.raises(EventformerError, match="rec.bs2: --center-crop needs the sensor size.*--sensor-size"):
        SpatialTransform(center_crop=True).plan(None, 128, name="rec.bs2")


def test_events_beyond_a_given_sensor_size_are_refused_not_ignored() -> None:
    """--sensor-size 64x64 on a 128x128 recording used to pass silently into a 128x128 model."""
    events = make_events(1000, 128, 128)
    outside = int(np.count_nonzero((events["x"] >= 64) | (events["y"] >= 64)))
    for size in (128, 32):  # taken as it is, or downsampled: either way the size is wrong
        plan = SpatialTransform().plan((64, 64), size, name="rec.bs2")
        with pytest.raises(EventformerError) as info:
            plan.apply(events)
        assert one_sentence(info.value) == (
            f"rec.bs2: {outside} event(s) lie outside the given 64x64 sensor size (the largest x is 127, "
            "y 127); give the recording's real sensor size")
    with pytest.raises(EventformerError, match="outside the given 64x64"):
        SpatialTransform(center_crop=True).plan((64, 64), 32).apply(events)  # the centre would be wrong
    plan = SpatialTransform().plan((128, 128), 128)
    assert plan.apply(events) is events  # the right size: nothing to do


def test_events_beyond_the_header_sensor_point_to_a_crop() -> None:
    events = make_events(100, 128, 128)
    with pytest.raises(EventformerError, match="outside the 100x128 sensor named in the file's header.*--crop"):
        SpatialTransform().plan((100, 128), 32, from_header=True).apply(events)
    kept = SpatialTransform(crop=(0, 0, 100, 128)).plan((100, 128), 32, from_header=True).apply(events)
    assert len(kept) == int(np.count_nonzero(events["x"] < 100))  # an explicit crop drops them


@settings(max_examples=60, deadline=None)
@given(sensor=st.tuples(st.integers(1, 700), st.integers(1, 700)), size=st.integers(1, 200),
       center=st.booleans(), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_plans_map_inside_their_output_and_do_not_depend_on_chunking(sensor, size, center, cuts) -> None:
    events = make_events(300, *sensor)
    plan = SpatialTransform(center_crop=center).plan(sensor, size)
    whole = plan.apply(events)
    width, height = plan.output_size
    assert max(width, height) == min(max(plan.region[2:] if plan.region else sensor), size)
    assert np.all(whole["x"] < width) and np.all(whole["y"] < height)
    pieces = np.split(events, sorted(set(cuts)))
    again = SpatialTransform(center_crop=center).plan(sensor, size)
    np.testing.assert_array_equal(np.concatenate([again.apply(p) for p in pieces]), whole)
    assert (again.events_in, again.events_kept) == (len(events), len(whole))


# --------------------------------------------------------------------------------------------------
# Real recordings onto a 128x128 input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, given, crop_at", [
    ("evt2_sample.raw", (640, 480), (80, 0, 480)),     # Prophesee VGA: no size in its header
    ("evt3_sample.raw", (1280, 720), (280, 0, 720)),   # Prophesee HD
    ("davis240c_imu.aedat", None, (30, 0, 180)),       # DAVIS240C, size from the header
    ("dvxplorer.aedat4", None, (40, 0, 240)),          # DVXplorer (the sample is 320x240)
])
def test_real_recordings_center_cropped_onto_128(name, given, crop_at) -> None:
    path = FORMATS_DIR / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not here)")
    if name.endswith(".aedat4"):
        from eventformer.events.formats import aedat4_available

        if not aedat4_available():
            pytest.skip("the optional aedat package is not installed")
    rec = read_events(path)
    sensor = rec.sensor_size or given
    plan = SpatialTransform(center_crop=True).plan(sensor, 128, name=str(path),
                                                   from_header=rec.sensor_size is not None)
    x0, y0, side = crop_at
    assert plan.region == (x0, y0, side, side) and plan.output_size == (128, 128)
    out = plan.apply(rec.events)
    inside = _inside(rec.events, plan.region)
    assert len(out) == int(inside.sum()) > 0
    assert out["x"].max() < 128 and out["y"].max() < 128
    np.testing.assert_array_equal(out["t"], rec.events["t"][inside])
    # without a crop the whole sensor fits, letterboxed
    whole = SpatialTransform().plan(sensor, 128).apply(rec.events)
    assert len(whole) == len(rec.events) and whole["x"].max() < 128 and whole["y"].max() < 128


# --------------------------------------------------------------------------------------------------
# Inference and streaming use the plan
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engine():
    from eventformer.bench.calibrate import random_model
    from eventformer.models import Spikformer, SpikformerConfig

    cfg = SpikformerConfig(image_size=32, sps_channels=(8, 16), sps_pool=(True, True), dim=16, heads=2,
                           depth=1, mlp_hidden=32, num_classes=4)
    return Spikformer(random_model(cfg), dtype="float64")


def test_classify_with_a_center_crop_equals_classifying_the_cropped_events(tiny_engine) -> None:
    from eventformer.inference import classify

    events = make_events(4000, 346, 260)
    rec = Recording(path="cam.raw", format="evt2", events=events, sensor_size=None)
    transform = SpatialTransform.from_options(center_crop=True)
    result = classify(tiny_engine, rec, steps=4, sensor_size=(346, 260), transform=transform)
    assert result.spatial == "center crop 260x260 at (43,0), scale x0.1231 (floor) to 32x32"
    assert result.to_json()["spatial"] == result.spatial
    assert result.events == 4000
    mapped = transform.plan((346, 260), 32).apply(events)
    by_hand = classify(tiny_engine, Recording(path="m.npy", format="npy", events=mapped), steps=4)
    np.testing.assert_array_equal(result.logits, by_hand.logits)
    assert by_hand.spatial == "events as they are (sensor size unknown)"


def test_classify_refuses_a_sensor_size_the_events_exceed(tiny_engine) -> None:
    from eventformer.inference import classify

    rec = Recording(path="rec.bs2", format="bs2", events=make_events(500, 128, 128))
    with pytest.raises(EventformerError, match="outside the given 64x64 sensor size"):
        classify(tiny_engine, rec, steps=4, sensor_size=(64, 64))
    header = Recording(path="rec.aedat", format="aedat3", events=make_events(500, 128, 128), sensor_size=(64, 64))
    with pytest.raises(EventformerError, match="sensor named in the file's header"):
        classify(tiny_engine, header, steps=4)
    # a non-integer sensor no longer needs an integer factor: 100x128 onto 32 is x // 4
    ok = Recording(path="rec.bs2", format="bs2", events=make_events(500, 100, 128))
    assert classify(tiny_engine, ok, steps=4, sensor_size=(100, 128)).spatial == "downsample by 4 (x // 4) to 25x32"


def test_more_steps_than_events(tiny_engine) -> None:
    """split_by='number' with more steps than events puts every event into the last step: refused;
    split_by='time' runs with empty steps, and says how many."""
    from eventformer.inference import classify

    rec = Recording(path="few.npy", format="npy", events=make_events(10, 32, 32))
    with pytest.raises(EventformerError) as info:
        classify(tiny_engine, rec, steps=16, split_by="number")
    assert one_sentence(info.value) == ("few.npy: 16 steps for 10 events: split_by='number' would put all of "
                                        "them into the last step; use at most 10 steps or split by time")
    assert classify(tiny_engine, rec, steps=10, split_by="number").steps == 10  # as many steps as events: fine
    result = classify(tiny_engine, rec, steps=16, split_by="time")
    empty = [w for w in result.warnings if "steps hold no events" in w]
    assert len(empty) == 1 and empty[0].startswith("few.npy: ") and "(only 10 events for 16 steps)" in empty[0]
    count = int(empty[0].split(": ")[1].split(" of ")[0])
    assert 6 <= count < 16
    assert not classify(tiny_engine, rec, steps=4, split_by="time").warnings


def test_no_events_to_classify_is_refused(tiny_engine) -> None:
    from eventformer.inference import classify

    empty = Recording(path="none.aedat", format="aedat2", events=np.zeros(0, EVENT_DTYPE), sensor_size=(32, 32))
    with pytest.raises(EventformerError, match=r"none.aedat: no events to classify \(the recording holds none\)"):
        classify(tiny_engine, empty, steps=4)
    corner = Recording(path="c.npy", format="npy", events=make_events(50, 10, 10))
    with pytest.raises(EventformerError, match=r"no events to classify \(the crop 5x5 at \(20,20\) keeps none of its 50"):
        classify(tiny_engine, corner, steps=4, transform=SpatialTransform(crop=(20, 20, 5, 5)))


class _Source:
    """A finished recording handed out in pieces, with a sensor size like a file header's."""

    def __init__(self, events, sensor_size):
        self.events, self.sensor_size, self.path, self.pos = events, sensor_size, "cam.raw", 0

    def read(self):
        out = self.events[self.pos:self.pos + 700]
        self.pos += 700
        return out

    @property
    def exhausted(self):
        return self.pos >= len(self.events)


def test_run_stream_applies_the_transform(tiny_engine) -> None:
    from eventformer.events import frame_events
    from eventformer.stream import WindowSpec, run_stream

    events = make_events(3000, 640, 480)
    transform = SpatialTransform(center_crop=True)
    records = []
    summary = run_stream(tiny_engine, _Source(events, (640, 480)), WindowSpec(window_events=1000),
                         on_window=records.append, transform=transform)
    mapped = [transform.plan((640, 480), 32).apply(events[k:k + 1000]) for k in range(0, 3000, 1000)]
    assert [r["events"] for r in records] == [len(m) for m in mapped]
    tiny_engine.reset()
    for chunk in mapped:
        (idx, cnt), = frame_events(chunk, 1, 32, 32)
        tiny_engine.step(idx, cnt)
    np.testing.assert_array_equal(tiny_engine.logits(), records[-1]["logits"])
    assert summary["windows"] == 3
    # a header size the events exceed stops the stream with one sentence
    with pytest.raises(EventformerError, match="cam.raw: .* outside the 320x240 sensor named in the file's header"):
        run_stream(tiny_engine, _Source(events, (320, 240)), WindowSpec(window_events=1000))


# --------------------------------------------------------------------------------------------------
# Files without a sensor size: a well-known sensor is assumed, and said
# --------------------------------------------------------------------------------------------------


def test_the_smallest_well_known_sensor_holding_every_event_is_assumed() -> None:
    from eventformer.events.sensors import assume_sensor

    assert assume_sensor("a.bs2", "bs2", 127, 127).size == (128, 128)
    assert assume_sensor("a.bs2", "bs2", 33, 33).size == (34, 34)
    assert assume_sensor("a.bs2", "bs2", 128, 0).size == (304, 240)  # one pixel beyond the DVS128
    assert assume_sensor("a.raw", "evt2", 599, 475).size == (640, 480)
    assert assume_sensor("a.raw", "evt3", 1279, 719).size == (1280, 720)
    assert assume_sensor("a.npy", "npy", 345, 259).size == (346, 260)
    said = assume_sensor("a.bs2", "bs2", 127, 100)
    assert said.sentence == ("the file records no sensor size; assumed 128x128 (DVS128, the smallest well-known "
                             "sensor holding every event: x up to 127, y up to 100); give --sensor-size WxH if "
                             "that is wrong")
    for fmt, x, y in (("bs2", 400, 0), ("evt3", 1280, 0), ("npy", 0, 720)):
        with pytest.raises(EventformerError, match=f"reach x={x}, y={y}, beyond every well-known {fmt} sensor"):
            assume_sensor("a", fmt, x, y)


def test_a_header_hint_wins_only_while_it_holds_every_event() -> None:
    from eventformer.events.sensors import assume_sensor, plugin_sensor

    imx = plugin_sensor("hal_plugin_gen41_evk3")
    assert assume_sensor("a.raw", "evt3", 10, 10, imx, "plugin").size == (1280, 720)  # not the smallest
    assert "by plugin" in assume_sensor("a.raw", "evt3", 10, 10, imx, "plugin").sentence
    vga = plugin_sensor("hal_plugin_gen3_fx3")
    assert assume_sensor("a.raw", "evt2", 1000, 10, vga, "plugin").size == (1280, 720)  # the hint cannot be


def test_classify_assumes_the_dvs128_for_a_bs2_recording_and_says_so(tiny_engine) -> None:
    from eventformer.inference import classify

    events = make_events(3000, 128, 128)
    assumed = classify(tiny_engine, Recording(path="g.bs2", format="bs2", events=events), steps=4)
    given = classify(tiny_engine, Recording(path="g.bs2", format="bs2", events=events), steps=4,
                     sensor_size=(128, 128))
    np.testing.assert_array_equal(assumed.logits, given.logits)
    assert given.spatial == "downsample by 4 (x // 4) to 32x32"
    assert assumed.spatial == ("downsample by 4 (x // 4) to 32x32; sensor 128x128 assumed (DVS128, the smallest "
                               "well-known sensor holding every event)")
    assert assumed.to_json()["spatial"] == assumed.spatial
    assert assumed.warnings == ["g.bs2: the file records no sensor size; assumed 128x128 (DVS128, the smallest "
                                "well-known sensor holding every event: x up to 127, y up to 127); give "
                                "--sensor-size WxH if that is wrong"]
    assert given.warnings == []


def test_nothing_is_assumed_where_the_events_fit_the_input_or_a_crop_names_the_region(tiny_engine) -> None:
    from eventformer.inference import classify

    small = classify(tiny_engine, Recording(path="s.npy", format="npy", events=make_events(500, 32, 32)), steps=4)
    assert small.spatial == "events as they are (sensor size unknown)" and small.warnings == []
    cropped = classify(tiny_engine, Recording(path="c.bs2", format="bs2", events=make_events(500, 128, 128)),
                       steps=4, transform=SpatialTransform(crop=(0, 0, 64, 64)))
    assert "assumed" not in cropped.spatial and cropped.warnings == []
    centred = classify(tiny_engine, Recording(path="c.npy", format="npy", events=make_events(500, 346, 200)),
                       steps=4, transform=SpatialTransform(center_crop=True))  # the centre of a DAVIS346
    assert centred.spatial.startswith("center crop 260x260 at (43,0)") and "sensor 346x260 assumed" in centred.spatial


def test_events_beyond_every_well_known_sensor_ask_for_a_sensor_size(tiny_engine) -> None:
    from eventformer.inference import classify

    events = make_events(500, 128, 128)
    events["x"][9] = 3000
    with pytest.raises(EventformerError, match="give the sensor size with --sensor-size WxH"):
        classify(tiny_engine, Recording(path="w.bs2", format="bs2", events=events), steps=4)


@pytest.mark.parametrize("sensor", [(1 << 20, 1 << 20), (32769, 128), (128, 40000)])
def test_an_implausible_sensor_size_is_one_sentence(sensor) -> None:
    with pytest.raises(EventformerError, match=f"a {sensor[0]}x{sensor[1]} sensor is implausible"):
        SpatialTransform().plan(sensor, 32, name="x.bs2")
    plan = SpatialTransform(center_crop=True).plan((32768, 32768), 32, name="x.bs2")
    assert plan.describe() == "center crop 32768x32768 at (0,0), downsample by 1024 (x // 1024) to 32x32"
    events = make_events(100, 32768, 32768)
    assert int(plan.apply(events)["x"].max()) == 31
