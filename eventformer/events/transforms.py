"""Spatial crop and resize: events of any sensor onto a model's square ``S x S`` input.

A `SpatialTransform` is what the user asked for (``--crop X,Y,W,H``, ``--center-crop``, or
nothing); `SpatialTransform.plan` turns it, once the sensor size is known (from the file's header
or ``--sensor-size``), into a `SpatialPlan` that maps events chunk by chunk (``apply``) and says
in words what it does (``describe``)::

    transform = SpatialTransform.from_options(crop="80,0,480,480")   # or center_crop=True
    plan = transform.plan((640, 480), 128, name="cam.raw")
    plan.describe()   # 'crop 480x480 at (80,0), scale x0.2667 (floor) to 128x128'
    events = plan.apply(events)

The rules, in order:

1. **Crop.** ``crop=(x, y, w, h)`` keeps the events with ``x <= ex < x + w`` and
   ``y <= ey < y + h`` and shifts them to the crop's origin; ``center_crop`` is the centred square
   of side ``min(width, height)`` of the sensor (offsets floored, as tonic's ``CenterCrop``).
   Events outside the crop are dropped: that is what a crop is for. A crop that does not lie
   inside a known sensor is an error.
2. **Map the region onto S x S**, one factor for both axes (the aspect ratio is kept; a
   non-square region fills the top-left of the input, as a zero-padded frame would). With
   ``M = max(w, h)`` of the region: ``M <= S`` takes the events as they are; ``M`` a multiple of
   ``S`` divides coordinates by ``f = M // S`` (``x // f``: f x f pixels sum into one input site,
   bit for bit what `eventformer.inference.downsample` has always done); otherwise coordinates are
   scaled as tonic's ``Downsample(spatial_factor=S / M)`` does it, ``floor(x * (S / M))`` in
   float64 (tests check equality with tonic).
3. **The sensor size must hold the events.** Without an explicit crop the sensor size decides
   the mapping (the factor, the centre), so events beyond it mean the size is wrong: an error
   naming how many and how far, never a silent use of a wrong size.

Without a sensor size and without a crop nothing is changed (the events must then fit the input,
which framing checks). ``size=None`` (``eventformer convert`` without ``--size``) crops only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from eventformer.errors import EventformerError
from eventformer.events.sensors import check_sensor_size

__all__ = ["Crop", "SpatialPlan", "SpatialTransform", "parse_crop"]

#: A crop rectangle: x, y of its top-left corner, then width, height (pixels).
Crop = tuple[int, int, int, int]

_COORD_MAX = np.iinfo(np.int16).max


def parse_crop(text: str, option: str = "--crop") -> Crop:
    """``"X,Y,W,H"`` (four integers, W and H positive, X and Y not negative) as a `Crop`; one
    `EventformerError` sentence for anything else."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        if len(parts) != 4:
            raise ValueError
        x, y, w, h = (int(part) for part in parts)
    except ValueError:
        raise EventformerError(f"{option} must be four integers X,Y,W,H (the crop's left, top, width "
                               f"and height in sensor pixels, e.g. 80,0,480,480), got {text!r}") from None
    _check_crop((x, y, w, h), option)
    return x, y, w, h


def _check_crop(crop: Crop, option: str = "the crop") -> None:
    x, y, w, h = crop
    if w <= 0 or h <= 0:
        raise EventformerError(f"{option} must have a positive width and height, got {w}x{h}")
    if x < 0 or y < 0:
        raise EventformerError(f"{option} must start at x, y >= 0, got ({x},{y})")
    if x + w - 1 > _COORD_MAX or y + h - 1 > _COORD_MAX:
        raise EventformerError(f"{option} {w}x{h} at ({x},{y}) reaches beyond the largest coordinate "
                               f"an event can have ({_COORD_MAX})")


