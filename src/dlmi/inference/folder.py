"""``dlmi predict``'s loop: every image under a folder through a predictor, in a pipeline of threads.

Decoding, inference and writing overlap: a pool of reader threads decodes and preprocesses the next images,
the calling thread runs the model on a batch, and a pool of writer threads resizes each probability map back,
thresholds it and writes the mask (a 1-bit PNG) and the overlay (a palette PNG), both at zlib level 1.
Pillow, zlib and onnxruntime release the GIL, so the stages run side by side on several cores. Memory stays
bounded: at most two batches are read ahead and two batches wait to be written, however many files there are.

DICOM files (``.dcm``, or without a suffix and carrying the DICOM marker) are read through :mod:`dlmi.dicom`;
a multi-frame file (ultrasound cine) is predicted frame by frame, one record per frame with its number and the
SOP Instance / Series Instance UIDs (no patient identifier is read into a record). A file that cannot be read
(or decoded: a compressed transfer syntax with no decoder here) is reported with its cause and skipped; the
others complete. A re-run skips the images already in ``progress.jsonl`` when their source file and the
models are unchanged (unless ``overwrite``), and removes the outputs of inputs gone or unreadable since,
naming them. When an output cannot be written, the run stops with one line, after writing the tables of the
images that were done; an input whose output name is too long for the file system is skipped instead. OUT
is locked while a run writes into it (:class:`~dlmi.inference.outputs.OutputLock`). An image of one
constant value (no contrast) is predicted and named on stderr.

With ``dicom_seg`` / ``dicom_sr``, each DICOM input file also gets a DICOM Segmentation / Comprehensive SR
(:mod:`dlmi.inference.dicom_outputs`), written once all its frames are done.

Three modes, from the models given: ``aided`` (classifier gate + segmenter), ``segmenter`` (masks only) and
``classifier`` (a classifier alone: the class and probabilities, no masks).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dlmi.dicom import dicom_references, is_dicom_file, read_dicom_grey, read_header
from dlmi.discovery import ImageListing, scan_images
from dlmi.errors import DlmiError
from dlmi.imageio import PIL_SUFFIXES, read_grey
from dlmi.inference.dicom_outputs import DicomOutputs, check_dicom_options
from dlmi.inference.outputs import (
    CLASSIFY_MODE,
    OutputLock,
    OutputNameError,
    OutputWriteError,
    ProgressLog,
    check_unique_outputs,
    delete_outputs,
    frame_stem,
    mask_path,
    name_limit,
    output_name_problem,
    overlay_path,
    record_key,
    remove_orphan_temporaries,
    source_identity,
    write_image_outputs,
)
from dlmi.inference.predictor import Predictor, check_threshold
from dlmi.inference.shards import (
    Shard,
    check_other_runs,
    check_shard,
    join_shard_logs,
    listing_digest,
    output_names,
    own_temporaries,
    shard_inputs,
    write_ordered_tables,
)
from dlmi.inference.tiling import segment_tiled
from dlmi.machine import machine_cpus
from dlmi.runtime.preprocess import as_float, model_input, resize_probabilities
from dlmi.runtime.providers import clamp_threads

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
    overlays: bool = True
    threads: int | None = None  # reader and writer threads each (None: min(4, CPU cores) readers, 4 writers)
    num_shards: int | None = None  # shard ``shard_index`` of ``num_shards``: dlmi.inference.shards
    shard_index: int | None = None
    dicom_seg: bool = False  # a DICOM Segmentation per DICOM input: dlmi.inference.dicom_outputs
    dicom_sr: bool = False  # a Comprehensive SR of the class and probabilities per DICOM input

    def workers(self) -> int:
        """Reader threads: ``threads``, or min(4, CPU cores)."""
        threads = clamp_threads(self.threads, quiet=True)
        return threads if threads else min(4, machine_cpus())

    def writers(self) -> int:
        """Writer threads: ``threads``, or 4 — writing mostly waits on the disk (each file is fsynced), so
        more writers than cores keep it busy."""
        return clamp_threads(self.threads, quiet=True) or 4


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


@dataclass(frozen=True)
class Unit:
    """One image to predict: a file, or one frame of a DICOM file (``frame`` 1-based, with its UIDs)."""

    file: PurePosixPath
    frame: int | None = None
    frames: int = 1
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None

    @property
    def key(self) -> str:
        return record_key(str(self.file), self.frame)

    @property
    def stem(self) -> str:
        return frame_stem(self.file, self.frame, self.frames)

    def label(self) -> str:
        return str(self.file) if self.frame is None or self.frames <= 1 else f"{self.file} frame {self.frame}"


@dataclass
class Loaded:
    """One image read from disk (or why it could not be), with the identity of the file it came from."""

    unit: Unit
    grey: np.ndarray | None = None
    input: np.ndarray | None = None
    source: dict[str, Any] | None = None
    error: str | None = None
    note: str | None = None  # something to tell about an image read well (one constant value)

    @property
    def file(self) -> PurePosixPath:
        return self.unit.file


@dataclass
class Skipped:
    """A unit whose outputs could not be written for a reason of its own (its name): it alone is skipped."""

    unit: Unit
    error: str


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() not in PIL_SUFFIXES and is_dicom_file(path)


def _load(folder: Path, unit: Unit, size: int | None) -> Loaded:
    path = folder / unit.file
    try:
        source = source_identity(path)  # before reading: a file changed meanwhile is redone next time
        if unit.frame is not None:
            grey = read_dicom_grey(path, frame=unit.frame if unit.frames > 1 else None)
        else:
            grey = read_grey(path)
    except DlmiError as exc:
        return Loaded(unit, error=str(exc))
    except Exception as exc:  # e.g. a decompression bomb: name the file and the cause, go on
        return Loaded(unit, error=f"{path}: cannot read image ({type(exc).__name__}: {exc})")
    note = None
    if grey.size and grey.min() == grey.max():
        note = (f"{path}: the image holds one value only (no contrast; read as grey {int(grey.flat[0])}): "
                "predicted, but its result carries no information")
    return Loaded(unit, grey=grey, input=model_input(grey, size) if size else None, source=source, note=note)


def _units_of(folder: Path, file: PurePosixPath) -> list[Unit] | str:
    """The units of one file: itself, or one per frame of a DICOM file (its header read, its transfer
    syntax checked); a one-line reason instead when the DICOM file cannot be read or decoded here."""
    path = folder / file
    try:
        if not _is_dicom(path):
            return [Unit(file)]
        from dlmi.dicom import check_decodable

        check_decodable(path, read_header(path))
        references = dicom_references(path)
    except DlmiError as exc:
        return str(exc)
    except Exception as exc:
        return f"{path}: cannot read DICOM header ({type(exc).__name__}: {exc})"
    return [Unit(file, frame=r.frame, frames=r.frames, sop_instance_uid=r.sop_instance_uid or None,
                 series_instance_uid=r.series_instance_uid or None) for r in references]


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
    check_threshold(settings.threshold)
    check_shard(settings.num_shards, settings.shard_index)
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


class _FolderPrediction:
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
        self.removed: list[str] = []  # inputs whose earlier outputs were removed (gone or unreadable now)
        self.progress: ProgressLog | None = None
        self._settings: dict[str, Any] | None = None

    def output_settings(self) -> dict[str, Any]:
        """What the outputs depend on (mode, tiling, threshold, backend and model files' digests)."""
        if self._settings is None:
            self._settings = {"mode": self.mode, "tile": self.settings.tile,
                              "threshold": None if self.mode == CLASSIFY_MODE else self.threshold,
                              **self.predictor.fingerprint()}
        return self._settings

    def context(self) -> dict[str, Any]:
        """Where the outputs came from, for the review page's provenance: the input folder, the model files
        (absolute paths) and, in aided mode, the gate's rule (``dlmi review``)."""
        info = self.predictor.info
        models = {kind: str(Path(path).resolve()) for kind, path in sorted(info.sources.items())}
        context: dict[str, Any] = {"input": str(self.folder.resolve()), "models": models}
        if self.mode == AIDED_MODE and info.normal_index is not None:
            gate = info.gate()
            context["gate"] = {"rule": gate.describe(str(info.normal_class)),
                               "normal_class": info.normal_class, "normal_threshold": gate.normal_threshold,
                               "min_lesion_pixels": gate.min_lesion_pixels, "threshold": self.threshold}
        return context

    def stem(self, unit: Unit) -> str | None:
        """The output path stem of ``unit``; ``None`` where nothing but the tables is written."""
        return None if self.mode == CLASSIFY_MODE else unit.stem

    def fail(self, unit: Unit | PurePosixPath, error: str) -> None:
        entry = {"file": str(unit.file if isinstance(unit, Unit) else unit), "error": error}
        if isinstance(unit, Unit) and unit.frame is not None and unit.frames > 1:
            entry["frame"] = unit.frame
        self.failed.append(entry)
        self.log(f"skipped {error}")
        if isinstance(unit, Unit) and self.progress is not None and self.progress.discard(self.out, unit.key):
            self.removed.append(unit.label())

    def report_removed(self) -> None:
        """Save the log without the records dropped, and name the inputs whose outputs were removed."""
        if self.progress is not None:
            self.progress.save()  # without the records discarded
        if self.removed:
            names = ", ".join(self.removed[:10]) + (f" and {len(self.removed) - 10} more"
                                                     if len(self.removed) > 10 else "")
            self.log(f"removed the outputs of {len(self.removed)} input(s) gone from {self.folder} or "
                     f"unreadable now: {names}")

    def classified(self, item: Loaded, class_probs: np.ndarray | None,
                   gated: bool | None, spread: Spread = (None, None)) -> dict[str, Any]:
        unit = item.unit
        record: dict[str, Any] = {"file": str(unit.file)}
        if unit.frame is not None:  # DICOM: which frame, and the UIDs (never a patient identifier)
            record.update(frame=unit.frame, frames=unit.frames, sop_instance_uid=unit.sop_instance_uid,
                          series_instance_uid=unit.series_instance_uid)
        record.update(class_fields(self.classes, class_probs, gated))
        record.update(uncertainty_fields(*spread))
        return record

    def record(self, item: Loaded, mask: np.ndarray | None, class_probs: np.ndarray | None,
               gated: bool | None, spread: Spread = (None, None)) -> dict[str, Any] | Skipped:
        assert item.grey is not None
        record = self.classified(item, class_probs, gated, spread)
        if mask is None:
            record.update(mask=None, overlay=None)
        else:
            stem = item.unit.stem
            try:
                masks, overlays = write_image_outputs(self.out, stem, item.grey, mask,
                                                      overlays=self.settings.overlays)
            except OutputNameError as exc:  # this image's name only: skip it, the others go on
                delete_outputs(self.out, {"mask": mask_path(stem), "overlay": overlay_path(stem)})
                return Skipped(item.unit, str(exc))
            record.update(lesion_fields(mask), mask=masks, overlay=overlays)
        record["source"] = item.source
        return record

    def classified_batch(self, items: Sequence[Loaded]) -> list[Callable[[], dict[str, Any]]]:
        """The classifier alone: class and probabilities, no masks."""
        info = self.predictor.info
        assert info.classifier_size is not None
        inputs = np.stack([model_input(item.grey, info.classifier_size) for item in items])
        class_probs, uncertainty = self.predictor.classify_uncertain(inputs)
        return [_job(self.record, item, None, class_probs[j], None, spread_of(j, uncertainty, None))
                for j, item in enumerate(items)]

    def resized_batch(self, items: Sequence[Loaded]) -> list[Callable[[], dict[str, Any]]]:
        """Images resized to the segmenter's size; the writers resize the masks back (bilinear
        probabilities, cut at the threshold)."""
        batch = np.stack([item.input for item in items])
        uncertainty = disagreement = None
        if self.mode == AIDED_MODE:
            outputs = self.predictor.two_stage_uncertain(batch)
            class_probs, mask_probs, gated, uncertainty, disagreement = outputs
        else:
            mask_probs = self.predictor.segment(batch)
            class_probs, gated = None, None
        return [_job(self.finish_resized, item, mask_probs[j, 0],
                     None if class_probs is None else class_probs[j],
                     None if gated is None else bool(gated[j]), spread_of(j, uncertainty, disagreement))
                for j, item in enumerate(items)]

    def finish_resized(self, item: Loaded, probs: np.ndarray, class_probs: np.ndarray | None,
                       gated: bool | None, spread: Spread = (None, None)) -> dict[str, Any] | Skipped:
        assert item.grey is not None
        height, width = item.grey.shape
        if gated:  # the gate emptied the mask: nothing to resize
            mask = np.zeros((height, width), dtype=bool)
        else:
            mask = resize_probabilities(probs, height, width) > self.threshold
        return self.record(item, mask, class_probs, gated, spread)

    def tiled_batch(self, items: Sequence[Loaded]) -> list[Callable[[], dict[str, Any]]]:
        """Each image segmented tile by tile at its own resolution; the classifier sees the whole image, and
        the gate is the models' own (:meth:`ModelInfo.gate`: an ensemble's P(normal) threshold and smallest
        lesion — as a fraction of the image — included)."""
        info = self.predictor.info
        class_probs = said_normal = uncertainty = None
        gate = None
        if self.mode == AIDED_MODE:
            assert info.classifier_size is not None
            gate = info.gate()
            inputs = np.stack([model_input(item.grey, info.classifier_size) for item in items])
            class_probs, uncertainty = self.predictor.classify_uncertain(inputs)
            said_normal = gate(class_probs, min_lesion_pixels=0)  # the lesion size: per image, below
        records = []
        for j, item in enumerate(items):
            assert item.grey is not None and info.segmenter_size is not None
            gated = None if said_normal is None else bool(said_normal[j])
            if gated:
                mask = np.zeros(item.grey.shape, dtype=bool)  # the gate: the classifier says normal
            else:
                probs = segment_tiled(as_float(item.grey), self.predictor.segment, info.segmenter_size,
                                      batch_size=self.settings.batch_size)
                if gate is not None and gate.min_lesion_pixels > 0:
                    assert class_probs is not None
                    smallest = gate.scaled_min_pixels(probs.size, info.segmenter_size ** 2)
                    gated = bool(gate(class_probs[j:j + 1], probs[None], min_lesion_pixels=smallest)[0])
                mask = np.zeros(item.grey.shape, dtype=bool) if gated else probs > self.threshold
            records.append(_job(self.record, item, mask, None if class_probs is None else class_probs[j],
                                gated, spread_of(j, uncertainty, None)))
        return records

    def infer(self, items: Sequence[Loaded]) -> list[Callable[[], dict[str, Any]]]:
        """Run the model on a batch of read images; what is left for each (resize back, write) as a job."""
        if self.mode == CLASSIFY_MODE:
            return self.classified_batch(items)
        return self.tiled_batch(items) if self.settings.tile else self.resized_batch(items)

    def finished_records(self, units: Sequence[Unit]) -> list[dict[str, Any]]:
        assert self.progress is not None
        return [self.progress.records[u.key] for u in units if u.key in self.progress.records]


def class_fields(classes: Sequence[str], class_probs: np.ndarray | None,
                 gated: bool | None) -> dict[str, Any]:
    """A record's ``class``, ``probabilities`` (rounded to 6 places) and ``gated`` (``None`` without a
    classifier)."""
    if class_probs is None:
        return {"class": None, "probabilities": None, "gated": None}
    return {"class": classes[int(np.argmax(class_probs))],
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, class_probs, strict=True)},
            "gated": bool(gated) if gated is not None else None}


