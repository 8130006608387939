"""Two-stage prediction over folders of images, with onnxruntime or PyTorch behind one interface.

From a notebook::

    from dlmi.inference import open_predictor, predict_folder

    predictor = open_predictor(["exported"], backend="onnx", provider="auto", aided=True)
    summary = predict_folder("scans/", "predictions/", predictor, aided=True)
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "open_predictor": "dlmi.inference.predictor",
    "Predictor": "dlmi.inference.predictor",
    "predict_folder": "dlmi.inference.folder",
    "PredictSettings": "dlmi.inference.folder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import lazily, so ``import dlmi.inference`` does not pull in onnxruntime."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dlmi.inference' has no attribute {name!r}")
