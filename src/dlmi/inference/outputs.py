"""What ``dlmi predict`` writes: per image a mask and an overlay PNG, a progress log, and the tables.

Layout of OUT::

    masks/<relative path>.png      lesion mask at the image's original size, a 1-bit PNG (0 / 1 = lesion)
    overlays/<relative path>.png   the image in grey with the lesion tinted red and outlined (a palette
                                   PNG; not written with ``overlays=False``)
    progress.jsonl                 the settings, then one line per finished image (appended as it finishes)
    predictions.csv / .json        every image's record, rewritten at the end of each run

``<relative path>`` is the image's path under FOLDER with its full file name (``sub/a.PNG`` →
``masks/sub/a.PNG.png``), so distinct inputs never share an output file; a multi-frame DICOM file has one
output per frame, ``masks/<relative path>/frame-0001.png`` and so on. Classification-only prediction
(a classifier and no segmenter) writes no masks or overlays, only the class and probabilities.

An image counts as done in a re-run only when its record names the same source file (path, size,
modification time) and the outputs are still there; the models and settings are the progress log's first
line, and a change there predicts every image again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from dlmi.atomic import write_atomic, write_json_atomic
from dlmi.errors import DlmiError

MASKS = "masks"
OVERLAYS = "overlays"
PROGRESS = "progress.jsonl"
CSV_NAME = "predictions.csv"
JSON_NAME = "predictions.json"
LESION_RGB = np.array([255, 40, 40], dtype=np.float32)
TINT = 0.45
PNG_LEVEL = 1
GREY_LEVELS = 128  # overlay palette: 128 grey levels, the same 128 tinted, and the outline's red
OUTLINE_INDEX = 2 * GREY_LEVELS - 1
Z_RLE = 3  # zlib's run-length strategy for overlays: ~40 % less CPU than the default one, files ~30 % larger
CLASSIFY_MODE = "classifier"


class OutputWriteError(DlmiError):
    """An output file could not be written (disk full, permissions, a file where a folder should be)."""


def source_identity(path: Path) -> dict[str, Any]:
    """What identifies an input file's content for a re-run: its resolved path, size and mtime (ns)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def output_stems(files: Sequence[PurePosixPath]) -> dict[PurePosixPath, str]:
    """Each input's output path stem (POSIX, relative): its relative path with the full file name, so two
    distinct inputs (``a.png`` and ``a.PNG``, ``b.png`` and ``b_png.png``) never share one."""
    return {f: str(f) for f in files}


def frame_stem(file: PurePosixPath, frame: int | None, frames: int) -> str:
    """The output stem of one frame: the file's own stem, or ``<file>/frame-0007`` in a multi-frame file
    (no input can have that path: ``<file>`` is a file, not a folder)."""
    return str(file) if frame is None or frames <= 1 else f"{file}/frame-{frame:04d}"


def record_key(file: str, frame: int | None) -> str:
    """How a record is found again in a re-run: the file, and the frame of a multi-frame DICOM."""
    return file if frame is None else f"{file}#{frame}"


def _is_case_insensitive(folder: Path) -> bool:
    """Whether the file system under ``folder`` treats ``A`` and ``a`` as one name."""
    fd, probe = tempfile.mkstemp(prefix=".dlmi-case-probe-", dir=folder)
    os.close(fd)
    try:
        return os.path.exists(os.path.join(folder, os.path.basename(probe).upper()))
    finally:
        os.unlink(probe)


def check_unique_outputs(files: Sequence[PurePosixPath | str], out: Path) -> None:
    """Refuse a run whose outputs would overwrite each other: inputs that differ only in letter case
    (``a.png``, ``a.PNG``) when OUT lies on a file system that ignores case."""
    groups: dict[str, list[PurePosixPath | str]] = defaultdict(list)
    for f in files:
        groups[str(f).lower()].append(f)
    clashes = [g for g in groups.values() if len(g) > 1]
    if clashes and _is_case_insensitive(out):
        first = clashes[0]
        raise DlmiError(
            f"{out}: this folder ignores letter case, so the outputs of {first[0]} and {first[1]} would "
            f"overwrite each other ({len(clashes)} such pair(s)); choose an --out on another disk or "
            "--exclude one of them"
        )


def mask_path(stem: str) -> str:
    return f"{MASKS}/{stem}.png"


def overlay_path(stem: str) -> str:
    return f"{OVERLAYS}/{stem}.png"


