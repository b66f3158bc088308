"""The int8 GEMM on AMX tiles (eventformer.kernels.amx).

The kernel must equal numpy's int64 matmul (wrapped to int32 where a test drives the sums past
it, as the tile products wrap) on random shapes with every kind of tail (rows, k and channels
not multiples of the 32 x 64 x 32 block) and at the full-size model's GEMM shapes. Those tests
are skipped, with the reason, where the CPU has no AMX or Linux does not let the process use
it; detection, packing and the refusal to run without AMX are tested everywhere.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numba import njit

from eventformer.kernels import amx
from eventformer.kernels.amx import AMX, AMX_REASON, BLOCK, CHUNK, amx_gemm, pack_amx

needs_amx = pytest.mark.skipif(not AMX, reason=f"no AMX int8 tiles here: {AMX_REASON}")

RANGES = {"uint8": (0, 255), "int8": (-128, 127)}  # rows dtype: its range


def _wrapped(a, w) -> np.ndarray:
    """The int64 product reduced modulo 2^32 into int32, as the tiles' wrapping sums are."""
    ref = a.astype(np.int64) @ np.asarray(w, np.int64)
    return ((ref + 2**31) % 2**32 - 2**31).astype(np.int32)


def _run(a, w) -> np.ndarray:
    out = np.full((a.shape[0], w.shape[1]), -7, np.int32)  # every entry must be written
    amx_gemm(a, pack_amx(w), out)
    return out


def _random(rng, dtype, m, k, n):
    lo, hi = RANGES[dtype]
    return rng.integers(lo, hi + 1, (m, k)).astype(dtype), rng.integers(-128, 128, (k, n))


# --- everywhere: detection, packing, refusal ---------------------------------------------------


