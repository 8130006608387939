"""Metric definitions against hand-computed cases, batch-size independence, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlmi.metrics.bootstrap import bootstrap_mean, bootstrap_ratio, scored_mean
from dlmi.metrics.classification import (
    ClassificationScores,
    accuracy,
    confusion_matrix,
    detect_accuracy,
    precision_recall,
)
from dlmi.metrics.segmentation import (
    EMPTY_MASK_RULE,
    LESION_RULE_BY_LABEL,
    LESION_RULE_BY_TRUTH,
    SegmentationScores,
    dice,
    iou,
    mask_counts,
)


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


# --- per-image IoU and Dice ---------------------------------------------------------------------------------

def test_empty_truth_and_empty_prediction_score_one():
    empty = np.zeros((8, 8), dtype=bool)
    assert iou(empty, empty)[0] == 1.0
    assert dice(empty, empty)[0] == 1.0


def test_empty_truth_with_a_false_positive_scores_zero():
    empty = np.zeros((8, 8), dtype=bool)
    one_pixel = empty.copy()
    one_pixel[3, 4] = True
    assert iou(one_pixel, empty)[0] == 0.0
    assert dice(one_pixel, empty)[0] == 0.0
    # and the other way round: a missed lesion
    assert iou(empty, one_pixel)[0] == 0.0


def test_partial_overlap_has_the_hand_computed_iou_and_dice():
    # Truth: 4x4 square (16 px); prediction: the same square shifted right by 2 -> overlap 4x2 = 8 px.
    truth = square(10, 2, 2, 4)
    pred = square(10, 2, 4, 4)
    assert mask_counts(pred, truth) == (np.array([8]), np.array([16]), np.array([16]))
    assert iou(pred, truth)[0] == pytest.approx(8 / 24)        # union 16 + 16 - 8
    assert dice(pred, truth)[0] == pytest.approx(2 * 8 / 32)   # 0.5
    assert iou(truth, truth)[0] == 1.0


def test_masks_of_every_layout_and_type_give_the_same_scores():
    truth = square(10, 2, 2, 4)
    pred = square(10, 2, 4, 4)
    expected = iou(pred, truth)[0]
    as_float = torch.from_numpy(pred.astype(np.float32))[None, None]     # (1, 1, H, W) 0/1 floats
    assert iou(as_float, torch.from_numpy(truth)[None])[0] == expected
    with pytest.raises(ValueError, match="differ in shape"):
        iou(pred, truth[:5])


def test_summary_names_the_empty_mask_rule_and_uses_it_for_miou_seed():
    size = 10
    truth = np.stack([np.zeros((size, size), bool), np.zeros((size, size), bool), square(size, 2, 2, 4)])
    pred = np.stack([np.zeros((size, size), bool), square(size, 0, 0, 1), square(size, 2, 4, 4)])
    labels = np.array([0, 0, 1])  # normal, normal, benign
    scores = SegmentationScores(("normal", "benign", "malignant"), normal_index=0)
    scores.update(pred, truth, labels)
    summary = scores.summary(resamples=200)
    assert summary["empty_mask_rule"] == EMPTY_MASK_RULE
    assert "seed empty-mask rule" in summary["miou_seed"]["definition"]
    # per image IoU: 1 (empty/empty), 0 (false positive), 8/24
    assert summary["miou_seed"]["value"] == pytest.approx((1 + 0 + 8 / 24) / 3)
    assert summary["miou_seed"]["n"] == 3
    # lesion-only: only the benign image
    assert summary["lesion_rule"] == LESION_RULE_BY_LABEL
    assert summary["lesion_dice"]["value"] == pytest.approx(0.5)
    assert summary["lesion_iou"]["value"] == pytest.approx(8 / 24)
    assert summary["lesion_dice"]["n"] == 1
    assert summary["per_class"]["normal"]["iou"]["value"] == pytest.approx(0.5)
    assert summary["per_class"]["benign"]["dice"]["value"] == pytest.approx(0.5)
    assert "malignant" not in summary["per_class"]  # no malignant image was scored
    assert summary["empty_truth_false_positive_rate"]["value"] == pytest.approx(0.5)


def test_lesion_images_fall_back_to_non_empty_truth_without_labels():
    truth = np.stack([np.zeros((6, 6), bool), square(6, 1, 1, 2)])
    scores = SegmentationScores()
    scores.update(truth, truth)
    summary = scores.summary(resamples=50)
    assert summary["lesion_rule"] == LESION_RULE_BY_TRUTH
    assert summary["lesion_dice"]["n"] == 1
    assert "per_class" not in summary


def random_masks(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    truth = np.zeros((n, size, size), dtype=bool)
    pred = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if labels[i] != 0:
            t, left, side = rng.integers(0, size // 2, 3)
            truth[i, t:t + side + 2, left:left + side + 2] = True
        t, left, side = rng.integers(0, size // 2, 3)
        if rng.random() < 0.7:
            pred[i, t:t + side + 1, left:left + side + 1] = True
    return pred, truth, labels


def test_results_are_identical_for_batches_of_1_3_and_7():
    """The seed's 1/batch-size Dice bug cannot happen: scores are per image, then averaged."""
    pred, truth, labels = random_masks(23, 16, seed=3)
    summaries = []
    for batch in (1, 3, 7, 23):
        scores = SegmentationScores(("normal", "benign", "malignant"), normal_index=0)
        for start in range(0, len(pred), batch):
            scores.update(torch.from_numpy(pred[start:start + batch]), truth[start:start + batch],
                          torch.from_numpy(labels[start:start + batch]))
        summaries.append(scores.summary(resamples=300, seed=5))
    for other in summaries[1:]:
        assert other == summaries[0]
    # and the number is the plain mean of per-image Dice over lesion images
    lesion = labels != 0
    assert summaries[0]["lesion_dice"]["value"] == pytest.approx(dice(pred, truth)[lesion].mean())


