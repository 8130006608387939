"""Evaluating trained runs and folders of masks; usable from a notebook.

* :func:`evaluate_run` — every number of ``docs/metrics.md`` for one side of a run's split (plus figures).
* :func:`evaluate_masks` — the same segmentation numbers for any tool's predicted mask PNGs.
* :func:`markdown_report` — the Markdown table of an :func:`evaluate_run` result.
"""

from dlmi.evaluation.masks import evaluate_masks
from dlmi.evaluation.report import markdown_report
from dlmi.evaluation.run import evaluate_run

__all__ = ["evaluate_masks", "evaluate_run", "markdown_report"]
