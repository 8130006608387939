"""Training mistakes fail before anything is written, and what is written is right (issue 10, items 8–12, 17).

Tiny in-process runs on the in-memory ``tiny-lesions`` dataset of ``test_training`` (seconds each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_training import classifier_config, metrics_of, segmenter_config, tiny_environment
from torch import nn

from dlmi import hookimpl
from dlmi.cli.main import run
from dlmi.datasets.base import MAX_IMAGE_SIZE
from dlmi.errors import DlmiError
from dlmi.evaluation import evaluate_run
from dlmi.plugins import load_plugins, reset_plugins
from dlmi.training import TrainConfig, train_classifier, train_segmenter
from dlmi.training.config import TASK_METRICS
from dlmi.training.preflight import check_batch_memory


@pytest.fixture(autouse=True)
def tiny_plugins(tmp_path_factory):
    with tiny_environment(tmp_path_factory.getbasetemp() / "cache"):
        yield


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), sorted(p.name for p in out.iterdir())


# --- 8. every name and option is checked before the run folder is written -------------------------------


@pytest.mark.parametrize("changes", [{"loss": "dcie"}, {"model": "unte"},
                                     {"model_options": {"no_such_option": 3}}])
def test_a_mistake_leaves_no_run_folder_and_the_fixed_command_runs(tmp_path, changes):
    out = tmp_path / "run"
    with pytest.raises(DlmiError) as info:
        train_segmenter(segmenter_config(out, epochs=1, **changes))
    wrong = next(iter(changes.values()))
    assert str(next(iter(wrong)) if isinstance(wrong, dict) else wrong) in str(info.value)
    assert_nothing_written(out)
    train_segmenter(segmenter_config(out, epochs=1))  # the same --out, retried with the mistake fixed
    assert [r["epoch"] for r in metrics_of(out)] == [1]


def test_cli_mistyped_loss_is_one_line_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    code = run(["train", "segmenter", "--dataset", "tiny-lesions", "--image-size", "32", "--base-channels",
                "4", "--epochs", "1", "--device", "cpu", "--quiet", "--loss", "dcie", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlmi: error: unknown loss 'dcie'; registered: ")
    assert_nothing_written(out)



def test_an_image_size_beyond_the_limit_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DlmiError, match=f"image_size must be at most {MAX_IMAGE_SIZE} pixels, got 100000"):
        train_segmenter(segmenter_config(out, epochs=1, image_size=100_000))
    assert_nothing_written(out)
    TrainConfig(task="segmentation", dataset="tiny-lesions", out=str(out), image_size=MAX_IMAGE_SIZE,
                batch_size=1).resolved()  # the limit itself is allowed


def test_a_batch_that_cannot_fit_in_memory_is_refused_and_the_estimate_counts_only_real_samples():
    config = segmenter_config(Path("run"), image_size=16384, batch_size=4096).resolved()
    with pytest.raises(DlmiError, match=r"a batch of 4096 images of 16384x16384 pixels needs at least 8192 "):
        check_batch_memory(config, train_samples=100_000)
    with pytest.raises(DlmiError, match=r"a batch of 1024 images .* needs at least 2048 GiB"):
        check_batch_memory(config, train_samples=100_000, processes=4)  # the batch is split over processes
    check_batch_memory(config, train_samples=1)  # one sample is 2 GiB: a batch never exceeds the data set

# --- 9. a folder holding another tool's metrics.jsonl ---------------------------------------------------


def test_a_folder_with_a_foreign_metrics_log_is_refused(tmp_path):
    out = tmp_path / "not-a-run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.3}\n')
    with pytest.raises(DlmiError, match="metrics.jsonl"):
        train_classifier(classifier_config(out, epochs=1))
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.3}\n'
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


# --- 10. evaluating a k-fold run ------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_a_run_trained_on_one_fold(tmp_path):
    from dlmi.splits import make_split, save_split

    split = make_split("tiny-lesions", None, folds=3, test=0.2)
    split_file = save_split(split, tmp_path / "folds.json")
    run_dir = train_classifier(classifier_config(tmp_path / "fold1", epochs=1, split=str(split_file),
                                                 fold=1))
    result = evaluate_run(run_dir, side="val", resamples=20, panels=False)
    assert result["context"]["n_images"] == len(split.folds[1]["val"])
    test = evaluate_run(run_dir, side="test", resamples=20, panels=False)
    assert test["context"]["n_images"] == len(split.test)


# --- 11. the best-checkpoint metric ---------------------------------------------------------------------


def test_a_metric_the_task_does_not_log_is_refused(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DlmiError, match="'val_dice' is not logged by classification"):
        train_classifier(classifier_config(out, best_metric="val_dice"))
    with pytest.raises(DlmiError, match="val_iou_unaided"):
        train_segmenter(segmenter_config(out, best_metric="val_iou_unaided"))
    assert_nothing_written(out)


@pytest.mark.slow
def test_each_task_logs_its_metrics_and_best_follows_their_direction(tmp_path):
    cls = train_classifier(classifier_config(tmp_path / "cls", epochs=3, best_metric="val_loss", lr=3e-3))
    rows = metrics_of(cls)
    assert set(TASK_METRICS["classification"]) <= set(rows[0])
    lowest = min(rows, key=lambda r: (r["val_loss"], r["epoch"]))  # lower is better for a loss
    assert torch.load(cls / "best.pt", weights_only=True)["epoch"] == lowest["epoch"]
    seg = train_segmenter(segmenter_config(tmp_path / "seg", epochs=1, aid=str(cls),
                                           best_metric="val_iou_unaided"))
    assert set(TASK_METRICS["segmentation"]) <= set(metrics_of(seg)[0])


# --- 12. paths ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_paths_are_accepted_where_a_folder_is_named(tmp_path):
    cls = train_classifier(classifier_config(tmp_path / "cls", epochs=1))
    assert isinstance(cls, Path)
    seg = train_segmenter(TrainConfig(task="segmentation", dataset="tiny-lesions", out=tmp_path / "seg",
                                      aid=cls, image_size=32, epochs=1, batch_size=8, base_channels=4,
                                      quiet=True, device="cpu"))
    config = json.loads((seg / "config.json").read_text())
    assert config["out"] == str(tmp_path / "seg") and config["aid"] == str(cls)


# --- 17. the task of a model or loss, and what a loss returns -------------------------------------------


class PixelLoss(nn.Module):
    """BCE per pixel, not reduced: a map, not a number."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")


