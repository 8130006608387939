"""One post-processing: every segmentation variant `dlmi evaluate` reports is a pipeline `dlmi predict` runs.

A joint model trained for two epochs on the synthetic dataset (32 px) is evaluated on its test side; the same
test images, written at the model's size, go through `dlmi predict` (unaided and ``--aided``). Each variant
in the evaluation report must be one of predict's modes, and its numbers must be those of the masks predict
wrote, scored against the same truth with the same bootstrap.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlmi.cli.main import run
from dlmi.datasets.loader import resize_image
from dlmi.evaluation.evaluator import Evaluator, evaluate_run, load_inputs
from dlmi.metrics.segmentation import SegmentationScores
from dlmi.plugins import get_dataset

SIZE = 32
RESAMPLES = 50
# The evaluation report's variant -> the `dlmi predict` flags that produce its masks.
PREDICT_FLAGS = {"unaided": [], "aided": ["--aided"]}


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory) -> Path:
    """Two epochs (seconds): enough for masks of several blobs, where a component filter would score
    differently on the val side (measured: ``min-size-10px`` won it for the unaided masks)."""
    from dlmi.training import TrainConfig
    from dlmi.training.start import train_joint

    out = tmp_path_factory.mktemp("postprocess") / "joint"
    return Path(train_joint(TrainConfig(task="joint", dataset="synthetic", out=str(out), base_channels=4,
                                        image_size=SIZE, epochs=2, batch_size=16, device="cpu",
                                        quiet=True)))


def test_every_reported_variant_is_what_predict_writes(joint_run, tmp_path):
    result = evaluate_run(joint_run, side="test", resamples=RESAMPLES, device="cpu", write=False,
                          panels=False)
    variants = result["segmentation"]["variants"]
    assert set(variants) == set(PREDICT_FLAGS), f"variants predict cannot produce: {set(variants)}"

    inputs = load_inputs(joint_run, device="cpu")
    truth = Evaluator(inputs, device="cpu").predictions("test")
    source = get_dataset("synthetic")
    by_key = {s.key: s for s in source.samples(None)}
    images = tmp_path / "images"
    images.mkdir()
    names = [Path(key).name for key in truth.keys]
    assert len(set(names)) == len(names)
    for key, name in zip(truth.keys, names, strict=True):
        Image.fromarray(resize_image(source.load(by_key[key])[0], SIZE)).save(images / name)

    for variant, flags in PREDICT_FLAGS.items():
        out = tmp_path / variant
        assert run(["predict", str(images), "--models", str(joint_run), "--backend", "torch",
                    "--out", str(out), *flags]) == 0
        records = {r["file"]: r for r in json.loads((out / "predictions.json").read_text())["predictions"]}
        masks = np.stack([np.asarray(Image.open(out / records[name]["mask"])) > 0 for name in names])
        scores = SegmentationScores(list(source.classes), inputs.normal_index)
        scores.update(masks, truth.true_masks, truth.labels, keys=truth.keys)
        assert scores.summary(resamples=RESAMPLES) == variants[variant], variant


def test_the_report_names_the_rule_predict_applies(joint_run):
    """The report's post-processing is the model's own gate settings (what predict reads), not a choice of
    its own."""
    result = evaluate_run(joint_run, side="test", resamples=RESAMPLES, device="cpu", write=False,
                          panels=False)
    post = result["segmentation"]["postprocess"]
    assert (post["threshold"], post["min_lesion_pixels"], post["normal_threshold"]) == (0.5, 0, None)
    assert "predict" in post["note"]


def test_an_ensembles_rule_is_the_one_its_manifest_chose(tmp_path):
    """The report's rule for a fold ensemble: ensemble.json's threshold, smallest lesion and P(normal) gate,
    and where they were chosen (untrained members: no training)."""
    from test_joint import write_joint_checkpoint

    from dlmi.runtime.ensemble import load_ensemble
    from dlmi.runtime.two_stage import pipeline_rule

    folder = tmp_path / "ensemble"
    for fold in range(2):
        (folder / f"fold-{fold}").mkdir(parents=True)
        write_joint_checkpoint(folder / f"fold-{fold}" / "best.pt", seed=fold, size=SIZE)
    (folder / "ensemble.json").write_text(json.dumps(
        {"members": ["fold-0", "fold-1"], "flip_tta": False, "threshold": 0.7, "min_lesion_pixels": 16,
         "normal_threshold": 0.3, "postprocess": {"selected_on": "out-of-fold predictions (test)"}}))
    rule = pipeline_rule(load_ensemble(folder))
    assert (rule["threshold"], rule["min_lesion_pixels"], rule["normal_threshold"]) == (0.7, 16, 0.3)
    assert rule["gate"] == "P(normal) ≥ 0.3, or fewer than 16 pixels above 0.7"
    assert rule["selected_on"] == "out-of-fold predictions (test)"
    assert "chosen on out-of-fold predictions (test)" in rule["note"]
