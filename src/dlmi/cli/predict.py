"""``dlmi predict``: masks (and, with ``--aided``, classes) for every image under a folder."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

EXIT_SKIPPED = 1  # some input files could not be predicted; 2 (a DlmiError) is a usage/model/output error


@contextmanager
def progress_display(
    terminal: bool,
) -> Iterator[tuple[Callable[[str], None], Callable[[int, int, int], None] | None]]:
    """(log, progress) for :func:`predict_folder`: on a terminal a rich progress bar on stderr (images/s,
    time left, failures so far) with messages printed above it; otherwise plain lines (``None`` progress:
    the library's line every 100 images)."""
    if not terminal:
        yield (lambda message: typer.echo(f"dlmi: {message}", err=True)), None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]} images/s"), TextColumn("{task.fields[left]}"), TimeRemainingColumn(),
        TextColumn("{task.fields[failed]}"), console=console, transient=False,
    )
    task = bar.add_task("predict", total=None, rate="-", failed="", left="left")
    started = time.perf_counter()

    def log(message: str) -> None:
        bar.console.print(f"dlmi: {message}", markup=False, highlight=False)

    def progress(done: int, failed: int, total: int) -> None:
        elapsed = max(time.perf_counter() - started, 1e-6)
        bar.update(task, total=total, completed=done + failed, rate=f"{done / elapsed:.1f}",
                   failed=f"{failed} skipped" if failed else "")

    with bar:
        yield log, progress


def predict_command(
    folder: Path = typer.Argument(
        ..., help="Folder of images, searched recursively (png/jpg/jpeg/bmp/tif, DICOM)."
    ),
    aided: bool = typer.Option(
        False, "--aided", help="Two-stage: the classifier's 'normal' empties the mask."
    ),
    models: list[Path] | None = typer.Option(
        None, "--models",
        help="onnx: the export folder (default exported/). torch: run folders or .pt files (repeat the "
             "option), or an export folder (its export.json names the checkpoints).",
    ),
    out: Path = typer.Option(Path("predictions"), "--out", help="Output folder (skipped if inside FOLDER)."),
    provider: str = typer.Option("auto", "--provider", help="auto, cuda or cpu."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images (or tiles) per model call."),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Lesion probability threshold (default: the segmenter's own)."
    ),
    backend: str = typer.Option("onnx", "--backend", help="onnx (onnxruntime) or torch (the checkpoints)."),
    tile: bool = typer.Option(
        False, "--tile", help="Segment at full resolution in overlapping tiles of the model's size, blended."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images already predicted in OUT."),
    threads: int = typer.Option(
        0, "--threads", min=0, help="CPU threads for the model, and for each of the reading and writing "
                                    "pools (0: onnxruntime's default; min(4, cores) readers and writers)."
    ),
    fp16: bool = typer.Option(
        False, "--fp16", help="Run the *_fp16.onnx files (from export --fp16; for GPUs)."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Run the *_int8.onnx files (from export --int8; quantized, for CPUs)."
    ),
    exclude: list[str] | None = typer.Option(
        None, "--exclude", help="Leave out files whose name or path matches this glob, e.g. '*_mask*' "
                                "(repeatable)."
    ),
    overlays: bool = typer.Option(
        True, "--overlays/--no-overlays", help="Also write an overlay PNG per image (lesion in red)."
    ),
) -> None:
    """Predict a lesion mask for every image under FOLDER: a mask PNG at the image's size, an overlay
    PNG, and predictions.csv / predictions.json in OUT. With --aided, the classifier runs first and
    its 'normal' verdict empties the mask. With only a classifier in --models (no unet.onnx), each
    image's class and probabilities are written, no masks.

    A re-run into the same OUT skips an image only when the same source file was predicted with the same
    models and settings; anything else is predicted again, and the outputs of inputs gone or unreadable
    since are removed (named on stderr). One run at a time writes into OUT: a second is refused, naming
    the running one's pid. Folders holding an earlier predict output are left out. Exit status: **0**
    every image predicted (or already done); **1** done, but some input files were skipped (unreadable, a
    link to nothing, or an output name too long; each is named on stderr and listed in predictions.json);
    **2** a usage, model or output error (one line; nothing more is predicted).

    Example: `dlmi predict --aided scans/ --models exported/ --out predictions/ --exclude '*_mask*'`
    """
    from dlmi.inference.folder import PredictSettings, predict_folder
    from dlmi.inference.predictor import open_predictor

    predictor = open_predictor(models or [], backend=backend, provider=provider, aided=aided, tile=tile,
                               threads=threads or None, fp16=fp16, int8=int8)
    typer.echo(f"running on: {predictor.running_on}")
    settings = PredictSettings(aided=aided, tile=tile, threshold=threshold, batch_size=batch_size,
                               overwrite=overwrite, exclude=tuple(exclude or ()), overlays=overlays,
                               threads=threads or None)
    with progress_display(sys.stderr.isatty()) as (log, progress):
        summary = predict_folder(folder, out, predictor, settings, log=log, progress=progress)
    typer.echo(
        f"{summary.total} images: {summary.predicted} predicted, {summary.skipped} already done, "
        f"{len(summary.failed)} skipped"
    )
    folders = "" if summary.mode == "classifier" else f"{summary.out}/masks, " + (
        f"{summary.out}/overlays, " if overlays else "")
    typer.echo(f"outputs: {folders}{summary.csv}, {summary.json}")
    if summary.failed:
        raise typer.Exit(EXIT_SKIPPED)


def install(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
