"""The model card of an export folder: ``MODEL_CARD.md`` beside ``export.json``, and its fields in
``export.json`` under ``model_card`` (issue 19, section 4; after Mitchell et al. 2019).

:func:`build_card` gathers the fields as a dict from the export's manifest and the training run folders it
names (their ``split.json``, ``config.json``, ``ensemble.json`` and ``eval-<side>.json``, where present);
:func:`render_card` writes them as Markdown; :func:`write_manifest_and_card` writes ``export.json`` (with
the fields) and then the card, both atomically. The card's own sha256 is not recorded anywhere:
``export.json`` names the card (``model_card.file``), and the card lists the sha256 of the model files.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlmi.atomic import write_json_atomic, write_text_atomic
from dlmi.errors import DlmiError
from dlmi.export.files import file_name
from dlmi.export.metadata import (
    CLASSIFIER,
    EXPORT_MANIFEST,
    NO_NORMALISATION,
    PREPROCESSING,
    SEGMENTER,
    TWO_STAGE,
)

MODEL_CARD = "MODEL_CARD.md"
MODEL_CARD_KEY = "model_card"
NOT_EVALUATED = "not evaluated"
NOT_CALIBRATED = "not calibrated"
EVAL_SIDES = ("test", "val", "train")  # the first that has an eval-<side>.json is reported

INTENDED_USE = (
    "Research only: studying and comparing lesion classification and segmentation methods on the data "
    "described below. Not a medical or diagnostic device; it has not been validated clinically and must not "
    "inform the care of a patient."
)
GROUP_RULE = (
    "Duplicate audit (dlmi data audit): two images are duplicates when their perceptual hashes (pHash + "
    "dHash, 128 bits, over whole frames and cropped probes) differ in at most `threshold` bits; groups are "
    "the connected components of duplicate pairs (see docs/data.md)."
)
SPLIT_RULE = (
    "Duplicate-aware split: each duplicate group (a single image is a group of one) goes whole to one side, "
    "dealt per class largest first so that each side gets about its fraction of every class; groups filed "
    "under more than one class go to train. No group straddles two sides (or a fold's train and val)."
)
LIMITS = (
    "Single-site data: trained and evaluated on one public dataset from one source; performance on other "
    "scanners, sites or populations is unknown.",
    "Trained from scratch (no pretrained weights) on a small dataset.",
)
PRETRAINED_LIMIT = ("Trained on a small dataset from pretrained weights ({sources}), learnt on natural "
                    "photographs (ImageNet for `imagenet`), not on medical images.")
SIZES_LIMIT = ("Images are resized to the sizes seen in training ({sizes}); other fields of view, "
               "resolutions or modalities were not seen.")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DlmiError(f"{path}: cannot be read ({type(exc).__name__})") from None


# --- the data -------------------------------------------------------------------------------------------


def _member_folders(run_dir: Path) -> list[Path] | None:
    """A fold ensemble's member run folders (``ensemble.json``), or ``None`` for a single run."""
    from dlmi.runtime.ensemble import is_ensemble, read_manifest

    if not is_ensemble(run_dir):
        return None
    return [run_dir / str(m) for m in read_manifest(run_dir)["members"]]


def _class_of_keys(config: dict[str, Any], classes: list[str]) -> dict[str, str] | None:
    """Sample key → class name, from the dataset plugin (``None`` when its data folder is not here)."""
    from dlmi.datasets.base import list_samples
    from dlmi.plugins import get_dataset

    source = get_dataset(str(config["dataset"]))
    folder = Path(config["data_dir"]) if config.get("data_dir") else None
    if getattr(source, "needs_data_dir", True) and (folder is None or not folder.is_dir()):
        return None
    names = list(getattr(source, "classes", ()) or classes)
    return {s.key: names[s.label] for s in list_samples(source, folder)}


