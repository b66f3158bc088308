"""``eventformer bench``: engine vs dense PyTorch on real recordings, at calibrated firing rates.

Three sides are timed interleaved (per repeat round, per file: engine, torch eager, the same torch
model through ``torch.compile``) on the same number of threads; each side is reported as the
median with its min..max spread, and a side whose spread exceeds :data:`timing.UNSTABLE_RATIO` is
flagged. The speed-up is quoted against the faster dense side at that rate (:func:`faster_dense`:
the smaller sum of per-file medians), the ratio of the medians per file. Compiling (the compiled
side's first call) and every warm-up call are made apart, untimed; the compile time is reported
on its own. Accumulates per second are those of the scatter steps only, per second spent in them
(:mod:`.accounting`), never the GEMM steps' work. With ``profile`` each rate's engine is also run
once per file under :mod:`.profile` (where the time goes, per layer and stage), apart from the
timings.

The network (``BenchOptions.model``, :mod:`.networks`) is the full-size Spikformer-DVS with one
attention operator (``BenchOptions.attention``: ssa, ds2ta, ssa_bin or saformer), random weights
calibrated by the engine, its dense side the same model file through the package's plain-torch
Spikformer (:mod:`.dense_torch`, :mod:`eventformer.torch_model`); or a successor in its released
DVS Gesture configuration (``qkformer``, ``sdt``), random weights whose BatchNorms torch calibrates,
the model file built from that state_dict and the dense side the plain-torch reference holding it
(:mod:`eventformer.torch_successors`). An integer ``dtype`` the engine refuses for the network is
refused in one sentence (:class:`~eventformer.errors.EventformerError`), before any calibration.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EventformerError
from ..events import dense_frames, frame_events, read_events
from ..modelfile import load, save
from ..models import Spikformer, SpikformerConfig
from ..models.config import ATTENTION_OPERATOR_NAMES
from ..models.spikformer import ARITHMETICS
from ..report import EnergyTable, step_paths, summarize
from ..runtime import engine_threads, set_engine_threads
from .accounting import PathMeter
from .allocator import allocator_status
from .calibrate import calibrate, calibration_groups, random_model
from .networks import (BENCH_MODELS, BenchNetwork, SuccessorWeights,
                       arithmetic_refusal, cache_stem, calibrated_successor, engine_config,
                       full_size_reference, weights_path)
from .peaks import kernel_peaks
from .profile import profile_engine
from .roofline import scatter_roofline_by_width
from .timing import UNSTABLE_RATIO, OtherLoad, interleave, spread

DEFAULT_RATES = (0.05, 0.10, 0.15, 0.25)
# the timed sides, in their interleaved order; "dense" is torch eager
SIDE_LABELS = {"engine": "engine", "dense": "torch eager", "compiled": "torch.compile"}
DENSE_SIDES = ("dense", "compiled")
OTHER_LOAD_WARN = 0.25  # cores kept busy by other processes during the timings
DEFAULT_SAMPLES = 5  # dataset samples timed when no files are given

#: The operators the bench's full-size Spikformer-DVS models take (SPEC §4).
BENCH_OPERATORS = ("ssa", "ds2ta", "ssa_bin", "saformer")
#: The successors' own operators, in their layouts' order (what --model runs, not --attention).
OWN_OPERATORS = {"qkformer": "token_qk, ssa", "sdt": "sdsa"}


def default_gesture_dir() -> Path | None:
    """The shared real DVS Gesture segments beside the checkout, if present."""
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        cand = base / ".." / "shared" / "data" / "events" / "dvs-gesture"
        if cand.is_dir() and any(cand.glob("*.bs2")):
            return cand.resolve()
    return None


@dataclass
class Sample:
    path: str  # the file, or for a dataset sample its name (``file#segment``)
    events: int
    duration_us: int
    steps: list
    dense: np.ndarray
    recording: np.ndarray | None = None  # the events of a sample that is not a file of its own


@dataclass
class Inputs:
    """What the bench times and where it came from (said to the user and in the result)."""

    samples: list[Sample]
    source: str  # "files", "shared segments", "dvs-gesture" or "synthetic"
    description: str


@dataclass
class BenchOptions:
    files: list[str]
    rates: tuple[float, ...] = DEFAULT_RATES
    steps: int = 16
    repeat: int = 3
    seed: int = 0
    threads: int = field(default_factory=lambda: engine_threads())
    dense: bool = True
    compiled: bool = True  # also time the dense model through torch.compile (needs dense)
    profile: bool = False  # also profile the engine per layer and stage (bench.profile)
    cold_start: bool = True
    model: str = "spikformer"  # the network (BENCH_MODELS): Spikformer-DVS, qkformer or sdt
    attention: str | None = None  # Spikformer-DVS's attention operator (SPEC §4); None: ssa
    dtype: str = "float32"  # the engine's arithmetic: float32, float64, int16 or int8 (SPEC §6)
    cache_dir: str = field(default_factory=lambda: os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "eventformer", "bench"))
    config: object | None = None  # default: the full-size network at T = steps; else for
    #   spikformer a SpikformerConfig (with ``attention``), for a successor its torch reference's
    #   QKFormerConfig / SDTConfig (the model file's configuration follows from it)


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a bench: ``result`` holds what was measured so far (``interrupted`` set)."""

    def __init__(self, result: dict):
        super().__init__("bench interrupted")
        self.result = result


