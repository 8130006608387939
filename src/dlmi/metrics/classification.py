"""Classification scores from predicted and true class indices.

Definitions:

* ``accuracy`` — the fraction of images whose predicted class (arg-max) is the true class.
* ``detect_accuracy`` — tumour vs normal read from the K-class prediction: an image is correct when the truth
  and the prediction are both the normal class, or both not the normal class (a benign image predicted
  malignant counts as correct). Reported when the dataset has a normal class and at least 3 classes (with 2
  classes it equals the accuracy).
* ``precision`` of class c — images predicted c that truly are c, over images predicted c (undefined,
  ``None``, when nothing is predicted c); ``recall`` of class c — images of class c predicted c, over
  images of class c.
* confusion matrix — ``matrix[t][p]`` counts images of true class t predicted as class p (rows: truth).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlmi.metrics.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    bootstrap_ratio,
    interval_settings,
    scored_mean,
)

ACCURACY_DEFINITION = "fraction of images whose arg-max predicted class is the true class"
DETECT_DEFINITION = (
    "detect accuracy (tumour vs normal, from the K-class prediction): correct when truth and prediction are "
    "both the normal class or both not the normal class"
)
PRECISION_DEFINITION = "images predicted as the class that are of the class / images predicted as the class"
RECALL_DEFINITION = "images of the class predicted as the class / images of the class"
CONFUSION_DEFINITION = "matrix[true][predicted]: number of images of the true class predicted as that class"


def _as_int_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64).reshape(-1)


def accuracy(true: Any, pred: Any) -> float:
    """Fraction of images whose predicted class is the true class (``nan`` over zero images)."""
    true, pred = _as_int_array(true), _as_int_array(pred)
    return float((true == pred).mean()) if true.size else float("nan")


def detect_correct(true: Any, pred: Any, normal_index: int) -> np.ndarray:
    """Per image: both normal or both not normal (the seed's detect accuracy before averaging)."""
    true, pred = _as_int_array(true), _as_int_array(pred)
    return (true == normal_index) == (pred == normal_index)


def detect_accuracy(true: Any, pred: Any, normal_index: int) -> float:
    """Tumour-vs-normal accuracy read from a K-class prediction (see module docstring)."""
    correct = detect_correct(true, pred, normal_index)
    return float(correct.mean()) if correct.size else float("nan")


def confusion_matrix(true: Any, pred: Any, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class."""
    true, pred = _as_int_array(true), _as_int_array(pred)
    if true.shape != pred.shape:
        raise ValueError(f"{true.size} true labels but {pred.size} predictions")
    for name, values in (("true", true), ("predicted", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} labels outside 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def precision_recall(matrix: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per-class precision and recall from a confusion matrix; ``None`` where the denominator is 0."""
    matrix = np.asarray(matrix)
    hits = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = [float(h / p) if p else None for h, p in zip(hits, predicted, strict=True)]
    recall = [float(h / a) if a else None for h, a in zip(hits, actual, strict=True)]
    return precision, recall


class ClassificationScores:
    """Accumulates true and predicted classes over batches; :meth:`summary` reports every number."""

    def __init__(self, class_names: tuple[str, ...] | list[str], normal_index: int | None = None) -> None:
        self.class_names = tuple(class_names)
        self.normal_index = normal_index
        self._true: list[np.ndarray] = []
        self._pred: list[np.ndarray] = []

    def update(self, logits_or_pred: Any, true: Any) -> None:
        """Add a batch: (N, K) logits / probabilities (arg-max is taken) or (N,) predicted class indices."""
        if hasattr(logits_or_pred, "detach"):
            logits_or_pred = logits_or_pred.detach().cpu().numpy()
        values = np.asarray(logits_or_pred)
        pred = values.argmax(axis=1) if values.ndim == 2 else values
        pred, true = _as_int_array(pred), _as_int_array(true)
        if pred.size != true.size:
            raise ValueError(f"{pred.size} predictions for {true.size} labels")
        self._true.append(true)
        self._pred.append(pred)

    @property
    def true(self) -> np.ndarray:
        return np.concatenate(self._true) if self._true else np.zeros(0, dtype=np.int64)

    @property
    def pred(self) -> np.ndarray:
        return np.concatenate(self._pred) if self._pred else np.zeros(0, dtype=np.int64)

    @property
    def reports_detect(self) -> bool:
        """Detect accuracy is reported when there is a normal class and at least 3 classes."""
        return self.normal_index is not None and len(self.class_names) >= 3

    def matrix(self) -> np.ndarray:
        return confusion_matrix(self.true, self.pred, len(self.class_names))

    def summary(self, *, resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                seed: int = DEFAULT_SEED) -> dict[str, Any]:
        """Every number with its 95 % interval, image count and definition (JSON-able)."""
        opts = {"resamples": resamples, "confidence": confidence, "seed": seed}
        true, pred = self.true, self.pred
        matrix = self.matrix()
        out: dict[str, Any] = {
            "n_images": int(true.size),
            "classes": list(self.class_names),
            "normal_class": self.class_names[self.normal_index] if self.normal_index is not None else None,
            "intervals": interval_settings(resamples, confidence, seed),
            "accuracy": scored_mean((true == pred).astype(np.float64), ACCURACY_DEFINITION, **opts),
        }
        if self.reports_detect:
            out["detect_accuracy"] = scored_mean(
                detect_correct(true, pred, self.normal_index).astype(np.float64), DETECT_DEFINITION, **opts)
        precision, recall = precision_recall(matrix)
        per_class: dict[str, Any] = {}
        for index, name in enumerate(self.class_names):
            predicted_as = pred == index
            of_class = true == index
            p_interval = bootstrap_ratio((predicted_as & of_class).astype(np.float64),
                                         predicted_as.astype(np.float64), **opts)
            per_class[name] = {
                "n": int(of_class.sum()),
                "precision": {
                    "value": precision[index],
                    "low": p_interval.low if p_interval and precision[index] is not None else None,
                    "high": p_interval.high if p_interval and precision[index] is not None else None,
                    "n": int(predicted_as.sum()),
                    "definition": PRECISION_DEFINITION,
                },
                "recall": scored_mean((pred[of_class] == index).astype(np.float64), RECALL_DEFINITION,
                                      **opts),
            }
        out["per_class"] = per_class
        out["confusion_matrix"] = {"definition": CONFUSION_DEFINITION, "classes": list(self.class_names),
                                   "matrix": matrix.tolist()}
        return out
