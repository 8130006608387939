"""``dlmi evaluate``: filled in by a later change."""

from __future__ import annotations

import typer

from dlmi.errors import DlmiError


def evaluate_command(run_dir: str = typer.Argument(..., help="A training run folder.")) -> None:
    """Evaluate a trained run (not implemented yet).

    Example: `dlmi evaluate runs/unet-dice`
    """
    raise DlmiError("dlmi evaluate is not implemented yet")


def install(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