def remove_orphan_temporaries(out: Path) -> int:
    """Delete the temporary files (``.NAME.XXXX.tmp``) a killed run left in OUT; how many there were."""
    removed = 0
    candidates = [p for p in out.glob(".*.tmp")]
    for sub in (MASKS, OVERLAYS):
        if (out / sub).is_dir():
            candidates += [p for p in (out / sub).rglob(".*.tmp")]
    for path in candidates:
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (lesion pixels with a non-lesion 4-neighbour; beyond the image's edge
    counts as the edge pixel itself)."""
    interior = mask.copy()
    interior[1:] &= mask[:-1]
    interior[:-1] &= mask[1:]
    interior[:, 1:] &= mask[:, :-1]
    interior[:, :-1] &= mask[:, 1:]
    return mask & ~interior


def _overlay_palette() -> list[int]:
    levels = np.rint(np.arange(GREY_LEVELS) * (255.0 / (GREY_LEVELS - 1)))
    grey = np.repeat(levels[:, None], 3, axis=1)
    tinted = np.rint(grey * (1 - TINT) + LESION_RGB * TINT)
    palette = np.concatenate([grey, tinted[:-1], LESION_RGB[None]]).clip(0, 255).astype(np.uint8)
    return palette.ravel().tolist()


OVERLAY_PALETTE = _overlay_palette()


def overlay_indices(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The overlay as palette indices (H, W) uint8: the grey level in 128 steps, +128 where the mask is set
    (the tinted copy of that grey), and the outline's red on the lesion's boundary."""
    indices = grey >> 1  # 0..127, the nearest of the palette's grey levels to within one step of 255/127
    if mask.any():
        indices = indices + (mask.astype(np.uint8) << 7)
        indices[outline(mask)] = OUTLINE_INDEX
    return indices


