"""Issue 18, runs and options: nothing already written is lost on resume, fold ensembles are scored honestly,
and a mistaken option, a broken plugin or a wrong argument type is one line — never a traceback or a hang.

Every run here is tiny (24-28 generated images of 32 px, 1-2 epochs, one thread).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import dlmi
from dlmi.cli.main import run
from dlmi.datasets.synthetic import SyntheticDataset
from dlmi.errors import DlmiError
from dlmi.plugins import get_plugins
from dlmi.training.config import TrainConfig

TINY = "runs-tiny"
SOURCE = "tests/test_runs_trust.py"


class TinySynthetic(SyntheticDataset):
    """The synthetic generator, 28 images of 32 px."""

    name = TINY

    def __init__(self) -> None:
        super().__init__(count=28, size=32, seed=0)


class SevenLogits(nn.Module):
    """A classifier that ignores ``num_classes`` and always returns 7 logits."""

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 7)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.linear(image.mean(dim=(2, 3)))


class SaysHello(SevenLogits):
    """A classifier whose forward returns a string."""

    def forward(self, image: torch.Tensor) -> str:  # type: ignore[override]
        return "hello"


class BrokenLoad(TinySynthetic):
    """A dataset plugin whose ``load`` raises on every sample."""

    name = "runs-broken-load"

    def load(self, sample):  # noqa: ANN001, ANN201
        raise ValueError("the scanner's header is unreadable")


@pytest.fixture(autouse=True, scope="module")
def tiny_plugins():
    """The tiny dataset and the broken plugins, for this module only; one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plugins = get_plugins()
    plugins.datasets.register(TINY, TinySynthetic, source=SOURCE)
    plugins.datasets.register(BrokenLoad.name, BrokenLoad, source=SOURCE)
    plugins.models.register("seven-logits", SevenLogits, source=SOURCE, task="classification")
    plugins.models.register("says-hello", SaysHello, source=SOURCE, task="classification")
    yield
    plugins.datasets.forget([TINY, BrokenLoad.name])
    plugins.models.forget(["seven-logits", "says-hello"])
    torch.set_num_threads(threads)


def classifier_config(out: Path, **changes: object) -> TrainConfig:
    settings: dict = dict(task="classification", dataset=TINY, out=str(out), image_size=64, epochs=1,
                          batch_size=8, quiet=True, device="cpu", model="seed-cnn")
    settings.update(changes)
    return TrainConfig(**settings)


def joint_config(out: Path, **changes: object) -> TrainConfig:
    settings: dict = dict(task="joint", dataset=TINY, out=str(out), image_size=32, epochs=2, batch_size=8,
                          base_channels=4, quiet=True, device="cpu", scheduler="poly")
    settings.update(changes)
    return TrainConfig(**settings)


def dlmi_cli(capsys, *args: str) -> tuple[int, str]:
    """``dlmi ARGS`` in this process: exit status and stderr."""
    capsys.readouterr()
    code = run(list(args))
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlmi: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    from dlmi.training.start import train

    return train(classifier_config(tmp_path_factory.mktemp("cls") / "run"))


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory) -> Path:
    """A finished 2-fold joint ensemble of 2 epochs."""
    from dlmi.training.folds import train_folds

    return train_folds(joint_config(tmp_path_factory.mktemp("folds") / "ensemble"), 2)


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- runs: resume loses nothing ----------------------------------------------------------------------------


def test_resume_without_last_pt_refuses_and_keeps_the_log_and_best(classifier_run, tmp_path):
    """Defect 1: a run folder without last.pt but with logged epochs and best.pt is refused, untouched."""
    from dlmi.training.start import resume_training

    run_dir = tmp_path / "run"
    shutil.copytree(classifier_run, run_dir)
    (run_dir / "last.pt").unlink()
    before = contents(run_dir)
    with pytest.raises(DlmiError, match=r"has no last\.pt") as caught:
        resume_training(run_dir, epochs=2)
    assert str(run_dir) in str(caught.value) and "\n" not in str(caught.value)
    assert contents(run_dir) == before


