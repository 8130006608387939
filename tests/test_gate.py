"""One gate behind every path: `predict --aided` resized or `--tile`, onnx or torch, on a fold ensemble whose
ensemble.json chose a P(normal) threshold; and `--backend torch` on joint and ensemble run and export folders.

The models are untrained joint networks written as checkpoints (no training: seconds)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_joint import write_joint_checkpoint

from dlmi.cli.main import run
from dlmi.errors import DlmiError
from dlmi.export.onnx_export import export_onnx
from dlmi.inference.predictor import open_predictor
from dlmi.runtime.ensemble import load_ensemble
from dlmi.runtime.gating import Gate, lesion_pixels, says_normal

SIZE = 32
IMAGES = 8


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A 2-member joint ensemble (no flip TTA: a smaller graph) whose normal_threshold, the median P(normal)
    of the images, gates half of them while the arg-max gates none; its export; and the images."""
    base = tmp_path_factory.mktemp("gate")
    folder = base / "ensemble"
    for fold in range(2):
        (folder / f"fold-{fold}").mkdir(parents=True)
        write_joint_checkpoint(folder / f"fold-{fold}" / "best.pt", seed=fold, size=SIZE)
    manifest = {"members": ["fold-0", "fold-1"], "flip_tta": False, "threshold": 0.5, "min_lesion_pixels": 0}
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    pixels = []
    for i in range(IMAGES):
        grey = (rng.random((SIZE, SIZE)) * 255).astype(np.uint8)
        Image.fromarray(grey).save(images / f"scan{i}.png")
        pixels.append(grey.astype(np.float32) / 255.0)
    batch = torch.from_numpy(np.stack(pixels)[:, None])
    with torch.no_grad():
        probs = torch.softmax(load_ensemble(folder).model(batch)[1], 1).numpy()
    normal = probs[:, 0]
    threshold = float(np.median(normal))
    manifest["normal_threshold"] = threshold
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    expected = {f"scan{i}.png": bool(normal[i] >= threshold) for i in range(IMAGES)}
    by_argmax = probs.argmax(1) == 0
    assert 0 < sum(expected.values()) < IMAGES and not by_argmax.all()
    assert list(by_argmax) != list(expected.values()), "the threshold must gate other images than the arg-max"
    export_onnx(segmenter=folder, out=base / "exported")
    return base, folder, images, expected


def gated_of(out) -> dict[str, bool]:
    records = json.loads((out / "predictions.json").read_text())["predictions"]
    return {r["file"]: r["gated"] for r in records}


@pytest.mark.parametrize("tile", [False, True], ids=["resized", "tile"])
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_aided_prediction_gates_on_the_ensembles_normal_threshold(ensemble, backend, tile, tmp_path):
    base, folder, images, expected = ensemble
    models = base / "exported" if backend == "onnx" else folder
    out = tmp_path / "out"
    args = ["predict", "--aided", str(images), "--models", str(models), "--backend", backend,
            "--out", str(out)]
    assert run(args + (["--tile"] if tile else [])) == 0
    assert gated_of(out) == expected


def test_export_metadata_carries_the_gate(ensemble):
    base, folder, _, _ = ensemble
    threshold = json.loads((folder / "ensemble.json").read_text())["normal_threshold"]
    predictor = open_predictor([base / "exported"], aided=True, tile=True, provider="cpu")
    assert predictor.info.gate() == Gate(0, threshold, 0, 0.5)


@pytest.mark.parametrize("source", ["joint-run", "ensemble-run", "ensemble-export"])
def test_torch_backend_takes_joint_and_ensemble_folders_as_onnx_does(ensemble, source, tmp_path):
    base, folder, images, _ = ensemble
    models = {"joint-run": folder / "fold-0", "ensemble-run": folder,
              "ensemble-export": base / "exported"}[source]
    torch_predictor = open_predictor([models], backend="torch", aided=True, provider="cpu")
    batch = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)
    probs, masks, gated = torch_predictor.two_stage(batch)
    assert probs.shape == (3, 3) and masks.shape == (3, 1, SIZE, SIZE) and gated.dtype == bool
    np.testing.assert_allclose(torch_predictor.segment(batch), torch_predictor.segment(batch[::-1])[::-1],
                               atol=1e-6)
    if source != "joint-run":
        onnx_predictor = open_predictor([base / "exported"], aided=True, provider="cpu")
        o_probs, o_masks, o_gated = onnx_predictor.two_stage(batch)
        np.testing.assert_allclose(probs, o_probs, atol=1e-4)
        np.testing.assert_allclose(masks, o_masks, atol=1e-4)
        assert gated.tolist() == o_gated.tolist()
        assert torch_predictor.info.gate() == onnx_predictor.info.gate()
    out = tmp_path / "out"
    assert run(["predict", "--aided", str(images), "--models", str(models), "--backend", "torch",
                "--out", str(out)]) == 0
    assert len(gated_of(out)) == IMAGES


