"""int8 ONNX files: `dlmi export onnx --int8` on tiny models trained on the synthetic dataset, checked here
against fp32 with onnxruntime on the val side, and `dlmi predict --int8` running them (without torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from test_export_helpers import exported_models
from test_lean_imports import assert_torch_free, run_probed

from dlmi.errors import DlmiError
from dlmi.export import quantize
from dlmi.export.metadata import read_metadata
from dlmi.inference.predictor import open_predictor

INT8_FILES = ("classifier_int8.onnx", "unet_int8.onnx", "two_stage_int8.onnx")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """A seed-cnn classifier and an aided U-Net (width 8), 64 px, trained on 300 synthetic images (~20 s)."""
    from dlmi.training import TrainConfig, train_classifier, train_segmenter

    base = tmp_path_factory.mktemp("int8-runs")
    cls = train_classifier(TrainConfig(task="classification", dataset="synthetic", out=str(base / "cls"),
                                       image_size=64, epochs=6, batch_size=16, device="cpu", quiet=True))
    seg = train_segmenter(TrainConfig(task="segmentation", dataset="synthetic", out=str(base / "seg"),
                                      image_size=64, epochs=8, batch_size=16, base_channels=8, device="cpu",
                                      quiet=True, aid=str(cls)))
    return Path(cls), Path(seg)


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> Path:
    from conftest import run_cli

    cls, seg = runs
    out = tmp_path_factory.mktemp("int8-export") / "models"
    done = run_cli("export", "onnx", "--classifier", str(cls), "--segmenter", str(seg), "--out", str(out),
                   "--int8", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "two_stage_int8.onnx: int8 check ok" in done.stdout
    return out


def val_images(seg_run: Path, size: int) -> np.ndarray:
    """The segmenter run's val-side images as model inputs, read here independently of dlmi.export."""
    from dlmi.plugins import get_dataset
    from dlmi.runtime.preprocess import model_input
    from dlmi.splits import load_split, split_samples

    source = get_dataset("synthetic")
    samples = split_samples(load_split(seg_run / "split.json"), source.samples(None), "val")
    return np.stack([model_input(source.load(s)[0], size) for s in samples])


