"""Issue 19 §3: temperature scaling (fitted, recorded, applied in every graph and backend), ECE and Brier
(hand-worked and against MONAI), evaluation's calibration report, per-image uncertainty in the predictions,
and the calibration benchmark script, end to end on a tiny fold ensemble of real BUSI-layout files."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from dlmi.export.metadata import read_metadata
from dlmi.export.onnx_export import export_onnx
from dlmi.metrics.calibration import (
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    scaled_probabilities,
)
from dlmi.plugins import create_model
from dlmi.runtime.checkpoint import save_checkpoint
from dlmi.runtime.trained import build_meta, load_trained

CLASSES = ("normal", "benign", "malignant")
SIZE = 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the metrics ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("true_t", [2.5, 0.5])
def test_temperature_fit_recovers_a_known_temperature(true_t):
    """Labels drawn from softmax(z / T): fitting on z recovers T (over- and under-confident logits)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (6000, 3))
    probs = scaled_probabilities(logits, true_t)
    labels = (rng.random(len(logits))[:, None] > probs.cumsum(1)).sum(1)
    fitted = fit_temperature(logits, labels)
    assert abs(fitted - true_t) / true_t < 0.06
    nll = negative_log_likelihood(logits, labels, fitted)
    assert nll <= negative_log_likelihood(logits, labels, fitted * 1.05)
    assert nll <= negative_log_likelihood(logits, labels, fitted / 1.05)
    assert nll < negative_log_likelihood(logits, labels, 1.0)


# Four images; top-class confidences 0.9 (right), 0.9 (wrong), 0.62 (right), 0.45 (wrong).
HAND_PROBS = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.62, 0.2, 0.18], [0.45, 0.3, 0.25]])
HAND_LABELS = np.array([0, 1, 0, 2])


def test_ece_of_a_hand_worked_example():
    """15 bins of width 1/15: 0.9 falls in bin 13 (0.867–0.933) twice, accuracy 1/2: 2/4 · |0.5 − 0.9| = 0.2;
    0.62 in bin 9 (0.6–0.667), right: 1/4 · |1 − 0.62| = 0.095; 0.45 in bin 6 (0.4–0.467), wrong:
    1/4 · |0 − 0.45| = 0.1125. ECE = 0.4075."""
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS) == pytest.approx(0.4075, abs=1e-12)
    bins = reliability_bins(HAND_PROBS, HAND_LABELS)
    assert [i for i, n in enumerate(bins["count"]) if n] == [6, 9, 13]
    assert bins["count"][13] == 2 and bins["accuracy"][13] == 0.5 and bins["confidence"][13] == 0.9
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0  # sure and right


def test_brier_of_a_hand_worked_example():
    """Σ_k (p − y)² per image: 0.1² + 0.05² + 0.05² = 0.015; 0.9² + 0.95² + 0.05² = 1.715;
    0.38² + 0.2² + 0.18² = 0.2168; 0.45² + 0.3² + 0.75² = 0.855; mean 0.70045."""
    assert brier_score(HAND_PROBS, HAND_LABELS) == pytest.approx(0.70045, abs=1e-12)
    assert brier_score(np.eye(3), np.arange(3)) == 0.0
    assert brier_score(np.eye(3), np.array([1, 2, 0])) == 2.0  # sure and wrong: the worst


def test_ece_agrees_with_monai():
    """MONAI's CalibrationErrorMetric (expected reduction, 15 bins [left, right)) over the top-class
    confidence against its correctness is dlmi's ECE; calibration_binning's counts are dlmi's bins."""
    from monai.metrics import CalibrationErrorMetric
    from monai.metrics.calibration import calibration_binning

    rng = np.random.default_rng(3)
    probs = scaled_probabilities(rng.normal(0, 2, (700, 3)))
    labels = rng.integers(0, 3, 700)
    confidence = torch.tensor(probs.max(1), dtype=torch.float32).view(1, 1, -1)
    correct = torch.tensor(probs.argmax(1) == labels, dtype=torch.float32).view(1, 1, -1)
    metric = CalibrationErrorMetric(num_bins=15, include_background=True, calibration_reduction="expected")
    metric(y_pred=confidence, y=correct)
    assert float(metric.aggregate()) == pytest.approx(expected_calibration_error(probs, labels), abs=1e-5)
    _, _, counts = calibration_binning(confidence, correct, num_bins=15)
    assert counts[0, 0].int().tolist() == reliability_bins(probs, labels)["count"]


