"""``dlmi evaluate masks`` on real PNG files written to tmp_path, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from busi_folder import write_busi_folder
from PIL import Image

from dlmi.errors import DlmiError
from dlmi.evaluation.masks import evaluate_masks, read_binary_mask


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


def save(path: Path, mask: np.ndarray, scale: int = 255, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * scale).convert(mode).save(path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Truth and predictions for three images in class folders, with hand-known scores.

    normal/a: empty truth, one false-positive pixel -> IoU 0, Dice 0
    benign/b: 4x4 truth, prediction shifted by 2 -> IoU 8/24, Dice 0.5 (stored as an RGB PNG)
    malignant/c: exact prediction stored as a 0/1 label map -> IoU 1, Dice 1
    """
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    save(truth / "normal" / "a.png", np.zeros((10, 10), bool))
    save(pred / "normal" / "a.png", square(10, 0, 0, 1))
    save(truth / "benign" / "b.png", square(10, 2, 2, 4))
    save(pred / "benign" / "b.png", square(10, 2, 4, 4), mode="RGB")
    save(truth / "malignant" / "c.png", square(10, 5, 5, 3))
    save(pred / "malignant" / "c.png", square(10, 5, 5, 3), scale=1)
    return pred, truth


def test_scores_a_folder_of_pngs_with_the_hand_computed_numbers(cli, folders):
    pred, truth = folders
    result = cli("evaluate", "masks", str(pred), str(truth), "--json", "--resamples", "200")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    seg = out["segmentation"]
    assert out["context"]["n_images"] == 3
    assert seg["miou_seed"]["value"] == pytest.approx((0 + 8 / 24 + 1) / 3)
    assert seg["lesion_dice"]["value"] == pytest.approx((0.5 + 1) / 2)
    assert seg["lesion_dice"]["n"] == 2
    assert seg["per_class"]["normal"]["iou"]["value"] == 0.0
    assert seg["per_class"]["malignant"]["dice"]["value"] == 1.0
    assert "empty-mask rule" in seg["empty_mask_rule"]
    assert seg["miou_seed"]["low"] <= seg["miou_seed"]["value"] <= seg["miou_seed"]["high"]


def test_prints_a_markdown_table_naming_the_rule(cli, folders):
    pred, truth = folders
    result = cli("evaluate", "masks", str(pred), str(truth), "--resamples", "100")
    assert result.returncode == 0, result.stderr
    assert "| seed mIoU (all images; empty truth + empty prediction = 1) | 0.444" in result.stdout
    assert "Seed empty-mask rule:" in result.stdout


def test_a_missing_prediction_is_an_error_unless_scored_as_empty(cli, folders):
    pred, truth = folders
    (pred / "malignant" / "c.png").unlink()
    result = cli("evaluate", "masks", str(pred), str(truth), "--json")
    assert result.returncode == 2
    assert "no prediction for truth" in result.stderr and "c.png" in result.stderr
    assert "Traceback" not in result.stderr
    out = evaluate_masks(pred, truth, missing_as_empty=True, resamples=50)
    assert out["context"]["missing_predictions_scored_empty"] == 1
    assert out["segmentation"]["per_class"]["malignant"]["iou"]["value"] == 0.0


def test_a_size_mismatch_is_an_error_unless_resized(cli, folders):
    pred, truth = folders
    big = np.kron(square(10, 2, 4, 4), np.ones((2, 2), dtype=bool))  # the same prediction at 20x20
    save(pred / "benign" / "b.png", big)
    result = cli("evaluate", "masks", str(pred), str(truth))
    assert result.returncode == 2
    assert "20x20" in result.stderr and "10x10" in result.stderr
    out = evaluate_masks(pred, truth, resize=True, resamples=50)
    assert out["context"]["predictions_resized"] == 1
    assert out["segmentation"]["per_class"]["benign"]["dice"]["value"] == pytest.approx(0.5)


