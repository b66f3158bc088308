"""A user's very first run on a machine with two cores or more: a second process compiles the
engine's kernels from the last layer backwards while the run compiles them forwards.

Numba compiles one function at a time per process (its compiler holds a process-wide lock), so
an engine's first run, which compiles the kernels its layers call in forward order as the input
reaches them, keeps one core busy for several seconds and leaves the others idle. The helper
process builds the same engine from the same model file and calls each layer on synthetic event
lists of the layer's own input shape, last layer first; every kernel it compiles lands in
Numba's on-disk cache (written atomically), and the run, reaching that kernel later, loads it in
milliseconds instead of compiling it. The two meet in the middle, and never compile one kernel
twice: each claims a kernel before compiling it, and one that misses the cache on a kernel the
other has claimed waits for its entry (:mod:`eventformer.claims`). Nothing the helper does
reaches the run's results: it shares no state with the run (a forked helper works on its own
copy of the engine), only the cache, whose entries are the same machine code the run would
have compiled itself.

The run starts the helper (:func:`start_backward_compile`) only when Numba's cache does not hold
its arithmetic's kernels, when this process may use two cores or more, and unless
``EVENTFORMER_COMPILE_HELPER=0``; it stops the helper when it is done (``stop``), whatever the
helper had left to compile. On Linux the helper is a fork of the run, taken once the run has
built its engine: it compiles at once, with nothing to import or load (a new interpreter spent
about half a second on imports and the model file before its first kernel, a quarter of the
time a first run has to overlap). Elsewhere, or without the run's engine, it is a new process,
``python -m eventformer.precompile MODEL --dtype D``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

#: The environment variable that turns the helper off (``0``).
HELPER_ENV = "EVENTFORMER_COMPILE_HELPER"

# Input densities of the helper's passes: first the event-driven paths (scatter, gather), which
# real recordings take at the firing rates spiking transformers run at, then the dense (GEMM)
# paths a dense input takes; each pass goes from the last layer to the first.
PASSES = (0.02, 0.9)
# The blocks' and the head's kernels first, at the densities of a residual stream of spikes at
# the firing rates spiking transformers run at: above ~20% its linear layers batch their dense
# steps into one GEMM (layers.base.LINEAR_DENSE_ABOVE; in an integer mode the integer GEMM, the
# blocks' largest kernel, so first), below it they gather or scatter.
BLOCK_PASSES = (0.3, 0.05)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def helper_wanted() -> bool:
    """Whether a first run should start the backward-compiling helper here."""
    if os.environ.get(HELPER_ENV, "1").strip() == "0":
        return False
    if os.environ.get("NUMBA_DISABLE_JIT", "0").strip() not in ("", "0"):
        return False  # nothing is compiled
    return usable_cores() >= 2


class BackwardCompile:
    """The helper process; :meth:`stop` ends it (idempotent). ``proc`` is a
    :class:`subprocess.Popen` or a :class:`ForkedHelper`; ``claims`` the compile claims folder
    the two processes share (:mod:`eventformer.claims`), removed by :meth:`stop`."""

    def __init__(self, proc, claims: str | None = None):
        self.proc = proc
        self.claims = claims

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()  # Numba writes a cache entry to a temporary file, then renames it
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.claims is not None:
            _end_claims(self.claims)
            self.claims = None


def _start_claims() -> str | None:
    from . import claims

    try:
        folder = tempfile.mkdtemp(prefix="eventformer-claims-")
    except OSError:
        return None  # the two processes may compile a kernel twice, as before claims
    claims.activate(folder)
    return folder


def _end_claims(folder: str) -> None:
    from . import claims

    if claims.active() == folder:
        claims.activate(None)
    shutil.rmtree(folder, ignore_errors=True)


class ForkedHelper:
    """A forked child by its pid, with the part of :class:`subprocess.Popen`'s interface
    :class:`BackwardCompile` uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def _signal(self, sig) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.005)
        return self.returncode


def _can_fork() -> bool:
    # macOS's system libraries are not safe to use in a forked child; Linux's are
    return hasattr(os, "fork") and sys.platform.startswith("linux")