def test_resume_cli_without_last_pt_is_one_line(classifier_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(classifier_run, run_dir)
    (run_dir / "last.pt").unlink()
    before = contents(run_dir)
    code, err = dlmi_cli(capsys, "train", "classifier", "--resume", str(run_dir), "--epochs", "2", "--quiet")
    assert code == 2 and "last.pt" in one_error_line(err)
    assert contents(run_dir) == before


def test_resume_of_a_run_killed_before_its_first_epoch_starts_it(classifier_run, tmp_path):
    """A folder with config.json and split.json only (nothing trained yet) is resumed from the start."""
    from dlmi.training.start import resume_training

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.json", "split.json"):
        shutil.copy(classifier_run / name, run_dir / name)
    resume_training(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and (run_dir / "last.pt").is_file()


# --- runs: fold ensembles ----------------------------------------------------------------------------------


def test_fold_members_and_out_of_fold_scores_use_last_pt(fold_run):
    """Section 2: the checkpoint of each member is not chosen on the fold that scores it: last.pt, recorded in
    ensemble.json; the out-of-fold choice and the loaded ensemble use it even when best.pt is gone."""
    from dlmi.runtime.trained import load_trained
    from dlmi.training.folds import choose_postprocess

    manifest = json.loads((fold_run / "ensemble.json").read_text())
    assert manifest["member_checkpoint"] == "last.pt"
    assert "last.pt" in manifest["postprocess"]["selected_on"]
    copy = fold_run.parent / "without-best"
    shutil.copytree(fold_run, copy)
    for member in manifest["members"]:
        (copy / member / "best.pt").unlink()
    ensemble = load_trained(copy)
    assert [m.checkpoint.name for m in ensemble.members] == ["last.pt", "last.pt"]
    again = choose_postprocess(copy, manifest["members"], flip_tta=True, device="cpu")
    assert again["candidates"] == manifest["postprocess"]["candidates"]


def test_fold_resume_with_a_changed_setting_names_it(fold_run, tmp_path):
    """Section 2: re-running a fold run with other settings is refused, naming them; nothing changes."""
    from dlmi.training.folds import train_folds

    copy = tmp_path / "ensemble"
    shutil.copytree(fold_run, copy)
    before = contents(copy)
    with pytest.raises(DlmiError, match=r"lr \(2e-3 stored, 0\.01 given\).*seed|lr.*seed") as caught:
        train_folds(joint_config(copy, lr=0.01, seed=3), 2)
    assert str(copy / "fold-0") in str(caught.value)
    assert contents(copy) == before
    train_folds(joint_config(copy), 2)  # the stored settings: every fold is kept, ensemble.json rewritten
    assert contents(copy)["fold-0/last.pt"] == before["fold-0/last.pt"]


def test_fold_without_last_pt_but_with_epochs_is_not_deleted(fold_run, tmp_path):
    """A fold folder holding trained epochs but no last.pt is refused, not wiped and retrained."""
    from dlmi.training.folds import train_folds

    copy = tmp_path / "ensemble"
    shutil.copytree(fold_run, copy)
    (copy / "ensemble.json").unlink()
    (copy / "fold-1" / "last.pt").unlink()
    before = contents(copy)
    with pytest.raises(DlmiError, match=r"fold-1.*has no last\.pt"):
        train_folds(joint_config(copy), 2)
    assert contents(copy) == before


def test_more_folds_than_images_is_refused(tmp_path):
    """Defect 10: --folds 50 on 28 images names the counts; nothing is written."""
    from dlmi.training.folds import train_folds

    with pytest.raises(DlmiError, match=r"--folds 50.*2[0-9] development images"):
        train_folds(joint_config(tmp_path / "many"), 50)
    assert not (tmp_path / "many").exists()


# --- plugins: model outputs and dataset loads --------------------------------------------------------------


@pytest.mark.parametrize(("model", "expected"), [
    ("seven-logits", r"model 'seven-logits' \(from tests/test_runs_trust\.py\).*\(2, 7\).*\(2, 3\)"),
    ("says-hello", r"model 'says-hello' \(from tests/test_runs_trust\.py\).*str"),
])
def test_a_model_with_wrong_outputs_is_refused_at_build(model, expected, tmp_path):
    """Defect 6 / 11: the outputs are checked by one forward at the configured size, before any file."""
    from dlmi.training.start import train

    with pytest.raises(DlmiError, match=expected) as caught:
        train(classifier_config(tmp_path / "run", model=model))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_a_dataset_plugin_whose_load_raises_is_named(tmp_path):
    """Defect 11: the plugin, the sample and the cause, in one line."""
    from dlmi.training.start import train

    expected = (r"dataset 'runs-broken-load' \(from tests/test_runs_trust\.py\) cannot load "
                r".*synthetic_00\d\d\.png.*ValueError: the scanner's")
    with pytest.raises(DlmiError, match=expected) as caught:
        train(classifier_config(tmp_path / "run", dataset=BrokenLoad.name))
    assert "\n" not in str(caught.value)


# --- files: junk checkpoints -------------------------------------------------------------------------------


@pytest.fixture
def junk_pt(tmp_path) -> Path:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    return path


@pytest.mark.parametrize("command", [
    ("evaluate", "{pt}", "--device", "cpu"),
    ("export", "onnx", "--classifier", "{pt}", "--out", "{out}"),
    ("predict", "{images}", "--models", "{pt}", "--backend", "torch", "--out", "{out}"),
])
def test_a_junk_checkpoint_is_one_line(command, junk_pt, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(images / "a.png")
    args = [a.format(pt=junk_pt, out=tmp_path / "out", images=images) for a in command]
    code, err = dlmi_cli(capsys, *args)
    assert code == 2 and str(junk_pt) in one_error_line(err)


# --- options -----------------------------------------------------------------------------------------------


def test_thousands_of_threads_do_not_hang(classifier_run, tmp_path):
    """Defect 9: --threads 100000 is clamped to the machine's CPUs with a warning (a subprocess: a hang ends
    at the timeout)."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(images / "a.png")
    code = "import sys; from dlmi.cli.main import run; sys.exit(run(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "predict", str(images), "--models",
                           str(classifier_run), "--backend", "torch", "--threads", "100000", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--threads 100000" in done.stderr and "CPU" in done.stderr
    assert (tmp_path / "out" / "predictions.csv").is_file()


def test_an_unknown_class_folder_is_named(tmp_path, capsys):
    """Defect 10: a folder the dataset does not know (a typo, a fourth class) is warned about, by name."""
    from dlmi.datasets.brain_mri import BrainMriDataset
    from dlmi.datasets.busi import BusiDataset

    image = Image.fromarray(np.full((8, 8), 80, np.uint8))
    busi = tmp_path / "busi"
    for folder in ("normal", "benign", "malignant", "Malignent"):
        (busi / folder).mkdir(parents=True)
        image.save(busi / folder / "a.png")
        if folder != "normal":
            image.save(busi / folder / "a_mask.png")
    capsys.readouterr()
    assert len(BusiDataset().samples(busi)) == 3
    err = capsys.readouterr().err
    assert "dlmi: warning:" in err and "Malignent" in err and "left out" in err
    brain = tmp_path / "brain"
    for folder in ("no", "yes", "maybe"):
        (brain / folder).mkdir(parents=True)
        image.save(brain / folder / "a.png")
    (brain / "notes").mkdir()  # no images in it: not a class folder, no warning
    assert len(BrainMriDataset().samples(brain)) == 2
    err = capsys.readouterr().err
    assert "maybe" in err and "notes" not in err


@pytest.mark.parametrize("resamples", ["-1", "0"])
def test_resamples_below_one_is_refused(resamples, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "a.png")
    code, err = dlmi_cli(capsys, "evaluate", "masks", str(masks), str(masks), "--resamples", resamples)
    assert code == 2 and "--resamples" in one_error_line(err)


# --- API: wrong argument types -----------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "expected"), [
    (lambda: dlmi.load_predictor(42), r"load_predictor: models must be .*path.*got int 42"),
    (lambda: dlmi.evaluate(123), r"evaluate: run must be a path.*got int 123"),
    (lambda: dlmi.train_classifier(dataset=TINY, out="x", image_size="64"),
     r"image_size must be an int.*got str '64'"),
    (lambda: dlmi.train_classifier(dataset=TINY, out="x", epochs=1.5),
     r"epochs must be an int.*got float 1.5"),
    (lambda: dlmi.train_joint(dataset=TINY, out="x", folds="2"), r"train_joint: folds must be an int"),
    (lambda: dlmi.evaluate("nowhere", resamples=0), r"--resamples 0: .*at least 1"),
    (lambda: TrainConfig(task="classification", dataset=TINY, out="x", lr="fast").resolved(),
     r"lr must be a float.*got str 'fast'"),
])
def test_wrong_argument_types_are_one_dlmi_error(call, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DlmiError, match=expected) as caught:
        call()
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "x").exists()


def test_the_best_report_says_which_member_checkpoint_scored_out_of_fold(tmp_path):
    """Section 2: the out-of-fold sentence of best-*.md names the members' checkpoint; an ensemble.json from
    before the rule (best.pt members) is called optimistic."""
    from dlmi.experiments.best import BRAIN_BEST, BUSI_BEST, _oof_line, _oof_scores

    folders = {}
    for name, manifest in ((BUSI_BEST, {"members": ["fold-0"], "member_checkpoint": "last.pt",
                                        "postprocess": {"oof_accuracy": 0.78, "oof_best": {}}}),
                           (BRAIN_BEST, {"members": ["fold-0"], "oof_accuracy": 0.9})):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "ensemble.json").write_text(json.dumps(manifest))
    line = _oof_line(_oof_scores(folders))
    assert "best.pt / last.pt" in line and "optimistic" in line
    (folders[BRAIN_BEST] / "ensemble.json").write_text(json.dumps({"members": ["fold-0"],
                                                                  "member_checkpoint": "last.pt"}))
    line = _oof_line(_oof_scores(folders))
    assert "each member's last.pt" in line and "optimistic" not in line