def check_options(opts: BenchOptions) -> None:
    """Raise EventformerError (one sentence) for options the bench cannot run with."""
    if not opts.files:
        raise EventformerError("no recordings to time")
    if not opts.rates:
        raise EventformerError("--rates is empty: give at least one firing rate")
    for r in opts.rates:
        if not (isinstance(r, (int, float)) and math.isfinite(r) and 0.0 < r < 1.0):
            raise EventformerError(f"--rates: each firing rate must be between 0 and 1 "
                                   f"(exclusive), got {r:g}")
    if len(set(opts.rates)) != len(opts.rates):
        raise EventformerError("--rates lists the same firing rate twice")
    for name, value in (("--steps", opts.steps), ("--repeat", opts.repeat),
                        ("--threads", opts.threads)):
        if int(value) < 1:
            raise EventformerError(f"{name} must be at least 1, got {value}")
    if int(opts.seed) < 0:
        raise EventformerError(f"--seed must be 0 or more, got {opts.seed}")
    if opts.dtype not in ARITHMETICS:
        raise EventformerError(f"--dtype must be one of {', '.join(ARITHMETICS)}, "
                               f"got {opts.dtype!r}")
    if opts.model not in BENCH_MODELS:
        raise EventformerError(f"--model must be one of {', '.join(BENCH_MODELS)}, "
                               f"got {opts.model!r}")
    if opts.attention is None:
        return
    if opts.model != "spikformer":
        raise EventformerError(f"--attention picks the operator of Spikformer-DVS's blocks; "
                               f"--model {opts.model} runs its own layout's "
                               f"({OWN_OPERATORS[opts.model]}): leave --attention out")
    if opts.attention not in ATTENTION_OPERATOR_NAMES:
        raise EventformerError(f"--attention: unknown attention operator {opts.attention!r} "
                               f"(known: {', '.join(ATTENTION_OPERATOR_NAMES)})")
    if opts.attention not in BENCH_OPERATORS:
        owner = next((m for m, ops in OWN_OPERATORS.items() if opts.attention in ops), None)
        raise EventformerError(f"--attention {opts.attention}: the bench's Spikformer-DVS blocks "
                               f"take {', '.join(BENCH_OPERATORS)}; {opts.attention} belongs to "
                               "another network's layout"
                               + (f": time that network with --model {owner}" if owner else ""))


def sample_from_events(name: str, events: np.ndarray, steps: int, size: int,
                       duration_us: int | None = None, keep: bool = False) -> Sample:
    """One sample framed for a ``size`` x ``size`` model: ``steps`` event lists (the engine's)
    and dense frames (torch's). ``keep``: hold the events (a sample that is no file of its
    own)."""
    if len(events) == 0:
        raise EventformerError(f"{name}: holds no events to time")
    try:
        sparse = frame_events(events, steps, size, size)
        dense = dense_frames(events, steps, size, size)
    except ValueError as exc:  # events outside the model's frame
        raise EventformerError(f"{name}: {exc}") from None
    if duration_us is None:
        duration_us = int(events["t"][-1] - events["t"][0])
    return Sample(name, len(events), duration_us, sparse, dense, events if keep else None)


def load_samples(files: list[str], steps: int, size: int) -> list[Sample]:
    samples = []
    for f in files:
        rec = read_events(f)
        samples.append(sample_from_events(f, rec.events, steps, size, rec.duration_us))
    return samples


