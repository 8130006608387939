"""Two-stage prediction over folders of images, with onnxruntime or PyTorch behind one interface.

From a notebook::

    from dlmi.inference import open_predictor, predict_folder

    predictor = open_predictor(["exported"], backend="onnx", provider="auto", aided=True)
    summary = predict_folder("scans/", "predictions/", predictor, aided=True)
"""

from __future__ import annotations

from dlmi.lazy import lazy_exports

_EXPORTS = {
    "open_predictor": "dlmi.inference.predictor",
    "Predictor": "dlmi.inference.predictor",
    "predict_folder": "dlmi.inference.folder",
    "PredictSettings": "dlmi.inference.folder",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
