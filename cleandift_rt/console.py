"""Console programs: the one way a click command runs as a program (the ``cleandift-rt`` CLI
and the ``python -m training.*`` tools) — user errors become one ``error: ...`` line, the
runtime's warnings one ``warning: ...`` line."""

from __future__ import annotations

import sys
import warnings

import click

from .errors import CleanDIFTError, CleanDIFTWarning

_python_showwarning = warnings.showwarning  # the one run_console replaces


def fail(message: str, code: int = 2):
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def log_line(line: str) -> None:
    """One progress or notice line on stderr (stdout stays clean for --json)."""
    click.echo(line, err=True)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings of the runtime (CleanDIFTWarning) as one ``warning: ...`` line on stderr;
    others as Python prints them."""
    if issubclass(category, CleanDIFTWarning):
        click.echo(f"warning: {' '.join(str(message).split())}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def run_console(command: click.Command, argv: list[str] | None, prog_name: str) -> None:
    """Run a click command as a console program and exit: user errors (``CleanDIFTError``, bad
    options) → one ``error: ...`` line and status 2; Ctrl-C → status 130; anything else is a bug
    and keeps its traceback."""
    warnings.showwarning = show_warning
    warnings.simplefilter("always", CleanDIFTWarning)  # one line per image / artifact
    try:
        code = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        code = 0
    except click.ClickException as exc:
        fail(exc.format_message())
    except click.exceptions.Abort:
        fail("aborted", 130)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except CleanDIFTError as exc:
        fail(str(exc))
    except BrokenPipeError:
        code = 0
    sys.exit(code or 0)
