"""What an exported ONNX file says about itself, in its ``metadata_props`` (string key → string value).

Keys (values are plain strings; lists and dicts are JSON):

- ``kind``: ``classifier``, ``segmenter`` or ``two_stage``; ``precision``: ``fp32`` or ``fp16``
- ``inputs`` / ``outputs``: JSON lists of the graph's input and output names
- ``image_size``: the side S the input is resized to (for ``two_stage``: the segmenter's size)
- ``classifier_image_size``, ``segmenter_image_size`` where the file has that network
- ``classes`` (JSON list), ``normal_class`` (empty string where none) for files with a classifier
- ``threshold``: the mask probability above which a pixel is lesion (files with a segmenter)
- ``preprocessing``: JSON, how to turn an image file into the input tensor
- ``dlmi_version``; ``classifier_run`` / ``segmenter_run`` and ``classifier_checkpoint`` /
  ``segmenter_checkpoint``: the training run folder and checkpoint each network came from
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx

PREPROCESSING = {
    "colour": "8-bit greyscale (RGB: ITU-R 601 luma, as PIL convert('L'); alpha composited on black; "
              "16-bit and float images min-max scaled to 0-255)",
    "resize": "bilinear to image_size x image_size (PIL Image.resize, BILINEAR)",
    "scale": "float32 = uint8 / 255, in [0, 1]",
    "layout": "N x 1 x H x W (NCHW, one channel)",
}

CLASSIFIER = "classifier"
SEGMENTER = "segmenter"
TWO_STAGE = "two_stage"


def _source_entries(role: str, meta: dict[str, Any], checkpoint: str | os.PathLike[str]) -> dict[str, str]:
    return {
        f"{role}_image_size": str(int(meta["image_size"])),
        f"{role}_model": str(meta.get("model", "")),
        f"{role}_model_options": json.dumps(meta.get("model_options") or {}, sort_keys=True),
        f"{role}_dataset": str(meta.get("dataset") or ""),
        f"{role}_run": str(meta.get("run_dir") or ""),
        f"{role}_checkpoint": str(checkpoint),
    }


def build_metadata(
    kind: str,
    *,
    inputs: list[str],
    outputs: list[str],
    precision: str = "fp32",
    classifier: tuple[dict[str, Any], str | os.PathLike[str]] | None = None,
    segmenter: tuple[dict[str, Any], str | os.PathLike[str]] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of one exported file; ``classifier`` / ``segmenter`` are (meta, checkpoint)."""
    from dlmi import __version__

    props: dict[str, str] = {
        "kind": kind,
        "precision": precision,
        "inputs": json.dumps(inputs),
        "outputs": json.dumps(outputs),
        "preprocessing": json.dumps(PREPROCESSING),
        "dlmi_version": __version__,
    }
    if classifier is not None:
        meta, checkpoint = classifier
        props["classes"] = json.dumps([str(c) for c in meta.get("classes") or []])
        props["normal_class"] = str(meta.get("normal_class") or "")
        props.update(_source_entries(CLASSIFIER, meta, checkpoint))
    if segmenter is not None:
        meta, checkpoint = segmenter
        props["threshold"] = repr(float(meta.get("threshold", 0.5)))
        props.update(_source_entries(SEGMENTER, meta, checkpoint))
    main = segmenter if segmenter is not None else classifier
    assert main is not None, "a file holds at least one network"
    props["image_size"] = str(int(main[0]["image_size"]))
    return props


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` by ``props``."""
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(model: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model or file (the weights are not loaded)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(Path(model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
