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
* Binarisation (:func:`read_binary_mask`): a pixel is lesion where its value is above 127; a mask whose values
  are only 0 and 1 (a label map) has lesion where it is 1. Colour images are converted to grey first.
* Lesion images are those with at least one true lesion pixel. When the truth files sit in sub-folders, the
  first folder name is their class and per-class numbers are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlmi.datasets.loader import resize_mask
from dlmi.errors import DlmiError
from dlmi.imageio import is_image_file, read_mask
from dlmi.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from dlmi.metrics.segmentation import SegmentationScores

BINARISE_RULE = ("the loader's rule (dlmi.imageio.binarise_mask): lesion where the brightest channel "
                 "is above half the range; in a mask whose values all lie in the lower half "
                 "(a 0/1 label map), "
                 "every non-zero pixel")


def read_binary_mask(path: Path) -> np.ndarray:
    """A mask file of any mode as bool (H, W), read exactly as training reads masks."""
    return read_mask([path])


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
) -> dict[str, Any]:
    """Score every predicted mask against its truth with the definitions of ``docs/metrics.md``."""
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    pairs, unpaired = pair_masks(pred_dir, truth_dir, missing_as_empty=missing_as_empty)
    in_folders = all("/" in p.key for p in pairs)
    classes = sorted({p.key.split("/", 1)[0] for p in pairs}) if in_folders else None
    scores = SegmentationScores(classes)
    sizes: set[tuple[int, int]] = set()
    resized = 0
    for pair in pairs:
        truth = read_binary_mask(pair.truth)
        if pair.prediction is None:
            pred = np.zeros_like(truth)
        else:
            pred = read_binary_mask(pair.prediction)
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
