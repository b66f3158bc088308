"""glibc malloc settings that give the dense torch baseline its best speed.

Under glibc's defaults torch gets its large output buffers from fresh mmaps and page-faults them
on every call (SPS1 at batch 16 on one thread: 39 ms instead of 23 ms, PERF-NOTES.md). These
settings keep freed memory in the heap. glibc reads them once, at process start, so
``eventformer bench`` re-executes itself with them when they are missing (:func:`reexec_argv`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MALLOC_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "268435456",
}
REEXEC_GUARD = "EVENTFORMER_BENCH_REEXEC"  # set in the re-executed process: never loop


def settings_active(environ=None) -> bool:
    """Whether the process environment carries the settings (and so glibc read them at start)."""
    environ = os.environ if environ is None else environ
    return all(environ.get(k) == v for k, v in MALLOC_SETTINGS.items())


def allocator_status(environ=None) -> dict:
    """What the bench's result says about the allocator: the settings and how they came to be."""
    environ = os.environ if environ is None else environ
    if not settings_active(environ):
        how = "not applied (glibc defaults)"
    elif environ.get(REEXEC_GUARD):
        how = "applied by re-executing the bench with them set"
    else:
        how = "applied (already set when the process started)"
    return {"settings": dict(MALLOC_SETTINGS), "applied": settings_active(environ), "how": how}


def reexec_argv(argv=None, environ=None, platform: str | None = None):
    """``(executable, argv, env)`` that re-run this ``eventformer bench`` command with the
    settings, or None when it should not (settings already there, already re-executed, not
    Linux/glibc, or not started as the eventformer command, e.g. inside a test runner)."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if not platform.startswith("linux") or settings_active(environ) or environ.get(REEXEC_GUARD):
        return None
    if not argv or Path(argv[0]).name not in ("eventformer", "main.py") or "bench" not in argv[1:]:
        return None
    env = dict(environ, **MALLOC_SETTINGS, **{REEXEC_GUARD: "1"})
    # the command as the console script runs it (eventformer_cli.main.run: its collector tuned)
    code = "import sys; sys.argv[0] = 'eventformer'; from eventformer_cli.main import run; run()"
    return sys.executable, [sys.executable, "-c", code, *argv[1:]], env