def test_detection_never_raises_and_says_why_not(tmp_path, monkeypatch):
    assert isinstance(AMX, bool) and isinstance(AMX_REASON, str)
    assert AMX == (AMX_REASON == "")
    monkeypatch.setattr(amx.platform, "system", lambda: "Linux")  # the cpuinfo checks, anywhere
    monkeypatch.setattr(amx.platform, "machine", lambda: "x86_64")
    ok, why = amx._detect(str(tmp_path / "no-cpuinfo"))
    assert not ok and "FileNotFoundError" in why
    plain = tmp_path / "cpuinfo"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni\n\n")
    ok, why = amx._detect(str(plain))
    assert not ok and "amx_int8" in why and "amx_tile" in why
    with_amx = tmp_path / "cpuinfo-amx"
    with_amx.write_text("flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    monkeypatch.setattr(amx, "_request_tile_data", lambda: 1 / 0)  # any failure at all
    ok, why = amx._detect(str(with_amx))
    assert not ok and why
    monkeypatch.setattr(amx.platform, "machine", lambda: "aarch64")
    ok, why = amx._detect(str(with_amx))
    assert not ok and "aarch64" in why


def test_asking_again_gives_the_same_answer():
    assert amx._detect() == (AMX, AMX_REASON)


def test_refuses_to_run_without_amx(monkeypatch):
    """No tile instruction runs unless Linux granted tile data: the entry point checks first."""
    monkeypatch.setattr(amx, "AMX", False)
    monkeypatch.setattr(amx, "AMX_REASON", "the test said so")
    with pytest.raises(RuntimeError, match="the test said so"):
        amx_gemm(np.zeros((2, 4), np.uint8), pack_amx(np.zeros((4, 3))), np.zeros((2, 3),
                                                                                np.int32))


def _naive_pack(w) -> np.ndarray:
    """pack_amx's layout element by element, as its docstring states it."""
    k, n = w.shape
    chunks, tiles = -(-k // CHUNK), 2 * -(-n // BLOCK)
    whole = k // CHUNK
    out = np.zeros((tiles, chunks, 16, 64), np.int8)
    for t in range(tiles):
        for c in range(chunks):
            first = c * CHUNK if (c < whole or k < CHUNK) else k - CHUNK  # right-aligned tail
            for g in range(16):
                for j in range(16):
                    for b in range(4):
                        row, col = first + 4 * g + b, 16 * t + j
                        if row < k and col < n and (c < whole or row >= whole * CHUNK):
                            out[t, c, g, 4 * j + b] = w[row, col]
    return out


@pytest.mark.parametrize("k,n", [(0, 3), (1, 1), (18, 32), (64, 5), (100, 40), (130, 33)])
def test_packing_lays_weights_out_as_documented(k, n):
    w = np.random.default_rng(k + n).integers(-128, 128, (k, n))
    packed = pack_amx(w)
    assert packed.dtype == np.int8 and packed.flags.c_contiguous
    assert np.array_equal(packed, _naive_pack(w))


def test_packing_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match="do not fit int8"):
        pack_amx(np.full((2, 2), 128))
    with pytest.raises(ValueError, match="matrix"):
        pack_amx(np.zeros(4))


# --- on AMX: exactness -------------------------------------------------------------------------


@needs_amx
@pytest.mark.parametrize("dtype", sorted(RANGES))
@pytest.mark.parametrize("m", [0, 1, 15, 16, 17, 31, 32, 33, 64, 97])
@pytest.mark.parametrize("k", [0, 1, 3, 4, 5, 18, 63, 64, 65, 127, 130, 288])
def test_random_inputs_equal_int64_matmul(dtype, m, k):
    rng = np.random.default_rng(1000 * m + k)
    for n in (1, 15, 16, 17, BLOCK, BLOCK + 1, 70):
        a, w = _random(rng, dtype, m, k, n)
        assert np.array_equal(_run(a, w), _wrapped(a, w)), (m, k, n)


# every GEMM of the full-size Spikformer-DVS per step (SPS0-3, RPE, q/k/v, fc1, fc2): m x k x n
MODEL_SHAPES = [(16384, 18, 32), (4096, 288, 64), (1024, 576, 128), (256, 1152, 256),
                (64, 2304, 256), (64, 256, 256), (64, 256, 1024), (64, 1024, 256)]


@needs_amx
@pytest.mark.parametrize("m,k,n", MODEL_SHAPES)
def test_the_models_shapes_equal_int64_matmul(m, k, n):
    rng = np.random.default_rng(k)
    spikes = (rng.random((m, k)) < 0.2).astype(np.uint8)
    w = rng.integers(-128, 128, (k, n))
    assert np.array_equal(_run(spikes, w), _wrapped(spikes, w))
    counts = rng.integers(0, 256, (m, k)).astype(np.uint8)  # raw counts, residual values
    assert np.array_equal(_run(counts, w), _wrapped(counts, w))


@needs_amx
@pytest.mark.parametrize("dtype", sorted(RANGES))
def test_extremes_and_wrapping(dtype):
    lo, hi = RANGES[dtype]
    m, k, n = BLOCK + 3, 2304, BLOCK + 5
    for a_value in (lo, hi):
        for w_value in (-128, 127):
            a = np.full((m, k), a_value, dtype)
            w = np.full((k, n), w_value)
            assert np.array_equal(_run(a, w), _wrapped(a, w)), (a_value, w_value)
    # 70,000 products of 255 x 127 pass 2^31: the sums wrap, as the layers' bound rules out
    a = np.full((2, 70_000), hi, dtype)
    w = np.full((70_000, 3), 127)
    assert np.array_equal(_run(a, w), _wrapped(a, w))


@needs_amx
@pytest.mark.parametrize("k", [18, 64, 130])
def test_bands_of_rows_fill_their_block_of_the_output(k):
    """Rows and out as bands of larger buffers (a thread's share): rows read in place to the
    band's last byte, the rest of out untouched."""
    rng = np.random.default_rng(k)
    m, n = 45, 40
    big_rows = rng.integers(0, 256, (m + 7, k + 9)).astype(np.uint8)
    rows = big_rows[3:3 + m, 5:5 + k]
    w = rng.integers(-128, 128, (k, n))
    big_out = np.full((m + 4, n + 6), -7, np.int32)
    amx_gemm(rows, pack_amx(w), big_out[2:2 + m, 1:1 + n])
    assert np.array_equal(big_out[2:2 + m, 1:1 + n], _wrapped(rows, w))
    untouched = np.ones(big_out.shape, bool)
    untouched[2:2 + m, 1:1 + n] = False
    assert (big_out[untouched] == -7).all()


@needs_amx
def test_two_threads_each_on_their_own_tiles():
    """Permission is the process's; each thread loads its own tile configuration."""
    rng = np.random.default_rng(5)
    a, w = _random(rng, "uint8", 1000, 300, 96)
    packed, out = pack_amx(w), np.full((1000, 96), -7, np.int32)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda b: amx_gemm(a[b:b + 500], packed, out[b:b + 500]), (0, 500)))
    assert np.array_equal(out, _wrapped(a, w))


@needs_amx
def test_mismatches_are_refused():
    packed = pack_amx(np.zeros((70, 40)))
    a = np.zeros((3, 70), np.uint8)
    with pytest.raises(ValueError):
        amx_gemm(a, packed, np.zeros((4, 40), np.int32))  # rows of out
    with pytest.raises(ValueError):
        amx_gemm(a, packed, np.zeros((3, 70), np.int32))  # more channels than packed
    with pytest.raises(ValueError):
        amx_gemm(np.zeros((3, 200), np.uint8), packed, np.zeros((3, 40), np.int32))  # k
    with pytest.raises(ValueError):
        amx_gemm(a.astype(np.int16), packed, np.zeros((3, 40), np.int32))
    with pytest.raises(ValueError):
        amx_gemm(a, packed, np.zeros((3, 40), np.int64))


@needs_amx
def test_the_kernel_runs_on_tile_products():
    fresh = njit(nogil=True)(amx._amx_gemm.py_func)  # compiled here: the cached code cannot be read
    for dtype in ("uint8", "int8"):
        fresh(np.zeros((1, 4), dtype), pack_amx(np.zeros((4, 1))), np.zeros((1, 1), np.int32))
    asm = {str(sig[0].dtype): fresh.inspect_asm(sig) for sig in fresh.signatures}
    assert "tdpbusd" in asm["uint8"] and "tdpbssd" in asm["int8"]
    assert all("ldtilecfg" in text and "tilerelease" in text for text in asm.values())
