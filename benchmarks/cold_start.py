"""Start-up of `eventformer infer`: a user's very first run (empty Numba cache) and every later one.

    python benchmarks/cold_start.py [--full MODEL.h5] [--file REC] [--repeat 2]
                                    [--cases tiny,tiny-int8,dataset,full,full-int8] [--by-kernel]

Each case runs the command a user types, ``eventformer infer ...``, in a fresh process (the
installed CLI's module run by this interpreter) with ``NUMBA_CACHE_DIR`` pointing at a private
empty folder, so the checkout's shared cache is neither read nor touched:

- ``cold``: the first run on the empty cache (every kernel the run calls is compiled and saved);
- ``warm``: the best of ``--repeat`` later runs on the cache the cold run filled (wall time and
  the CPU time of that same run);
- ``cpu s``: the process's user + system CPU time beside each wall time: on a machine other work
  keeps busy the wall time grows with the load, the CPU time far less, so it is the figure to
  compare across runs there;
- ``kernels`` / ``specialisations``: how many kernels the cold run compiled into the cache (index
  files) and how many machine-code entries (one per signature) they hold;
- ``hit``: whether the warm runs found everything in the cache (no index file was added or
  rewritten by them): a kernel that misses the cache on every run shows up here as ``no``.

``--by-kernel`` also lists, per case, where the cold run's compile went: each compiled
function's own seconds (a kernel's compile minus that of the functions compiled inside it,
Numba's implementations of numpy functions among them), from Numba's compile events in the
cold run itself, so the list adds up to the whole compile.

Python's own bytecode cache is filled first (``compileall`` of the ``eventformer`` and
``eventformer_cli`` packages, into their ``__pycache__`` folders): ``pip install`` writes it, and
Python writes it on an editable install's first import, so a user's first run does not compile
the engine's Python sources; a process run with ``PYTHONDONTWRITEBYTECODE`` (CI, some sandboxes)
would otherwise compile them on every run, about 0.2 s. Only Numba's cache starts empty.

Cases: the shipped tiny model on a recording (float32, int8), the shipped tiny model on
``--dataset dvs-gesture`` (its first run also generates and frames the synthetic set unless a
release is installed), and the full-size Spikformer-DVS configuration (float32, int8). Without
``--full`` the full-size model is random weights with BatchNorm calibrated to 5% firing on the
recording (``eventformer bench``'s model; calibrated once, cached in
``~/.cache/eventformer/bench``), so the run takes the paths a real model would. Wall times of
whole processes, best of repeats for warm; other load on the machine makes them longer, never
shorter. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FILE = os.path.join(HERE, "..", "..", "shared", "data", "events", "dvs-gesture", "1.bs2")
CASES = ("tiny", "tiny-int8", "dataset", "full", "full-int8")


def calibrated_full_model(recording: str) -> str:
    """The bench's full-size model calibrated to 5% firing on ``recording`` (cached)."""
    from eventformer.bench.networks import BenchNetwork
    from eventformer.bench.run import BenchOptions, calibrated_model, load_samples
    from eventformer.models import SpikformerConfig

    config = SpikformerConfig()
    samples = load_samples([recording], config.steps, config.image_size)
    opts = BenchOptions(files=[recording])
    return calibrated_model(BenchNetwork("spikformer", config), samples, 0.05, 0, opts.cache_dir,
                            lambda line: print(line, file=sys.stderr))


def compile_bytecode() -> None:
    """Fill the packages' bytecode caches, as an installed package has them (see above)."""
    import compileall
    import importlib.util

    for name in ("eventformer", "eventformer_cli"):
        spec = importlib.util.find_spec(name)
        for folder in spec.submodule_search_locations or ():
            if os.access(folder, os.W_OK):
                compileall.compile_dir(folder, quiet=1)


def fail(message: str) -> None:
    """A bad option or input: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def cache_state(folder: str) -> dict[str, float]:
    """Every file in a Numba cache folder and its modification time."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[path] = os.stat(path).st_mtime_ns
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Run as ``python -c COMPILE_LOG OUT.json infer ...``: the CLI with a listener on Numba's compile
# events that writes {function: own compile seconds} to OUT.json when the command ends.
COMPILE_LOG = """
import atexit, json, runpy, sys, time
from numba.core import event

out_path = sys.argv.pop(1)
own, stack = {}, []

class Compiles(event.Listener):
    def on_start(self, ev):
        stack.append([time.perf_counter(), 0.0])

    def on_end(self, ev):
        start, inner = stack.pop()
        took = time.perf_counter() - start
        if stack:
            stack[-1][1] += took
        fn = ev.data["dispatcher"].py_func
        name = fn.__module__.rsplit(".", 1)[-1] + "." + fn.__qualname__.split("<locals>.")[-1]
        own[name] = own.get(name, 0.0) + took - inner

event.register("numba:compile", Compiles())
atexit.register(lambda: json.dump(own, open(out_path, "w")))
sys.argv[0] = "eventformer"
runpy.run_module("eventformer_cli.main", run_name="__main__")
"""


