"""Compile claims: on a first run, the run and its compile helper never compile one kernel twice.

The helper (:mod:`eventformer.precompile`) compiles the engine's kernels into Numba's on-disk
cache while the run compiles them as its input reaches them. Numba decides to compile on a
cache miss, and the other process's entry may land a moment later: without coordination the
two processes compile the same kernel at once, and on two cores a second of one process's work
is lost each time.

A claim is a file named after the kernel and its signature in a folder the two processes
share (:func:`activate`): a process that misses the cache creates it (atomically: ``O_EXCL``)
before it compiles, and removes it once the entry is saved (or the compile failed). A process
that misses the cache on a kernel another live process has claimed waits until the claim goes,
then loads the other's entry (or, if there is none, compiles it after all). Each process waits
at most while the other compiles the kernel it already started; the two cannot wait on each
other (a process waits only inside the kernels it compiles, and kernels do not call each other
in a cycle).

Only kernels made by :mod:`eventformer.jit` take part (their cache is :class:`ClaimingCache`);
without an active folder, that cache is Numba's own.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

from numba.core import event
from numba.core.caching import FunctionCache

#: Where a spawned helper finds the claims folder of the run that started it.
CLAIMS_ENV = "EVENTFORMER_COMPILE_CLAIMS"

# A claim whose owner lives is waited for at most this long (a kernel compiles in seconds; a
# hung owner must not hang the run).
WAIT_LIMIT_S = 120.0
UNNAMED_S = 2.0  # a claim whose pid is still unwritten after this is taken over
POLL_S = 0.005

_folder: str | None = None
_held: dict = {}  # (dispatcher id, argument types) -> claim path, this process's own
_lock = threading.Lock()


def activate(folder: str | None) -> None:
    """Take part in the claims of ``folder`` (None: stop taking part). A forked child keeps
    its parent's folder."""
    global _folder
    _folder = folder
    if folder is not None:
        _listen()


def active() -> str | None:
    return _folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: str) -> int | None:
    """The pid in the claim ``path``; None while it is not written yet (or unreadable)."""
    try:
        with open(path) as f:
            return int(f.read().strip()) or None
    except (OSError, ValueError):
        return None


def _claim(path: str) -> bool:
    """Create the claim ``path`` for this process; False if another holds it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError:
        return True  # no folder (the run has ended): compile without claims
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _release(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class ClaimingCache(FunctionCache):
    """Numba's function cache, which on a miss claims the kernel before it is compiled, or
    waits for the process that claimed it (see the module notes)."""

    def load_overload(self, sig, target_context):
        data = super().load_overload(sig, target_context)
        folder = _folder
        if data is not None or folder is None:
            return data
        key = repr(self._index_key(sig, target_context.codegen()))
        name = f"{self._cache_file._index_name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
        path = os.path.join(folder, name)
        deadline = time.monotonic() + WAIT_LIMIT_S
        while not _claim(path):
            owner = _owner(path)
            if owner == os.getpid():
                break  # ours (a retry of the same signature)
            if owner is not None and not _alive(owner):
                _release(path)  # its owner died: take it over
                continue
            # wait for the owner's entry, then load it
            unnamed = time.monotonic() + UNNAMED_S
            while os.path.exists(path) and time.monotonic() < deadline:
                if owner is None:  # created, its pid not yet written: read it again
                    owner = _owner(path)
                    if owner is None and time.monotonic() > unnamed:
                        _release(path)  # its owner died between creating and writing it
                        break
                if owner is not None and not _alive(owner):
                    break
                time.sleep(POLL_S)
            data = super().load_overload(sig, target_context)
            if data is not None:
                return data
            if time.monotonic() >= deadline:
                break  # compile it here, claimed or not
        with _lock:
            _held[self._key(sig)] = path
        return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        finally:
            self.release(sig)

    def release(self, sig) -> None:
        with _lock:
            path = _held.pop(self._key(sig), None)
        if path is not None:
            _release(path)

    def _key(self, sig):
        args = sig.args if hasattr(sig, "args") else sig
        return id(self), tuple(args)


class _FailedCompiles(event.Listener):
    """Releases the claim of a compile that failed (a failed compile saves nothing)."""

    def on_start(self, ev):
        pass

    def on_end(self, ev):
        # (Event.is_failed answers the opposite in Numba 0.68: read what it is made from)
        if getattr(ev, "_exc_details", None) is not None:
            dispatcher = ev.data.get("dispatcher")
            cache = getattr(dispatcher, "_cache", None)
            if isinstance(cache, ClaimingCache):
                cache.release(ev.data.get("args", ()))


_listener = None


def _listen() -> None:
    global _listener
    if _listener is None:
        _listener = _FailedCompiles()
        event.register("numba:compile", _listener)


def caching(dispatcher):
    """``dispatcher`` (an ``njit(cache=True)`` one) with a :class:`ClaimingCache`; as it was if
    Numba's cache cannot be replaced here (its code left the locations Numba can cache)."""
    cache = getattr(dispatcher, "_cache", None)
    if isinstance(cache, FunctionCache) and not isinstance(cache, ClaimingCache):
        try:
            dispatcher._cache = ClaimingCache(dispatcher.py_func)
        except RuntimeError:
            pass
    return dispatcher


if os.environ.get(CLAIMS_ENV):
    activate(os.environ[CLAIMS_ENV])
