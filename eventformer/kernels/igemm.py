"""Exact integer GEMM for the dense steps of the integer modes (SPEC §6), on the CPU's integer
dot-product instructions.

A dense step multiplies small non-negative integers (spikes, residual values, raw counts) by
int8 or int16 weights into int32 currents. Float BLAS does that exactly only while every sum
stays below the float's integer range (2^24 in float32, so int16 needed float64); the integer
dot-product instructions do it exactly at any size, and do more multiply-accumulates per
instruction than an FMA:

- ``uint8 x int8`` (int8 weights, inputs up to 255): ``vpdpbusd`` sums 4 byte products into each
  int32 lane, 64 multiply-accumulates per 512-bit instruction;
- ``int16 x int16`` (int16 weights, or inputs up to 32767): ``vpdpwssd`` sums 2 word products,
  32 per instruction. int16 weights need no splitting into bytes: the word form is exact, and
  a weight of +32767 would not split into two int8 halves (its high half is 128).

Both instructions wrap on overflow (the saturating forms are ``vpdpbusds``/``vpdpwssds``), so
every partial sum is the true sum modulo 2^32; the layer's load-time bound
(:func:`eventformer.fixedpoint.quantise`: the worst-case sum fits int32) makes the final sum the
true one, whatever the order of the additions.

Numba's LLVM does not form ``vpdpbusd`` from a plain loop (an i8 dot product vectorises to
``vpdpwssd`` on widened words, at a third of the speed), so the instructions are called as LLVM
intrinsics on 16-lane int32 vectors held in registers (:data:`i32x16`), on a CPU with
AVX512-VNNI (:data:`VNNI`). On a CPU with AVX2 only (:data:`AVX2_DOT`: AMD Zen 1-3, Intel before
Ice Lake) each vector is two 256-bit halves and the dot products are AVX2's older pair:

- ``uint8 x int8``: ``vpmaddubsw`` (two byte products summed into an int16, *saturating*), then
  ``vpmaddwd`` against ones (two int16 into an int32) and ``vpaddd``. Exact while a pair of
  products fits int16: rows up to :data:`UINT8_ROW_MAX` (127; 2 x 127 x 128 = 32512), which the
  layers guarantee before they choose uint8 rows (spikes and the residual stream's small
  integers do); 32 multiply-accumulates per 256-bit step, twice an FMA's 8 x 2 per cycle
  (Zen 3, `benchmarks/int_gemm.py`);
- ``int16 x int16``: ``vpmaddwd`` and ``vpaddd``, exact (wrapping as ``vpdpwssd`` does).

Elsewhere the intrinsics expand into portable vector code (widen, multiply, add adjacent
products), exact and slower.

Layout: the weights are packed once at load (:func:`pack_igemm`) into panels of
:data:`PANEL` output channels, each panel ``[groups, PANEL, 4 bytes]``: one 4-byte group of
consecutive k per int32 lane, so a group's two 16-lane vectors are 128 contiguous bytes. The
kernel walks blocks of :data:`ROWS` input rows; per group it broadcasts each row's 4 bytes and
issues ROWS x 2 dot products into ROWS x 2 accumulators: with VNNI 6 rows (12 + 2 weight vectors
+ 1 broadcast of the 32 zmm registers), so each weight load serves 6 instructions and the
block's rows stay in L1; on AVX2, whose 16 ymm registers hold half as much, 3 rows (12 ymm
accumulators, a broadcast, the ones and a product).
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

from ..jit import inlined, kernel
from ._common import host_compiles_for

PANEL = 32  # output channels per panel: two 16-lane int32 vectors
_LANES = 16
_VEC = ir.VectorType(ir.IntType(32), _LANES)
_I32 = ir.IntType(32)

#: The integer dot-product instructions are available (and the kernel compiled, not run as
#: Python): the integer GEMM then beats float BLAS (benchmarks/int_gemm.py).
VNNI = host_compiles_for("avx512vnni")
#: No VNNI, but AVX2's vpmaddubsw / vpmaddwd: the dot products run on those (see above).
AVX2_DOT = not VNNI and host_compiles_for("avx2")
#: The largest uint8 row value the kernel multiplies exactly: all of them on VNNI (and in the
#: portable form); on AVX2 vpmaddubsw saturates a pair of products above int16, so 127.
UINT8_ROW_MAX = 127 if AVX2_DOT else 255
#: The kernel runs on the CPU's integer dot products (VNNI or AVX2), where it beats float BLAS
#: (benchmarks/int_gemm.py; elsewhere its portable form is exact but slower).
INTEGER_DOT = VNNI or AVX2_DOT
ROWS = 3 if AVX2_DOT else 6  # input rows per register block


# --- a 16-lane int32 vector in a register ----------------------------------------------------


class _I32x16Type(types.Type):
    def __init__(self):
        super().__init__(name="i32x16")


#: Numba's type of an accumulator: an LLVM ``<16 x i32>``, a register, not memory.
i32x16 = _I32x16Type()


@register_model(_I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _address(context, builder, arrty, arr, offset):
    """An i8 pointer ``offset`` bytes into the data of array ``arr``."""
    ary = context.make_array(arrty)(context, builder, arr)
    base = builder.bitcast(ary.data, ir.IntType(8).as_pointer())
    return builder.gep(base, [offset])


@intrinsic
def _zero_jit(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC, None)
    return i32x16(), codegen


@intrinsic
def _load_jit(typingctx, arr, offset):
    """16 int32 lanes from ``offset`` bytes into ``arr`` (unaligned)."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=1)
    return i32x16(arr, offset), codegen


