"""eventformer: event-driven inference for spiking vision transformers.

Human output goes to stderr (rich); ``--json`` puts machine-readable results on stdout. Each
command lives in a module of its own (``infer.py``, ``stream.py``, ...); this one mounts them.
"""

from __future__ import annotations

import gc

import typer

from eventformer.runtime import tune_collector

from . import bench, compare, convert, data, infer, model, stream, train
from .errors import STATE, OneLineCommand, OneLineGroup

app = typer.Typer(
    name="eventformer",
    help="Event-driven inference for spiking vision transformers on CPUs: classify event-camera "
         "recordings, export PyTorch checkpoints, count the operations really performed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineGroup,  # a mistyped option value is one `error:` line, as every other mistake
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"eventformer {version('eventformer')}")
        raise typer.Exit()


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
         version: bool = typer.Option(False, "--version", callback=_print_version,
                                      is_eager=True, help="Print the version and exit.")):
    STATE["debug"] = debug


app.command(cls=OneLineCommand)(infer.infer)
app.command(cls=OneLineCommand)(model.export)
app.command(cls=OneLineCommand)(model.inspect)
app.command(cls=OneLineCommand)(stream.stream)
app.command(cls=OneLineCommand)(bench.bench)
app.command(cls=OneLineCommand)(compare.compare)
app.command(cls=OneLineCommand)(convert.convert)
app.command(cls=OneLineCommand)(train.train)

data_app = typer.Typer(help="Datasets: fetch DVS Gesture, generate the synthetic set.",
                       no_args_is_help=True, cls=OneLineGroup)
data_app.command("fetch", cls=OneLineCommand)(data.data_fetch)
data_app.command("synth", cls=OneLineCommand)(data.data_synth)
app.add_typer(data_app, name="data")


def run() -> None:
    """The ``eventformer`` command (the console script, and ``python -m eventformer_cli.main``).

    At the end, what the run made is frozen too, so that the interpreter's final sweeps do not
    walk it: leaving took 0.3-0.5 s after a run's last line, and takes 0.05 s. The exit handlers,
    open files' closing and the exit code are Python's own."""
    tune_collector()  # before any kernel is compiled or loaded
    try:
        app()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    run()