Spread = tuple[float | None, float | None]
"""One image's (uncertainty, mask disagreement) (:mod:`dlmi.runtime.uncertainty`); ``None`` where the model
gives none (segmenter-only and tiled masks, an export older than these outputs)."""


def spread_of(index: int, uncertainty: np.ndarray | None, disagreement: np.ndarray | None) -> Spread:
    """The ``index``-th image's :data:`Spread` from a batch's (N,) outputs."""
    return (None if uncertainty is None else float(uncertainty[index]),
            None if disagreement is None else float(disagreement[index]))


def uncertainty_fields(uncertainty: float | None, mask_disagreement: float | None) -> dict[str, Any]:
    """A record's ``uncertainty`` and ``mask_disagreement`` (rounded to 6 places; ``None`` where none)."""
    return {"uncertainty": None if uncertainty is None else round(float(uncertainty), 6),
            "mask_disagreement": None if mask_disagreement is None else round(float(mask_disagreement), 6)}


def lesion_fields(mask: np.ndarray) -> dict[str, Any]:
    """A record's ``lesion_pixels``, ``lesion_fraction``, ``width`` and ``height`` of a bool mask."""
    height, width = mask.shape
    pixels = int(mask.sum())
    return {"lesion_pixels": pixels, "lesion_fraction": pixels / float(height * width), "width": width,
            "height": height}


