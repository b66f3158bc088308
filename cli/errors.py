"""One clear sentence and exit code 2 for user mistakes; a traceback only with --debug."""

from __future__ import annotations

import functools
import os
import sys
import traceback

import typer

from eventformer.errors import EventformerError

STATE = {"debug": False}


def fail(message: str) -> None:
    """Print one line to stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def user_errors(fn):
    """Library errors become one line + exit 2, anything unexpected one line + exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(code=141)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(code=130)
        except EventformerError as exc:
            if STATE["debug"]:
                traceback.print_exc()
            fail(str(exc))
        except MemoryError:
            fail("out of memory")
        except Exception as exc:  # a bug: say so briefly, full story with --debug
            if STATE["debug"]:
                traceback.print_exc()
            else:
                typer.echo(f"internal error: {type(exc).__name__}: {exc} "
                           "(rerun with --debug for the traceback)", err=True)
            raise typer.Exit(code=1)

    return wrapper
