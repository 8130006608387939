"""One prediction path: `dlmi evaluate RUN`, `dlmi predict` (onnx and torch) and `dlmi evaluate masks`
give the same aided per-image IoU on the same images, with a classifier (64 px) and a U-Net (32 px) of
different sizes.

Before the runtime was shared, evaluation resized the original image for the classifier with PIL while the
shipped two-stage graph resized the segmenter-sized tensor: images near the gate's boundary were gated by
one and not by the other.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_export_helpers import CLASSIFIER_SIZE, DARK, SEGMENTER_SIZE, make_checkpoints

from dlmi.atomic import write_json_atomic
from dlmi.cli.main import run
from dlmi.evaluation.evaluator import Evaluator, load_inputs
from dlmi.evaluation.masks import evaluate_masks
from dlmi.metrics.segmentation import iou
from dlmi.splits import make_split, save_split
from dlmi.training.config import TrainConfig

CLASSES = ("normal", "benign", "malignant")


def write_folder(root, per_class: int = 8):
    """32×32 BUSI-layout PNGs whose brightness straddles the classifier's gate (DARK) and lesion masks."""
    size = SEGMENTER_SIZE
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(50 * label + i)
            level = 255 * DARK * (0.5 + 0.3 * i)  # 0.5×–2.6× the gate's brightness
            image = rng.normal(level, 6, (size, size))
            mask = np.zeros((size, size), dtype=bool)
            if label:
                cy, cx = rng.integers(8, 24, 2)
                yy, xx = np.mgrid[0:size, 0:size]
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 25
                image[mask] += 40
            stem = f"{name} ({i + 1})"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / name / f"{stem}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / name / f"{stem}_mask.png")
    return root


def make_run(folder, checkpoint, config: TrainConfig, split):
    folder.mkdir(parents=True)
    shutil.copy(checkpoint, folder / "best.pt")
    save_split(split, folder / "split.json")
    write_json_atomic(folder / "config.json", config.to_dict())
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("one-path")
    data = write_folder(base / "busi")
    split = make_split("busi", data, val=0.25, test=0.5)
    cls_pt, seg_pt = make_checkpoints(base / "checkpoints")
    cls_run = make_run(base / "cls", cls_pt, TrainConfig(task="classification", dataset="busi",
                                                         data_dir=str(data), out=str(base / "cls"),
                                                         image_size=CLASSIFIER_SIZE), split)
    seg_config = TrainConfig(task="segmentation", dataset="busi", data_dir=str(data), out=str(base / "seg"),
                             image_size=SEGMENTER_SIZE, aid=str(cls_run))
    seg_run = make_run(base / "seg", seg_pt, seg_config, split)
    return base, data, split, cls_run, seg_run


def evaluated_iou(seg_run) -> tuple[dict[str, float], np.ndarray]:
    preds = Evaluator(load_inputs(seg_run, device="cpu"), device="cpu").predictions("test")
    per_image = iou(preds.aided_masks(), preds.true_masks)
    return dict(zip(preds.keys, per_image.tolist(), strict=True)), preds.gated


def predicted_masks(out) -> dict[str, np.ndarray]:
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {row[next(k for k in row if k in ("file", "image", "path"))]: row["mask"] for row in rows}


def test_evaluate_and_both_predict_backends_agree_per_image(setup):
    base, data, split, cls_run, seg_run = setup
    by_key, gated = evaluated_iou(seg_run)
    assert 0 < gated.sum() < gated.size, "the images must straddle the gate for this test to mean anything"

    images = base / "test-images"
    truths = {}
    for key in split.test:
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / key, images / key)
        stem = key.rsplit(".", 1)[0]
        truths[key] = np.asarray(Image.open(data / f"{stem}_mask.png")) > 127
    assert run(["export", "onnx", "--classifier", str(cls_run), "--segmenter", str(seg_run),
                "--out", str(base / "exported")]) == 0

    for backend, models in (("onnx", [str(base / "exported")]), ("torch", [str(seg_run), str(cls_run)])):
        out = base / f"pred-{backend}"
        args = ["predict", "--aided", str(images), "--out", str(out), "--backend", backend]
        for model in models:
            args += ["--models", model]
        assert run(args) == 0
        masks = predicted_masks(out)
        assert sorted(masks) == sorted(split.test)
        truth_dir = out / "truth"
        for key, rel in masks.items():
            predicted = np.asarray(Image.open(out / rel).convert("L")) > 127
            assert predicted.shape == (SEGMENTER_SIZE, SEGMENTER_SIZE)
            assert iou(predicted[None], truths[key][None])[0] == pytest.approx(by_key[key], abs=1e-9), (
                backend, key)
            (truth_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(truths[key].astype(np.uint8) * 255).save(truth_dir / rel)
        scored = evaluate_masks(out / "masks", truth_dir / "masks", resamples=50)
        expected = float(np.mean([by_key[k] for k in masks]))
        assert scored["segmentation"]["miou_seed"]["value"] == pytest.approx(expected, abs=1e-9)
    json.dumps(by_key)  # plain floats, keyed by sample
