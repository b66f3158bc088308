"""Compile claims (eventformer.claims): the run and its compile helper never compile one kernel
at once; a claim whose owner died, or whose compile failed, holds nobody up."""

import os
import subprocess
import sys
import textwrap

import pytest


def _jit_off() -> bool:
    from numba.core import config

    return bool(config.DISABLE_JIT)


pytestmark = pytest.mark.skipif(_jit_off(), reason="NUMBA_DISABLE_JIT=1: nothing is compiled")


def _run(script: str, tmp_path) -> str:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("EVENTFORMER_COMPILE_CLAIMS", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_kernel_claimed_by_another_process_is_loaded_not_compiled(tmp_path):
    """A forked child claims and compiles a kernel; the parent, calling it meanwhile, waits
    for the claim and loads the child's entry: one compile between the two."""
    out = _run("""
        import os, sys, time
        import numpy as np
        from eventformer import claims
        from eventformer.kernels import channel_sums
        folder = os.path.join(sys.argv[1], "claims"); os.mkdir(folder)
        claims.activate(folder)
        idx = np.arange(6, dtype=np.int32); cnt = np.ones(6, np.int32)
        pid = os.fork()
        if pid == 0:
            sums = np.zeros(3, np.int64)
            channel_sums(idx, cnt, 3, sums)
            os._exit(0 if sums.tolist() == [2, 2, 2] else 1)
        deadline = time.monotonic() + 120
        while not os.listdir(folder):  # the child holds its claim while it compiles
            assert time.monotonic() < deadline
            time.sleep(0.001)
        sums = np.zeros(3, np.int64)
        channel_sums(idx, cnt, 3, sums)
        assert os.waitpid(pid, 0)[1] == 0
        print(sums.tolist(), sum(channel_sums.stats.cache_hits.values()),
              sum(channel_sums.stats.cache_misses.values()), os.listdir(folder))
    """, tmp_path)
    assert out.split("]")[0] == "[2, 2, 2"
    assert out.split("]", 1)[1].split() == ["1", "0", "[]"]  # loaded once, compiled never


def test_a_claim_whose_owner_died_or_whose_compile_failed_holds_nobody_up(tmp_path):
    out = _run("""
        import os, subprocess, sys, time
        import numpy as np
        from eventformer import claims
        from eventformer.kernels import merge_add
        folder = os.path.join(sys.argv[1], "claims"); os.mkdir(folder)
        claims.activate(folder)
        gone = subprocess.Popen([sys.executable, "-c", "pass"]); gone.wait()
        real_claim = claims._claim
        def stale_first(path):  # the kernel's claim, left by a process that has died
            with open(path, "w") as f:
                f.write(str(gone.pid))
            claims._claim = real_claim
            return real_claim(path)
        claims._claim = stale_first
        a = np.arange(4, dtype=np.int32)
        one = np.ones(4, np.int32)
        t = time.monotonic()
        idx, cnt = merge_add(a, one, a, one)
        waited = time.monotonic() - t
        left = os.listdir(folder)
        try:  # a compile that fails (a 2-D list) releases its claim
            merge_add(a.reshape(2, 2), a.reshape(2, 2), a.reshape(2, 2), a.reshape(2, 2))
        except Exception:
            pass
        failed_left = os.listdir(folder)
        def unnamed_first(path):  # a claim whose owner died before writing its pid
            open(path, "w").close()
            claims._claim = real_claim
            return real_claim(path)
        claims._claim = unnamed_first
        from eventformer.kernels import channel_sums
        sums = np.zeros(2, np.int64)
        t = time.monotonic()
        channel_sums(a, one, 2, sums)
        took = time.monotonic() - t
        print(idx.tolist(), cnt.tolist(), left, failed_left, sums.tolist(), os.listdir(folder),
              waited < claims.WAIT_LIMIT_S, claims.UNNAMED_S <= took < claims.WAIT_LIMIT_S)
    """, tmp_path)
    assert out.split() == ["[0,", "1,", "2,", "3]", "[2,", "2,", "2,", "2]", "[]", "[]",
                           "[2,", "2]", "[]", "True", "True"]


def test_without_a_folder_the_cache_is_numbas_own(tmp_path):
    out = _run("""
        import os
        import numpy as np
        from eventformer import claims
        from eventformer.kernels import channel_sums
        assert claims.active() is None
        sums = np.zeros(2, np.int64)
        channel_sums(np.arange(4, dtype=np.int32), np.ones(4, np.int32), 2, sums)
        print(type(channel_sums._cache).__name__, sums.tolist())
    """, tmp_path)
    assert out.split() == ["ClaimingCache", "[2,", "2]"]
