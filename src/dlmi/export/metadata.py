"""What an exported ONNX file says about itself, in its ``metadata_props`` (string key → string value).

Keys (values are plain strings; lists and dicts are JSON):

- ``kind``: ``classifier``, ``segmenter`` or ``two_stage``; ``precision``: ``fp32`` or ``fp16``
- ``inputs`` / ``outputs``: JSON lists of the graph's input and output names
- ``image_size``: the side S the input is resized to (for ``two_stage``: the segmenter's size)
- ``classifier_image_size``, ``segmenter_image_size`` where the file has that network
- ``classes`` (JSON list), ``normal_class`` (empty string where none) for files with a classifier
- ``threshold``: the mask probability above which a pixel is lesion (files with a segmenter)
- the gate an ensemble's out-of-fold predictions chose (:class:`dlmi.runtime.gating.Gate`), where it has
  one: ``normal_threshold`` (files with a classifier; absent: the arg-max class) and ``min_lesion_pixels``
  (files with a segmenter; absent: 0)
- ``temperature`` (files with a classifier): the class head's temperature ``T``; the graph's class
  probabilities are ``softmax(logits / T)`` (:mod:`dlmi.runtime.calibration`; 1.0: not calibrated)
- ``preprocessing``: JSON, how to turn an image file into the input tensor
- ``dlmi_version``; ``classifier_run`` / ``segmenter_run`` and ``classifier_checkpoint`` /
  ``segmenter_checkpoint``: the training run folder and checkpoint each network came from
- ``classifier_input_normalisation`` / ``segmenter_input_normalisation``: JSON, the normalisation the network
  applies inside the graph after ``preprocessing`` (an ImageNet encoder's mean and std), or a string saying
  there is none; the input stays the ``preprocessing`` one either way
- ``classifier_pretrained_weights`` / ``segmenter_pretrained_weights`` where the network started from
  pretrained weights: JSON ``{"source", "file", "sha256"}`` (:mod:`dlmi.models.pretrained`)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from dlmi.datasets.base import MAX_IMAGE_SIZE
from dlmi.datasets.segment_codes import DEFAULT_SEGMENT_CODES, SegmentCodes, segment_codes_of
from dlmi.digest import file_digest
from dlmi.errors import DlmiError

PREPROCESSING = {
    "colour": "8-bit greyscale (RGB: ITU-R 601 luma, as PIL convert('L'); alpha composited on black; "
              "16-bit and float images min-max scaled to 0-255)",
    "resize": "bilinear to image_size x image_size (PIL Image.resize, BILINEAR)",
    "scale": "float32 = uint8 / 255, in [0, 1]",
    "layout": "N x 1 x H x W (NCHW, one channel)",
}

# A network without its own normalisation takes the 0-1 values of PREPROCESSING as they are.
NO_NORMALISATION = "none: the network takes the [0, 1] grey values as they are"

EXPORT_MANIFEST = "export.json"  # what an export folder holds: sources, versions, parity numbers, sha256

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
        f"{role}_input_normalisation": json.dumps(meta.get("input_normalisation") or NO_NORMALISATION,
                                                  sort_keys=True),
        **({f"{role}_pretrained_weights": json.dumps(meta["pretrained_weights"], sort_keys=True)}
           if meta.get("pretrained_weights") else {}),
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
        if meta.get("normal_threshold") is not None:
            props["normal_threshold"] = repr(float(meta["normal_threshold"]))
        props["temperature"] = repr(float(meta.get("temperature") or 1.0))
        props.update(_source_entries(CLASSIFIER, meta, checkpoint))
    if segmenter is not None:
        meta, checkpoint = segmenter
        props["threshold"] = repr(float(meta.get("threshold", 0.5)))
        if meta.get("min_lesion_pixels"):
            props["min_lesion_pixels"] = str(int(meta["min_lesion_pixels"]))
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


# --- reading an exported file back, checked ----------------------------------------------------------------

EXPECTED_OUTPUTS = {CLASSIFIER: ("logits", "probs"), SEGMENTER: ("logits", "probs"),
                    TWO_STAGE: ("class_probs", "mask_probs", "gated")}
# Outputs added later (per-image uncertainty, dlmi.runtime.uncertainty): read where the file has them; an
# older export lacks them and still works (the records' uncertainty columns are then empty).
OPTIONAL_OUTPUTS = {CLASSIFIER: ("uncertainty",), SEGMENTER: (),
                    TWO_STAGE: ("uncertainty", "mask_disagreement")}


@dataclass
class CheckedMetadata:
    """The values of an exported file's ``metadata_props`` that prediction relies on, validated."""

    kind: str
    classes: list[str] = field(default_factory=list)
    normal_class: str | None = None
    classifier_size: int | None = None
    segmenter_size: int | None = None
    threshold: float | None = None
    normal_threshold: float | None = None
    min_lesion_pixels: int = 0
    temperature: float = 1.0
    optional_outputs: tuple[str, ...] = ()  # those of OPTIONAL_OUTPUTS[kind] the graph has


