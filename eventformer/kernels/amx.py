"""Exact int8 GEMM on AMX tiles (Intel Advanced Matrix Extensions), reached from Numba alone.

AMX adds eight tile registers of up to 16 rows x 64 bytes and one instruction that multiplies
two of them into a third: ``tdpbusd`` (uint8 rows x int8 weights) or ``tdpbssd`` (int8 x int8)
adds a 16 x 64 by 64 x 16 byte product into a 16 x 16 int32 tile, 16,384 multiply-accumulates
at once, against 64 for one ``vpdpbusd`` (:mod:`eventformer.kernels.igemm`). Like the VNNI
forms, the int32 sums wrap modulo 2^32, so the result is exact whenever the true sums fit int32
(the layers' load-time bound, :func:`eventformer.fixedpoint.quantise`), in any order of addition.

Reaching the tiles needs no C compiler and no torch: the kernel below is ordinary Numba code
whose tile operations are LLVM's x86 AMX intrinsics (``llvm.x86.ldtilecfg``,
``llvm.x86.tileloadd64``, ``llvm.x86.tdpbusd`` ...) emitted through ``@intrinsic``, each naming
its tile register as a constant, so the kernel itself decides which tile holds what. Numba
compiles for the host CPU, whose features then include ``amx-tile`` and ``amx-int8``.

Linux keeps tile data off for a process until it asks: an AMX instruction before
``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`` succeeds faults (SIGILL). :data:`AMX` is
True only after that request succeeded (made once, at import, only on a CPU whose flags show
AMX), and :func:`amx_gemm` refuses to run otherwise; the permission is the whole process's, so
callers may split rows over threads (nogil), each thread loading its own tile configuration.

Layout: :func:`pack_amx` packs the weights once at load into column tiles of 16 output
channels, each ``[chunks, 16, 64]``: per chunk of 64 k, 16 rows of one 4-byte group of k per
output channel (AMX's "VNNI" layout of the B operand), so one weight tile is 1 KiB of contiguous
bytes, zero beyond k and n. The kernel computes blocks of 32 rows x 32 channels in four int32
accumulator tiles (tmm0-3), loading two row tiles (tmm4-5, 16 rows x 64 k each) and two weight
tiles (tmm6-7) per chunk of k: four tile products per four loads. Tails stay exact without
copying rows: where k is not a multiple of 64, the last chunk of each row is read in place
from byte k - 64 (overlapping the chunk before it) against a weight chunk packed to match,
whose rows already counted are zero; a k below 64 is one narrower chunk (the row tiles
configured to read only its bytes, rounded up to whole 4-byte groups, times zero weights). A
last partial block of rows (or the last block, where a narrow chunk would read past the
buffer's end) is copied into a zeroed block, and blocks reaching past n or m are stored into a
scratch tile and copied.
"""

from __future__ import annotations

import ctypes
import os
import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ..jit import inlined, kernel

TILE_ROWS = 16  # rows of a tile: of a row block, of 4-byte groups of k, of an accumulator
CHUNK = 64  # bytes per tile row: 64 k of uint8/int8 rows; 16 int32 channels of an accumulator
BLOCK = 2 * TILE_ROWS  # rows and output channels of one block: 2 x 2 accumulator tiles
_WEIGHT_TILE = TILE_ROWS * CHUNK  # bytes of one packed weight tile

# arch_prctl(2) on x86-64 Linux: the syscall's number, the request and the tile-data feature
_SYS_ARCH_PRCTL = 158
_ARCH_GET_XCOMP_PERM = 0x1022
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


# --- detection ---------------------------------------------------------------------------------


