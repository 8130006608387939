"""``dlmi data``: dataset summaries (audit and splits come with the data issue)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect datasets: summary, audit, split.", no_args_is_help=True)
