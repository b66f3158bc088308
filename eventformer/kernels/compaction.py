"""Spike flags (one uint8 per neuron, 0 or 1) into what the next layer reads: a sorted index
list, or just their count.

A LIF step's arithmetic vectorises; turning its flags into indices does not, written as a loop:
each index's store address depends on the count before it, about a cycle per neuron whether it
fired or not, which at 5% firing took as long as the LIF pass itself. On a CPU with AVX-512,
sixteen flags at a time become a lane mask; ``vpcompressd`` packs the indices of the set lanes
into the low lanes of a register (LLVM's ``llvm.x86.avx512.mask.compress``), the whole register
is stored at the count, and the count advances by the mask's population count. The store writes
all sixteen lanes, so up to fifteen slots past the new count are scratch: ``out`` must have room
for every flag that may be set, as it must anyway. Not LLVM's ``llvm.masked.compressstore``,
which is ``vpcompressd`` with a memory operand: on AMD Zen 4 that form is microcoded, and it
took 19-21 us for 16384 neurons where the register form takes 0.8-1.0 (at 5-40% firing).
Elsewhere (AVX2) the flags are read eight at a time as a 64-bit word, a zero word skipped, and a
word's set flags (bit 8j for byte j) found one by one with a trailing-zero count: at 5% firing
2.5 us for 16384 neurons against 11.1 for the branch-free loop over every flag, 3.8 against 10.4
at 15%, 7.9 against 10.5 at 40% (AMD EPYC Zen 3).

Counting needs no indices: with 0/1 bytes, the sum of a word's eight bytes is its top byte after
a multiply by 0x0101010101010101 (no byte sum exceeds 8, so nothing carries across bytes).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from ..jit import inlined
from ._common import host_compiles_for

LANES = 16  # flags per compress store: one 512-bit vector of int32 indices
_BYTE_SUM = np.uint64(0x0101010101010101)
_TOP_BYTE = np.uint64(56)

#: The compress store is one instruction here (and compiled, not run as Python).
COMPRESS = host_compiles_for("avx512f")

_I1x16 = ir.VectorType(ir.IntType(1), LANES)
_I8x16 = ir.VectorType(ir.IntType(8), LANES)
_I32x16 = ir.VectorType(ir.IntType(32), LANES)


def _flag_bytes(flags) -> bool:
    """Whether ``flags`` is an array whose buffer the intrinsics below read as flag bytes: a
    contiguous array of an integer dtype (uint8 flags, or int64 words of eight)."""
    return (isinstance(flags, types.Array) and isinstance(flags.dtype, types.Integer)
            and flags.layout == "C")


def _byte_pointer(context, builder, arrty, ary, at, atty):
    """A pointer to byte ``at`` of the array ``ary``'s buffer."""
    data = context.make_array(arrty)(context, builder, ary).data
    data = builder.bitcast(data, ir.IntType(8).as_pointer())
    return builder.gep(data, [context.cast(builder, at, atty, types.int64)])


@intrinsic
def _compress16(typingctx, flags, at, first, out, count):
    """``out[count:count + k]`` = ``first + j`` for each j < 16 with byte ``at + j`` of
    ``flags``'s buffer set, in order; returns k. ``out[count + k:count + 16]`` are overwritten
    too (scratch). Both arrays contiguous, and no bounds checks: the caller keeps ``at + 16``
    within ``flags``'s bytes and ``count + 16 <= out.size``."""
    if not (_flag_bytes(flags) and isinstance(out, types.Array)
            and out.dtype == types.int32):
        return None
    sig = types.int64(flags, at, first, out, count)

    def codegen(context, builder, signature, args):
        fl, at_, first_, out_, count_ = args
        fty, aty, firsty, oty, cty = signature.args
        odata = context.make_array(oty)(context, builder, out_).data
        src = builder.bitcast(_byte_pointer(context, builder, fty, fl, at_, aty),
                              _I8x16.as_pointer())
        lanes = builder.load(src, align=1)
        mask = builder.icmp_unsigned("!=", lanes, ir.Constant(_I8x16, None))
        base = builder.trunc(context.cast(builder, first_, firsty, types.int64), ir.IntType(32))
        splat = builder.insert_element(ir.Constant(_I32x16, ir.Undefined), base,
                                       ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, ir.Constant(_I32x16, ir.Undefined),
                                       ir.Constant(_I32x16, None))
        idx = builder.add(splat, ir.Constant(_I32x16, list(range(LANES))))
        fnty = ir.FunctionType(_I32x16, [_I32x16, _I32x16, _I1x16])
        compress = cgutils.get_or_insert_function(builder.module, fnty,
                                                  "llvm.x86.avx512.mask.compress.v16i32")
        packed = builder.call(compress, [idx, ir.Constant(_I32x16, None), mask])
        dst = builder.gep(odata, [context.cast(builder, count_, cty, types.int64)])
        builder.store(packed, builder.bitcast(dst, _I32x16.as_pointer()), align=4)
        bits = builder.bitcast(mask, ir.IntType(LANES))
        pop = builder.ctpop(bits)
        return builder.zext(pop, ir.IntType(64))

    return sig, codegen