def _size(props: dict[str, str], key: str, where: str) -> int:
    raw = props.get(key)
    if raw is None:
        raise DlmiError(f"{where}: metadata key {key!r} is missing")
    try:
        value = int(raw)
    except ValueError:
        raise DlmiError(
            f"{where}: metadata key {key!r} must be a whole number of pixels, got {raw!r}"
        ) from None
    if not 1 <= value <= MAX_IMAGE_SIZE:
        raise DlmiError(f"{where}: metadata key {key!r} must be between 1 and {MAX_IMAGE_SIZE} pixels, "
                        f"got {raw[:30]!r}")
    return value


def _threshold(props: dict[str, str], where: str, key: str = "threshold") -> float:
    raw = props.get(key, "0.5")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:  # also refuses nan and inf
        raise DlmiError(f"{where}: metadata key {key!r} must be between 0 and 1 (a probability), "
                        f"got {raw!r}")
    return value


def _classes(props: dict[str, str], where: str) -> tuple[list[str], str | None]:
    raw = props.get("classes")
    if raw is None:
        raise DlmiError(f"{where}: metadata key 'classes' is missing")
    try:
        classes = json.loads(raw)
    except json.JSONDecodeError:
        raise DlmiError(f"{where}: metadata key 'classes' is not valid JSON ({raw[:60]!r})") from None
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
        raise DlmiError(f"{where}: metadata key 'classes' must be a JSON list of distinct class names, "
                        f"got {raw[:60]!r}")
    normal = props.get("normal_class") or None
    if normal is not None and normal not in classes:
        raise DlmiError(
            f"{where}: metadata key 'normal_class' {normal!r} is not one of the classes {classes}"
        )
    return classes, normal


