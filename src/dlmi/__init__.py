"""dlmi: deep learning in medical imaging — classification, segmentation, classifier-aided segmentation.

The notebook front door (:mod:`dlmi.api`, docs/python.md)::

    import dlmi
    cls = dlmi.train_classifier(dataset="busi", data_dir="data/busi", image_size=128, out="runs/cls")
    seg = dlmi.train_segmenter(dataset="busi", data_dir="data/busi", image_size=128, aid=cls, out="runs/seg")
    report = dlmi.evaluate(seg)
    dlmi.export_onnx(classifier=cls, segmenter=seg, out="exported")
    result = dlmi.load_predictor("exported", aided=True).predict(image)

These names are imported on first use, so ``import dlmi`` loads neither torch nor onnxruntime.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from dlmi.errors import DlmiError as DlmiError
from dlmi.hookspecs import hookimpl as hookimpl

try:
    __version__ = version("dlmi")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

# Public name → the module that defines it (imported lazily by __getattr__).
_LAZY = {
    **{name: "dlmi.api" for name in (
        "train_classifier", "train_segmenter", "train_joint", "evaluate", "export_onnx", "load_predictor",
        "EvaluationReport", "Estimate", "MaskScores", "ImagePredictor", "Prediction", "predict",
        "merge_predictions", "review",
    )},
    "DatasetSource": "dlmi.datasets.base",
    "Sample": "dlmi.datasets.base",
}

__all__ = sorted(["DlmiError", "__version__", "hookimpl", *_LAZY])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dlmi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