def overlay(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): what the overlay PNG shows (its palette applied)."""
    palette = np.asarray(OVERLAY_PALETTE, dtype=np.uint8).reshape(-1, 3)
    return palette[overlay_indices(grey, mask)]


def _save(image: Image.Image, path: Path, strategy: int = -1) -> Path:
    try:
        return write_atomic(path, lambda handle: image.save(handle, format="PNG", compress_level=PNG_LEVEL,
                                                            compress_type=strategy))
    except OSError as exc:
        raise OutputWriteError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def write_png(array: np.ndarray, path: Path) -> Path:
    """An atomic PNG write at zlib level 1 (about 4× faster than the default level, files ~14 % larger); a
    bool array becomes a 1-bit PNG."""
    return _save(Image.fromarray(array), path)


def write_mask(mask: np.ndarray, path: Path) -> Path:
    """A bool mask as a 1-bit PNG at zlib level 1 (1/8 of the bytes of an 8-bit mask to compress)."""
    return _save(Image.fromarray(np.ascontiguousarray(mask, dtype=bool), mode=None), path)


def write_overlay(grey: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    """The overlay as an 8-bit palette PNG: a third of the bytes of an RGB PNG to build and compress."""
    image = Image.fromarray(overlay_indices(grey, mask), mode=None)
    image.putpalette(OVERLAY_PALETTE)
    return _save(image, path, strategy=Z_RLE)


def write_image_outputs(out: Path, stem: str, grey: np.ndarray, mask: np.ndarray,
                        overlays: bool = True) -> tuple[str, str | None]:
    """Write the mask (and, with ``overlays``, the overlay) atomically; their paths relative to ``out``."""
    masks = mask_path(stem)
    write_mask(mask, out / masks)
    if not overlays:
        return masks, None
    overlay_file = overlay_path(stem)
    write_overlay(grey, mask, out / overlay_file)
    return masks, overlay_file


class ProgressLog:
    """``progress.jsonl``: the run's settings on the first line, then one finished image's record a line.

    A last line cut short by a crash is dropped when the log is opened (that image is predicted again), so
    the next record starts on a line of its own. A log written with other settings (models, threshold,
    mode) is started afresh, and so is every log with ``overwrite``.
    """

    def __init__(self, out: Path, settings: dict[str, Any], *, overwrite: bool) -> None:
        self.path = out / PROGRESS
        self.records: dict[str, dict[str, Any]] = {}
        self.changed: list[str] = []
        if self.path.is_file() and not overwrite:
            self._read(settings)
        else:
            self._start(settings)

    def _start(self, settings: dict[str, Any]) -> None:
        header = (json.dumps({"settings": settings}) + "\n").encode()
        try:
            write_atomic(self.path, lambda f: f.write(header))
        except OSError as exc:
            raise OutputWriteError(f"{self.path}: cannot write ({exc.strerror or exc})") from exc

    def _read(self, settings: dict[str, Any]) -> None:
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        torn = lines.pop()  # "" when the file ends with a newline, else a line cut short
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        previous = header.get("settings") if isinstance(header, dict) else None
        if previous != settings:
            previous = previous if isinstance(previous, dict) else {}
            self.changed = sorted(k for k in set(settings) | set(previous)
                                  if previous.get(k) != settings.get(k))
            self._start(settings)
            return
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("file"), str):
                self.records[record_key(record["file"], record.get("frame"))] = record
        if torn:
            kept = "".join(line + "\n" for line in lines)
            write_atomic(self.path, lambda f: f.write(kept.encode("utf-8")))

    def is_done(self, key: str, out: Path, *, source: dict[str, Any], stem: str | None,
                overlays: bool = True) -> bool:
        """Whether ``key`` (a file, or a file's frame: :func:`record_key`) was predicted from this very source
        file and its outputs are still there (the overlay too, when ``overlays``)."""
        record = self.records.get(key)
        if record is None or record.get("source") != source:
            return False
        if stem is None:  # classification only: no image outputs
            return record.get("mask") is None
        if record.get("mask") != mask_path(stem) or not (out / record["mask"]).is_file():
            return False
        return not overlays or (record.get("overlay") == overlay_path(stem)
                                and (out / record["overlay"]).is_file())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append finished records and flush them to disk."""
        records = list(records)
        if not records:
            return
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise OutputWriteError(f"{self.path}: cannot write ({exc.strerror or exc})") from exc
        for record in records:
            self.records[record_key(record["file"], record.get("frame"))] = record


DICOM_COLUMNS = ("frame", "sop_instance_uid", "series_instance_uid")


def csv_columns(classes: Sequence[str], mode: str = "aided", dicom: bool = False) -> list[str]:
    """The table's columns; ``dicom`` (some input was DICOM) adds the frame number and the UIDs after
    ``file``."""
    head = ["file", *(DICOM_COLUMNS if dicom else ()), "class", *[f"prob_{c}" for c in classes]]
    if mode == CLASSIFY_MODE:
        return head
    return [*head, "gated", "lesion_pixels", "lesion_fraction", "width", "height", "mask", "overlay"]


def _csv_row(record: dict[str, Any], classes: Sequence[str], mode: str, dicom: bool) -> list[Any]:
    probs = record.get("probabilities") or {}
    extra = [record.get(c) if record.get(c) is not None else "" for c in DICOM_COLUMNS] if dicom else []
    row = [record["file"], *extra, record.get("class") or "",
           *[f"{probs[c]:.6f}" if c in probs else "" for c in classes]]
    if mode == CLASSIFY_MODE:
        return row
    gated = record.get("gated")
    return [*row, "" if gated is None else str(bool(gated)).lower(),
            record["lesion_pixels"], f"{record['lesion_fraction']:.6f}",
            record["width"], record["height"], record["mask"], record.get("overlay") or ""]


def write_tables(out: Path, records: Sequence[dict[str, Any]], *, classes: Sequence[str],
                 settings: dict[str, Any], failed: Sequence[dict[str, str]]) -> tuple[Path, Path]:
    """``predictions.csv`` and ``predictions.json`` (records in input order, the failures, the settings)."""
    mode = str(settings.get("mode", "aided"))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    dicom = any(record.get("frame") is not None for record in records)
    writer.writerow(csv_columns(classes, mode, dicom))
    for record in records:
        writer.writerow(_csv_row(record, classes, mode, dicom))
    public = [{k: v for k, v in r.items() if k != "source"} for r in records]
    try:
        csv_path = write_atomic(out / CSV_NAME, lambda f: f.write(text.getvalue().encode("utf-8")))
        json_path = write_json_atomic(out / JSON_NAME, {
            "settings": settings, "classes": list(classes), "predictions": public, "failed": list(failed),
        })
    except OSError as exc:
        raise OutputWriteError(f"{out}: cannot write the prediction tables ({exc.strerror or exc})") from exc
    return csv_path, json_path