def test_labels_must_be_given_on_every_update_or_none():
    pred, truth, labels = random_masks(4, 8, seed=0)
    scores = SegmentationScores()
    scores.update(pred[:2], truth[:2], labels[:2])
    with pytest.raises(ValueError, match="every update"):
        scores.update(pred[2:], truth[2:])


# --- classification --------------------------------------------------------------------------------------

def test_accuracy_detect_accuracy_and_confusion_matrix_by_hand():
    # classes: 0 normal, 1 benign, 2 malignant
    true = [0, 0, 1, 1, 2, 2, 2, 1]
    pred = [0, 1, 2, 1, 2, 0, 1, 1]
    assert accuracy(true, pred) == pytest.approx(4 / 8)
    # detect: both normal or both tumour -> wrong only at index 1 (normal->benign) and 5 (malignant->normal)
    assert detect_accuracy(true, pred, normal_index=0) == pytest.approx(6 / 8)
    matrix = confusion_matrix(true, pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 1], [1, 1, 1]]
    precision, recall = precision_recall(matrix)
    assert precision == pytest.approx([1 / 2, 2 / 4, 1 / 2])
    assert recall == pytest.approx([1 / 2, 2 / 3, 1 / 3])


def test_precision_of_a_never_predicted_class_is_undefined():
    precision, recall = precision_recall(confusion_matrix([0, 1, 1], [0, 0, 0], 3))
    assert precision[1] is None and precision[2] is None
    assert recall[2] is None
    assert recall[1] == 0.0


def test_classification_scores_from_logits_in_batches():
    true = np.array([0, 0, 1, 1, 2, 2, 2, 1])
    pred = np.array([0, 1, 2, 1, 2, 0, 1, 1])
    logits = np.eye(3)[pred] * 5.0
    scores = ClassificationScores(("normal", "benign", "malignant"), normal_index=0)
    scores.update(torch.from_numpy(logits[:3]), torch.from_numpy(true[:3]))
    scores.update(logits[3:], true[3:])
    summary = scores.summary(resamples=300)
    assert summary["accuracy"]["value"] == pytest.approx(0.5)
    assert summary["detect_accuracy"]["value"] == pytest.approx(0.75)
    assert summary["per_class"]["benign"]["precision"]["value"] == pytest.approx(0.5)
    assert summary["per_class"]["malignant"]["recall"]["value"] == pytest.approx(1 / 3)
    assert summary["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 2, 1], [1, 1, 1]]
    benign_precision = summary["per_class"]["benign"]["precision"]
    for entry in (summary["accuracy"], summary["detect_accuracy"], benign_precision):
        assert entry["low"] <= entry["value"] <= entry["high"]


def test_detect_accuracy_is_only_reported_with_three_classes_and_a_normal_one():
    two = ClassificationScores(("no", "yes"), normal_index=0)
    two.update(np.array([0, 1]), np.array([0, 1]))
    assert "detect_accuracy" not in two.summary(resamples=10)
    no_normal = ClassificationScores(("a", "b", "c"))
    no_normal.update(np.array([0, 1, 2]), np.array([0, 1, 2]))
    assert "detect_accuracy" not in no_normal.summary(resamples=10)


# --- bootstrap ---------------------------------------------------------------------------------------------

def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_images():
    rng = np.random.default_rng(0)
    small = rng.random(40)
    large = rng.random(4000)
    small_ci = bootstrap_mean(small)
    large_ci = bootstrap_mean(large)
    assert small.mean() in small_ci
    assert large.mean() in large_ci
    assert large_ci.width < small_ci.width / 4  # ~ 1/sqrt(100) = 1/10 in theory
    assert small_ci.resamples == 2000 and small_ci.confidence == 0.95


def test_bootstrap_is_seeded_and_handles_degenerate_inputs():
    values = np.random.default_rng(1).random(30)
    assert bootstrap_mean(values, seed=7) == bootstrap_mean(values, seed=7)
    assert bootstrap_mean(values, seed=7) != bootstrap_mean(values, seed=8)
    constant = bootstrap_mean(np.ones(12))
    assert (constant.low, constant.high) == (1.0, 1.0)
    assert bootstrap_mean(np.zeros(0)) is None
    entry = scored_mean(np.zeros(0), "nothing")
    assert entry["value"] is None and entry["n"] == 0


def test_bootstrap_ratio_leaves_out_resamples_with_a_zero_denominator():
    hits = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    predicted = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    interval = bootstrap_ratio(hits, predicted, resamples=500)
    assert 0.0 <= interval.low <= 0.5 <= interval.high <= 1.0
