"""The ``dlmi`` Typer app: assembles the command groups and turns user errors into one line.

Exit status: 0 done, 1 the command finished but some inputs were skipped (it says which), 2 a usage error
or a :class:`DlmiError` (one line on stderr), 130 interrupted. ``DLMI_DEBUG=1`` or ``--traceback`` (anywhere
on the command line) prints the full traceback behind a one-line error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer

from dlmi.errors import DEBUG_ENV, DlmiError, debug_enabled, print_traceback

TRACEBACK_FLAG = "--traceback"
HELP = ("Deep learning in medical imaging: classify, segment, and segment with a classifier's help.\n\n"
        "A mistake is reported as one line (exit status 2); `DLMI_DEBUG=1 dlmi ...` or "
        "`dlmi --traceback ...` shows the full traceback behind it.")


def _global_options(
    traceback: bool = typer.Option(
        False, TRACEBACK_FLAG,
        help=f"Show the full traceback behind a one-line error (same as {DEBUG_ENV}=1).",
    ),
) -> None:
    """The options every command shares."""
    if traceback:
        os.environ[DEBUG_ENV] = "1"


def make_app() -> typer.Typer:
    """A fresh ``dlmi`` app with every built-in command group and every plugin's sub-commands."""
    from dlmi.cli import data, evaluate, export, model, plugins_cmd, predict, reproduce, review, train
    from dlmi.plugins import register_commands

    app = typer.Typer(
        name="dlmi",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode="markdown",
    )
    app.callback()(_global_options)
    app.command("plugins", help=plugins_cmd.plugins_command.__doc__)(plugins_cmd.plugins_command)
    app.add_typer(data.app, name="data")
    app.add_typer(model.app, name="model")
    app.add_typer(train.app, name="train")
    evaluate.install(app)
    app.add_typer(export.app, name="export")
    predict.install(app)
    review.install(app)
    app.command("reproduce", help=reproduce.reproduce_command.__doc__)(reproduce.reproduce_command)
    register_commands(app)
    return app


def build_command() -> Any:
    """The click command behind ``dlmi``, with every plugin's sub-commands added."""
    return typer.main.get_command(make_app())


def _split_traceback_flag(args: Sequence[str]) -> tuple[list[str], bool]:
    """``args`` without ``--traceback`` (before or after the sub-command), and whether it was there."""
    if "--" in args:
        cut = list(args).index("--")
        head, tail = list(args[:cut]), list(args[cut:])
    else:
        head, tail = list(args), []
    found = TRACEBACK_FLAG in head
    return [a for a in head if a != TRACEBACK_FLAG] + tail, found


def run(args: Sequence[str]) -> int:
    """Run ``dlmi ARGS`` in this process and return its exit status (errors printed as one line)."""
    args, wants_traceback = _split_traceback_flag(args)
    before = os.environ.get(DEBUG_ENV)
    if wants_traceback:
        os.environ[DEBUG_ENV] = "1"
    try:
        command = build_command()
        command.main(args=args, prog_name="dlmi", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except DlmiError as exc:
        if debug_enabled():
            print_traceback(exc)
        print(f"dlmi: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlmi: interrupted", file=sys.stderr)
        return 130
    finally:
        if before is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = before
    return 0


def main() -> None:
    """Console entry point: run the CLI; a :class:`DlmiError` prints one line and exits with status 2."""
    sys.exit(run(sys.argv[1:]))
