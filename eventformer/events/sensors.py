"""Sensor sizes: which sizes are plausible at all, and which well-known sensor to assume for a
recording whose file records none.

Headerless formats (bs2 / N-MNIST ``.bin``, ``.npy``, ``.npz``) and Prophesee ``.raw`` files
written without a ``% geometry`` line do not say how large the sensor was, yet mapping a recording
onto a model's input (the downsampling factor, the centre of a crop) depends on it. Rather than
refuse the commonest recordings, `assume_sensor` picks a size and says so in a sentence:

1. the sensor a header names indirectly (a Prophesee ``% plugin_name hal_plugin_gen3_fx3`` says
   Gen3 VGA), when every event lies on it;
2. otherwise the smallest well-known sensor of the format's cameras that holds every event (a
   DVS Gesture ``.bs2`` with x, y up to 127 is the DVS128's 128x128).

The largest coordinate seen is only a lower bound on a sensor, so this is an assumption, said
wherever the result is shown; events beyond every candidate are never folded in or dropped: that
is an error asking for ``--sensor-size``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from eventformer.errors import EventformerError

__all__ = ["MAX_SENSOR_SIDE", "KnownSensor", "WELL_KNOWN_SENSORS", "Assumption", "assume_sensor",
           "check_sensor_size", "extent", "plugin_sensor"]

#: Event coordinates are int16 (`eventformer.events.readers.EVENT_DTYPE`), so no sensor side
#: beyond 32768 pixels can be represented; real sensors stay far below (the largest, ~1280).
MAX_SENSOR_SIDE = 1 << 15


def check_sensor_size(size: tuple[int, int], where: str,
                      error: type[EventformerError] = EventformerError) -> tuple[int, int]:
    """``size`` (width, height) when both sides are 1..`MAX_SENSOR_SIDE`, else one ``error``
    sentence naming ``where`` it came from (``"--sensor-size"``, ``"x.raw: its header"``...)."""
    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0:
        raise error(f"{where}: a sensor size must be positive, got {width}x{height}")
    if width > MAX_SENSOR_SIDE or height > MAX_SENSOR_SIDE:
        raise error(f"{where}: a {width}x{height} sensor is implausible (event "
                               f"coordinates are 16-bit, so no side can exceed {MAX_SENSOR_SIDE})")
    return width, height


@dataclass(frozen=True)
class KnownSensor:
    name: str
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def holds(self, max_x: int, max_y: int) -> bool:
        return max_x < self.width and max_y < self.height


_NMNIST = KnownSensor("N-MNIST's ATIS crop", 34, 34)
_DVS128 = KnownSensor("DVS128", 128, 128)
_DAVIS240 = KnownSensor("DAVIS240", 240, 180)
_ATIS = KnownSensor("ATIS / Prophesee Gen1", 304, 240)
_GENX320 = KnownSensor("Prophesee GenX320", 320, 320)
_DAVIS346 = KnownSensor("DAVIS346", 346, 260)
_VGA = KnownSensor("Prophesee Gen3 VGA", 640, 480)
_DVXPLORER = KnownSensor("DVXplorer", 640, 480)
_IMX636 = KnownSensor("Prophesee Gen4 / IMX636", 1280, 720)

#: Candidates per format, smallest first; formats not named here (npy, npz...) hold events of any
#: camera and use ``"*"``.
WELL_KNOWN_SENSORS: dict[str, tuple[KnownSensor, ...]] = {
    # N-MNIST and N-Caltech101 (.bin, ATIS) and DVS Gesture segments (.bs2, DVS128)
    "bs2": (_NMNIST, _DVS128, _ATIS),
    "evt2": (_GENX320, _VGA, _IMX636),
    "evt3": (_GENX320, _VGA, _IMX636),
    "dat": (_ATIS, _VGA, _IMX636),
    "*": (_NMNIST, _DVS128, _DAVIS240, _ATIS, _DAVIS346, _GENX320, _DVXPLORER, _IMX636),
}

# Prophesee's HAL plugin names (``% plugin_name``) name the sensor generation.
_PLUGINS: tuple[tuple[re.Pattern[str], KnownSensor], ...] = (
    (re.compile(r"genx320"), _GENX320),
    (re.compile(r"gen4|imx636"), _IMX636),
    (re.compile(r"gen3"), _VGA),
)


def plugin_sensor(plugin_name: str | None) -> KnownSensor | None:
    """The sensor a Prophesee header's ``plugin_name`` names (``hal_plugin_gen3_fx3`` -> Gen3
    VGA, ``hal_plugin_gen41_evk3`` -> IMX636), or None."""
    if not plugin_name:
        return None
    key = plugin_name.lower()
    for pattern, sensor in _PLUGINS:
        if pattern.search(key):
            return sensor
    return None


@dataclass(frozen=True)
class Assumption:
    """A sensor size assumed for a file that records none: the ``sentence`` that says so (a
    warning) and a shorter ``phrase`` for the description of the spatial mapping."""

    size: tuple[int, int]
    sentence: str
    phrase: str


def assume_sensor(name: str, format: str, max_x: int, max_y: int,
                  hint: KnownSensor | None = None, hint_source: str = "") -> Assumption:
    """The sensor to assume for ``name`` (a ``format`` file recording no size) whose events reach
    ``max_x``, ``max_y``: ``hint`` (named by the header, ``hint_source`` says where) when it holds
    them, else the smallest well-known sensor that does; one `EventformerError` sentence asking
    for ``--sensor-size`` when none does."""
    if hint is not None and hint.holds(max_x, max_y):
        why = f"{hint.name}, by {hint_source}"
        return Assumption(hint.size, f"the file records no sensor size; assumed {hint.width}x"
                                     f"{hint.height} ({why}); give --sensor-size WxH if that is "
                                     "wrong",
                          f"sensor {hint.width}x{hint.height} assumed ({why})")
    candidates = WELL_KNOWN_SENSORS.get(format, WELL_KNOWN_SENSORS["*"])
    fitting = [s for s in candidates if s.holds(max_x, max_y)]
    if not fitting:
        largest = max(candidates, key=lambda s: s.width * s.height)
        raise EventformerError(
            f"{name}: the file records no sensor size and its events reach x={max_x}, y={max_y}, "
            f"beyond every well-known {format} sensor (up to {largest.width}x{largest.height}); "
            "give the sensor size with --sensor-size WxH")
    best = min(fitting, key=lambda s: s.width * s.height)
    why = f"{best.name}, the smallest well-known sensor holding every event"
    return Assumption(best.size, f"the file records no sensor size; assumed {best.width}x"
                                 f"{best.height} ({why}: x up to {max_x}, y up to {max_y}); give "
                                 "--sensor-size WxH if that is wrong",
                      f"sensor {best.width}x{best.height} assumed ({why})")


def extent(events: np.ndarray) -> tuple[int, int]:
    """The largest x and y of ``events`` (-1, -1 for none)."""
    if not len(events):
        return -1, -1
    return int(events["x"].max()), int(events["y"].max())