def _counts(keys: list[str], class_of: dict[str, str] | None) -> dict[str, int]:
    if class_of is None:
        return {"images": len(keys)}
    counts: dict[str, int] = {"images": len(keys)}
    for key in keys:
        name = class_of.get(key, "(not in the dataset here)")
        counts[name] = counts.get(name, 0) + 1
    return counts


def data_fields(run_dir: Path, classes: list[str]) -> dict[str, Any]:
    """The dataset, the counts per side (and class, where the data folder is here), the folds of a fold
    ensemble's members, and the duplicate-group and split rules, from a run folder's records."""
    from dlmi.splits import load_split

    members = _member_folders(run_dir)
    first = members[0] if members else run_dir
    split_path, config_path = first / "split.json", first / "config.json"
    if not split_path.is_file():
        return {"status": "not recorded", "reason": f"{split_path} not found", "run": str(run_dir)}
    split = load_split(split_path)
    config = _read_json(config_path) if config_path.is_file() else {"dataset": split.dataset}
    if not isinstance(config, dict):
        raise DlmiError(f"{config_path}: expected a JSON object")
    config.setdefault("dataset", split.dataset)
    class_of = _class_of_keys(config, classes)
    fold = None if members else config.get("fold")
    sides = {side: split.side(side, fold) for side in ("train", "val", "test")
             if not (side == "val" and split.folds and fold is None)}
    fields: dict[str, Any] = {
        "status": "recorded",
        "run": str(run_dir),
        "dataset": split.dataset,
        "data_dir": str(config.get("data_dir")) if config.get("data_dir") else None,
        "split_file": str(split_path),
        "fold": fold,
        "counts": {side: _counts(keys, class_of) for side, keys in sides.items()},
        "per_class": class_of is not None,
        "duplicate_groups": len(split.groups),
        "images_in_groups": sum(len(g) for g in split.groups),
        "cross_label_groups": len(split.cross_label),
        "threshold": split.threshold,
        "group_rule": GROUP_RULE,
        "split_rule": SPLIT_RULE,
    }
    if members:
        fields["members"] = []
        for member in members:
            member_config = member / "config.json"
            member_fold = _read_json(member_config).get("fold") if member_config.is_file() else None
            entry: dict[str, Any] = {"run": str(member), "fold": member_fold}
            if member_fold is not None and split.folds:
                entry["counts"] = {side: _counts(split.side(side, int(member_fold)), class_of)
                                   for side in ("train", "val")}
            fields["members"].append(entry)
    return fields


# --- the metrics ----------------------------------------------------------------------------------------


def _scored(node: Any, path: str, found: list[dict[str, Any]]) -> None:
    """Every reported number (``{"value", "low", "high", "definition"}``) under ``node``, by its path."""
    if isinstance(node, dict):
        if "value" in node and "definition" in node:
            found.append({"metric": path, "value": node.get("value"), "low": node.get("low"),
                          "high": node.get("high"), "n": node.get("n"), "definition": node["definition"]})
            return
        for key, value in node.items():
            _scored(value, f"{path}.{key}" if path else str(key), found)


def metric_fields(run_dir: Path) -> dict[str, Any]:
    """The numbers of the run's ``eval-<side>.json`` (test first, then val, then train) with their 95 %
    intervals and definitions, or ``{"status": "not evaluated"}``."""
    for side in EVAL_SIDES:
        path = run_dir / f"eval-{side}.json"
        if not path.is_file():
            continue
        result = _read_json(path)
        if not isinstance(result, dict):
            raise DlmiError(f"{path}: expected a JSON object")
        context = result.get("context") or {}
        metrics: list[dict[str, Any]] = []
        intervals = None
        for part in ("classification", "segmentation", "aid_classification"):
            if part in result:
                _scored(result[part], part, metrics)
                intervals = intervals or (result[part].get("intervals") if isinstance(result[part], dict)
                                          else None)
        return {"status": "evaluated", "file": str(path), "side": context.get("side", side),
                "n_images": context.get("n_images"), "created": result.get("created"),
                "intervals": intervals, "metrics": metrics}
    return {"status": NOT_EVALUATED, "run": str(run_dir)}


