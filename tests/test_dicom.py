"""DICOM in: real files written by pydicom (and pydicom's own bundled test files where they are on disk),
read through dlmi.dicom, dlmi.imageio and the busi folder loader."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_files import (
    PATIENT,
    write_dicom,
    write_encapsulated,
    write_jpeg_dicom,
    write_without_image,
)
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import MPEG4HP41, JPEG2000Lossless, RLELossless

from dlmi.dicom import (
    DicomReference,
    dicom_references,
    is_dicom_file,
    iter_dicom_frames,
    read_dicom_grey,
)
from dlmi.discovery import find_images
from dlmi.errors import DlmiError
from dlmi.imageio import image_size, image_stem, is_image_file, read_grey, read_mask
from dlmi.plugins import get_dataset

BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"


def bundled(name: str) -> Path:
    path = BUNDLED / name
    if not path.is_file():
        pytest.skip(f"pydicom's test file {name} is not on disk here")
    return path


def grey_ramp(rows: int = 24, columns: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, columns), dtype=np.uint8)


def one_line_error(call, *args) -> str:
    with pytest.raises(DlmiError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- the grey pipeline ---------------------------------------------------------------------------------


def test_8bit_monochrome_reads_exactly_like_the_same_png(tmp_path):
    pixels = grey_ramp()
    Image.fromarray(pixels).save(tmp_path / "scan.png")
    write_dicom(tmp_path / "scan.dcm", pixels)
    np.testing.assert_array_equal(read_grey(tmp_path / "scan.dcm"), read_grey(tmp_path / "scan.png"))
    assert image_size(tmp_path / "scan.dcm") == (32, 24)


def test_monochrome1_is_inverted(tmp_path):
    pixels = grey_ramp()
    write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_grey(tmp_path / "m1.dcm"), 255 - pixels)


def test_rescale_then_window_center_width(tmp_path):
    # Stored s; modality value (HU) = 2 s - 1000. Window 40 / 400 (LINEAR, PS3.3 C.11.2.1.2.1).
    hu = np.array([[-1000, -160, 40, 140, 240, 1000]], dtype=np.int64)
    stored = ((hu + 1000) // 2).astype(np.uint16)
    write_dicom(tmp_path / "ct.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                WindowCenter=40, WindowWidth=400)
    grey = read_grey(tmp_path / "ct.dcm")
    # y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped: x <= -160 → 0; 40 → 127.8; 140 → 191.7;
    # x > c - 0.5 + (w - 1) / 2 = 239 → 255
    assert grey.tolist() == [[0, 0, 128, 192, 255, 255]]


@pytest.mark.parametrize(("function", "expected"), [("LINEAR_EXACT", [0, 64, 128, 191, 255]),
                                                    ("SIGMOID", [30, 69, 128, 186, 225])])
def test_voi_lut_functions(tmp_path, function, expected):
    values = np.array([[0, 50, 100, 150, 200]], dtype=np.uint16)
    write_dicom(tmp_path / "w.dcm", values, bits_stored=10, WindowCenter=100, WindowWidth=200,
                VOILUTFunction=function)
    # LINEAR_EXACT: (x - c) / w + 0.5; SIGMOID: 1 / (1 + exp(-4 (x - c) / w)); times 255
    assert read_grey(tmp_path / "w.dcm").tolist() == [expected]


def test_voi_lut_sequence_is_applied(tmp_path):
    values = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first stored value 0, 8 bits per entry
    item.add_new(0x00283006, "US", [255, 200, 100, 0])  # LUT Data
    write_dicom(tmp_path / "lut.dcm", values, bits_stored=2, VOILUTSequence=Sequence([item]),
                WindowCenter=1000, WindowWidth=1)  # the LUT wins over the window
    assert read_grey(tmp_path / "lut.dcm").tolist() == [[255, 200, 100, 0]]


def test_wide_data_without_a_window_are_stretched(tmp_path):
    values = np.array([[1000, 1500, 3000]], dtype=np.uint16)
    write_dicom(tmp_path / "wide.dcm", values, bits_stored=12)
    assert read_grey(tmp_path / "wide.dcm").tolist() == [[0, 64, 255]]


def test_rgb_is_grey_as_pillow_converts_it(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    write_dicom(tmp_path / "rgb.dcm", rgb)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_grey(tmp_path / "rgb.dcm"), read_grey(tmp_path / "rgb.png"))


def test_ybr_jpeg_ultrasound_cine_frame_by_frame(tmp_path):
    rng = np.random.default_rng(2)
    base = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # smooth blocks
    frames = [np.clip(base.astype(int) + 20 * k, 0, 255).astype(np.uint8) for k in range(4)]
    path = write_jpeg_dicom(tmp_path / "cine.dcm", frames)
    read = list(iter_dicom_frames(path))
    assert [f.reference.frame for f in read] == [1, 2, 3, 4]
    assert {f.reference.frames for f in read} == {4}
    assert len({(f.reference.sop_instance_uid, f.reference.series_instance_uid) for f in read}) == 1
    for frame, rgb in zip(read, frames, strict=True):
        expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), dtype=float)
        assert frame.grey.shape == (48, 64) and frame.grey.dtype == np.uint8
        assert np.abs(frame.grey.astype(float) - expected).mean() < 4  # JPEG is lossy; colour was converted
    np.testing.assert_array_equal(read_dicom_grey(path, frame=3), read[2].grey)
    assert "multi-frame DICOM (4 frames)" in one_line_error(read_grey, path)
    assert "frame 5 does not exist" in one_line_error(read_dicom_grey, path, 5)


def test_multi_frame_monochrome_with_per_frame_windows(tmp_path):
    values = np.stack([np.full((4, 4), 100, np.uint16), np.full((4, 4), 100, np.uint16)])
    groups = []
    for center in (100, 0):  # frame 1: at the centre, ((100 - 99.5) / 49 + 0.5) * 255 = 130; frame 2: above
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, 50
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        groups.append(group)
    path = write_dicom(tmp_path / "enhanced.dcm", values, bits_stored=12,
                       PerFrameFunctionalGroupsSequence=Sequence(groups))
    greys = [f.grey for f in iter_dicom_frames(path)]
    assert [int(g[0, 0]) for g in greys] == [130, 255]


# --- transfer syntaxes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_lossless_compressed_files_read_back_exactly(tmp_path, syntax):
    pixels = grey_ramp(64, 80, seed=3)  # OpenJPEG's default 6 resolution levels need sides of 64 or more
    path = write_dicom(tmp_path / "c.dcm", pixels, compress=syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_grey(path), pixels)


def test_undecodable_transfer_syntax_is_one_line_naming_it(tmp_path):
    path = write_encapsulated(tmp_path / "video.dcm", MPEG4HP41)
    message = one_line_error(read_grey, path)
    assert str(path) in message and "MPEG-4 AVC/H.264 High Profile / Level 4.1" in message
    assert "1.2.840.10008.1.2.4.102" in message
    assert "1.2.840.10008.1.2.4.102" in one_line_error(lambda p: list(iter_dicom_frames(p)), path)


def test_jpeg_ls_decodes_or_names_what_is_missing():
    """JPEG-LS needs python-gdcm (the dicom-lossless extra): it decodes like the uncompressed original, or
    the error names the transfer syntax and the package to install."""
    path, original = bundled("MR_small_jpeg_ls_lossless.dcm"), bundled("MR_small.dcm")
    from pydicom.pixels import get_decoder

    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        np.testing.assert_array_equal(read_grey(path), read_grey(original))
    else:
        message = one_line_error(read_grey, path)
        assert "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in message
        assert "python-gdcm" in message


def test_bundled_files_in_every_encoding_agree():
    reference = read_grey(bundled("MR_small.dcm"))
    assert reference.shape == (64, 64) and reference.min() < 100 and reference.max() == 255  # windowed
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                 "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(read_grey(bundled(name)), reference)


def test_bundled_ultrasound_cine():
    path = bundled("examples_ybr_color.dcm")  # YBR_FULL_422 JPEG baseline, 30 frames
    references = dicom_references(path)
    assert len(references) == 30 and references[-1].frame == 30
    first = next(iter_dicom_frames(path))
    assert first.grey.shape == (240, 320) and first.reference == references[0]


# --- identifiers, files, errors -------------------------------------------------------------------------


def test_references_carry_no_patient_identifiers(tmp_path):
    pixels = np.stack([grey_ramp(seed=s) for s in range(3)])
    path = write_dicom(tmp_path / "cine.dcm", pixels)
    assert pydicom.dcmread(path).PatientID == PATIENT["PatientID"]  # the file does hold them
    assert [f.name for f in dataclasses.fields(DicomReference)] == [
        "sop_instance_uid", "series_instance_uid", "frame", "frames"]
    frames = list(iter_dicom_frames(path))
    text = json.dumps([f.reference.as_dict() for f in frames] + [r.as_dict() for r in dicom_references(path)])
    for value in PATIENT.values():
        assert value not in text and value.split("^")[0] not in text
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert frames[0].reference.sop_instance_uid == header.SOPInstanceUID
    assert frames[0].reference.series_instance_uid == header.SeriesInstanceUID


def test_dicom_files_without_a_suffix_are_found_by_their_marker(tmp_path):
    pixels = grey_ramp(seed=4)
    named = {"IM0001": True, "1.2.840.113619.2.55.3": True, "scan.DCM": True, "scan.png": True}
    for name in named:
        if name.endswith(".png"):
            Image.fromarray(pixels).save(tmp_path / name)
        else:
            write_dicom(tmp_path / name, pixels)
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "notes.123").write_text("not DICOM either, though numbered")
    (tmp_path / "short").write_bytes(b"DICM")
    assert [is_dicom_file(tmp_path / n) for n in ("IM0001", "1.2.840.113619.2.55.3", "README", "notes.123",
                                                   "short", "scan.png")] == [True, True, False, False,
                                                                             False, False]
    assert all(is_image_file(tmp_path / n) for n in named)
    assert sorted(str(p) for p in find_images(tmp_path)) == sorted(named)
    for name in named:
        np.testing.assert_array_equal(read_grey(tmp_path / name), pixels)
    assert image_stem(tmp_path / "1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"
    assert image_stem(tmp_path / "scan.DCM") == "scan" and image_stem(tmp_path / "IM0001") == "IM0001"


def test_a_file_without_the_preamble_is_read(tmp_path):
    pixels = grey_ramp(seed=5)
    path = write_dicom(tmp_path / "old.dcm", pixels, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_grey(path), pixels)


def test_broken_files_are_one_line_errors_naming_them(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", grey_ramp())
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-200])
    png = tmp_path / "png.dcm"
    Image.fromarray(grey_ramp()).save(png, format="PNG")
    report = write_without_image(tmp_path / "report.dcm")
    cases = {truncated: "cannot decode", png: "not a readable DICOM file", report: "without an image",
             tmp_path / "absent.dcm": "file not found"}
    for path, expected in cases.items():
        message = one_line_error(read_grey, path)
        assert message.startswith(f"{path}: ") and expected in message


def test_dicom_masks_are_binarised_like_png_masks(tmp_path):
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:6, 3:9] = 255
    write_dicom(tmp_path / "m.dcm", mask)
    labels = (mask > 0).astype(np.uint8)  # a 0/1 label map
    write_dicom(tmp_path / "labels.dcm", labels)
    np.testing.assert_array_equal(read_mask([tmp_path / "m.dcm"]), mask > 0)
    np.testing.assert_array_equal(read_mask([tmp_path / "labels.dcm"], size=(12, 10)), mask > 0)
    assert "mask is 12x10 but its image is 10x10" in one_line_error(read_mask, [tmp_path / "m.dcm"], (10, 10))


# --- the busi folder loader ------------------------------------------------------------------------------


def test_busi_folder_of_dicom_images_with_png_masks(tmp_path):
    """A PACS export beside PNG masks: .dcm, suffix-less and UID-named images read like the PNGs they were."""
    root = tmp_path / "busi"
    originals = {}
    for label, (name, stem, writer) in enumerate([("normal", "n1", "png"), ("benign", "b1", "dcm"),
                                                  ("malignant", "1.2.826.0.7", "uid")]):
        folder = root / name
        folder.mkdir(parents=True)
        pixels = grey_ramp(seed=10 + label)
        mask = np.zeros(pixels.shape, dtype=np.uint8)
        if label:
            mask[5:15, 8:20] = 255
        if writer == "png":
            image_path = folder / f"{stem}.png"
            Image.fromarray(pixels).save(image_path)
        else:
            image_path = write_dicom(folder / (f"{stem}.dcm" if writer == "dcm" else stem), pixels)
        Image.fromarray(mask).save(folder / f"{stem}_mask.png")
        originals[f"{name}/{image_path.name}"] = (pixels, mask > 0)
    source = get_dataset("busi")
    samples = source.samples(root)
    assert [s.key for s in samples] == list(originals)
    for sample in samples:
        image, mask = source.load(sample)
        np.testing.assert_array_equal(image, originals[sample.key][0])
        np.testing.assert_array_equal(mask, originals[sample.key][1])
        assert [m.name for m in sample.mask_paths] == [f"{image_stem(sample.image_path)}_mask.png"]


def test_busi_refuses_a_multi_frame_image_in_one_line(tmp_path):
    root = tmp_path / "busi"
    for name in ("normal", "benign", "malignant"):
        (root / name).mkdir(parents=True)
        Image.fromarray(grey_ramp()).save(root / name / "a.png")
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / name / "a_mask.png")
    write_dicom(root / "normal" / "cine.dcm", np.stack([grey_ramp(), grey_ramp(seed=1)]))
    source = get_dataset("busi")
    cine = next(s for s in source.samples(root) if s.key == "normal/cine.dcm")
    message = one_line_error(source.load, cine)
    assert "cine.dcm" in message and "multi-frame" in message
