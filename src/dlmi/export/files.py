"""The names of the exported files, by kind and precision (no torch: prediction imports this)."""

from __future__ import annotations

from dlmi.export.metadata import CLASSIFIER, SEGMENTER, TWO_STAGE

PRECISIONS = ("fp32", "fp16", "int8")
FILE_NAMES = {CLASSIFIER: "classifier", SEGMENTER: "unet", TWO_STAGE: "two_stage"}


def file_name(kind: str, precision: str = "fp32") -> str:
    """``classifier.onnx``, ``unet.onnx``, ``two_stage.onnx``, and their ``*_fp16`` / ``*_int8`` variants."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return FILE_NAMES[kind] + ("" if precision == "fp32" else f"_{precision}") + ".onnx"


ALL_FILE_NAMES = tuple(file_name(k, p) for k in FILE_NAMES for p in PRECISIONS)
