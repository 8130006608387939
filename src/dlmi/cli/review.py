"""``dlmi review PRED_DIR``: a static HTML page to look through a prediction run image by image."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

HELP = """Write one self-contained HTML page (default PRED_DIR/review.html, its pictures in review-files/
beside it) from a `dlmi predict` output folder: provenance, one row per image (overlay, class,
probabilities, gate and its margin, lesion area, uncertainty; Dice and IoU with --truth), sorting, filters,
a confusion matrix with --truth, a detail view (image | truth | prediction | errors) and flags
(j/k next/previous, f flag) exported as a CSV. No server, no network: open it from any drive.

Example: `dlmi review predictions/ --truth data/busi/` · `dlmi review predictions/ --flags flags.csv`
"""


def review_command(
    pred_dir: Path = typer.Argument(..., help="A dlmi predict output folder (holds predictions.json)."),
    truth: Path | None = typer.Option(None, "--truth", help="Folder of true masks, matched by relative "
                                      "path (BUSI's NAME_mask.png, NAME_mask_1.png... merged)."),
    out: Path | None = typer.Option(None, "--out", help="The page's file (default PRED_DIR/review.html)."),
    flags: Path | None = typer.Option(None, "--flags", help="A flags CSV the page exported (file,flag,note): "
                                      "its flags and notes are marked on the new page."),
) -> None:
    """Write a static review page for a prediction run (see docs/review.md)."""
    from dlmi.api import review

    page = review(pred_dir, truth=truth, out=out, flags=flags)
    sys.stdout.write(f"review page: {page}\n")


def install(app: typer.Typer) -> None:
    """Add ``dlmi review`` to the ``dlmi`` app."""
    app.command("review", help=HELP)(review_command)