@intrinsic
def _word_jit(typingctx, flags, k):
    """Flags ``8k .. 8k + 7`` of a contiguous uint8 array as one little-endian uint64 (an
    unaligned load; no bounds check). Where ``flags[:8 * words].view(np.uint64)`` would compile
    Numba's array view on a user's first run (a tenth of a second, on the LIF's path)."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.uint8
            and flags.layout == "C"):
        return None
    sig = types.uint64(flags, k)

    def codegen(context, builder, signature, args):
        fty, kty = signature.args
        data = context.make_array(fty)(context, builder, args[0]).data
        at = builder.mul(context.cast(builder, args[1], kty, types.int64),
                         ir.Constant(ir.IntType(64), 8))
        ptr = builder.bitcast(builder.gep(data, [at]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return sig, codegen


@intrinsic
def _byte_jit(typingctx, flags, j):
    """Byte ``j`` of ``flags``'s buffer (no bounds check)."""
    if not _flag_bytes(flags):
        return None

    def codegen(context, builder, signature, args):
        fty, jty = signature.args
        return builder.load(_byte_pointer(context, builder, fty, args[0], args[1], jty))

    return types.uint8(flags, j), codegen


def _byte_py(flags, j):
    """:func:`_byte_jit` without the JIT."""
    return flags.reshape(-1).view(np.uint8)[j]


_byte = _byte_py if config.DISABLE_JIT else _byte_jit


def _word_py(flags, k):
    """:func:`_word_jit` without the JIT."""
    return flags[8 * k:8 * k + 8].view(np.uint64)[0]


_word = _word_py if config.DISABLE_JIT else _word_jit


def _trailing_zeros_py(word):
    """The index of the lowest set bit of a non-zero word (NUMBA_DISABLE_JIT=1)."""
    word = int(word)
    return (word & -word).bit_length() - 1


_trailing_zeros = _trailing_zeros_py if config.DISABLE_JIT else trailing_zeros
_ONE = np.uint64(1)


@inlined
def compact_flags(flags, n, first, out, count):
    """Append ``first + i`` for each set flag ``i`` (i < n, ascending) to ``out[count:]``;
    returns the new count. The flags are the first ``n`` bytes of ``flags``'s buffer: a
    contiguous uint8 array, or (with AVX-512) int64 words of eight (a max-pool's lanes, read
    in place: a ``.view`` compiles Numba's array view on a user's first run). ``out`` must
    have room for every flag that may be set (``out.size >= count + n``); its entries past
    the new count are scratch."""
    i = 0
    if COMPRESS:
        while i + LANES <= n:
            count += _compress16(flags, i, first + i, out, count)
            i += LANES
    else:
        i = n // 8 * 8
        for k in range(i // 8):
            word = _word(flags, k)
            while word != 0:  # one pass per set flag (byte j of the word is bit 8j)
                out[count] = first + 8 * k + (_trailing_zeros(word) >> 3)
                count += 1
                word &= word - _ONE
    for j in range(i, n):  # branch-free: the store is overwritten unless the flag counts
        out[count] = first + j
        count += np.int64(_byte(flags, j))  # (not uint8 arithmetic, which wraps, as Python)
    return count


@inlined
def count_flags(flags, n):
    """The number of set flags among ``flags[:n]`` (each 0 or 1), eight at a time."""
    words = n // 8
    total = np.uint64(0)
    for k in range(words):
        total += (_word(flags, k) * _BYTE_SUM) >> _TOP_BYTE
    count = np.int64(total)
    for j in range(words * 8, n):
        count += flags[j]
    return count
