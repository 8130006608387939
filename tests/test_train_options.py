"""TrainConfig declares the training options once: each ``dlmi train`` command and each ``dlmi.train_*``
function offers exactly the settings its task uses, under the flag and name TrainConfig gives (issue 18)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlmi import api
from dlmi.cli.main import make_app, run
from dlmi.errors import DlmiError
from dlmi.training.config import TrainConfig, setting_flags

COMMANDS = {"classification": "classifier", "segmentation": "segmenter", "joint": "joint"}
FUNCTIONS = {"classification": api.train_classifier, "segmentation": api.train_segmenter,
             "joint": api.train_joint}
# Parameters that start, resume or repeat a run rather than set it up (not TrainConfig fields).
RUN_CONTROL = {"classification": {"resume", "folds"}, "segmentation": {"resume"},
               "joint": {"resume", "folds"}}


def task_fields(task: str) -> dict[str, str]:
    """TrainConfig's settings of ``task`` (field name → its command-line flag)."""
    return {f.name: setting_flags(f)[0].split("/")[0] for f in dataclasses.fields(TrainConfig)
            if f.name != "task" and task in f.metadata.get("tasks", COMMANDS)}


@pytest.fixture(scope="module")
def train_commands() -> dict[str, object]:
    group = typer.main.get_command(make_app()).commands["train"]  # type: ignore[attr-defined]
    return {task: group.commands[name] for task, name in COMMANDS.items()}


@pytest.mark.parametrize("task", COMMANDS)
def test_each_command_offers_exactly_its_tasks_settings(task: str, train_commands) -> None:
    flags = {param.opts[0] for param in train_commands[task].params}
    expected = set(task_fields(task).values()) | {f"--{name}" for name in RUN_CONTROL[task]}
    assert flags - expected == set(), f"dlmi train {COMMANDS[task]}: options that are not settings"
    assert expected - flags == set(), f"dlmi train {COMMANDS[task]}: settings without an option"


@pytest.mark.parametrize("task", COMMANDS)
def test_each_api_function_takes_exactly_its_tasks_settings(task: str) -> None:
    keywords = set(inspect.signature(FUNCTIONS[task]).parameters)
    expected = set(task_fields(task)) | RUN_CONTROL[task]
    assert keywords - expected == set(), f"{FUNCTIONS[task].__name__}: keywords that are not settings"
    assert expected - keywords == set(), f"{FUNCTIONS[task].__name__}: settings without a keyword"


def test_every_setting_is_used_by_some_task() -> None:
    used = set().union(*(task_fields(task) for task in COMMANDS))
    settings = {f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("recorded")}
    assert settings - used == {"task"}


def test_segmenter_takes_the_stronger_recipe_and_best_metric(tmp_path: Path) -> None:
    out = tmp_path / "seg"
    result = CliRunner().invoke(make_app(), [
        "train", "segmenter", "--dataset", "synthetic", "--image-size", "32", "--base-channels", "4",
        "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--quiet", "--warmup-epochs", "1",
        "--ema", "0.9", "--augment", "--augment-recipe", "ultrasound", "--best-metric", "val_dice",
        "--optimizer", "adamw", "--grad-clip", "1.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("warmup_epochs", "ema", "augment_recipe", "best_metric", "optimizer",
                                    "grad_clip")} == {
        "warmup_epochs": 1, "ema": 0.9, "augment_recipe": "ultrasound", "best_metric": "val_dice",
        "optimizer": "adamw", "grad_clip": 1.5}


def test_a_best_metric_the_task_does_not_log_is_one_line(tmp_path: Path, capsys) -> None:
    status = run(["train", "classifier", "--dataset", "synthetic", "--image-size", "32", "--epochs", "1",
                  "--best-metric", "val_dice", "--out", str(tmp_path / "cls")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == [
        "dlmi: error: best metric 'val_dice' is not logged by classification training; expected one of "
        "val_accuracy, val_detect_accuracy, val_loss"]
    assert not (tmp_path / "cls").exists()


@pytest.mark.parametrize("setting,message", [
    ({"optimizer": "sgd"}, "unknown optimizer 'sgd'; expected one of adamw, adam"),
    ({"cache": "both"}, "unknown cache 'both'; expected one of auto, memory, disk, none"),
])
def test_removed_choices_are_refused(setting: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(DlmiError) as raised:
        TrainConfig(task="segmentation", dataset="synthetic", out=str(tmp_path), **setting).resolved()
    assert str(raised.value) == message


def test_a_config_json_without_a_newer_setting_takes_todays_default() -> None:
    config = TrainConfig.from_dict({"task": "classification", "dataset": "synthetic", "out": "runs/cls"})
    assert (config.precision, config.channels_last) == ("auto", True)


def test_a_config_json_written_before_a_rename_still_loads() -> None:
    """A joint run written when the class loss weight was called ``class_weight`` evaluates and resumes."""
    old = {"task": "joint", "dataset": "synthetic", "out": "runs/j", "class_weight": 0.7}
    config = TrainConfig.from_dict(old)
    assert config.class_loss_weight == 0.7
