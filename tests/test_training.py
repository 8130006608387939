"""Training in-process: tiny end-to-end runs, the gate's gradient, determinism, checkpoint safety."""

from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dlmi
from dlmi import hookimpl
from dlmi.datasets.base import Sample
from dlmi.errors import DlmiError
from dlmi.plugins import get_plugins, load_plugins, reset_plugins
from dlmi.runtime.trained import META_KEYS, Trained, build_meta
from dlmi.splits import load_split
from dlmi.training import TrainConfig, load_trained, resume_training, train_classifier, train_segmenter
from dlmi.training.data.augment import JointAugment
from dlmi.training.folder.run_folder import RunFolder
from dlmi.training.steps.aid import ClassifierGate
from dlmi.training.steps.segmentation import SegmentationSteps

CLASSES = ("normal", "benign", "malignant")
SIZE = 64


def tiny_image(index: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, int]:
    """Noisy background; benign = bright disk, malignant = dark square (a tiny CNN tells them apart)."""
    label = index % 3
    rng = np.random.default_rng(index)
    image = rng.normal(110, 20, (size, size))
    mask = np.zeros((size, size), dtype=bool)
    if label:
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = int(rng.integers(size // 8, size // 5))
        yy, xx = np.mgrid[0:size, 0:size]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r if label == 1 else \
            (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        image[mask] = 230 if label == 1 else 20
    return np.clip(image, 0, 255).astype(np.uint8), mask, label


class TinyLesions:
    """An in-memory dataset plugin: 30 images of 64², labels cycling normal/benign/malignant."""

    name = "tiny-lesions"
    classes = CLASSES
    normal_class = "normal"
    has_masks = True
    needs_data_dir = False
    count = 30

    def samples(self, data_dir: Path | None = None) -> list[Sample]:
        return [Sample(f"{CLASSES[i % 3]}/tiny_{i:03d}.png", i % 3) for i in range(self.count)]

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image, mask, _ = tiny_image(int(sample.key.split("_")[1][:3]))
        return image, mask


class TinyImbalanced(TinyLesions):
    """Tiny lesions with half the malignant images left out, so that class weights differ from 1."""

    name = "tiny-imbalanced"

    def samples(self, data_dir: Path | None = None) -> list[Sample]:
        return [s for i, s in enumerate(super().samples(data_dir)) if not (s.label == 2 and i % 2)]


# Every loss the recording loss factory built, in order (to see what training actually used).
CREATED_LOSSES: list[nn.Module] = []


def recording_cross_entropy(class_weights=None) -> nn.Module:
    """The built-in cross-entropy, remembered in CREATED_LOSSES."""
    from dlmi.losses.classification import create_cross_entropy

    loss = create_cross_entropy(class_weights)
    CREATED_LOSSES.append(loss)
    return loss


class TinyPlugin:
    @staticmethod
    @hookimpl
    def dlmi_register_datasets(register) -> None:
        register("tiny-lesions", TinyLesions)
        register("tiny-imbalanced", TinyImbalanced)


class RecordingLosses:
    """A cross-entropy that records what training built (its class weights); only for the test that needs it,
    so the other tests' lists of classification losses stay the built-ins'."""

    @staticmethod
    @hookimpl
    def dlmi_register_losses(register) -> None:
        register("recording-cross-entropy", recording_cross_entropy, task="classification")


@contextmanager
def tiny_environment(cache_dir: Path):
    """The built-ins plus the tiny dataset, one thread (the test machine is shared), a private hash cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    previous = get_plugins()
    reset_plugins(load_plugins(extra=[(TinyPlugin, "test")]))
    old_cache = os.environ.get("DLMI_CACHE_DIR")
    os.environ["DLMI_CACHE_DIR"] = str(cache_dir)
    try:
        yield
    finally:
        if old_cache is None:
            os.environ.pop("DLMI_CACHE_DIR", None)
        else:
            os.environ["DLMI_CACHE_DIR"] = old_cache
        reset_plugins(previous)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def tiny_plugins(tmp_path_factory):
    with tiny_environment(tmp_path_factory.getbasetemp() / "cache"):
        yield


def classifier_config(out: Path, **changes) -> TrainConfig:
    settings = dict(task="classification", dataset="tiny-lesions", out=str(out), image_size=SIZE, epochs=3,
                    batch_size=8, quiet=True, device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


def segmenter_config(out: Path, **changes) -> TrainConfig:
    settings = dict(task="segmentation", dataset="tiny-lesions", out=str(out), image_size=32, epochs=3,
                    batch_size=8, base_channels=4, quiet=True, device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    """One tiny classifier run shared by the tests that need a trained classifier."""
    with tiny_environment(tmp_path_factory.getbasetemp() / "cache"):
        return train_classifier(classifier_config(tmp_path_factory.mktemp("cls") / "run", lr=3e-4))


def test_classifier_run_folder_and_learning(classifier_run: Path) -> None:
    rows = metrics_of(classifier_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_detect_accuracy", "lr",
                "seconds"):
        assert all(key in r for r in rows), key
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # The logged val accuracy is the last epoch's model scored on the val side (evaluation recounts it).
    report = dlmi.evaluate(classifier_run, side="val", checkpoint="last", resamples=10, panels=False,
                           write=False)
    assert rows[-1]["val_accuracy"] == pytest.approx(report.accuracy.value)
    assert sum(r["best"] for r in rows) >= 1
    for name in ("config.json", "split.json", "best.pt", "last.pt", "curve_loss.png", "curve_accuracy.png"):
        assert (classifier_run / name).is_file(), name
    assert (classifier_run / "curve_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((classifier_run / "config.json").read_text())
    assert config["optimizer"] == "adamw" and config["weight_decay"] == 1e-5 and config["grad_clip"] == 5.0


def test_load_trained_rebuilds_the_model_from_meta(classifier_run: Path) -> None:
    trained = load_trained(classifier_run)
    assert trained.checkpoint == classifier_run / "best.pt" and trained.run_dir == classifier_run
    assert set(META_KEYS) <= set(trained.meta)
    assert trained.meta["task"] == "classification" and trained.meta["classes"] == list(CLASSES)
    assert trained.normal_index == 0 and not trained.model.training
    from_file = load_trained(classifier_run / "last.pt")
    assert from_file.checkpoint.name == "last.pt"
    logits = trained.model(torch.rand(2, 1, SIZE, SIZE))
    assert logits.shape == (2, 3)


@pytest.mark.slow
def test_segmenter_learns_and_scores(tmp_path: Path) -> None:
    run_dir = train_segmenter(segmenter_config(tmp_path / "seg", loss="dice-bce", lr=3e-3))
    rows = metrics_of(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert all(0.0 <= r["val_iou"] <= 1.0 and 0.0 <= r["val_dice"] <= 1.0 for r in rows)
    assert (run_dir / "curve_iou.png").is_file()
    trained = load_trained(run_dir)
    assert trained.meta["task"] == "segmentation" and trained.meta["model_options"] == {"base_channels": 4}
    assert trained.model(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


class ByMeanGate(nn.Module):
    """A stand-in classifier: says normal (class 0) for images whose mean is below 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (x.mean(dim=(1, 2, 3)) < 0.5).float()
        return torch.stack([dark, 1 - dark, torch.zeros_like(dark)], dim=1)


def stand_in_gate(image_size: int = 32) -> ClassifierGate:
    meta = build_meta(task="classification", model="stand-in", model_options={}, num_classes=3,
                      classes=CLASSES, normal_class="normal", image_size=image_size, dataset="tiny-lesions",
                      run_dir=None)
    return ClassifierGate(Trained(ByMeanGate(), meta, Path("stand-in.pt"), None))


@pytest.mark.parametrize("loss_name", ["dice", "bce", "mse"])
def test_gated_images_give_no_gradient(loss_name: str) -> None:
    from dlmi.plugins import create_loss, create_model

    torch.manual_seed(0)
    unet = create_model("unet", in_channels=1, out_channels=1, base_channels=4)
    # Eval mode first: in training mode BatchNorm's batch statistics let one image's pixels move the others'
    # outputs, which would hide what is tested here (no gradient through the gated image's own output).
    unet.eval()
    images = torch.rand(4, 1, 32, 32) * 0.4
    images[2:] += 0.5  # images 0, 1 are dark (gated as normal), 2, 3 bright (kept)
    images.requires_grad_(True)
    masks = (torch.rand(4, 1, 32, 32) > 0.7).float()
    steps = SegmentationSteps(create_loss(loss_name), gate=stand_in_gate(image_size=16))  # resize path too
    result = steps.forward(unet, {"image": images, "mask": masks}, training=True)
    assert result.records["gated"].tolist() == [True, True, False, False]
    result.loss.backward()
    assert torch.count_nonzero(images.grad[:2]) == 0
    assert torch.count_nonzero(images.grad[2:]) > 0

    # Training mode, a batch of gated images only: the loss is a constant, no parameter gets a gradient.
    unet.train()
    unet.zero_grad()
    only_gated = images.detach()[:2].requires_grad_(True)
    steps.forward(unet, {"image": only_gated, "mask": masks[:2]}, training=True).loss.backward()
    grads = [p.grad for p in unet.parameters() if p.grad is not None]
    assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.slow
def test_aided_segmenter_run(classifier_run: Path, tmp_path: Path) -> None:
    run_dir = train_segmenter(segmenter_config(tmp_path / "aided", epochs=2, aid=str(classifier_run)))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["aid"] == str(classifier_run)
    assert (run_dir / "split.json").read_text() == (classifier_run / "split.json").read_text()
    rows = metrics_of(run_dir)
    assert all("val_iou_unaided" in r and 0.0 <= r["val_gated_fraction"] <= 1.0 for r in rows)


def test_aid_needs_the_same_split(classifier_run: Path, tmp_path: Path) -> None:
    from dlmi.splits import make_split, save_split

    other = tmp_path / "other_split.json"
    save_split(make_split("tiny-lesions", None, seed=7), other)
    with pytest.raises(DlmiError, match="split differs"):
        train_segmenter(segmenter_config(tmp_path / "bad", epochs=1, aid=str(classifier_run),
                                         split=str(other)))


def test_aid_on_another_dataset_is_refused(classifier_run: Path, tmp_path: Path) -> None:
    with pytest.raises(DlmiError, match="datasets 'tiny-lesions' vs 'synthetic'"):
        train_segmenter(segmenter_config(tmp_path / "bad", dataset="synthetic", epochs=1,
                                         aid=str(classifier_run)))


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path: Path) -> None:
    def final_weights(name: str, seed: int) -> dict[str, torch.Tensor]:
        config = segmenter_config(tmp_path / name, epochs=2, seed=seed, augment=True, class_balance="sampler")
        return torch.load(train_segmenter(config) / "last.pt", weights_only=True)["model"]

    first, second, other = final_weights("a", 1), final_weights("b", 1), final_weights("c", 2)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.slow
def test_resume_continues_on_the_same_curve(tmp_path: Path) -> None:
    """2 epochs, then resumed to 3, equals 3 straight epochs: weights, optimiser and RNG states carry over."""
    settings = dict(augment=True, class_balance="sampler")
    straight = train_segmenter(segmenter_config(tmp_path / "straight", epochs=3, **settings))
    part = train_segmenter(segmenter_config(tmp_path / "part", epochs=2, **settings))
    resume_training(part, epochs=3)
    rows, straight_rows = metrics_of(part), metrics_of(straight)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in straight_rows]
    a = torch.load(part / "last.pt", weights_only=True)["model"]
    b = torch.load(straight / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((part / "config.json").read_text())["epochs"] == 3


def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    run_dir = train_segmenter(segmenter_config(tmp_path / "run", epochs=1))
    with pytest.raises(DlmiError, match="cannot change lr"):
        resume_training(run_dir, lr=0.1)


def test_existing_run_folder_is_not_overwritten(classifier_run: Path) -> None:
    with pytest.raises(DlmiError, match="already holds a training run"):
        train_classifier(classifier_config(classifier_run))


class Payload:
    """Any class instance: a checkpoint carrying one needs code to unpickle."""

    def __init__(self) -> None:
        self.value = 1


def test_pickle_checkpoint_is_refused(tmp_path: Path, classifier_run: Path) -> None:
    good = torch.load(classifier_run / "best.pt", weights_only=True)
    evil = tmp_path / "evil.pt"
    torch.save({"model": good["model"], "meta": good["meta"], "extra": Payload()}, evil)
    with pytest.raises(DlmiError, match=r"evil\.pt: refused .*pickle"):
        load_trained(evil)


def test_metrics_log_drops_epochs_past_the_checkpoint_and_torn_lines(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    for epoch in (1, 2, 3):
        run.append_metrics({"epoch": epoch, "train_loss": 1.0 / epoch})
    with open(run.metrics, "a") as handle:
        handle.write('{"epoch": 4, "train_lo')  # a line cut by a kill
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    assert [r["epoch"] for r in run.truncate_metrics(2)] == [1, 2]
    assert [json.loads(x)["epoch"] for x in run.metrics.read_text().splitlines()] == [1, 2]


def test_joint_augmentation_moves_the_mask_with_the_image() -> None:
    torch.manual_seed(3)
    image_np, mask_np, _ = tiny_image(1)
    image = torch.from_numpy(image_np.astype(np.float32) / 255)[None]
    mask = torch.from_numpy(mask_np.astype(np.float32))[None]
    flip = JointAugment(flip=1.0, degrees=0, translate=0, scale=(1.0, 1.0), brightness=0, contrast=0)
    out_image, out_mask = flip(image, mask)
    assert torch.equal(out_mask, mask.flip(-1)) and torch.allclose(out_image, image.flip(-1))
    out_image, out_mask = JointAugment()(image, mask)
    assert out_image.shape == image.shape and set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert float(out_image.min()) >= 0.0 and float(out_image.max()) <= 1.0
    # The lesion (bright disk) is still under the moved mask.
    assert out_image[out_mask.bool()].mean() > out_image[~out_mask.bool()].mean() + 0.2


def test_cosine_schedule_and_class_weights() -> None:
    from dlmi.training.data.split_data import class_weights
    from dlmi.training.loop import scheduled_lr

    config = TrainConfig(task="segmentation", dataset="x", out="x", epochs=4, scheduler="cosine").resolved()
    assert [scheduled_lr(config, e) for e in (1, 3)] == pytest.approx([1e-3, 0.5e-3])
    assert scheduled_lr(config, 4) < scheduled_lr(config, 3)
    flat = TrainConfig(task="segmentation", dataset="x", out="x", epochs=4).resolved()
    assert {scheduled_lr(flat, e) for e in (1, 2, 3, 4)} == {1e-3}
    labels = [Sample(f"k{i}", label) for i, label in enumerate([0, 0, 0, 1])]
    assert class_weights(labels, 3) == pytest.approx([4 / 9, 4 / 3, 0.0])


@pytest.mark.slow
def test_class_weights_reach_the_loss_training_uses(tmp_path: Path) -> None:
    previous = get_plugins()
    reset_plugins(load_plugins(extra=[(TinyPlugin, "test"), (RecordingLosses, "test-recording")]))
    try:
        check_class_weights_reach_the_loss(tmp_path)
    finally:
        reset_plugins(previous)


def check_class_weights_reach_the_loss(tmp_path: Path) -> None:
    CREATED_LOSSES.clear()
    run_dir = train_classifier(classifier_config(tmp_path / "w", epochs=1, class_balance="weights",
                                                 dataset="tiny-imbalanced", loss="recording-cross-entropy"))
    train_keys = load_split(run_dir / "split.json").train
    counts = Counter(CLASSES.index(key.split("/")[0]) for key in train_keys)
    expected = [len(train_keys) / (3 * counts[k]) for k in range(3)]  # n / (K * n_k): rarer, heavier
    assert expected[2] > expected[0]  # the data really is imbalanced
    assert CREATED_LOSSES and all(loss.weight.tolist() == pytest.approx(expected) for loss in CREATED_LOSSES)
    CREATED_LOSSES.clear()
    train_classifier(classifier_config(tmp_path / "u", epochs=1, dataset="tiny-imbalanced",
                                       loss="recording-cross-entropy"))
    assert CREATED_LOSSES and all(loss.weight is None for loss in CREATED_LOSSES)
    with pytest.raises(DlmiError, match="classifier training only"):
        train_segmenter(segmenter_config(tmp_path / "s", class_balance="weights"))