@dataclass(frozen=True)
class SpatialTransform:
    """What to do to the focal plane before framing: an explicit ``crop`` (x, y, w, h), the
    ``center_crop`` square, or neither (the whole sensor); then always the mapping onto the
    model's input (see the module docstring). Immutable; `plan` it for each recording."""

    crop: Crop | None = None
    center_crop: bool = False

    def __post_init__(self) -> None:
        if self.crop is not None:
            if self.center_crop:
                raise EventformerError("give either --crop or --center-crop, not both")
            crop = tuple(int(v) for v in self.crop)
            if len(crop) != 4:
                raise EventformerError(f"a crop is four integers x, y, width, height, got {self.crop!r}")
            _check_crop(crop)  # type: ignore[arg-type]
            object.__setattr__(self, "crop", crop)

    @classmethod
    def from_options(cls, crop: str | None = None, center_crop: bool = False) -> SpatialTransform:
        """From command line text: ``crop`` as ``"X,Y,W,H"`` (or None), ``center_crop`` a flag."""
        if crop is not None and center_crop:
            raise EventformerError("give either --crop or --center-crop, not both")
        return cls(crop=parse_crop(crop) if crop is not None else None, center_crop=center_crop)

    @property
    def crops(self) -> bool:
        return self.crop is not None or self.center_crop

    def needs_sensor(self, size: int | None, max_x: int, max_y: int) -> bool:
        """Whether mapping events reaching ``max_x``, ``max_y`` onto ``size`` needs the sensor
        size: for a centre crop, and without a crop for events beyond the input (an explicit crop
        names its region itself)."""
        if self.center_crop:
            return True
        return self.crop is None and size is not None and (max_x >= size or max_y >= size)

    def plan(self, sensor_size: tuple[int, int] | None, size: int | None, *, name: str = "events",
             from_header: bool = False, assumption: str = "") -> SpatialPlan:
        """The mapping for one recording.

        ``sensor_size`` is (width, height) from the header or the user, or None when unknown;
        ``size`` the model's input side S (None: crop only, no scaling); ``name`` (the file) opens
        every error sentence; ``from_header`` says where the sensor size came from, for the advice
        an error gives; ``assumption`` (words) says that the size was assumed, and why (see
        `eventformer.events.sensors.assume_sensor`), for `SpatialPlan.describe`.
        """
        if sensor_size is not None:
            sensor_size = check_sensor_size(sensor_size, f"{name}: the sensor size")
        if size is not None and int(size) <= 0:
            raise EventformerError(f"{name}: the input size must be positive, got {size}")
        region: Crop | None = None
        if self.center_crop:
            if sensor_size is None:
                raise EventformerError(f"{name}: --center-crop needs the sensor size, which the file does not "
                                       "record; give it with --sensor-size WxH")
            side = min(sensor_size)
            region = ((sensor_size[0] - side) // 2, (sensor_size[1] - side) // 2, side, side)
        elif self.crop is not None:
            region = self.crop
            if sensor_size is not None:
                x, y, w, h = region
                if x + w > sensor_size[0] or y + h > sensor_size[1]:
                    raise EventformerError(
                        f"{name}: the crop {w}x{h} at ({x},{y}) reaches x={x + w - 1}, y={y + h - 1}, outside "
                        f"the {sensor_size[0]}x{sensor_size[1]} sensor")
        area = (region[2], region[3]) if region is not None else sensor_size
        divisor, scale, output = 1, None, area
        if size is not None and area is not None and max(area) > size:
            longest = max(area)
            if longest % size == 0:
                divisor = longest // size
                output = (-(-area[0] // divisor), -(-area[1] // divisor))
            else:
                scale = size / longest
                output = (math.floor((area[0] - 1) * scale) + 1, math.floor((area[1] - 1) * scale) + 1)
        return SpatialPlan(name=name, sensor_size=sensor_size, from_header=from_header, region=region,
                           centered=self.center_crop, divisor=divisor, scale=scale, output_size=output,
                           size=None if size is None else int(size), assumption=assumption)


@dataclass
class SpatialPlan:
    """One recording's mapping, made by `SpatialTransform.plan`: apply it to every chunk of events.

    ``region`` is the crop (x, y, w, h) or None (the whole sensor); ``divisor`` > 1 means integer
    downsampling (``x // divisor``), ``scale`` not None means ``floor(x * scale)``; ``output_size``
    is the (width, height) the events occupy afterwards (None when nothing is known about it).
    ``events_in`` and ``events_kept`` count what ``apply`` has seen and kept so far.
    """

    name: str
    sensor_size: tuple[int, int] | None
    from_header: bool
    region: Crop | None
    centered: bool
    divisor: int
    scale: float | None
    output_size: tuple[int, int] | None
    size: int | None
    #: Words saying the sensor size was assumed (the file records none), '' when it was given.
    assumption: str = ""
    events_in: int = field(default=0)
    events_kept: int = field(default=0)

    @property
    def identity(self) -> bool:
        """True when ``apply`` returns events unchanged (no crop, no scaling)."""
        return self.region is None and self.divisor == 1 and self.scale is None

    def apply(self, events: np.ndarray) -> np.ndarray:
        """The events mapped by this plan (a new array unless the plan is the identity; the input
        is never modified). Raises `EventformerError` for events outside the sensor size the
        mapping depends on (see the module docstring, rule 3)."""
        self.events_in += len(events)
        if self.region is None or self.centered:
            self._check_inside_sensor(events)
        if self.region is not None:
            x0, y0, w, h = self.region
            x, y = events["x"], events["y"]
            keep = (x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h)
            events = events[keep]  # a copy
            events["x"] -= x0
            events["y"] -= y0
        if self.divisor > 1:
            events = events.copy() if self.region is None else events
            events["x"] //= self.divisor
            events["y"] //= self.divisor
        elif self.scale is not None:
            events = events.copy() if self.region is None else events
            # tonic's Downsample: float64 product, truncated on assignment (= floor, x >= 0)
            events["x"] = np.floor(events["x"] * self.scale)
            events["y"] = np.floor(events["y"] * self.scale)
        self.events_kept += len(events)
        return events

    def _check_inside_sensor(self, events: np.ndarray) -> None:
        if self.sensor_size is None or not len(events):
            return
        width, height = self.sensor_size
        x, y = events["x"], events["y"]
        outside = (x >= width) | (y >= height)
        if not outside.any():
            return
        count = int(np.count_nonzero(outside))
        where = f"the largest x is {int(x.max())}, y {int(y.max())}"
        if self.from_header:
            raise EventformerError(
                f"{self.name}: {count} event(s) lie outside the {width}x{height} sensor named in the file's "
                f"header ({where}); keep a region of the sensor with --crop X,Y,W,H")
        raise EventformerError(
            f"{self.name}: {count} event(s) lie outside the given {width}x{height} sensor size ({where}); "
            "give the recording's real sensor size")

    def describe_crop(self) -> str:
        """The crop alone in words, e.g. 'crop 10x20 at (10,5)'; '' without one."""
        if self.region is None:
            return ""
        x, y, w, h = self.region
        return f"{'center crop' if self.centered else 'crop'} {w}x{h} at ({x},{y})"

    def describe(self) -> str:
        """What the plan does, in words, e.g. 'center crop 480x480 at (80,0), scale x0.2667
        (floor) to 128x128', followed by the sensor size assumed, if it was."""
        done = self._describe_mapping()
        return f"{done}; {self.assumption}" if self.assumption else done

    def _describe_mapping(self) -> str:
        parts = [self.describe_crop()] if self.region is not None else []
        out = self.output_size
        shown = f"{out[0]}x{out[1]}" if out is not None else "?"
        if self.divisor > 1:
            parts.append(f"downsample by {self.divisor} (x // {self.divisor}) to {shown}")
        elif self.scale is not None:
            parts.append(f"scale x{self.scale:.4f} (floor) to {shown}")
        if parts:
            return ", ".join(parts)
        if self.sensor_size is None:
            return "events as they are (sensor size unknown)"
        size = f" on the {self.size}x{self.size} input" if self.size is not None else ""
        return f"events as they are ({self.sensor_size[0]}x{self.sensor_size[1]} sensor{size})"