def test_calibration_report_has_intervals_before_and_after():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, (300, 3))
    labels = (rng.random(300)[:, None] > scaled_probabilities(logits, 3.0).cumsum(1)).sum(1)
    report = calibration_report(logits, labels, fit_temperature(logits, labels), resamples=200)
    for when in ("before", "after"):
        for metric in ("ece", "brier"):
            entry = report[when][metric]
            assert entry["low"] <= entry["value"] <= entry["high"]
            assert entry["n"] == 300 and entry["definition"]
    assert report["after"]["ece"]["value"] < report["before"]["ece"]["value"]
    assert report["after"]["brier"]["value"] < report["before"]["brier"]["value"]


# --- a single joint model with a temperature: the graphs and both backends ----------------------------------


def joint_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("unet-mt", num_classes=3, base_channels=4).eval()
    with torch.no_grad():
        model.head[1].bias.copy_(torch.tensor([0.4, 0.0, -0.2]))
    return model


def write_joint_run(folder: Path, seed: int) -> torch.nn.Module:
    meta = build_meta(task="joint", model="unet-mt", model_options={"base_channels": 4}, num_classes=3,
                      classes=CLASSES, normal_class="normal", image_size=SIZE, dataset="synthetic",
                      run_dir=str(folder), threshold=0.5)
    model = joint_model(seed)
    folder.mkdir(parents=True)
    save_checkpoint(folder / "best.pt", {"model": model.state_dict(), "meta": meta, "epoch": 1})
    return model


def write_images(folder: Path, count: int) -> list[np.ndarray]:
    from PIL import Image

    folder.mkdir(parents=True)
    greys = []
    for i in range(count):
        grey = (np.random.default_rng(10 + i).random((SIZE, SIZE)) * 255).astype(np.uint8)
        Image.fromarray(grey).save(folder / f"scan{i}.png")
        greys.append(grey)
    return greys


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A joint run whose calibration.json says T = 2, exported; and a folder of 32 px images."""
    base = tmp_path_factory.mktemp("single")
    model = write_joint_run(base / "run", seed=4)
    (base / "run" / "calibration.json").write_text(json.dumps(
        {"temperature": 2.0, "checkpoint": "best.pt", "calibrated_on": "a hand-written test record"}))
    report = export_onnx(segmenter=base / "run", out=base / "exported")
    assert all(r.passed for r in report.parity)
    greys = write_images(base / "images", 4)
    return {"base": base, "model": model, "greys": greys}


def test_the_exported_graphs_give_softmax_of_logits_over_t(single):
    out = single["base"] / "exported"
    image = np.random.default_rng(2).random((3, 1, SIZE, SIZE), dtype=np.float32)
    session = ort.InferenceSession(str(out / "classifier.onnx"), providers=["CPUExecutionProvider"])
    logits, probs, uncertainty = session.run(None, {"image": image})
    assert [o.name for o in session.get_outputs()] == ["logits", "probs", "uncertainty"]
    np.testing.assert_allclose(probs, scaled_probabilities(logits, 2.0), atol=1e-5)
    assert not np.allclose(probs, scaled_probabilities(logits, 1.0), atol=1e-3)  # T matters here
    two_stage = ort.InferenceSession(str(out / "two_stage.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in two_stage.get_outputs()] == ["class_probs", "mask_probs", "gated", "uncertainty",
                                                        "mask_disagreement"]
    class_probs = two_stage.run(["class_probs"], {"image": image})[0]
    np.testing.assert_allclose(class_probs, probs, atol=1e-5)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["temperature"] == 2.0 and manifest["calibrated_on"] == "a hand-written test record"
    assert float(read_metadata(out / "two_stage.onnx")["temperature"]) == 2.0
    card = manifest["model_card"]["calibration"]
    assert card["status"] == "calibrated" and card["temperature"] == 2.0
    assert card["evaluation"] == {"status": "not evaluated"}
    assert "softmax(logits / 2)" in (out / "MODEL_CARD.md").read_text()


def test_onnx_and_torch_backends_give_the_same_calibrated_probabilities(single):
    from dlmi.inference.predictor import open_predictor

    base = single["base"]
    onnx_backend = open_predictor([base / "exported"], backend="onnx", aided=True)
    torch_backend = open_predictor([base / "run"], backend="torch", aided=True)
    assert onnx_backend.info.temperature == torch_backend.info.temperature == 2.0
    batch = np.stack([g.astype(np.float32)[None] / 255.0 for g in single["greys"]])
    got_onnx, got_torch = onnx_backend.two_stage_uncertain(batch), torch_backend.two_stage_uncertain(batch)
    for a, b in zip(got_onnx[:2] + got_onnx[3:4], got_torch[:2] + got_torch[3:4], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(got_onnx[4], got_torch[4], atol=0.05)  # a pixel at the threshold may flip


def test_single_model_predictions_carry_the_flip_disagreement(single, tmp_path):
    """predictions.csv of a single model: uncertainty = |P(normal) plain − mirrored| (T-scaled) and
    mask_disagreement = 1 − Dice of the plain and the mirrored pass's masks, computed here by hand."""
    from dlmi.inference.folder import PredictSettings, predict_folder
    from dlmi.inference.outputs import csv_columns
    from dlmi.inference.predictor import open_predictor

    base, model = single["base"], single["model"]
    for backend, models in (("torch", base / "run"), ("onnx", base / "exported")):
        out = tmp_path / backend
        predict_folder(base / "images", out, open_predictor([models], backend=backend, aided=True),
                       PredictSettings(aided=True), log=lambda _: None)
        rows = read_rows(out / "predictions.csv")
        assert list(rows[0]) == csv_columns(CLASSES)
        assert list(rows[0])[-2:] == ["uncertainty", "mask_disagreement"]
        records = json.loads((out / "predictions.json").read_text())["predictions"]
        for row, record in zip(rows, records, strict=True):
            grey = single["greys"][int(row["file"][4:-4])]
            x = torch.from_numpy(grey.astype(np.float32)[None, None] / 255.0)
            with torch.no_grad():
                seg, cls = model(x)
                seg_m, cls_m = model(torch.flip(x, dims=[-1]))
            p = torch.softmax(cls / 2.0, 1)[0, 0].item()
            p_m = torch.softmax(cls_m / 2.0, 1)[0, 0].item()
            assert float(row["prob_normal"]) == pytest.approx(p, abs=2e-6)
            assert float(row["uncertainty"]) == pytest.approx(abs(p - p_m), abs=2e-6)
            plain = (torch.sigmoid(seg) > 0.5)[0, 0].numpy()
            mirrored = (torch.flip(torch.sigmoid(seg_m), dims=[-1]) > 0.5)[0, 0].numpy()
            assert float(row["mask_disagreement"]) == pytest.approx(1 - dice(plain, mirrored), abs=2e-6)
            assert record["uncertainty"] == pytest.approx(float(row["uncertainty"]), abs=1e-6)