def predict_arrays(predictor: Predictor, images: Sequence[np.ndarray], *, aided: bool,
                   threshold: float | None = None, batch_size: int = 8) -> list[dict[str, Any]]:
    """The records ``dlmi predict`` writes, for grey uint8 (H, W) arrays of any sizes: ``index`` (the
    position in ``images``) where a file's record has ``file``, ``mask`` the bool (H, W) mask itself (no
    overlay); the same computation as :class:`_FolderPrediction` (each image resized to the model's size, so
    any sizes share a batch of ``batch_size``; the mask probabilities resized back and cut at the
    threshold)."""
    settings = PredictSettings(aided=aided, threshold=threshold, batch_size=batch_size)
    mode = choose_mode(predictor, settings)
    info = predictor.info
    classes = info.classes if mode in (AIDED_MODE, CLASSIFY_MODE) else []
    cut = float(threshold if threshold is not None else info.threshold)
    records: list[dict[str, Any]] = []
    for start in range(0, len(images), max(1, batch_size)):
        chunk = images[start:start + max(1, batch_size)]
        if mode == CLASSIFY_MODE:
            assert info.classifier_size is not None
            class_probs, uncertainty = predictor.classify_uncertain(
                np.stack([model_input(g, info.classifier_size) for g in chunk]))
            records += [{"index": start + j, **class_fields(classes, class_probs[j], None),
                         **uncertainty_fields(*spread_of(j, uncertainty, None)), "mask": None}
                        for j in range(len(chunk))]
            continue
        assert info.segmenter_size is not None
        batch = np.stack([model_input(g, info.segmenter_size) for g in chunk])
        uncertainty = disagreement = None
        if mode == AIDED_MODE:
            probs, mask_probs, gated, uncertainty, disagreement = predictor.two_stage_uncertain(batch)
        else:
            probs, mask_probs, gated = None, predictor.segment(batch), None
        for j, grey in enumerate(chunk):
            is_gated = None if gated is None else bool(gated[j])
            if is_gated:
                mask = np.zeros(grey.shape, dtype=bool)
            else:
                mask = resize_probabilities(mask_probs[j, 0], *grey.shape) > cut
            records.append({"index": start + j,
                            **class_fields(classes, None if probs is None else probs[j], is_gated),
                            **uncertainty_fields(*spread_of(j, uncertainty, disagreement)),
                            **lesion_fields(mask), "mask": mask})
    return records


