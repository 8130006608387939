"""ONNX export of trained models, the one-file two-stage graph, metadata and parity checks.

From a notebook::

    from dlmi.export import export_onnx, quantize_export

    report = export_onnx(classifier="runs/cls", segmenter="runs/seg", out="exported/")
    print(report.summary())
    print(quantize_export("exported/").summary())  # int8 files for CPUs, checked against fp32
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "export_onnx": "dlmi.export.onnx_export",
    "ExportReport": "dlmi.export.onnx_export",
    "quantize_export": "dlmi.export.quantize",
    "read_metadata": "dlmi.export.metadata",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import lazily, so ``import dlmi.export`` does not pull in torch.onnx."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dlmi.export' has no attribute {name!r}")
