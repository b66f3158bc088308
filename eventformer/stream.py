"""Streaming inference: causal windows from a (possibly growing) event file, one model step each.

The engine's state carries across windows (the same ``Model.step`` as offline inference), so a
prediction evolves as a gesture unfolds. A window is closed only when it is known to be complete:
an event at or past its end has arrived, the file ended (without ``follow``), or the stream went
idle for ``idle_timeout`` seconds (then the open window is closed as it is). Ctrl-C stops
reading: the window being computed finishes, the open window closes with the events it has, and
events read ahead beyond it are reported as not reached. With ``realtime`` a finished recording is
replayed at its own speed: events count as arrived only when the replay clock reaches them. Memory
stays flat: only the events of windows not yet closed are held.

A recording whose timestamps jump (hours without events, or a clock that leapt by 2^40 us) would
otherwise be millions of empty windows. A run of at least ``GAP_WINDOWS`` empty windows is a
`Gap`: the engine crosses it with `skip_empty_steps`, exactly and in bounded time, and the gap
is reported as one record (``"gap"``) whose window count and step keep the numbering honest.
"""

from __future__ import annotations

import collections
import hashlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import EventformerError
from .events import EVENT_DTYPE, frame_events
from .events.transforms import SpatialTransform
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


#: A run of at least this many empty time windows is crossed as one gap (fewer are stepped and
#: reported one by one, as any window).
GAP_WINDOWS = 100


@dataclass(frozen=True)
class Gap:
    """``windows`` consecutive empty time windows covering [t_start_us, t_end_us)."""

    t_start_us: int
    t_end_us: int
    windows: int


