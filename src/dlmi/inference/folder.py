"""``dlmi predict``'s loop: every image under a folder through a predictor, streamed in bounded batches.

Memory stays flat however many images there are: files are listed as paths, read one batch ahead on a
background thread (so decoding overlaps inference), and each image's outputs are written and logged as
soon as its batch is done. An unreadable file (or a symbolic link to nothing) is reported with its cause
and skipped; the others complete. A re-run skips the images already in ``progress.jsonl`` when their
source file and the models are unchanged (unless ``overwrite``). When an output cannot be written, the run
stops with one line, after writing the tables of the images that were done.

Three modes, from the models given: ``aided`` (classifier gate + segmenter), ``segmenter`` (masks only) and
``classifier`` (a classifier alone: the class and probabilities, no masks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dlmi.errors import DlmiError
from dlmi.imageio import read_grey
from dlmi.inference.discovery import scan_images
from dlmi.inference.outputs import (
    CLASSIFY_MODE,
    OutputWriteError,
    ProgressLog,
    check_unique_outputs,
    output_stems,
    remove_orphan_temporaries,
    source_identity,
    write_image_outputs,
    write_tables,
)
from dlmi.inference.predictor import Predictor
from dlmi.inference.preprocess import as_float, model_input, resize_probabilities
from dlmi.inference.tiling import segment_tiled

PROGRESS_EVERY = 100
AIDED_MODE, SEGMENTER_MODE = "aided", "segmenter"


@dataclass
class PredictSettings:
    """How to predict: with the classifier's gate (``aided``), tiled or resized, the mask threshold
    (``None``: the segmenter's own), images per batch, whether to redo finished images, and glob patterns
    of files to leave out (``exclude``, e.g. ``*_mask*``)."""

    aided: bool = False
    tile: bool = False
    threshold: float | None = None
    batch_size: int = 8
    overwrite: bool = False
    exclude: tuple[str, ...] = ()


@dataclass
class PredictSummary:
    """What one ``predict_folder`` call did."""

    out: Path
    total: int
    predicted: int
    skipped: int
    failed: list[dict[str, str]] = field(default_factory=list)
    csv: Path | None = None
    json: Path | None = None
    running_on: str = ""
    mode: str = SEGMENTER_MODE


@dataclass
class Loaded:
    """One image read from disk (or why it could not be), with the identity of the file it came from."""

    file: PurePosixPath
    grey: np.ndarray | None = None
    input: np.ndarray | None = None
    source: dict[str, Any] | None = None
    error: str | None = None


def _load(folder: Path, file: PurePosixPath, size: int | None) -> Loaded:
    path = folder / file
    try:
        source = source_identity(path)  # before reading: a file changed meanwhile is redone next time
        grey = read_grey(path)
    except DlmiError as exc:
        return Loaded(file, error=str(exc))
    except Exception as exc:  # e.g. a decompression bomb: name the file and the cause, go on
        return Loaded(file, error=f"{path}: cannot read image ({type(exc).__name__}: {exc})")
    return Loaded(file, grey=grey, input=model_input(grey, size) if size else None, source=source)


def choose_mode(predictor: Predictor, settings: PredictSettings) -> str:
    """``aided``, ``segmenter`` or ``classifier``, from ``settings.aided`` and the models loaded."""
    info = predictor.info
    if settings.aided:
        return AIDED_MODE
    if info.segmenter_size is not None:
        return SEGMENTER_MODE
    if info.classifier_size is not None:
        if settings.tile:
            raise DlmiError("--tile segments at full resolution: it needs a segmenter (unet.onnx), and "
                            "these models hold only a classifier")
        return CLASSIFY_MODE
    raise DlmiError("the models hold neither a segmenter nor a classifier to predict with")


def _check(settings: PredictSettings, folder: Path, out: Path) -> None:
    if settings.batch_size < 1:
        raise DlmiError(f"--batch-size must be at least 1, got {settings.batch_size}")
    if settings.threshold is not None and not 0.0 < settings.threshold < 1.0:
        raise DlmiError(f"--threshold must be between 0 and 1 (a probability), got {settings.threshold}")
    if out.resolve() == folder.resolve():
        raise DlmiError(f"{out}: --out must not be the input folder itself (use a sub-folder or another one)")


def prepare_output(out: Path) -> None:
    """Create OUT (and its parents) and check that files can be written there; one line if not."""
    if out.exists() and not out.is_dir():
        raise DlmiError(f"{out}: --out exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DlmiError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DlmiError(f"{out}: the output folder is not writable")


class _Run:
    """The state of one folder's prediction."""

    def __init__(self, folder: Path, out: Path, predictor: Predictor, settings: PredictSettings,
                 mode: str, log: Callable[[str], None]) -> None:
        self.folder, self.out, self.predictor, self.settings, self.log = folder, out, predictor, settings, log
        self.mode = mode
        info = predictor.info
        self.classes = info.classes if mode in (AIDED_MODE, CLASSIFY_MODE) else []
        self.normal_index = info.normal_index
        self.threshold = float(settings.threshold if settings.threshold is not None else info.threshold)
        self.failed: list[dict[str, str]] = []
        self.stems: dict[PurePosixPath, str] = {}
        self.progress: ProgressLog | None = None
        self._settings: dict[str, Any] | None = None

    def run_settings(self) -> dict[str, Any]:
        """What the outputs depend on (mode, tiling, threshold, backend and model files' digests)."""
        if self._settings is None:
            self._settings = {"mode": self.mode, "tile": self.settings.tile,
                              "threshold": None if self.mode == CLASSIFY_MODE else self.threshold,
                              **self.predictor.fingerprint()}
        return self._settings

    def stem(self, file: PurePosixPath) -> str | None:
        """The output path stem of ``file``; ``None`` where nothing but the tables is written."""
        return None if self.mode == CLASSIFY_MODE else self.stems[file]

    def fail(self, file: PurePosixPath, error: str) -> None:
        self.failed.append({"file": str(file), "error": error})
        self.log(f"skipped {error}")

    def classified(self, item: Loaded, class_probs: np.ndarray | None,
                   gated: bool | None) -> dict[str, Any]:
        record: dict[str, Any] = {"file": str(item.file), "class": None, "probabilities": None, "gated": None}
        if class_probs is not None:
            record["class"] = self.classes[int(np.argmax(class_probs))]
            record["probabilities"] = {c: round(float(p), 6) for c, p in zip(self.classes, class_probs,
                                                                               strict=True)}
            record["gated"] = bool(gated) if gated is not None else None
        return record

    def record(self, item: Loaded, mask: np.ndarray | None, class_probs: np.ndarray | None,
               gated: bool | None) -> dict[str, Any]:
        assert item.grey is not None
        record = self.classified(item, class_probs, gated)
        if mask is None:
            record.update(mask=None, overlay=None)
        else:
            masks, overlays = write_image_outputs(self.out, self.stems[item.file], item.grey, mask)
            height, width = mask.shape
            pixels = int(mask.sum())
            record.update(lesion_pixels=pixels, lesion_fraction=pixels / float(height * width),
                          width=width, height=height, mask=masks, overlay=overlays)
        record["source"] = item.source
        return record

    def classified_batch(self, items: Sequence[Loaded]) -> list[dict[str, Any]]:
        """The classifier alone: class and probabilities, no masks."""
        info = self.predictor.info
        assert info.classifier_size is not None
        inputs = np.stack([model_input(item.grey, info.classifier_size) for item in items])
        class_probs = self.predictor.classify(inputs)
        return [self.record(item, None, class_probs[j], None) for j, item in enumerate(items)]

    def resized_batch(self, items: Sequence[Loaded]) -> list[dict[str, Any]]:
        """Images resized to the segmenter's size; masks resized back (bilinear probabilities, cut)."""
        batch = np.stack([item.input for item in items])
        if self.mode == AIDED_MODE:
            class_probs, mask_probs, gated = self.predictor.two_stage(batch)
        else:
            mask_probs = self.predictor.segment(batch)
            class_probs, gated = None, None
        records = []
        for j, item in enumerate(items):
            assert item.grey is not None
            height, width = item.grey.shape
            mask = resize_probabilities(mask_probs[j, 0], height, width) > self.threshold
            records.append(self.record(item, mask, None if class_probs is None else class_probs[j],
                                       None if gated is None else bool(gated[j])))
        return records

    def tiled_batch(self, items: Sequence[Loaded]) -> list[dict[str, Any]]:
        """Each image segmented tile by tile at its own resolution; the classifier sees the whole image."""
        info = self.predictor.info
        class_probs = gated = None
        if self.mode == AIDED_MODE:
            assert info.classifier_size is not None and self.normal_index is not None
            inputs = np.stack([model_input(item.grey, info.classifier_size) for item in items])
            class_probs = self.predictor.classify(inputs)
            gated = class_probs.argmax(axis=1) == self.normal_index
        records = []
        for j, item in enumerate(items):
            assert item.grey is not None and info.segmenter_size is not None
            if gated is not None and gated[j]:
                mask = np.zeros(item.grey.shape, dtype=bool)  # the gate: the classifier says normal
            else:
                probs = segment_tiled(as_float(item.grey), self.predictor.segment, info.segmenter_size,
                                      batch_size=self.settings.batch_size)
                mask = probs > self.threshold
            records.append(self.record(item, mask, None if class_probs is None else class_probs[j],
                                       None if gated is None else bool(gated[j])))
        return records

    def process(self, loaded: Sequence[Loaded]) -> int:
        good = []
        for item in loaded:
            if item.error is not None:
                self.fail(item.file, item.error)
            else:
                good.append(item)
        if not good:
            return 0
        if self.mode == CLASSIFY_MODE:
            records = self.classified_batch(good)
        else:
            records = self.tiled_batch(good) if self.settings.tile else self.resized_batch(good)
        assert self.progress is not None
        self.progress.append(records)
        return len(records)

    def finished_records(self, files: Sequence[PurePosixPath]) -> list[dict[str, Any]]:
        assert self.progress is not None
        return [self.progress.records[str(f)] for f in files if str(f) in self.progress.records]


def _pending(run: _Run, files: Sequence[PurePosixPath]) -> list[PurePosixPath]:
    """The files not done yet: no record, a record of another source file, or outputs gone."""
    assert run.progress is not None
    pending = []
    for f in files:
        try:
            source = source_identity(run.folder / f)
        except OSError:
            pending.append(f)  # gone or unreadable now: reading it will say why
            continue
        if not run.progress.is_done(str(f), run.out, source=source, stem=run.stem(f)):
            pending.append(f)
    return pending


def predict_folder(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    predictor: Predictor,
    settings: PredictSettings | None = None,
    *,
    log: Callable[[str], None] = print,
) -> PredictSummary:
    """Predict every image under ``folder`` into ``out``; see :mod:`dlmi.inference.outputs` for the layout."""
    settings = settings or PredictSettings()
    folder, out = Path(folder), Path(out)
    _check(settings, folder, out)
    mode = choose_mode(predictor, settings)
    listing = scan_images(folder, exclude=out, patterns=settings.exclude)
    for earlier in listing.output_folders:
        log(f"left out {folder / earlier}: it holds an earlier dlmi predict output")
    files = listing.files
    if not files and not listing.broken_links:
        raise DlmiError(f"{folder}: no images (png, jpg, jpeg, bmp, tif) under this folder")
    prepare_output(out)
    removed = remove_orphan_temporaries(out)
    if removed:
        log(f"removed {removed} temporary file(s) left in {out} by an interrupted run")
    check_unique_outputs(files, out)
    run = _Run(folder, out, predictor, settings, mode, log)
    for link in listing.broken_links:
        run.fail(link, f"{folder / link}: a symbolic link to a file that does not exist")
    run.stems = output_stems(files)
    run.progress = ProgressLog(out, run.run_settings(), overwrite=settings.overwrite)
    if run.progress.changed:
        log(f"{run.progress.path}: the earlier predictions in {out} were made with other settings "
            f"(changed: {', '.join(run.progress.changed)}); predicting every image again")
    pending = _pending(run, files)
    skipped = len(files) - len(pending)
    if skipped:
        log(f"{skipped} of {len(files)} images already done in {out} (use --overwrite to redo them)")
    size = None if (settings.tile or mode == CLASSIFY_MODE) else predictor.info.segmenter_size
    step = settings.batch_size
    batches = [pending[i:i + step] for i in range(0, len(pending), step)]

    def read(batch: Sequence[PurePosixPath]) -> list[Loaded]:
        return [_load(folder, f, size) for f in batch]

    predicted = 0
    next_report = PROGRESS_EVERY
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlmi-read") as reader:
            future = reader.submit(read, batches[0]) if batches else None
            for i in range(len(batches)):
                assert future is not None
                loaded = future.result()
                future = reader.submit(read, batches[i + 1]) if i + 1 < len(batches) else None
                predicted += run.process(loaded)
                if predicted >= next_report:
                    log(f"{predicted + len(run.failed)} of {len(pending)} images done")
                    next_report += PROGRESS_EVERY
    except OutputWriteError as exc:
        done = run.finished_records(files)
        try:
            csv_path, _ = write_tables(out, done, classes=run.classes, settings=run.run_settings(),
                                       failed=run.failed)
            saved = f"the {len(done)} images done are in {csv_path}"
        except OutputWriteError:
            saved = f"the {len(done)} images done are in {run.progress.path}"
        raise DlmiError(f"{exc}; stopped: {saved}; fix the cause and re-run to continue") from exc

    csv_path, json_path = write_tables(out, run.finished_records(files), classes=run.classes,
                                       settings=run.run_settings(), failed=run.failed)
    return PredictSummary(out=out, total=len(files) + len(listing.broken_links), predicted=predicted,
                          skipped=skipped, failed=run.failed, csv=csv_path, json=json_path,
                          running_on=predictor.running_on, mode=mode)
