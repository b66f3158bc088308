"""Timing two engines fairly on a shared, loaded machine: interleaved runs, medians, spreads.

Timing each engine in its own block let background load land on one side only: the dense torch
time of one file swung between 0.38 s and 6.9 s, which made 20-37x "speed-ups". Here every repeat
round runs each file on both sides back to back (engine, torch, engine, torch, ...), so slow
stretches of the machine hit both; each side is summarised by its median, with the min..max
spread beside it, and a spread wider than :data:`UNSTABLE_RATIO` is flagged.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

UNSTABLE_RATIO = 1.5  # max / min of one side's times above which its median is flagged


@dataclass(frozen=True)
class Spread:
    """Median and min..max of repeated timings of one thing."""

    times: tuple[float, ...]
    median: float
    min: float
    max: float

    @property
    def ratio(self) -> float:
        """max / min (1.0 when only one time was taken)."""
        return self.max / self.min if self.min > 0 else float("inf")

    def unstable(self, limit: float = UNSTABLE_RATIO) -> bool:
        return len(self.times) > 1 and self.ratio > limit

    def to_dict(self, limit: float = UNSTABLE_RATIO) -> dict:
        return {"times_s": list(self.times), "median_s": self.median, "min_s": self.min,
                "max_s": self.max, "spread": self.ratio, "unstable": self.unstable(limit)}


def spread(times) -> Spread:
    """Median, min and max of one or more times (seconds)."""
    times = tuple(float(t) for t in times)
    if not times:
        raise ValueError("spread of no times")
    return Spread(times, statistics.median(times), min(times), max(times))


def interleave(n_items: int, sides: Mapping[str, Callable[[int], object]], repeat: int,
               record: Callable[[str, int, float], None], clock=time.perf_counter) -> None:
    """Time every side on every item, ``repeat`` rounds, interleaved.

    Order: for each round, for each item, each side in ``sides`` order (engine, torch, engine,
    torch, ...). ``record(side, item, seconds)`` is called right after each timed call, so an
    interruption (KeyboardInterrupt) leaves every time measured so far recorded.
    """
    for _ in range(repeat):
        for i in range(n_items):
            for name, fn in sides.items():
                start = clock()
                fn(i)
                record(name, i, clock() - start)


def _busy_jiffies() -> int | None:
    """Jiffies all CPUs spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle  # user..steal; guest time is already inside user


class OtherLoad:
    """CPU cores other processes kept busy while timings ran: the machine's busy time (from
    /proc/stat) minus this process's own CPU time, per second of wall time. None off Linux."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.cores: float | None = None
        self._start = None

    def __enter__(self):
        self._start = (_busy_jiffies(), _own_cpu_s(), self.clock())
        return self

    def __exit__(self, *exc):
        busy0, own0, t0 = self._start
        busy1, own1, t1 = _busy_jiffies(), _own_cpu_s(), self.clock()
        wall = t1 - t0
        if busy0 is None or busy1 is None or wall <= 0.05:
            return
        hz = _clock_ticks()
        self.cores = max(0.0, ((busy1 - busy0) / hz - (own1 - own0)) / wall)


def _own_cpu_s() -> float:
    import os

    t = os.times()
    return t.user + t.system


def _clock_ticks() -> int:
    import os

    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100
