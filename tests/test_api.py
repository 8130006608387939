"""The notebook front door (dlmi.api): arrays in, masks at the image's size out; typed reports; data in
memory.

The models are the small hand-weighted checkpoints of test_export_helpers (a dark image is gated), so nothing
here trains; docs/python.md's examples (tests/test_python_docs.py) run the whole job.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_export_helpers import CLASSES, exported_models

import dlmi
from dlmi.api import EvaluationReport, as_grey, dataset_name
from dlmi.datasets.base import Sample
from dlmi.datasets.synthetic import SyntheticDataset
from dlmi.errors import DlmiError
from dlmi.imageio import read_grey
from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.plugins import get_dataset, get_plugins


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


def test_import_dlmi_loads_no_torch_and_names_the_api():
    code = ("import sys, dlmi; names = [dlmi.train_classifier, dlmi.evaluate, dlmi.load_predictor]; "
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_predict_an_array_matches_predict_over_a_folder(exported, tmp_path):
    models, _, _ = exported
    rng = np.random.default_rng(3)
    bright = rng.integers(90, 255, (77, 53), dtype=np.uint8)
    dark = rng.integers(0, 20, (40, 61), dtype=np.uint8)
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(bright).save(folder / "bright.png")
    Image.fromarray(dark).save(folder / "dark.png")
    predict_folder(folder, tmp_path / "out", open_onnx(models), PredictSettings(aided=True),
                   log=lambda m: None)

    table = json.loads((tmp_path / "out" / "predictions.json").read_text())
    records = {r["file"]: r for r in table["predictions"]}

    predictor = dlmi.load_predictor(models, aided=True)
    for name, image in (("bright.png", bright), ("dark.png", dark)):
        result = predictor.predict(image)
        assert result.mask.shape == image.shape and result.mask.dtype == bool
        written = read_grey(tmp_path / "out" / records[name]["mask"]) > 0
        assert result.label == records[name]["class"] and result.gated == records[name]["gated"]
        assert np.array_equal(result.mask, written), name
        assert result.classes == CLASSES and result.probs.shape == (3,)
        assert result.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert predictor.predict(dark).gated and not predictor.predict(dark).mask.any()
    assert not predictor.predict(bright).gated and predictor.predict(bright).mask.any()


def open_onnx(models):
    from dlmi.inference.predictor import open_predictor

    return open_predictor([models], provider="cpu", aided=True)


def test_checkpoints_and_export_give_the_same_prediction(exported):
    models, cls_path, seg_path = exported
    image = np.random.default_rng(5).integers(60, 255, (64, 96, 3), dtype=np.uint8)  # RGB
    onnx = dlmi.load_predictor(models, aided=True).predict(image)
    torch_result = dlmi.load_predictor([cls_path, seg_path], aided=True).predict(image)
    assert dlmi.load_predictor([cls_path, seg_path]).running_on.startswith("torch")
    assert onnx.gated == torch_result.gated and onnx.label == torch_result.label
    np.testing.assert_allclose(onnx.mask_probs, torch_result.mask_probs, atol=1e-4)


def test_unaided_prediction_has_no_class_and_a_classifier_alone_no_mask(exported):
    models, cls_path, seg_path = exported
    unaided = dlmi.load_predictor(models).predict(np.full((20, 30), 5, dtype=np.uint8))
    assert unaided.gated is None and unaided.probs is None and unaided.mask.shape == (20, 30)
    classes_only = dlmi.load_predictor(cls_path).predict(np.full((20, 30), 200, dtype=np.uint8))
    assert classes_only.mask is None and classes_only.label == "benign"


def test_arrays_are_read_like_image_files():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_grey(grey) is grey
    assert np.array_equal(as_grey(grey[:, :, None]), grey)
    assert np.array_equal(as_grey(grey / 255.0), grey)  # floats in 0–1 are intensities
    wide = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    assert as_grey(wide).tolist() == [[0, 64], [128, 255]]  # stretched min..max, like a 16-bit file
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert as_grey(rgb).tolist() == [[76, 76], [76, 76]]  # ITU-R 601 luma, as PIL converts a file
    for bad, cause in ((np.zeros((2, 2, 2)), "shape"), (np.zeros((0, 3)), "empty"),
                       (np.array([[np.nan, 1.0]]), "NaN"), (np.ones((2, 2), np.complex64), "complex64"),
                       (np.array([[object()]]), "dtype object"), (np.array([["a", "b"]]), "dtype <U1"),
                       (np.ones((2, 2, 3), np.complex128), "complex128"), ([[1, 2], [3]], "ragged")):
        with pytest.raises(DlmiError, match=cause):
            as_grey(bad)


def test_the_threshold_is_one_rule_for_the_api_and_the_cli(exported, tmp_path):
    models, _cls, _seg = exported
    image = np.random.default_rng(3).integers(0, 256, (24, 20)).astype(np.uint8)
    assert not dlmi.load_predictor(models, threshold=1.0).predict(image).mask.any()  # 1: nothing is lesion
    assert dlmi.load_predictor(models, threshold=0.0).predict(image).mask.all()  # 0: every pixel above 0
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(DlmiError, match=r"threshold must be between 0 and 1 \(a probability"):
            dlmi.load_predictor(models, threshold=bad)
        with pytest.raises(DlmiError, match=r"--threshold must be between 0 and 1 \(a probability"):
            predict_folder(tmp_path, tmp_path / "out", dlmi.load_predictor(models).backend,
                           PredictSettings(threshold=bad))


def test_a_dataset_source_object_is_registered_for_the_session():
    class Phantoms(SyntheticDataset):
        name = "api-test-phantoms"

    first, second = Phantoms(count=6), Phantoms(count=9)
    assert dataset_name(first) == "api-test-phantoms" and get_dataset("api-test-phantoms") is first
    assert dataset_name(second) == "api-test-phantoms" and get_dataset("api-test-phantoms") is second
    get_plugins().datasets.forget(["api-test-phantoms"])
    assert dataset_name(SyntheticDataset()) == "synthetic"  # what the plugin builds: its name
    with pytest.raises(DlmiError, match=r"'synthetic' is registered by built-in.*another \.name"):
        dataset_name(SyntheticDataset(count=12))
    with pytest.raises(DlmiError, match="DatasetSource object"):
        dataset_name(object())  # type: ignore[arg-type]
    assert isinstance(dlmi.Sample("a/b.png", 0), Sample)


def test_training_mistakes_are_one_line_before_anything_is_written(tmp_path):
    with pytest.raises(DlmiError, match="--out is required"):
        dlmi.train_classifier(dataset="synthetic")
    with pytest.raises(DlmiError, match="unknown scheduler 'step'"):
        dlmi.train_segmenter(dataset="synthetic", out=tmp_path / "seg", scheduler="step")
    assert not (tmp_path / "seg").exists()
    with pytest.raises(DlmiError, match=r"nowhere.config\.json: not found"):
        dlmi.train_classifier(resume=tmp_path / "nowhere")


def test_the_report_reads_the_shipped_variant_and_the_intervals():
    number = {"value": 0.5, "low": 0.4, "high": 0.6, "n": 10, "definition": "d"}
    seg = {"n_images": 10, "n_lesion_images": 7, "miou_seed": number, "lesion_iou": number,
           "empty_truth_false_positive_rate": number}
    result = {"context": {"side": "test", "task": "segmentation", "n_images": 10},
              "segmentation": {"variants": {"unaided": {**seg, "lesion_dice": {**number, "value": 0.3}},
                                            "aided": {**seg, "lesion_dice": {**number, "value": 0.7}}}},
              "aid_classification": {"accuracy": {**number, "value": 0.9}}}
    report = EvaluationReport.from_result(result)
    assert report.lesion_dice.value == 0.7 and report.shipped_variant == "aided"
    assert (report.lesion_dice.low, report.lesion_dice.high) == (0.4, 0.6)
    assert report.variants["unaided"].lesion_dice.value == 0.3
    assert report.aid_accuracy.value == 0.9 and report.accuracy is None
    assert str(report.lesion_dice) == "0.700 [0.400, 0.600] (n=10)"
    copy = report.to_dict()
    copy["context"]["side"] = "changed"
    assert report.side == "test"
    both = EvaluationReport.from_result({"side": "all", "sides": {"test": result, "val": result}})
    assert both.lesion_dice is None and both.sides["val"].lesion_dice.value == 0.7
