"""The first run's backward-compiling helper (eventformer.precompile): started only where it can
help, and what it compiles is what a run then loads instead of compiling."""

import json
import os
import subprocess
import sys

import pytest

from conftest import GESTURE_DIR, need_gesture
from eventformer import precompile
from eventformer.weights import shipped_model_path


def _jit_off() -> bool:
    from numba.core import config

    return bool(config.DISABLE_JIT)


def test_helper_is_wanted_only_where_it_can_help(monkeypatch):
    monkeypatch.delenv(precompile.HELPER_ENV, raising=False)
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "0")
    monkeypatch.setattr(precompile, "usable_cores", lambda: 2)
    assert precompile.helper_wanted()
    monkeypatch.setattr(precompile, "usable_cores", lambda: 1)  # no second core to compile on
    assert not precompile.helper_wanted()
    assert precompile.start_backward_compile("model.h5", "float32") is None
    monkeypatch.setattr(precompile, "usable_cores", lambda: 4)
    monkeypatch.setenv(precompile.HELPER_ENV, "0")  # turned off by the user
    assert not precompile.helper_wanted()
    monkeypatch.delenv(precompile.HELPER_ENV)
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")  # nothing is compiled
    assert not precompile.helper_wanted()


def test_stop_ends_the_helper_and_may_be_called_twice():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    helper = precompile.BackwardCompile(proc)
    helper.stop()
    assert proc.poll() is not None
    helper.stop()


def test_stop_ends_a_forked_helper_too(tmp_path):
    if not precompile._can_fork():
        pytest.skip("no fork here")
    folder = tmp_path / "claims"
    folder.mkdir()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        import time
        time.sleep(60)
        os._exit(0)
    helper = precompile.BackwardCompile(precompile.ForkedHelper(pid), str(folder))
    assert helper.proc.poll() is None
    helper.stop()
    assert helper.proc.poll() is not None and not folder.exists()
    helper.stop()


def _saved_and_loaded(stderr: str) -> tuple[int, int]:
    lines = stderr.splitlines()
    return (sum("[cache] data saved" in line for line in lines),
            sum("[cache] data loaded" in line for line in lines))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_a_run_after_the_helper_compiles_nothing_and_gives_the_same_result(tmp_path, dtype):
    """On an empty cache, the helper alone fills it with every kernel a run of a real recording
    calls (the run then loads each and compiles none), and the run's result is the one a run
    that compiled everything itself gives."""
    if _jit_off():
        pytest.skip("NUMBA_DISABLE_JIT=1: nothing is compiled")
    need_gesture()
    model = str(shipped_model_path())
    recording = str(GESTURE_DIR / "1.bs2")
    infer = [sys.executable, "-m", "eventformer_cli.main", "infer", recording, "-w", model,
             "--dtype", dtype, "--json"]
    base = dict(os.environ, **{precompile.HELPER_ENV: "0"})

    helped = dict(base, NUMBA_CACHE_DIR=str(tmp_path / "helped"))
    subprocess.run([sys.executable, "-m", "eventformer.precompile", model, "--dtype", dtype],
                   env=helped, check=True, timeout=600)
    run = subprocess.run(infer, env=dict(helped, NUMBA_DEBUG_CACHE="1"), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    saved, loaded = _saved_and_loaded(run.stdout + run.stderr)
    assert loaded > 5
    assert saved == 0, "the run compiled kernels the helper had not"

    if dtype != "float32":
        return  # the same machine code either way: one arithmetic's check is enough
    alone = subprocess.run(infer, env=dict(base, NUMBA_CACHE_DIR=str(tmp_path / "alone")),
                           capture_output=True, text=True, timeout=600, check=True)
    helped_out = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert json.loads(helped_out[-1])["logits"] == json.loads(alone.stdout)["logits"]


def test_the_helper_first_takes_the_max_pool_and_the_integer_gemm_then_the_attention_cores(
        monkeypatch):
    """compile_backwards starts with the first pooled layer's max-pool, then (in an integer
    mode) the integer GEMM through a block's layer, then each block's attention core, on
    synthetic inputs of their own shapes: the calls go through here (the helper swallows a
    failure, so this test lets it surface)."""
    import functools

    import numpy as np

    from eventformer.modelfile import load
    from eventformer.models import engine_for

    monkeypatch.setattr(precompile, "_quietly", lambda call: call())
    monkeypatch.setattr(precompile, "_backwards", lambda *args, **kwargs: None)
    for dtype, first in (("float32", ["pool"]), ("int8", ["pool", "gemm"])):
        engine = engine_for(load(shipped_model_path()), dtype=dtype)
        pooled = next(layer for layer, _, real in engine.stages[0][0].plan
                      if not real and layer.pool is not None)
        calls = []
        pool = pooled._band_pool
        monkeypatch.setattr(pooled, "_band_pool",
                            lambda flags, fired: calls.append("pool") or pool(flags, fired))
        for block in engine.blocks:
            for layer in block.layers:
                if getattr(layer, "_gemm_biased", None) is not None:
                    gemm = layer._gemm_biased
                    monkeypatch.setattr(
                        layer, "_gemm_biased",
                        lambda rows, out, _g=gemm: calls.append("gemm") or _g(rows, out))
            core = block.attn.core._core_current

            @functools.wraps(core)  # (the helper reads the core's parameters)
            def counted(*args, _core=core):
                calls.append("core")
                return _core(*args)

            monkeypatch.setattr(block.attn.core, "_core_current", counted)
        precompile.compile_backwards(engine, 2)
        # (the later passes, stubbed out here, call no max-pool or core of their own)
        assert calls == first + ["core"] * len(engine.blocks)
        if first:
            spikes = np.flatnonzero(pooled._band_flags(2)[0])
            assert spikes.size > 0  # the max-pool had spikes to pool


@pytest.mark.slow
def test_the_forked_helper_fills_the_cache_with_what_the_run_then_loads(tmp_path):
    """On Linux the helper is a fork of the run, compiling the run's own engine: once it is
    done, the run's forward pass compiles nothing, and stop removes the claims folder."""
    if _jit_off() or not precompile._can_fork():
        pytest.skip("no JIT, or no fork here")
    need_gesture()
    script = f"""
import gc, os, sys
from numba.core.registry import CPUDispatcher
from eventformer import precompile
from eventformer.inference import classify_file
from eventformer.modelfile import load
from eventformer.models import engine_for
model = {str(shipped_model_path())!r}
engine = engine_for(load(model), dtype="float32")
helper = precompile.start_backward_compile(model, "float32", engine=engine)
assert isinstance(helper.proc, precompile.ForkedHelper), helper
folder = helper.claims
assert folder and os.path.isdir(folder)
assert helper.proc.wait(timeout=600) == 0
classify_file(engine, {str(GESTURE_DIR / "1.bs2")!r})
helper.stop()
misses = sum(sum(d.stats.cache_misses.values()) for d in gc.get_objects()
             if isinstance(d, CPUDispatcher) and "eventformer" in d.py_func.__module__)
print("misses", misses, "folder", os.path.exists(folder))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop(precompile.HELPER_ENV, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["misses", "0", "folder", "False"]
