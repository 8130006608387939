"""Old name of :mod:`dlmi.evaluation.evaluator`, kept so that code loaded before the rename (a long job's
lazy imports, ``training/folds.py``, ``experiments/best.py``) still imports. New code imports
:mod:`dlmi.evaluation.evaluator`."""

from dlmi.evaluation.evaluator import (
    EVAL_SIDES,
    PANEL_SIDES,
    POSTPROCESS_CRITERION,
    SIDES,
    EvaluationInputs,
    Evaluator,
    evaluate_run,
    load_inputs,
    read_run_config,
)

RunEvaluator = Evaluator
RunInputs = EvaluationInputs

__all__ = [
    "SIDES",
    "EVAL_SIDES",
    "PANEL_SIDES",
    "POSTPROCESS_CRITERION",
    "EvaluationInputs",
    "read_run_config",
    "load_inputs",
    "Evaluator",
    "evaluate_run",
    "RunEvaluator",
    "RunInputs",
]
