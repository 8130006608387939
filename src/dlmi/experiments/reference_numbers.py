"""The reference report's numbers (the report dlmi reproduces, ``../shared/seed/SUMMARY.md``), to print
beside ours.

The reference report's split was random, so near-identical images may sit on both sides (its own remark for
brain MRI); its mIoU counts an empty true mask predicted empty as 1. It reports no intervals and no validation
side.
"""

from __future__ import annotations

REFERENCE_SOURCE = "seed report (../shared/seed/SUMMARY.md), 512² greyscale, random split"

# (dataset, metric) -> {"train": value or None, "test": value or None}
REFERENCE_CLASSIFICATION: dict[tuple[str, str], dict[str, float | None]] = {
    ("brain-mri", "accuracy"): {"train": 1.0, "test": 1.0},
    ("busi", "accuracy"): {"train": 1.0, "test": 0.8526},
    ("busi", "detect_accuracy"): {"train": None, "test": 0.904},
}

# loss -> {"unaided": {"train", "test"}, "aided": {"train", "test"}}; seed mIoU (empty/empty = 1).
REFERENCE_SEGMENTATION: dict[str, dict[str, dict[str, float]]] = {
    "bce": {"unaided": {"train": 0.54753, "test": 0.48947}, "aided": {"train": 0.62097, "test": 0.51996}},
    "mse": {"unaided": {"train": 0.65306, "test": 0.56055}, "aided": {"train": 0.77512, "test": 0.56304}},
    "dice": {"unaided": {"train": 0.71729, "test": 0.54007}, "aided": {"train": 0.7584, "test": 0.57291}},
}