# --- calibration ----------------------------------------------------------------------------------------


def _eval_calibration(run: Path) -> dict[str, Any] | None:
    """The ECE and Brier before/after temperature scaling of the run's ``eval-<side>.json`` (test first)."""
    for side in EVAL_SIDES:
        path = run / f"eval-{side}.json"
        if not path.is_file():
            continue
        result = _read_json(path)
        calibration = (result.get("calibration") if isinstance(result, dict) else None) or {}
        if not calibration:
            return None
        keep = ("value", "low", "high", "n", "definition")
        return {"file": str(path), "side": (result.get("context") or {}).get("side", side),
                **{when: {metric: {k: calibration[when][metric].get(k) for k in keep}
                          for metric in ("ece", "brier")} for when in ("before", "after")}}
    return None


def calibration_fields(manifest: dict[str, Any], runs: dict[str, Path]) -> dict[str, Any]:
    """The class head's temperature (applied inside the graphs), what it was fitted on, and the ECE and
    Brier score before and after it where ``dlmi evaluate`` measured them (else ``not evaluated``)."""
    temperature = float(manifest.get("temperature") or 1.0)
    fitted_on = manifest.get("calibrated_on")
    if fitted_on is None:
        note = ("no temperature was fitted (T = 1): the probabilities are the networks' softmax outputs; "
                "read them as scores, not as frequencies")
    else:
        note = (f"the class probabilities are softmax(logits / {temperature:.4g}), inside every exported "
                "graph; "
                f"T fitted by minimising the negative log-likelihood on {fitted_on}")
    run = runs.get(CLASSIFIER) or runs.get(SEGMENTER)
    measured = _guarded(_eval_calibration, run) if run is not None and run.is_dir() else None
    return {"status": "calibrated" if fitted_on else NOT_CALIBRATED, "temperature": temperature,
            "calibrated_on": fitted_on, "note": note,
            "evaluation": measured if measured else {"status": NOT_EVALUATED}}


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    lines = [f"{calibration['status']} (temperature {calibration['temperature']:.4g}): "
             f"{calibration['note']}.", ""]
    measured = calibration.get("evaluation") or {}
    if "before" not in measured:
        return [*lines, f"ECE and Brier score: {measured.get('status', NOT_EVALUATED)}."]
    lines += [f"`{measured['file']}`, {measured['side']} side:", "",
              "| metric | before scaling | after scaling | definition |", "|---|---|---|---|"]
    for metric in ("ece", "brier"):
        before, after = measured["before"][metric], measured["after"][metric]
        lines.append(f"| {metric} | {_number(before['value'])} ({_number(before['low'])}–"
                     f"{_number(before['high'])}) | {_number(after['value'])} ({_number(after['low'])}–"
                     f"{_number(after['high'])}) | {before['definition']} |")
    return lines


# --- the gate, the input contract, the files, the code ---------------------------------------------------


def gate_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """The two-stage gate (:class:`dlmi.runtime.gating.Gate`) in words and numbers; ``None`` fields where the
    export has no two-stage graph."""
    from dlmi.runtime.gating import Gate

    cls, seg = manifest.get(CLASSIFIER), manifest.get(SEGMENTER)
    classes, normal = list(manifest.get("classes") or []), manifest.get("normal_class")
    if not (isinstance(cls, dict) and isinstance(seg, dict)) or normal not in classes:
        seg_meta = seg.get("meta", {}) if isinstance(seg, dict) else {}
        return {"rule": None, "note": "no two-stage graph in this export, so no gate",
                "threshold": seg_meta.get("threshold")}
    meta = {"normal_threshold": cls.get("meta", {}).get("normal_threshold"),
            "min_lesion_pixels": seg.get("meta", {}).get("min_lesion_pixels"),
            "threshold": seg.get("meta", {}).get("threshold", 0.5)}
    gate = Gate.from_meta(meta, classes.index(normal))
    return {"rule": f"the mask is emptied (gated) where {gate.describe(str(normal))}",
            "normal_class": normal, "normal_threshold": gate.normal_threshold,
            "min_lesion_pixels": gate.min_lesion_pixels, "threshold": gate.threshold}


