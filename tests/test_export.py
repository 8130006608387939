"""ONNX export of the real registered seed-cnn and unet: checker, dynamic axes, parity, metadata, the gate."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_export_helpers import (
    CLASSES,
    CLASSIFIER_SIZE,
    SEGMENTER_SIZE,
    exported_models,
    make_checkpoints,
)

from dlmi.errors import DlmiError
from dlmi.export.metadata import PREPROCESSING, read_metadata
from dlmi.export.onnx_export import export_onnx
from dlmi.export.parity import check_parity
from dlmi.runtime.graphs import SegmenterGraph
from dlmi.runtime.trained import load_trained
from dlmi.runtime.two_stage import TwoStage


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_files_pass_the_checker_with_dynamic_axes(exported):
    models, _, _ = exported
    for name in ("classifier.onnx", "unet.onnx", "two_stage.onnx"):
        model = onnx.load(models / name)
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    unet = onnx.load(models / "unet.onnx").graph
    batch, channels, height, width = dims(unet.input[0])
    assert isinstance(batch, str) and isinstance(height, str) and isinstance(width, str) and channels == 1
    classifier = onnx.load(models / "classifier.onnx").graph
    assert isinstance(dims(classifier.input[0])[0], str)
    assert dims(classifier.input[0])[1:] == [1, CLASSIFIER_SIZE, CLASSIFIER_SIZE]
    two_stage = onnx.load(models / "two_stage.onnx").graph
    assert dims(two_stage.input[0])[1:] == [1, SEGMENTER_SIZE, SEGMENTER_SIZE]
    # the original outputs first and in order; the per-image uncertainty after them
    assert [o.name for o in two_stage.output] == ["class_probs", "mask_probs", "gated", "uncertainty",
                                                  "mask_disagreement"]
    assert [o.name for o in classifier.output] == ["logits", "probs", "uncertainty"]


def test_manifest_records_passing_parity_for_every_file(exported):
    models, cls_path, seg_path = exported
    manifest = json.loads((models / "export.json").read_text())
    assert set(manifest["files"]) == {"classifier.onnx", "unet.onnx", "two_stage.onnx"}
    for entry in manifest["files"].values():
        parity = entry["parity"]
        assert parity["passed"] and parity["worst"] <= 1e-4 and parity["checked"]
    assert manifest["classifier"]["checkpoint"] == str(cls_path)
    assert manifest["segmenter"]["checkpoint"] == str(seg_path)
    assert manifest["opset"] >= 17


def test_unet_matches_pytorch_at_several_sizes_and_batches(exported):
    models, _, seg_path = exported
    unet = load_trained(seg_path).model
    onnx_unet = session(models / "unet.onnx")
    rng = np.random.default_rng(1)
    for shape in [(1, 1, SEGMENTER_SIZE, SEGMENTER_SIZE), (3, 1, 45, 70), (1, 1, 17, 33)]:
        x = rng.random(shape, dtype=np.float32)
        logits, probs = onnx_unet.run(["logits", "probs"], {"image": x})
        with torch.inference_mode():
            want = unet(torch.from_numpy(x)).numpy()
        assert logits.shape == shape
        assert np.abs(logits - want).max() <= 1e-4
        assert np.abs(probs - 1 / (1 + np.exp(-want))).max() <= 1e-4


def test_classifier_matches_pytorch_with_a_dynamic_batch(exported):
    models, cls_path, _ = exported
    model = load_trained(cls_path).model
    x = np.random.default_rng(2).random((5, 1, CLASSIFIER_SIZE, CLASSIFIER_SIZE), dtype=np.float32)
    logits, probs = session(models / "classifier.onnx").run(None, {"image": x})[:2]
    with torch.inference_mode():
        want = model(torch.from_numpy(x))
    assert np.abs(logits - want.numpy()).max() <= 1e-4
    assert np.abs(probs - torch.softmax(want, 1).numpy()).max() <= 1e-4


def test_two_stage_matches_the_pytorch_pipeline_and_gates(exported):
    models, cls_path, seg_path = exported
    cls, seg = load_trained(cls_path), load_trained(seg_path)
    pipeline = TwoStage(cls.model, seg.model, normal_index=0, classifier_size=CLASSIFIER_SIZE,
                        segmenter_size=SEGMENTER_SIZE).eval()
    rng = np.random.default_rng(3)
    dark = rng.random((2, 1, SEGMENTER_SIZE, SEGMENTER_SIZE), dtype=np.float32) * 0.05
    bright = 0.5 + rng.random((2, 1, SEGMENTER_SIZE, SEGMENTER_SIZE), dtype=np.float32) * 0.5
    x = np.concatenate([dark, bright])
    class_probs, mask_probs, gated = session(models / "two_stage.onnx").run(None, {"image": x})[:3]
    with torch.inference_mode():
        want_probs, want_masks, want_gated = pipeline(torch.from_numpy(x))[:3]
    assert gated.tolist() == want_gated.tolist() == [True, True, False, False]
    assert np.abs(class_probs - want_probs.numpy()).max() <= 1e-4
    assert np.abs(mask_probs - want_masks.numpy()).max() <= 1e-4
    assert (mask_probs[:2] == 0).all()  # the gate: normal → an all-zero mask
    assert (mask_probs[2:] > 0.5).any()  # not gated: the U-Net's output


def test_metadata_describes_the_models(exported):
    models, cls_path, seg_path = exported
    two_stage = read_metadata(models / "two_stage.onnx")
    assert json.loads(two_stage["classes"]) == list(CLASSES)
    assert two_stage["normal_class"] == "normal"
    assert int(two_stage["image_size"]) == SEGMENTER_SIZE
    assert int(two_stage["classifier_image_size"]) == CLASSIFIER_SIZE
    assert float(two_stage["threshold"]) == 0.5
    assert json.loads(two_stage["preprocessing"]) == PREPROCESSING
    assert two_stage["classifier_run"].endswith("cls-run") and two_stage["segmenter_run"].endswith("seg-run")
    assert two_stage["classifier_checkpoint"] == str(cls_path)
    import dlmi

    assert two_stage["dlmi_version"] == dlmi.__version__
    classifier = read_metadata(models / "classifier.onnx")
    assert classifier["kind"] == "classifier" and int(classifier["image_size"]) == CLASSIFIER_SIZE
    assert "threshold" not in classifier
    unet = read_metadata(models / "unet.onnx")
    assert unet["kind"] == "segmenter" and "classes" not in unet
    assert json.loads(unet["outputs"]) == ["logits", "probs"]


def test_parity_check_reports_a_mismatch(exported):
    models, _, _ = exported
    from test_export_helpers import segmenter

    other = SegmenterGraph(segmenter(seed=7))  # different weights from the exported U-Net
    x = [np.random.default_rng(4).random((1, 1, SEGMENTER_SIZE, SEGMENTER_SIZE), dtype=np.float32)]
    result = check_parity("unet.onnx", other, (models / "unet.onnx").read_bytes(), x, tolerance=1e-4,
                          output_names=["logits", "probs"])
    assert not result.passed and result.worst > 1e-4
    assert "FAILED" in result.describe() and "unet.onnx" in result.describe()


def test_wrong_task_and_missing_normal_class_are_one_line_errors(tmp_path):
    cls_path, seg_path = make_checkpoints(tmp_path / "ck", normal_class=None)
    with pytest.raises(DlmiError, match="--classifier needs a classification run"):
        export_onnx(classifier=seg_path, out=tmp_path / "out")
    with pytest.raises(DlmiError, match="no normal class"):
        export_onnx(classifier=cls_path, segmenter=seg_path, out=tmp_path / "out")
    with pytest.raises(DlmiError, match="nothing to export"):
        export_onnx(out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fp16_export_runs_and_reports_looser_parity(tmp_path):
    cls_path, seg_path = make_checkpoints(tmp_path / "ck")
    report = export_onnx(cls_path, seg_path, tmp_path / "out", fp16=True)
    names = {p.name for p in report.files}
    assert {"classifier_fp16.onnx", "unet_fp16.onnx", "two_stage_fp16.onnx"} <= names
    fp16 = {r.file: r for r in report.parity if r.precision == "fp16"}
    assert all(r.passed and r.tolerance == 1e-2 for r in fp16.values())
    assert "reported only" in fp16["unet_fp16.onnx"].describe()  # logits are reported, probabilities held
    model = onnx.load(tmp_path / "out" / "unet_fp16.onnx")
    weights = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in weights
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # same interface as fp32
    assert read_metadata(model)["precision"] == "fp16"
    x = np.random.default_rng(5).random((2, 1, 40, 24), dtype=np.float32)
    probs16 = session(tmp_path / "out" / "unet_fp16.onnx").run(["probs"], {"image": x})[0]
    probs32 = session(tmp_path / "out" / "unet.onnx").run(["probs"], {"image": x})[0]
    assert np.abs(probs16 - probs32).max() <= 1e-2

    from dlmi.inference.predictor import open_predictor

    predictor = open_predictor([tmp_path / "out"], provider="cpu", aided=True, fp16=True)
    assert set(predictor.paths.values()) == {tmp_path / "out" / "two_stage_fp16.onnx"}
    square = np.random.default_rng(6).random((3, 1, SEGMENTER_SIZE, SEGMENTER_SIZE), dtype=np.float32)
    probs, masks, gated = predictor.two_stage(square)
    assert probs.dtype == masks.dtype == np.float32 and gated.dtype == bool


@pytest.mark.slow
def test_cli_export_segmenter_only(tmp_path, cli):
    _, seg_path = make_checkpoints(tmp_path / "ck")
    result = cli("export", "onnx", "--segmenter", str(seg_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "unet.onnx: parity ok" in result.stdout
    expected = ["MODEL_CARD.md", "export.json", "unet.onnx"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == expected


def test_cli_export_error_is_one_line(tmp_path, cli):
    _, seg_path = make_checkpoints(tmp_path / "ck")
    result = cli("export", "onnx", "--classifier", str(seg_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert str(seg_path) in result.stderr