def test_the_python_api_records_carry_the_uncertainty(single):
    import dlmi

    predictor = dlmi.load_predictor(single["base"] / "exported", aided=True)
    one = predictor.predict(single["greys"][0])
    records = predictor.predict_batch(single["greys"][:2])
    assert one.uncertainty is not None and one.mask_disagreement is not None
    assert records[0]["uncertainty"] == pytest.approx(one.uncertainty, abs=1e-6)
    assert records[0]["mask_disagreement"] == pytest.approx(one.mask_disagreement, abs=1e-6)


def test_an_old_run_without_a_temperature_exports_t_1(tmp_path):
    """A checkpoint with no calibration record: T = 1, calibrated_on null, the card says not calibrated."""
    from dlmi.export.model_card import NOT_CALIBRATED

    meta = build_meta(task="classification", model="seed-cnn", model_options={}, num_classes=3,
                      classes=CLASSES, normal_class="normal", image_size=64, dataset="synthetic",
                      run_dir=str(tmp_path / "cls"))
    torch.manual_seed(0)
    model = create_model("seed-cnn", num_classes=3, image_size=64)
    (tmp_path / "cls").mkdir()
    save_checkpoint(tmp_path / "cls" / "best.pt", {"model": model.state_dict(), "meta": meta, "epoch": 1})
    assert load_trained(tmp_path / "cls").temperature == 1.0
    export_onnx(classifier=tmp_path / "cls", out=tmp_path / "exported")
    manifest = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert manifest["temperature"] == 1.0 and manifest["calibrated_on"] is None
    assert manifest["model_card"]["calibration"]["status"] == NOT_CALIBRATED


# --- a tiny fold ensemble of BUSI-layout files: training, the gate, evaluate, predictions, the benchmark ---


