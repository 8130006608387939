"""The joint model ``unet-mt``, its pipeline and gate, fold ensembles with flip TTA, and their ONNX export."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from dlmi.errors import DlmiError
from dlmi.export.metadata import read_metadata
from dlmi.export.onnx_export import export_onnx
from dlmi.plugins import create_model
from dlmi.runtime.checkpoint import save_checkpoint
from dlmi.runtime.ensemble import JointEnsemble, load_ensemble
from dlmi.runtime.gating import EMPTY_LOGIT
from dlmi.runtime.trained import build_meta, load_trained
from dlmi.runtime.two_stage import JointPipeline
from dlmi.training.steps.joint import JointSteps

CLASSES = ("normal", "benign", "malignant")


def joint_model(seed: int = 0, base: int = 4, head: str = "global") -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("unet-mt", num_classes=3, base_channels=base, head=head).eval()


def test_forward_shapes_any_size_and_deep_outputs():
    model = joint_model()
    seg, cls = model(torch.rand(2, 1, 37, 50))
    assert seg.shape == (2, 1, 37, 50) and cls.shape == (2, 3)
    seg, cls, aux = model(torch.rand(2, 1, 64, 64), deep=True)
    assert [tuple(a.shape[-2:]) for a in aux] == [(8, 8), (16, 16), (32, 32)]


def test_lesion_head_reads_the_mask_without_moving_it():
    model = joint_model(head="lesion")
    seg, cls = model(torch.rand(2, 1, 37, 50))
    assert seg.shape == (2, 1, 37, 50) and cls.shape == (2, 3)
    model.zero_grad()
    model(torch.rand(2, 1, 48, 48))[1].sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["outc.weight"] is None  # the mask is detached: the class loss does not train it
    assert grads["head.1.weight"].abs().sum() > 0
    assert grads["up1.conv.block.0.weight"].abs().sum() > 0  # the decoder's features feed the head
    # The pooled features follow the mask: a mask over the whole image averages each map (with the prior
    # weight of one full-size pixel at 0), a mask over none of it gives about 0.
    maps = [torch.full((1, 4, 128 // s, 128 // s), 2.0) for s in (16, 8, 4, 2)]
    from dlmi.models.unet_mt_torch import lesion_features

    full = lesion_features(torch.full((1, 1, 128, 128), 20.0), maps, model._LESION_SCALES)
    none = lesion_features(torch.full((1, 1, 128, 128), -20.0), maps, model._LESION_SCALES)
    pixels = 128 * 128
    assert torch.allclose(full[0], torch.full((1, 4), 2.0 * pixels / (pixels + 1)), atol=1e-3)
    assert full[-1].item() > 0.99
    assert max(p.abs().max().item() for p in none) < 1e-4


def test_unknown_head_is_a_clear_error():
    with pytest.raises(DlmiError, match="head must be one of global, lesion"):
        create_model("unet-mt", num_classes=3, head="attention")


def test_lesion_head_exports_with_parity(tmp_path):
    meta = build_meta(task="joint", model="unet-mt", model_options={"base_channels": 4, "head": "lesion"},
                      num_classes=3, classes=CLASSES, normal_class="normal", image_size=32,
                      dataset="synthetic", run_dir=str(tmp_path), threshold=0.5)
    model = joint_model(3, head="lesion")
    payload = {"model": model.state_dict(), "meta": meta, "epoch": 1}
    checkpoint = save_checkpoint(tmp_path / "best.pt", payload)
    report = export_onnx(segmenter=checkpoint, out=tmp_path / "exported")
    assert report.parity and all(r.passed for r in report.parity)
    image = np.random.default_rng(1).random((2, 1, 32, 32), dtype=np.float32)
    two_stage = ort_session(tmp_path / "exported" / "two_stage.onnx")
    probs, masks, gated = two_stage.run(None, {"image": image})[:3]
    with torch.no_grad():
        t_probs, t_masks, t_gated = JointPipeline(model, normal_index=0)(torch.from_numpy(image))[:3]
    np.testing.assert_allclose(probs, t_probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(masks, t_masks.numpy(), atol=1e-4)
    assert gated.astype(bool).tolist() == t_gated.tolist()


def test_joint_loss_trains_both_heads():
    from dlmi.plugins import create_loss

    model = joint_model().train()
    steps = JointSteps(create_loss("dice-bce"), normal_index=0)
    images = torch.rand(4, 1, 32, 32)
    masks = torch.zeros(4, 32, 32)
    masks[1:, 8:20, 8:20] = 1
    batch = {"image": images, "mask": masks, "label": torch.tensor([0, 1, 2, 1])}
    result = steps.forward(model, batch, training=True)
    result.loss.backward()
    assert result.loss.ndim == 0 and torch.isfinite(result.loss)
    for name in ("head.1.weight", "outc.weight", "aux.0.weight", "inc.block.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    metrics = steps.summarize(result.records, "train")
    assert set(metrics) >= {"train_accuracy", "train_lesion_dice", "train_empty_fpr", "train_score"}


def test_a_few_steps_lower_the_loss():
    from dlmi.plugins import create_loss

    model = joint_model(base=4).train()
    steps = JointSteps(create_loss("dice-bce"), normal_index=0)
    masks = torch.zeros(8, 32, 32)
    masks[4:, 8:24, 8:24] = 1
    images = masks[:, None] * 0.8 + 0.1 * torch.rand(8, 1, 32, 32)
    batch = {"image": images, "mask": masks, "label": torch.tensor([0] * 4 + [1] * 4)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = steps.forward(model, batch, training=True).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


class FixedJoint(torch.nn.Module):
    """A joint 'network' whose class logits and mask logits are given per image (to test the gate)."""

    def __init__(self, class_logits: torch.Tensor, seg_logits: torch.Tensor) -> None:
        super().__init__()
        self.class_logits, self.seg_logits = class_logits, seg_logits

    def forward(self, image: torch.Tensor):
        return self.seg_logits, self.class_logits


def test_pipeline_gates_on_its_own_head_and_on_tiny_lesions():
    class_logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0]])
    seg = torch.full((3, 1, 8, 8), -5.0)
    seg[:, :, :4, :4] = 5.0  # 16 lesion pixels everywhere
    seg[2, :, :4, :4] = -5.0
    seg[2, :, 0, 0] = 5.0  # image 2: a single lesion pixel
    pipeline = JointPipeline(FixedJoint(class_logits, seg), normal_index=0)
    probs, masks, gated = pipeline(torch.zeros(3, 1, 8, 8))[:3]
    assert gated.tolist() == [True, False, False]
    assert masks[0].max() == 0 and (masks[1] > 0.5).sum() == 16 and (masks[2] > 0.5).sum() == 1
    _, masks, gated = JointPipeline(FixedJoint(class_logits, seg), normal_index=0,
                                    min_lesion_pixels=4)(torch.zeros(3, 1, 8, 8))[:3]
    assert gated.tolist() == [True, False, True] and masks[2].max() == 0
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert EMPTY_LOGIT < -100


def test_pipeline_gates_on_the_normal_probability_when_given_a_threshold():
    # Image 0: benign wins the arg-max, yet normal holds 0.40 of the probability; image 1: normal holds 0.21.
    class_logits = torch.log(torch.tensor([[0.40, 0.45, 0.15], [0.21, 0.70, 0.09]]))
    seg = torch.full((2, 1, 8, 8), 5.0)
    by_argmax = JointPipeline(FixedJoint(class_logits, seg), normal_index=0)(torch.zeros(2, 1, 8, 8))[2]
    assert by_argmax.tolist() == [False, False]
    _, masks, gated = JointPipeline(FixedJoint(class_logits, seg), normal_index=0,
                                    normal_threshold=0.3)(torch.zeros(2, 1, 8, 8))[:3]
    assert gated.tolist() == [True, False] and masks[0].max() == 0 and masks[1].min() > 0.5


def test_flip_tta_is_mirror_symmetric_and_averages_members():
    a, b = joint_model(1), joint_model(2)
    image = torch.rand(2, 1, 32, 48)
    ensemble = JointEnsemble([a, b], flip_tta=True).eval()
    with torch.no_grad():
        seg, cls = ensemble(image)
        seg_m, cls_m = ensemble(torch.flip(image, dims=[-1]))
        assert torch.allclose(torch.flip(seg, dims=[-1]), seg_m, atol=1e-5)
        assert torch.allclose(cls, cls_m, atol=1e-6)
        # Without TTA: the mean of the two members' probabilities.
        plain = JointEnsemble([a, b], flip_tta=False)
        seg, cls = plain(image)
        expected = (torch.sigmoid(a(image)[0]) + torch.sigmoid(b(image)[0])) / 2
        assert torch.allclose(torch.sigmoid(seg), expected, atol=1e-5)
        expected = (torch.softmax(a(image)[1], 1) + torch.softmax(b(image)[1], 1)) / 2
        assert torch.allclose(torch.softmax(cls, 1), expected, atol=1e-5)


def write_joint_checkpoint(path, seed: int, size: int = 32, run_dir=None):
    meta = build_meta(task="joint", model="unet-mt", model_options={"base_channels": 4}, num_classes=3,
                      classes=CLASSES, normal_class="normal", image_size=size, dataset="synthetic",
                      run_dir=str(run_dir or path.parent), threshold=0.5)
    model = joint_model(seed)
    with torch.no_grad():
        model.head[1].bias.copy_(torch.tensor([0.0, 0.3, 0.1]))
    return save_checkpoint(path, {"model": model.state_dict(), "meta": meta, "epoch": 1})


@pytest.fixture
def ensemble_folder(tmp_path):
    folder = tmp_path / "ensemble"
    for fold in range(2):
        (folder / f"fold-{fold}").mkdir(parents=True)
        write_joint_checkpoint(folder / f"fold-{fold}" / "best.pt", seed=fold)
    (folder / "ensemble.json").write_text(json.dumps(
        {"members": ["fold-0", "fold-1"], "flip_tta": True, "threshold": 0.5, "min_lesion_pixels": 3}))
    return folder


def ort_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_ensemble_exports_as_one_graph_matching_pytorch(ensemble_folder, tmp_path):
    loaded = load_ensemble(ensemble_folder)
    assert loaded.task == "joint" and loaded.meta["min_lesion_pixels"] == 3
    out = tmp_path / "exported"
    report = export_onnx(segmenter=ensemble_folder, out=out)
    assert all(r.passed for r in report.parity)
    meta = read_metadata(out / "two_stage.onnx")
    assert json.loads(meta["classes"]) == list(CLASSES) and meta["normal_class"] == "normal"
    image = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    probs, masks, gated = ort_session(out / "two_stage.onnx").run(None, {"image": image})[:3]
    pipeline = JointPipeline(loaded.model, normal_index=0, min_lesion_pixels=3)
    with torch.no_grad():
        t_probs, t_masks, t_gated = pipeline(torch.from_numpy(image))[:3]
    np.testing.assert_allclose(probs, t_probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(masks, t_masks.numpy(), atol=1e-4)
    assert gated.astype(bool).tolist() == t_gated.tolist()
    seg_logits, seg_probs = ort_session(out / "unet.onnx").run(None, {"image": image})
    np.testing.assert_allclose(seg_probs, torch.sigmoid(loaded.model(torch.from_numpy(image))[0]).detach(),
                               atol=1e-4)


def test_joint_export_refuses_a_second_classifier(ensemble_folder, tmp_path):
    with pytest.raises(DlmiError, match="this one is a joint run"):
        export_onnx(classifier=ensemble_folder / "fold-0" / "best.pt", segmenter=ensemble_folder,
                    out=tmp_path / "x")


def test_ensemble_members_must_agree(ensemble_folder):
    write_joint_checkpoint(ensemble_folder / "fold-1" / "best.pt", seed=1, size=64)
    with pytest.raises(DlmiError, match="image_size differs"):
        load_trained(ensemble_folder)


@pytest.mark.slow
def test_train_folds_end_to_end_on_synthetic(tmp_path):
    """`dlmi train joint --folds 2` → ensemble.json chosen out of fold → evaluate → export → predict."""
    from PIL import Image

    from dlmi.cli.main import make_app

    app = make_app()
    runner = CliRunner()
    out = tmp_path / "joint"
    args = ["train", "joint", "--dataset", "synthetic", "--image-size", "32", "--epochs", "2",
            "--base-channels", "4", "--batch-size", "8", "--device", "cpu", "--ema", "0.9", "--warmup-epochs",
            "1", "--augment", "--augment-recipe", "ultrasound", "--folds", "2", "--quiet", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "ensemble.json").read_text())
    assert manifest["members"] == ["fold-0", "fold-1"]
    split = json.loads((out / "split.json").read_text())
    assert len(split["folds"]) == 2 and split["test"]
    for fold in range(2):
        val = set(split["folds"][fold]["val"])
        assert val and not val & set(split["folds"][fold]["train"]) and not val & set(split["test"])
    choice = manifest["postprocess"]
    assert choice["threshold"] in (0.3, 0.4, 0.5, 0.6, 0.7) and "out-of-fold" in choice["selected_on"]
    # Running it again finishes at once (every fold is done) and keeps the same choice.
    before = (out / "fold-0" / "best.pt").stat().st_mtime_ns
    assert runner.invoke(app, args).exit_code == 0
    assert (out / "fold-0" / "best.pt").stat().st_mtime_ns == before

    result = runner.invoke(app, ["evaluate", str(out), "--side", "test", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval-test.json").read_text())
    assert "classification" in report and "aided" in report["segmentation"]["variants"]

    result = runner.invoke(app, ["export", "onnx", "--segmenter", str(out), "--out", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((40, 52)) * 255).astype(np.uint8)).save(
            images / f"scan{i}.png")
    result = runner.invoke(app, ["predict", "--aided", str(images), "--models", str(tmp_path / "exp"),
                                 "--out", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "predictions.csv").read_text().count("\n") == 4


def test_saturated_ensemble_exports_holding_its_probabilities(tmp_path):
    """Trained members give probabilities near 0 and 1, where the ensemble's logits (of averaged
    probabilities) magnify float rounding: parity holds the probabilities and reports the logits.

    Two members without flip TTA: averaging the members' probabilities is what saturates, and each exported
    graph then holds two networks instead of four (the export's time grows with the graph)."""
    folder = tmp_path / "ensemble"
    for fold in range(2):
        (folder / f"fold-{fold}").mkdir(parents=True)
        path = write_joint_checkpoint(folder / f"fold-{fold}" / "best.pt", seed=fold)
        payload = torch.load(path, weights_only=True)
        payload["model"]["outc.bias"] = torch.tensor([14.0 - 3 * fold])  # probabilities within 1e-5 of 1
        torch.save(payload, path)
    (folder / "ensemble.json").write_text(json.dumps({"members": ["fold-0", "fold-1"], "flip_tta": False}))
    report = export_onnx(segmenter=folder, out=tmp_path / "exported")
    unet = next(r for r in report.parity if r.file == "unet.onnx")
    assert unet.passed and "logits" not in unet.checked and "probs" in unet.checked
    assert json.loads((tmp_path / "exported" / "export.json").read_text())["files"]["unet.onnx"]["parity"][
        "passed"]

def test_classifier_folds_record_their_out_of_fold_accuracy(tmp_path):
    """`dlmi train classifier --folds 2`: ensemble.json says how often each development image's held-out
    member was right — the number a recipe is chosen on, without the test side."""
    from dlmi.cli.main import make_app
    from dlmi.training.folds import out_of_fold

    out = tmp_path / "cls"
    args = ["train", "classifier", "--dataset", "synthetic", "--model", "seed-cnn", "--image-size", "64",
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--folds", "2", "--quiet",
            "--out", str(out)]
    result = CliRunner().invoke(make_app(), args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "ensemble.json").read_text())
    split = json.loads((out / "split.json").read_text())
    development = set(split["train"]) | set(split["val"])
    assert manifest["oof_images"] == len(development)
    oof = out_of_fold(out, manifest["members"], flip_tta=True)
    assert set(oof["keys"]) == development and oof["mask_probs"] is None
    assert manifest["oof_accuracy"] == float((oof["class_probs"].argmax(1) == oof["labels"]).mean())


