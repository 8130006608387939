"""What ``dlmi predict`` writes: per image a mask and an overlay PNG, a progress log, and the tables.

Layout of OUT::

    masks/<relative path>.png      lesion mask at the image's original size (0 background, 255 lesion)
    overlays/<relative path>.png   the image in grey with the lesion tinted red and outlined
    progress.jsonl                 the settings, then one line per finished image (appended as it finishes)
    predictions.csv / .json        every image's record, rewritten at the end of each run

``<relative path>`` is the image's path under FOLDER without its suffix; two images of one folder with
the same stem (``a.png``, ``a.jpg``) keep their suffixes apart (``a_png``, ``a_jpg``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
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


def output_stems(files: Sequence[PurePosixPath]) -> dict[PurePosixPath, str]:
    """Each input's output path stem (POSIX, relative), unique even where stems clash in one folder."""
    clashes = Counter((f.parent, f.stem.lower()) for f in files)
    stems: dict[PurePosixPath, str] = {}
    for f in files:
        if clashes[(f.parent, f.stem.lower())] > 1:
            stems[f] = str(f.parent / f"{f.stem}_{f.suffix.lstrip('.').lower()}")
        else:
            stems[f] = str(f.parent / f.stem)
    return stems


def mask_path(stem: str) -> str:
    return f"{MASKS}/{stem}.png"


def overlay_path(stem: str) -> str:
    return f"{OVERLAYS}/{stem}.png"


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (lesion pixels with a non-lesion 4-neighbour)."""
    padded = np.pad(mask, 1, mode="edge")
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]) & mask
    return mask & ~interior


def overlay(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): the greyscale image, lesion pixels tinted red, the lesion's outline pure red."""
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if mask.any():
        tinted = rgb[mask].astype(np.float32) * (1 - TINT) + LESION_RGB * TINT
        rgb[mask] = np.clip(np.rint(tinted), 0, 255).astype(np.uint8)
        rgb[outline(mask)] = LESION_RGB.astype(np.uint8)
    return rgb


def write_png(array: np.ndarray, path: Path) -> Path:
    """An atomic PNG write at zlib level 1: about 4× faster than the default level for a ~14% larger file
    (an overlay of a 560×470 BUSI image: 12 ms instead of 52 ms)."""
    image = Image.fromarray(array)
    return write_atomic(path, lambda handle: image.save(handle, format="PNG", compress_level=PNG_LEVEL))


def write_image_outputs(out: Path, stem: str, grey: np.ndarray, mask: np.ndarray) -> tuple[str, str]:
    """Write the mask and the overlay atomically; their paths relative to ``out``."""
    masks, overlays = mask_path(stem), overlay_path(stem)
    write_png(mask.astype(np.uint8) * 255, out / masks)
    write_png(overlay(grey, mask), out / overlays)
    return masks, overlays


class ProgressLog:
    """``progress.jsonl``: the run's settings on the first line, then one finished image's record a line.

    A line cut short by a crash is ignored (that image is predicted again). A log written with other
    settings is an error unless ``overwrite``, which starts a fresh log.
    """

    def __init__(self, out: Path, settings: dict[str, Any], *, overwrite: bool) -> None:
        self.path = out / PROGRESS
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file() and not overwrite:
            self._read(settings)
        else:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, lambda f: f.write((json.dumps({"settings": settings}) + "\n").encode()))

    def _read(self, settings: dict[str, Any]) -> None:
        with self.path.open(encoding="utf-8") as handle:
            lines = iter(handle)
            try:
                header = json.loads(next(lines))
            except (StopIteration, json.JSONDecodeError):
                header = {}
            previous = header.get("settings") if isinstance(header, dict) else None
            if previous != settings:
                changed = sorted(k for k in set(settings) | set(previous or {})
                                 if (previous or {}).get(k) != settings.get(k))
                raise DlmiError(
                    f"{self.path}: these predictions were made with other settings (changed: "
                    f"{', '.join(changed)}); re-run with --overwrite or choose another --out"
                )
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("file"), str):
                    self.records[record["file"]] = record

    def is_done(self, file: str, out: Path) -> bool:
        record = self.records.get(file)
        return record is not None and (out / record["mask"]).is_file() and (out / record["overlay"]).is_file()

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append finished records and flush them to disk."""
        records = list(records)
        if not records:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
                self.records[record["file"]] = record
            handle.flush()
            os.fsync(handle.fileno())


def csv_columns(classes: Sequence[str]) -> list[str]:
    return ["file", "class", *[f"prob_{c}" for c in classes], "gated", "lesion_pixels", "lesion_fraction",
            "width", "height", "mask", "overlay"]


def _csv_row(record: dict[str, Any], classes: Sequence[str]) -> list[Any]:
    probs = record.get("probabilities") or {}
    gated = record.get("gated")
    return [record["file"], record.get("class") or "",
            *[f"{probs[c]:.6f}" if c in probs else "" for c in classes],
            "" if gated is None else str(bool(gated)).lower(),
            record["lesion_pixels"], f"{record['lesion_fraction']:.6f}",
            record["width"], record["height"], record["mask"], record["overlay"]]


def write_tables(out: Path, records: Sequence[dict[str, Any]], *, classes: Sequence[str],
                 settings: dict[str, Any], failed: Sequence[dict[str, str]]) -> tuple[Path, Path]:
    """``predictions.csv`` and ``predictions.json`` (records in input order, the failures, the settings)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(csv_columns(classes))
    for record in records:
        writer.writerow(_csv_row(record, classes))
    csv_path = write_atomic(out / CSV_NAME, lambda f: f.write(text.getvalue().encode("utf-8")))
    json_path = write_json_atomic(out / JSON_NAME, {
        "settings": settings, "classes": list(classes), "predictions": list(records), "failed": list(failed),
    })
    return csv_path, json_path
