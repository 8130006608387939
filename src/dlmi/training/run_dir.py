"""Old name of :mod:`dlmi.training.run_folder`, kept so that code loaded before the rename (a long job's
lazy imports, ``training/folds.py``, ``experiments/best.py``) still imports. New code imports
:mod:`dlmi.training.run_folder`."""

from dlmi.training.run_folder import (
    RunFolder,
    read_metrics_log,
)

__all__ = [
    "read_metrics_log",
    "RunFolder",
]
