"""``dlmi predict --dicom-seg / --dicom-sr`` (issue 19 §2): DICOM Segmentation and Comprehensive SR outputs.

Real exported ONNX models (``test_export_helpers``: a brightness gate, so a dark image is gated with an
empty mask), real ultrasound DICOM files written with pydicom (single frame and cine, with and without a
frame of reference), the outputs read back with highdicom and pydicom and checked by dicom3tools'
``dciodvfy`` where it is installed (the test command installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_files import write_ultrasound
from PIL import Image
from pydicom import dcmread
from pydicom.uid import ComprehensiveSRStorage, SegmentationStorage
from test_export_helpers import exported_models, make_checkpoints

from dlmi.cli.main import run
from dlmi.digest import file_digest
from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.inference.predictor import open_predictor

hd = pytest.importorskip("highdicom")

DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


@pytest.fixture(scope="module")
def classifier_only(tmp_path_factory) -> Path:
    from dlmi.export.onnx_export import export_onnx

    base = tmp_path_factory.mktemp("classifier-only")
    cls_path, _ = make_checkpoints(base / "checkpoints")
    export_onnx(cls_path, None, base / "models")
    return base / "models"


def bright(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(90, 255, shape, dtype=np.uint8)


def dark(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 20, shape, dtype=np.uint8)


def predict(folder: Path, out: Path, models: Path, *, aided: bool = False, log: list[str] | None = None,
            **options) -> object:
    predictor = open_predictor([models], aided=aided)
    settings = PredictSettings(aided=aided, **options)
    return predict_folder(folder, out, predictor, settings,
                          log=(log.append if log is not None else lambda message: None))


def dciodvfy_errors(path: Path) -> tuple[list[str], int]:
    """dciodvfy's error lines and its count of warnings (skipped, as no errors, where it is not installed)."""
    if DCIODVFY is None:
        return [], 0
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    warnings = sum(line.startswith("Warning") for line in lines)
    return [line for line in lines if line.startswith("Error")], warnings


def mask_png(out: Path, stem: str) -> np.ndarray:
    return np.asarray(Image.open(out / "masks" / f"{stem}.png").convert("L")) > 0


def segment_codes(seg) -> dict[str, tuple[str, str, str]]:
    item = seg.SegmentSequence[0]

    def triple(sequence) -> tuple[str, str, str]:
        return (sequence[0].CodeValue, sequence[0].CodingSchemeDesignator, sequence[0].CodeMeaning)

    return {"category": triple(item.SegmentedPropertyCategoryCodeSequence),
            "type": triple(item.SegmentedPropertyTypeCodeSequence),
            "region": triple(item.AnatomicRegionSequence)}


KINDS = {"single-frame": (None, True), "single-frame-no-FoR": (None, False),
         "cine": (4, True), "cine-no-FoR": (4, False)}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_seg_equals_the_masks_and_references_the_source(exported, tmp_path, kind):
    models, _, _ = exported
    frames, with_for = KINDS[kind]
    shape = (frames, 40, 52) if frames else (40, 52)
    pixels = bright(shape)
    if frames:
        pixels[1] = dark(shape[1:])  # a dark frame: the gate empties its mask
    source = write_ultrasound(tmp_path / "scans" / "sub" / "us.dcm", pixels, frame_of_reference=with_for,
                              patient_name="Roe^Richard")
    out = tmp_path / "out"
    summary = predict(tmp_path / "scans", out, models, aided=True, dicom_seg=True, dicom_sr=True)
    assert not summary.failed, summary.failed

    seg_file = out / "dicom" / "sub" / "us.dcm.dcm"
    seg = dcmread(seg_file)
    src = dcmread(source)
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    stems = [f"sub/us.dcm/frame-{n:04d}" for n in range(1, frames + 1)] if frames else ["sub/us.dcm"]
    pngs = np.stack([mask_png(out, stem) for stem in stems])
    assert pngs.any() and seg.NumberOfFrames == len(stems)
    assert np.array_equal(seg.pixel_array.reshape(pngs.shape).astype(bool), pngs)
    if frames:
        assert not pngs[1].any()  # the gated frame is an empty frame of the segment, kept
    # the references: study, series, instance (and each source frame), the frame of reference, the patient
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    series = seg.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    derived = [item.DerivationImageSequence[0].SourceImageSequence[0] for item in
               seg.PerFrameFunctionalGroupsSequence]
    assert {d.ReferencedSOPInstanceUID for d in derived} == {src.SOPInstanceUID}
    assert {d.ReferencedSOPClassUID for d in derived} == {src.SOPClassUID}
    if frames:
        assert [int(d.ReferencedFrameNumber) for d in derived] == list(range(1, frames + 1))
    assert seg.get("FrameOfReferenceUID") == src.get("FrameOfReferenceUID")
    assert (seg.PatientName, seg.PatientID, seg.StudyID) == (src.PatientName, src.PatientID, src.StudyID)
    # the segment: lesion, coded by the dataset plugin (busi: a mass in the breast), made by dlmi
    from dlmi import __version__

    assert seg.SegmentSequence[0].SegmentLabel == "lesion"
    assert segment_codes(seg) == {"category": ("49755003", "SCT", "Morphologically Abnormal Structure"),
                                  "type": ("4147007", "SCT", "Mass"), "region": ("76752008", "SCT", "Breast")}
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("dlmi", __version__)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert file_digest(models / "two_stage.onnx") in algorithm.AlgorithmParameters
    # highdicom reads it back: the pixels by source frame are the masks
    read = hd.seg.segread(seg_file)
    if frames:
        by_source = read.get_pixels_by_source_frame(src.SOPInstanceUID, segment_numbers=[1],
                                                    source_frame_numbers=list(range(1, frames + 1)))
    else:
        by_source = read.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])
    assert np.array_equal(by_source[..., 0].astype(bool), pngs)
    errors, _ = dciodvfy_errors(seg_file)
    assert not errors, errors

    sr_file = out / "dicom-sr" / "sub" / "us.dcm.dcm"
    sr = dcmread(sr_file)
    assert sr.SOPClassUID == ComprehensiveSRStorage
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        src.SOPInstanceUID
    errors, _ = dciodvfy_errors(sr_file)
    assert not errors, errors


