"""Odd and broken inputs: every image mode in, grey or bool out; every failure one line naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlmi.errors import DlmiError
from dlmi.imageio import image_size, read_grey, read_mask
from dlmi.plugins import get_dataset

RNG = np.random.default_rng(7)
GREY = RNG.integers(0, 256, (24, 32), dtype=np.uint8)


def _save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _assert_one_line_naming(exc: pytest.ExceptionInfo[DlmiError], path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message


# ---- images of every mode ------------------------------------------------------------------------------


def test_grey_png_reads_back_exactly(tmp_path):
    path = _save(Image.fromarray(GREY), tmp_path / "grey.png")
    out = read_grey(path)
    assert out.dtype == np.uint8 and out.shape == (24, 32)
    np.testing.assert_array_equal(out, GREY)


def test_rgb_becomes_luminance(tmp_path):
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    path = _save(Image.fromarray(rgb), tmp_path / "rgb.png")
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(read_grey(path), expected)


def test_rgb_with_equal_channels_equals_its_grey(tmp_path):
    path = _save(Image.fromarray(np.stack([GREY] * 3, axis=-1)), tmp_path / "rgb_grey.png")
    np.testing.assert_array_equal(read_grey(path), GREY)


def test_rgba_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((24, 32, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :16, 3] = 255  # left half opaque, right half fully transparent
    path = _save(Image.fromarray(rgba), tmp_path / "rgba.png")
    out = read_grey(path)
    assert (out[:, :16] == 200).all()
    assert (out[:, 16:] == 0).all()


def test_palette_image_reads_its_colours(tmp_path):
    palette_image = Image.fromarray(GREY).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    path = _save(palette_image, tmp_path / "palette.png")
    assert Image.open(path).mode == "P"
    expected = np.asarray(palette_image.convert("RGB").convert("L"))
    np.testing.assert_array_equal(read_grey(path), expected)


def test_16_bit_image_is_stretched_from_its_min_to_max(tmp_path):
    wide = np.linspace(100, 4095, 24 * 32).reshape(24, 32).astype(np.uint16)  # 12-bit data in 16 bits
    path = _save(Image.fromarray(wide), tmp_path / "wide.png")
    assert Image.open(path).mode.startswith("I")
    out = read_grey(path)
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert (np.diff(out.ravel().astype(int)) >= 0).all()  # order of intensities is kept


def test_constant_16_bit_image_is_mid_grey_not_nan(tmp_path):
    path = _save(Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)), tmp_path / "flat.png")
    assert (read_grey(path) == 128).all()  # a window centred on its one value (issue 18, defect 10)


def test_1_bit_image_reads_as_0_and_255(tmp_path):
    bits = GREY > 127
    path = _save(Image.fromarray(bits), tmp_path / "bits.png")
    out = read_grey(path)
    np.testing.assert_array_equal(out, np.where(bits, 255, 0))


def test_jpeg_reads_close_to_its_source(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32), (24, 1)).astype(np.uint8)
    path = _save(Image.fromarray(smooth).convert("RGB"), tmp_path / "photo.JPG", format="JPEG", quality=95)
    out = read_grey(path)
    assert out.shape == (24, 32)
    assert np.abs(out.astype(int) - smooth).mean() < 3


def test_image_size_reads_the_header(tmp_path):
    path = _save(Image.fromarray(GREY), tmp_path / "grey.png")
    assert image_size(path) == (32, 24)


# ---- masks of every mode -------------------------------------------------------------------------------

LESION = np.zeros((24, 32), dtype=bool)
LESION[5:15, 8:20] = True


@pytest.mark.parametrize(
    "name, make",
    [
        ("one_bit", lambda: Image.fromarray(LESION)),
        ("grey_0_255", lambda: Image.fromarray(LESION.astype(np.uint8) * 255)),
        ("label_map_0_1", lambda: Image.fromarray(LESION.astype(np.uint8))),
        ("red_on_black", lambda: Image.fromarray(np.stack([LESION * 255, 0 * LESION, 0 * LESION], -1)
                                                 .astype(np.uint8))),
        ("rgba_white", lambda: Image.fromarray(np.dstack([np.stack([LESION * 255] * 3, -1),
                                                          np.full(LESION.shape, 255)]).astype(np.uint8))),
        ("palette", lambda: Image.fromarray(LESION.astype(np.uint8) * 255).convert("P")),
        ("sixteen_bit", lambda: Image.fromarray(LESION.astype(np.uint16) * 65535)),
    ],
)
def test_masks_of_any_mode_are_binarised(tmp_path, name, make):
    path = _save(make(), tmp_path / f"{name}_mask.png")
    mask = read_mask([path], size=(32, 24))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, LESION)


def test_jpeg_mask_ringing_is_not_lesion(tmp_path):
    path = _save(Image.fromarray(LESION.astype(np.uint8) * 255), tmp_path / "m_mask.jpg", quality=60)
    raw = np.asarray(Image.open(path))
    assert ((raw > 0) & (raw < 128) & ~LESION).any()  # the JPEG really has ringing outside the lesion
    mask = read_mask([path])
    assert (mask != LESION).mean() < 0.02


def test_several_masks_are_or_merged(tmp_path):
    second = np.zeros_like(LESION)
    second[18:22, 2:6] = True
    first_path = _save(Image.fromarray(LESION), tmp_path / "x_mask.png")
    second_path = _save(Image.fromarray(second.astype(np.uint8) * 255), tmp_path / "x_mask_1.png")
    np.testing.assert_array_equal(read_mask([first_path, second_path]), LESION | second)


# ---- broken files: one line naming the file --------------------------------------------------------------


def test_corrupt_png_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not a png at all")
    with pytest.raises(DlmiError) as exc:
        read_grey(path)
    _assert_one_line_naming(exc, path)
    with pytest.raises(DlmiError) as exc:
        image_size(path)
    _assert_one_line_naming(exc, path)


def test_truncated_png_names_the_file(tmp_path):
    good = _save(Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)), tmp_path / "good.png")
    path = tmp_path / "truncated.png"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DlmiError) as exc:
        read_grey(path)
    _assert_one_line_naming(exc, path)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.png"
    with pytest.raises(DlmiError) as exc:
        read_grey(path)
    _assert_one_line_naming(exc, path)
    assert "not found" in str(exc.value)


def test_wrong_size_mask_names_the_mask_and_both_sizes(tmp_path):
    path = _save(Image.fromarray(np.zeros((20, 30), dtype=bool)), tmp_path / "x_mask.png")
    with pytest.raises(DlmiError) as exc:
        read_mask([path], size=(32, 24))
    _assert_one_line_naming(exc, path)
    assert "30x20" in str(exc.value) and "32x24" in str(exc.value)


def test_second_mask_of_other_size_than_first_names_it(tmp_path):
    first = _save(Image.fromarray(LESION), tmp_path / "x_mask.png")
    second = _save(Image.fromarray(np.zeros((10, 10), dtype=bool)), tmp_path / "x_mask_1.png")
    with pytest.raises(DlmiError) as exc:
        read_mask([first, second])
    _assert_one_line_naming(exc, second)


# ---- broken dataset folders -----------------------------------------------------------------------------


def _busi(root: Path, classes=("normal", "benign", "malignant"), *, masks: bool = True) -> Path:
    """A tiny BUSI-layout folder: two images per class with their masks."""
    for name in classes:
        for i in (1, 2):
            _save(Image.fromarray(GREY), root / name / f"{name} ({i}).png")
            if masks:
                mask = LESION if name != "normal" else np.zeros_like(LESION)
                _save(Image.fromarray(mask), root / name / f"{name} ({i})_mask.png")
    return root


def test_busi_wrong_size_mask_is_found_on_load(tmp_path):
    root = _busi(tmp_path / "busi")
    bad = _save(Image.fromarray(np.zeros((10, 10), dtype=bool)), root / "benign" / "benign (2)_mask.png")
    source = get_dataset("busi")
    sample = next(s for s in source.samples(root) if s.key == "benign/benign (2).png")
    with pytest.raises(DlmiError) as exc:
        source.load(sample)
    _assert_one_line_naming(exc, bad)


def test_busi_missing_mask_names_the_image(tmp_path):
    root = _busi(tmp_path / "busi")
    (root / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(DlmiError) as exc:
        get_dataset("busi").samples(root)
    _assert_one_line_naming(exc, root / "malignant" / "malignant (2).png")
    assert "malignant (2)_mask.png" in str(exc.value)


def test_busi_normal_image_without_mask_file_has_an_empty_mask(tmp_path):
    root = _busi(tmp_path / "busi")
    (root / "normal" / "normal (1)_mask.png").unlink()
    source = get_dataset("busi")
    sample = next(s for s in source.samples(root) if s.key == "normal/normal (1).png")
    image, mask = source.load(sample)
    assert mask is not None and mask.shape == image.shape and not mask.any()


def test_busi_mask_without_image_names_the_mask(tmp_path):
    root = _busi(tmp_path / "busi")
    orphan = _save(Image.fromarray(LESION), root / "benign" / "benign (9)_mask.png")
    with pytest.raises(DlmiError) as exc:
        get_dataset("busi").samples(root)
    _assert_one_line_naming(exc, orphan)


def test_unreadable_image_names_the_file_on_load(tmp_path):
    root = _busi(tmp_path / "busi")
    broken = root / "benign" / "benign (1).png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    source = get_dataset("busi")
    sample = next(s for s in source.samples(root) if s.key == "benign/benign (1).png")
    with pytest.raises(DlmiError) as exc:
        source.load(sample)
    _assert_one_line_naming(exc, broken)


@pytest.mark.parametrize(
    "dataset, build, points_at, expected",
    [
        ("busi", lambda r: _busi(r), lambda r: r / "benign", "class folder"),
        ("busi", lambda r: _busi(r / "Dataset_BUSI_with_GT"), lambda r: r, "Dataset_BUSI_with_GT"),
        ("busi", lambda r: _busi(r, ("benign", "malignant")), lambda r: r, "normal/"),
        ("busi", lambda r: r.mkdir(), lambda r: r, "empty"),
        ("busi", lambda r: None, lambda r: r / "absent", "no such folder"),
        ("brain-mri", lambda r: [(r / c).mkdir(parents=True) for c in ("no", "yes")], lambda r: r,
         "no image files"),
        ("brain-mri", lambda r: [(r / c).mkdir(parents=True) for c in ("No", "yes")], lambda r: r,
         "'No' should be 'no'"),
    ],
    ids=["class-folder-given", "outer-archive-folder", "missing-class", "empty", "absent", "empty-class",
         "wrong-case"],
)
def test_wrong_layout_is_one_line_naming_the_folder_and_layout(tmp_path, dataset, build, points_at, expected):
    root = tmp_path / "data"
    build(root)
    source = get_dataset(dataset)
    with pytest.raises(DlmiError) as exc:
        source.samples(points_at(root))
    message = str(exc.value)
    assert "\n" not in message
    assert expected in message
    assert source.expected_layout in message