def timed_run(args: list[str], cache: str, compile_log: str | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``eventformer infer`` process on the cache folder ``cache``;
    with ``compile_log``, its compiles' own seconds per function are written there (JSON)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    cmd = [sys.executable, "-m", "eventformer_cli.main", "infer", *args]
    if compile_log is not None:
        cmd = [sys.executable, "-c", COMPILE_LOG, compile_log, "infer", *args]
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        fail(f"eventformer infer {' '.join(args)} failed (exit {proc.returncode}): {tail}")
    return seconds, cpu


def measure(args: list[str], repeat: int, by_kernel: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="eventformer-numba-") as cache:
        log = os.path.join(cache, "compiles.json") if by_kernel else None
        cold = timed_run(args, cache, log)
        compiles = {}
        if log is not None:
            with open(log) as f:
                compiles = json.load(f)
            os.remove(log)
        after_cold = cache_state(cache)
        warm = min(timed_run(args, cache) for _ in range(repeat))
        after_warm = cache_state(cache)
    index = [p for p in after_cold if p.endswith(".nbi")]
    return {"cold": cold[0], "cold_cpu": cold[1], "warm": warm[0], "warm_cpu": warm[1],
            "kernels": len(index),
            "specialisations": sum(1 for p in after_cold if p.endswith(".nbc")),
            "hit": after_warm == after_cold, "compiles": compiles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", default=DEFAULT_FILE, help="recording to classify")
    ap.add_argument("--full", help="full-size model file (default: calibrated 5%% firing)")
    ap.add_argument("--repeat", type=int, default=2, help="warm runs (best is shown)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--by-kernel", action="store_true",
                    help="also list each case's cold compile seconds per function")
    opts = ap.parse_args()
    cases = [c.strip() for c in opts.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        fail(f"unknown case {unknown[0]!r}; known: {', '.join(CASES)}")
    if opts.repeat < 1:
        fail(f"--repeat must be at least 1, got {opts.repeat}")
    recording = os.path.normpath(opts.file)
    if not os.path.exists(recording):
        fail(f"{recording}: no such recording (give --file)")
    full = opts.full
    if full is None and any(c.startswith("full") for c in cases):
        full = calibrated_full_model(recording)

    commands = {
        "tiny": [recording],
        "tiny-int8": [recording, "--dtype", "int8"],
        "dataset": ["--dataset", "dvs-gesture"],
        "full": [recording, "--weights", str(full)],
        "full-int8": [recording, "--weights", str(full), "--dtype", "int8"],
    }
    compile_bytecode()
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    head = (f"{'case':10s} {'cold s':>7s} {'cpu s':>6s} {'warm s':>7s} {'cpu s':>6s} "
            f"{'kernels':>8s} {'specs':>6s} {'hit':>4s}  command")
    print(head)
    print("-" * len(head))
    listing = []
    for case in cases:
        r = measure(commands[case], opts.repeat, opts.by_kernel)
        shown = " ".join(os.path.basename(a) if os.sep in a else a for a in commands[case])
        print(f"{case:10s} {r['cold']:7.2f} {r['cold_cpu']:6.2f} {r['warm']:7.2f} "
              f"{r['warm_cpu']:6.2f} {r['kernels']:8d} "
              f"{r['specialisations']:6d} {'yes' if r['hit'] else 'no':>4s}  "
              f"eventformer infer {shown}", flush=True)
        if opts.by_kernel:
            listing.append((case, r["compiles"]))
    for case, compiles in listing:
        print(f"\n{case}: cold compile {sum(compiles.values()):.2f} s, own seconds per function "
              "(those above 0.05 s)")
        for name, seconds in sorted(compiles.items(), key=lambda kv: -kv[1]):
            if seconds >= 0.05:
                print(f"  {seconds:6.2f}  {name}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (2 cores busy with other work "
          "make every number longer)")


if __name__ == "__main__":
    main()
