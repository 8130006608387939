"""``predictor.predict_batch(arrays)`` (issue 20, part 3): a list of arrays of any sizes, batched inside, the
records ``dlmi predict`` writes, equal to one ``predict`` per image and to the CLI's records for the same
images; a bad array is one line naming its index. Real exported ONNX models and real files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export_helpers import exported_models

import dlmi
from dlmi.errors import DlmiError
from dlmi.imageio import read_grey


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


def images() -> list[np.ndarray]:
    """Mixed sizes, grey (H, W) and (H, W, 1), RGB, bright (segmented) and dark (gated); PNG-exact uint8."""
    rng = np.random.default_rng(11)
    return [
        rng.integers(90, 255, (77, 53), dtype=np.uint8),
        rng.integers(0, 20, (40, 61), dtype=np.uint8),
        rng.integers(90, 255, (32, 32, 1), dtype=np.uint8),
        rng.integers(60, 255, (64, 96, 3), dtype=np.uint8),
        rng.integers(90, 255, (77, 53), dtype=np.uint8),
        rng.integers(0, 15, (33, 33), dtype=np.uint8),
        rng.integers(100, 255, (120, 90), dtype=np.uint8),
    ]


def test_batch_equals_one_predict_per_image_and_the_cli_records(exported, tmp_path):
    models, _, _ = exported
    arrays = images()
    predictor = dlmi.load_predictor(models, aided=True, provider="cpu")
    records = predictor.predict_batch(arrays, batch_size=3)
    assert [r["index"] for r in records] == list(range(len(arrays)))

    for array, record in zip(arrays, records, strict=True):
        single = predictor.predict(array)
        assert record["mask"].shape == array.shape[:2] and record["mask"].dtype == bool
        assert np.array_equal(record["mask"], single.mask)
        assert record["class"] == single.label and record["gated"] == single.gated
        assert record["probabilities"] == pytest.approx(dict(zip(single.classes, single.probs.tolist(),
                                                                  strict=True)), abs=1e-6)
    assert any(r["gated"] for r in records) and any(r["lesion_pixels"] for r in records)

    folder = tmp_path / "scans"
    folder.mkdir()
    for index, array in enumerate(arrays):
        Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(
            folder / f"{index:02d}.png")
    dlmi.predict(folder, models, out=tmp_path / "out", aided=True, provider="cpu", quiet=True)
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    for record, cli in zip(records, written, strict=True):
        assert np.array_equal(record["mask"], read_grey(tmp_path / "out" / cli["mask"]) > 0)
        file_only = {"file", "mask", "overlay"}
        assert set(record) == set(cli) - file_only | {"index", "mask"}
        assert {k: v for k, v in record.items() if k not in ("index", "mask")} == \
            {k: v for k, v in cli.items() if k not in file_only}


def test_batch_sizes_do_not_change_the_records(exported):
    models, _, _ = exported
    predictor = dlmi.load_predictor(models, aided=True, provider="cpu")
    one = predictor.predict_batch(images(), batch_size=1)
    many = predictor.predict_batch(images(), batch_size=16)
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a.pop("mask"), b.pop("mask")) and a == b
    assert predictor.predict_batch([]) == []
    assert len(predictor.predict_batch(tuple(images()[:2]))) == 2


def test_unaided_and_classifier_alone(exported):
    models, cls_path, _ = exported
    arrays = images()[:3]
    unaided = dlmi.load_predictor(models, provider="cpu").predict_batch(arrays)
    assert [r["class"] for r in unaided] == [None] * 3 and all(r["gated"] is None for r in unaided)
    for array, record in zip(arrays, unaided, strict=True):
        assert np.array_equal(record["mask"], dlmi.load_predictor(models).predict(array).mask)
    classes = dlmi.load_predictor(cls_path).predict_batch(arrays)
    assert all(r["mask"] is None and r["class"] in ("normal", "benign", "malignant") for r in classes)
    assert classes[1]["class"] == "normal"  # the dark one


@pytest.mark.parametrize("bad,cause", [
    (np.zeros(5, np.uint8), "shape"),
    (np.zeros((2, 8, 8, 1), np.uint8), "shape"),
    (np.zeros((0, 4), np.uint8), "empty"),
    (np.array([[np.nan, 1.0], [0.0, 1.0]]), "NaN"),
    (np.array([[object(), object()]]), "dtype object"),
    (np.ones((4, 4), np.complex64), "complex64"),
    ([[1, 2], [3]], "ragged"),
    ("scan.png", "path"),
])
def test_a_bad_array_is_one_line_naming_its_index(exported, bad, cause):
    models, _, _ = exported
    predictor = dlmi.load_predictor(models, aided=True, provider="cpu")
    arrays = [images()[0], images()[1], bad]
    with pytest.raises(DlmiError, match=cause) as caught:
        predictor.predict_batch(arrays)
    message = str(caught.value)
    assert message.startswith("arrays[2]: ") and "\n" not in message


@pytest.mark.parametrize("arrays,cause", [
    (np.zeros((3, 8, 8), np.uint8), "got a ndarray of shape (3, 8, 8)"),
    ("scans/", "got a str"),
    (5, "got a int"),
])
def test_not_a_list_of_arrays(exported, arrays, cause):
    models, _, _ = exported
    with pytest.raises(DlmiError, match="^arrays: expected a list of image arrays, " + re.escape(cause)):
        dlmi.load_predictor(models, provider="cpu").predict_batch(arrays)
    with pytest.raises(DlmiError, match="batch_size"):
        dlmi.load_predictor(models, provider="cpu").predict_batch([], batch_size=0)


def test_the_docs_show_it(tmp_path: Path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "python.md").read_text(encoding="utf-8")
    assert ".predict_batch(" in doc