def default_inputs(steps: int, size: int, count: int = DEFAULT_SAMPLES, log=None) -> Inputs:
    """What to time when no files are given: the real DVS Gesture segments beside the checkout
    (``../shared/data/events/dvs-gesture``) when they are there, else the first ``count`` test
    samples of DVS Gesture as ``infer --dataset dvs-gesture`` finds it: the real release
    ($EVENTFORMER_DATA or the cache), else the embedded synthetic set (generated on first use)."""
    folder = default_gesture_dir()
    if folder is not None:
        files = sorted(str(f) for f in folder.glob("*.bs2"))
        return Inputs(load_samples(files, steps, size), "shared segments",
                      f"the {len(files)} real DVS Gesture segments in {folder}")
    from ..datasets import open_dataset

    data = open_dataset("dvs-gesture", None, "test", synthetic_fallback=True,
                        log=lambda m: None if log is None else log(m))
    samples = [sample_from_events(ref.name, events, steps, size, keep=True)
               for ref, events in data.iter_events(limit=count)]
    if getattr(data, "synthetic", False):
        return Inputs(samples, "synthetic",
                      f"{len(samples)} samples of the embedded synthetic DVS Gesture test set "
                      "(no real recordings found: pass event files, or set EVENTFORMER_DATA to "
                      "the DVS Gesture release, to time real ones)")
    return Inputs(samples, "dvs-gesture",
                  f"the first {len(samples)} DVS Gesture test samples in {data.root}")


def calibrated_model(network: BenchNetwork, samples: list[Sample], rate: float, seed: int,
                     cache_dir: str, log, progress=None) -> str:
    """Path of a model file calibrated to ``rate`` (cached by network, seed, rate and input
    files). A successor's state_dict lies beside it (:func:`.networks.weights_path`)."""
    key = hashlib.sha256(json.dumps([network.cache_key(), seed, rate,
                                     [(s.path, s.events) for s in samples]]).encode()).hexdigest()
    path = os.path.join(cache_dir, f"{cache_stem(network)}-seed{seed}-rate{rate:.2f}"
                                   f"-{key[:10]}.h5")
    successor = network.reference is not None
    if os.path.exists(path) and (not successor or os.path.exists(weights_path(path))):
        return path
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as exc:
        raise EventformerError(f"cannot create the calibrated-model cache {cache_dir}: "
                               f"{exc.strerror or exc}") from None
    if not os.access(cache_dir, os.W_OK):
        raise EventformerError(f"cannot write the calibrated-model cache {cache_dir} "
                               "(permission denied)")
    start = time.perf_counter()
    log(f"calibrating BatchNorm for {rate:.0%} firing on {len(samples)} recordings "
        "(once; cached)...")
    task = f"calibrating {rate:.0%}"
    tmp = f"{path}.{os.getpid()}.tmp"
    if successor:  # torch calibrates the state_dict's BatchNorms in one pass over the inputs
        if progress is not None:
            progress(task, 0, None)
        model, weights = calibrated_successor(network, np.stack([s.dense for s in samples], 1),
                                              rate, seed)
        weights.save(tmp)
        os.replace(tmp, weights_path(path))
        if progress is not None:
            progress(task, 1, 1)
    else:
        groups = len(calibration_groups(network.config))
        if progress is not None:
            progress(task, 0, groups)
        model = calibrate(random_model(network.config, seed), [s.steps for s in samples], rate,
                          progress=None if progress is None else
                          (lambda done, total: progress(task, done, total)))
    save(tmp, model)
    os.replace(tmp, path)  # an interrupted calibration leaves no half-written cache entry
    log(f"  calibrated in {time.perf_counter() - start:.1f} s -> {path}")
    return path


