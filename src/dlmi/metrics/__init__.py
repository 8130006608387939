"""Metric definitions: pure functions of predictions and truths, each naming its definition.

* :mod:`dlmi.metrics.segmentation` — per-image IoU and Dice, the seed's mIoU (empty-mask rule), lesion-only
  scores, per class; :class:`SegmentationScores` accumulates them over batches.
* :mod:`dlmi.metrics.classification` — accuracy, detect accuracy, per-class precision and recall,
  confusion matrix.
* :mod:`dlmi.metrics.bootstrap` — 95 % percentile bootstrap intervals over images.

``docs/metrics.md`` states every definition in prose.
"""

from dlmi.metrics.bootstrap import Interval, bootstrap_interval, bootstrap_mean
from dlmi.metrics.classification import ClassificationScores, confusion_matrix
from dlmi.metrics.segmentation import EMPTY_MASK_RULE, SegmentationScores, mask_counts

__all__ = [
    "EMPTY_MASK_RULE",
    "ClassificationScores",
    "Interval",
    "SegmentationScores",
    "bootstrap_interval",
    "bootstrap_mean",
    "confusion_matrix",
    "mask_counts",
]
