"""``eventformer bench``: engine vs dense PyTorch on real recordings, at calibrated firing rates."""

from __future__ import annotations

import hashlib
import json
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
from ..report import summarize
from ..runtime import engine_threads, set_engine_threads
from .calibrate import calibrate, random_model
from .roofline import scatter_add_roofline

DEFAULT_RATES = (0.05, 0.10, 0.15, 0.25)


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
    path: str
    events: int
    duration_us: int
    steps: list
    dense: np.ndarray


@dataclass
class BenchOptions:
    files: list[str]
    rates: tuple[float, ...] = DEFAULT_RATES
    steps: int = 16
    repeat: int = 3
    seed: int = 0
    threads: int = field(default_factory=lambda: engine_threads())
    dense: bool = True
    cold_start: bool = True
    cache_dir: str = field(default_factory=lambda: os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "eventformer", "bench"))


def load_samples(files: list[str], steps: int, size: int) -> list[Sample]:
    samples = []
    for f in files:
        rec = read_events(f)
        samples.append(Sample(f, len(rec.events), rec.duration_us,
                              frame_events(rec.events, steps, size, size),
                              dense_frames(rec.events, steps, size, size)))
    return samples


def calibrated_model(config: SpikformerConfig, samples: list[Sample], rate: float, seed: int,
                     cache_dir: str, log) -> str:
    """Path of a model file calibrated to ``rate`` (cached by seed, rate and input files)."""
    key = hashlib.sha256(json.dumps([config.to_dict(), seed, rate,
                                     [(s.path, s.events) for s in samples]]).encode()).hexdigest()
    path = os.path.join(cache_dir, f"spikformer-dvs-seed{seed}-rate{rate:.2f}-{key[:10]}.h5")
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    start = time.perf_counter()
    log(f"calibrating BatchNorm for {rate:.0%} firing on {len(samples)} recordings "
        "(once; cached)...")
    model = calibrate(random_model(config, seed), [s.steps for s in samples], rate)
    save(path, model)
    log(f"  calibrated in {time.perf_counter() - start:.1f} s -> {path}")
    return path


def time_best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_start(model_path: str, file: str) -> dict:
    """Wall time of ``eventformer infer`` in a fresh process: empty Numba cache, then warm."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cmd = [sys.executable, "-m", "eventformer_cli.main", "infer", file, "-w", model_path,
               "--json"]
        for label in ("cold_s", "warm_s"):
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            out[label] = time.perf_counter() - start
            if proc.returncode != 0:
                raise EventformerError(f"start-up measurement failed: {proc.stderr.strip()[:200]}")
    return out


def run_bench(opts: BenchOptions, log=print) -> dict:
    set_engine_threads(opts.threads)
    config = SpikformerConfig(steps=opts.steps)
    samples = load_samples(opts.files, opts.steps, config.image_size)
    dense_forward = None
    if opts.dense:
        try:
            import torch

            torch.set_num_threads(opts.threads)
            from .dense_torch import build_dense_forward
        except ImportError:
            log("torch is not installed: skipping the dense PyTorch baseline "
                "(pip install 'eventformer[torch]')")
            opts.dense = False
    roof = scatter_add_roofline()
    result = {"machine": {"cpus": os.cpu_count(), "threads": opts.threads,
                          "scatter_roofline_ac_per_s": roof},
              "steps": opts.steps, "files": [s.path for s in samples], "rates": []}
    model_paths = {}
    for rate in opts.rates:
        model_paths[rate] = calibrated_model(config, samples, rate, opts.seed, opts.cache_dir, log)
        model = load(model_paths[rate])
        engine = Spikformer(model)
        engine.run(samples[0].steps)  # compile / warm caches outside the timings
        if opts.dense:
            dense_forward = build_dense_forward(model)
            dense_forward(samples[0].dense)
        rows = []
        layer_density: dict[str, list] = {}
        for s in samples:
            engine.clear_stats()
            t_engine = time_best(lambda: engine.run(s.steps), opts.repeat)
            engine.clear_stats()
            logits = engine.run(s.steps)
            stats = engine.layer_stats()
            ops = summarize(stats, opts.steps)
            row = {"file": os.path.basename(s.path), "events": s.events,
                   "duration_s": s.duration_us / 1e6, "engine_s": t_engine,
                   "prediction": int(np.argmax(logits)),
                   "events_per_s": s.events / t_engine,
                   "realtime_factor": (s.duration_us / 1e6) / t_engine,
                   "ac": ops["ac"], "mac": ops["mac"], "dense_mac": ops["dense_mac"],
                   "ac_per_s": ops["ac"] / t_engine,
                   "firing_rate": sum(x["spikes"] for x in stats[:-1])
                   / max(1, sum(x["neurons"] for x in stats[:-1]) * opts.steps)}
            if opts.dense:
                t_dense = time_best(lambda: dense_forward(s.dense), opts.repeat)
                dense_logits = dense_forward(s.dense)
                row.update({"dense_s": t_dense, "speedup": t_dense / t_engine,
                            "dense_prediction": int(np.argmax(dense_logits)),
                            "same_prediction": int(np.argmax(dense_logits)) == row["prediction"],
                            "max_logit_diff": float(np.abs(dense_logits - logits).max())})
            rows.append(row)
            for x in stats[:-1]:
                path = ("sparse" if x["dense_steps"] == 0 else
                        "dense" if x["sparse_steps"] == 0 else "mixed")
                layer_density.setdefault(x["name"], []).append((x["input_density"], path,
                                                                 x["spikes"] / (x["neurons"] * opts.steps)))
        entry = {"target_rate": rate, "model": model_paths[rate], "files": rows,
                 "layers": [{"name": k, "input_density": statistics.mean(v[0] for v in vals),
                             "firing_rate": statistics.mean(v[2] for v in vals),
                             "paths": sorted({v[1] for v in vals})}
                            for k, vals in layer_density.items()]}
        if opts.dense:
            entry["speedup_geomean"] = float(np.exp(np.mean([np.log(r["speedup"]) for r in rows])))
        result["rates"].append(entry)
    if opts.cold_start:
        log("measuring cold start (empty Numba cache) and warm start of `eventformer infer`...")
        result["start"] = measure_start(model_paths[opts.rates[0]], samples[0].path)
    return result
