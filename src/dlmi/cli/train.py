"""``dlmi train``: filled in by a later change."""

from __future__ import annotations

import typer

from dlmi.errors import DlmiError

app = typer.Typer(help="train (not implemented yet).", no_args_is_help=True)


@app.command("placeholder", hidden=True)
def _placeholder() -> None:
    raise DlmiError("dlmi train is not implemented yet")
