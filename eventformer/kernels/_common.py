"""Small inlined pieces shared by the scatter kernels, and what the compiled code may use."""

from numba.core import config

from ..jit import inlined
from .counters import AC, INPUT_EVENTS, MAC


def host_compiles_for(feature: str) -> bool:
    """Whether the code Numba compiles here may use the CPU ``feature`` (LLVM's name, such as
    ``avx512vnni`` or ``avx512f``): the host has it, Numba targets the host (NUMBA_CPU_NAME and
    NUMBA_CPU_FEATURES unset, as for the engine's cache), and the JIT is on."""
    if config.DISABLE_JIT:
        return False
    if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES is not None:
        return False
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get(feature, False))
    except (RuntimeError, AttributeError):
        return False


@inlined
def next_site(site, y, x, base, cin, in_w):
    """Advance the (y, x) pixel cursor of a sorted HWC event list to ``site``'s pixel.

    Walking forward costs a compare per pixel passed; dividing by the runtime channel count and
    width cost an integer division each, which dominated the scatter. ``base`` = pixel * cin.
    """
    while site >= base + cin:
        base += cin
        x += 1
        if x == in_w:
            x = 0
            y += 1
    return y, x, base


@inlined
def add_slab(o, w, k, kf):
    """``o += k * w`` over one contiguous slab: plain adds for a spike (k == 1)."""
    if k == 1:
        for co in range(o.shape[0]):
            o[co] += w[co]
    else:
        for co in range(o.shape[0]):
            o[co] += kf * w[co]


@inlined
def book_ops(counters, ops, events, weighted):
    """Weighted inputs (raw counts) cost multiplies, all others accumulates (SPEC §5)."""
    if weighted:
        counters[MAC] += ops
    else:
        counters[AC] += ops
    counters[INPUT_EVENTS] += events
