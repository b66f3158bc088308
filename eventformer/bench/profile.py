"""``eventformer bench --profile``: where an engine's time goes, per layer and per stage.

The profiler changes no engine code. It wraps (:func:`.hooks.override`, invisible to the
engine's own checks), on one engine instance, the methods named in
:data:`STAGE_TABLE` (the one place that maps the engine's methods to stages: when the engine's
code changes, this table follows it; a method a layer does not have is simply not timed) with a
clock, and books each call's *self* time (its time minus that of the wrapped calls inside it) to
its stage and owner (a layer, a block, the head, or the model). The root is ``engine.run`` (or
``step``), whose self time is the stage "other": so the stages of the calling thread add up to
the wall time of the runs, by construction.

Offline runs on several engine threads compute event-driven currents in worker threads
(``_event_currents``): the calling thread books the wait for them ("thread wait"), and every
thread's kernel calls are also booked to a per-thread ledger, from which the kernels' rates come:
scatter and gather accumulates per second of the threads' time in them (to compare with their
one-thread peak), GEMM multiply-accumulates per second of the calling thread's time (the GEMM
splits its rows over the engine's threads, as its peak was measured).

A pipelined offline run (``Spikformer.run`` on several engine threads: different layers on
different chunks of steps at once) has no one calling thread doing the work: there, the time of
every thread the pipeline holds is booked, each stage's chunk to its own stages (its thread's
root is ``_pipeline_stage``), and a thread's time with no chunk ready to run to "pipeline wait".
The stages then add up to the runs' wall time plus the pipeline's other threads' time over its
length (``total_ms``; ``wall_ms`` is the runs' wall time alone).

The wrappers cost a microsecond or two per call: a profiled run is a little slower than a timed
one, which is why the bench times and profiles in separate runs and reports both.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..kernels import counters as C
from .hooks import Meter, override

# Stages in the order they are reported: the synaptic current's paths, then what follows it.
STAGES = ("scatter", "gather", "GEMM", "GEMM input", "current glue", "thread wait", "TASA",
          "LIF", "max-pool", "attention core", "residual merge", "block glue", "head",
          "pipeline wait", "other")
STAGE_MEANING = {
    "scatter": "event-driven current: an event's weight rows added into scattered outputs",
    "gather": "event-driven current: each output sums its active inputs' rows (convs)",
    "GEMM": "dense current: the GEMM of a step (or of a layer's dense steps at once)",
    "GEMM input": "the dense step's input rows (densify + im2col, or a linear's rows)",
    "current glue": "bias fills and adds, buffers and path choice around the kernels",
    "thread wait": "the calling thread waiting for work handed to the engine's other threads "
                   "(event currents, bands of rows, attention cores)",
    "TASA": "DS2TA's attenuated sum of the last T_AW currents",
    "LIF": "membrane update and spike list",
    "max-pool": "spike max-pool after a pooled conv's LIF",
    "attention core": "spike-driven attention products (Q K^T V and variants)",
    "residual merge": "x + y of two event lists (the residual stream)",
    "block glue": "blocks' and attention operators' own Python between layers",
    "head": "classifier head: channel sums, mean, one GEMV",
    "pipeline wait": "a thread of the offline pipeline with no stage's chunk ready to run (the "
                     "pipeline filling and draining, a stage waiting on the one before)",
    "other": "the rest of the model's run: the remainder of the wall time",
}
# The kernels with a measured peak (eventformer.bench.peaks), by stage
PEAK_OF_STAGE = {"scatter": "scatter", "gather": "gather", "GEMM": "gemm"}


def counted(*slots: int, arg: int | None = None):
    """Work of a call: the growth of ``slots`` of its counters array (positional argument
    ``arg`` when given and passed, -1 the last; else the owner's ``counters``). A call's work
    is booked without that of the wrapped calls inside it (an ``attend`` without its core
    kernel's)."""

    def target(owner, args, kwargs):
        given = None
        if arg == -1:
            given = args[-1] if args else None
        elif arg is not None:
            given = args[arg] if len(args) > arg else kwargs.get("counters")
        return owner.counters if given is None else given

    def before(owner, args, kwargs):
        counters = target(owner, args, kwargs)
        return counters, sum(int(counters[s]) for s in slots)

    def after(state):
        counters, start = state
        return sum(int(counters[s]) for s in slots) - start

    return before, after


def gemm_macs():
    """Work of ``_gemm(rows, out)``: rows x k x cout multiply-accumulates."""

    def before(owner, args, kwargs):
        rows, out = args[0], args[1]
        return float(rows.shape[0]) * rows.shape[1] * (out.size // max(rows.shape[0], 1))

    return before, lambda state: state


@dataclass(frozen=True)
class Hook:
    """``where``'s method ``method`` is timed as ``stage`` (a name, or a function of the owner
    giving one); ``work``: (before, after) counting the call's work in ``unit``."""

    where: str  # layer, neurons, head, block, attention, engine, module
    method: str
    stage: str | Callable
    work: tuple | None = None
    unit: str | None = None


def _emit_stage(layer) -> str:
    # a pooled conv's emit is its max-pool (the LIF inside it is wrapped on its own)
    return "max-pool" if getattr(layer, "pool", None) is not None else "LIF"


#: The one table of what is timed as what. ``where``: the layers of ``engine.layers``, their
#: ``neurons``, ``engine.head``, ``engine.blocks``, each block's attention operator (``attn``),
#: the engine itself, and functions of the model's module (residual adds).
STAGE_TABLE = (
    Hook("layer", "_scatter", "scatter", counted(C.AC, C.MAC, arg=3), "AC"),
    Hook("layer", "_gather", "gather", counted(C.AC, C.MAC, arg=3), "AC"),
    Hook("layer", "_gemm", "GEMM", gemm_macs(), "MAC"),
    Hook("layer", "_gemm_biased", "GEMM", gemm_macs(), "MAC"),
    Hook("layer", "_dense_rows", "GEMM input"),
    Hook("layer", "synapse", "current glue"),
    Hook("layer", "_sparse_current", "current glue"),
    Hook("layer", "_batched_synaptic", "current glue"),
    Hook("layer", "synaptic", "current glue"),
    Hook("layer", "step", "current glue"),
    Hook("layer", "run_steps", "current glue"),
    Hook("layer", "_event_currents", "thread wait"),
    Hook("layer", "_run_banded", "thread wait"),
    Hook("layer", "_dense_currents", "current glue"),
    Hook("layer", "_band_current", "current glue"),
    Hook("layer", "_band_pool", "max-pool"),
    Hook("layer", "attenuate", "TASA", counted(C.SHIFT), "shift"),
    Hook("layer", "emit", _emit_stage),
    Hook("layer", "fire", "LIF"),
    Hook("neurons", "fire", "LIF"),
    Hook("neurons", "fire_flags", "LIF"),
    # the LIF kernels themselves (a banded layer calls them from its threads): counters last
    Hook("neurons", "_step", "LIF", counted(C.NEURON_UPDATES, arg=-1), "update"),
    Hook("neurons", "_step_flags", "LIF", counted(C.NEURON_UPDATES, arg=-1), "update"),
    Hook("neurons", "_quiet", "LIF", counted(C.NEURON_UPDATES, arg=-1), "update"),
    Hook("layer", "attend", "attention core", counted(C.AC), "AC"),
    Hook("layer", "_core_current", "attention core", counted(C.AC, arg=-1), "AC"),
    Hook("layer", "attend_steps", "thread wait"),
    Hook("head", "step", "head", counted(C.AC), "AC"),
    Hook("head", "logits", "head"),
    Hook("block", "step", "block glue"),
    Hook("block", "run_steps", "block glue"),
    Hook("attention", "step", "block glue"),
    Hook("attention", "run_steps", "block glue"),
    Hook("block", "attention_steps", "block glue"),
    Hook("block", "mlp_steps", "block glue"),
    Hook("module", "add_events", "residual merge"),
    Hook("module", "run_pipeline", "pipeline wait"),
    Hook("engine", "_pipeline_stage", "other"),
    Hook("engine", "run", "other"),
    Hook("engine", "step", "other"),
)


class _Frame:
    __slots__ = ("owner", "stage", "start", "children", "child_work")

    def __init__(self, owner, stage, start):
        self.owner, self.stage, self.start = owner, stage, start
        self.children = 0.0  # seconds of the wrapped calls inside this one (same thread)
        self.child_work = {}  # unit -> work booked inside it (a call's work is its own only)


class Profiler(Meter):
    """Attach to one engine; every run made while attached is booked. ``close`` unwraps.

    ``wall[(owner, stage)]``: seconds of the calling thread (self time; adds up to the runs'
    wall time). ``kernel[(owner, stage)]``: [thread-seconds, work] over every thread, for the
    hooks that count work. ``runs``: root calls seen."""

    def __init__(self, engine, table=STAGE_TABLE, clock=time.perf_counter):
        self.clock = clock
        self.wall: dict[tuple[str, str], float] = {}
        self.kernel: dict[tuple[str, str], list] = {}
        self.units: dict[str, str] = {}
        self.runs = 0
        self.total_s = 0.0  # wall time of the root calls, plus the pipeline's other threads'
        self.wall_s = 0.0  # wall time of the root calls
        self._helpers: set[int] = set()  # threads running a pipeline stage for the root
        self._helper_busy = 0.0  # seconds of their stages
        self.order: list[str] = []  # owners in forward order
        self._lock = threading.Lock()
        self._local = threading.local()
        self._main: int | None = None
        self._undo: list[Callable[[], None]] = []
        self.timed: list[tuple[str, str]] = []  # (owner, method) actually wrapped
        for owner, obj, where in self._targets(engine):
            hooks = [h for h in table if h.where == where]
            if where == "module":
                for hook in hooks:
                    self._wrap_function(obj, hook)
                continue
            wrappers = {h.method: self._wrapper(owner, h.stage, h, getattr(obj, h.method), obj)
                        for h in hooks if callable(getattr(obj, h.method, None))}
            if wrappers:
                self._undo.append(override(obj, wrappers))
                self.timed.extend((owner, m) for m in wrappers)

    def _targets(self, engine):
        """(owner name, object, where) for every object the table may name."""
        yield "(model)", engine, "engine"
        for layer in getattr(engine, "layers", []):
            self.order.append(layer.name)
            yield layer.name, layer, "layer"
            if getattr(layer, "neurons", None) is not None:
                yield layer.name, layer.neurons, "neurons"
        for i, block in enumerate(getattr(engine, "blocks", [])):
            yield f"block.{i}", block, "block"
            if getattr(block, "attn", None) is not None:
                yield f"block.{i}.attn", block.attn, "attention"
        if getattr(engine, "head", None) is not None:
            yield "head", engine.head, "head"
            self.order.append("head")
        module = sys.modules.get(type(engine).__module__)
        if module is not None:
            yield None, module, "module"

    def _wrapper(self, owner, stage_of, hook, original, obj):
        before, after = hook.work if hook.work is not None else (None, None)
        stage = stage_of(obj) if callable(stage_of) else stage_of
        if hook.unit is not None:
            self.units[stage] = hook.unit
        local, clock, lock = self._local, self.clock, self._lock
        # the root: the engine's run or step; a pipeline stage on another thread books that
        # thread's time as the root's; the pipeline itself books its threads' idle time
        root = hook.where == "engine" and hook.method in ("run", "step")
        stage_root = hook.method == "_pipeline_stage"
        pipeline = hook.method == "run_pipeline"
        unit = hook.unit

        def timed(*args, **kwargs):
            stack = getattr(local, "stack", None)
            if stack is None:
                stack = local.stack = []
            ident = threading.get_ident()
            main = ident == self._main or ident in self._helpers
            if root and not stack and self._main is None:
                self._main, main = ident, True
            helper = stage_root and not stack and not main and self._main is not None
            if helper:
                with lock:
                    self._helpers.add(ident)
                main = True
            busy_before = self._helper_busy if pipeline else 0.0
            who = owner if owner is not None else (stack[-1].owner if stack else "(model)")
            state = before(obj, args, kwargs) if before is not None else None
            frame = _Frame(who, stage, clock())
            stack.append(frame)
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = clock() - frame.start
                stack.pop()
                own = elapsed - frame.children
                work = after(state) if after is not None else None
                if stack:
                    parent = stack[-1]
                    parent.children += elapsed
                    inner = parent.child_work
                    for u, w in frame.child_work.items():
                        if u != unit:
                            inner[u] = inner.get(u, 0) + w
                    if work is not None:  # inclusive: it holds same-unit work inside it
                        inner[unit] = inner.get(unit, 0) + work
                if work is not None:
                    work -= frame.child_work.get(unit, 0)
                key = (who, stage)
                with lock:
                    if helper:
                        self._helpers.discard(ident)
                        self._helper_busy += elapsed
                    if main:
                        self.wall[key] = self.wall.get(key, 0.0) + own
                        if pipeline:  # the other threads' time in it, idle where not busy
                            held = elapsed * _pipeline_helpers(args)
                            self.wall[key] += held - (self._helper_busy - busy_before)
                            self.total_s += held
                        if root and not stack:
                            self.runs += 1
                            self.total_s += elapsed
                            self.wall_s += elapsed
                            self._main = None
                    if work is not None:
                        k = self.kernel.setdefault(key, [0.0, 0])
                        k[0] += own
                        k[1] += work

        return timed

    def _wrap_function(self, module, hook) -> None:
        original = getattr(module, hook.method, None)
        if not callable(original):
            return
        setattr(module, hook.method, self._wrapper(None, hook.stage, hook, original, module))
        self._undo.append(lambda: setattr(module, hook.method, original))
        self.timed.append((module.__name__, hook.method))



def _pipeline_helpers(args) -> int:
    """Threads besides the caller that ``run_pipeline(stages, edges, threads)`` holds."""
    from ..runtime import engine_threads, in_part

    threads = args[2] if len(args) > 2 else 1
    return 0 if in_part() else max(0, min(threads, engine_threads()) - 1)


def _rank(order: list[str], owner: str) -> float:
    """Forward-order position of an owner: a layer's own; a block or attention operator just
    after its last layer; the model last."""
    if owner in order:
        return order.index(owner)
    inside = [i for i, name in enumerate(order) if name.startswith(owner + ".")]
    return max(inside) + 0.5 if inside else len(order) + 1.0


def profile_table(prof: Profiler, samples: int, peaks: dict | None = None) -> dict:
    """The profile as plain data: per stage and per (layer, stage), ms per sample, share of the
    wall time, work and its rate against the stage's kernel peak. The stages' ms add up to the
    total (``other`` holds the model's remainder)."""
    peaks = peaks or {}
    n = max(samples, 1)
    total_ms = prof.total_s * 1e3 / n

    def rate(key_list):
        secs = sum(prof.kernel[k][0] for k in key_list if k in prof.kernel)
        work = sum(prof.kernel[k][1] for k in key_list if k in prof.kernel)
        return work, (work / secs if secs > 0 and work else None)

    def peak_cells(stage, ops_per_s):
        peak = peaks.get(PEAK_OF_STAGE.get(stage, ""), {}).get("ops_per_s")
        return peak, (ops_per_s / peak if peak and ops_per_s else None)

    stages = []
    for stage in STAGES:
        keys = [k for k in set(prof.wall) | set(prof.kernel) if k[1] == stage]
        if not keys:
            continue
        ms = sum(prof.wall.get(k, 0.0) for k in keys) * 1e3 / n
        work, ops = rate(keys)
        peak, ratio = peak_cells(stage, ops)
        stages.append({"stage": stage, "ms": ms, "share": ms / total_ms if total_ms else 0.0,
                       "work": work / n, "unit": prof.units.get(stage), "ops_per_s": ops,
                       "peak_ops_per_s": peak, "of_peak": ratio})
    owners = sorted({k[0] for k in set(prof.wall) | set(prof.kernel)},
                    key=lambda o: (_rank(prof.order, o), o))
    layers = []
    for owner in owners:
        rows = []
        for stage in STAGES:
            key = (owner, stage)
            if key not in prof.wall and key not in prof.kernel:
                continue
            ms = prof.wall.get(key, 0.0) * 1e3 / n
            work, ops = rate([key])
            peak, ratio = peak_cells(stage, ops)
            rows.append({"stage": stage, "ms": ms, "work": work / n,
                         "unit": prof.units.get(stage), "ops_per_s": ops, "of_peak": ratio})
        layers.append({"layer": owner, "ms": sum(r["ms"] for r in rows), "stages": rows})
    return {"samples": samples, "runs": prof.runs, "total_ms": total_ms,
            "wall_ms": prof.wall_s * 1e3 / n,
            "stages": stages, "layers": layers,
            "timed_methods": sorted({m for _, m in prof.timed}),
            "stage_meaning": {s["stage"]: STAGE_MEANING[s["stage"]] for s in stages}}


def profile_engine(engine, samples: list, repeat: int = 1, peaks: dict | None = None,
                   clock=time.perf_counter) -> dict:
    """Run ``engine`` over every sample (its framed steps) ``repeat`` times with a
    :class:`Profiler` attached (the caller has warmed it up), and return :func:`profile_table`
    per sample run."""
    with Profiler(engine, clock=clock) as prof:
        for _ in range(repeat):
            for steps in samples:
                engine.run(steps)
    out = profile_table(prof, len(samples) * repeat, peaks)
    out["check_ms"] = float(np.sum([s["ms"] for s in out["stages"]]))
    return out
