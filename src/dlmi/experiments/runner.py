"""Old name of :mod:`dlmi.experiments.reproduction`, kept so that code loaded before the rename (a long job's
lazy imports, ``training/folds.py``, ``experiments/best.py``) still imports. New code imports
:mod:`dlmi.experiments.reproduction`."""

from dlmi.experiments.reproduction import (
    EVAL_SIDES,
    TIMING_FILE,
    Log,
    Reproduction,
    is_complete,
    load_average,
    machine_info,
    reproduce,
    trained_epochs,
)

__all__ = [
    "EVAL_SIDES",
    "TIMING_FILE",
    "Log",
    "load_average",
    "machine_info",
    "trained_epochs",
    "is_complete",
    "Reproduction",
    "reproduce",
]
