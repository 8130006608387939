"""``dlmi export``: filled in by a later change."""

from __future__ import annotations

import typer

from dlmi.errors import DlmiError

app = typer.Typer(help="export (not implemented yet).", no_args_is_help=True)


@app.command("placeholder", hidden=True)
def _placeholder() -> None:
    raise DlmiError("dlmi export is not implemented yet")
