"""Classify event recordings with a model file: the library side of ``eventformer infer``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import EventformerError
from .events import Recording, frame_events, read_events
from .events.framing import clip_events
from .events.sensors import assume_sensor, extent
from .events.transforms import SpatialTransform
from .modelfile.format import attention_operators
from .models import Spikformer
from .neurobench_metrics import watch as watch_neurobench
from .report import EnergyTable, layer_rows, summarize


@dataclass
class Classification:
    file: str
    events: int
    steps: int
    logits: np.ndarray
    prediction: int
    class_name: str
    layers: list[dict]
    ops: dict
    seconds: float
    duration_us: int
    warnings: list
    #: What was done to the focal plane (`SpatialPlan.describe`), e.g. "downsample by 4 ...".
    spatial: str = ""
    #: The model's attention operator (ssa, ds2ta, ssa_bin, saformer).
    attention: str = "ssa"
    #: The framed input steps the engine ran (``[(idx, cnt), ...]``), kept only when asked
    #: (``classify(..., keep_frames=True)``, for figures); not part of the JSON.
    frames: list | None = field(default=None, repr=False)
    #: The sensor's (width, height) as the framing took it (header or --sensor-size), if known.
    sensor_size: tuple | None = field(default=None, repr=False)
    #: NeuroBench's metrics of this sample (`eventformer.neurobench_metrics`).
    neurobench: dict | None = None

    def to_json(self) -> dict:
        return {"file": self.file, "events": self.events, "steps": self.steps,
                "prediction": self.prediction, "class_name": self.class_name,
                "logits": [float(x) for x in self.logits], "layers": self.layers,
                "ops": self.ops, "seconds": self.seconds, "spatial": self.spatial,
                "attention": self.attention,
                **({"neurobench": self.neurobench} if self.neurobench is not None else {})}


def downsample_factor(sensor: tuple[int, int] | None, size: int, name: str) -> int:
    """Integer factor that maps a ``sensor`` (width, height) onto a ``size`` x ``size`` input
    (the trainer's rule; inference maps any sensor through `SpatialTransform`).

    Coordinates are divided by it (x // f), which sums f x f pixels into one input site: how a
    128x128 DVS recording feeds a 32x32 or 64x64 model. A sensor no larger than the input is
    taken as it is (its events land in the top-left corner, as a zero-padded frame would).
    """
    if sensor is None or (sensor[0] <= size and sensor[1] <= size):
        return 1
    w, h = sensor
    if w % size or h % size or w // size != h // size:
        raise EventformerError(
            f"{name}: a {w}x{h} sensor does not map onto the model's {size}x{size} input by an "
            "integer downsampling factor (crop or convert the recording first)")
    return w // size


def downsample(events: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return events
    out = events.copy()
    out["x"] //= factor
    out["y"] //= factor
    return out


def spatial_plan(rec: Recording, model: Spikformer, sensor_size: tuple[int, int] | None = None,
                 transform: SpatialTransform | None = None, warnings: list[str] | None = None):
    """The `SpatialPlan` mapping ``rec`` onto the model's input: the sensor size is the file
    header's where the format records one, else ``sensor_size`` (``--sensor-size``).

    Where neither gives one and the mapping needs it (events beyond the model's input, or a
    centre crop), a well-known sensor holding every event is assumed
    (`eventformer.events.sensors.assume_sensor`): the sentence saying so goes to ``warnings``
    and the plan's description names it."""
    transform = transform or SpatialTransform()
    size = model.config.image_size
    sensor = rec.sensor_size or sensor_size
    assumed = None
    if sensor is None:
        max_x, max_y = extent(rec.events)
        if transform.needs_sensor(size, max_x, max_y):
            hint, source = rec.sensor_hint or (None, "")
            assumed = assume_sensor(rec.path, rec.format, max_x, max_y, hint, source)
            sensor = assumed.size
            if warnings is not None:
                warnings.append(f"{rec.path}: {assumed.sentence}")
    return transform.plan(sensor, size, name=rec.path, from_header=rec.sensor_size is not None,
                          assumption=assumed.phrase if assumed else "")


def frame_recording(rec: Recording, model: Spikformer, steps: int, split_by: str,
                    sensor_size: tuple[int, int] | None = None,
                    transform: SpatialTransform | None = None,
                    warnings: list[str] | None = None, plan=None):
    """Frame a recording into the model's input steps, cropping and resizing it on the way.

    The sensor size comes from the file's header where the format has one, else from
    ``sensor_size`` (``--sensor-size``); ``transform`` crops (`SpatialTransform`), and a region
    larger than the input is scaled onto it. Without a sensor size or crop, events must fit the
    model's input. Refused: no events left to classify, and ``split_by="number"`` with more
    steps than events (every event would land in the last step). With ``split_by="time"`` such
    a request runs, and a sentence saying how many steps are empty goes to ``warnings``.
    ``plan`` (from `spatial_plan`) may be given in place of ``sensor_size`` and ``transform``.
    """
    size = model.config.image_size
    if model.config.in_channels != 2:
        raise EventformerError(f"the model takes {model.config.in_channels} input channels; "
                               "event recordings give 2 (OFF, ON)")
    plan = plan or spatial_plan(rec, model, sensor_size, transform)
    clipped = clip_events(rec.events, model.config.clip_us)
    events = plan.apply(clipped)
    n = len(events)
    if n == 0:
        if not len(rec.events):
            why = "the recording holds none"
        elif len(clipped) and plan.region is not None:
            why = f"the {plan.describe_crop()} keeps none of its {len(clipped)} events"
        else:
            why = "none is left after clipping"
        raise EventformerError(f"{rec.path}: no events to classify ({why})")
    if split_by == "number" and steps > n:
        raise EventformerError(
            f"{rec.path}: {steps} steps for {n} events: split_by='number' would put all of "
            f"them into the last step; use at most {n} steps or split by time")
    if split_by == "time" and n > 1 and np.any(np.diff(events["t"]) < 0):
        events = events[np.argsort(events["t"], kind="stable")]
    try:
        frames = frame_events(events, steps, size, size, split_by=split_by)
    except ValueError as exc:
        hint = "" if plan.sensor_size or plan.region else \
            " (give --sensor-size WxH to downsample a larger sensor)"
        raise EventformerError(f"{rec.path}: {exc}{hint}") from None
    if steps > n and warnings is not None:
        empty = sum(1 for idx, _ in frames if not len(idx))
        warnings.append(f"{rec.path}: {empty} of the {steps} steps hold no events "
                        f"(only {n} events for {steps} steps)")
    return frames


def class_name(model: Spikformer, k: int) -> str:
    names = model.config.class_names
    return names[k].strip() if k < len(names) else str(k)


def classify(model: Spikformer, rec: Recording, *, steps: int | None = None,
             split_by: str | None = None, energy: EnergyTable | None = None,
             sensor_size: tuple[int, int] | None = None,
             transform: SpatialTransform | None = None,
             keep_frames: bool = False, neurobench: bool = False) -> Classification:
    """Frame ``rec`` (see `frame_recording`; ``transform`` crops) and run the model over it;
    ``keep_frames`` keeps the framed steps in the result (``frames``); ``neurobench`` adds
    NeuroBench's metrics of the sample (``result.neurobench``)."""
    steps = steps or model.config.steps
    split_by = split_by or model.config.split_by
    warnings = [f"{rec.path}: {w}" for w in rec.warnings]
    plan = spatial_plan(rec, model, sensor_size, transform, warnings=warnings)
    frames = frame_recording(rec, model, steps, split_by, warnings=warnings, plan=plan)
    # NeuroBench's tallies cost Python per layer and step, so they come from a second,
    # untimed pass over the same frames (the engine is deterministic: the same activity)
    # unless a recorder watches this run, which must see the sample once
    nb = watch_neurobench(model) if neurobench else None
    again = nb is not None and not nb.shares_neurons()
    if nb is not None and not again:
        nb.__enter__()
    if nb is not None:
        nb.clear()
    model.clear_stats()
    start = time.perf_counter()
    logits = model.run(frames)
    seconds = time.perf_counter() - start
    if again:
        model.clear_stats()  # the counters after the pass are the timed run's again
        with nb:
            model.run(frames)
    elif nb is not None:
        nb.__exit__(None, None, None)
    stats = model.layer_stats()
    k = int(np.argmax(logits))
    return Classification(
        file=rec.path, events=int(len(rec.events)), steps=steps, logits=logits, prediction=k,
        class_name=class_name(model, k), layers=layer_rows(stats, steps),
        ops=summarize(stats, steps, energy or EnergyTable.for_arithmetic(model.arithmetic)),
        seconds=seconds, duration_us=int(rec.duration_us),
        warnings=warnings, spatial=plan.describe(), attention=attention_operators(model.config),
        frames=frames if keep_frames else None, sensor_size=plan.sensor_size,
        neurobench=nb.sample(steps) if nb is not None else None)


def classify_file(model: Spikformer, path: str, **kw) -> Classification:
    """Read (format from the header bytes), frame and classify one recording; ``kw`` as
    `classify` (steps, split_by, energy, sensor_size, transform, keep_frames).

    Only the model's clip is read (``clip_us`` of its config, from the first event on; see
    `eventformer.events.readers.read_start`), so a recording of many GB costs the memory of one
    clip; a model without a clip length frames, and so reads, the whole recording."""
    return classify(model, read_events(path, until_us=model.config.clip_us), **kw)


def classify_files(model: Spikformer, paths, **kw):
    """Classify recordings one after another, yielding ``(path, Classification)`` for each good
    one and ``(path, EventformerError)`` for one that cannot be read or framed, so that one bad
    file in a batch costs only its own result; ``kw`` as `classify`."""
    for path in paths:
        try:
            yield str(path), classify_file(model, str(path), **kw)
        except EventformerError as exc:
            yield str(path), exc
