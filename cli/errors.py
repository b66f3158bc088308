"""One clear sentence and exit code 2 for user mistakes; a traceback only with --debug.

Two doors lead here: a command's own checks and the library's `EventformerError` (`user_errors`,
`fail`), and typer's parsing of the command line (`OneLineGroup`, `OneLineCommand`): a bad option
value, an unknown option or command, a missing argument. typer would print those as a boxed
panel with pydantic's wording; they get the same one line as every other mistake.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import traceback

import typer
# typer vendors its own click: its usage errors live here (typer re-exports only BadParameter)
from typer import Abort
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperCommand, TyperGroup

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


# --- the command line's own mistakes -----------------------------------------------------------

def option_name(param) -> str:
    """How the user wrote it: an option's long name, or an argument's metavar (FILES)."""
    opts = list(getattr(param, "opts", None) or [])
    longs = [o for o in opts if o.startswith("--")]
    if longs or opts:
        return max(longs or opts, key=len)
    return (getattr(param, "metavar", None) or param.name or "value").upper()


def _expected(param) -> str | None:
    """What the option takes, as the end of "--steps must be ...", from its declaration."""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    if desc.choices:
        return "one of " + ", ".join(str(getattr(c, "value", c)) for c in desc.choices)
    kind = _number_kind(desc.annotation)
    if kind is None:
        return None
    info = desc.parameter_info
    low, high = info.min, info.max
    if low is not None and high is not None:
        return f"{kind} from {low:g} to {high:g}"
    if low is not None:
        return f"{kind} of at least {low:g}"
    if high is not None:
        return f"{kind} of at most {high:g}"
    return kind


def _number_kind(annotation) -> str | None:
    inner = getattr(annotation, "__args__", None)
    if inner and len(inner) == 1:  # a repeatable option: List[int]
        annotation = inner[0]
    if annotation is int:
        return "a whole number"
    if annotation is float:
        return "a finite number"
    return None


def _given(exc) -> str | None:
    """The value the user typed, as pydantic's validation error (the cause typer chains) kept it."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if errors is None:
        return None
    try:
        first = errors()[0]
    except (IndexError, TypeError):
        return None
    value = first.get("input")
    if value is None:
        return None
    value = getattr(value, "value", value)
    return f"{value}" if isinstance(value, (int, float)) or str(value).strip() else repr(value)


def usage_sentence(exc: UsageError) -> str:
    """One sentence for a command-line mistake typer found while parsing."""
    param = getattr(exc, "param", None)
    if param is not None and type(exc).__name__ == "BadParameter":
        expected = _expected(param)
        if expected is not None:
            given = getattr(exc, "given", None) or _given(exc)
            return f"{option_name(param)} must be {expected}" + (f", got {given}" if given
                                                                 else "")
        return f"{option_name(param)}: {exc.message.rstrip('.')}"
    message = exc.format_message().strip().rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see: {ctx.command_path} --help)"
    return " ".join(message.split())  # a suggestion list on a second line joins the first


class OneLineCommand(TyperCommand):
    """A command whose number options also refuse nan and infinities (pydantic lets a float
    option without bounds take 'nan'; such a value would only surface later as nonsense)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = reflow(self.help)
        for param in self.params:
            desc = getattr(param, "type_descriptor", None)
            if desc is not None and _number_kind(desc.annotation) == "a finite number":
                param.callback = _finite(param.callback)


def reflow(text: str | None) -> str | None:
    """A docstring's paragraphs as single lines (blank lines still part them; a line starting a
    list item stays its own line): the help is laid out for the terminal's width, not for the
    source's 100 columns (this typer keeps single line breaks, which wrapped raggedly)."""
    if not text:
        return text
    paragraphs = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines = []
        for line in para.split("\n"):
            item = line.lstrip().startswith(("- ", "* ", "\b"))
            if lines and not item:
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.rstrip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _finite(callback):
    """A parameter callback that first refuses non-finite values (checked as each option is
    processed, before a missing argument is noticed, as typer's own checks are)."""

    def check(ctx, param, value):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                bad = typer.BadParameter("not finite", ctx=ctx, param=param)
                bad.given = f"{v}"
                raise bad
        return value if callback is None else callback(ctx, param, value)

    return check


class OneLineGroup(TyperGroup):
    """The application: parsing mistakes anywhere below it end as `error: <one sentence>` on
    stderr and exit code 2 (the other exits and their codes are those typer gives)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:  # the help has been printed
            if not standalone_mode:
                raise
            sys.exit(exc.exit_code)
        except UsageError as exc:
            if not standalone_mode:
                raise
            typer.echo(f"error: {usage_sentence(exc)}", err=True)
            sys.exit(2)
        except ClickException as exc:
            if not standalone_mode:
                raise
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except Abort:
            if not standalone_mode:
                raise
            typer.echo("aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        # without standalone mode typer returns an Exit's code, or the command's own return
        # value (None for every command here)
        sys.exit(rv if isinstance(rv, int) else 0)
