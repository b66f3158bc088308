"""What the command modules share: the stderr console, option enums, model loading, progress."""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

from rich.console import Console

from .errors import fail

# Tables are laid out for this console's width (cli/tables.py). On a terminal that is the
# terminal's; piped into a file or a pager there is no terminal to fit, so rich's 80 would only
# hide columns: 160 unless COLUMNS says otherwise (rich reads it when width is None).
err = Console(stderr=True, width=None if sys.stderr.isatty() or
              os.environ.get("COLUMNS", "").isdigit() else 160)


SENSOR_SIZE_HELP = ("Sensor size for formats whose header has none; a larger sensor is "
                    "scaled onto the model's input (by an integer factor where one fits, else "
                    "floor(x * factor) as tonic's Downsample).")
CROP_HELP = "Keep only the events in this rectangle of the sensor before scaling."
CENTER_CROP_HELP = "Keep only the centered square of the sensor (side: its shorter edge)."


class SplitBy(str, Enum):
    number = "number"
    time = "time"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"
    int16 = "int16"
    int8 = "int8"


DTYPE_HELP = ("Arithmetic: float32 (fast), float64 (exactness checks), or fixed point int16 / "
              "int8 (weights quantised per output channel at load, integer currents and "
              "membranes: SPEC §6).")
ENERGY_HELP = ("Energy of one {op}, pJ (45 nm). Default: the arithmetic's entry of the table "
               "(float32 {f}, int16 {i16}, int8 {i8}).")


class Path_(str, Enum):
    auto = "auto"
    sparse = "sparse"
    gather = "gather"
    dense = "dense"


def load_engine(weights: Path, dtype: str, path_mode: str, quiet: bool = False):
    """The engine for a model file. Its kernels load lazily, each on its first call: from
    Numba's cache in milliseconds, or on a first run compiled then, so that only what the
    inputs really need is compiled (a warm-up would also compile paths they never take, the
    dense GEMM path's at typical firing rates). A stream warms its own up (``run_stream``)."""
    from eventformer.layers import PathPolicy
    from eventformer.modelfile import load
    from eventformer.models import engine_for
    from eventformer.precompile import start_backward_compile
    from eventformer.runtime import kernels_cached, start_kernels

    model_file = load(weights)
    engine = engine_for(model_file, dtype=dtype, policy=PathPolicy(mode=path_mode))
    if not kernels_cached(dtype):
        helper = start_backward_compile(weights, dtype, path_mode, engine=engine)
        if helper is not None:
            atexit.register(helper.stop)
            if hasattr(engine, "layer_major_runs"):  # forward, layer by layer: see there
                engine.layer_major_runs = 1
        if not quiet:
            also = (" (a second process compiles them from the last layer backwards)"
                    if helper is not None else "")
            err.print(f"first run: compiling the engine's {dtype} kernels as the input needs them"
                      f"{also} (once, some seconds; cached afterwards; the first input's time "
                      "includes it)", markup=False, highlight=False)
        return engine
    start_kernels()  # Numba's own set-up, not the first input's time
    return engine


NO_SHIPPED_MODEL = (
    "no model given and the shipped {name} is not installed with this copy of eventformer: "
    "pass --weights MODEL.h5 (`eventformer export CHECKPOINT.pth -o MODEL.h5` converts a "
    "Spikformer checkpoint), or reinstall the package")

WEIGHTS_HELP = ("Model file (.h5), or a shipped model's name: ssa, ds2ta, ssa_bin, saformer "
                "(an existing path wins).")
WEIGHTS_DEFAULT = "ssa: the shipped spikformer-tiny-synth.h5"


def _names_available() -> str:
    from eventformer.weights import installed_models

    installed = list(installed_models())
    return ("the shipped models installed: " + ", ".join(installed)) if installed else \
        "no shipped model is installed"


def resolve_weights(weights: Optional[Path]) -> Path:
    """The given model file or shipped model (by name), else the shipped default (trained on
    synthetic gestures only). A path that exists wins over a name."""
    from eventformer.weights import SHIPPED_MODEL, SHIPPED_MODELS, shipped_model_path

    if weights is None:
        shipped = shipped_model_path()
        if shipped is None:
            fail(NO_SHIPPED_MODEL.format(name=SHIPPED_MODEL))
        return shipped
    if weights.exists():
        return weights
    name = str(weights)
    if name in SHIPPED_MODELS:
        shipped = shipped_model_path(name)
        if shipped is None:
            fail(f"the shipped model {name} ({SHIPPED_MODELS[name]}) is not installed with this "
                 f"copy of eventformer; {_names_available()}")
        return shipped
    fail(f"{weights}: no such model file, nor a shipped model's name (known: "
         f"{', '.join(SHIPPED_MODELS)}; {_names_available()})")


