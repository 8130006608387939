"""One reader of images and masks for training, evaluation and `evaluate masks` (issue 18, §1, §3.4, §3.10).

Real files written to tmp_path, read by the real readers; ``evaluate masks`` through the in-process CLI.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dlmi.cli.main import run
from dlmi.datasets.loader import EvalImages, ImageDataset
from dlmi.datasets.synthetic import SyntheticDataset
from dlmi.errors import DlmiError
from dlmi.evaluation.masks import evaluate_masks, read_binary_mask
from dlmi.imageio import read_grey, read_mask

LESION = np.zeros((16, 16), dtype=bool)
LESION[4:10, 5:12] = True


def _save(array: np.ndarray, path, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


MASK_KINDS = {
    "label_map_0_1": LESION.astype(np.uint8),
    "label_map_0_2": LESION.astype(np.uint8) * 2,
    "label_map_0_1_2": np.where(LESION, 2, 0).astype(np.uint8) | (np.eye(16, dtype=np.uint8) & ~LESION),
    "grey_0_255": LESION.astype(np.uint8) * 255,
    "sixteen_bit_0_3": LESION.astype(np.uint16) * 3,
    "sixteen_bit_0_65535": LESION.astype(np.uint16) * 65535,
    "rgb_red": np.stack([LESION * 255, 0 * LESION, 0 * LESION], -1).astype(np.uint8),
}


@pytest.mark.parametrize("kind", sorted(MASK_KINDS))
def test_training_and_scoring_read_every_mask_the_same(tmp_path, kind):
    path = _save(MASK_KINDS[kind], tmp_path / f"{kind}.png")
    np.testing.assert_array_equal(read_binary_mask(path), read_mask([path]))


def test_a_0_2_label_map_truth_is_a_lesion_in_evaluate_masks(tmp_path, capsys):
    """Defect 4: a truth stored as a 0/2 label map was scored as an empty mask."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _save(LESION.astype(np.uint8) * 2, truth / "a.png")
    _save(LESION.astype(np.uint8) * 255, pred / "a.png")
    assert read_mask([truth / "a.png"]).sum() == LESION.sum()  # training's reader: a lesion
    out = evaluate_masks(pred, truth, resamples=20, log=lambda m: None)
    assert out["segmentation"]["lesion_dice"]["value"] == 1.0
    assert out["segmentation"]["empty_truth_false_positive_rate"]["n"] == 0


def test_a_mask_neither_binary_nor_a_label_map_is_one_line(tmp_path):
    """Values 3 and 120 (a soft map below half the range): training read all lesion, scoring none."""
    path = _save(np.where(LESION, 120, 3).astype(np.uint8), tmp_path / "soft.png")
    for read in (read_binary_mask, lambda p: read_mask([p])):
        with pytest.raises(DlmiError) as exc:
            read(path)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)
        assert "threshold" in str(exc.value)


# --- 16-bit constant images, multipage TIFF ---------------------------------------------------------------


def test_a_constant_16_bit_image_reads_mid_grey_like_a_window_on_its_one_value(tmp_path):
    for value in (0, 1000, 65535):
        path = _save(np.full((8, 8), value, dtype=np.uint16), tmp_path / f"flat{value}.png")
        assert Image.open(path).mode.startswith("I")
        assert (read_grey(path) == 128).all()


def test_a_multipage_tiff_is_refused_in_one_line(tmp_path):
    pages = [Image.fromarray(np.full((8, 8), v, dtype=np.uint8)) for v in (10, 200)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert Image.open(path).n_frames == 2
    for read in (read_grey, lambda p: read_mask([p]), read_binary_mask):
        with pytest.raises(DlmiError) as exc:
            read(path)
        message = str(exc.value)
        assert str(path) in message and "2 pages" in message and "\n" not in message
    single = tmp_path / "single.tif"
    pages[1].save(single)
    assert (read_grey(single) == 200).all()


# --- evaluate masks: predict's X.png.png pairs with X.png; no pairs is refused ----------------------------


def test_predict_masks_named_x_png_png_pair_with_truth_x_png(tmp_path, capsys):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _save(LESION.astype(np.uint8) * 255, truth / "benign" / "x.png")
    _save(LESION.astype(np.uint8) * 255, truth / "normal" / "y.jpg")
    _save(LESION.astype(np.uint8) * 255, pred / "benign" / "x.png.png")  # dlmi predict's naming
    _save(LESION.astype(np.uint8) * 255, pred / "normal" / "y.jpg.png")
    out = evaluate_masks(pred, truth, resamples=20, log=lambda m: None)
    assert out["context"]["n_images"] == 2
    assert out["context"]["missing_predictions_scored_empty"] == 0
    assert out["segmentation"]["miou_seed"]["value"] == 1.0


def test_no_prediction_pairing_with_any_truth_is_refused(tmp_path, capsys):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _save(LESION.astype(np.uint8) * 255, truth / "a.png")
    _save(LESION.astype(np.uint8) * 255, pred / "other.png")
    capsys.readouterr()
    code = run(["evaluate", "masks", str(pred), str(truth), "--missing-as-empty", "--resamples", "20"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("dlmi: error: ") and str(pred) in lines[0], err
    assert "0 of 1" in lines[0]


# --- one image loader for training and evaluation ---------------------------------------------------------


def test_evaluation_reads_images_through_the_training_loader():
    source = SyntheticDataset(count=6, size=40)
    samples = source.samples()
    assert issubclass(EvalImages, ImageDataset)  # one reading and resizing path, not two
    train, evaluated = ImageDataset(source, samples, 24), EvalImages(source, samples, 24)
    for index in range(len(samples)):
        a, b = train[index], evaluated[index]
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        np.testing.assert_array_equal(a["mask"][0].numpy().astype(bool), b["mask"].numpy())
        assert a["label"] == b["label"] and a["index"] == b["index"] == index
        assert b["mask"].dtype.is_floating_point is False
