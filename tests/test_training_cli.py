"""``dlmi train`` as real subprocesses on a tiny BUSI-layout folder of PNGs: runs, errors, kill -9, resume.

Each subprocess imports torch (seconds on the shared test machine), so these tests are marked slow.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from busi_folder import write_busi_folder

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the test machine's 2 cores are shared


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> None:
    """The split audit's hash cache in a temporary folder (subprocesses inherit the environment)."""
    monkeypatch.setenv("DLMI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def tiny_busi(tmp_path_factory) -> Path:
    return write_busi_folder(tmp_path_factory.mktemp("data") / "busi", per_class=10, size=64)


def segmenter_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["train", "segmenter", "--dataset", "busi", "--data-dir", str(data), "--image-size", "64",
            "--base-channels", "4", "--batch-size", "4", "--epochs", str(epochs), "--device", "cpu",
            "--seed", "3", "--augment", "--out", str(out)]


# ``python -c PAUSER EPOCH ARGS...``: ``dlmi ARGS`` whose first optimiser step of epoch EPOCH (after epoch
# EPOCH-1 is on disk) says so on stdout and then waits for a signal, so that the test kills it at a known
# point instead of after a guessed sleep. Nothing else of the run is changed.
PAUSER = textwrap.dedent("""
    import signal
    import sys
    from dlmi.cli.main import main
    from dlmi.training.loop import Trainer

    pause_in_epoch = int(sys.argv[1])
    step = Trainer.optimizer_step

    def step_then_pause(trainer):
        step(trainer)
        if trainer.state.epoch + 1 == pause_in_epoch:
            print(f"paused in epoch {pause_in_epoch}", flush=True)
            while True:
                signal.pause()

    Trainer.optimizer_step = step_then_pause
    sys.argv = ["dlmi", *sys.argv[2:]]
    main()
""")


def start_paused_training(args: list[str], pause_in_epoch: int, log: Path) -> subprocess.Popen[str]:
    """``dlmi ARGS`` in a subprocess that pauses in epoch ``pause_in_epoch`` and says so on its stdout
    (its stderr goes to ``log``)."""
    with log.open("w") as stderr:
        return subprocess.Popen([sys.executable, "-c", PAUSER, str(pause_in_epoch), *args, "--quiet"],
                                stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env={**os.environ, **ONE_THREAD})


def wait_for_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line of the process's stdout; empty when it ends first or writes nothing for ``timeout`` s."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""


def epochs_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_classifier_then_aided_segmenter(cli, tiny_busi: Path, tmp_path: Path) -> None:
    cls = tmp_path / "cls"
    done = cli("train", "classifier", "--dataset", "busi", "--data-dir", str(tiny_busi), "--image-size", "64",
               "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--out", str(cls), env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    assert f"run folder: {cls}" in done.stdout and "best.pt: epoch" in done.stdout
    assert "epoch 2/2" in done.stderr  # not a terminal: one line per epoch
    assert epochs_logged(cls) == [1, 2]

    seg = tmp_path / "seg"
    done = cli("train", "segmenter", "--dataset", "busi", "--data-dir", str(tiny_busi), "--image-size", "32",
               "--base-channels", "4", "--epochs", "1", "--loss", "mse", "--aid", str(cls), "--quiet",
               "--device", "cpu", "--out", str(seg), env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    config = json.loads((seg / "config.json").read_text())
    assert config["aid"] == str(cls) and config["loss"] == "mse" and config["optimizer"] == "adam"
    row = json.loads((seg / "metrics.jsonl").read_text())
    assert {"val_iou", "val_iou_unaided", "val_gated_fraction"} <= set(row)

    again = cli("train", "classifier", "--dataset", "busi", "--data-dir", str(tiny_busi), "--out", str(cls))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"dlmi: error: {cls}: already holds a training run; continue it with --resume {cls} "
        "or choose another --out"
    ]
    wrong = cli("train", "segmenter", "--resume", str(cls))
    assert wrong.returncode == 2 and "is a classification run" in wrong.stderr
    assert "Traceback" not in wrong.stderr


@pytest.mark.slow
def test_user_errors_are_one_line(cli, tmp_path: Path) -> None:
    missing = cli("train", "classifier", "--dataset", "busi", "--data-dir", str(tmp_path / "nope"),
                  "--out", str(tmp_path / "run"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nope" in missing.stderr
    bad = cli("train", "segmenter", "--dataset", "synthetic", "--scheduler", "step",
              "--out", str(tmp_path / "r"))
    assert bad.returncode == 2 and "unknown scheduler 'step'" in bad.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_help_shows_examples(cli) -> None:
    for command in ("classifier", "segmenter"):
        done = cli("train", command, "--help")
        assert done.returncode == 0 and "Example: dlmi train " + command in " ".join(done.stdout.split())


@pytest.mark.slow
def test_resume_after_kill_9_continues_the_same_curve(cli, tiny_busi: Path, tmp_path: Path) -> None:
    """Killed in the middle of epoch 2 (one optimiser step past epoch 1's checkpoint), then resumed."""
    epochs = 4
    straight = tmp_path / "straight"
    done = cli(*segmenter_args(tiny_busi, straight, epochs), "--quiet", env=ONE_THREAD)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    log = tmp_path / "killed.stderr"
    process = start_paused_training(segmenter_args(tiny_busi, killed, epochs), pause_in_epoch=2, log=log)
    try:
        line = wait_for_line(process, timeout=300)
        assert line.strip() == "paused in epoch 2", log.read_text()
        assert process.poll() is None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert epochs_logged(killed) == [1]  # epoch 2's step is lost with the process
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] == 1

    resumed = cli("train", "segmenter", "--resume", str(killed), "--quiet", env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_logged(killed) == list(range(1, epochs + 1))
    ours = torch.load(killed / "last.pt", weights_only=True)
    theirs = torch.load(straight / "last.pt", weights_only=True)
    assert ours["epoch"] == epochs
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    def curve(run_dir: Path) -> list[float]:
        return [json.loads(x)["train_loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert curve(killed) == curve(straight)
