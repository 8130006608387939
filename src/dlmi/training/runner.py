"""Old name of :mod:`dlmi.training.start`, kept so that code loaded before the rename (a long job's
lazy imports, ``training/folds.py``, ``experiments/best.py``) still imports. New code imports
:mod:`dlmi.training.start`."""

from dlmi.training.start import (
    RESUMABLE_OVERRIDES,
    build_trainer,
    check_global_batch,
    check_logged_metric,
    check_same_split,
    resume_training,
    train,
    train_classifier,
    train_joint,
    train_segmenter,
    write_runtime,
)

__all__ = [
    "RESUMABLE_OVERRIDES",
    "train_classifier",
    "train_segmenter",
    "train_joint",
    "train",
    "check_logged_metric",
    "resume_training",
    "check_global_batch",
    "check_same_split",
    "build_trainer",
    "write_runtime",
]
