"""Mistaken options: out-of-range numbers, unknown names, flags that conflict, hardware that is not there.

Each is refused in one line naming the option (or the value) before anything is trained or written.
"""

from __future__ import annotations

from collections.abc import Callable

from hostile.harness import SEGMENTER, Case, Workspace
from hostile.make import predicted
from hostile.outcome import HANDLED, REFUSED


def train(
    label: str,
    *options: str,
    names: tuple[str, ...],
    command: str = "segmenter",
    expect: str = REFUSED,
    base: tuple[str, ...] | None = None,
    subprocess: bool = False,
    check: Callable | None = None,
) -> Case:
    """``dlmi train COMMAND`` on the tiny data set with ``options`` (last one wins over the defaults)."""

    def run(ws: Workspace) -> list[str]:
        defaults = list(base) if base is not None else SEGMENTER
        return [
            "train",
            command,
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            *defaults,
            *options,
            "--out",
            str(ws.path("run")),
        ]

    return Case(
        "options",
        f"train {command} {label}",
        expect,
        run,
        names=names,
        subprocess=subprocess,
        timeout=120,
        check=check,
    )


def predict(
    label: str,
    *options: str,
    names: tuple[str, ...] = (),
    expect: str = REFUSED,
    check: Callable | None = None,
    subprocess: bool = False,
    timeout: float = 60,
) -> Case:
    """``dlmi predict --aided`` over two good images with ``options``."""

    def run(ws: Workspace) -> list[str]:
        return ws.predict_args(ws.scans(), *options)

    return Case(
        "options",
        f"predict {label}",
        expect,
        run,
        names=names,
        check=check,
        subprocess=subprocess,
        timeout=timeout,
    )


def command(label: str, args: Callable[[Workspace], list[str]], names: tuple[str, ...]) -> Case:
    return Case("options", label, REFUSED, args, names=names)


def _evaluate(*options: str) -> Callable[[Workspace], list[str]]:
    def run(ws: Workspace) -> list[str]:
        return [
            "evaluate",
            "run",
            str(ws.copy(ws.world.segmenter, "run")),
            "--device",
            "cpu",
            "--no-panels",
            "--resamples",
            "20",
            *options,
        ]

    return run


def _masks(*options: str) -> Callable[[Workspace], list[str]]:
    def run(ws: Workspace) -> list[str]:
        from hostile.make import disc, mask

        for side in ("pred", "truth"):
            mask(ws.path(side, "a.png"), disc())
        return ["evaluate", "masks", str(ws.path("pred")), str(ws.path("truth")), *options]

    return run


def _fail(message: str) -> None:
    raise AssertionError(message)


def _cuda_present() -> str | None:
    import torch

    return "a CUDA GPU is present" if torch.cuda.is_available() else None


GOOD = ["good_0.png", "good_1.png"]

