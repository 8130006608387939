"""The ``dlmi`` Typer app: assembles the command groups and turns user errors into one line."""

from __future__ import annotations

import sys
from typing import Any

import typer

from dlmi.errors import DlmiError

app = typer.Typer(
    name="dlmi",
    help="Deep learning in medical imaging: classify, segment, and segment with a classifier's help.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)


def _assemble() -> None:
    from dlmi.cli import data, evaluate, export, model, plugins_cmd, predict, reproduce, train

    app.command("plugins", help=plugins_cmd.plugins_command.__doc__)(plugins_cmd.plugins_command)
    app.add_typer(data.app, name="data")
    app.add_typer(model.app, name="model")
    app.add_typer(train.app, name="train")
    evaluate.install(app)
    app.add_typer(export.app, name="export")
    predict.install(app)
    app.command("reproduce", help=reproduce.reproduce_command.__doc__)(reproduce.reproduce_command)

    from dlmi.plugins import get_plugins

    get_plugins().manager.hook.dlmi_register_commands(app=app)


def build_command() -> Any:
    """The click command behind ``dlmi``, with every plugin's sub-commands added."""
    _assemble()
    return typer.main.get_command(app)


def main() -> None:
    """Console entry point: run the CLI; a :class:`DlmiError` prints one line and exits with status 2."""
    try:
        command = build_command()
        command.main(prog_name="dlmi")
    except DlmiError as exc:
        print(f"dlmi: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("dlmi: interrupted", file=sys.stderr)
        sys.exit(130)
