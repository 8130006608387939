"""Gathering the review page's rows and provenance from a ``dlmi predict`` output folder.

Rules (also in ``docs/review.md``):

* Rows: one per record of ``predictions.json``; only the fields listed in :func:`page_row` reach the page —
  never a DICOM attribute beyond the frame number (no patient, study or series module attribute, no UID).
* Gate margin (:meth:`dlmi.runtime.gating.Gate.margin`): ``P(normal) − normal_threshold`` or, under the
  arg-max rule, ``P(normal) −`` the largest other class probability; positive = gated.
* Truth (``--truth DIR``): an image ``a/x.png``'s true mask is ``DIR/a/x_mask.png`` OR-merged with
  ``DIR/a/x_mask_1.png`` … (BUSI), or else ``DIR/a/x.png`` itself when that is another file than the input
  image (a folder of masks named as the images). No mask file and a true class that is the normal class:
  an empty truth; no mask file otherwise: no truth (Dice and IoU shown as —). A truth of another size than
  the prediction is resized to it with nearest-neighbour sampling.
* True class: the name of the nearest folder above the image (in the input's relative path) that is one
  of the model's classes (``benign/x.png`` → benign); none such, no true class (and no confusion matrix).
* Dice and IoU: :mod:`dlmi.metrics.segmentation` (``EMPTY_MASK_RULE``: both masks empty scores 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dlmi.errors import DlmiError
from dlmi.imageio import image_stem, is_image_file, read_grey, read_mask
from dlmi.metrics.segmentation import DICE_DEFINITION, EMPTY_MASK_RULE, IOU_DEFINITION, dice, iou
from dlmi.review_page.flags import Flag
from dlmi.runtime.gating import Gate

PAGE_NAME = "review.html"
PREDICTIONS = "predictions.json"
OPTIONAL_COLUMNS = ("uncertainty", "mask_disagreement")  # shown when the records carry them
MARGIN_DEFINITION = ("gate margin = P(normal) − the gate's P(normal) threshold, or under the arg-max rule "
                     "P(normal) − the largest other class probability; positive = gated (mask emptied)")
AREA_DEFINITION = "lesion area = predicted lesion pixels / image pixels"
TRUE_CLASS_RULE = "true class = the nearest folder above the image whose name is one of the model's classes"
_MASK_SUFFIX = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)

Pictures = Callable[[], tuple[np.ndarray, np.ndarray, "np.ndarray | None"]]


@dataclass
class ReviewItem:
    """One image: its row on the page, and how to read (grey, predicted mask, true mask or None)."""

    row: dict[str, Any]
    pictures: Pictures | None


@dataclass
class ReviewData:
    """Everything the page shows: provenance lines, classes, the rows (pictures still to write)."""

    title: str
    provenance: list[tuple[str, str]]
    classes: list[str]
    items: list[ReviewItem]
    definitions: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, path to link, absolute)
    skipped: list[str] = field(default_factory=list)
    normal_class: str | None = None
    page_id: str = ""


def _round(value: Any, places: int = 4) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, places) if np.isfinite(number) else None


def true_class(file: str, classes: Sequence[str]) -> str | None:
    """:data:`TRUE_CLASS_RULE`: the nearest folder above ``file`` named as one of ``classes``."""
    by_name = {c.lower(): c for c in classes}
    for part in reversed(PurePosixPath(file).parts[:-1]):
        if part.lower() in by_name:
            return by_name[part.lower()]
    return None


class TruthFolder:
    """The true masks of a folder, indexed once (see the module's rules)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise DlmiError(f"{folder}: --truth is not a folder of masks")
        self.folder = folder
        self.masks: dict[tuple[str, str], list[tuple[int, Path]]] = {}
        self.files: set[str] = set()
        for path in folder.rglob("*"):
            if not (path.is_file() and is_image_file(path)):
                continue
            relative = path.relative_to(folder)
            self.files.add(relative.as_posix())
            match = _MASK_SUFFIX.match(image_stem(path))
            if match:
                k = int(match["k"]) if match["k"] is not None else -1
                self.masks.setdefault((relative.parent.as_posix(), match["stem"]), []).append((k, path))

    def paths(self, file: str, image: Path | None) -> list[Path]:
        """The mask files of input ``file`` (``image``: the input file itself, never its own truth)."""
        relative = PurePosixPath(file)
        found = self.masks.get((relative.parent.as_posix() or ".", image_stem(Path(relative.name))))
        if found:
            return [path for _, path in sorted(found, key=lambda m: m[0])]
        if file in self.files:
            same = self.folder / file
            if image is None or not image.exists() or not same.samefile(image):
                return [same]
        return []


def _gate(context: dict[str, Any], classes: Sequence[str]) -> Gate | None:
    gate = context.get("gate")
    if not isinstance(gate, dict) or gate.get("normal_class") not in classes:
        return None
    return Gate(classes.index(gate["normal_class"]), _round(gate.get("normal_threshold"), 6),
                int(gate.get("min_lesion_pixels") or 0), float(gate.get("threshold") or 0.5))


def page_row(record: dict[str, Any], classes: Sequence[str], gate: Gate | None) -> dict[str, Any]:
    """The fields of one record the page shows (a whitelist: nothing else of the record reaches the page)."""
    file = str(record.get("file", ""))
    frame, frames = record.get("frame"), record.get("frames") or 1
    key = file if frame is None else f"{file}#{frame}"
    label = file if frame is None or frames <= 1 else f"{file} frame {frame}"
    probs = record.get("probabilities") or {}
    row: dict[str, Any] = {
        "key": key, "file": label, "class": record.get("class"),
        "probs": [_round(probs.get(c)) for c in classes],
        "gated": record.get("gated") if isinstance(record.get("gated"), bool) else None,
        "margin": None, "area": _round(record.get("lesion_fraction"), 6),
        "pixels": record.get("lesion_pixels") if isinstance(record.get("lesion_pixels"), int) else None,
    }
    for name in OPTIONAL_COLUMNS:
        row[name] = _round(record.get(name))
    if gate is not None and probs and all(c in probs for c in classes):
        row["margin"] = _round(gate.margin(np.array([[float(probs[c]) for c in classes]]))[0])
    return row


def _read_table(pred_dir: Path) -> dict[str, Any]:
    path = pred_dir / PREDICTIONS
    if not pred_dir.is_dir():
        raise DlmiError(f"{pred_dir}: no such folder (a dlmi predict output folder expected)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DlmiError(f"{path}: not found; is {pred_dir} a dlmi predict output folder? (a sharded run: "
                        f"`dlmi predict merge {pred_dir}` first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DlmiError(f"{path}: cannot read the predictions table ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("predictions"), list):
        raise DlmiError(f"{path}: not a dlmi predictions table (no 'predictions' list)")
    return data


def _export_info(context: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """The export folder's ``export.json`` (empty when not found) and the folder, from the model files."""
    for model in (context.get("models") or {}).values():
        folder = Path(str(model)).parent
        try:
            manifest = json.loads((folder / "export.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(manifest, dict):
            return manifest, folder
    return {}, None


def _pictures_reader(record: dict[str, Any], pred_dir: Path, input_dir: Path | None,
                     truth: TruthFolder | None, truth_class: str | None,
                     normal_class: str | None) -> Pictures:
    """How to read one record's grey image, predicted mask and true mask."""
    from dlmi.dicom import read_dicom_grey

    file = str(record.get("file", ""))
    image = input_dir / file if input_dir is not None else None
    truth_paths = truth.paths(file, image) if truth is not None else []
    mask_file = record.get("mask")
    overlay_file = record.get("overlay")

    def read() -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        grey = None
        if image is not None and image.is_file():
            frame, frames = record.get("frame"), record.get("frames") or 1
            if frame is not None:
                grey = read_dicom_grey(image, frame=frame if frames > 1 else None)
            else:
                grey = read_grey(image)
        elif isinstance(overlay_file, str) and (pred_dir / overlay_file).is_file():
            grey = read_grey(pred_dir / overlay_file)  # the input is gone: the overlay, in grey
        if isinstance(mask_file, str) and (pred_dir / mask_file).is_file():
            predicted = read_mask([pred_dir / mask_file])
        else:
            predicted = None
        if grey is None:
            if predicted is None:
                raise DlmiError(f"{image or file}: neither the image nor its mask can be read")
            grey = np.zeros(predicted.shape, dtype=np.uint8)
        if predicted is None or predicted.shape != grey.shape:
            predicted = (np.zeros(grey.shape, dtype=bool) if predicted is None
                         else _resized(predicted, grey.shape))
        true = None
        if truth_paths:
            true = _resized(read_mask(truth_paths), grey.shape)
        elif truth is not None and truth_class is not None and truth_class == normal_class:
            true = np.zeros(grey.shape, dtype=bool)
        return grey, predicted, true

    return read


def _resized(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from dlmi.review_page.pictures import resize_mask

    return resize_mask(mask, (int(shape[0]), int(shape[1])))


def score(row: dict[str, Any], predicted: np.ndarray, true: np.ndarray | None) -> None:
    """Set the row's ``dice`` and ``iou`` (None without a truth)."""
    if true is None:
        row["dice"] = row["iou"] = None
        return
    row["dice"] = _round(dice(predicted[None], true[None])[0])
    row["iou"] = _round(iou(predicted[None], true[None])[0])


def from_predictions(pred_dir: str | os.PathLike[str], *, truth_dir: str | os.PathLike[str] | None = None,
                     flags: dict[str, Flag] | None = None) -> ReviewData:
    """The page's data from a ``dlmi predict`` output folder (and a truth folder)."""
    from dlmi import __version__

    pred_dir = Path(pred_dir)
    data = _read_table(pred_dir)
    classes = [str(c) for c in data.get("classes") or []]
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    context = data.get("context") if isinstance(data.get("context"), dict) else {}
    gate = _gate(context, classes)
    input_dir = Path(context["input"]) if isinstance(context.get("input"), str) else None
    truth = TruthFolder(Path(truth_dir)) if truth_dir is not None else None
    manifest, export_dir = _export_info(context)
    normal_class = (context.get("gate") or {}).get("normal_class") or manifest.get("normal_class")
    items = []
    for record in data["predictions"]:
        if not isinstance(record, dict):
            continue
        row = page_row(record, classes, gate)
        row["true_class"] = true_class(row["file"], classes) if truth is not None else None
        reader = _pictures_reader(record, pred_dir, input_dir, truth, row["true_class"], normal_class)
        items.append(ReviewItem(row, reader))
    failed = [f for f in data.get("failed") or [] if isinstance(f, dict)]
    files = settings.get("files") if isinstance(settings.get("files"), dict) else {}
    card = manifest.get("model_card") if isinstance(manifest.get("model_card"), dict) else {}
    gate_info = context.get("gate") if isinstance(context.get("gate"), dict) else None
    if gate_info is not None:
        rule = str(gate_info.get("rule"))
        if gate_info.get("min_lesion_pixels"):
            rule += " (the smallest-lesion part is not in the margin)"
        gate_line = f"{rule}; mask threshold {gate_info.get('threshold')}"
    elif settings.get("mode") == "aided":
        gate_line = "aided, rule not recorded (predictions made before dlmi recorded it)"
    else:
        gate_line = f"no gate ({settings.get('mode', 'mode not recorded')} mode)"
        if settings.get("threshold") is not None:
            gate_line += f"; mask threshold {settings['threshold']}"
    provenance = [
        ("page made by", f"dlmi {__version__}"),
        ("models", "; ".join(f"{name} sha256 {digest}" for name, digest in sorted(files.items())) or "—"),
        ("backend", str(settings.get("backend", "—"))),
        ("export", f"{export_dir} (exported {card.get('created', '—')} with dlmi "
                   f"{manifest.get('dlmi_version', '—')})" if export_dir else "not found (not recorded)"),
        ("classes", ", ".join(classes) or "— (no classifier)"),
        ("gate", gate_line),
        ("input folder", str(input_dir) if input_dir else "not recorded"),
        ("images", f"{len(items)} predicted, {len(failed)} skipped"),
        ("truth", f"{truth_dir}" if truth_dir is not None else "none (pass --truth DIR for Dice, IoU and "
                                                                 "the confusion matrix)"),
    ]
    links = []
    if export_dir is not None and (export_dir / "MODEL_CARD.md").is_file():
        links.append(("model card", str(export_dir / "MODEL_CARD.md")))
    definitions = [MARGIN_DEFINITION, AREA_DEFINITION]
    if truth is not None:
        definitions += [DICE_DEFINITION, IOU_DEFINITION, EMPTY_MASK_RULE, TRUE_CLASS_RULE]
    skipped = [f"{f.get('file')}: {f.get('error')}" for f in failed]
    digest = hashlib.sha256(json.dumps([str(input_dir), settings, [i.row["key"] for i in items]],
                                       sort_keys=True).encode()).hexdigest()[:16]
    review = ReviewData(title=f"dlmi review — {pred_dir.resolve().name}", provenance=provenance,
                        classes=classes, items=items, definitions=definitions, links=links, skipped=skipped,
                        normal_class=normal_class, page_id=digest)
    apply_flags(review, flags)
    return review


def apply_flags(review: ReviewData, flags: dict[str, Flag] | None) -> None:
    """Mark the rows a flags CSV names; a file the page does not hold is an error naming it."""
    for item in review.items:
        item.row.setdefault("flag", False)
        item.row.setdefault("note", "")
    if not flags:
        return
    by_key = {item.row["key"]: item.row for item in review.items}
    unknown = [file for file in flags if file not in by_key]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise DlmiError(f"flags: {unknown[0]}{more} is not an image of this page; were the flags exported "
                        "from another run's page?")
    for file, flag in flags.items():
        by_key[file]["flag"], by_key[file]["note"] = flag.flagged, flag.note
