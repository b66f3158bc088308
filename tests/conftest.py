"""Shared test fixtures: where ../shared is, and skip reasons when it or torch is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GESTURE_DIR = SHARED / "data" / "events" / "dvs-gesture"
MODELS_DIR = SHARED / "data" / "models"
OFFICIAL_CKPT = MODELS_DIR / "spikformer-dvs-calibrated.pth"
GOLDEN = MODELS_DIR / "spikformer-dvs-calibrated.golden.json"

# the plain-torch reference lives beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))


def one_error_line(result) -> str:
    """A CLI run that failed as a user's mistake should: exit code 2, one line, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def record_spikes(engine) -> dict:
    """Capture every layer's spike indices per step, where its neurons fire (wrapping them):
    ``{layer name: [int32 indices of step 0, step 1, ...]}``. ``engine``: an engine, or any
    object with ``layers``, or a list of layers; layers without neurons (a stage without a LIF,
    a synapse whose current is its output) are left out."""
    import numpy as np

    store: dict = {}
    for layer in getattr(engine, "layers", engine):
        neurons = getattr(layer, "neurons", None)
        if neurons is None:
            continue

        def fire(current, counters, _fire=neurons.fire, _name=layer.name):
            out = _fire(current, counters)
            store.setdefault(_name, []).append(out.copy())
            return out

        def fire_flags(current, counters, _fire=neurons.fire_flags, _name=layer.name,
                       _size=neurons.size):
            flags, n = _fire(current, counters)
            spikes = np.flatnonzero(flags[:_size]).astype(np.int32)
            assert spikes.size == n
            store.setdefault(_name, []).append(spikes)
            return flags, n

        neurons.fire = fire
        neurons.fire_flags = fire_flags
    return store


def ref_spike_sets(spikes: dict, name: str) -> list:
    """A torch reference's recorded spikes of one layer as per-step flat indices in the engine's
    layout (HWC for convolutions, [token, channel] for blocks)."""
    import numpy as np

    s = spikes[name][:, 0].double().numpy()  # [T, C, H, W] or [T, C, N]
    s = s.transpose(0, 2, 3, 1) if s.ndim == 4 else s.transpose(0, 2, 1)
    return [np.flatnonzero(step.reshape(-1)) for step in s]


def need_gesture():
    if not GESTURE_DIR.is_dir():
        pytest.skip(f"real DVS Gesture segments not found at {GESTURE_DIR} (../shared is absent)")
    return GESTURE_DIR


def need_official():
    if not OFFICIAL_CKPT.is_file() or not GOLDEN.is_file():
        pytest.skip(f"official checkpoint and golden outputs not found in {MODELS_DIR}")
    need_gesture()


# --------------------------------------------------------------------------------------------------
# Models whose every layer fires
# --------------------------------------------------------------------------------------------------


# Layer stats that say which path each step took: offline, a linear layer whose dense steps
# share one GEMM goes dense from a lower density (layers.base.LINEAR_DENSE_ABOVE) than step()
PATH_FIELDS = ("dense_mac", "sparse_steps", "dense_steps", "gather_steps")


def without_paths(layer_stats: list) -> list:
    """Layer stats without the fields that say which path each step took (the same work,
    spikes and counts otherwise)."""
    return [{k: v for k, v in row.items() if k not in PATH_FIELDS} for row in layer_stats]


def drive(engine, steps: list, how: str):
    """Logits of one sample of event steps through ``engine``: offline (``how`` "run", layer by
    layer) or time-major (``how`` "step", as a stream drives it, after a reset)."""
    if how == "run":
        return engine.run(steps)
    engine.reset()
    for idx, cnt in steps:
        engine.step(idx, cnt)
    return engine.logits()


def assert_every_layer_fires(layer_stats) -> None:
    """Every spiking layer of a run (engine ``layer_stats()`` rows or the CLI's ``"layers"``, each
    with "name" and "spikes"; the head row is skipped) spiked at least once. Two paths that agree
    on a silent network prove nothing."""
    rows = [r for r in layer_stats if r["name"] != "head"]
    assert rows, "no layer rows"
    silent = [r["name"] for r in rows if r["spikes"] <= 0]
    assert not silent, f"silent layers (the comparison would be vacuous): {silent}"


def calibrated_checkpoint(path, config, events, steps: int, *, sensor: int | None = None,
                          seed: int = 0, wrap: bool = True):
    """Save a tiny random checkpoint (``torch_reference.RefConfig`` ``config``) whose BatchNorms
    are calibrated on ``events`` (a list of event arrays: the test's own kind of input), framed
    as the engine frames them (``split_by="number"`` into ``steps`` steps, a ``sensor``-wide
    recording downsampled to the model's input), so that every LIF fires, the attention LIF
    included. Returns ``path``."""
    import torch
    from torch_reference import calibrated_state_dict

    from eventformer.events import dense_frames

    size = config.image_size
    factor = (sensor or size) // size
    frames = []
    for ev in events:
        ev = ev.copy()
        ev["x"] //= factor
        ev["y"] //= factor
        frames.append(dense_frames(ev, steps, size, size))
    sd = calibrated_state_dict(config, frames, seed)
    torch.save({"model": sd} if wrap else sd, path)
    return path


