"""``dlmi evaluate``: score a training run (``evaluate RUN_DIR``) or a folder of masks (``evaluate masks``).

``evaluate`` is a command group whose default command is ``run``: when the first argument is not a
sub-command name, ``run`` is assumed, so ``dlmi evaluate runs/unet`` and ``dlmi evaluate run runs/unet`` are
the same. (A run folder literally called ``masks`` needs ``dlmi evaluate run masks`` or ``./masks``.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

DEFAULT_COMMAND = "run"

HELP = """Score a trained run, or any tool's predicted masks, with the definitions of docs/metrics.md.

Two forms:

* `dlmi evaluate RUN_DIR [--aid CLASSIFIER_RUN] [--split FILE] [--side test] [--json]` — a training run
  folder (the `run` command; its name may be left out).
* `dlmi evaluate masks PRED_DIR TRUTH_DIR [--json]` — a folder of predicted mask PNGs against true masks of
  the same file names.

Examples: `dlmi evaluate runs/unet-dice --aid runs/classifier` ·
`dlmi evaluate runs/classifier --side all` · `dlmi evaluate masks preds/ data/busi-masks/`
"""


class DefaultRunGroup(TyperGroup):
    """A group that runs :data:`DEFAULT_COMMAND` when the first argument is not one of its sub-commands."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=DefaultRunGroup, help=HELP, no_args_is_help=True, rich_markup_mode="markdown")


def _emit(result: dict[str, Any], as_json: bool, markdown: list[str]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(markdown))


@app.command("run")
def run_command(
    run_dir: Path = typer.Argument(..., help="A training run folder (or a best.pt / last.pt file)."),
    aid: Path | None = typer.Option(None, "--aid", help="Classifier run that gates the segmenter "
                                    "(default: the aid the run was trained with, if any)."),
    split: Path | None = typer.Option(None, "--split", help="Split file (default: the run's split.json)."),
    side: str = typer.Option("test", "--side", help="train, val, test or all."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON instead of the table."),
    data_dir: Path | None = typer.Option(None, "--data-dir",
                                         help="Dataset folder (default: the one recorded in the run)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    resamples: int = typer.Option(2000, "--resamples", help="Bootstrap resamples for the 95 % intervals."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    panels: bool = typer.Option(True, "--panels/--no-panels", help="Draw the qualitative panels PNG."),
    review: bool = typer.Option(True, "--review/--no-review", help="Write the test side's review page "
                                "(review-test.html and review-test-files/ in the run folder)."),
) -> None:
    """Evaluate a training run on one side of its split; writes eval-SIDE.json / .md and figures into it, and
    for the test side the review page review-test.html (docs/review.md).

    Example: `dlmi evaluate runs/unet-dice --aid runs/classifier --side test`
    """
    from dlmi.api import evaluate

    report = evaluate(run_dir, aid=aid, split=split, side=side, data_dir=data_dir, checkpoint=checkpoint,
                      batch_size=batch_size, workers=workers, device=device, resamples=resamples, seed=seed,
                      panels=panels, review=review)
    per_side = report.sides or {side: report}
    lines = [report.markdown()]
    lines += ["Written: " + ", ".join(f"{r.files['json']}, {r.files['markdown']}"
                                      + (f", {r.files['review']}" if r.files.get("review") else "")
                                      for r in per_side.values()) + "\n"]
    _emit(report.to_dict(), as_json, lines)


@app.command("masks")
def masks_command(
    pred_dir: Path = typer.Argument(..., help="Folder of predicted masks (searched recursively)."),
    truth_dir: Path = typer.Argument(..., help="Folder of true masks with the same relative file names."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON instead of the table."),
    missing_as_empty: bool = typer.Option(False, "--missing-as-empty",
                                          help="Score a truth without a prediction as an empty prediction "
                                          "(default: an error)."),
    resize: bool = typer.Option(False, "--resize", help="Resize predictions of another size to the truth's "
                                "size, nearest neighbour (default: an error)."),
    resamples: int = typer.Option(2000, "--resamples", help="Bootstrap resamples for the 95 % intervals."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Score a folder of predicted mask PNGs against true masks of the same file names.

    Same definitions as a run's evaluation (seed mIoU with its empty-mask rule, lesion-only Dice and IoU,
    per class when the truths sit in class folders, 95 % bootstrap intervals).

    Example: `dlmi evaluate masks predictions/ truth-masks/ --json`
    """
    from dlmi.evaluation.masks import evaluate_masks, markdown_masks_report

    result = evaluate_masks(pred_dir, truth_dir, missing_as_empty=missing_as_empty, resize=resize,
                            resamples=resamples, seed=seed)
    _emit(result, as_json, [markdown_masks_report(result)])


def install(main_app: typer.Typer) -> None:
    main_app.add_typer(app, name="evaluate")