def sr_findings(path: Path) -> list[tuple[str, dict[str, float]]]:
    """Each measurement group's finding (class) and probabilities, in order, read back with highdicom (the
    groups, their measurements) and pydicom (the finding's coded value)."""
    found = []
    for group in hd.sr.srread(path).content.get_image_measurement_groups():
        classes = [item.ConceptCodeSequence[0].CodeMeaning for item in group[0].ContentSequence
                   if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "121071"]
        probabilities = {m.name.meaning.removeprefix("Probability of "): float(m.value)
                         for m in group.get_measurements()}
        found.append((classes[0], probabilities))
    return found


def test_sr_holds_each_frames_class_and_probabilities(exported, tmp_path):
    models, _, _ = exported
    cine = bright((3, 36, 44))
    cine[2] = dark((36, 44))
    write_ultrasound(tmp_path / "scans" / "cine.dcm", cine)
    out = tmp_path / "out"
    predict(tmp_path / "scans", out, models, aided=True, dicom_sr=True)
    records = json.loads((out / "predictions.json").read_text())["predictions"]
    found = sr_findings(out / "dicom-sr" / "cine.dcm.dcm")
    assert [c for c, _ in found] == [r["class"] for r in records] and found[2][0] == "normal"
    for (_, probabilities), record in zip(found, records, strict=True):
        assert probabilities == pytest.approx(record["probabilities"], abs=1e-6)
    assert not (out / "dicom").exists()  # no --dicom-seg, no SEG


def test_a_gated_single_frame_gives_a_valid_seg_with_an_empty_segment(exported, tmp_path):
    models, _, _ = exported
    write_ultrasound(tmp_path / "scans" / "dark.dcm", dark((30, 30)), frame_of_reference=False)
    out = tmp_path / "out"
    predict(tmp_path / "scans", out, models, aided=True, dicom_seg=True)
    assert json.loads((out / "predictions.json").read_text())["predictions"][0]["gated"] is True
    seg = dcmread(out / "dicom" / "dark.dcm.dcm")
    assert seg.NumberOfFrames == 1 and not seg.pixel_array.any() and seg.pixel_array.shape == (30, 30)
    errors, _ = dciodvfy_errors(out / "dicom" / "dark.dcm.dcm")
    assert not errors, errors


def test_a_rerun_writes_a_missing_seg_without_predicting_again_and_drops_stale_ones(exported, tmp_path):
    models, _, _ = exported
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_ultrasound(scans / "a.dcm", bright((3, 32, 32)))
    write_ultrasound(scans / "b.dcm", bright((32, 32), seed=1))
    predict(scans, out, models, dicom_seg=True)
    seg_a, seg_b = out / "dicom" / "a.dcm.dcm", out / "dicom" / "b.dcm.dcm"
    assert seg_a.is_file() and seg_b.is_file()
    before = dcmread(seg_b).SOPInstanceUID
    seg_a.unlink()
    summary = predict(scans, out, models, dicom_seg=True)
    assert summary.predicted == 0 and summary.skipped == 4
    assert np.array_equal(dcmread(seg_a).pixel_array.astype(bool),
                          np.stack([mask_png(out, f"a.dcm/frame-{n:04d}") for n in (1, 2, 3)]))
    assert dcmread(seg_b).SOPInstanceUID == before  # done and present: left as it is
    # a source changed since: its frames are predicted again and its SEG written anew
    write_ultrasound(scans / "b.dcm", bright((32, 32), seed=2))
    summary = predict(scans, out, models, dicom_seg=True)
    assert summary.predicted == 1 and dcmread(seg_b).SOPInstanceUID != before
    assert np.array_equal(dcmread(seg_b).pixel_array.astype(bool), mask_png(out, "b.dcm"))
    # an input gone: its SEG goes with its masks
    (scans / "a.dcm").unlink()
    predict(scans, out, models, dicom_seg=True)
    assert not seg_a.exists() and not (out / "masks" / "a.dcm").exists() and seg_b.is_file()


