"""Console programs: the one way a click command runs as a program (the ``cleandift-rt`` CLI
and the ``python -m training.*`` tools) — user errors become one ``error: ...`` line."""

from __future__ import annotations

import sys

import click

from .errors import CleanDIFTError


def fail(message: str, code: int = 2):
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def run_console(command: click.Command, argv: list[str] | None, prog_name: str) -> None:
    """Run a click command as a console program and exit: user errors (``CleanDIFTError``, bad
    options) → one ``error: ...`` line and status 2; Ctrl-C → status 130; anything else is a bug
    and keeps its traceback."""
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