def _job(function: Callable[..., dict[str, Any] | Skipped],
         *args: Any) -> Callable[[], dict[str, Any] | Skipped]:
    return lambda: function(*args)


def _writable_units(prediction: _FolderPrediction, units: list[Unit]) -> list[Unit]:
    """``units`` less those whose output file name the file system of OUT cannot hold (each one skipped,
    named): one bad name costs that image only."""
    if prediction.mode == CLASSIFY_MODE:
        return units
    limit = name_limit(prediction.out)
    kept = []
    for unit in units:
        problem = output_name_problem(prediction.out, unit.stem, limit)
        if problem is None:
            kept.append(unit)
        else:
            prediction.fail(unit, f"{prediction.folder / unit.file}: {problem}")
    return kept


def _pending(prediction: _FolderPrediction, units: Sequence[Unit]) -> list[Unit]:
    """The units not done yet: no record, a record of another source file, or outputs gone."""
    assert prediction.progress is not None
    pending = []
    sources: dict[PurePosixPath, dict[str, Any] | None] = {}
    for unit in units:
        if unit.file not in sources:
            try:
                sources[unit.file] = source_identity(prediction.folder / unit.file)
            except OSError:
                sources[unit.file] = None  # gone or unreadable now: reading it will say why
        source = sources[unit.file]
        if source is None or not prediction.progress.is_done(unit.key, prediction.out, source=source,
                                                             stem=prediction.stem(unit),
                                                             overlays=prediction.settings.overlays):
            pending.append(unit)
    return pending