@pytest.fixture(scope="module")
def busi_ensemble(tmp_path_factory):
    """A 2-fold joint ensemble, 1 epoch, trained on 24 real 32 px BUSI-layout PNGs."""
    from busi_folder import write_busi_folder

    from dlmi.training.config import TrainConfig
    from dlmi.training.folds import train_folds

    base = tmp_path_factory.mktemp("busi")
    data = write_busi_folder(base / "busi", per_class=8, size=SIZE)
    keys = sorted(str(p.relative_to(data)) for p in data.rglob("*.png") if "_mask" not in p.name)
    split = base / "split.json"
    split.write_text(json.dumps({"dataset": "busi", "train": keys[0::3] + keys[1::3], "val": keys[2::3][:4],
                                 "test": keys[2::3][4:]}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DLMI_CACHE_DIR", str(base / "cache"))
        config = TrainConfig(task="joint", dataset="busi", data_dir=str(data), split=str(split),
                             out=str(base / "ensemble"), image_size=SIZE, epochs=1, batch_size=8,
                             base_channels=4, quiet=True, device="cpu")
        folder = train_folds(config, 2)
    return {"folder": folder, "data": data, "base": base}


@pytest.mark.slow
def test_train_folds_fits_t_out_of_fold_and_chooses_the_gate_on_calibrated_probabilities(busi_ensemble):
    from dlmi.training.folds import oof_masks, out_of_fold

    folder = busi_ensemble["folder"]
    manifest = json.loads((folder / "ensemble.json").read_text())
    oof = out_of_fold(folder, manifest["members"], flip_tta=True)
    temperature = fit_temperature(oof["class_logits"], oof["labels"])
    assert manifest["temperature"] == pytest.approx(temperature, rel=1e-9)
    assert abs(temperature - 1.0) > 1e-3  # the scaling changes the probabilities the gate is chosen on
    assert "out-of-fold" in manifest["calibration"]["calibrated_on"]
    assert manifest["calibration"]["nll_after"] <= manifest["calibration"]["nll_before"]
    calibrated = dict(oof, class_probs=scaled_probabilities(oof["class_logits"], temperature))
    from dlmi.metrics.segmentation import iou_from_counts, mask_counts

    truth = oof["true_masks"].astype(bool)
    for candidate in manifest["postprocess"]["candidates"]:
        pred, _ = oof_masks(calibrated, threshold=candidate["threshold"],
                            min_lesion_pixels=candidate["min_lesion_pixels"],
                            normal_threshold=candidate["normal_threshold"])
        miou = float(iou_from_counts(*mask_counts(pred, truth)).mean())
        assert candidate["miou_seed_aided"] == pytest.approx(miou, abs=1e-9)
    assert load_trained(folder).temperature == pytest.approx(temperature)


@pytest.mark.slow
def test_a_single_run_records_its_temperature_on_its_val_side(busi_ensemble):
    member = busi_ensemble["folder"] / "fold-0"
    record = json.loads((member / "calibration.json").read_text())
    assert record["checkpoint"] == "best.pt" and "val side" in record["calibrated_on"]
    assert record["images"] > 0
    assert load_trained(member).temperature == record["temperature"]
    assert load_trained(member, checkpoint_name="last.pt").temperature == 1.0  # fitted for best.pt only


@pytest.mark.slow
def test_evaluate_reports_ece_and_brier_before_and_after_and_draws_the_reliability_diagram(busi_ensemble):
    from dlmi.cli.main import make_app

    folder = busi_ensemble["folder"]
    result = CliRunner().invoke(make_app(), ["evaluate", str(folder), "--side", "test", "--device", "cpu",
                                             "--resamples", "50", "--no-panels"])
    assert result.exit_code == 0, result.output
    assert "### Calibration" in result.output and "ECE" in result.output
    report = json.loads((folder / "eval-test.json").read_text())
    calibration = report["calibration"]
    assert calibration["temperature"] == pytest.approx(load_trained(folder).temperature)
    assert "out-of-fold" in calibration["calibrated_on"]
    for when in ("before", "after"):
        for metric in ("ece", "brier"):
            entry = calibration[when][metric]
            assert entry["n"] == report["context"]["n_images"]
            assert entry["low"] <= entry["value"] <= entry["high"]
    png = Path(report["figures"]["reliability"])
    assert png.name == "reliability-test.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Brier" in (folder / "eval-test.md").read_text()


@pytest.mark.slow
def test_ensemble_predictions_carry_the_members_spread_and_mask_disagreement(busi_ensemble, tmp_path):
    """predictions.csv of the fold ensemble (ONNX, T fitted out of fold): uncertainty = std of the members'
    calibrated P(normal), mask_disagreement = 1 − Dice of the members' masks, by hand from the members; the
    model card reports the ECE measured by evaluate; an export without the new outputs still predicts."""
    from dlmi.digest import file_digest
    from dlmi.inference.folder import PredictSettings, predict_folder
    from dlmi.inference.predictor import open_predictor

    folder = busi_ensemble["folder"]
    ensemble = load_trained(folder)
    exported = tmp_path / "exported"
    export_onnx(segmenter=folder, out=exported)
    card = json.loads((exported / "export.json").read_text())["model_card"]["calibration"]
    if (folder / "eval-test.json").is_file():  # written by the evaluate test above
        assert "before" in card["evaluation"] and "after" in card["evaluation"]
    greys = write_images(tmp_path / "images", 3)
    predict_folder(tmp_path / "images", tmp_path / "pred", open_predictor([exported], aided=True),
                   PredictSettings(aided=True), log=lambda _: None)
    rows = read_rows(tmp_path / "pred" / "predictions.csv")
    t = ensemble.temperature
    for row in rows:
        x = torch.from_numpy(greys[int(row["file"][4:-4])].astype(np.float32)[None, None] / 255.0)
        normals, masks = [], []
        with torch.no_grad():
            for member in ensemble.members:
                (seg, cls), (seg_m, cls_m) = member.model(x), member.model(torch.flip(x, dims=[-1]))
                probs = (torch.softmax(cls, 1) + torch.softmax(cls_m, 1)) / 2
                normals.append(torch.softmax(torch.log(probs) / t, 1)[0, 0].item())
                mask = (torch.sigmoid(seg) + torch.flip(torch.sigmoid(seg_m), dims=[-1])) / 2
                masks.append((mask > ensemble.threshold)[0, 0].numpy())
        assert float(row["uncertainty"]) == pytest.approx(float(np.std(normals)), abs=2e-5)
        assert float(row["mask_disagreement"]) == pytest.approx(1 - dice(masks[0], masks[1]), abs=2e-5)

    # An export written before these outputs: the graph without them, its sha256 recorded again.
    path = exported / "two_stage.onnx"
    model = onnx.load(path)
    kept = [o for o in model.graph.output if o.name in ("class_probs", "mask_probs", "gated")]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, path)
    manifest = json.loads((exported / "export.json").read_text())
    manifest["files"]["two_stage.onnx"]["sha256"] = file_digest(path)
    (exported / "export.json").write_text(json.dumps(manifest))
    predict_folder(tmp_path / "images", tmp_path / "old", open_predictor([exported], aided=True),
                   PredictSettings(aided=True), log=lambda _: None)
    old = read_rows(tmp_path / "old" / "predictions.csv")
    assert [r["uncertainty"] for r in old] == [""] * 3
    assert [r["mask_disagreement"] for r in old] == [""] * 3
    assert [r["prob_normal"] for r in old] == [r["prob_normal"] for r in rows]


@pytest.mark.slow
def test_the_calibration_benchmark_runs_end_to_end(busi_ensemble, tmp_path):
    path = REPO / "benchmarks" / "calibration_busi.py"
    spec = importlib.util.spec_from_file_location("calibration_busi", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DLMI_CACHE_DIR", str(busi_ensemble["base"] / "cache"))
        assert script.main([str(busi_ensemble["folder"]), "--name", "tiny", "--results", str(tmp_path),
                            "--resamples", "50"]) == 0
    result = json.loads((tmp_path / "calibration-tiny.json").read_text())
    manifest = json.loads((busi_ensemble["folder"] / "ensemble.json").read_text())
    assert result["out_of_fold"]["temperature"] == pytest.approx(manifest["temperature"])
    images = result["images"]
    assert images == 20 and result["error_finding"]["top_decile"]["n"] == math.ceil(images / 10)
    assert len(result["cross_fit"]["temperatures"]) == 2 and result["cross_fit"]["ece"]["n"] == images
    for part in ("before", "after"):
        assert 0 <= result["out_of_fold"][part]["ece"]["value"] <= 1
    text = (tmp_path / "calibration-tiny.md").read_text()
    assert "cross-fit" in text and "top decile" in text
    assert script.main([str(tmp_path), "--results", str(tmp_path)]) == 2  # not an ensemble: one line
