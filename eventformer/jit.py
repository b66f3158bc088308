"""Numba's options in one place: every jitted function in eventformer is compiled with these.

- ``cache=True``: the machine code is kept beside the sources, so only a user's very first run
  pays the compile (``eventformer infer`` says so); later runs load it in about a second.
- ``nogil=True``: kernels release the GIL, so the engine's own threads can split a GEMM's rows
  and a stream can decode the next bytes while a window is computed.
- no ``fastmath``: the engine must sum as SPEC §1 writes it (``V + (X - V) * (1/tau)`` in that
  order) and compare with ``>=`` exactly; reassociation would change float32 spikes.
- no ``parallel``: work is split over threads by the layers (rows of a GEMM), never inside a
  scatter, whose events race on their outputs.
- a cache that claims a kernel before compiling it, when a first run and its compile helper
  share the work (:mod:`eventformer.claims`).
"""

from __future__ import annotations

from numba import njit

from .claims import caching

OPTIONS = {"cache": True, "nogil": True}


def kernel(func):
    """A compiled function: ``@kernel def conv2d_scatter(...)``. Its cache takes part in a
    first run's compile claims (:mod:`eventformer.claims`)."""
    return caching(njit(**OPTIONS)(func))


#: A small helper compiled into its callers (``inline="always"``): cursor steps, slab adds.
inlined = njit(**OPTIONS, inline="always")