def _temperature(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise DlmiError(f"{where}: metadata key 'temperature' must be a number above 0, got {raw[:30]!r}")
    return value


def check_metadata(props: dict[str, str], kind: str, where: str | os.PathLike[str]) -> CheckedMetadata:
    """Validate the ``metadata_props`` of a file that should hold a ``kind`` graph; one line naming the file
    and the key on the first problem."""
    where = str(where)
    found = props.get("kind")
    if found is None:
        raise DlmiError(f"{where}: no 'kind' in its metadata; not a file written by `dlmi export onnx`")
    if found != kind:
        raise DlmiError(f"{where}: holds a {found} graph (metadata 'kind'), but this file name is for the "
                        f"{kind} graph; re-export, or put the file under its own name")
    checked = CheckedMetadata(kind=kind)
    if kind in (CLASSIFIER, TWO_STAGE):
        checked.classes, checked.normal_class = _classes(props, where)
        checked.classifier_size = _size(props, "classifier_image_size", where)
        if "normal_threshold" in props:
            checked.normal_threshold = _threshold(props, where, "normal_threshold")
        if "temperature" in props:
            checked.temperature = _temperature(props["temperature"], where)
    if kind in (SEGMENTER, TWO_STAGE):
        checked.segmenter_size = _size(props, "segmenter_image_size", where)
        checked.threshold = _threshold(props, where)
        if "min_lesion_pixels" in props:
            checked.min_lesion_pixels = _size(props, "min_lesion_pixels", where)
    return checked


def read_checked_metadata(path: str | os.PathLike[str], kind: str) -> CheckedMetadata:
    """Read and validate an exported file's metadata, and check its bytes against the sha256 its folder's
    ``export.json`` records; a file onnx cannot parse is one line too."""
    path = Path(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # truncated or not ONNX at all: protobuf's DecodeError, and others
        verify_file(path)  # a file cut short since the export is said as such
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise DlmiError(f"{path}: not a readable ONNX model ({reason})") from None
    checked = check_metadata({p.key: p.value for p in model.metadata_props}, kind, path)
    outputs = {o.name: o for o in model.graph.output}
    missing = [name for name in EXPECTED_OUTPUTS[kind] if name not in outputs]
    if missing or [i.name for i in model.graph.input] != ["image"]:
        raise DlmiError(f"{path}: the graph's inputs/outputs are not those of a dlmi {kind} graph "
                        f"(needs input 'image' and outputs {', '.join(EXPECTED_OUTPUTS[kind])})")
    probs = outputs.get("class_probs" if kind == TWO_STAGE else "probs")
    if kind in (CLASSIFIER, TWO_STAGE) and probs is not None:
        dims = probs.type.tensor_type.shape.dim
        width = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
        if width is not None and width != len(checked.classes):
            raise DlmiError(f"{path}: metadata key 'classes' lists {len(checked.classes)} classes but the "
                            f"classifier outputs {width}")
    checked.optional_outputs = tuple(name for name in OPTIONAL_OUTPUTS[kind] if name in outputs)
    verify_file(path)  # last: a file whose metadata is wrong is named for that first
    return checked


# --- export.json: reading it back, checked, and the sha256 of the files it names ----------------------------

SHA256_LENGTH = 64


def _is_sha256(value: object) -> bool:
    return (isinstance(value, str) and len(value) == SHA256_LENGTH
            and all(c in "0123456789abcdef" for c in value))


def _check_source(entry: object, role: str, where: Path) -> None:
    if entry is None:
        return
    checkpoint = entry.get("checkpoint") if isinstance(entry, dict) else None
    if not isinstance(checkpoint, str) or not checkpoint:
        raise DlmiError(f"{where}: {role!r} must be null or an object whose 'checkpoint' is a file path")
    if "sha256" in entry and not _is_sha256(entry["sha256"]):
        raise DlmiError(f"{where}: {role}.sha256 must be 64 lowercase hex digits, "
                        f"got {entry['sha256']!r:.80}")
    members = entry.get("members", [])
    if not isinstance(members, list) or not all(
            isinstance(m, dict) and isinstance(m.get("checkpoint"), str) and _is_sha256(m.get("sha256"))
            for m in members):
        raise DlmiError(f"{where}: {role}.members must be a list of {{checkpoint, sha256}} objects")
    meta = entry.get("meta", {})
    if not isinstance(meta, dict):
        raise DlmiError(f"{where}: {role}.meta must be an object, got {type(meta).__name__}")
    size = meta.get("image_size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise DlmiError(f"{where}: {role}.meta.image_size must be a whole number of pixels between 1 and "
                        f"{MAX_IMAGE_SIZE}, got {size!r:.40}")


def check_manifest(manifest: object, where: Path) -> dict[str, Any]:
    """The values of an ``export.json`` that dlmi reads, checked: one line naming the file and the key."""
    if not isinstance(manifest, dict):
        raise DlmiError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    for role in (CLASSIFIER, SEGMENTER):
        _check_source(manifest.get(role), role, where)
    classes = manifest.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise DlmiError(f"{where}: 'classes' must be a list of class names, got {classes!r:.80}")
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
        raise DlmiError(f"{where}: 'files' must be an object of file name → {{kind, precision, sha256, …}}")
    for name, entry in files.items():
        if "sha256" in entry and not _is_sha256(entry["sha256"]):
            raise DlmiError(f"{where}: files.{name}.sha256 must be 64 lowercase hex digits, "
                            f"got {entry['sha256']!r:.80}")
    return manifest


def _load_manifest(folder: Path) -> dict[str, Any]:
    path = folder / EXPORT_MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DlmiError(f"{path}: not found; is {folder} a folder written by `dlmi export onnx`?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DlmiError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        return check_manifest(json.loads(text), path)
    except json.JSONDecodeError as exc:
        raise DlmiError(f"{path}: not valid JSON ({exc})") from None


def _warn(message: str) -> None:
    import sys

    print(f"dlmi: warning: {message}", file=sys.stderr)


def _verify(path: Path, expected: str | None, manifest_path: Path) -> None:
    """``path``'s sha256 against the one ``manifest_path`` recorded; none recorded: a warning."""
    if expected is None:
        _warn(f"{manifest_path} records no sha256 for {path} (an export by an older dlmi), so it is not "
              "checked; export again to have it checked")
        return
    actual = file_digest(path)
    if actual != expected:
        raise DlmiError(f"{path}: its sha256 ({actual[:12]}…) is not the one {manifest_path} recorded "
                        f"({expected[:12]}…): the file was changed, swapped or cut short since the export; "
                        "export again")


def verify_file(path: str | os.PathLike[str]) -> None:
    """Check an exported file against the sha256 its folder's ``export.json`` records (no ``export.json``
    beside it: nothing to check against, nothing said)."""
    path = Path(path)
    if not (path.parent / EXPORT_MANIFEST).is_file():
        return
    manifest = _load_manifest(path.parent)
    entry = manifest.get("files", {}).get(path.name, {})
    _verify(path, entry.get("sha256"), path.parent / EXPORT_MANIFEST)


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``export.json`` of an export folder, checked; the checkpoints it names (where they still exist)
    are checked against their recorded sha256."""
    folder = Path(folder)
    manifest = _load_manifest(folder)
    for role in (CLASSIFIER, SEGMENTER):
        entry = manifest.get(role)
        if entry is None:
            continue
        for checked in [entry, *(entry.get("members") or [])]:  # an ensemble's members too
            if isinstance(checked, dict) and Path(str(checked.get("checkpoint"))).is_file():
                _verify(Path(checked["checkpoint"]), checked.get("sha256"), folder / EXPORT_MANIFEST)
    return manifest


# --- the segment a DICOM Segmentation of these models' masks shows ------------------------------------------


def dataset_segment_codes(dataset: str | None) -> SegmentCodes:
    """The coded concepts of ``dataset``'s lesion segment (its plugin's ``segment``), or the generic default
    when it declares none or is not installed here."""
    from dlmi.plugins import get_dataset

    if not dataset:
        return DEFAULT_SEGMENT_CODES
    try:
        source = get_dataset(dataset)
    except DlmiError:
        return DEFAULT_SEGMENT_CODES
    return segment_codes_of(source, f"dataset {dataset!r}")


def manifest_segment_codes(folder: str | os.PathLike[str]) -> SegmentCodes | None:
    """The ``segment`` an export folder's ``export.json`` records (``None``: no such file or key, as in an
    export by an older dlmi)."""
    folder = Path(folder)
    if not (folder / EXPORT_MANIFEST).is_file():
        return None
    manifest = _load_manifest(folder)
    if manifest.get("segment") is not None:
        return SegmentCodes.from_json(manifest["segment"], str(folder / EXPORT_MANIFEST))
    for role in (SEGMENTER, CLASSIFIER):
        entry = manifest.get(role)
        if isinstance(entry, dict) and isinstance(entry.get("meta"), dict) and entry["meta"].get("dataset"):
            return dataset_segment_codes(str(entry["meta"]["dataset"]))
    return None
