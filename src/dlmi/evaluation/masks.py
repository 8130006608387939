"""Scoring a folder of predicted masks against a folder of true masks (any tool's output).

Rules (also in ``docs/metrics.md``):

* Pairing: every image file under ``truth_dir`` (recursively) is one image; its prediction is the file with
  the same relative path under ``pred_dir``, or — when that is absent — the one file with the same relative
  path and stem and another image suffix (``a/x.png`` for ``a/x.jpg``). Prediction files without a truth are
  ignored and counted.
* A truth file without a prediction is an error naming it; with ``missing_as_empty=True`` it is scored as an
  empty prediction instead (and counted).
* A prediction of another size than its truth is an error naming both sizes; with ``resize=True`` it is
  resized to the truth's size with nearest-neighbour sampling.
* Binarisation (:func:`read_binary_mask`, the rule of ``BINARISE_RULE`` and ``docs/metrics.md``): a pixel is
  lesion where its value is above half the range (127 for 8-bit files); a mask whose values are only 0 and 1
  (a label map) has lesion where it is 1. A colour mask's value is its brightest channel, with transparency
  composited on black. A soft mask whose values all lie below half the range (say 3 and 120) has no lesion.
* A folder whose files look like images rather than masks (many grey levels, mostly mid-grey) is warned
  about, naming it: a BUSI-layout folder keeps each scan beside its ``*_mask.png``.
* Lesion images are those with at least one true lesion pixel. When the truth files sit in sub-folders, the
  first folder name is their class and per-class numbers are reported.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dlmi.datasets.loader import resize_mask
from dlmi.errors import DlmiError
from dlmi.imageio import is_image_file
from dlmi.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, check_resamples
from dlmi.metrics.segmentation import SegmentationScores

BINARISE_RULE = ("lesion where the value is above half the range (127 for 8-bit masks; a colour mask's "
                 "value is its brightest channel, transparency on black); in a mask holding only the "
                 "values 0 and 1 (a label map), where it is 1")
LABEL_MAP_VALUES = (0, 1)
IMAGE_LIKE_LEVELS = 16  # a mask has a few grey levels (JPEG ringing adds some near 0 and 255)
IMAGE_LIKE_MID_FRACTION = 0.25  # ... and few mid-grey pixels; a scan is mostly mid-grey


@dataclass
class MaskFile:
    """One mask file read for scoring, and whether it looks like an image rather than a mask."""

    mask: np.ndarray
    looks_like_image: bool


def _values(image: Image.Image) -> tuple[np.ndarray, float]:
    """The value of each pixel as :data:`BINARISE_RULE` defines it, and half the mode's range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image).astype(np.float64)
        values = values.max(axis=2) if values.ndim == 3 else values
        if image.mode == "F":
            return values, 0.5
        return values, 127.5 if float(values.max(initial=0)) <= 255 else 32767.5
    if image.mode in ("P", "PA", "RGBA", "LA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    values = np.asarray(image)
    return (values.max(axis=2) if values.ndim == 3 else values), 127.5


def binarise_for_scoring(image: Image.Image) -> MaskFile:
    """A mask image as bool (H, W) by :data:`BINARISE_RULE`, with the looks-like-an-image verdict."""
    if image.mode == "1":
        return MaskFile(np.asarray(image, dtype=bool), looks_like_image=False)
    values, half = _values(image)
    levels = np.unique(values)
    label_map = bool(np.isin(levels, LABEL_MAP_VALUES).all())
    mask = values == 1 if label_map else values > half
    mid = float(((values > 0.2 * half) & (values < 1.8 * half)).mean()) if values.size else 0.0
    return MaskFile(mask, looks_like_image=len(levels) > IMAGE_LIKE_LEVELS and mid > IMAGE_LIKE_MID_FRACTION)


def read_mask_file(path: Path) -> MaskFile:
    """Read and binarise one mask file; a one-line :class:`DlmiError` naming it when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return binarise_for_scoring(image)
    except FileNotFoundError:
        raise DlmiError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DlmiError(f"{path}: not a readable mask image ({reason})") from None


def read_binary_mask(path: Path) -> np.ndarray:
    """A mask file of any mode as bool (H, W), by :data:`BINARISE_RULE`."""
    return read_mask_file(path).mask


def _warn_stderr(message: str) -> None:
    print(f"dlmi: warning: {message}", file=sys.stderr)


def image_like_warning(folder: Path, what: str, flagged: list[str], total: int) -> str | None:
    """The warning for a folder of ``what`` masks whose files look like images; ``None`` when none do."""
    if not flagged:
        return None
    beside = sum(1 for key in flagged if (folder / _mask_sibling(key)).is_file())
    hint = (f"; {beside} of them sit beside a *_mask file (BUSI layout): point at a folder of masks only"
            if beside else "; is this a folder of scans?")
    return (f"{folder}: {len(flagged)} of {total} {what} files look like images rather than masks (many "
            f"mid-grey levels), e.g. {flagged[0]}{hint}")


def _mask_sibling(key: str) -> str:
    path = Path(key)
    return str(path.with_name(f"{path.stem}_mask{path.suffix}"))


@dataclass
class MaskPair:
    key: str
    truth: Path
    prediction: Path | None


def pair_masks(pred_dir: Path, truth_dir: Path, *, missing_as_empty: bool) -> tuple[list[MaskPair], int]:
    """Pairs of (truth, prediction) by relative path; also the number of unpaired prediction files."""
    for folder, what in ((pred_dir, "prediction"), (truth_dir, "truth")):
        if not folder.is_dir():
            raise DlmiError(f"{folder}: not a folder ({what} masks expected)")
    truths = sorted(p for p in truth_dir.rglob("*") if p.is_file() and is_image_file(p))
    if not truths:
        raise DlmiError(f"{truth_dir}: no image files (png, jpg, bmp, tif) found, recursively")
    preds = {p.relative_to(pred_dir).as_posix(): p
             for p in pred_dir.rglob("*") if p.is_file() and is_image_file(p)}
    by_stem: dict[str, list[str]] = {}
    for rel in preds:
        by_stem.setdefault(str(Path(rel).with_suffix("")), []).append(rel)
    pairs, used, missing = [], set(), []
    for truth in truths:
        rel = truth.relative_to(truth_dir).as_posix()
        match = rel if rel in preds else None
        if match is None:
            same_stem = by_stem.get(str(Path(rel).with_suffix("")), [])
            if len(same_stem) > 1:
                raise DlmiError(f"{pred_dir}: several predictions for {rel}: {', '.join(sorted(same_stem))}")
            match = same_stem[0] if same_stem else None
        if match is None:
            missing.append(rel)
            if not missing_as_empty:
                continue
        else:
            used.add(match)
        pairs.append(MaskPair(rel, truth, preds[match] if match else None))
    if missing and not missing_as_empty:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DlmiError(f"{pred_dir / missing[0]}: no prediction for truth {truth_dir / missing[0]}{more}; "
                        "pass --missing-as-empty to score missing predictions as empty masks")
    return pairs, len(set(preds) - used)


def evaluate_masks(
    pred_dir: str | Path,
    truth_dir: str | Path,
    *,
    missing_as_empty: bool = False,
    resize: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    log: Callable[[str], None] = _warn_stderr,
) -> dict[str, Any]:
    """Score every predicted mask against its truth with the definitions of ``docs/metrics.md``; warnings
    (a folder that looks like images rather than masks) go to ``log`` and ``context.warnings``."""
    check_resamples(resamples)
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    pairs, unpaired = pair_masks(pred_dir, truth_dir, missing_as_empty=missing_as_empty)
    in_folders = all("/" in p.key for p in pairs)
    classes = sorted({p.key.split("/", 1)[0] for p in pairs}) if in_folders else None
    scores = SegmentationScores(classes)
    sizes: set[tuple[int, int]] = set()
    resized = 0
    image_like: dict[str, list[str]] = {"truth": [], "prediction": []}
    for pair in pairs:
        truth_file = read_mask_file(pair.truth)
        truth = truth_file.mask
        if truth_file.looks_like_image:
            image_like["truth"].append(pair.key)
        if pair.prediction is None:
            pred = np.zeros_like(truth)
        else:
            pred_file = read_mask_file(pair.prediction)
            pred = pred_file.mask
            if pred_file.looks_like_image:
                image_like["prediction"].append(pair.prediction.relative_to(pred_dir).as_posix())
            if pred.shape != truth.shape:
                if not resize:
                    raise DlmiError(
                        f"{pair.prediction}: prediction is {pred.shape[1]}x{pred.shape[0]} but truth "
                        f"{pair.truth} is {truth.shape[1]}x{truth.shape[0]}; pass --resize to resize "
                        "predictions (nearest neighbour)")
                pred = resize_mask(pred, truth.shape)
                resized += 1
        sizes.add((truth.shape[1], truth.shape[0]))
        label = [classes.index(pair.key.split("/", 1)[0])] if classes else None
        scores.update(pred[None], truth[None], label, keys=[pair.key])
    found = [image_like_warning(truth_dir, "truth", image_like["truth"], len(pairs)),
             image_like_warning(pred_dir, "prediction", image_like["prediction"],
                                sum(p.prediction is not None for p in pairs))]
    warnings_found = [w for w in found if w is not None]
    for warning in warnings_found:
        log(warning)
    summary = scores.summary(resamples=resamples, seed=seed)
    size_text = (f"{next(iter(sizes))[0]}x{next(iter(sizes))[1]} px" if len(sizes) == 1
                 else f"native sizes of the truth masks ({len(sizes)} different)")
    return {
        "kind": "dlmi mask evaluation",
        "context": {
            "pred_dir": str(pred_dir), "truth_dir": str(truth_dir), "n_images": len(pairs),
            "image_size": size_text,
            "missing_predictions_scored_empty": sum(p.prediction is None for p in pairs),
            "unpaired_predictions_ignored": unpaired,
            "predictions_resized": resized,
            "binarise_rule": BINARISE_RULE,
            "classes_from_folders": classes,
            "warnings": warnings_found,
        },
        "segmentation": summary,
    }


def markdown_masks_report(result: dict[str, Any]) -> str:
    from dlmi.evaluation.report import intervals_line, segmentation_lines

    ctx = result["context"]
    lines = [f"# Mask evaluation: {ctx['pred_dir']} against {ctx['truth_dir']}", "",
             f"{ctx['n_images']} images at {ctx['image_size']}; missing predictions scored empty: "
             f"{ctx['missing_predictions_scored_empty']}; unpaired predictions ignored: "
             f"{ctx['unpaired_predictions_ignored']}; predictions resized: {ctx['predictions_resized']}.", ""]
    lines += segmentation_lines({"predictions": result["segmentation"]}, "Segmentation")
    lines += [f"Binarisation: {ctx['binarise_rule']}.", "",
              intervals_line(result["segmentation"]["intervals"])]
    return "\n".join(lines).rstrip() + "\n"
