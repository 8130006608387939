"""Segmentation scores: per-image IoU and Dice, averaged over images.

Definitions (each image scored on its own, then averaged — so no result can depend on the batch size):

* ``IoU = |P ∩ T| / |P ∪ T|`` and ``Dice = 2 |P ∩ T| / (|P| + |T|)`` for a predicted mask ``P`` and a true
  mask ``T`` of one image.
* :data:`EMPTY_MASK_RULE` (the seed's): when both masks are empty the image scores 1 for IoU and Dice; an
  empty truth with any predicted pixel scores 0 (the formulas above already give 0 there).
* ``miou_seed`` — the seed's mIoU: the mean of per-image IoU over **all** images, normal ones included.
* ``lesion_dice`` / ``lesion_iou`` — the literature's numbers: the mean over lesion images only
  (:data:`LESION_RULE_BY_LABEL` or :data:`LESION_RULE_BY_TRUTH`).
* per class — the same means over the images of each class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlmi.metrics.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    interval_settings,
    scored_mean,
)

EMPTY_MASK_RULE = (
    "seed empty-mask rule: an image whose true and predicted masks are both empty scores IoU = Dice = 1; "
    "an empty true mask with any predicted pixel scores 0"
)
LESION_RULE_BY_LABEL = (
    "lesion images = images whose class is not the normal class (e.g. BUSI benign + malignant)"
)
LESION_RULE_BY_TRUTH = "lesion images = images whose true mask has at least one lesion pixel"

IOU_DEFINITION = "per-image IoU = |P∩T| / |P∪T|"
DICE_DEFINITION = "per-image Dice = 2|P∩T| / (|P| + |T|)"


def to_bool_masks(masks: Any) -> np.ndarray:
    """Thresholded masks as a bool (N, H, W) array.

    Accepts a numpy array or torch tensor of shape (H, W), (N, H, W) or (N, 1, H, W); bool values are used
    as they are, numbers are lesion where above 0.5 (so 0/1 floats work; pass probabilities already
    thresholded at the model's threshold).
    """
    if hasattr(masks, "detach"):
        masks = masks.detach().cpu().numpy()
    array = np.asarray(masks)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(f"masks of shape {array.shape}: expected (N, 1, H, W) with one channel")
        array = array[:, 0]
    elif array.ndim != 3:
        raise ValueError(f"masks of shape {array.shape}: expected (H, W), (N, H, W) or (N, 1, H, W)")
    return array if array.dtype == bool else array > 0.5


def mask_counts(pred_masks: Any, true_masks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: ``(|P ∩ T|, |P|, |T|)`` as three int64 (N,) arrays."""
    pred, truth = to_bool_masks(pred_masks), to_bool_masks(true_masks)
    if pred.shape != truth.shape:
        raise ValueError(f"predicted masks {pred.shape} and true masks {truth.shape} differ in shape")
    intersection = np.logical_and(pred, truth).sum(axis=(1, 2), dtype=np.int64)
    return intersection, pred.sum(axis=(1, 2), dtype=np.int64), truth.sum(axis=(1, 2), dtype=np.int64)


def iou_from_counts(intersection: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
    """Per-image IoU under :data:`EMPTY_MASK_RULE` (both empty → 1)."""
    intersection, pred_area, true_area = (np.asarray(a, dtype=np.float64) for a in
                                          (intersection, pred_area, true_area))
    union = pred_area + true_area - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 1.0)


def dice_from_counts(intersection: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
    """Per-image Dice under :data:`EMPTY_MASK_RULE` (both empty → 1)."""
    intersection, pred_area, true_area = (np.asarray(a, dtype=np.float64) for a in
                                          (intersection, pred_area, true_area))
    total = pred_area + true_area
    return np.where(total > 0, 2.0 * intersection / np.where(total > 0, total, 1.0), 1.0)


def iou(pred_masks: Any, true_masks: Any) -> np.ndarray:
    """Per-image IoU (N,) of thresholded masks, under :data:`EMPTY_MASK_RULE`."""
    return iou_from_counts(*mask_counts(pred_masks, true_masks))


def dice(pred_masks: Any, true_masks: Any) -> np.ndarray:
    """Per-image Dice (N,) of thresholded masks, under :data:`EMPTY_MASK_RULE`."""
    return dice_from_counts(*mask_counts(pred_masks, true_masks))


class SegmentationScores:
    """Accumulates per-image counts over batches; :meth:`summary` reports every segmentation number.

    Only per-image counts are kept, so feeding the same images in batches of any size gives identical
    results. ``labels`` (class indices) enable per-class numbers and, with ``normal_index``, the
    label-based lesion subset; pass them on every update or on none.
    """

    def __init__(self, class_names: tuple[str, ...] | list[str] | None = None,
                 normal_index: int | None = None) -> None:
        self.class_names = tuple(class_names) if class_names is not None else None
        self.normal_index = normal_index
        self._intersection: list[np.ndarray] = []
        self._pred_area: list[np.ndarray] = []
        self._true_area: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._keys: list[str] = []
        self._with_labels: bool | None = None

    def update(self, pred_masks: Any, true_masks: Any, labels: Any = None,
               keys: list[str] | None = None) -> None:
        """Add a batch of thresholded predicted and true masks (optionally their class labels and keys)."""
        intersection, pred_area, true_area = mask_counts(pred_masks, true_masks)
        has_labels = labels is not None
        if self._with_labels is not None and has_labels != self._with_labels:
            raise ValueError("pass labels on every update or on none")
        self._with_labels = has_labels
        if has_labels:
            if hasattr(labels, "detach"):
                labels = labels.detach().cpu().numpy()
            label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
            if label_array.size != intersection.size:
                raise ValueError(f"{label_array.size} labels for {intersection.size} masks")
            self._labels.append(label_array)
        if keys is not None:
            if len(keys) != intersection.size:
                raise ValueError(f"{len(keys)} keys for {intersection.size} masks")
            self._keys.extend(keys)
        self._intersection.append(intersection)
        self._pred_area.append(pred_area)
        self._true_area.append(true_area)

    @staticmethod
    def _cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def n_images(self) -> int:
        return int(sum(p.size for p in self._intersection))

    @property
    def labels(self) -> np.ndarray | None:
        return self._cat(self._labels) if self._with_labels else None

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(|P ∩ T|, |P|, |T|)`` of every image so far."""
        return self._cat(self._intersection), self._cat(self._pred_area), self._cat(self._true_area)

    def per_image_iou(self) -> np.ndarray:
        return iou_from_counts(*self.counts())

    def per_image_dice(self) -> np.ndarray:
        return dice_from_counts(*self.counts())

    def lesion_rule(self) -> str:
        return LESION_RULE_BY_LABEL if self._with_labels and self.normal_index is not None \
            else LESION_RULE_BY_TRUTH

    def lesion_images(self) -> np.ndarray:
        """Bool (N,): the images that count for the lesion-only numbers (see :meth:`lesion_rule`)."""
        if self._with_labels and self.normal_index is not None:
            return self.labels != self.normal_index
        return self.counts()[2] > 0

    def class_name(self, label: int) -> str:
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def summary(self, *, resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                seed: int = DEFAULT_SEED) -> dict[str, Any]:
        """Every number with its 95 % interval, image count and definition (JSON-able)."""
        opts = {"resamples": resamples, "confidence": confidence, "seed": seed}
        ious, dices = self.per_image_iou(), self.per_image_dice()
        lesion = self.lesion_images()
        _, pred_area, true_area = self.counts()
        empty_truth = true_area == 0
        out: dict[str, Any] = {
            "n_images": self.n_images,
            "n_lesion_images": int(lesion.sum()),
            "empty_mask_rule": EMPTY_MASK_RULE,
            "lesion_rule": self.lesion_rule(),
            "intervals": interval_settings(resamples, confidence, seed),
            "miou_seed": scored_mean(ious, f"mean over all images of {IOU_DEFINITION}; {EMPTY_MASK_RULE}",
                                     **opts),
            "mdice_seed": scored_mean(dices, f"mean over all images of {DICE_DEFINITION}; {EMPTY_MASK_RULE}",
                                      **opts),
            "lesion_dice": scored_mean(dices[lesion], f"mean over lesion images of {DICE_DEFINITION}",
                                       **opts),
            "lesion_iou": scored_mean(ious[lesion], f"mean over lesion images of {IOU_DEFINITION}", **opts),
            "empty_truth_false_positive_rate": scored_mean(
                (pred_area[empty_truth] > 0).astype(np.float64),
                "fraction of images with an empty true mask where any pixel is predicted", **opts),
        }
        if self._with_labels and self.normal_index is not None and self.class_names is not None:
            out["lesion_classes"] = [n for i, n in enumerate(self.class_names) if i != self.normal_index]
        if self._with_labels:
            labels = self.labels
            per_class: dict[str, Any] = {}
            for label in sorted(set(labels.tolist())):
                chosen = labels == label
                per_class[self.class_name(label)] = {
                    "n": int(chosen.sum()),
                    "iou": scored_mean(ious[chosen], f"mean over this class's images of {IOU_DEFINITION}; "
                                       "empty-mask rule as above", **opts),
                    "dice": scored_mean(dices[chosen], f"mean over this class's images of {DICE_DEFINITION}; "
                                        "empty-mask rule as above", **opts),
                }
            out["per_class"] = per_class
        return out
