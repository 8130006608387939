"""Evaluating trained runs and folders of masks; usable from a notebook.

* :func:`evaluate_run` — every number of ``docs/metrics.md`` for one side of a run's split (plus figures).
* :func:`evaluate_masks` — the same segmentation numbers for any tool's predicted mask PNGs.
* :func:`markdown_report` — the Markdown table of an :func:`evaluate_run` result.

The names are imported on first use, so ``dlmi evaluate masks`` (numpy and Pillow only) never loads torch.
"""

from __future__ import annotations

from dlmi.lazy import lazy_exports

_EXPORTS = {
    "evaluate_masks": "dlmi.evaluation.masks",
    "evaluate_run": "dlmi.evaluation.evaluator",
    "markdown_report": "dlmi.evaluation.report",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
