"""Spike flags into indices and counts (kernels/compaction.py), against numpy: every length
around the 16-lane and 8-byte blocks, unaligned starts, every density, and a start offset."""

import numpy as np
import pytest
from numba import njit

from eventformer.kernels.compaction import COMPRESS, compact_flags, count_flags


@njit(cache=False)
def _compact(flags, n, first, out, count):
    return compact_flags(flags, n, first, out, count)


@njit(cache=False)
def _count(flags, n):
    return count_flags(flags, n)


@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 15, 16, 17, 31, 33, 1000, 4099])
def test_compact_and_count_match_numpy(n, density):
    rng = np.random.default_rng(n + int(density * 100))
    for skew in range(3):  # flags starting off an 8- or 16-byte boundary
        backing = (rng.random(n + skew) < density).astype(np.uint8)
        flags = backing[skew:]
        want = np.flatnonzero(flags[:n]).astype(np.int32)
        assert _count(flags, n) == want.size
        # ``out`` has room for exactly the n flags after ``count``; the compaction may write
        # scratch past the new count (whole 16-lane vectors), never past ``out`` itself
        beyond = np.full(3 + n + 64, -7, np.int32)
        out = beyond[:3 + n]
        out[:3] = [11, 12, 13]  # entries before ``count`` are kept
        got = _compact(flags, n, 40, out, 3)
        assert got == 3 + want.size
        assert out[:3].tolist() == [11, 12, 13]
        assert (out[3:got] == want + 40).all()
        assert (beyond[3 + n:] == -7).all()


def test_count_reads_only_the_first_n_flags():
    flags = np.ones(40, np.uint8)
    assert _count(flags, 21) == 21
    out = np.empty(40, np.int32)
    assert _compact(flags, 21, 0, out, 0) == 21


@pytest.mark.skipif(not COMPRESS, reason="int64 words are compacted in place with AVX-512 only")
@pytest.mark.parametrize("words", [1, 2, 3, 17])
def test_compact_reads_the_bytes_of_int64_words_in_place(words):
    """A max-pool's lanes (int64 words of eight 0/1 flag bytes) compact as their bytes do,
    without a view: every length of whole words, the 16-byte blocks and an 8-byte tail."""
    rng = np.random.default_rng(words)
    as_bytes = (rng.random(8 * words) < 0.4).astype(np.uint8)
    lanes = as_bytes.view(np.int64).copy()
    want = np.flatnonzero(as_bytes).astype(np.int32)
    out = np.full(8 * words + 16, -7, np.int32)
    got = _compact(lanes, 8 * words, 5, out, 0)
    assert got == want.size and (out[:got] == want + 5).all()
