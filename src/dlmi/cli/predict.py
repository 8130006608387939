"""``dlmi predict``: masks (and, with ``--aided``, classes) for every image under a folder."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperCommand

from dlmi.errors import DlmiError

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
    dicom_seg: bool = typer.Option(
        False, "--dicom-seg", help="Also write each DICOM input's mask as a DICOM Segmentation, "
                                   "OUT/dicom/PATH.dcm (one per file, a frame per cine frame; pip install "
                                   "'dlmi[dicom-seg]'; docs/dicom.md)."
    ),
    dicom_sr: bool = typer.Option(
        False, "--dicom-sr", help="Also write each DICOM input's class and probabilities as a DICOM "
                                  "Comprehensive SR, OUT/dicom-sr/PATH.dcm (needs a classifier)."
    ),
    # Past one machine (docs/distributed.md): this run's share of the inputs.
    num_shards: int | None = typer.Option(
        None, "--num-shards", help="Split the inputs into N shards (sorted paths, every N-th); with "
                                   "--shard-index. Join them with `dlmi predict merge OUT`."
    ),
    shard_index: int | None = typer.Option(
        None, "--shard-index", help="Which shard this run predicts, 0 to N-1 (writes "
                                    "predictions-I-of-N.csv/json)."
    ),
    # --- Ray (docs/distributed.md): the same outputs, computed by an actor pool on a Ray cluster ---
    engine: str = typer.Option(
        "local", "--engine", help="local (this process) or ray (Ray Data; FOLDER may then also be a text "
                                  "file listing image paths or URIs, one a line; pip install 'dlmi[ray]')."
    ),
    address: str | None = typer.Option(
        None, "--address", help="--engine ray: a running Ray cluster's address (default: start a local Ray)."
    ),
    actors: int | None = typer.Option(
        None, "--actors", min=1, help="--engine ray: actors in the pool, each with its own model session "
                                      "(default: CPUs less one on a local Ray, else 2)."
    ),
    gpus_per_actor: float = typer.Option(
        0.0, "--gpus-per-actor", min=0.0, help="--engine ray: GPUs for each actor (0.5: two share one)."
    ),
    review: bool = typer.Option(
        False, "--review", help="At the end, write OUT/review.html, the review page (`dlmi review OUT`)."
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

    Past one machine: N runs with `--num-shards N --shard-index I` (0 to N-1) each predict every N-th input
    (by sorted path) into the same OUT, writing predictions-I-of-N.csv/json; `dlmi predict merge OUT` joins
    them into predictions.csv/json (so does the next run without shards into OUT). A folder of images named
    `merge` is written `./merge`.

    DICOM outputs (docs/dicom.md): with --dicom-seg each DICOM input also gets a DICOM Segmentation in
    OUT/dicom/ (binary, one segment "lesion" coded by the models' dataset, referencing the source's UIDs,
    an empty segment where the mask is empty); with --dicom-sr a Comprehensive SR of the predicted class
    and probabilities in OUT/dicom-sr/. Other inputs get none (said once). Both need highdicom: pip install
    'dlmi[dicom-seg]'.

    Example: `dlmi predict --aided scans/ --models exported/ --out predictions/ --exclude '*_mask*'`
    """
    from dlmi.inference.folder import PredictSettings, predict_folder
    from dlmi.inference.predictor import open_predictor
    from dlmi.inference.ray_engine import engine_runner
    from dlmi.inference.shards import check_shard

    check_shard(num_shards, shard_index)  # before the models are opened
    if review and num_shards is not None:
        raise DlmiError("--review with --num-shards: a shard has no predictions.json of its own; run "
                        "`dlmi review OUT` after `dlmi predict merge OUT`")

    opener = {"models": models or [], "backend": backend, "provider": provider, "aided": aided, "tile": tile,
              "threads": threads or None, "fp16": fp16, "int8": int8}
    run_engine = engine_runner(engine, folder, address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                               opener=opener)
    predictor = open_predictor(**opener)
    typer.echo(f"running on: {predictor.running_on}")
    settings = PredictSettings(aided=aided, tile=tile, threshold=threshold, batch_size=batch_size,
                               overwrite=overwrite, exclude=tuple(exclude or ()), overlays=overlays,
                               threads=threads or None, num_shards=num_shards, shard_index=shard_index,
                               dicom_seg=dicom_seg, dicom_sr=dicom_sr)
    with progress_display(sys.stderr.isatty()) as (log, progress):
        summary = (run_engine or predict_folder)(folder, out, predictor, settings, log=log, progress=progress)
    typer.echo(
        f"{summary.total} images: {summary.predicted} predicted, {summary.skipped} already done, "
        f"{len(summary.failed)} skipped"
    )
    folders = "" if summary.mode == "classifier" else f"{summary.out}/masks, " + (
        f"{summary.out}/overlays, " if overlays else "")
    dicom = "".join(f"{summary.out}/{name}, " for name, on in (("dicom", dicom_seg), ("dicom-sr", dicom_sr))
                    if on)
    typer.echo(f"outputs: {folders}{dicom}{summary.csv}, {summary.json}")
    if review:
        from dlmi.api import review as write_review

        typer.echo(f"review page: {write_review(summary.out)}")
    if summary.failed:
        raise typer.Exit(EXIT_SKIPPED)


def merge_command(
    out: Path = typer.Argument(..., help="The --out folder the shards wrote into."),
) -> None:
    """Join the shards' tables in OUT (predictions-I-of-N.csv/json, from `dlmi predict --num-shards N
    --shard-index I`) into predictions.csv / predictions.json, the same bytes one run without shards writes.
    Refused in one line when a shard is missing or still running, or when two shards were made with other
    models or settings or from another list of inputs (naming the shard).

    Example: `dlmi predict merge predictions/`
    """
    from dlmi.inference.shards import merge_shards

    summary = merge_shards(out, log=lambda message: typer.echo(f"dlmi: {message}", err=True))
    typer.echo(f"{summary.shards} shards: {summary.predicted} images predicted, {summary.failed} skipped")
    typer.echo(f"outputs: {summary.csv}, {summary.json}")


MERGE = "merge"


class PredictCommand(TyperCommand):
    """``dlmi predict``, which also answers ``dlmi predict merge OUT`` (a command cannot hold a sub-command
    beside its own FOLDER argument in Click, so the first word chooses)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        if args and args[0] == MERGE:
            merge = typer.main.get_command(_merge_app())
            return merge.make_context(f"{info_name} {MERGE}", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


def _merge_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, rich_markup_mode="markdown", pretty_exceptions_enable=False)
    app.command("merge")(merge_command)
    return app


def install(app: typer.Typer) -> None:
    app.command("predict", cls=PredictCommand)(predict_command)