def time_best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_start(model_path: str, file: str | Sample, dtype: str = "float32") -> dict:
    """Wall time of ``eventformer infer`` in a fresh process: empty Numba cache, then warm. A
    sample that is no file of its own is written to a temporary .npy first."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        if isinstance(file, Sample):
            if file.recording is None:
                file = file.path
            else:
                from ..events import write_npy

                path = os.path.join(cache, "sample.npy")
                write_npy(path, file.recording)
                file = path
        cmd = [sys.executable, "-m", "eventformer_cli.main", "infer", file, "-w", model_path,
               "--dtype", dtype, "--json"]
        for label in ("cold_s", "warm_s"):
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            out[label] = time.perf_counter() - start
            if proc.returncode != 0:
                raise EventformerError(f"start-up measurement failed: {proc.stderr.strip()[:200]}")
    return out


def _geomean(values) -> float | None:
    values = [v for v in values if v and v > 0]
    return float(np.exp(np.mean(np.log(values)))) if values else None


def faster_dense(rows: list[dict]) -> str | None:
    """The faster dense side ("dense": torch eager, or "compiled") over a rate's file rows: the
    smaller sum of per-file medians, on the files timed on both (every file, unless
    interrupted); None when no dense side was timed."""
    sides = [s for s in DENSE_SIDES if any(s in r for r in rows)]
    if len(sides) < 2:
        return sides[0] if sides else None
    both = [r for r in rows if all(s in r for s in sides)]
    if not both:  # interrupted before any file had both: the side timed on more files
        return max(sides, key=lambda s: sum(s in r for r in rows))
    return min(sides, key=lambda s: sum(r[s]["median_s"] for r in both))


class _RateRun:
    """One firing rate: untimed accounting rows per file, then interleaved timings."""

    def __init__(self, rate: float, model_path: str, samples: list[Sample], steps: int,
                 dense: bool, attention: str = "ssa", compiled: bool = False):
        self.rate, self.model_path, self.samples, self.steps = rate, model_path, samples, steps
        self.attention = attention
        self.sides = ("engine",) + (("dense",) if dense else ()) + \
            (("compiled",) if dense and compiled else ())
        self.rows: list[dict] = []
        self.layer_density: dict[str, list] = {}
        self.times = {side: [[] for _ in samples] for side in self.sides}
        self.warnings: list[str] = []
        self.other_load: float | None = None  # cores used by other processes while timing
        self.compile_s: float | None = None  # the compiled side's first call
        self.profile: dict | None = None

    def record(self, side: str, i: int, seconds: float) -> None:
        self.times[side][i].append(seconds)

    def account(self, engine, dense_forward, compiled_forward=None) -> None:
        """One untimed run per file (also its warm-up): predictions, counts, the path split."""
        for s in self.samples:
            engine.clear_stats()
            with PathMeter(engine) as meter:
                logits = engine.run(s.steps)
            stats = engine.layer_stats()
            ops = summarize(stats, self.steps, EnergyTable.for_arithmetic(engine.arithmetic))
            split = meter.summary()
            split["ac_head"] = int(stats[-1]["ac"])
            split["ac_unattributed"] = ops["ac"] - (split["ac_scatter"] + split["ac_gemm_steps"]
                                                    + split["ac_attention"] + split["ac_head"])
            row = {"file": os.path.basename(s.path), "events": s.events,
                   "duration_s": s.duration_us / 1e6, "prediction": int(np.argmax(logits)),
                   "ac": ops["ac"], "mac": ops["mac"], "dense_mac": ops["dense_mac"], **split,
                   "firing_rate": sum(x["spikes"] for x in stats[:-1])
                   / max(1, sum(x["neurons"] for x in stats[:-1]) * self.steps)}
            if dense_forward is not None:
                dense_logits = dense_forward(s.dense)
                row.update({"dense_prediction": int(np.argmax(dense_logits)),
                            "same_prediction": int(np.argmax(dense_logits)) == row["prediction"],
                            "max_logit_diff": float(np.abs(dense_logits - logits).max())})
            if compiled_forward is not None:
                compiled_logits = compiled_forward(s.dense)
                row.update({"compiled_prediction": int(np.argmax(compiled_logits)),
                            "compiled_max_logit_diff":
                                float(np.abs(compiled_logits - logits).max())})
            self.rows.append(row)
            for x in stats[:-1]:
                path = step_paths(x["sparse_steps"], x["dense_steps"], x.get("gather_steps", 0))
                path = path if not path.startswith("mixed") else "mixed"
                # a synapse without a LIF (a membrane stream's proj, fc1, fc2): no firing rate
                fired = x["spikes"] / (x["neurons"] * self.steps) if x["neurons"] else None
                self.layer_density.setdefault(x["name"], []).append(
                    (x["input_density"], path, fired))

    def timed(self) -> int:
        return sum(len(t) for per_side in self.times.values() for t in per_side)

    def entry(self, complete: bool) -> dict:
        """The rate's result from what was measured (files never timed are left out)."""
        rows = []
        for i, base in enumerate(self.rows):
            if not self.times["engine"][i]:
                continue
            row = dict(base)
            eng = spread(self.times["engine"][i])
            row["engine"] = eng.to_dict()
            row.update({"engine_s": eng.median, "events_per_s": base["events"] / eng.median,
                        "realtime_factor": base["duration_s"] / eng.median})
            for side in DENSE_SIDES:
                if side in self.times and self.times[side][i]:
                    den = spread(self.times[side][i])
                    row[side] = den.to_dict()
                    row[f"{side}_s"] = den.median
                    row[f"speedup_{'eager' if side == 'dense' else side}"] = \
                        den.median / eng.median
            rows.append(row)
        baseline = faster_dense(rows)
        for row, i in zip(rows, [i for i in range(len(self.rows)) if self.times["engine"][i]]):
            if baseline is not None and baseline in row:
                pairs = [d / e for e, d in zip(self.times["engine"][i], self.times[baseline][i])]
                row.update({"speedup": row[f"{baseline}_s"] / row["engine_s"],
                            "speedup_pairs": [min(pairs), max(pairs)]})
        self.warnings = []
        for side in self.sides:
            bad = [r for r in rows if side in r and r[side]["unstable"]]
            if bad:
                worst = max(bad, key=lambda r: r[side]["spread"])[side]
                name = max(bad, key=lambda r: r[side]["spread"])["file"]
                self.warnings.append(
                    f"warning: {SIDE_LABELS[side]} times at {self.rate:.0%} firing vary up to "
                    f"{worst['spread']:.1f}x between repeats on {len(bad)} file(s) ({name}: "
                    f"{worst['min_s']:.3f}..{worst['max_s']:.3f} s): the machine was busy; "
                    "medians are reported")
        if self.other_load is not None and self.other_load > OTHER_LOAD_WARN:
            self.warnings.append(
                f"warning: other processes kept {self.other_load:.1f} of {os.cpu_count()} cores "
                f"busy during the timings at {self.rate:.0%}: every side was slowed, torch's "
                "threads most (they wait on each other); rerun on a quiet machine or with "
                "--threads 1")
        scatter_ac = sum(r["ac_scatter"] for r in rows)
        scatter_s = sum(r["scatter_s"] for r in rows)
        entry = {"target_rate": self.rate, "attention": self.attention,
                 "model": self.model_path, "complete": complete,
                 "files": rows, "other_load_cores": self.other_load,
                 "busy": self.other_load is not None and self.other_load > OTHER_LOAD_WARN,
                 "unstable": {side: any(side in r and r[side]["unstable"] for r in rows)
                              for side in self.sides},
                 "scatter_ac_per_s": scatter_ac / scatter_s if scatter_s > 0 else None,
                 "layers": [{"name": k, "input_density": statistics.mean(v[0] for v in vals),
                             "firing_rate": None if vals[0][2] is None else
                             statistics.mean(v[2] for v in vals),
                             "paths": sorted({v[1] for v in vals})}
                            for k, vals in self.layer_density.items()]}
        if "dense" in self.times:
            entry.update({"baseline": baseline,
                          "baseline_label": SIDE_LABELS.get(baseline) if baseline else None,
                          "speedup_geomean": _geomean(r.get("speedup") for r in rows),
                          "speedup_geomean_eager": _geomean(r.get("speedup_eager")
                                                            for r in rows)})
        if "compiled" in self.times:
            entry.update({"compile_s": self.compile_s,
                          "speedup_geomean_compiled": _geomean(r.get("speedup_compiled")
                                                               for r in rows)})
        if self.profile is not None:
            self.profile["timed_engine_ms"] = (1e3 * statistics.mean(r["engine_s"] for r in rows)
                                               if rows else None)
            entry["profile"] = self.profile
        return entry


