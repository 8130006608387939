"""``dlmi plugins``: what is registered, and by whom."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from dlmi.plugins import get_plugins


def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every registered dataset, model and loss with its source.

    Example: `dlmi plugins --json`
    """
    plugins = get_plugins()
    rows = [
        {"kind": singular, "name": e.name, "source": e.source, "description": e.description,
         **({"task": e.meta["task"]} if "task" in e.meta else {})}
        for kind, singular in (("datasets", "dataset"), ("models", "model"), ("losses", "loss"))
        for e in plugins.registry(kind)
    ]
    if as_json:
        typer.echo(json.dumps({"plugins": rows, "warnings": plugins.warnings}, indent=2))
        return
    table = Table(title="dlmi plugins")
    for column in ("kind", "name", "source", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["name"], row["source"], row["description"])
    Console().print(table)
