"""``dlmi predict`` over a folder: BUSI-layout files and awkward inputs, the gate, providers, re-runs, tiles.

Every image is written by the fixtures, so a clean clone (no ``../shared/data``) runs all of these tests.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from busi_folder import write_busi_folder
from PIL import Image
from test_export_helpers import CLASSES, CLASSIFIER_SIZE, exported_models

from dlmi.errors import DlmiError
from dlmi.imageio import read_grey
from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.inference.outputs import output_stems
from dlmi.inference.predictor import open_predictor
from dlmi.inference.tiling import hann_window, segment_tiled, tile_starts
from dlmi.runtime.preprocess import model_input
from dlmi.runtime.trained import load_trained

BUSI_FILES = ["benign/benign (1).png", "malignant/malignant (1).png", "normal/normal (1).png"]
IMAGES = 5  # 3 BUSI + dark.JPG + sub/rgba.PNG (broken.png fails, notes.txt is ignored)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


@pytest.fixture
def scans(tmp_path) -> Path:
    """A folder of BUSI-layout images, a dark grey JPEG, a bright RGBA PNG, a corrupt PNG and a text file."""
    busi_dir = write_busi_folder(tmp_path / "busi-source", per_class=1, size=96)
    folder = tmp_path / "scans"
    for name in BUSI_FILES:
        target = folder / "busi" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(busi_dir / name, target)
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 20, (45, 60), dtype=np.uint8)).save(folder / "dark.JPG", quality=90)
    rgba = rng.integers(120, 255, (70, 50, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "sub" / "rgba.PNG")
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def classify_with_torch(cls_path: Path, image: Path) -> str:
    model = load_trained(cls_path).model
    x = torch.from_numpy(model_input(read_grey(image), CLASSIFIER_SIZE))[None]
    with torch.inference_mode():
        return CLASSES[int(model(x).argmax())]


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def test_cli_predict_aided_over_a_mixed_folder(cli, exported, scans, tmp_path):
    models, cls_path, _ = exported
    before = digests(scans)
    out = tmp_path / "out"
    result = cli("predict", "--aided", str(scans), "--models", str(models), "--out", str(out),
                 "--provider", "cpu", "--batch-size", "2")
    assert result.returncode == 1, result.stderr  # one file failed, the rest completed
    assert "running on: onnxruntime CPUExecutionProvider" in result.stdout
    failed_lines = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert len(failed_lines) == 1 and "cannot read image" in failed_lines[0]
    assert digests(scans) == before  # inputs untouched

    rows = read_csv(out / "predictions.csv")
    assert sorted(rows) == sorted(["busi/" + n for n in BUSI_FILES] + ["dark.JPG", "sub/rgba.PNG"])
    header = list(next(iter(rows.values())))
    assert header[:5] == ["file", "class", "prob_normal", "prob_benign", "prob_malignant"]
    report = json.loads((out / "predictions.json").read_text())
    assert [f["file"] for f in report["failed"]] == ["sub/broken.png"]
    assert len(report["predictions"]) == IMAGES

    for name, row in rows.items():
        source = scans / name
        width, height = Image.open(source).size
        mask_file = Image.open(out / row["mask"])
        mask = np.asarray(mask_file.convert("L"))
        assert mask_file.mode == "1" and mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        overlay = Image.open(out / row["overlay"])
        assert overlay.mode == "P" and overlay.size == (width, height)
        assert int(row["lesion_pixels"]) == int((mask == 255).sum())
        assert float(row["lesion_fraction"]) == pytest.approx(int(row["lesion_pixels"]) / (width * height),
                                                              abs=1e-6)
        assert row["class"] == classify_with_torch(cls_path, source)
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
        gated = row["gated"] == "true"
        assert gated == (row["class"] == "normal")
        if gated:  # the gate: a normal prediction gives an all-zero mask
            assert int(row["lesion_pixels"]) == 0
    assert rows["dark.JPG"]["gated"] == "true"
    assert rows["sub/rgba.PNG"]["gated"] == "false" and int(rows["sub/rgba.PNG"]["lesion_pixels"]) > 0


def test_unaided_predict_runs_the_unet_alone(exported, scans, tmp_path):
    models, _, _ = exported
    predictor = open_predictor([models], backend="onnx", provider="cpu", aided=False)
    assert set(predictor.sessions) == {"segmenter"}
    summary = predict_folder(scans, tmp_path / "out", predictor, PredictSettings(), log=lambda m: None)
    assert (summary.predicted, len(summary.failed)) == (IMAGES, 1)
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert all(row["class"] == "" and row["gated"] == "" for row in rows.values())
    assert int(rows["dark.JPG"]["lesion_pixels"]) > 0  # no gate without --aided
    assert "prob_normal" not in next(iter(rows.values()))


def test_rerun_skips_finished_images_and_overwrite_redoes_them(exported, scans, tmp_path):
    models, _, _ = exported
    predictor = open_predictor([models], provider="cpu", aided=True)
    out = tmp_path / "out"
    settings = PredictSettings(aided=True, batch_size=4)
    first = predict_folder(scans, out, predictor, settings, log=lambda m: None)
    assert (first.predicted, first.skipped, len(first.failed)) == (IMAGES, 0, 1)
    masks = sorted((out / "masks").rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in masks}
    table = (out / "predictions.csv").read_text()

    again = predict_folder(scans, out, predictor, settings, log=lambda m: None)
    assert (again.predicted, again.skipped, len(again.failed)) == (0, IMAGES, 1)
    assert {p: p.stat().st_mtime_ns for p in masks} == stamps
    assert (out / "predictions.csv").read_text() == table

    (out / "masks" / "dark.JPG.png").unlink()  # a lost output is predicted again
    repaired = predict_folder(scans, out, predictor, settings, log=lambda m: None)
    assert (repaired.predicted, repaired.skipped) == (1, IMAGES - 1)

    settings.overwrite = True
    redone = predict_folder(scans, out, predictor, settings, log=lambda m: None)
    assert (redone.predicted, redone.skipped) == (IMAGES, 0)
    assert (out / "predictions.csv").read_text() == table

    other = predict_folder(scans, out, predictor, PredictSettings(aided=True, threshold=0.3),
                           log=lambda m: None)
    assert (other.predicted, other.skipped) == (IMAGES, 0)  # other settings: every image again


def test_output_folder_inside_the_input_is_not_read_back(exported, scans):
    models, _, _ = exported
    predictor = open_predictor([models], provider="cpu", aided=True)
    out = scans / "predictions"
    for _ in range(2):
        summary = predict_folder(scans, out, predictor, PredictSettings(aided=True, overwrite=True),
                                 log=lambda m: None)
        assert summary.total == IMAGES + 1
    with pytest.raises(DlmiError, match="must not be the input folder"):
        predict_folder(scans, scans, predictor, PredictSettings(aided=True), log=lambda m: None)


def test_torch_backend_agrees_with_onnxruntime(exported, scans, tmp_path):
    models, cls_path, seg_path = exported
    settings = PredictSettings(aided=True)
    onnx = predict_folder(scans, tmp_path / "onnx", open_predictor([models], provider="cpu", aided=True),
                          settings, log=lambda m: None)
    eager = open_predictor([cls_path, seg_path], backend="torch", provider="cpu", aided=True)
    assert eager.running_on == "torch cpu"
    predict_folder(scans, tmp_path / "torch", eager, settings, log=lambda m: None)
    assert onnx.predicted == IMAGES
    a, b = read_csv(tmp_path / "onnx" / "predictions.csv"), read_csv(tmp_path / "torch" / "predictions.csv")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name]["class"] == b[name]["class"] and a[name]["gated"] == b[name]["gated"]
        for c in CLASSES:
            assert abs(float(a[name][f"prob_{c}"]) - float(b[name][f"prob_{c}"])) <= 1e-4
        pixels = int(a[name]["width"]) * int(a[name]["height"])
        assert abs(int(a[name]["lesion_pixels"]) - int(b[name]["lesion_pixels"])) <= 0.001 * pixels
    # an export folder stands for its checkpoints with --backend torch
    assert open_predictor([models], backend="torch", provider="cpu", aided=True).info.classes == list(CLASSES)


def test_tiled_prediction_keeps_the_full_resolution(exported, scans, tmp_path):
    models, _, _ = exported
    predictor = open_predictor([models], provider="cpu", aided=True, tile=True)
    assert set(predictor.sessions) == {"classifier", "segmenter"}
    out = tmp_path / "tiled"
    summary = predict_folder(scans, out, predictor, PredictSettings(aided=True, tile=True, batch_size=16),
                             log=lambda m: None)
    assert summary.predicted == IMAGES
    rows = read_csv(out / "predictions.csv")
    assert int(rows["dark.JPG"]["lesion_pixels"]) == 0 and rows["dark.JPG"]["gated"] == "true"
    for name, row in rows.items():
        mask = Image.open(out / row["mask"])
        assert mask.size == Image.open(scans / name).size


def test_tiles_cover_the_image_and_blend_to_the_exact_value():
    starts = tile_starts(100, 32)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:], strict=False))
    assert tile_starts(20, 32) == [0]
    window = hann_window(32, 32)
    assert window.min() > 0 and window[16, 16] == window.max()
    image = np.random.default_rng(0).random((75, 101), dtype=np.float32)
    calls = []

    def identity(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return batch

    stitched = segment_tiled(image, identity, tile=32, batch_size=4)
    assert np.allclose(stitched, image, atol=1e-6)  # every tile says the same: the blend is exact
    assert all(shape[0] <= 4 and shape[1:] == (1, 32, 32) for shape in calls)
    small = np.random.default_rng(1).random((20, 50), dtype=np.float32)
    assert np.allclose(segment_tiled(small, identity, tile=32), small, atol=1e-6)


def test_provider_cpu_and_auto(exported):
    models, _, _ = exported
    cpu = open_predictor([models], provider="cpu", aided=True)
    assert cpu.running_on == "onnxruntime CPUExecutionProvider"
    auto = open_predictor([models], provider="auto", aided=True).running_on
    if torch.cuda.is_available():  # CUDA, or the CPU where onnxruntime's CUDA libraries are missing
        assert auto in ("onnxruntime CUDAExecutionProvider", "onnxruntime CPUExecutionProvider")
    else:
        assert auto == "onnxruntime CPUExecutionProvider"
    with pytest.raises(DlmiError, match="--provider"):
        open_predictor([models], provider="tpu", aided=True)


def test_provider_cuda_without_a_gpu_is_a_clear_error(exported, cli, scans, tmp_path):
    models, _, _ = exported
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the no-GPU error cannot be shown here")
    result = cli("predict", "--aided", str(scans), "--models", str(models), "--out", str(tmp_path / "o"),
                 "--provider", "cuda")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "--provider cuda" in result.stderr and "no CUDA GPU" in result.stderr
    assert not (tmp_path / "o").exists()


def test_missing_models_are_one_line_errors(tmp_path, scans):
    with pytest.raises(DlmiError, match="no such folder of exported models"):
        open_predictor([tmp_path / "nothing"], aided=True)
    (tmp_path / "partial").mkdir()
    with pytest.raises(DlmiError, match="two_stage.onnx: not found"):
        open_predictor([tmp_path / "partial"], aided=True)
    with pytest.raises(DlmiError, match="--backend"):
        open_predictor([tmp_path / "partial"], backend="tensorflow")


def test_output_names_keep_the_full_file_name():
    files = [PurePosixPath(p) for p in ("a.png", "a.JPG", "a_png.png", "x/a.png")]
    stems = output_stems(files)
    assert [stems[f] for f in files] == ["a.png", "a.JPG", "a_png.png", "x/a.png"]
    assert len(set(stems.values())) == len(files)


def test_exclude_patterns_and_non_images_are_left_out(tmp_path):
    from dlmi.discovery import find_images

    for name in ("a.png", "a_mask.png", "sub/B_MASK_1.PNG", "sub/c.TIF", "notes.txt", "sub/d.jpeg.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert [str(p) for p in find_images(tmp_path)] == ["a.png", "a_mask.png", "sub/B_MASK_1.PNG", "sub/c.TIF"]
    assert [str(p) for p in find_images(tmp_path, patterns=["*_mask*"])] == ["a.png", "sub/c.TIF"]
    assert [str(p) for p in find_images(tmp_path, patterns=["sub/*"])] == ["a.png", "a_mask.png"]