def test_a_second_joint_model_is_one_line(ensemble):
    _, folder, _, _ = ensemble
    with pytest.raises(DlmiError, match="a second classifier"):
        open_predictor([folder / "fold-0", folder / "fold-1"], backend="torch", aided=True, provider="cpu")


def test_the_gate_is_one_rule_on_tensors_and_arrays():
    rng = np.random.default_rng(0)
    class_probs = rng.dirichlet([1, 1, 1], size=50).astype(np.float32)
    mask_probs = rng.random((50, 1, 8, 8), dtype=np.float32) ** 3
    for rule in (Gate(0), Gate(0, 0.3), Gate(1, None, 10, 0.4), Gate(2, 0.5, 5, 0.6)):
        on_arrays = rule(class_probs, mask_probs)
        on_tensors = rule(torch.from_numpy(class_probs), torch.from_numpy(mask_probs)).numpy()
        assert on_arrays.dtype == bool and on_arrays.tolist() == on_tensors.tolist()
        normal = class_probs[:, rule.normal_index]
        said = (normal >= rule.normal_threshold if rule.normal_threshold is not None
                else class_probs.argmax(1) == rule.normal_index)
        small = (mask_probs > rule.threshold).reshape(50, -1).sum(1) < rule.min_lesion_pixels
        assert on_arrays.tolist() == (said | small).tolist()
    assert says_normal(class_probs, 0).tolist() == (class_probs.argmax(1) == 0).tolist()
    assert lesion_pixels(np.zeros((0, 1, 4, 4)), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="needs the mask probabilities"):
        Gate(0, None, 3)(class_probs)
    assert Gate(0, None, 8).scaled_min_pixels(64 * 64, 32 * 32) == 32
    assert Gate(0, None, 8).scaled_min_pixels(32 * 32, 32 * 32) == 8


@pytest.mark.parametrize("tile", [False, True], ids=["resized", "tile"])
def test_the_smallest_lesion_gates_tiled_prediction_too(ensemble, tile, tmp_path):
    """ensemble.json's min_lesion_pixels above the image's pixel count: every image is called lesion-free."""
    import shutil

    _, folder, images, _ = ensemble
    copy = tmp_path / "ensemble"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "ensemble.json").read_text())
    (copy / "ensemble.json").write_text(json.dumps({**manifest, "normal_threshold": 1.0,
                                                    "min_lesion_pixels": SIZE * SIZE + 1}))
    out = tmp_path / "out"
    assert run(["predict", "--aided", str(images), "--models", str(copy), "--backend", "torch",
                "--out", str(out), *(["--tile"] if tile else [])]) == 0
    assert set(gated_of(out).values()) == {True}


def test_a_changed_ensemble_member_is_refused_by_the_torch_backend(ensemble, tmp_path):
    """export.json records each fold member's sha256, so a member retrained or swapped since the export is
    one line naming it, not a silently different ensemble."""
    base, _, _, _ = ensemble
    export = tmp_path / "exported"
    shutil.copytree(base / "exported", export)
    manifest = json.loads((export / "export.json").read_text())
    members = manifest["segmenter"]["members"]
    assert len(members) == 2 and all(len(m["sha256"]) == 64 for m in members)
    members[1]["sha256"] = "0" * 64
    (export / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(DlmiError) as exc:
        open_predictor([export], backend="torch", aided=True, provider="cpu")
    assert members[1]["checkpoint"] in str(exc.value) and "sha256" in str(exc.value)
