"""``dlmi model``: model summaries."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect models: layer tables and parameter counts.", no_args_is_help=True)