def input_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    from dlmi.imageio import IMAGE_SUFFIXES

    sizes = {role: manifest[role]["meta"].get("image_size") for role in (CLASSIFIER, SEGMENTER)
             if isinstance(manifest.get(role), dict)}
    return {"input_name": "image", "dtype": "float32", "channels": 1, "layout": PREPROCESSING["layout"],
            "image_sizes": sizes, "preprocessing": dict(PREPROCESSING),
            "accepted_formats": sorted({s.lstrip(".") for s in IMAGE_SUFFIXES}),
            "dicom": "single- and multi-frame DICOM through dlmi predict (docs/deploy.md#dicom); the snippet "
                     "below reads what Pillow reads"}


def main_file(manifest: dict[str, Any]) -> str:
    """The file the code snippet runs: the two-stage graph where there is one, else the single network's."""
    files = manifest.get("files") or {}
    for kind in (TWO_STAGE, SEGMENTER, CLASSIFIER):
        if file_name(kind) in files:
            return file_name(kind)
    return next(iter(files), file_name(CLASSIFIER))


def usage_code(model_file: str) -> str:
    """About ten lines that run ``model_file`` with onnxruntime, numpy and Pillow only (no dlmi)."""
    return f'''import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("{model_file}", providers=["CPUExecutionProvider"])  # in the export folder
size = int(session.get_modelmeta().custom_metadata_map["image_size"])
image = Image.open(sys.argv[1])  # any image Pillow reads
if image.mode in ("RGBA", "LA", "P"):  # transparency on black, as in training
    image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
grey = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
x = (np.asarray(grey, dtype=np.float32) / 255.0)[None, None]  # N x 1 x S x S in [0, 1]
outputs = session.run(None, {{"image": x}})
for output, value in zip(session.get_outputs(), outputs):
    print(output.name, value.shape, value.dtype)
'''


# --- the card -------------------------------------------------------------------------------------------


def _runs(manifest: dict[str, Any]) -> dict[str, Path]:
    """Role → run folder of each exported network (a joint model once), where its folder is still here."""
    runs: dict[str, Path] = {}
    for role in (CLASSIFIER, SEGMENTER):
        entry = manifest.get(role)
        run = entry.get("run_dir") if isinstance(entry, dict) else None
        if run and Path(run) not in runs.values():
            runs[role] = Path(run)
    return runs


def _guarded(read: Any, *args: Any) -> dict[str, Any]:
    """``read(*args)``, or what could not be read: a card never fails an export that passed its checks."""
    try:
        return read(*args)
    except DlmiError as exc:
        return {"status": "unreadable", "reason": str(exc)}


def _limits(networks: dict[str, dict[str, Any]]) -> list[str]:
    """The general limits; the from-scratch one says where the networks started from pretrained weights."""
    sources = sorted({str(n["pretrained_weights"].get("source")) for n in networks.values()
                      if n.get("pretrained_weights")})
    if not sources:
        return list(LIMITS)
    return [LIMITS[0], PRETRAINED_LIMIT.format(sources=", ".join(f"`{s}`" for s in sources))]


