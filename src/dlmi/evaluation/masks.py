"""Scoring a folder of predicted masks against a folder of true masks (any tool's output).

Rules (also in ``docs/metrics.md``):

* Pairing: every image file under ``truth_dir`` (recursively) is one image; its prediction is the file with
  the same relative path under ``pred_dir``, or — when that is absent — ``dlmi predict``'s name for it (the
  full file name and ``.png``: ``a/x.png.png`` for ``a/x.png``), or the one file with the same relative path
  and stem and another image suffix (``a/x.png`` for ``a/x.jpg``). Prediction files without a truth are
  ignored and counted.
* A truth file without a prediction is an error naming it; with ``missing_as_empty=True`` it is scored as an
  empty prediction instead (and counted). When no prediction pairs with any truth, nothing is scored: an
  error saying so, with or without ``missing_as_empty``.
* A prediction of another size than its truth is an error naming both sizes; with ``resize=True`` it is
  resized to the truth's size with nearest-neighbour sampling.
* Binarisation (:func:`read_binary_mask`): the one rule of :data:`dlmi.imageio.MASK_RULE` that training's
  reader uses too (``BINARISE_RULE`` and ``docs/metrics.md``): lesion above half the range; in a label map
  (whole values up to 15: 0/1, 0/2, 0/1/2), wherever non-zero; a soft mask below half the range is refused.
* A folder whose files look like images rather than masks (many grey levels, mostly mid-grey) is warned
  about, naming it: a BUSI-layout folder keeps each scan beside its ``*_mask.png``.
* Lesion images are those with at least one true lesion pixel. When the truth files sit in sub-folders, the
  first folder name is their class and per-class numbers are reported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlmi.datasets.loader import resize_mask
from dlmi.errors import DlmiError
from dlmi.imageio import MASK_RULE, binarise_values, is_image_file, read_mask_values
from dlmi.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, check_resamples
from dlmi.metrics.segmentation import SegmentationScores

BINARISE_RULE = MASK_RULE
IMAGE_LIKE_LEVELS = 16  # a mask has a few grey levels (JPEG ringing adds some near 0 and 255)
IMAGE_LIKE_MID_FRACTION = 0.25  # ... and few mid-grey pixels; a scan is mostly mid-grey


@dataclass
class MaskFile:
    """One mask file read for scoring, and whether it looks like an image rather than a mask."""

    mask: np.ndarray
    looks_like_image: bool


def read_mask_file(path: Path) -> MaskFile:
    """Read and binarise one mask file by the one rule of :data:`dlmi.imageio.MASK_RULE` (the reader
    training uses), with the looks-like-an-image verdict; a one-line :class:`DlmiError` naming it."""
    values, half = read_mask_values(path)
    mask = binarise_values(values, half, path)
    levels = np.unique(values)
    mid = float(((values > 0.2 * half) & (values < 1.8 * half)).mean()) if values.size else 0.0
    return MaskFile(mask, looks_like_image=len(levels) > IMAGE_LIKE_LEVELS and mid > IMAGE_LIKE_MID_FRACTION)


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
        if match is None and f"{rel}.png" in preds:  # dlmi predict's masks/<relative path>.png
            match = f"{rel}.png"
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
    if not used:
        raise DlmiError(f"{pred_dir}: 0 of {len(truths)} truth masks in {truth_dir} have a prediction here "
                        "(paired by relative path, e.g. a/x.png with a/x.png, a/x.png.png or a/x.jpg); "
                        "nothing to score")
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