def _splat_value(builder, value):
    vec = builder.insert_element(ir.Constant(_VEC, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_VEC, None))


@intrinsic
def _splat_jit(typingctx, arr, offset):
    """The 4 bytes at ``offset`` bytes into ``arr`` in every lane (LLVM folds the load into
    the dot product's broadcast operand)."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1])
        return _splat_value(builder, builder.load(builder.bitcast(ptr, _I32.as_pointer()),
                                                  align=1))
    return i32x16(arr, offset), codegen


@intrinsic
def _splat_word_jit(typingctx, word):
    """An integer's low 32 bits in every lane."""
    def codegen(context, builder, sig, args):
        return _splat_value(builder, builder.trunc(args[0], _I32)
                            if args[0].type.width > 32 else args[0])
    return i32x16(word), codegen


@intrinsic
def _byte_jit(typingctx, arr, offset):
    """The byte at ``offset`` bytes into ``arr``, as an int64 in 0..255."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1])
        return builder.zext(builder.load(ptr), ir.IntType(64))
    return types.int64(arr, offset), codegen


@intrinsic
def _store_jit(typingctx, arr, offset, vec):
    """Store 16 int32 lanes at ``offset`` bytes into ``arr`` (unaligned)."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VEC.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(arr, offset, vec), codegen


