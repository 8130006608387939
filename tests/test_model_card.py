"""Every export carries a model card (issue 19, section 4): ``MODEL_CARD.md`` beside ``export.json`` and its
fields in ``export.json`` under ``model_card``. The real exporter on the tiny checkpoints of
``test_export_helpers``; the card's code snippet runs in a fresh process where dlmi and torch cannot be
imported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from busi_folder import write_busi_folder
from PIL import Image
from test_export_helpers import CLASSES, CLASSIFIER_SIZE, SEGMENTER_SIZE, exported_models

from dlmi.digest import file_digest
from dlmi.export.model_card import MODEL_CARD, NOT_CALIBRATED, NOT_EVALUATED
from dlmi.export.onnx_export import export_onnx
from dlmi.runtime.checkpoint import save_checkpoint
from dlmi.splits import save_split
from dlmi.splits.split import Split
from dlmi.training.config import TrainConfig

SECTIONS = ("## Intended use", "## Data", "## Metrics", "## Calibration", "## Gate", "## Input",
            "## Known limits", "## Files", "## Run it with onnxruntime alone")

# Run a script with dlmi and torch made unimportable, as on a machine that has neither.
RUNNER = """import runpy, sys
sys.modules["dlmi"] = None
sys.modules["torch"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


def card_of(folder: Path) -> tuple[str, dict]:
    return (folder / MODEL_CARD).read_text(encoding="utf-8"), json.loads((folder / "export.json").read_text())


def snippet(text: str) -> str:
    match = re.search(r"## Run it with onnxruntime alone.*?```python\n(.*?)```", text, flags=re.DOTALL)
    assert match, "MODEL_CARD.md: no python block under 'Run it with onnxruntime alone'"
    return match.group(1)


def test_the_export_writes_a_card_with_every_section_and_its_fields_in_export_json(exported):
    models, _, _ = exported
    text, manifest = card_of(models)
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    card = manifest["model_card"]
    assert card["file"] == MODEL_CARD and MODEL_CARD not in manifest["files"]
    assert "Not a medical or diagnostic device" in card["intended_use"] and card["intended_use"] in text
    assert card["calibration"]["status"] == NOT_CALIBRATED and NOT_CALIBRATED in text
    assert card["gate"]["rule"] == "the mask is emptied (gated) where the arg-max class is normal"
    assert card["gate"]["rule"] in text
    assert card["input"]["channels"] == 1
    assert card["input"]["image_sizes"] == {"classifier": CLASSIFIER_SIZE, "segmenter": SEGMENTER_SIZE}
    assert {"png", "jpg", "dcm"} <= set(card["input"]["accepted_formats"])
    assert any("Single-site" in limit for limit in card["limits"]) and "Trained from scratch" in text
    assert card["classes"] == list(CLASSES)


def test_the_card_lists_every_file_with_the_sha256_export_json_records(exported):
    models, _, _ = exported
    text, manifest = card_of(models)
    assert set(manifest["model_card"]["files"]) == set(manifest["files"]) == {
        "classifier.onnx", "unet.onnx", "two_stage.onnx"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_digest(models / name)
        assert manifest["model_card"]["files"][name]["sha256"] == entry["sha256"]
        assert f"| `{name}` | {entry['kind']} | fp32 | `{entry['sha256']}` |" in text


def test_without_a_run_folder_the_card_says_not_evaluated(exported):
    models, _, _ = exported
    text, manifest = card_of(models)
    for role in ("classifier", "segmenter"):  # the fixture's checkpoints name run folders that do not exist
        assert manifest["model_card"]["metrics"][role]["status"] == NOT_EVALUATED
        assert manifest["model_card"]["data"][role]["status"] == "not recorded"
    assert f"- classifier: {NOT_EVALUATED}" in text


def test_the_cards_code_runs_with_onnxruntime_alone_and_gives_the_output_shapes(exported, tmp_path):
    models, _, _ = exported
    text, manifest = card_of(models)
    code = snippet(text)
    assert len(code.strip().splitlines()) <= 16 and "dlmi" not in code
    script, image = tmp_path / "run.py", tmp_path / "scan.png"
    script.write_text(code)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)).save(image)
    done = subprocess.run([sys.executable, "-c", RUNNER, str(script), str(image)], cwd=models,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shapes = dict(re.findall(r"^(\w+) (\([\d, ]*\))", done.stdout, flags=re.MULTILINE))
    assert manifest["model_card"]["usage"]["file"] == "two_stage.onnx"
    assert shapes == {"class_probs": f"(1, {len(CLASSES)})", "mask_probs": f"(1, 1, {SEGMENTER_SIZE}, "
                      f"{SEGMENTER_SIZE})", "gated": "(1,)", "uncertainty": "(1,)",
                      "mask_disagreement": "(1,)"}


# --- a classifier run folder with its split, config and evaluation -------------------------------------


@pytest.fixture(scope="module")
def classifier_run(exported, tmp_path_factory) -> Path:
    """A run folder (best.pt, config.json, split.json) over a 4-per-class BUSI-layout folder."""
    _, cls_path, _ = exported
    base = tmp_path_factory.mktemp("card-run")
    data = write_busi_folder(base / "busi", per_class=4, size=32)
    run = base / "cls-run"
    run.mkdir()
    payload = torch.load(cls_path, weights_only=True)
    save_checkpoint(run / "best.pt", {**payload, "meta": {**payload["meta"], "run_dir": str(run)}})
    config = TrainConfig(task="classification", dataset="busi", out=str(run), data_dir=str(data),
                         image_size=CLASSIFIER_SIZE, epochs=1)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    keys = {c: [f"{c}/{c} ({i}).png" for i in range(1, 5)] for c in CLASSES}
    split = Split(dataset="busi", seed=0, threshold=11, dlmi_version="test",
                  train=[*keys["normal"][:2], *keys["benign"][:3], *keys["malignant"][:2]],
                  val=[keys["normal"][2], keys["malignant"][2]],
                  test=[keys["normal"][3], keys["benign"][3], keys["malignant"][3]],
                  groups=[[keys["benign"][0], keys["benign"][1]]])
    save_split(split, run / "split.json")
    return run


def test_the_card_gives_the_counts_per_class_and_side_and_the_split_rule(classifier_run, tmp_path):
    export_onnx(classifier_run, None, tmp_path / "out")
    text, manifest = card_of(tmp_path / "out")
    data = manifest["model_card"]["data"]["classifier"]
    assert data["dataset"] == "busi" and data["duplicate_groups"] == 1 and data["images_in_groups"] == 2
    assert data["counts"] == {
        "train": {"images": 7, "normal": 2, "benign": 3, "malignant": 2},
        "val": {"images": 2, "normal": 1, "malignant": 1},
        "test": {"images": 3, "normal": 1, "benign": 1, "malignant": 1},
    }
    assert "- test: 3 images (normal 1, benign 1, malignant 1)" in text
    assert "No group straddles two sides" in data["split_rule"] and data["split_rule"] in text
    assert manifest["model_card"]["gate"]["rule"] is None and "no gate" in text
    assert manifest["model_card"]["metrics"]["classifier"]["status"] == NOT_EVALUATED


def test_the_card_reports_the_runs_evaluation_with_intervals_and_definitions(classifier_run, tmp_path):
    run = Path(shutil.copytree(classifier_run, tmp_path / "cls-run"))
    payload = torch.load(run / "best.pt", weights_only=True)
    save_checkpoint(run / "best.pt", {**payload, "meta": {**payload["meta"], "run_dir": str(run)}})
    from dlmi.evaluation.evaluator import evaluate_run

    result = evaluate_run(run, side="test", device="cpu", resamples=200, panels=False)
    accuracy = result["classification"]["accuracy"]
    export_onnx(run, None, tmp_path / "out")
    text, manifest = card_of(tmp_path / "out")
    metrics = manifest["model_card"]["metrics"]["classifier"]
    assert metrics["status"] == "evaluated" and metrics["side"] == "test" and metrics["n_images"] == 3
    assert metrics["file"] == str(run / "eval-test.json")
    found = {m["metric"]: m for m in metrics["metrics"]}
    assert found["classification.accuracy"] == {"metric": "classification.accuracy", **accuracy}
    assert "classification.per_class.benign.recall" in found
    assert f"| classification.accuracy | {accuracy['value']:.3f} | {accuracy['low']:.3f}–" \
           f"{accuracy['high']:.3f} | 3 | {accuracy['definition']} |" in text
    assert NOT_EVALUATED not in text.split("## Metrics")[1].split("## Calibration")[0]


def test_int8_files_join_the_card_with_their_sha256(exported, tmp_path):
    from dlmi.export.quantize import quantize_export

    models = Path(shutil.copytree(exported[0], tmp_path / "models"))
    rng = np.random.default_rng(0)
    for folder in ("cal", "check"):
        (tmp_path / folder).mkdir()
        for i in range(3):
            image = rng.integers(0, 255, (40, 40), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / folder / f"{i}.png")
    quantize_export(models, calibration_dir=tmp_path / "cal", check_dir=tmp_path / "check")
    text, manifest = card_of(models)
    assert set(manifest["model_card"]["files"]) == set(manifest["files"]) == {
        "classifier.onnx", "unet.onnx", "two_stage.onnx",
        "classifier_int8.onnx", "unet_int8.onnx", "two_stage_int8.onnx"}
    for name in ("classifier_int8.onnx", "two_stage_int8.onnx"):
        digest = file_digest(models / name)
        assert manifest["files"][name]["sha256"] == manifest["model_card"]["files"][name]["sha256"] == digest
        assert f"| `{name}` | {manifest['files'][name]['kind']} | int8 | `{digest}` |" in text


def test_an_unreadable_split_or_eval_file_is_named_in_the_card_not_a_failed_export(classifier_run, tmp_path):
    run = Path(shutil.copytree(classifier_run, tmp_path / "cls-run"))
    payload = torch.load(run / "best.pt", weights_only=True)
    save_checkpoint(run / "best.pt", {**payload, "meta": {**payload["meta"], "run_dir": str(run)}})
    (run / "split.json").write_text("{not json")
    (run / "eval-test.json").write_text("[1, 2]")
    export_onnx(run, None, tmp_path / "out")
    text, manifest = card_of(tmp_path / "out")
    for part, name in (("data", "split.json"), ("metrics", "eval-test.json")):
        entry = manifest["model_card"][part]["classifier"]
        assert entry["status"] == "unreadable" and str(run / name) in entry["reason"]
        assert "\n" not in entry["reason"] and entry["reason"] in text