def test_int8_files_are_qdq_quantized_with_float_input_and_metadata(exported):
    for name in INT8_FILES:
        model = onnx.load(exported / name)
        ops = {node.op_type for node in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert weights, f"{name} has no int8 weights"
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        fp32_name = name.replace("_int8", "")
        assert (exported / name).stat().st_size < 0.5 * (exported / fp32_name).stat().st_size
        props, fp32_props = read_metadata(exported / name), read_metadata(exported / fp32_name)
        assert props["precision"] == "int8"
        assert fp32_props["precision"] == "fp32"
        assert {k: v for k, v in props.items() if k not in ("precision", "quantization")} == {
            k: v for k, v in fp32_props.items() if k != "precision"}
        details = json.loads(props["quantization"])
        assert details["fp32_file"] == fp32_name and "train-side" in details["calibration"]
        assert details["check"]["passed"]


def test_int8_agrees_with_fp32_on_the_val_side(exported, runs):
    """Re-checked here, outside dlmi.export: same class on >= 99 %, mask Dice >= 0.98 (all pixels)."""
    _, seg = runs
    x = val_images(seg, 64)
    fp32 = ort.InferenceSession(str(exported / "two_stage.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(exported / "two_stage_int8.onnx"), providers=["CPUExecutionProvider"])
    (p32, m32, g32), (p8, m8, g8) = fp32.run(None, {"image": x})[:3], int8.run(None, {"image": x})[:3]
    assert (p32.argmax(1) == p8.argmax(1)).mean() >= 0.99
    assert (g32 == g8).mean() >= 0.99
    a, b = m32 > 0.5, m8 > 0.5
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.98
    assert m32.max() > 0.5, "the trained U-Net should find lesions, or the Dice means nothing"
    assert np.abs(m32 - m8).max() > 0, "int8 outputs identical to fp32: not quantized?"


def test_manifest_records_the_check_and_the_speed_ratio(exported):
    manifest = json.loads((exported / "export.json").read_text())
    for name in INT8_FILES:
        check = manifest["files"][name]["int8_check"]
        assert check["passed"] and check["images"] == 45
        assert check["fp32_seconds"] > 0 and check["int8_seconds"] > 0 and check["speed_ratio"] > 0
    assert manifest["files"]["unet_int8.onnx"]["int8_check"]["mask_dice"] >= quantize.MIN_MASK_DICE
    assert manifest["files"]["classifier_int8.onnx"]["int8_check"]["class_agreement"] >= 0.99
    assert manifest["int8"]["min_mask_dice"] == 0.98


def test_predict_int8_runs_the_int8_files_without_torch(exported, runs, tmp_path):
    """``dlmi predict --int8`` on the val-side images (as PNGs, 128 px): int8 files, no torch, and the same
    class and masks as fp32 within the export's check (at the images' own size, after resizing back)."""
    from dlmi.plugins import get_dataset
    from dlmi.splits import load_split, split_samples

    _, seg = runs
    scans = tmp_path / "scans"
    scans.mkdir()
    source = get_dataset("synthetic")
    for sample in split_samples(load_split(seg / "split.json"), source.samples(None), "val"):
        Image.fromarray(source.load(sample)[0]).save(scans / Path(sample.key).name)
    outs = {}
    for precision in ("int8", "fp32"):
        outs[precision] = tmp_path / precision
        flags = ["--int8"] if precision == "int8" else []
        report = run_probed(tmp_path, "predict", "--aided", str(scans), "--models", str(exported),
                            "--out", str(outs[precision]), *flags)
        assert_torch_free(report)
    results = {p: json.loads((outs[p] / "predictions.json").read_text()) for p in ("int8", "fp32")}
    assert list(results["int8"]["settings"]["files"]) == ["two_stage_int8.onnx"]
    assert list(results["fp32"]["settings"]["files"]) == ["two_stage.onnx"]
    records = {p: {r["file"]: r for r in results[p]["predictions"]} for p in ("int8", "fp32")}
    assert len(records["int8"]) == 45 and records["int8"].keys() == records["fp32"].keys()
    same_class = np.mean([r["class"] == records["fp32"][f]["class"] for f, r in records["int8"].items()])
    assert same_class >= 0.99
    both = total = 0
    for file, record in records["int8"].items():
        a = np.asarray(Image.open(outs["int8"] / record["mask"])) > 0
        b = np.asarray(Image.open(outs["fp32"] / records["fp32"][file]["mask"])) > 0
        both, total = both + (a & b).sum(), total + a.sum() + b.sum()
    assert total > 0 and 2 * both / total >= 0.98
    predictor = open_predictor([exported], aided=True, int8=True, provider="cpu")
    assert [p.name for p in predictor.paths.values()] == ["two_stage_int8.onnx"]


def test_int8_failing_its_check_writes_nothing(runs, tmp_path, monkeypatch):
    from dlmi.export.onnx_export import export_onnx

    cls, seg = runs
    out = tmp_path / "models"
    export_onnx(cls, seg, out)
    monkeypatch.setattr(quantize, "MIN_MASK_DICE", 1.01)  # no file can pass: the failure path
    with pytest.raises(DlmiError, match=r"mask Dice vs fp32 .* < 1.01 .* no int8 file was written"):
        quantize.quantize_export(out, calibration_images=8)
    assert not any((out / name).exists() for name in INT8_FILES)


def test_a_plain_re_export_removes_stale_int8_files(runs, tmp_path):
    from dlmi.export.onnx_export import export_onnx

    cls, seg = runs
    out = tmp_path / "models"
    export_onnx(None, seg, out)
    report = quantize.quantize_export(out, calibration_images=8, check_images=8)
    assert [p.name for p in report.files] == ["unet_int8.onnx"]
    export_onnx(None, seg, out)
    assert not (out / "unet_int8.onnx").exists()


def test_int8_without_a_run_needs_image_folders(tmp_path_factory, tmp_path):
    """Checkpoints without their run folder: a one-line error, then folders of images do instead."""
    models, _, _ = exported_models(tmp_path_factory)
    out = tmp_path / "models"
    out.mkdir()
    for item in models.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    with pytest.raises(DlmiError, match="--calibration-dir and --check-dir") as caught:
        quantize.quantize_export(out)
    assert "\n" not in str(caught.value)
    rng = np.random.default_rng(0)
    for folder in ("cal", "check"):
        (tmp_path / folder).mkdir()
        for i in range(5):
            image = rng.integers(0, 255, (40, 40), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / folder / f"{i}.png")
    report = quantize.quantize_export(out, calibration_dir=tmp_path / "cal", check_dir=tmp_path / "check")
    assert {p.name for p in report.files} == set(INT8_FILES)
    assert "5 of 5 images under" in report.calibration


def test_predict_int8_errors_are_one_line(tmp_path_factory):
    models, _, _ = exported_models(tmp_path_factory)
    with pytest.raises(DlmiError, match="two_stage_int8.onnx: not found.*--int8"):
        open_predictor([models], aided=True, int8=True)
    with pytest.raises(DlmiError, match="--fp16 and --int8"):
        open_predictor([models], aided=True, int8=True, fp16=True)
    with pytest.raises(DlmiError, match="--int8 .* needs --backend onnx"):
        open_predictor([models], aided=True, int8=True, backend="torch")


def test_an_ensemble_calibrates_and_checks_on_its_first_members_fold(tmp_path):
    """`--int8` on a fold ensemble: the sides come from fold-0's own train and val parts (never the test
    side), not from the ensemble folder, which has no config of its own."""
    from dlmi.plugins import get_dataset
    from dlmi.splits import save_split
    from dlmi.splits.split import make_split, split_samples, with_folds

    samples = get_dataset("synthetic").samples(None)
    split = with_folds(make_split("synthetic", None), samples, 3, seed=0)
    ensemble = tmp_path / "ensemble"
    member = ensemble / "fold-0"
    member.mkdir(parents=True)
    save_split(split, ensemble / "split.json")
    save_split(split, member / "split.json")
    (member / "config.json").write_text(json.dumps({"dataset": "synthetic", "fold": 0}))
    (ensemble / "ensemble.json").write_text(json.dumps({"members": ["fold-0"], "flip_tta": True}))
    for side in ("train", "val"):
        images = quantize.run_side_images(ensemble, side, limit=10_000)
        expected = split_samples(split, samples, side, fold=0)
        assert f"of the {len(expected)} {side}-side images of {member}" in images.description
        assert len(images.images) == len(expected)
    # Without the fold, "train" would be every non-test image, fold-0's val part included.
    assert len(split_samples(split, samples, "train", fold=0)) < len(split_samples(split, samples, "train"))