def resolve_models(weights: Optional[list[Path]]) -> list[tuple[str, Path]]:
    """(label, model file) for each --weights given (names or paths), else every shipped model
    installed. The label is a shipped model's name, else the file's name (its path if two
    names coincide)."""
    from eventformer.weights import SHIPPED_MODEL, installed_models, shipped_model_name

    if not weights:
        installed = installed_models()
        if not installed:
            fail(NO_SHIPPED_MODEL.format(name=SHIPPED_MODEL))
        return list(installed.items())
    paths = [resolve_weights(w) for w in weights]
    labels = [shipped_model_name(p) or p.name for p in paths]
    return [(str(p) if labels.count(label) > 1 else label, p) for label, p in zip(labels, paths)]


def announce_model(weights: Path) -> None:
    """Say so when a shipped model is in use (called once the inputs have been read, so that a
    bad input is one line, not a model banner and a line)."""
    from eventformer.weights import shipped_model_name

    name = shipped_model_name(weights)
    if name is not None:
        err.print(f"model: the shipped {weights.name} ({name}: a tiny Spikformer trained on "
                  "synthetic DVS Gesture only; see its model card); --weights to use another",
                  markup=False, highlight=False)


def parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        fail(f"--sensor-size must look like 128x128, got {text!r}")
    from eventformer.events.sensors import check_sensor_size

    return check_sensor_size((w, h), "--sensor-size")


@contextlib.contextmanager
def note_if_slow(message: str, after_s: float = 3.0):
    """Say ``message`` on stderr if the block is still running after ``after_s`` seconds (a
    first compile, say, where a cached load takes about one second and needs no word)."""
    import threading

    done = threading.Event()

    def note():
        if not done.wait(after_s):
            err.print(message, markup=False, highlight=False)

    watcher = threading.Thread(target=note, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def waiting(description: str):
    """A spinner with the time elapsed on a terminal's stderr while the block runs (a wait
    whose length is unknown in advance: a cluster starting, a data set generated on first use);
    lines printed meanwhile go above it. Nothing elsewhere: the lines say what happens."""
    if not err.is_terminal:
        return contextlib.nullcontext()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False),
                        TimeElapsedColumn(), console=err, transient=True)
    progress.add_task(description, total=None)
    return progress


def progress_bar(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=True)




def check_number(option: str, value: float, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False) -> float:
    """A finite number within [low, high] (or (low, high] with ``low_open``), else one sentence.

    click's ``min=``/``max=`` neither reject nan nor give a one-line error, so options whose
    bad values would reach arithmetic (energies, window lengths) are checked here.
    """
    if not math.isfinite(value):
        fail(f"{option} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        fail(f"{option} must be {'greater than' if low_open else 'at least'} {low:g}, "
             f"got {value:g}")
    if high is not None and value > high:
        fail(f"{option} must be at most {high:g}, got {value:g}")
    return value


def check_writable(output: Path, force: bool) -> None:
    """OUT can be written: its folder exists and is writable; it is replaced only with --force."""
    import os

    if output.is_dir():
        fail(f"{output}: is a directory")
    if output.exists() and not force:
        fail(f"{output}: already exists; pass --force to overwrite it")
    folder = output.parent
    if not folder.is_dir():
        fail(f"{output}: cannot be written (folder {folder} does not exist)")
    if not os.access(folder, os.W_OK):
        fail(f"{output}: cannot be written (permission denied)")


# (no square brackets: rich would take "[plot]" for markup)
PLOT_HELP = ("Write figures (PNG, or SVG with --plot-format svg) into this folder, created if "
             "missing (needs matplotlib: the plot extra).")
PLOT_FORMAT_HELP = "Figure file format: png or svg."
NEUROBENCH_HELP = ("Also report NeuroBench's metrics (SynapticOperations, ActivationSparsity, "
                   "MembraneUpdates, Footprint, ConnectionSparsity, ParameterCount) per sample, "
                   "by NeuroBench 2.3's rules from the engine's real activity (\"neurobench\" "
                   "under --json). Each sample then runs a second time, untimed, with the "
                   "engine watched: about twice the run time.")


def plot_options(plot: Optional[Path], fmt: str = "png", layer: Optional[str] = None,
                 head: Optional[int] = None, step: Optional[int] = None):
    """The `eventformer.plots.PlotOptions` of --plot DIR (None without it), checked before any
    long work: matplotlib importable (else one sentence on how to install it), DIR a folder
    (created), the format known. --plot-* choices without --plot are refused."""
    if plot is None:
        given = [name for name, value in (("--plot-layer", layer), ("--plot-head", head),
                                          ("--plot-step", step)) if value is not None]
        if given or fmt != "png":
            fail(f"{(given or ['--plot-format'])[0]} chooses what --plot DIR draws; give "
                 "--plot DIR too")
        return None
    from eventformer.errors import EventformerError
    from eventformer.plots import PlotOptions, prepare_dir, require

    try:
        require()
        options = PlotOptions(plot, fmt.lower(), layer, head, step)
        prepare_dir(plot)
    except EventformerError as exc:
        fail(str(exc))
    return options


def report_written(paths) -> None:
    """Name each figure written, one line each on stderr."""
    for p in paths:
        err.print(f"wrote {p}", markup=False, highlight=False, soft_wrap=True)