class UnsaidTaskLoss(nn.Module):
    """A segmentation loss registered without ``task=``: it fails on a classifier's (N, K) logits."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, target.float())


class LossPlugin:
    @staticmethod
    @hookimpl
    def dlmi_register_losses(register) -> None:
        register("pixel-bce", PixelLoss, task="segmentation")
        register("unsaid-task", UnsaidTaskLoss)


@pytest.fixture
def loss_plugin():
    from test_training import TinyPlugin

    reset_plugins(load_plugins(extra=[(TinyPlugin, "test"), (LossPlugin, "dlmi-odd-losses")]))
    yield


def test_a_segmentation_loss_for_a_classifier_is_one_line_before_anything(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DlmiError, match=r"loss 'dice' \(from built-in\) is a segmentation loss; train "
                                        r"classifier needs a classification loss \(cross-entropy\)"):
        train_classifier(classifier_config(out, loss="dice"))
    with pytest.raises(DlmiError, match=r"model 'unet' \(from built-in\) is a segmentation model"):
        train_classifier(classifier_config(out, model="unet"))
    assert_nothing_written(out)


def test_a_loss_that_fails_or_returns_a_map_is_named(tmp_path, loss_plugin):
    out = tmp_path / "run"
    with pytest.raises(DlmiError,
                       match=r"loss 'pixel-bce' \(from dlmi-odd-losses\) returned \(2, 1, 16, 16\)"):
        train_segmenter(segmenter_config(out, loss="pixel-bce"))
    with pytest.raises(DlmiError, match=r"loss 'unsaid-task' \(from dlmi-odd-losses\) fails on a "
                                        r"classification batch"):
        train_classifier(classifier_config(out, loss="unsaid-task"))
    assert_nothing_written(out)