def test_a_prediction_with_another_suffix_is_paired_and_extra_files_are_ignored(tmp_path):
    truth, pred = tmp_path / "t", tmp_path / "p"
    save(truth / "x.png", square(8, 1, 1, 3))
    save(pred / "x.bmp", square(8, 1, 1, 3))
    save(pred / "stray.png", square(8, 1, 1, 3))
    out = evaluate_masks(pred, truth, resamples=20)
    assert out["segmentation"]["miou_seed"]["value"] == 1.0
    assert out["context"]["unpaired_predictions_ignored"] == 1
    assert out["context"]["classes_from_folders"] is None
    save(pred / "x.jpg", square(8, 1, 1, 3))
    with pytest.raises(DlmiError, match="several predictions"):
        evaluate_masks(pred, truth, resamples=20)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DlmiError, match="no image files"):
        evaluate_masks(pred, empty, resamples=20)


def test_binarisation_of_label_maps_grey_masks_and_jpeg_noise(tmp_path):
    values = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "labels.png")
    assert read_binary_mask(tmp_path / "labels.png").tolist() == [[False, True], [True, False]]
    noisy = np.array([[3, 250], [128, 127]], dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "grey.png")
    assert read_binary_mask(tmp_path / "grey.png").tolist() == [[False, True], [True, False]]


def test_evaluate_help_shows_both_forms_with_examples(cli):
    result = cli("evaluate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "dlmi evaluate RUN_DIR" in text and "dlmi evaluate masks PRED_DIR TRUTH_DIR" in text
    assert "Examples:" in text


# --- the binarisation of docs/metrics.md, and masks that are really images (issue 10, item 13) ---------


def test_soft_masks_are_binarised_as_docs_metrics_md_says(tmp_path):
    from dlmi.evaluation.masks import BINARISE_RULE

    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text().split())
    assert BINARISE_RULE in doc  # the rule the result reports is the rule the documentation states
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    lesion = square(16, 4, 4, 6)
    save(truth / "lesion.png", lesion)
    save(truth / "empty.png", np.zeros((16, 16), bool))
    soft = np.where(lesion, 120, 3).astype(np.uint8)  # every value below half the range, no label map
    pred.mkdir()
    Image.fromarray(soft).save(pred / "lesion.png")
    Image.fromarray(soft).save(pred / "empty.png")
    with pytest.raises(DlmiError, match="threshold it"):  # refused, not silently empty (issue 18, defect 4)
        read_binary_mask(pred / "lesion.png")
    Image.fromarray(np.where(lesion, 255, 3).astype(np.uint8)).save(pred / "lesion.png")
    Image.fromarray(np.full((16, 16), 3, np.uint8)).save(pred / "empty.png")  # a label map: 3 is lesion
    out = evaluate_masks(pred, truth, resamples=20, log=lambda m: None)
    per_image = out["segmentation"]
    assert per_image["empty_truth_false_positive_rate"]["value"] == 1.0
    assert per_image["lesion_dice"]["value"] == 1.0
    assert out["context"]["binarise_rule"] == BINARISE_RULE


def test_a_folder_of_scans_scored_as_truth_is_warned_about(tmp_path):
    busi = write_busi_folder(tmp_path / "busi", per_class=2, size=32)
    pred = tmp_path / "pred"
    for mask in busi.rglob("*_mask.png"):
        target = pred / mask.relative_to(busi)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(mask.read_bytes())
    messages: list[str] = []
    out = evaluate_masks(pred, busi, missing_as_empty=True, resamples=20, log=messages.append)
    assert len(messages) == 1 and str(busi) in messages[0] and "look like images" in messages[0]
    assert "BUSI layout" in messages[0]
    assert out["context"]["warnings"] == messages
    clean: list[str] = []
    evaluate_masks(pred, pred, resamples=20, log=clean.append)  # masks against themselves: no warning
    assert clean == []