ProgressCallback = Callable[[int, int, int], None]
"""Called as images finish: (images done in this run, images skipped so far, images to do in this run)."""


def _plain_progress(log: Callable[[str], None]) -> ProgressCallback:
    """A line every ``PROGRESS_EVERY`` images: what a log file or a pipe gets."""
    state = {"next": PROGRESS_EVERY}

    def report(done: int, failed: int, total: int) -> None:
        if done + failed >= state["next"]:
            state["next"] = (done + failed) // PROGRESS_EVERY * PROGRESS_EVERY + PROGRESS_EVERY
            skipped = f", {failed} skipped" if failed else ""
            log(f"{done + failed} of {total} images done{skipped}")

    return report


def _read_ahead(reader: ThreadPoolExecutor, folder: Path, units: Sequence[Unit], size: int | None,
                window: int) -> Iterator[Loaded]:
    """Each unit read on the reader pool, in order, with at most ``window`` reads in flight."""
    queue: deque[Future[Loaded]] = deque()
    position = 0
    while queue or position < len(units):
        while position < len(units) and len(queue) < window:
            queue.append(reader.submit(_load, folder, units[position], size))
            position += 1
        yield queue.popleft().result()


def predict_folder(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    predictor: Predictor,
    settings: PredictSettings | None = None,
    *,
    log: Callable[[str], None] = print,
    progress: ProgressCallback | None = None,
) -> PredictSummary:
    """Predict every image under ``folder`` into ``out``; see :mod:`dlmi.inference.outputs` for the layout.

    ``progress`` is called as images finish (default: a line through ``log`` every 100 images)."""
    settings = settings or PredictSettings()
    folder, out = Path(folder), Path(out)
    _check(settings, folder, out)
    mode = choose_mode(predictor, settings)
    check_dicom_options(settings.dicom_seg, settings.dicom_sr, mode,
                        predictor.info.classes if mode in (AIDED_MODE, CLASSIFY_MODE) else [])
    listing = scan_images(folder, exclude=out, patterns=settings.exclude)
    for earlier in listing.output_folders:
        log(f"left out {folder / earlier}: it holds an earlier dlmi predict output")
    files = listing.files
    if not files and not listing.broken_links and listing.excluded:
        patterns = " ".join(f"--exclude {p!r}" for p in settings.exclude)
        raise DlmiError(f"{folder}: no images left: {patterns} left out all {listing.excluded} images")
    if not files and not listing.broken_links:
        raise DlmiError(f"{folder}: no images (png, jpg, jpeg, bmp, tif, dcm) under this folder")
    prepare_output(out)
    shard = check_shard(settings.num_shards, settings.shard_index)
    # One run at a time writes into OUT, or one run per shard, each with its own lock.
    with OutputLock.acquire(out, log, name=output_names(shard).lock):
        check_other_runs(out, shard, log)
        return _predict_locked(folder, out, predictor, settings, mode, listing, log, progress, shard)