class CausalFramer:
    """Cuts an incoming event stream into complete windows, holding back the open one. A long
    run of empty windows (a jump in the timestamps) comes out as one `Gap`, in O(1)."""

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

    def waiting_windows(self) -> int:
        """About how many complete windows the pending events already hold (a run of empty
        windows counts as its length): how far behind the arrivals a consumer is."""
        if not self.pending.shape[0]:
            return 0
        if self.spec.window_events is not None:
            return self.pending.shape[0] // self.spec.window_events
        return max(0, (int(self.pending["t"][-1]) - self.t0) // self.spec.window_us)

    def restart(self):
        """A new stream whose clock starts afresh (a reconnected camera): close the open window
        with what it has; the next window starts at the next event."""
        windows = list(self.flush())
        self.t0 = None
        return windows

    def complete_windows(self):
        """Yield (t_start, t_end, events) for every window that can no longer change, and a
        `Gap` for a run of at least ``GAP_WINDOWS`` empty ones."""
        spec = self.spec
        if spec.window_events is not None:
            n = spec.window_events
            while self.pending.shape[0] >= n:
                chunk, self.pending = self.pending[:n], self.pending[n:]
                yield int(chunk["t"][0]), int(chunk["t"][-1]) + 1, chunk
            return
        # the timestamps copied out once per call: searching the strided field of the
        # structured array would copy all pending events for every window (quadratic when a
        # live source hands over seconds of events at once); recopied only if a consumer
        # pushed while a window was in its hands
        times, done, cut_to = None, 0, None
        while self.pending.shape[0] and self.t0 is not None:
            if self.pending is not cut_to:
                times, done = np.ascontiguousarray(self.pending["t"]), 0
            end = self.t0 + spec.window_us
            t = times[done:]
            if t[-1] < end:  # the window may still grow
                return
            empty = (int(t[0]) - self.t0) // spec.window_us  # whole windows before the next event
            if empty >= GAP_WINDOWS:
                start, self.t0 = self.t0, self.t0 + empty * spec.window_us
                cut_to = self.pending
                yield Gap(start, self.t0, empty)
                continue
            cut = int(np.searchsorted(t, end, side="left"))
            chunk, self.pending = self.pending[:cut], self.pending[cut:]
            done += cut
            cut_to = self.pending
            start, self.t0 = self.t0, end  # before the hand-over: a consumer may stop there
            yield start, end, chunk

    def close_until(self, t_us: int):
        """Yield the time windows that end at or before ``t_us`` when no event before ``t_us``
        can still come (a replay clock has passed it), even if no later event has arrived."""
        if self.spec.window_us is None or self.t0 is None:
            return
        w = self.spec.window_us
        while self.t0 + w <= t_us:
            t = self.pending["t"]
            # whole empty windows before the next pending event (or t_us): a gap, as
            # complete_windows would find once that event came
            empty = (min(int(t[0]) if t.shape[0] else t_us, t_us) - self.t0) // w
            if empty >= GAP_WINDOWS:
                start, self.t0 = self.t0, self.t0 + empty * w
                yield Gap(start, self.t0, empty)
                continue
            end = self.t0 + w
            cut = int(np.searchsorted(self.pending["t"], end, side="left"))
            chunk, self.pending = self.pending[:cut], self.pending[cut:]
            start, self.t0 = self.t0, end
            yield start, end, chunk

    def flush_open(self):
        """Interrupted: close the open window with the events it has, and drop (returning their
        number) events read ahead beyond it, which the stream never reached."""
        spec = self.spec
        if not self.pending.shape[0]:
            return [], 0
        if spec.window_events is not None:
            keep = min(self.pending.shape[0], spec.window_events)
        else:
            keep = int(np.searchsorted(self.pending["t"], self.t0 + spec.window_us, side="left"))
        dropped = self.pending.shape[0] - keep
        self.pending = self.pending[:keep]
        return list(self.flush()), dropped

    def flush(self):
        """Close the open window as it is (end of file, or idle)."""
        if not self.pending.shape[0]:
            return
        chunk, self.pending = self.pending, self.pending[:0]
        if self.spec.window_us is not None and self.t0 is not None:
            start, self.t0 = self.t0, self.t0 + self.spec.window_us
            yield start, self.t0, chunk
        else:
            yield int(chunk["t"][0]), int(chunk["t"][-1]) + 1, chunk


class CtrlC:
    """Within this context the first Ctrl-C (SIGINT) only sets ``requested``, so the window being
    computed finishes and the model's state stays whole; a second one interrupts at once. Outside
    the main thread signals cannot be caught and Ctrl-C stays a KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class ReplayClock:
    """Replays a finished recording at its own speed: read events are held back until the wall
    clock, started at the first event, reaches their timestamps; only then have they arrived."""

    def __init__(self):
        self.held = np.empty(0, EVENT_DTYPE)
        self.rec_start: int | None = None
        self.wall_start = 0.0

    def push(self, events: np.ndarray) -> None:
        if self.rec_start is None and events.shape[0]:
            self.rec_start = int(events["t"][0])
            self.wall_start = time.perf_counter()
        self.held = np.concatenate([self.held, events]) if self.held.shape[0] else events

    def now_us(self) -> int:
        if self.rec_start is None:
            return 0
        return self.rec_start + int((time.perf_counter() - self.wall_start) * 1e6)

    def release(self) -> np.ndarray:
        """The held events whose time has come, in file order (up to the first one still due)."""
        late = self.held["t"] >= self.now_us()
        cut = int(np.argmax(late)) if late.any() else self.held.shape[0]
        out, self.held = self.held[:cut], self.held[cut:]
        return out

    def seconds_until(self, t_us: int) -> float:
        return (t_us - self.now_us()) / 1e6

    def jump_to(self, t_us: int) -> None:
        """Move the replay on to ``t_us`` at once (a jump in the recording's timestamps: hours
        without events are not waited out; the framer reports them as one gap)."""
        self.rec_start += max(0, t_us - self.now_us())


#: How many empty steps `skip_empty_steps` watches for the engine's orbit before it gives up and
#: steps through the rest (the shipped models enter theirs within ~130 steps, periods <= 720).
ORBIT_SEARCH_STEPS = 5000

_NO_EVENTS = np.empty(0, np.int32)


def _state_key(engine) -> bytes:
    """A digest of everything a step without input depends on: each layer's membranes (and a
    framework neuron's synaptic current), DS2TA's ring of recent currents with its position.
    The op counters and the head's running sums are left out: they only accumulate."""
    h = hashlib.blake2b(digest_size=20)
    for layer in engine.layers:
        neurons = getattr(layer, "neurons", None)
        for name in ("v", "i_syn"):
            a = getattr(neurons, name, None)
            if a is not None:
                h.update(a.tobytes())
        for name in ("_ring", "_live"):
            a = getattr(layer, name, None)
            if a is not None:
                h.update(a.tobytes())
        if hasattr(layer, "_t"):  # which ring rows are read next, and whether the ring is full
            h.update(repr((layer._t % layer.taw, min(layer._t, layer.taw))).encode())
    return h.digest()


def _head_totals(engine):
    """The head's running totals: an integer array (channel sums or spike counts), or None."""
    for name in ("sums", "counts"):
        a = getattr(engine.head, name, None)
        if isinstance(a, np.ndarray) and a.dtype.kind in "iu":
            return a
    return None


def skip_empty_steps(engine, n: int, search: int = ORBIT_SEARCH_STEPS) -> dict:
    """Advance ``engine`` by ``n`` steps without input events, exactly as ``n`` calls of
    ``engine.step`` with no events would, but in bounded time.

    Without input every layer is driven by its constant bias alone, a deterministic map on a
    finite state (float or integer membranes): after a transient the state repeats, either a
    fixed point (every membrane settled) or a cycle (neurons whose bias exceeds threshold fire
    periodically). Once the state at step k equals the state at step i, steps i..k-1 repeat
    forever; whole cycles are then added to the head's integer totals (its sums and step count)
    instead of being computed, and the remainder is stepped. Nothing is rounded: the totals are
    integers and the membranes are those of the equal state. Where no repeat shows within
    ``search`` steps, every step is computed.

    Returns ``{"computed": steps really run, "period": the cycle's length or None}``.
    """
    totals = _head_totals(engine)
    seen: dict[bytes, int] = {}
    history = []  # (head totals, head steps) before step k
    k = 0
    while k < n:
        if totals is not None and k < search:
            key = _state_key(engine)
            i = seen.get(key)
            if i is not None:
                period = k - i
                cycles, rest = divmod(n - k, period)
                then_totals, then_steps = history[i]
                totals += cycles * (totals - then_totals)
                engine.head.steps += cycles * (engine.head.steps - then_steps)
                for _ in range(rest):
                    engine.step(_NO_EVENTS, _NO_EVENTS)
                return {"computed": k + rest, "period": period}
            seen[key] = k
            history.append((totals.copy(), engine.head.steps))
        engine.step(_NO_EVENTS, _NO_EVENTS)
        k += 1
    return {"computed": n, "period": None}


def _duration(us: int) -> str:
    s = us / 1e6
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if s >= size:
            return f"{s / size:.3g} {unit}"
    return f"{us / 1e3:.3g} ms"


def describe_gap(record: dict) -> str:
    """One line for a gap record: how long, how many windows, how the engine crossed it."""
    g = record["gap"]
    how = (f"the model's state repeats every {g['period_windows']} windows without input, so "
           f"{g['computed_windows']:,} were computed and the rest added up exactly"
           if g["period_windows"] else f"all {g['computed_windows']:,} computed")
    return (f"gap of {_duration(record['t_end_us'] - record['t_start_us'])} without events at "
            f"t {record['t_start_us'] / 1e6:.3f} s: {g['windows']:,} empty windows skipped ({how})")


def _stream_plan(source, first: np.ndarray, size: int, sensor_size, transform):
    """The spatial plan of a stream, made on its first window: the header's sensor size, else
    ``sensor_size`` (--sensor-size); where neither is known and the first window's events need
    one (beyond the model's input), the well-known sensor that holds them, said in a warning of
    the source (`eventformer.events.sensors.assume_sensor`). A later event beyond it is an
    error naming --sensor-size, never dropped."""
    from .events.sensors import assume_sensor, extent

    transform = transform or SpatialTransform()
    name = getattr(source, "path", "stream")
    header = getattr(source, "sensor_size", None)
    sensor = header or sensor_size
    assumed = None
    if sensor is None:
        max_x, max_y = extent(first)
        if transform.needs_sensor(size, max_x, max_y):
            stream = getattr(source, "stream", None)
            decoder = getattr(stream, "decoder", None) or getattr(source, "decoder", None)
            hint, why = getattr(decoder, "sensor_hint", None) or (None, "")
            fmt = getattr(stream, "format", None) or getattr(source, "format", None) or "*"
            assumed = assume_sensor(name, fmt, max_x, max_y, hint, why)
            sensor = assumed.size
            notes = getattr(source, "notes", None)
            if notes is not None:
                notes.append(f"{assumed.sentence} (from the first window's events)")
    return transform.plan(sensor, size, name=name, from_header=header is not None,
                          assumption=assumed.phrase if assumed else "")


#: What ``on_overload`` may say, and why each is chosen, said in a live stream's summary.
OVERLOAD_POLICIES = {
    "queue": "every window is classified, in order; when the engine falls behind, arrived events "
             "wait (the backlog) and the latency grows, but nothing is lost",
    "drop": "when the engine falls behind, complete windows older than the newest are dropped "
            "unclassified (each reported and counted) so that decisions stay current; the "
            "model's state does not see them",
}


def run_stream(engine: Spikformer, source: EventSource, spec: WindowSpec, *,
               follow: bool = False, realtime: bool = False, idle_timeout: float = 5.0,
               poll_s: float = 0.05, energy: EnergyTable | None = None,
               on_window: Callable[[dict], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               sensor_size: tuple[int, int] | None = None,
               transform: SpatialTransform | None = None, on_overload: str = "queue") -> dict:
    """Drive the engine window by window until the source ends (or goes idle when following).

    Returns a summary; ``on_window`` receives one record per window with the keys
    t_start_us, t_end_us, events, prediction, logits, ops, latency_ms, backlog_events, step
    (the engine's steps so far). A run of ``GAP_WINDOWS`` or more empty windows is one record
    with the same keys (the state at its end) plus ``gap``: its windows, those computed and the
    period of the state without input (see `skip_empty_steps`). The summary's ``windows``
    counts every window, those in gaps too (``gap_windows``), so it equals the last step.

    A live source (``source.live``, `eventformer.live`) is read until it ends or stays silent
    for ``idle_timeout`` seconds (reconnection attempts included). Its windows' records add
    ``arrival_latency_ms`` (from the arrival of the window's last event to the decision; None
    for an empty window; a window closed by the stream's end has ``closed_at_end`` and is left
    out of the summary's percentiles: its wait measured the silence) and ``waiting_windows``; ``backlog_events`` then counts the events the
    source has received and not yet handed over too. ``on_overload`` ("queue" or "drop", see
    `OVERLOAD_POLICIES`) says what happens when the engine falls behind; a dropped window is a
    record with ``"dropped": true``. The summary then adds the policy and why, dropped windows
    and events, the largest backlog, arrival-latency percentiles, restarts (reconnections) and
    the source's own counters (``"live"``).
    """
    if on_overload not in OVERLOAD_POLICIES:
        raise ValueError(f"on_overload must be one of {', '.join(OVERLOAD_POLICIES)}")
    live = bool(getattr(source, "live", False))
    dropping = live and on_overload == "drop"
    consumed = 0  # the source's events handed over in windows so far (for their arrival)
    live_stats = {"dropped_windows": 0, "dropped_events": 0, "waiting_windows_max": 0,
                  "backlog_events_max": 0, "restarts": 0,
                  "arrival_ms": collections.deque(maxlen=100_000)}
    size = engine.config.image_size
    framer = CausalFramer(spec)
    engine.warm_up()  # latency of the first window should not include loading kernels
    # latencies of the most recent windows only: memory stays flat over hours of input
    stats = {"windows": 0, "events": 0, "compute_s": 0.0, "gaps": 0, "gap_windows": 0,
             "latencies_ms": collections.deque(maxlen=100_000)}
    wall_start = time.perf_counter()
    last_growth = time.perf_counter()

    plan = None  # crop / resize onto the input (``transform``), planned once the header is read

    def process(t_start, t_end, chunk):
        nonlocal plan, consumed
        if plan is None:  # the header (if any) has been read by now
            plan = _stream_plan(source, chunk, size, sensor_size, transform)
        received = int(chunk.shape[0])
        chunk = plan.apply(chunk)
        if clock is not None and not interrupted:  # the last window waits for its end too
            delay = clock.seconds_until(t_end)
            if delay > 0:
                time.sleep(delay)
        try:
            (idx, cnt), = frame_events(chunk, 1, size, size)
        except ValueError as exc:
            hint = "" if plan.sensor_size or plan.region else \
                " (give --sensor-size WxH to downsample a larger sensor)"
            raise EventformerError(f"{getattr(source, 'path', 'stream')}: window [{t_start}, "
                                   f"{t_end}) us: {exc}{hint}") from None
        engine.clear_stats()
        start = time.perf_counter()
        engine.step(idx, cnt)
        logits = engine.logits()
        latency = time.perf_counter() - start
        layer_stats = engine.layer_stats()
        record = {"t_start_us": int(t_start), "t_end_us": int(t_end),
                  "events": int(chunk.shape[0]), "prediction": int(np.argmax(logits)),
                  "logits": [float(x) for x in logits],
                  "ops": summarize(layer_stats, 1, energy or
                                   EnergyTable.for_arithmetic(engine.arithmetic)),
                  "latency_ms": latency * 1e3,
                  "backlog_events": framer.backlog, "step": engine.steps_seen}
        if live:
            decided = time.perf_counter()
            consumed += received
            arrival = source.arrival_of(consumed - 1) if received else None
            record["arrival_latency_ms"] = None if arrival is None else (decided - arrival) * 1e3
            observe_backlog(record)
            if closing:  # its end was known only when the stream ended: the wait is not latency
                record["closed_at_end"] = True
            elif arrival is not None:
                live_stats["arrival_ms"].append(record["arrival_latency_ms"])
        stats["windows"] += 1
        stats["events"] += record["events"]
        stats["compute_s"] += latency
        stats["latencies_ms"].append(record["latency_ms"])
        if on_window is not None:
            on_window(record)
        return record

    def observe_backlog(record: dict) -> None:
        record["backlog_events"] += source.queued_events
        record["waiting_windows"] = framer.waiting_windows()
        live_stats["backlog_events_max"] = max(live_stats["backlog_events_max"],
                                               record["backlog_events"])
        live_stats["waiting_windows_max"] = max(live_stats["waiting_windows_max"],
                                                record["waiting_windows"])

    def drop(t_start, t_end, chunk, behind: int):
        """--on-overload drop: a complete window older than the newest, not classified."""
        nonlocal consumed
        consumed += int(chunk.shape[0])
        live_stats["dropped_windows"] += 1
        live_stats["dropped_events"] += int(chunk.shape[0])
        record = {"t_start_us": int(t_start), "t_end_us": int(t_end),
                  "events": int(chunk.shape[0]), "dropped": True, "behind_windows": behind,
                  "backlog_events": framer.backlog, "step": engine.steps_seen}
        observe_backlog(record)
        if on_window is not None:
            on_window(record)

    def cross(gap: Gap):
        """A run of empty windows: the engine crosses it exactly, one record for all."""
        engine.clear_stats()
        start = time.perf_counter()
        how = skip_empty_steps(engine, gap.windows)
        logits = engine.logits()
        seconds = time.perf_counter() - start
        record = {"t_start_us": int(gap.t_start_us), "t_end_us": int(gap.t_end_us), "events": 0,
                  "prediction": int(np.argmax(logits)), "logits": [float(x) for x in logits],
                  "ops": summarize(engine.layer_stats(), max(how["computed"], 1), energy or
                                   EnergyTable.for_arithmetic(engine.arithmetic)),
                  "latency_ms": seconds * 1e3, "backlog_events": framer.backlog,
                  "step": engine.steps_seen,
                  "gap": {"windows": gap.windows, "computed_windows": how["computed"],
                          "period_windows": how["period"]}}
        stats["windows"] += gap.windows
        stats["gaps"] += 1
        stats["gap_windows"] += gap.windows
        stats["compute_s"] += seconds  # (not a window's latency: kept out of the percentiles)
        if on_window is not None:
            on_window(record)
        return record

    last = None
    interrupted = False
    # --realtime: events reach the framer only once the replay clock has come to them, so the
    # backlog is what has arrived and waits, and an interrupt finds only arrived events pending
    clock = ReplayClock() if realtime else None
    epoch = getattr(source, "epoch", 0)
    closing = False  # closing the open window as the stream ends (or restarts)

    def stopped() -> bool:
        return ctrl_c.requested or (should_stop is not None and should_stop())

    def drain(windows) -> None:
        nonlocal last
        if dropping:  # only the newest complete window is classified; gaps are crossed
            windows = list(windows)
            newest = max((i for i, w in enumerate(windows) if not isinstance(w, Gap)),
                         default=-1)
            for i, window in enumerate(windows):
                if isinstance(window, Gap):
                    last = cross(window)
                elif i < newest:
                    drop(*window, behind=newest - i)
                else:
                    last = process(*window)
            return
        for window in windows:
            last = cross(window) if isinstance(window, Gap) else process(*window)
            if stopped():  # finish the window in hand, then stop reading
                return

    with CtrlC() as ctrl_c:
        try:
            while not stopped():
                if clock is not None and clock.held.shape[0]:
                    framer.push(clock.release())
                    drain(framer.complete_windows())
                    if clock.held.shape[0] and not stopped():
                        # nothing before the next held event can still come
                        due = int(clock.held["t"][0])
                        if spec.window_us is not None and \
                                due - clock.now_us() >= GAP_WINDOWS * spec.window_us:
                            # a gap (as without --realtime): crossed below at once, not waited
                            # out (a jump of hours in a recording's clock would stall the replay)
                            clock.jump_to(due)
                        drain(framer.close_until(due))
                        wait = min(poll_s, clock.seconds_until(due))
                        if wait > 0:
                            time.sleep(wait)
                    continue
                events = source.read()
                if events.shape[0]:
                    last_growth = time.perf_counter()
                    if live and source.epoch != epoch:  # reconnected: a clock started afresh
                        epoch = source.epoch
                        live_stats["restarts"] += 1
                        closing = True
                        for window in framer.restart():
                            last = process(*window)
                        closing = False
                    if clock is not None:
                        clock.push(events)
                        continue
                    framer.push(events)
                    drain(framer.complete_windows())
                    continue
                if source.exhausted and (live or not follow):
                    break
                if (follow or live) and time.perf_counter() - last_growth > idle_timeout:
                    break
                if live:
                    source.wait(poll_s)  # woken by the next events: no polling delay
                else:
                    time.sleep(poll_s)
        except KeyboardInterrupt:  # outside the main thread, or a second Ctrl-C
            interrupted = True
        interrupted = interrupted or ctrl_c.requested
        unreached = 0
        if interrupted:  # reading stops; the open window closes with what it has
            windows, unreached = framer.flush_open()
            unreached += 0 if clock is None else int(clock.held.shape[0])
            unreached += source.queued_events if live else 0
        else:
            windows = framer.flush()
        closing = True
        for window in windows:
            last = process(*window)
    lat = np.array(stats["latencies_ms"]) if stats["latencies_ms"] else np.zeros(1)
    summary = {"windows": stats["windows"], "events": stats["events"],
            "gaps": stats["gaps"], "gap_windows": stats["gap_windows"],
            "compute_s": stats["compute_s"], "wall_s": time.perf_counter() - wall_start,
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "final_prediction": None if last is None else last["prediction"],
            "final_logits": None if last is None else last["logits"],
            "interrupted": interrupted, "unprocessed_events": unreached}
    if live:
        arrivals = live_stats.pop("arrival_ms")
        arrived = np.array(arrivals) if arrivals else None
        summary.update(
            on_overload=on_overload, on_overload_reason=OVERLOAD_POLICIES[on_overload],
            **live_stats,
            arrival_latency_ms_p50=None if arrived is None else float(np.percentile(arrived, 50)),
            arrival_latency_ms_p99=None if arrived is None else float(np.percentile(arrived, 99)),
            live=source.counters())
    return summary


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
        self.notes: list[str] = []  # what the stream itself had to assume (a sensor size)

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
        return self.notes + self.stream.warnings

    @property
    def sensor_size(self) -> tuple[int, int] | None:
        return self.stream.sensor_size