def build_card(manifest: dict[str, Any]) -> dict[str, Any]:
    """The model card's fields (JSON-able), from an export's manifest and the run folders it names."""
    classes = [str(c) for c in manifest.get("classes") or []]
    runs = _runs(manifest)
    networks = {role: {"model": entry["meta"].get("model"), "task": entry["meta"].get("task"),
                       "image_size": entry["meta"].get("image_size"), "checkpoint": entry.get("checkpoint"),
                       "run": entry.get("run_dir"), "members": len(entry.get("members") or []) or None,
                       "pretrained_weights": entry["meta"].get("pretrained_weights"),
                       "input_normalisation": entry["meta"].get("input_normalisation")}
                for role in (CLASSIFIER, SEGMENTER) if isinstance(entry := manifest.get(role), dict)}
    data, metrics = {}, {}
    for role, run in runs.items():
        if not run.is_dir():
            data[role] = {"status": "not recorded", "reason": f"run folder {run} is not here",
                          "run": str(run)}
            metrics[role] = {"status": NOT_EVALUATED, "run": str(run), "reason": "run folder not here"}
            continue
        data[role] = _guarded(data_fields, run, classes)
        metrics[role] = _guarded(metric_fields, run)
    model_file = main_file(manifest)
    return {
        "file": MODEL_CARD,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dlmi_version": manifest.get("dlmi_version"),
        "classes": classes,
        "normal_class": manifest.get("normal_class"),
        "networks": networks,
        "complete": manifest.get("complete"),
        "intended_use": INTENDED_USE,
        "data": data,
        "metrics": metrics,
        "calibration": calibration_fields(manifest, runs),
        "gate": gate_fields(manifest),
        "input": input_fields(manifest),
        "limits": [*_limits(networks), SIZES_LIMIT.format(sizes=", ".join(
            f"{role} {n['image_size']} px" for role, n in networks.items()))],
        "files": {name: {"kind": entry.get("kind"), "precision": entry.get("precision"),
                         "sha256": entry.get("sha256")}
                  for name, entry in (manifest.get("files") or {}).items()},
        "usage": {"file": model_file, "requires": "pip install onnxruntime numpy pillow",
                  "python": usage_code(model_file)},
    }


_COMPLETE = {True: "yes", False: "no (see export.json)", None: "not recorded (a checkpoint without its run)"}


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _data_lines(role: str, data: dict[str, Any]) -> list[str]:
    if data.get("status") != "recorded":
        return [f"- {role}: {data.get('status')} ({data.get('reason')})"]
    lines = [f"- {role}: dataset `{data['dataset']}`, split `{data['split_file']}`"
             + (f", fold {data['fold']}" if data.get("fold") is not None else ""),
             f"  - duplicate groups: {data['duplicate_groups']} ({data['images_in_groups']} images; "
             f"{data['cross_label_groups']} filed under more than one class), threshold {data['threshold']}"]
    for side, counts in data["counts"].items():
        per_class = ", ".join(f"{name} {n}" for name, n in counts.items() if name != "images")
        lines.append(f"  - {side}: {counts['images']} images" + (f" ({per_class})" if per_class else ""))
    if not data["per_class"]:
        lines.append("  - per-class counts: the data folder is not here")
    for member in data.get("members") or []:
        counts = member.get("counts") or {}
        sizes = ", ".join(f"{side} {c['images']}" for side, c in counts.items())
        lines.append(f"  - member `{member['run']}`: fold {member['fold']}"
                     + (f" ({sizes})" if sizes else ""))
    return lines


def _metric_lines(role: str, metrics: dict[str, Any]) -> list[str]:
    if metrics.get("status") != "evaluated":
        reason = f" ({metrics['reason']})" if metrics.get("reason") else ""
        return [f"- {role}: {metrics.get('status')}{reason}"]
    lines = [f"- {role}: `{metrics['file']}` — {metrics['side']} side, {metrics['n_images']} images; "
             "intervals: " + json.dumps(metrics.get("intervals")), "",
             "  | metric | value | 95 % interval | n | definition |", "  |---|---|---|---|---|"]
    for m in metrics["metrics"]:
        lines.append(f"  | {m['metric']} | {_number(m['value'])} | {_number(m['low'])}–{_number(m['high'])} "
                     f"| {_number(m['n'])} | {m['definition']} |")
    return lines + [""]