def test_a_chosen_normal_threshold_travels_into_the_exported_graph(ensemble_folder, tmp_path):
    """ensemble.json's normal_threshold gates in PyTorch (build_pipeline) and in two_stage.onnx alike.

    Without flip TTA (the gate does not depend on it): each exported graph holds two networks, not four."""
    from dlmi.runtime.two_stage import build_pipeline

    image = np.random.default_rng(1).random((6, 1, 32, 32), dtype=np.float32)
    manifest = json.loads((ensemble_folder / "ensemble.json").read_text())
    manifest.update(flip_tta=False, min_lesion_pixels=0)
    (ensemble_folder / "ensemble.json").write_text(json.dumps(manifest))
    with torch.no_grad():
        class_logits = load_ensemble(ensemble_folder).model(torch.from_numpy(image))[1]
    normal_probs = torch.softmax(class_logits, 1)[:, 0]
    threshold = float(normal_probs.median())
    manifest.update(normal_threshold=threshold)
    (ensemble_folder / "ensemble.json").write_text(json.dumps(manifest))
    loaded = load_ensemble(ensemble_folder)
    with torch.no_grad():
        t_gated = build_pipeline(loaded)(torch.from_numpy(image))[2]
    assert t_gated.tolist() == (normal_probs >= threshold).tolist() and 0 < int(t_gated.sum()) < 6
    export_onnx(segmenter=ensemble_folder, out=tmp_path / "exported")
    gated = ort_session(tmp_path / "exported" / "two_stage.onnx").run(None, {"image": image})[2]
    assert gated.astype(bool).tolist() == t_gated.tolist()
