"""Streaming inference: causal windows from a (possibly growing) event file, one model step each.

The engine's state carries across windows (the same ``Model.step`` as offline inference), so a
prediction evolves as a gesture unfolds. A window is closed only when it is known to be complete:
an event at or past its end has arrived, the file ended (without ``follow``), or the stream went
idle for ``idle_timeout`` seconds (then the open window is closed as it is). Memory stays flat:
only the events of windows not yet closed are held.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .errors import EventformerError
from .events import EVENT_DTYPE, frame_events
from .inference import downsample, downsample_factor
from .models import Spikformer
from .report import EnergyTable, summarize


class EventSource(Protocol):
    """Anything that hands out the next events of a recording, in time order."""

    def read(self) -> np.ndarray:
        """The events that became available since the last call (possibly none)."""

    @property
    def exhausted(self) -> bool:
        """True when no more events can come (a finished file read without follow)."""


@dataclass
class WindowSpec:
    window_us: int | None = None  # fixed time windows
    window_events: int | None = None  # or a fixed number of events per window

    def __post_init__(self):
        if (self.window_us is None) == (self.window_events is None):
            raise ValueError("give exactly one of a window length in time or in events")
        if (self.window_us is not None and self.window_us <= 0) or \
                (self.window_events is not None and self.window_events <= 0):
            raise ValueError("the window must be positive")


class CausalFramer:
    """Cuts an incoming event stream into complete windows, holding back the open one."""

    def __init__(self, spec: WindowSpec):
        self.spec = spec
        self.pending = np.empty(0, EVENT_DTYPE)
        self.t0: int | None = None  # start of the next window (time windows)

    @property
    def backlog(self) -> int:
        return int(self.pending.shape[0])

    def push(self, events: np.ndarray) -> None:
        if events.shape[0]:
            self.pending = np.concatenate([self.pending, events]) if self.pending.shape[0] \
                else events
            if self.t0 is None:
                self.t0 = int(events["t"][0])

    def complete_windows(self):
        """Yield (t_start, t_end, events) for every window that can no longer change."""
        spec = self.spec
        if spec.window_events is not None:
            n = spec.window_events
            while self.pending.shape[0] >= n:
                chunk, self.pending = self.pending[:n], self.pending[n:]
                yield int(chunk["t"][0]), int(chunk["t"][-1]) + 1, chunk
            return
        while self.pending.shape[0] and self.t0 is not None:
            end = self.t0 + spec.window_us
            t = self.pending["t"]
            if t[-1] < end:  # the window may still grow
                return
            cut = int(np.searchsorted(t, end, side="left"))
            chunk, self.pending = self.pending[:cut], self.pending[cut:]
            yield self.t0, end, chunk
            self.t0 = end

    def flush(self):
        """Close the open window as it is (end of file, idle, or interrupted)."""
        if not self.pending.shape[0]:
            return
        chunk, self.pending = self.pending, self.pending[:0]
        if self.spec.window_us is not None and self.t0 is not None:
            yield self.t0, self.t0 + self.spec.window_us, chunk
            self.t0 += self.spec.window_us
        else:
            yield int(chunk["t"][0]), int(chunk["t"][-1]) + 1, chunk


def run_stream(engine: Spikformer, source: EventSource, spec: WindowSpec, *,
               follow: bool = False, realtime: bool = False, idle_timeout: float = 5.0,
               poll_s: float = 0.05, energy: EnergyTable | None = None,
               on_window: Callable[[dict], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               sensor_size: tuple[int, int] | None = None) -> dict:
    """Drive the engine window by window until the source ends (or goes idle when following).

    Returns a summary; ``on_window`` receives one record per window with the keys
    t_start_us, t_end_us, events, prediction, logits, ops, latency_ms, backlog_events.
    """
    size = engine.config.image_size
    framer = CausalFramer(spec)
    engine.warm_up()  # latency of the first window should not include loading kernels
    # latencies of the most recent windows only: memory stays flat over hours of input
    stats = {"windows": 0, "events": 0, "compute_s": 0.0,
             "latencies_ms": collections.deque(maxlen=100_000)}
    wall_start = time.perf_counter()
    rec_start: int | None = None
    last_growth = time.perf_counter()

    factor = None

    def process(t_start, t_end, chunk):
        nonlocal rec_start, factor
        if rec_start is None:
            rec_start = t_start
        if factor is None:  # the header (if any) has been read by now
            sensor = getattr(source, "sensor_size", None) or sensor_size
            factor = downsample_factor(sensor, size, getattr(source, "path", "stream"))
        chunk = downsample(chunk, factor)
        if realtime:  # wait until the recording's clock reaches the window's end
            due = wall_start + (t_end - rec_start) / 1e6
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        try:
            (idx, cnt), = frame_events(chunk, 1, size, size)
        except ValueError as exc:
            raise EventformerError(f"window [{t_start}, {t_end}) us: {exc}") from None
        engine.clear_stats()
        start = time.perf_counter()
        engine.step(idx, cnt)
        logits = engine.logits()
        latency = time.perf_counter() - start
        layer_stats = engine.layer_stats()
        record = {"t_start_us": int(t_start), "t_end_us": int(t_end),
                  "events": int(chunk.shape[0]), "prediction": int(np.argmax(logits)),
                  "logits": [float(x) for x in logits],
                  "ops": summarize(layer_stats, 1, energy), "latency_ms": latency * 1e3,
                  "backlog_events": framer.backlog, "step": engine.steps_seen}
        stats["windows"] += 1
        stats["events"] += record["events"]
        stats["compute_s"] += latency
        stats["latencies_ms"].append(record["latency_ms"])
        if on_window is not None:
            on_window(record)
        return record

    last = None
    interrupted = False
    try:
        while True:
            if should_stop is not None and should_stop():
                break
            events = source.read()
            if events.shape[0]:
                last_growth = time.perf_counter()
                framer.push(events)
                for window in framer.complete_windows():
                    last = process(*window)
                continue
            if source.exhausted and not follow:
                break
            if follow and time.perf_counter() - last_growth > idle_timeout:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        interrupted = True
    for window in framer.flush():
        last = process(*window)
    lat = np.array(stats["latencies_ms"]) if stats["latencies_ms"] else np.zeros(1)
    return {"windows": stats["windows"], "events": stats["events"],
            "compute_s": stats["compute_s"], "wall_s": time.perf_counter() - wall_start,
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "final_prediction": None if last is None else last["prediction"],
            "final_logits": None if last is None else last["logits"],
            "interrupted": interrupted}


class FileSource:
    """An event file read incrementally from where the last read stopped.

    Without ``follow`` the source is exhausted once a read finds no new bytes; then the
    decoder is finished, so a torn last record becomes a warning and formats that can only be
    decoded whole (npz) hand over their events. With ``follow`` it never ends by itself: the
    stream's idle timeout (or Ctrl-C) decides.
    """

    def __init__(self, path: str, follow: bool):
        from .events import EventStream

        self.path = path
        self.follow = follow
        self.stream = EventStream(path)
        self._exhausted = False
        self.leftover = None

    def read(self) -> np.ndarray:
        if self._exhausted:
            return np.empty(0, EVENT_DTYPE)
        events = self.stream.read()
        if events.shape[0] == 0 and not self.follow:
            before = self.stream.offset
            events = self.stream.read()
            if events.shape[0] == 0 and self.stream.offset == before:
                self.leftover = self.stream.finish()
                self._exhausted = True
                return self.leftover.events
        return events

    def finish(self):
        if self.leftover is None:
            self.leftover = self.stream.finish()
        return self.leftover

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    @property
    def warnings(self) -> list[str]:
        return self.stream.warnings

    @property
    def sensor_size(self) -> tuple[int, int] | None:
        return self.stream.sensor_size