def bench_network(opts: BenchOptions) -> BenchNetwork:
    """The network the bench times: ``opts.model`` at full size (Spikformer-DVS with the
    attention operator ``opts.attention``; a successor's DVS Gesture release), or
    ``opts.config``."""
    config = opts.config
    if opts.model == "spikformer":
        if config is None:
            config = SpikformerConfig(steps=opts.steps, attention=opts.attention or "ssa")
        if not isinstance(config, SpikformerConfig):
            raise TypeError(f"--model spikformer takes a SpikformerConfig, got "
                            f"{type(config).__name__}")
        return BenchNetwork("spikformer", config)
    reference = config if config is not None else full_size_reference(opts.model, opts.steps)
    expected = "QKFormerConfig" if opts.model == "qkformer" else "SDTConfig"
    if type(reference).__name__ != expected:
        raise TypeError(f"--model {opts.model} takes a {expected}, got "
                        f"{type(reference).__name__}")
    return BenchNetwork(opts.model, engine_config(reference), reference)


def bench_config(opts: BenchOptions) -> SpikformerConfig:
    """The engine's configuration of the network the bench times (:func:`bench_network`)."""
    return bench_network(opts).config


def _no_progress(task: str, done: int, total: int | None) -> None:
    pass


def run_bench(opts: BenchOptions, log=print, warn=None, *, clock=time.perf_counter,
              samples: list[Sample] | None = None, progress=None,
              compile_forward=None) -> dict:
    """Calibrate, then time the engine, torch eager and torch.compile interleaved at each rate
    (and profile the engine with ``opts.profile``); see the module doc.

    ``warn`` gets the one-line warnings (default: ``log``); ``clock`` times the interleaved runs;
    ``samples`` are the loaded ``opts.files`` when the caller has them already. ``progress(task,
    done, total)`` hears of long work (calibration, compiling with ``total`` None, the timing
    runs, profiling); a task ends when ``done == total``. ``compile_forward(model)`` builds the
    compiled side (default :func:`.dense_torch.build_compiled_forward`; it compiles on its first
    call). Ctrl-C raises :class:`BenchInterrupted` carrying the partial result.
    """
    warn = warn or log
    progress = progress or _no_progress
    check_options(opts)
    network = bench_network(opts)
    if network.reference is not None:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise EventformerError(f"--model {network.name} needs torch: its BatchNorms are "
                                   "calibrated in torch (pip install 'eventformer[torch]')"
                                   ) from None
    set_engine_threads(opts.threads)
    config = network.config
    opts.steps = config.steps
    if network.name == "spikformer":
        opts.attention = config.attention
    if samples is None:
        samples = load_samples(opts.files, opts.steps, config.image_size)
    torch_threads = None
    compiled = {"requested": bool(opts.dense and opts.compiled), "available": None,
                "reason": None, "backend": "inductor", "mode": "default"}
    if opts.dense:
        try:
            import torch

            torch.set_num_threads(opts.threads)
            torch_threads = torch.get_num_threads()
            from .dense_torch import (CompileUnavailable, build_compiled_forward,
                                      build_dense_forward, first_call)
        except ImportError:
            log("torch is not installed: skipping the dense PyTorch baseline "
                "(pip install 'eventformer[torch]')")
            opts.dense = False
            compiled["requested"] = False
    if not opts.dense:
        opts.compiled = False
    elif not opts.compiled:
        compiled["reason"] = "skipped (--no-compile)"
    compile_forward = compile_forward or (build_compiled_forward if opts.compiled else None)
    result = {"machine": {"cpus": os.cpu_count(), "threads": engine_threads(),
                          "torch_threads": torch_threads},
              "allocator": allocator_status(),
              "timing": {"order": "interleaved: each repeat round times every file on the "
                                  "engine, then torch eager, then torch.compile",
                         "repeat": opts.repeat, "statistic": "median",
                         "warm_up": "one untimed call per file and side before the timings; "
                                    "the compiled side's first call (compiling) apart",
                         "unstable_if_max_over_min_above": UNSTABLE_RATIO},
              "model": network.name, "network": network.summary(),
              "attention": network.operators, "dtype": opts.dtype,
              "dense_baseline": _dense_baseline(network) if opts.dense else None,
              "compiled": compiled,
              "speedup_against": "the faster of torch eager and torch.compile at each rate "
                                 "(sum of per-file medians)" if opts.dense else None,
              "steps": opts.steps, "files": [s.path for s in samples], "rates": [],
              "warnings": [], "unstable": False, "busy": False, "interrupted": False}
    refusal = arithmetic_refusal(network, opts.dtype)
    if refusal is not None:  # said before minutes of calibration, not after
        raise EventformerError(f"the engine does not run the {network.title} in {opts.dtype} "
                               f"({refusal})")
    current = None
    peaks = None
    try:
        widths = network.synapse_widths()
        progress("scatter-add roofline", 0, None)
        by_width = scatter_roofline_by_width(widths)
        progress("scatter-add roofline", 1, 1)
        result["machine"].update({"scatter_roofline_ac_per_s": max(by_width.values()),
                                  "scatter_roofline_by_width": by_width})
        model_paths = {}
        for rate in opts.rates:
            model_paths[rate] = calibrated_model(network, samples, rate, opts.seed,
                                                 opts.cache_dir, log, progress)
            model = load(model_paths[rate])
            engine = Spikformer(model, dtype=opts.dtype)
            engine.run(samples[0].steps)  # compile / warm caches outside the timings
            dense_forward = compiled_forward = None
            compile_s = None
            # the dense side: the model file (Spikformer), or the state_dict it was built from
            dense_model = model if network.reference is None else \
                SuccessorWeights.load(network.reference, weights_path(model_paths[rate]))
            if opts.dense:
                dense_forward = build_dense_forward(dense_model)
                dense_forward(samples[0].dense)
            if opts.compiled:
                task = (f"compiling the dense model with torch.compile for {rate:.0%} "
                        "(minutes the first time; inductor caches on disk)")
                progress(task, 0, None)
                try:
                    compiled_forward = compile_forward(dense_model)
                    compile_s = first_call(compiled_forward, samples[0].dense)
                    compiled["available"] = True
                except CompileUnavailable as exc:
                    compiled.update({"available": False, "reason": str(exc)})
                    warn(f"warning: {exc}; timing torch eager only")
                    opts.compiled, compiled_forward = False, None
                finally:
                    progress(task, 1, 1)
                if compiled_forward is not None:
                    log(f"  torch.compile: {compile_s:.1f} s to compile for {rate:.0%} "
                        "(reported apart, not in the per-sample times)")
            current = _RateRun(rate, model_paths[rate], samples, opts.steps, opts.dense,
                               network.operators, compiled=compiled_forward is not None)
            current.compile_s = compile_s
            current.account(engine, dense_forward, compiled_forward)
            sides = {"engine": lambda i, e=engine: e.run(samples[i].steps)}
            if dense_forward is not None:
                sides["dense"] = lambda i, f=dense_forward: f(samples[i].dense)
            if compiled_forward is not None:
                sides["compiled"] = lambda i, f=compiled_forward: f(samples[i].dense)
            task = f"timing {rate:.0%} firing"
            total = opts.repeat * len(samples) * len(sides)
            progress(task, 0, total)

            def record(side, i, seconds, run=current, task=task, total=total):
                run.record(side, i, seconds)
                progress(task, run.timed(), total)

            busy = OtherLoad()
            try:
                with busy:
                    interleave(len(samples), sides, opts.repeat, record, clock)
            finally:
                current.other_load = busy.cores
            if opts.profile:
                if peaks is None:
                    progress("measuring the scatter, gather and GEMM kernels' peaks", 0, None)
                    peaks = kernel_peaks(engine)
                    progress("measuring the scatter, gather and GEMM kernels' peaks", 1, 1)
                    result["machine"]["kernel_peaks"] = peaks
                task = f"profiling {rate:.0%} firing"
                progress(task, 0, None)
                current.profile = profile_engine(engine, [s.steps for s in samples], 1, peaks)
                progress(task, 1, 1)
            _add_entry(result, current, True, warn)
            current = None
        if opts.cold_start:
            log("measuring cold start (empty Numba cache) and warm start of `eventformer infer`...")
            result["start"] = measure_start(model_paths[opts.rates[0]], samples[0], opts.dtype)
    except KeyboardInterrupt:
        result["interrupted"] = True
        if current is not None and current.timed():
            _add_entry(result, current, False, warn)
        raise BenchInterrupted(result) from None
    return result


def _dense_baseline(network: BenchNetwork) -> str:
    if network.reference is None:
        return ("eventformer.torch_model.SpikformerRef (folded from the model file; float32, "
                "batch 1, eval, no autograd)")
    ref = "QKFormerRef" if network.name == "qkformer" else "SpikeDrivenTransformerRef"
    return (f"eventformer.torch_successors.{ref} (the state_dict the model file was built from, "
            "BatchNorms unfolded; float32, batch 1, eval, no autograd)")


def _add_entry(result: dict, run: _RateRun, complete: bool, warn) -> None:
    entry = run.entry(complete)
    result["rates"].append(entry)
    for line in run.warnings:
        warn(line)
    result["warnings"].extend(run.warnings)
    result["unstable"] = result["unstable"] or any(entry["unstable"].values())
    result["busy"] = result["busy"] or entry["busy"]