@intrinsic
def _store_row_jit(typingctx, out, edge, whole, offset, r, vec0, vec1):
    """Row r of a register block's panel, two vectors: at ``offset`` bytes into ``out`` when
    the panel is ``whole``, else into row r of ``edge`` (the address chosen, no branch). An
    intrinsic, not an inlined helper: a block stores six rows, and each inlined copy of a
    helper costs Numba a tenth of a second on a user's first run."""
    def codegen(context, builder, sig, args):
        r_bytes = builder.mul(context.cast(builder, args[4], sig.args[4], types.intp),
                              ir.Constant(ir.IntType(64), PANEL * 4))
        direct = _address(context, builder, sig.args[0], args[0], args[3])
        spill = _address(context, builder, sig.args[1], args[1], r_bytes)
        whole_bit = context.cast(builder, args[2], sig.args[2], types.boolean)
        ptr = builder.select(whole_bit, direct, spill)
        builder.store(args[5], builder.bitcast(ptr, _VEC.as_pointer()), align=1)
        high = builder.gep(ptr, [ir.Constant(ir.IntType(64), 64)])
        builder.store(args[6], builder.bitcast(high, _VEC.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(out, edge, whole, offset, r, vec0, vec1), codegen


@intrinsic
def _tail_jit(typingctx, rows, offset, nbytes):
    """The last, partial group of a row: its 1-3 bytes at ``offset`` (with zero bytes above
    them) in every lane; reading 4 bytes there could cross the end of the array. An intrinsic
    for the reason :func:`_store_row_jit` is one."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        ptr = _address(context, builder, sig.args[0], args[0], args[1])
        n = context.cast(builder, args[2], sig.args[2], types.intp)
        word = cgutils.alloca_once_value(builder, builder.zext(builder.load(ptr), i32))
        for b in (1, 2):
            with builder.if_then(builder.icmp_signed(">", n, ir.Constant(n.type, b))):
                byte = builder.load(builder.gep(ptr, [ir.Constant(ir.IntType(64), b)]))
                part = builder.shl(builder.zext(byte, i32), ir.Constant(i32, 8 * b))
                builder.store(builder.or_(builder.load(word), part), word)
        return _splat_value(builder, builder.load(word))
    return i32x16(rows, offset, nbytes), codegen


def _avx2_dot(builder, acc, x, w, bits):
    """What :func:`_portable_dot` computes, on AVX2 per 256-bit half: vpmaddubsw (exact for
    bytes up to UINT8_ROW_MAX) then vpmaddwd against ones, or vpmaddwd on words; then vpaddd."""
    half = ir.VectorType(_I32, _LANES // 2)
    bytes32 = ir.VectorType(ir.IntType(8), 32)
    words16 = ir.VectorType(ir.IntType(16), 16)
    module = builder.module
    madd_wd = cgutils.get_or_insert_function(
        module, ir.FunctionType(half, [words16, words16]), "llvm.x86.avx2.pmadd.wd")
    maddubs = cgutils.get_or_insert_function(
        module, ir.FunctionType(words16, [bytes32, bytes32]), "llvm.x86.avx2.pmadd.ub.sw")
    ones = ir.Constant(words16, [1] * 16)
    halves = []
    for part in range(2):
        lanes = ir.Constant(half, list(range(part * 8, part * 8 + 8)))
        a = builder.shuffle_vector(acc, acc, lanes)
        xs = builder.shuffle_vector(x, x, lanes)
        ws = builder.shuffle_vector(w, w, lanes)
        if bits == 8:
            pairs = builder.call(maddubs, [builder.bitcast(xs, bytes32),
                                           builder.bitcast(ws, bytes32)])
            sums = builder.call(madd_wd, [pairs, ones])
        else:
            sums = builder.call(madd_wd, [builder.bitcast(xs, words16),
                                          builder.bitcast(ws, words16)])
        halves.append(builder.add(a, sums))
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(_VEC, list(range(_LANES))))


def _portable_dot(builder, acc, x, w, bits):
    """acc + the sums of adjacent products of x (unsigned bytes, or signed words) and w (signed)
    per lane, in plain vector IR: what vpdpbusd / vpdpwssd compute, wrapping alike."""
    per = 32 // bits
    n = _LANES * per
    narrow = ir.VectorType(ir.IntType(bits), n)
    wide = ir.VectorType(_I32, n)
    xs = builder.bitcast(x, narrow)
    ws = builder.bitcast(w, narrow)
    xw = builder.zext(xs, wide) if bits == 8 else builder.sext(xs, wide)
    products = builder.mul(xw, builder.sext(ws, wide))
    out = acc
    for t in range(per):
        lanes = ir.Constant(ir.VectorType(_I32, _LANES), [j * per + t for j in range(_LANES)])
        out = builder.add(out, builder.shuffle_vector(products, products, lanes))
    return out


@intrinsic
def _dot_jit(typingctx, acc, x, w, rows):
    """``acc`` plus, per lane, the adjacent products of ``x`` and ``w``: 4 bytes (``rows``
    uint8) or 2 words (``rows`` int16) per lane. Other input dtypes do not type."""
    if not isinstance(rows, types.Array) or rows.dtype not in (types.uint8, types.int16):
        return None
    bits = rows.dtype.bitwidth
    name = "llvm.x86.avx512.vpdpbusd.512" if bits == 8 else "llvm.x86.avx512.vpdpwssd.512"

    def codegen(context, builder, sig, args):
        acc, x, w = args[:3]
        if VNNI:
            fnty = ir.FunctionType(_VEC, [_VEC, _VEC, _VEC])
            return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name),
                                [acc, x, w])
        if AVX2_DOT:
            return _avx2_dot(builder, acc, x, w, bits)
        return _portable_dot(builder, acc, x, w, bits)
    return i32x16(acc, x, w, rows), codegen


# --- the same helpers as plain Python (NUMBA_DISABLE_JIT=1) --------------------------------


def _bytes_at(arr, offset, n):
    return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(arr.ctypes.data + offset))


def _zero_py():
    return np.zeros(_LANES, np.int32)


def _load_py(arr, offset):
    return _bytes_at(arr, offset, 4 * _LANES).view(np.int32).copy()


def _splat_py(arr, offset):
    return np.full(_LANES, _bytes_at(arr, offset, 4).view(np.int32)[0], np.int32)


def _splat_word_py(word):
    return np.full(_LANES, np.int64(word) & 0xFFFFFFFF, np.uint32).view(np.int32)


def _byte_py(arr, offset):
    return int(_bytes_at(arr, offset, 1)[0])


def _store_py(arr, offset, vec):
    _bytes_at(arr, offset, 4 * _LANES)[:] = np.asarray(vec, np.int32).view(np.uint8)


def _store_row_py(out, edge, whole, offset, r, vec0, vec1):
    if whole:
        _store_py(out, offset, vec0)
        _store_py(out, offset + 64, vec1)
    else:
        _store_py(edge, r * PANEL * 4, vec0)
        _store_py(edge, r * PANEL * 4 + 64, vec1)


def _tail_py(rows, offset, nbytes):
    word = 0
    for b in range(nbytes):
        word |= _byte_py(rows, offset + b) << (8 * b)
    return _splat_word_py(word)


def _dot_py(acc, x, w, rows):
    if rows.dtype == np.uint8:
        xs, ws = x.view(np.uint8).astype(np.int64), w.view(np.int8).astype(np.int64)
    elif rows.dtype == np.int16:
        xs, ws = x.view(np.int16).astype(np.int64), w.view(np.int16).astype(np.int64)
    else:
        raise TypeError(f"int_gemm takes uint8 or int16 rows, not {rows.dtype}")
    total = acc.astype(np.int64) + (xs * ws).reshape(_LANES, -1).sum(axis=1)
    return (total & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


if config.DISABLE_JIT:
    _zero, _load, _splat, _splat_word, _byte, _store, _dot, _store_row, _tail = (
        _zero_py, _load_py, _splat_py, _splat_word_py, _byte_py, _store_py, _dot_py,
        _store_row_py, _tail_py)
else:
    _zero, _load, _splat, _splat_word, _byte, _store, _dot, _store_row, _tail = (
        _zero_jit, _load_jit, _splat_jit, _splat_word_jit, _byte_jit, _store_jit, _dot_jit,
        _store_row_jit, _tail_jit)


# --- packing and the kernel --------------------------------------------------------------------


def pack_igemm(weight: np.ndarray, dtype) -> np.ndarray:
    """The weights ``[k, n]`` (integers) packed for :func:`int_gemm`: ``dtype`` int8 (for uint8
    rows) or int16 (for int16 rows); shape ``[panels, groups, PANEL, 4 // itemsize]``, zero
    beyond k and n. Raises ValueError if a weight does not fit ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype not in (np.int8, np.int16):
        raise ValueError(f"igemm packs int8 or int16 weights, not {dtype}")
    w = np.asarray(weight)
    if w.ndim != 2:
        raise ValueError(f"igemm packs a [k, n] weight matrix, got shape {w.shape}")
    info = np.iinfo(dtype)
    if w.size and (w.min() < info.min or w.max() > info.max):
        raise ValueError(f"weights in [{w.min()}, {w.max()}] do not fit {dtype}")
    k, n = w.shape
    per = 4 // dtype.itemsize
    groups = -(-k // per)
    panels = -(-n // PANEL)
    padded = np.zeros((groups * per, panels * PANEL), dtype)
    padded[:k, :n] = w
    return np.ascontiguousarray(padded.reshape(groups, per, panels, PANEL).transpose(2, 0, 3, 1))


@inlined
def _spill(out, edge, i, count, c0, n):
    """Copy the first n - c0 channels of ``count`` rows of ``edge`` (a partial panel, stored
    there by :func:`_store_row`) to output rows i.. at channel c0."""
    for r in range(count):
        for c in range(n - c0):
            out[i + r, c0 + c] = edge[r, c]


@inlined
def _start(bias, p):
    """The accumulators' start for panel p: its 32 bias values (``bias`` padded to whole
    panels), or zeros for an empty ``bias``."""
    if bias.shape[0] == 0:
        return _zero(), _zero()
    return _load(bias, p * PANEL * 4), _load(bias, p * PANEL * 4 + 64)


@inlined
def _block(rows, packed, bias, out, edge, i, p, groups, tail, sa, so, sp, n):
    """Output rows i..i+ROWS-1, panel p: 12 accumulators (from the panel's bias) through every
    group of k."""
    b0, b1 = _start(bias, p)
    c00 = c10 = c20 = c30 = c40 = c50 = b0
    c01 = c11 = c21 = c31 = c41 = c51 = b1
    r0 = i * sa
    w_at = p * sp
    for g in range(groups):
        w0 = _load(packed, w_at)
        w1 = _load(packed, w_at + 64)
        x = _splat(rows, r0 + 4 * g)
        c00 = _dot(c00, x, w0, rows)
        c01 = _dot(c01, x, w1, rows)
        x = _splat(rows, r0 + sa + 4 * g)
        c10 = _dot(c10, x, w0, rows)
        c11 = _dot(c11, x, w1, rows)
        x = _splat(rows, r0 + 2 * sa + 4 * g)
        c20 = _dot(c20, x, w0, rows)
        c21 = _dot(c21, x, w1, rows)
        x = _splat(rows, r0 + 3 * sa + 4 * g)
        c30 = _dot(c30, x, w0, rows)
        c31 = _dot(c31, x, w1, rows)
        x = _splat(rows, r0 + 4 * sa + 4 * g)
        c40 = _dot(c40, x, w0, rows)
        c41 = _dot(c41, x, w1, rows)
        x = _splat(rows, r0 + 5 * sa + 4 * g)
        c50 = _dot(c50, x, w0, rows)
        c51 = _dot(c51, x, w1, rows)
        w_at += 4 * PANEL
    if tail:
        w0 = _load(packed, w_at)
        w1 = _load(packed, w_at + 64)
        at = r0 + 4 * groups
        x = _tail(rows, at, tail)
        c00 = _dot(c00, x, w0, rows)
        c01 = _dot(c01, x, w1, rows)
        x = _tail(rows, at + sa, tail)
        c10 = _dot(c10, x, w0, rows)
        c11 = _dot(c11, x, w1, rows)
        x = _tail(rows, at + 2 * sa, tail)
        c20 = _dot(c20, x, w0, rows)
        c21 = _dot(c21, x, w1, rows)
        x = _tail(rows, at + 3 * sa, tail)
        c30 = _dot(c30, x, w0, rows)
        c31 = _dot(c31, x, w1, rows)
        x = _tail(rows, at + 4 * sa, tail)
        c40 = _dot(c40, x, w0, rows)
        c41 = _dot(c41, x, w1, rows)
        x = _tail(rows, at + 5 * sa, tail)
        c50 = _dot(c50, x, w0, rows)
        c51 = _dot(c51, x, w1, rows)
    # a whole panel straight into out; the last, partial one through edge, copied once for all
    # six rows (a store helper and a tail helper per row, each inlined, cost Numba 0.7-1 s of
    # the kernel's compile on a first run)
    c0 = p * PANEL
    whole = c0 + PANEL <= n
    o = i * so + c0 * 4
    _store_row(out, edge, whole, o, 0, c00, c01)
    _store_row(out, edge, whole, o + so, 1, c10, c11)
    _store_row(out, edge, whole, o + 2 * so, 2, c20, c21)
    _store_row(out, edge, whole, o + 3 * so, 3, c30, c31)
    _store_row(out, edge, whole, o + 4 * so, 4, c40, c41)
    _store_row(out, edge, whole, o + 5 * so, 5, c50, c51)
    if not whole:
        _spill(out, edge, i, ROWS, c0, n)


@inlined
def _block3(rows, packed, bias, out, edge, i, p, groups, tail, sa, so, sp, n):
    """:func:`_block` for 3 rows (ROWS on AVX2): 6 accumulators, 12 ymm registers."""
    b0, b1 = _start(bias, p)
    c00 = c10 = c20 = b0
    c01 = c11 = c21 = b1
    r0 = i * sa
    w_at = p * sp
    for g in range(groups):
        w0 = _load(packed, w_at)
        w1 = _load(packed, w_at + 64)
        x = _splat(rows, r0 + 4 * g)
        c00 = _dot(c00, x, w0, rows)
        c01 = _dot(c01, x, w1, rows)
        x = _splat(rows, r0 + sa + 4 * g)
        c10 = _dot(c10, x, w0, rows)
        c11 = _dot(c11, x, w1, rows)
        x = _splat(rows, r0 + 2 * sa + 4 * g)
        c20 = _dot(c20, x, w0, rows)
        c21 = _dot(c21, x, w1, rows)
        w_at += 4 * PANEL
    if tail:
        w0 = _load(packed, w_at)
        w1 = _load(packed, w_at + 64)
        at = r0 + 4 * groups
        x = _tail(rows, at, tail)
        c00 = _dot(c00, x, w0, rows)
        c01 = _dot(c01, x, w1, rows)
        x = _tail(rows, at + sa, tail)
        c10 = _dot(c10, x, w0, rows)
        c11 = _dot(c11, x, w1, rows)
        x = _tail(rows, at + 2 * sa, tail)
        c20 = _dot(c20, x, w0, rows)
        c21 = _dot(c21, x, w1, rows)
    c0 = p * PANEL
    whole = c0 + PANEL <= n
    o = i * so + c0 * 4
    _store_row(out, edge, whole, o, 0, c00, c01)
    _store_row(out, edge, whole, o + so, 1, c10, c11)
    _store_row(out, edge, whole, o + 2 * so, 2, c20, c21)
    if not whole:
        _spill(out, edge, i, ROWS, c0, n)


#: The register block the kernel walks: ROWS rows by one panel.
_rows_block = _block3 if ROWS == 3 else _block


@inlined
def _row(rows, packed, bias, out, edge, i, p, groups, tail, sa, so, sp, n):
    """Output row i, panel p (the rows after the last whole block)."""
    c0, c1 = _start(bias, p)
    r0 = i * sa
    w_at = p * sp
    for g in range(groups):
        x = _splat(rows, r0 + 4 * g)
        c0 = _dot(c0, x, _load(packed, w_at), rows)
        c1 = _dot(c1, x, _load(packed, w_at + 64), rows)
        w_at += 4 * PANEL
    if tail:
        x = _tail(rows, r0 + 4 * groups, tail)
        c0 = _dot(c0, x, _load(packed, w_at), rows)
        c1 = _dot(c1, x, _load(packed, w_at + 64), rows)
    cp = p * PANEL
    whole = cp + PANEL <= n
    _store_row(out, edge, whole, i * so + cp * 4, 0, c0, c1)
    if not whole:
        _spill(out, edge, i, 1, cp, n)


@kernel
def int_gemm(rows, packed, out, bias):
    """``out = rows @ W + bias`` exactly in int32, on integer dot products (VNNI, or AVX2).

    ``W`` [k, n] is given packed (:func:`~eventformer.kernels.igemm.pack_igemm`): int8 weights
    with uint8 rows (``vpdpbusd``; on AVX2 ``vpmaddubsw``, exact for rows up to
    :data:`~eventformer.kernels.igemm.UINT8_ROW_MAX`), int16 weights with int16 rows
    (``vpdpwssd``; ``vpmaddwd``). Sums wrap modulo 2^32 as they go, so the result is exact
    whenever the true sums fit int32 (the layers' load-time bound). Rows may be a block of a
    larger buffer; callers split the rows over threads (nogil).

    Parameters
    ----------
    rows : uint8|int16[m, k], each row contiguous
        The GEMM's input rows: spike counts or small non-negative integers up to UINT8_ROW_MAX
        (uint8), or integers up to 32767 in magnitude (int16).
    packed : int8|int16[panels, groups, 32, 4 // itemsize], C-contiguous
        ``pack_igemm(W, np.int8)`` for uint8 rows, ``pack_igemm(W, np.int16)`` for int16 rows:
        ``panels * 32 >= n`` and ``groups`` covers k; zero beyond them.
    out : int32[m, n], each row contiguous, overwritten
        ``out[i, j] = bias[j] + sum_c rows[i, c] * W[c, j]``.
    bias : int32[panels * 32] or int32[0]
        Each output channel's start (the layer's bias, zero beyond n: the accumulators begin
        from it, so no second pass over ``out`` adds it), or empty for none.

    Returns
    -------
    None
        The result is ``out``, overwritten in full.
    """
    m, k = rows.shape
    n = out.shape[1]
    if (rows.itemsize != packed.itemsize or out.shape[0] != m
            or (m > 0 and k > 1 and rows.strides[1] != rows.itemsize)
            or (m > 0 and n > 1 and out.strides[1] != 4) or packed.shape[2] != PANEL
            or packed.shape[3] * packed.itemsize != 4 or packed.shape[0] * PANEL < n
            or 4 * packed.shape[1] < k * rows.itemsize
            or (bias.shape[0] != 0 and bias.shape[0] != packed.shape[0] * PANEL)):
        raise ValueError("int_gemm: rows, packed weights, bias and out do not match")
    row_bytes = k * rows.itemsize
    groups = row_bytes // 4
    tail = row_bytes - 4 * groups
    sa = rows.strides[0]
    so = out.strides[0]
    sp = packed.strides[0]
    panels = (n + PANEL - 1) // PANEL
    edge = np.empty((ROWS, PANEL), np.int32)
    i = 0
    while i + ROWS <= m:
        for p in range(panels):
            _rows_block(rows, packed, bias, out, edge, i, p, groups, tail, sa, so, sp, n)
        i += ROWS
    while i < m:
        for p in range(panels):
            _row(rows, packed, bias, out, edge, i, p, groups, tail, sa, so, sp, n)
        i += 1