def _predict_locked(folder: Path, out: Path, predictor: Predictor, settings: PredictSettings, mode: str,
                    listing: ImageListing, log: Callable[[str], None], progress: ProgressCallback | None,
                    shard: Shard | None = None) -> PredictSummary:
    """:func:`predict_folder` once OUT is locked; ``shard``: this run's share of the inputs only."""
    names = output_names(shard)
    everything = [*listing.files, *listing.broken_links]
    mine = set(shard_inputs(everything, shard))
    files = [f for f in listing.files if f in mine]
    elsewhere = {str(f) for f in everything if f not in mine}
    owned = None if shard is None else own_temporaries(out, everything, mine, names)
    removed = remove_orphan_temporaries(out, owned)
    if removed:
        log(f"removed {removed} temporary file(s) left in {out} by an interrupted run")
    check_unique_outputs(listing.files, out)
    if shard is not None:
        log(f"shard {shard.index} of {shard.count}: {len(mine)} of {len(everything)} input files")
    prediction = _FolderPrediction(folder, out, predictor, settings, mode, log)
    for link in listing.broken_links:
        if link in mine:
            prediction.fail(link, f"{folder / link}: a symbolic link to a file that does not exist")
    workers = settings.workers()
    units: list[Unit] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dlmi-scan") as scanner:
        for file, found in zip(files, scanner.map(lambda f: _units_of(folder, f), files), strict=True):
            if isinstance(found, str):
                prediction.fail(file, found)
            else:
                units += found
    units = _writable_units(prediction, units)
    prediction.progress = ProgressLog(out, prediction.output_settings(), overwrite=settings.overwrite,
                                      name=names.progress)
    if prediction.progress.changed:
        log(f"{prediction.progress.path}: the earlier predictions in {out} were made with other settings "
            f"(changed: {', '.join(prediction.progress.changed)}); predicting every image again")
    if shard is None:
        joined = join_shard_logs(prediction.progress, out)
        if joined:
            log(f"joined the shards {', '.join(joined)} in {out}: their images count as done (same models "
                "and settings, same files) and their shard files are now in progress.jsonl")
    prediction.removed += prediction.progress.remove_stale(out, {u.key: prediction.stem(u) for u in units},
                                                          elsewhere=elsewhere)
    pending = _pending(prediction, units)
    dicom = DicomOutputs(folder, out, predictor, seg=settings.dicom_seg, sr=settings.dicom_sr, log=log)
    dicom.forget(pending)
    skipped = len(units) - len(pending)
    if skipped:
        log(f"{skipped} of {len(units)} images already done in {out} (use --overwrite to redo them)")
    size = None if (settings.tile or mode == CLASSIFY_MODE) else predictor.info.segmenter_size
    report = progress or _plain_progress(log)
    shard_extra = None if shard is None else {
        "shard": {"index": shard.index, "count": shard.count, "inputs": listing_digest(everything)}}
    failed_before = len(prediction.failed)
    step = settings.batch_size
    predicted = 0
    writes: deque[Future[dict[str, Any] | Skipped]] = deque()

    def drain(keep: int) -> None:
        """Log the finished writes in order until at most ``keep`` are in flight."""
        nonlocal predicted
        done = []
        try:
            while writes and (len(writes) > keep or writes[0].done()):
                result = writes.popleft().result()
                if isinstance(result, Skipped):
                    prediction.fail(result.unit, result.error)
                else:
                    done.append(result)
        finally:  # a write that failed stops the run; the ones before it are logged first
            if done:
                assert prediction.progress is not None
                prediction.progress.append(done)
                predicted += len(done)
                report(predicted, len(prediction.failed) - failed_before, len(pending))

    reader = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dlmi-read")
    writer = ThreadPoolExecutor(max_workers=settings.writers(), thread_name_prefix="dlmi-write")
    try:
        batch: list[Loaded] = []
        loaded_stream = _read_ahead(reader, folder, pending, size, window=2 * step + workers)
        for position, item in enumerate(loaded_stream, start=1):
            if item.error is not None:
                prediction.fail(item.unit, item.error)
                report(predicted, len(prediction.failed) - failed_before, len(pending))
            else:
                if item.note is not None:
                    log(item.note)
                batch.append(item)
            if batch and (len(batch) == step or position == len(pending)):
                writes.extend(writer.submit(job) for job in prediction.infer(batch))
                batch = []
                drain(keep=2 * step)
        drain(keep=0)
        dicom.write_missing(units, prediction.progress.records, prediction.fail)
    except OutputWriteError as exc:
        for future in writes:
            future.cancel()
        done_records = prediction.finished_records(units)
        try:
            prediction.report_removed()
            csv_path, _ = write_ordered_tables(out, done_records, classes=prediction.classes,
                                               settings=prediction.output_settings(),
                                               failed=prediction.failed, names=names, extra=shard_extra,
                                               context=prediction.context())
            saved = f"the {len(done_records)} images done are in {csv_path}"
        except OutputWriteError:
            saved = f"the {len(done_records)} images done are in {prediction.progress.path}"
        raise DlmiError(f"{exc}; stopped: {saved}; fix the cause and re-run to continue") from exc
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)

    prediction.report_removed()
    csv_path, json_path = write_ordered_tables(out, prediction.finished_records(units),
                                               classes=prediction.classes,
                                               settings=prediction.output_settings(),
                                               failed=prediction.failed, names=names, extra=shard_extra,
                                               context=prediction.context())
    return PredictSummary(out=out, total=len(units) + failed_before,
                          predicted=predicted, skipped=skipped, failed=prediction.failed, csv=csv_path,
                          json=json_path, running_on=predictor.running_on, mode=mode)