def start_backward_compile(model_path, dtype: str, path_mode: str = "auto", engine=None
                           ) -> BackwardCompile | None:
    """Start the helper for the model file ``model_path`` in ``dtype`` and ``path_mode``, with
    this process's environment (Numba's cache directory, the engine's threads); None where it
    is not wanted (:func:`helper_wanted`) or cannot start.

    Given the run's ``engine`` (built from that file, in that arithmetic and path mode), on
    Linux the helper is a fork of this process that compiles ``engine``'s kernels at once
    (:func:`_forked_helper`); otherwise a new interpreter builds its own engine."""
    if not helper_wanted():
        return None
    forked = engine is not None and _can_fork()
    if forked:
        from .models.spikformer import Spikformer

        if not isinstance(engine, Spikformer):
            return None  # a sequential SNN (NIR import): few kernels, left to the run
    folder = _start_claims()
    helper = _fork_helper(engine, folder) if forked else _spawn_helper(model_path, dtype,
                                                                      path_mode, folder)
    if helper is None and folder is not None:
        _end_claims(folder)
    return helper


def _spawn_helper(model_path, dtype, path_mode, folder) -> BackwardCompile | None:
    from .claims import CLAIMS_ENV

    cmd = [sys.executable, "-m", "eventformer.precompile", os.fspath(model_path),
           "--dtype", dtype, "--path", path_mode]
    env = dict(os.environ)
    if folder is not None:
        env[CLAIMS_ENV] = folder
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
    except OSError:
        return None  # the run compiles everything itself, as without the helper
    return BackwardCompile(proc, folder)


def _fork_helper(engine, folder) -> BackwardCompile | None:
    # the caller must hold no lock another thread could need in the child: the CLI forks
    # right after building the engine, before any kernel runs (Numba's compiler lock is free)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:
        _forked_helper(engine)  # never returns
    return BackwardCompile(ForkedHelper(pid), folder)


def _forked_helper(engine) -> None:
    """The forked child: compile ``engine``'s kernels backwards, then leave at once
    (``os._exit``: the run's exit handlers, buffers and open files are the run's)."""
    code = 1
    try:
        # the run's handlers are the run's: a stop (SIGTERM) or Ctrl-C just ends the child
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(quiet, fd)
        compile_backwards(engine, engine.config.steps)
        code = 0
    finally:
        os._exit(code)


def _events(rng, sites: int, density: float, steps: int, most: int = 1) -> list:
    """``steps`` sorted event lists over ``sites`` at ``density``, multiplicities 1..``most``
    (int32, as framing and the layers hand them on)."""
    from .layers import ones

    n = max(1, min(sites, int(round(density * sites))))
    out = []
    for _ in range(steps):
        idx = np.sort(rng.choice(sites, n, replace=False)).astype(np.int32)
        cnt = ones(n) if most <= 1 else rng.integers(1, most + 1, n).astype(np.int32)
        out.append((idx, cnt))
    return out


def _stream(rng, sites: int, density: float, steps: int) -> list:
    """A residual stream of spikes: two spike lists merged, as a block's input is formed."""
    from .layers import add_events

    a = _events(rng, sites, density / 2, steps)
    b = _events(rng, sites, density / 2, steps)
    return [add_events(x[0], x[1], y[0], y[1]) for x, y in zip(a, b)]


def compile_backwards(engine, steps: int, densities=PASSES) -> None:
    """Call every layer of a :class:`~eventformer.models.spikformer.Spikformer` on synthetic
    inputs of its own input shape, last layer first: the kernels a run of ``steps`` steps calls,
    compiled (or loaded) in backward order.

    First the max-pool, then (in an integer mode) the integer GEMM, then the attention cores
    (:func:`_first_pool`, :func:`_integer_gemm`, :func:`_attention_cores`); then the kernels only the blocks and the head call, at typical densities
    (:data:`BLOCK_PASSES`) with the blocks' gathers off: the gather, which every conv of the embedding calls too, is what a run compiles
    first after its first layer, so the helper leaves it to the run and finds it in the cache.
    Then every layer, once per density of ``densities``."""
    rng = np.random.default_rng(0)
    # The run's third kernel, the max-pool, first: the helper, starting with the run, has it
    # in the cache before the run needs it. In an integer mode the integer GEMM next (the run
    # needs it once its embedding's steps go dense), then in every mode the attention cores;
    # the blocks' small kernels are left to the run, which reaches them while the helper
    # compiles the cores. (With the GEMM before the max-pool, the run compiled the max-pool
    # itself and finished a second after the helper: int8's first run of the full-size model
    # took 6.2 s against 5.6-5.9 s in this order.)
    _first_pool(engine, rng, steps)
    if engine.fixed is not None:
        _integer_gemm(engine)
    _attention_cores(engine, rng)
    gathering = [layer for block in engine.blocks for layer in block.layers
                 if getattr(layer, "can_gather", False)]
    for layer in gathering:
        layer.can_gather = False
    try:
        for density in BLOCK_PASSES:
            _backwards(engine, rng, steps, density, embeddings=False)
    finally:
        for layer in gathering:
            layer.can_gather = True
    for density in densities:
        _backwards(engine, rng, steps, density)
    engine.reset()


