"""ONNX export of trained models, the one-file two-stage graph, metadata and parity checks.

From a notebook::

    from dlmi.export import export_onnx, quantize_export

    report = export_onnx(classifier="runs/cls", segmenter="runs/seg", out="exported/")
    print(report.summary())
    print(quantize_export("exported/").summary())  # int8 files for CPUs, checked against fp32
"""

from __future__ import annotations

from dlmi.lazy import lazy_exports

_EXPORTS = {
    "export_onnx": "dlmi.export.onnx_export",
    "ExportReport": "dlmi.export.onnx_export",
    "quantize_export": "dlmi.export.quantize",
    "read_metadata": "dlmi.export.metadata",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