def test_non_dicom_inputs_get_no_dicom_output_said_once(exported, tmp_path):
    models, _, _ = exported
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(bright((30, 30))).save(scans / name)
    write_ultrasound(scans / "c.dcm", bright((30, 30)))
    log: list[str] = []
    predict(scans, tmp_path / "out", models, dicom_seg=True, log=log)
    said = [line for line in log if "not DICOM" in line]
    assert len(said) == 1 and "2 input file(s)" in said[0], log
    assert [p.name for p in (tmp_path / "out" / "dicom").rglob("*.dcm")] == ["c.dcm.dcm"]


def test_cli_classifier_alone_refuses_dicom_seg_and_writes_dicom_sr(classifier_only, tmp_path, capsys):
    scans = tmp_path / "scans"
    write_ultrasound(scans / "c.dcm", bright((30, 30)))
    code = run(["predict", str(scans), "--models", str(classifier_only), "--out", str(tmp_path / "o1"),
                "--dicom-seg"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--dicom-seg" in lines[0] and "only a classifier" in lines[0]
    code = run(["predict", str(scans), "--models", str(classifier_only), "--out", str(tmp_path / "o2"),
                "--dicom-sr"])
    out = capsys.readouterr().out
    assert code == 0 and "dicom-sr" in out
    sr = tmp_path / "o2" / "dicom-sr" / "c.dcm.dcm"
    assert dcmread(sr).SOPClassUID == ComprehensiveSRStorage
    errors, _ = dciodvfy_errors(sr)
    assert not errors, errors


def test_dicom_sr_needs_a_classifier_and_highdicom_is_named_when_missing(exported, tmp_path, capsys,
                                                                         monkeypatch):
    models, _, _ = exported
    scans = tmp_path / "scans"
    write_ultrasound(scans / "c.dcm", bright((30, 30)))
    code = run(["predict", str(scans), "--models", str(models), "--out", str(tmp_path / "o"), "--dicom-sr"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a classifier" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if the extra were not installed
    code = run(["predict", str(scans), "--models", str(models), "--out", str(tmp_path / "o"), "--dicom-seg"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'dlmi[dicom-seg]'" in err and len(err.strip().splitlines()) == 1


def test_export_records_the_dataset_segment_codes(exported):
    models, _, _ = exported
    segment = json.loads((models / "export.json").read_text())["segment"]
    assert segment == {"category": ["49755003", "SCT", "Morphologically Abnormal Structure"],
                       "type": ["4147007", "SCT", "Mass"], "region": ["76752008", "SCT", "Breast"]}


def test_codes_agree_with_pydicom_and_a_dataset_without_segment_gets_the_default():
    from pydicom.sr.codedict import codes

    from dlmi.datasets.segment_codes import (
        BREAST,
        DEFAULT_SEGMENT_CODES,
        MASS,
        MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    )
    from dlmi.export.metadata import dataset_segment_codes

    for ours, theirs in ((MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.SCT.MorphologicallyAbnormalStructure),
                         (MASS, codes.SCT.Mass), (BREAST, codes.SCT.Breast)):
        assert ours == (theirs.value, theirs.scheme_designator, theirs.meaning)
    assert dataset_segment_codes("synthetic") == DEFAULT_SEGMENT_CODES
    assert dataset_segment_codes("no-such-dataset") == DEFAULT_SEGMENT_CODES
    assert dataset_segment_codes("busi").region == BREAST


def test_torch_backend_takes_the_codes_from_the_checkpoints_dataset(exported, tmp_path):
    _, _, seg_path = exported
    write_ultrasound(tmp_path / "scans" / "c.dcm", bright((30, 30)))
    predictor = open_predictor([seg_path], backend="torch")
    out = tmp_path / "out"
    predict_folder(tmp_path / "scans", out, predictor, PredictSettings(dicom_seg=True), log=lambda m: None)
    seg = dcmread(out / "dicom" / "c.dcm.dcm")
    assert segment_codes(seg)["region"] == ("76752008", "SCT", "Breast")
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert file_digest(seg_path) in algorithm.AlgorithmParameters
    assert np.array_equal(seg.pixel_array.astype(bool), mask_png(out, "c.dcm"))


def test_the_ray_engine_refuses_dicom_outputs_in_one_line(exported, tmp_path, capsys):
    pytest.importorskip("ray")
    models, _, _ = exported
    write_ultrasound(tmp_path / "scans" / "c.dcm", bright((30, 30)))
    code = run(["predict", str(tmp_path / "scans"), "--models", str(models), "--out", str(tmp_path / "o"),
                "--engine", "ray", "--dicom-seg"])
    err = capsys.readouterr().err
    assert code == 2 and "--engine ray" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
