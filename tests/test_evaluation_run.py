"""``dlmi evaluate RUN_DIR`` on tiny synthetic runs trained by the real ``dlmi train`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlmi.errors import DlmiError
from dlmi.evaluation import evaluate_run
from dlmi.metrics.segmentation import EMPTY_MASK_RULE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A synthetic classifier (64 px) and a segmenter aided by it (32 px, base 4), one epoch each."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("eval-runs")
    cls, seg = root / "cls", root / "seg"
    common = ["--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "--quiet"]
    done = run_cli("train", "classifier", *common, "--image-size", "64", "--batch-size", "32",
                   "--out", str(cls))
    assert done.returncode == 0, done.stderr
    done = run_cli("train", "segmenter", *common, "--image-size", "32", "--base-channels", "4",
                   "--batch-size", "16", "--aid", str(cls), "--out", str(seg))
    assert done.returncode == 0, done.stderr
    return {"cls": cls, "seg": seg}


def test_evaluate_an_aided_segmenter_run(cli, runs):
    seg = runs["seg"]
    result = cli("evaluate", str(seg), "--json", "--resamples", "200")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    ctx = out["context"]
    assert (ctx["side"], ctx["image_size"], ctx["dataset"]) == ("test", 32, "synthetic")
    assert ctx["aid"] is not None  # the aid recorded in the run's config
    variants = out["segmentation"]["variants"]
    assert {"unaided", "aided"} <= set(variants)
    for summary in variants.values():
        assert summary["empty_mask_rule"] == EMPTY_MASK_RULE
        per_class = summary["per_class"]
        assert sum(c["n"] for c in per_class.values()) == summary["n_images"] == ctx["n_images"]
        assert summary["lesion_dice"]["n"] == per_class["benign"]["n"] + per_class["malignant"]["n"]
        for key in ("miou_seed", "lesion_dice", "lesion_iou"):
            entry = summary[key]
            assert entry["low"] <= entry["value"] <= entry["high"]
    # The gate only empties masks: it can only help on normal images and only hurt on lesion images.
    plain, aided = variants["unaided"], variants["aided"]
    assert aided["per_class"]["normal"]["iou"]["value"] >= plain["per_class"]["normal"]["iou"]["value"]
    assert aided["lesion_dice"]["value"] <= plain["lesion_dice"]["value"]
    assert out["aid_classification"]["n_images"] == ctx["n_images"]
    post = out["segmentation"]["postprocess"]
    assert set(variants) == {"unaided", "aided"}  # only what `dlmi predict` writes (no evaluate-only variant)
    assert post["threshold"] == 0.5 and post["gate"] == "the arg-max class is normal" and post["note"]
    for name in ("eval-test.json", "eval-test.md", "panels.png", "aid-confusion-test.png"):
        assert (seg / name).stat().st_size > 0
    written = json.loads((seg / "eval-test.json").read_text())
    assert written["segmentation"]["variants"]["aided"] == variants["aided"]
    table = (seg / "eval-test.md").read_text()
    assert "seed mIoU" in table and "test side" in table and "32 px" in table and "synthetic" in table


def test_scores_do_not_depend_on_the_evaluation_batch_size(runs):
    one = evaluate_run(runs["seg"], side="val", batch_size=1, resamples=100, write=False)
    seven = evaluate_run(runs["seg"], side="val", batch_size=7, resamples=100, write=False)
    assert one["segmentation"]["variants"] == seven["segmentation"]["variants"]
    assert one["aid_classification"] == seven["aid_classification"]


def test_evaluate_a_classifier_on_every_side(cli, runs):
    cls = runs["cls"]
    result = cli("evaluate", str(cls), "--side", "all", "--resamples", "100")
    assert result.returncode == 0, result.stderr
    for side in ("train", "val", "test"):
        assert f"{side} side" in result.stdout
        out = json.loads((cls / f"eval-{side}.json").read_text())
        summary = out["classification"]
        matrix = np.array(summary["confusion_matrix"]["matrix"])
        assert matrix.sum() == summary["n_images"] == out["context"]["n_images"]
        assert summary["accuracy"]["value"] == pytest.approx(np.trace(matrix) / matrix.sum())
        normal = summary["classes"].index("normal")
        both = matrix[normal, normal] + matrix[np.ix_([i for i in range(3) if i != normal],
                                                      [i for i in range(3) if i != normal])].sum()
        assert summary["detect_accuracy"]["value"] == pytest.approx(both / matrix.sum())
        assert (cls / f"confusion-{side}.png").stat().st_size > 0
    assert not (cls / "panels.png").exists()  # panels are for segmenter runs


def test_mistakes_are_one_line_errors(cli, runs):
    with pytest.raises(DlmiError, match="applies to a segmentation run"):
        evaluate_run(runs["cls"], aid=runs["cls"], write=False)
    with pytest.raises(DlmiError, match="the aid must be a classifier"):
        evaluate_run(runs["seg"], aid=runs["seg"], write=False)
    with pytest.raises(DlmiError, match="unknown side"):
        evaluate_run(runs["seg"], side="sideways", write=False)
    result = cli("evaluate", str(runs["seg"] / "nothing"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
