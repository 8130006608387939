"""The one check that a classifier and a segmenter belong together (same dataset, classes, normal class).

Used wherever two separately trained networks are joined: ``dlmi export onnx --classifier A --segmenter B``,
the torch predictor given two runs, aided training (``--aid``) and evaluation of an aided run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _differences(classifier: Mapping[str, Any], segmenter: Mapping[str, Any]) -> list[str]:
    """What differs between the two ``meta`` dicts; a value one side does not record is not compared."""
    found = []
    dataset_a, dataset_b = classifier.get("dataset") or None, segmenter.get("dataset") or None
    if dataset_a and dataset_b and dataset_a != dataset_b:
        found.append(f"datasets {dataset_a!r} vs {dataset_b!r}")
    classes_a, classes_b = list(classifier.get("classes") or []), list(segmenter.get("classes") or [])
    if classes_a and classes_b:
        if classes_a != classes_b:
            found.append(f"class lists {classes_a} vs {classes_b}")
        normal_a, normal_b = classifier.get("normal_class"), segmenter.get("normal_class")
        if normal_a != normal_b:
            found.append(f"normal class {normal_a!r} vs {normal_b!r}")
    return found


def check_pair(classifier: Mapping[str, Any], segmenter: Mapping[str, Any], *, classifier_name: str,
               segmenter_name: str) -> None:
    """Raise a one-line :class:`DlmiError` when a classifier and a segmenter were trained on different data.

    ``classifier`` and ``segmenter`` are checkpoint ``meta`` dicts (or any mapping with ``dataset``,
    ``classes`` and ``normal_class``: a dataset's, for a segmenter about to be trained); the names say
    where each came from.
    """
    from dlmi.errors import DlmiError

    found = _differences(classifier, segmenter)
    if found:
        raise DlmiError(
            f"classifier {classifier_name} and segmenter {segmenter_name} were trained on different data "
            f"({'; '.join(found)}); use a classifier and a segmenter of the same dataset"
        )