CASES = [
    train("zero epochs", "--epochs", "0", names=("--epochs",)),
    train("negative epochs", "--epochs", "-1", names=("--epochs",)),
    train("batch size 0", "--batch-size", "0", names=("--batch-size",)),
    train("image size 0", "--image-size", "0", names=("image size",)),
    train("image size 7", "--image-size", "7", names=("image size",)),
    train(
        "image size 33 (odd)",
        "--image-size",
        "33",
        names=(),
        expect=HANDLED,
        check=lambda r: (r.workspace / "run" / "best.pt").is_file() or _fail("no best.pt"),
    ),
    train("image size 100000", "--image-size", "100000", names=("image size",), subprocess=True),
    train("unknown dataset", "--dataset", "no-such-set", names=("no-such-set",)),
    train("unknown model", "--model", "no-such-model", names=("no-such-model",)),
    train("unknown loss", "--loss", "no-such-loss", names=("no-such-loss",)),
    train("a classification loss for a segmenter", "--loss", "cross-entropy", names=("cross-entropy",)),
    train("a classifier model for a segmenter", "--model", "seed-cnn", names=("seed-cnn",)),
    train("negative learning rate", "--lr", "-0.1", names=("--lr",)),
    train("NaN learning rate", "--lr", "nan", names=("--lr",)),
    train("negative weight decay", "--weight-decay", "-1", names=("--weight-decay",)),
    train(
        "--folds 1",
        "--folds",
        "1",
        names=("--folds",),
        command="classifier",
        base=("--image-size", "64", "--epochs", "1", "--device", "cpu", "-q"),
    ),
    train(
        "--folds 50 on 24 images",
        "--folds",
        "50",
        names=("--folds",),
        command="classifier",
        base=("--image-size", "64", "--epochs", "1", "--device", "cpu", "-q"),
    ),
    train("--fold without a k-fold split", "--fold", "3", names=("--fold",)),
    train("--device tpu", "--device", "tpu", names=("--device",)),
    train("--device cuda:7", "--device", "cuda:7", names=("cuda:7",)),
    train("--precision fp16 on a CPU", "--precision", "fp16", names=("fp16",)),
    train("--precision fp8", "--precision", "fp8", names=("fp8",)),
    train("unknown --cache", "--cache", "cloud", names=("--cache",)),
    train("unknown --scheduler", "--scheduler", "step", names=("step",)),
    train("unknown --class-balance", "--class-balance", "oversample", names=("oversample",)),
    train(
        "unknown --augment-recipe", "--augment", "--augment-recipe", "mri", names=("mri",), command="joint"
    ),
    train("EMA decay 2", "--ema", "2", names=("--ema",), command="joint"),
    train("negative warm-up epochs", "--warmup-epochs", "-1", names=("--warmup-epochs",), command="joint"),
    train("negative class weight", "--class-weight", "-1", names=("--class-weight",), command="joint"),
    train("negative workers", "--workers", "-1", names=("--workers",)),
    train("base channels 0", "--base-channels", "0", names=("base_channels",)),
    train("--model-option without =", "--model-option", "bilinear", names=("bilinear",)),
    train("--model-option of an unknown key", "--model-option", "wings=3", names=("wings",)),
    train("--aid that does not exist", "--aid", "/nonexistent/cls", names=("/nonexistent/cls",)),
    Case(
        "options",
        "train --resume with --fold",
        REFUSED,
        lambda ws: ["train", "segmenter", "--resume", str(ws.copy(ws.world.segmenter, "run")), "--fold", "1"],
        names=("--fold",),
    ),
    predict("--provider unknown", "--provider", "tpu", names=("--provider",)),
    predict("--provider cuda without a GPU", "--provider", "cuda", names=("--provider cuda",)),
    predict("--threshold above 1", "--threshold", "1.5", names=("--threshold",)),
    predict("--threshold below 0", "--threshold", "-0.1", names=("--threshold",)),
    predict("--threshold NaN", "--threshold", "nan", names=("--threshold",)),
    predict("--batch-size 0", "--batch-size", "0", names=("--batch-size",)),
    predict("--batch-size -3", "--batch-size", "-3", names=("--batch-size",)),
    predict("--backend unknown", "--backend", "tensorflow", names=("tensorflow",)),
    predict("--fp16 without fp16 files", "--fp16", names=("fp16",)),
    predict("--int8 without int8 files", "--int8", names=("int8",)),
    predict("--fp16 with --int8", "--fp16", "--int8", names=("--fp16", "--int8")),
    predict("--exclude everything", "--exclude", "*", names=("--exclude",)),
    predict(
        "--threads 100000",
        "--threads",
        "100000",
        expect=HANDLED,
        check=lambda r: predicted(r, GOOD),
        subprocess=True,
        timeout=10,
    ),
    predict(
        "--threshold 1 (nothing is lesion)",
        "--threshold",
        "1",
        expect=HANDLED,
        check=lambda r: all(row["lesion_pixels"] == "0" for row in predicted(r, GOOD).values()),
    ),
    command("evaluate --side banana", _evaluate("--side", "banana"), names=("banana",)),
    command("evaluate --checkpoint middle", _evaluate("--checkpoint", "middle"), names=("middle",)),
    command("evaluate --resamples -1", _evaluate("--resamples", "-1"), names=("--resamples",)),
    command("evaluate masks --resamples -1", _masks("--resamples", "-1"), names=("--resamples",)),
    command("evaluate --batch-size 0", _evaluate("--batch-size", "0"), names=("--batch-size",)),
    command("evaluate --device cuda without a GPU", _evaluate("--device", "cuda"), names=("cuda",)),
    command(
        "model summary of an unknown model",
        lambda ws: ["model", "summary", "no-such-model"],
        names=("no-such-model",),
    ),
    command(
        "data split --val 0.6 --test 0.6",
        lambda ws: [
            "data",
            "split",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--val",
            "0.6",
            "--test",
            "0.6",
            "--out",
            str(ws.path("split.json")),
        ],
        names=("--val",),
    ),
    command(
        "data synth --count 0",
        lambda ws: ["data", "synth", "--out", str(ws.path("d")), "--count", "0"],
        names=("--count",),
    ),
]

for _case in CASES:
    if _case.name.endswith("image size 100000"):  # it allocates without end: fail at 4 GiB, stop at 30 s
        _case.memory_gib, _case.timeout = 4, 30
    if "cuda" in _case.name and "without a GPU" in _case.name:
        _case.skip = _cuda_present