def _weights(record: dict[str, Any] | None) -> str:
    """Where a network's starting weights came from (its training started from pretrained ones)."""
    if not record:
        return ""
    return f"; started from pretrained weights `{record.get('source')}` (sha256 `{record.get('sha256')}`)"


def _normalisation(found: dict[str, Any] | None) -> str:
    if not found:
        return NO_NORMALISATION
    return (f"{found.get('formula')}, mean {found.get('mean')}, std {found.get('std')} ({found.get('why')}); "
            f"{found.get('applied')}")


def render_card(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: the fields of :func:`build_card` as Markdown."""
    networks = [f"- {role}: `{n['model']}` ({n['task']}), {n['image_size']} px"
                + (f", a fold ensemble of {n['members']}" if n.get("members") else "")
                + f" — `{n['checkpoint']}`" + _weights(n.get("pretrained_weights"))
                for role, n in card["networks"].items()]
    gate = card["gate"]
    inputs = card["input"]
    out = [
        "# Model card", "",
        f"Exported by dlmi {card['dlmi_version']} on {card['created']}. Classes: "
        f"{', '.join(card['classes']) or '–'} (normal: {card['normal_class'] or '–'}). "
        f"Training runs finished: {_COMPLETE[card['complete']]}.", "", *networks, "",
        "## Intended use", "", card["intended_use"], "",
        "## Data", "", *[line for role, d in card["data"].items() for line in _data_lines(role, d)], "",
        "Groups: " + GROUP_RULE, "", "Split: " + SPLIT_RULE, "",
        "## Metrics", "", *[line for role, m in card["metrics"].items() for line in _metric_lines(role, m)],
        "",
        "## Calibration", "", *_calibration_lines(card["calibration"]), "",
        "## Gate", "",
        (gate["rule"] + f"; mask threshold {gate['threshold']:g}." if gate["rule"] else gate["note"] + "."),
        "",
        "## Input", "",
        f"- tensor `{inputs['input_name']}`, {inputs['dtype']}, {inputs['channels']} channel, "
        f"{inputs['layout']}",
        "- sizes: " + ", ".join(f"{role} {size} px" for role, size in inputs["image_sizes"].items()),
        *[f"- {key}: {value}" for key, value in inputs["preprocessing"].items()],
        *[f"- {role} normalisation: {_normalisation(n.get('input_normalisation'))}"
          for role, n in card["networks"].items()],
        "- accepted formats (dlmi predict): " + ", ".join(inputs["accepted_formats"]),
        f"- DICOM: {inputs['dicom']}", "",
        "## Known limits", "", *[f"- {limit}" for limit in card["limits"]], "",
        "## Files", "", "| file | kind | precision | sha256 |", "|---|---|---|---|",
        *[f"| `{name}` | {f['kind']} | {f['precision']} | `{f['sha256']}` |"
          for name, f in card["files"].items()],
        "", f"`{EXPORT_MANIFEST}` records these and more (parity, sources, versions); it names this card "
        f"under `{MODEL_CARD_KEY}` but records no sha256 of it.", "",
        "## Run it with onnxruntime alone", "",
        f"`{card['usage']['requires']}`, then, in the export folder, `python run.py IMAGE`:", "",
        "```python", card["usage"]["python"].rstrip("\n"), "```", "",
    ]
    return "\n".join(out)


def write_manifest_and_card(out: Path, manifest: dict[str, Any]) -> Path:
    """Put the card's fields into ``manifest`` under ``model_card``, write ``out/export.json``, then
    ``out/MODEL_CARD.md`` (both atomically); returns the card's path."""
    card = build_card(manifest)
    manifest[MODEL_CARD_KEY] = card
    write_json_atomic(out / EXPORT_MANIFEST, manifest)
    return write_text_atomic(out / MODEL_CARD, render_card(card))
