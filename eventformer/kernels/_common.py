"""Small inlined pieces shared by the scatter kernels, and what the compiled code may use."""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic
from numba.np.arrayobj import _empty_nd_impl

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


def _wide_vectors_py():
    """Nothing to do without the JIT."""


@intrinsic
def _wide_vectors_jit(typingctx):
    """Mark the function being compiled ``"prefer-vector-width"="512"``."""

    def codegen(context, builder, signature, args):
        # llvmlite's attribute set takes known names only; a string attribute is written out
        # as it is ("key"="value"), which LLVM's parser takes after the signature
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.void(), codegen


#: ``wide_vectors()`` first in a kernel: LLVM's loop vectoriser then uses 512-bit vectors (zmm)
#: in it. On AVX-512 CPUs of the Skylake-server line and after, LLVM prefers 256-bit vectors
#: (512-bit ones cost clock speed on the oldest of them), which halves the work per instruction
#: of a loop bound by one port: the int8 gather widens each weight byte with ``vpmovsxbw``, which
#: runs on one port, so a 128-channel row took 8 ymm conversions where 4 zmm ones do. With the
#: weights on a cache line (a 64-byte load then never straddles two), the gathers of the
#: full-size SPS1-3 and RPE ran 1.3x (int8), 1.34x (float32) and 1.47x (int16) faster on one
#: thread. The LIF, scatter, max-pool, merge and attention kernels gained nothing measurable, so
#: they keep LLVM's choice. A no-op without the JIT; without AVX-512 LLVM has no 512-bit vectors
#: and the attribute changes nothing.
wide_vectors = _wide_vectors_py if config.DISABLE_JIT else _wide_vectors_jit


def _scratch_py(n, dtype):
    return np.empty(n, dtype)


@intrinsic
def _scratch_jit(typingctx, n, dtype):
    """``np.empty(n, dtype)`` lowered in place: a new 1-D C-contiguous array, uninitialised
    (``dtype`` a numpy scalar type such as ``np.int64``, or an array's ``.dtype``)."""
    if isinstance(dtype, types.NumberClass):
        item = dtype.instance_type
    elif isinstance(dtype, types.DType):
        item = dtype.dtype
    else:
        return None
    if not isinstance(n, types.Integer):
        return None
    arrty = types.Array(item, 1, "C")

    def codegen(context, builder, signature, args):
        size = context.cast(builder, args[0], signature.args[0], types.intp)
        zero = ir.Constant(size.type, 0)
        size = builder.select(builder.icmp_signed("<", size, zero), zero, size)
        return _empty_nd_impl(context, builder, arrty, [size])._getvalue()

    return arrty(n, dtype), codegen


#: ``scratch(n, dtype)``: a kernel's working array, as ``np.empty(n, dtype)`` gives it. Numba
#: compiles its ``np.empty`` once per element type and way of naming it, on a user's first run
#: (0.1-0.25 s each, in the run and its compile helper alike); this allocates with the same
#: code, written into the kernel.
scratch = _scratch_py if config.DISABLE_JIT else _scratch_jit


def _in_dtype_of_py(arr, x):
    return arr.dtype.type(x)


@intrinsic
def _in_dtype_of_jit(typingctx, arr, x):
    """``x`` converted to ``arr``'s dtype, as storing it into ``arr`` would convert it."""
    if not (isinstance(arr, types.Array) and isinstance(x, (types.Integer, types.Float))):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], signature.return_type)

    return arr.dtype(arr, x), codegen


#: ``in_dtype_of(out, k)``: a multiplicity (or an integer sum) in the dtype of the array it is
#: added to or multiplied into, so that ``k * w`` is computed in that dtype. Written as a store
#: into a one-element scratch array and a load, it compiled Numba's ``np.empty`` for every
#: arithmetic on a user's first run, on the first layer's path.
in_dtype_of = _in_dtype_of_py if config.DISABLE_JIT else _in_dtype_of_jit


def _copy_span_py(dst, d0, src, s0, n):
    dst[d0:d0 + n] = src[s0:s0 + n]


@intrinsic
def _copy_span_jit(typingctx, dst, d0, src, s0, n):
    """``dst[d0:d0 + n] = src[s0:s0 + n]`` for 1-D C-contiguous arrays of one dtype that do not
    overlap, as one ``memcpy``."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.dtype == src.dtype):
        return None

    def codegen(context, builder, signature, args):
        dty, _, sty, _, _ = signature.args
        dary = context.make_array(dty)(context, builder, args[0])
        sary = context.make_array(sty)(context, builder, args[2])
        itemsize = context.get_abi_sizeof(context.get_data_type(dty.dtype))
        dptr = cgutils.gep(builder, dary.data, args[1])
        sptr = cgutils.gep(builder, sary.data, args[3])
        cgutils.raw_memcpy(builder, dptr, sptr, args[4], itemsize)
        return context.get_dummy_value()

    return types.void(dst, d0, src, s0, n), codegen


#: ``copy_span(dst, d0, src, s0, n)``: a contiguous copy between two arrays, as one ``memcpy``
#: (a Numba loop of byte copies does not vectorise where it cannot rule out overlap, and a slice
#: assignment checks for overlap and may copy through a temporary).
copy_span = _copy_span_py if config.DISABLE_JIT else _copy_span_jit


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