def _first_pool(engine, rng, steps: int) -> None:
    """The max-pool of the first embedding layer that pools, on synthetic flags: the run's third
    kernel (after the first layer's current and the LIF), which the helper, starting a moment
    after the run, has in the cache before the run reaches it. Every pooled layer of a model
    calls the same kernel."""
    for layer, _, real in engine.stages[0][0].plan:
        if not real and getattr(layer, "pool", None) is not None:
            # one step: the kernel's signature does not depend on the steps, and the random
            # flags of all of them (millions) took a tenth of a second to draw
            flags = layer._band_flags(1)
            flags[:] = rng.random(flags.shape) < 0.05
            _quietly(lambda: layer._band_pool(flags, [1]))
            return


def _integer_gemm(engine) -> None:
    """In an integer mode, the integer GEMM (:func:`~eventformer.kernels.int_gemm`: the
    largest kernel of an integer engine) on zero rows, through a block's first layer that
    multiplies on it; every dense step of the engine calls the same kernel."""
    for block in reversed(engine.blocks):
        for layer in block.layers:
            dtype = getattr(layer, "gemm_dtype", None)
            if getattr(layer, "fixed", None) is None or dtype is None or dtype.kind == "f":
                continue
            rows = np.zeros((layer.rows, layer.k_dim), dtype)
            out = np.empty((layer.rows, layer.cout), layer.current.dtype)
            _quietly(lambda: layer._gemm_biased(rows, out))  # noqa: B023 (called at once)
            return


def _attention_cores(engine, rng, density: float = 0.05) -> None:
    """Each block's attention core on synthetic spikes, its current only: the largest kernel of
    the blocks, which the run reaches last; the helper compiles it before the blocks' other
    kernels, whose first (the LIF) the run compiles while the helper starts, so that the two
    do not compile one kernel at once."""
    from .kernels.counters import N_COUNTERS

    for block in reversed(engine.blocks):
        core = getattr(getattr(block, "attn", None), "core", None)
        current = getattr(core, "current", None)
        if current is None or not hasattr(core, "_core_current"):
            continue
        spikes = len(inspect.signature(core._core_current).parameters) - 2  # (out, counters)
        lists = [_events(rng, current.shape[0], density, 1)[0][0] for _ in range(spikes)]
        _quietly(lambda: core._core_current(*lists, np.empty_like(current),
                                            np.zeros(N_COUNTERS, np.int64)))


def _backwards(engine, rng, steps: int, density: float, embeddings: bool = True) -> None:
    for (embedding, blocks), sites in reversed(list(zip(engine.stages, engine.stream_sites))):
        if not engine.membrane:  # (a membrane stream's blocks take real maps: left to the run)
            _quietly(lambda: [engine.head.step(*x) for x in _stream(rng, sites, density, 1)])
            for block in reversed(blocks):
                _quietly(lambda: block.run_steps(_stream(rng, sites, density, steps)))
        if not embeddings:
            continue
        for layer, _, real in reversed(embedding.plan):
            if real:
                continue  # static images: a few real-valued GEMMs, cheap to compile
            h, w, c = layer.in_shape
            most = 1 if layer.input_kind == "spikes" else 2
            _quietly(lambda: layer.run_steps(_events(rng, h * w * c, density, steps, most)))


def _quietly(call) -> None:
    # the helper is best-effort: a layer it cannot call on synthetic input (a shape or a bound
    # it guessed wrong) is left to the run, which compiles that kernel itself
    try:
        call()
    except Exception:  # noqa: BLE001
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eventformer.precompile",
        description="Compile an engine's kernels into Numba's cache from its last layer "
                    "backwards (the helper a first run starts; see eventformer.precompile).")
    parser.add_argument("model", help="model file (.h5)")
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float64", "int16", "int8"])
    parser.add_argument("--path", default="auto", choices=["auto", "sparse", "dense", "gather"])
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per synthetic sample (default: the model's T)")
    args = parser.parse_args(argv)

    from .layers import PathPolicy
    from .modelfile import load
    from .models import engine_for
    from .models.spikformer import Spikformer

    engine = engine_for(load(args.model), dtype=args.dtype, policy=PathPolicy(mode=args.path))
    if not isinstance(engine, Spikformer):
        return 0  # a sequential SNN (NIR import): few kernels, left to the run
    compile_backwards(engine, args.steps or engine.config.steps)
    return 0


if __name__ == "__main__":
    from .runtime import tune_collector

    tune_collector()
    sys.exit(main())