def uniform_events(rng, n: int, size: int, duration_us: int = 1_000_000):
    """``n`` events uniform over a ``size`` x ``size`` sensor, both polarities, sorted in time."""
    import numpy as np

    ev = np.zeros(n, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    ev["t"] = np.sort(rng.integers(0, duration_us, n))
    ev["x"], ev["y"] = rng.integers(0, size, n), rng.integers(0, size, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


# --------------------------------------------------------------------------------------------------
# The official checkpoint on the real segments: float64 truth and the float32 spread
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def official():
    """The official checkpoint on the 5 real segments (T = 16, split_by number), computed once:
    ``truth`` the float64 reference with BatchNorm folded as the model file holds it (what the
    engine computes in float64), ``spread`` the reference's float32 realisations (golden, native,
    jittered; see torch_reference.float32_spread), ``events``/``frames``/``names`` per segment."""
    import json
    from types import SimpleNamespace

    need_official()
    pytest.importorskip("torch")
    import torch
    from torch_reference import (Outputs, float32_spread, folded_reference,
                                 load_official_checkpoint, reference_outputs)

    from eventformer.events import dense_frames, read_events

    golden = json.loads(GOLDEN.read_text())
    names = sorted(golden)
    events = [read_events(GESTURE_DIR / n).events for n in names]
    frames = [dense_frames(e, 16, 128, 128) for e in events]
    model32 = load_official_checkpoint(OFFICIAL_CKPT, heads=16, scale=0.25)
    truth = reference_outputs(folded_reference(model32), frames, torch.float64)
    gold = [Outputs.of(golden[n]["logits"], golden[n]["spikes"]) for n in names]
    spread = float32_spread(model32, frames, truth, extra={"golden": gold})
    return SimpleNamespace(names=names, events=events, frames=frames, truth=truth,
                           spread=spread, golden=golden, model32=model32)

# CI runs the property tests on a fixed set of examples, so a red build is reproducible;
# locally hypothesis keeps exploring new ones.
import os  # noqa: E402

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pipelined_and_layer_major(model, dtype, samples: list, threads: int = 2,
                              policy=None) -> list:
    """Per sample, ``Spikformer.run`` pipelined (different layers on different chunks of steps
    at once: the pipeline's size gate lifted so that a small test model takes it) and
    layer-major (the pipeline off), both on ``threads`` engine threads, one engine: a list of
    ``((logits, layer_stats), (logits, layer_stats))``. Asserts that the pipeline ran."""
    import eventformer.models.spikformer as spikformer
    from eventformer.layers import PathPolicy
    from eventformer.runtime import engine_threads, set_engine_threads

    before = engine_threads()
    set_engine_threads(threads)
    engine = spikformer.Spikformer(model, dtype=dtype, policy=policy or PathPolicy())
    ran = []
    pipelined = engine._run_pipelined

    def spy(xs, edges):
        ran.append(edges)
        return pipelined(xs, edges)

    out = []
    try:
        for steps in samples:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(spikformer, "PIPELINE_MIN_NEURON_STEPS", 0)
                mp.setattr(engine, "_run_pipelined", spy)
                engine.clear_stats()
                fast = engine.run(steps), engine.layer_stats()
                mp.setattr(engine, "_pipeline_edges", lambda steps: None)
                engine.clear_stats()
                slow = engine.run(steps), engine.layer_stats()
            out.append((fast, slow))
    finally:
        set_engine_threads(before)
    assert len(ran) == len(samples) and all(len(e) > 2 for e in ran), ran
    return out


@pytest.fixture
def threads():
    """``threads(n)`` sets the engine's thread count for the test; the count before is back
    after it."""
    from eventformer.runtime import engine_threads, set_engine_threads

    before = engine_threads()
    yield set_engine_threads
    set_engine_threads(before)


def calibrated_variants(config_of, samples: list, seed: int, rate: float = 0.12) -> dict:
    """A random model per attention operator (``config_of(attention)`` its configuration),
    its BatchNorm calibrated on ``samples`` so that every LIF fires at about ``rate``."""
    from eventformer.bench.calibrate import calibrate, random_model

    return {att: calibrate(random_model(config_of(att), seed=seed), samples, rate)
            for att in ("ssa", "ds2ta", "ssa_bin", "saformer")}