def _cpu_flags(cpuinfo: str) -> set:
    """The CPU's feature flags as /proc/cpuinfo lists them (the first processor's)."""
    with open(cpuinfo, encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    return set()


def _request_tile_data() -> str:
    """Ask Linux for this process's permission to use tile data; '' if granted, else why not."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_REQ_XCOMP_PERM),
                    ctypes.c_ulong(_XFEATURE_XTILEDATA)) != 0:
        err = ctypes.get_errno()
        return (f"Linux refused tile data (arch_prctl ARCH_REQ_XCOMP_PERM: "
                f"{os.strerror(err)}, errno {err})")
    granted = ctypes.c_uint64(0)
    if (libc.syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_GET_XCOMP_PERM),
                     ctypes.byref(granted)) != 0
            or not granted.value >> _XFEATURE_XTILEDATA & 1):
        return "Linux accepted the tile-data request but does not list it as permitted"
    return ""


def _detect(cpuinfo: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """(True, '') where the kernel may run: an x86-64 Linux CPU with AMX int8 tiles, Numba
    compiling for this host (so its code may use them), and Linux's tile-data permission
    granted to this process. Otherwise (False, the first reason it may not). Never raises."""
    try:
        if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
            return False, f"AMX is reached through Linux on x86-64, not {platform.system()} " \
                          f"on {platform.machine()}"
        missing = {"amx_tile", "amx_int8"} - _cpu_flags(cpuinfo)
        if missing:
            return False, f"the CPU has no {' or '.join(sorted(missing))} ({cpuinfo})"
        if config.DISABLE_JIT:
            return False, "Numba's JIT is disabled (NUMBA_DISABLE_JIT)"
        if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES is not None:
            return False, "Numba compiles for another CPU than this host (NUMBA_CPU_NAME)"
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
        if not (features.get("amx-tile", False) and features.get("amx-int8", False)):
            return False, "LLVM does not see amx-tile and amx-int8 on this host"
        refused = _request_tile_data()
        return (False, refused) if refused else (True, "")
    except Exception as exc:  # noqa: BLE001 - detection answers False, whatever went wrong
        return False, f"AMX detection failed: {type(exc).__name__}: {exc}"


#: The AMX kernel may run here: the CPU has int8 tiles and this process may use them.
#: :data:`AMX_REASON` says why not where it is False.
AMX, AMX_REASON = _detect()


# --- tile intrinsics ---------------------------------------------------------------------------

_I8 = ir.IntType(8)
_I64 = ir.IntType(64)
_PTR = _I8.as_pointer()


def _call(builder, name, argtys, args) -> None:
    fnty = ir.FunctionType(ir.VoidType(), argtys)
    builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _address(context, builder, arrty, arr, offset):
    """An i8 pointer ``offset`` bytes into the data of array ``arr``."""
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.gep(builder.bitcast(ary.data, _PTR), [offset])


def _tile_numbers(*tiles) -> list:
    """Tile register numbers, which must be literal integers (the instructions encode them)."""
    if not AMX:
        raise TypingError(f"AMX tile instructions may not be compiled here: {AMX_REASON}")
    if not all(isinstance(t, types.IntegerLiteral) and 0 <= t.literal_value < 8 for t in tiles):
        return []
    return [t.literal_value for t in tiles]


@intrinsic
def _configure(typingctx, cfg):
    """Load the 64-byte tile configuration ``cfg`` (``ldtilecfg``): palette, rows, bytes."""
    _tile_numbers()

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], ir.Constant(_I64, 0))
        _call(builder, "llvm.x86.ldtilecfg", [_PTR], [ptr])
        return context.get_dummy_value()
    return types.none(cfg), codegen


@intrinsic
def _release(typingctx):
    """Return the tiles to their initial state (``tilerelease``)."""
    _tile_numbers()

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic(prefer_literal=True)
def _zero(typingctx, tile):
    nums = _tile_numbers(tile)
    if not nums:
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [ir.Constant(_I8, nums[0])])
        return context.get_dummy_value()
    return types.none(tile), codegen


def _memory_op(name):
    @intrinsic(prefer_literal=True)
    def op(typingctx, tile, arr, offset, stride):
        nums = _tile_numbers(tile)
        if not nums or not isinstance(arr, types.Array):
            return None

        def codegen(context, builder, sig, args):
            ptr = _address(context, builder, sig.args[1], args[1], args[2])
            _call(builder, name, [_I8, _PTR, _I64],
                  [ir.Constant(_I8, nums[0]), ptr, context.cast(builder, args[3], sig.args[3],
                                                                types.int64)])
            return context.get_dummy_value()
        return types.none(tile, arr, offset, stride), codegen
    return op


#: ``_load(t, arr, offset, stride)``: tile t's rows from ``offset`` bytes into ``arr``, rows
#: ``stride`` bytes apart (``tileloadd``); ``_store`` writes them back (``tilestored``).
_load = _memory_op("llvm.x86.tileloadd64")
_store = _memory_op("llvm.x86.tilestored64")


@intrinsic(prefer_literal=True)
def _dot(typingctx, acc, a, b, rows):
    """Tile ``acc`` += tile ``a`` (rows of ``rows``' dtype) x tile ``b`` (int8, grouped by 4):
    ``tdpbusd`` for uint8 rows, ``tdpbssd`` for int8 rows."""
    nums = _tile_numbers(acc, a, b)
    if not nums or not isinstance(rows, types.Array) or rows.dtype not in (types.uint8,
                                                                              types.int8):
        return None
    name = "llvm.x86.tdpbusd" if rows.dtype == types.uint8 else "llvm.x86.tdpbssd"

    def codegen(context, builder, sig, args):
        _call(builder, name, [_I8] * 3, [ir.Constant(_I8, t) for t in nums])
        return context.get_dummy_value()
    return types.none(acc, a, b, rows), codegen


# --- packing and the kernel --------------------------------------------------------------------


def pack_amx(weight: np.ndarray) -> np.ndarray:
    """The int8 weights ``[k, n]`` packed for :func:`amx_gemm` with rows of exactly k columns:
    int8 of shape ``[2 * ceil(n / 32), ceil(k / 64), 16, 64]``, ``packed[t, c, g, 4 * j + b]``
    holding ``W[64 * c + 4 * g + b, 16 * t + j]``, zero beyond n. Where k is past 64 but not a
    multiple of it, the last chunk is aligned to the end of k instead (it holds rows k - 64 ..
    k - 1, the rows the chunks before it hold zeroed), so the kernel reads that chunk of every
    row in place, from byte k - 64; a k below 64 fills one chunk from its start, zero beyond k.
    Raises ValueError if the weights are not a matrix or do not fit int8."""
    w = np.asarray(weight)
    if w.ndim != 2:
        raise ValueError(f"pack_amx packs a [k, n] weight matrix, got shape {w.shape}")
    if w.size and (w.min() < -128 or w.max() > 127):
        raise ValueError(f"weights in [{w.min()}, {w.max()}] do not fit int8")
    k, n = w.shape
    chunks = -(-k // CHUNK)
    col_tiles = 2 * -(-n // BLOCK)
    padded = np.zeros((chunks * CHUNK, col_tiles * TILE_ROWS), np.int8)
    whole = k - k % CHUNK
    padded[:whole, :n] = w[:whole]
    if k > CHUNK and whole < k:  # the rows after the whole chunks, at the end of the last
        padded[chunks * CHUNK - (k - whole):, :n] = w[whole:]
    else:
        padded[whole:k, :n] = w[whole:]
    # [chunk, group, byte, col tile, channel] -> [col tile, chunk, group, channel, byte]
    tiles = padded.reshape(chunks, TILE_ROWS, 4, col_tiles, TILE_ROWS).transpose(3, 0, 1, 4, 2)
    return np.ascontiguousarray(tiles).reshape(col_tiles, chunks, TILE_ROWS, CHUNK)


@inlined
def _configure_tiles(row_bytes):
    """Palette 1; tiles 0-7 of 16 rows x 64 bytes, except that row tiles 4-5 read
    ``row_bytes`` of k per row and weight tiles 6-7 then have ``row_bytes / 4`` rows (one
    chunk of a k below 64)."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = row_bytes if t == 4 or t == 5 else CHUNK  # uint16, little-endian
        cfg[48 + t] = row_bytes // 4 if t == 6 or t == 7 else TILE_ROWS
    _configure(cfg)


@inlined
def _accumulate(a, a_at, sa, packed, b_at, sb, whole, tail_at, rows):
    """Tiles 0-3 += 32 rows of ``a`` (from byte ``a_at``, ``sa`` bytes apart) x the weights of
    the column tiles at bytes ``b_at`` and ``b_at + sb``: the ``whole`` chunks of k from each
    row's start, then, if ``tail_at >= 0``, the last chunk read from byte ``tail_at`` of each
    row. Accumulator tile 2r+s: row tile r, column tile s."""
    for c in range(whole + (tail_at >= 0)):
        at = a_at + (c * CHUNK if c < whole else tail_at)
        w_at = b_at + c * _WEIGHT_TILE
        # each product issued as soon as its two tiles are in (measured: up to 1.3x faster
        # than four loads, then four products)
        _load(4, a, at, sa)
        _load(6, packed, w_at, CHUNK)
        _dot(0, 4, 6, rows)
        _load(7, packed, w_at + sb, CHUNK)
        _dot(1, 4, 7, rows)
        _load(5, a, at + TILE_ROWS * sa, sa)
        _dot(2, 5, 6, rows)
        _dot(3, 5, 7, rows)


@inlined
def _zero_accumulators():
    _zero(0)
    _zero(1)
    _zero(2)
    _zero(3)


@inlined
def _store_block(out, at, so):
    """The 32 x 32 int32 block from ``at`` bytes into ``out``, rows ``so`` bytes apart."""
    _store(0, out, at, so)
    _store(1, out, at + CHUNK, so)
    _store(2, out, at + TILE_ROWS * so, so)
    _store(3, out, at + TILE_ROWS * so + CHUNK, so)


@inlined
def _put_block(out, edge, i, c0, m, n, so):
    """Block (rows i.., channels c0..) into ``out``: directly where all of it lies inside,
    else through the scratch block ``edge``, copying only what does."""
    if i + BLOCK <= m and c0 + BLOCK <= n:
        _store_block(out, i * so + c0 * 4, so)
    else:
        _store_block(edge, 0, BLOCK * 4)
        for r in range(min(BLOCK, m - i)):
            for c in range(min(BLOCK, n - c0)):
                out[i + r, c0 + c] = edge[r, c]


@kernel
def _amx_gemm(rows, packed, out):
    """The kernel behind :func:`amx_gemm`: must not run unless :data:`AMX`."""
    m, k = rows.shape
    n = out.shape[1]
    if (out.shape[0] != m or (m > 0 and k > 1 and rows.strides[1] != 1)
            or (m > 0 and n > 1 and out.strides[1] != 4)
            or packed.shape[2] != TILE_ROWS or packed.shape[3] != CHUNK
            or packed.shape[0] % 2 or packed.shape[0] * TILE_ROWS < n
            or packed.shape[1] != (k + CHUNK - 1) // CHUNK
            or (packed.size > 0 and (packed.strides[3] != 1 or packed.strides[2] != CHUNK
                                     or packed.strides[1] != _WEIGHT_TILE))):
        raise ValueError("amx_gemm: rows, packed weights and out do not match")
    whole = k // CHUNK  # chunks read from each row's start
    if k % CHUNK == 0:
        tail_at = -1  # no last partial chunk
    elif k > CHUNK:
        tail_at = k - CHUNK  # the last chunk overlaps the one before, its weights aligned
    else:
        tail_at = 0  # one chunk, narrower than a tile row
    # Row tiles read whole 4-byte groups: a k below 64 and not a multiple of 4 reads up to 3
    # bytes past each row's end (times zero weights), so the block holding the last row of the
    # buffer goes through a copy, as does a last partial block of rows.
    row_bytes = CHUNK if k >= CHUNK else max(4, (k + 3) // 4 * 4)
    in_place = m - m % BLOCK
    if in_place == m and in_place > 0 and row_bytes > k:
        in_place -= BLOCK
    sa = rows.strides[0]
    so = out.strides[0]
    sb = packed.strides[0]
    panels = (n + BLOCK - 1) // BLOCK
    width = max(k, CHUNK)
    last = np.zeros((BLOCK if in_place < m else 0, width), rows.dtype)
    for r in range(m - in_place):
        for c in range(k):
            last[r, c] = rows[in_place + r, c]
    edge = np.empty((BLOCK, BLOCK), np.int32)
    _configure_tiles(row_bytes)
    for i in range(0, in_place, BLOCK):
        for p in range(panels):
            _zero_accumulators()
            _accumulate(rows, i * sa, sa, packed, 2 * p * sb, sb, whole, tail_at, rows)
            _put_block(out, edge, i, p * BLOCK, m, n, so)
    if in_place < m:
        for p in range(panels):
            _zero_accumulators()
            _accumulate(last, 0, width, packed, 2 * p * sb, sb, whole, tail_at, rows)
            _put_block(out, edge, in_place, p * BLOCK, m, n, so)
    _release()


def amx_gemm(rows: np.ndarray, packed: np.ndarray, out: np.ndarray) -> None:
    """``out = rows @ W`` exactly in int32, on AMX tile products (``tdpbusd``/``tdpbssd``).

    The calling convention of :func:`eventformer.kernels.igemm.int_gemm`: ``W`` [k, n] given
    packed (:func:`pack_amx`), sums wrapping modulo 2^32 (exact whenever the true sums fit
    int32), rows a band of a larger buffer if the caller splits them over threads (the kernel
    releases the GIL).

    Parameters
    ----------
    rows : uint8|int8[m, k], each row contiguous
        Spike counts or other small integers: uint8 rows multiply as unsigned (``tdpbusd``),
        int8 rows as signed (``tdpbssd``).
    packed : int8[2 * ceil(n / 32), >= ceil(k / 64), 16, 64], C-contiguous
        ``pack_amx(W)``.
    out : int32[m, n], each row contiguous, overwritten
        ``out[i, j] = sum_c rows[i, c] * W[c, j]``.

    Raises
    ------
    RuntimeError
        Where :data:`AMX` is False (no tiles, or no permission to use them): the reason.
    ValueError
        If the shapes, dtypes or layouts do not match.
    """
    if not AMX:
        raise RuntimeError(f"AMX int8 tiles are not available here: {AMX_REASON}")
    if rows.dtype not in (np.uint8, np.int8) or packed.dtype != np.int8 \
            or out.dtype != np.int32 or rows.ndim != 2 or packed.ndim != 4 or out.ndim != 2:
        raise ValueError("amx_gemm takes uint8 or int8 rows [m, k], pack_amx weights and "
                         "int32 out [m, n]")
    _amx_gemm(rows, packed, out)
