"""eventformer: event-driven inference for spiking vision transformers.

Human output goes to stderr (rich); ``--json`` puts machine-readable results on stdout. Each
command lives in a module of its own (``infer.py``, ``stream.py``, ...); this one mounts them.
"""

from __future__ import annotations

import typer

from . import bench, compare, convert, data, infer, model, stream, train
from .errors import STATE

app = typer.Typer(
    name="eventformer",
    help="Event-driven inference for spiking vision transformers on CPUs: classify event-camera "
         "recordings, export PyTorch checkpoints, count the operations really performed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


app.command()(infer.infer)
app.command()(model.export)
app.command()(model.inspect)
app.command()(stream.stream)
app.command()(bench.bench)
app.command()(compare.compare)
app.command()(convert.convert)
app.command()(train.train)

data_app = typer.Typer(help="Datasets: fetch DVS Gesture, generate the synthetic set.",
                       no_args_is_help=True)
data_app.command("fetch")(data.data_fetch)
data_app.command("synth")(data.data_synth)
app.add_typer(data_app, name="data")


if __name__ == "__main__":  # pragma: no cover
    app()
