"""``dlmi predict``: filled in by a later change."""

from __future__ import annotations

import typer

from dlmi.errors import DlmiError


def predict_command(
    folder: str = typer.Argument(..., help="Folder of images."),
    aided: bool = typer.Option(False, "--aided", help="Gate the U-Net with the classifier."),
) -> None:
    """Two-stage inference over a folder (not implemented yet).

    Example: `dlmi predict --aided scans/`
    """
    raise DlmiError("dlmi predict is not implemented yet")


def install(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
