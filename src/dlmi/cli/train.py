"""``dlmi train classifier|segmenter|joint``: a thin layer over :mod:`dlmi.api`.

The three commands share most of their options: each is declared once below (``typer.Option`` objects
reused in every signature, in the same order, so ``--help`` lists them alike); only the options whose
default or meaning differs per task are declared in the command itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from dlmi.errors import DlmiError

app = typer.Typer(help="Train a classifier, a (classifier-aided) segmenter or a joint model.",
                  no_args_is_help=True)

# Help texts shared by the commands.
H_DATASET = "Registered dataset name (see `dlmi plugins`)."
H_DATA_DIR = "The dataset's folder (not needed for generated data such as `synthetic`)."
H_OUT = "Run folder to create (config, split, metrics.jsonl, best.pt, last.pt, curves)."
H_SIZE = "Square input size in pixels. [default: 512, the seed's]"
H_EPOCHS = "Number of epochs. [default: 30]"
H_BATCH = "Batch size. [default: 8]"
H_WD = "Weight decay."
H_BASE = "Model width: the model's `base_channels` option. [default: the model's own]"
H_DEVICE = "auto (GPU when available), cpu, cuda or cuda:N. [default: auto]"
H_DETERMINISTIC = "cuDNN: deterministic kernels (reproducible) or autotuned (faster on a GPU). [default: on]"
H_SEED = "Seed for weights, order and augmentation; same seed on CPU → same weights. [default: 0]"
H_WORKERS = "Data-loading worker processes. [default: 0]"
H_SPLIT = "Split file (from `dlmi data split`); without it a default split is made and saved in the run."
H_FOLD = "Fold K of a k-fold split file: train on its train part, validate on its val part."
H_SCHED = "Learning-rate schedule: none, cosine or poly (after any warm-up). [default: none]"
H_BALANCE = "Class balance: none, sampler (class-balanced draws) or weights (CE weights). [default: none]"
H_BALANCE_MASKS = "Class balance: none or sampler (class-balanced draws)."
H_AUGMENT = "Joint image/mask augmentation: horizontal flip, small affine, brightness/contrast."
H_OPTION = "Extra model option KEY=VALUE (VALUE read as JSON when it parses), repeatable."
H_RESUME = "Continue the interrupted run in this folder (other settings come from its config.json)."
H_QUIET = "No progress output."
H_PRECISION = ("Forward-pass precision: auto (bf16 on GPUs and on CPUs with native bf16, else fp32), fp32, "
               "bf16, fp16 (CUDA only, with loss scaling). [default: auto]")
H_CHANNELS_LAST = "Channels-last tensors (faster convolutions on CPU and GPU). [default: on]"
H_COMPILE = "torch.compile the model (slow start; measured slower on CPU, try it on a GPU)."
H_CACHE = ("Keep decoded, resized images: auto (memory if it fits, else disk), memory, disk "
           "($DLMI_CACHE_DIR), both, none. [default: auto]")
H_SYNC_BN = "Under torchrun: BatchNorm statistics over the global batch. [default: on]"
H_WARMUP = "Linear warm-up epochs before the schedule. [default: 0]"
H_EMA = "Validate, save and export an EMA of the weights with this decay per step (0 = off). [default: 0]"
H_RECIPE = "Augmentation recipe with --augment: basic or ultrasound (docs/training.md). [default: basic]"
H_FOLDS_CLS = ("Train an ensemble: K classifiers on K cross-validation folds of the split's train+val images "
               "(test side unchanged) into OUT/fold-k, then OUT/ensemble.json with the out-of-fold accuracy. "
               "Resumable.")
H_FOLDS = ("Train an ensemble: K joint models on K cross-validation folds of the split's train+val images "
           "(test side unchanged) into OUT/fold-k, then OUT/ensemble.json with the threshold, lesion-size "
           "rule and gate rule chosen on out-of-fold predictions. Resumable: run the same command again.")

# The shared options, declared once (the parameter name in each command is the lower-case name).
DATASET = typer.Option(None, "--dataset", help=H_DATASET)
DATA_DIR = typer.Option(None, "--data-dir", help=H_DATA_DIR)
OUT = typer.Option(None, "--out", help=H_OUT)
IMAGE_SIZE = typer.Option(None, "--image-size", help=H_SIZE)
EPOCHS = typer.Option(None, "--epochs", help=H_EPOCHS)
BATCH_SIZE = typer.Option(None, "--batch-size", help=H_BATCH)
BASE_CHANNELS = typer.Option(None, "--base-channels", help=H_BASE)
MODEL_OPTION = typer.Option(None, "--model-option", help=H_OPTION)
DEVICE = typer.Option(None, "--device", help=H_DEVICE)
DETERMINISTIC = typer.Option(None, "--deterministic/--no-deterministic", help=H_DETERMINISTIC)
SEED = typer.Option(None, "--seed", help=H_SEED)
WORKERS = typer.Option(None, "--workers", help=H_WORKERS)
SPLIT = typer.Option(None, "--split", help=H_SPLIT)
FOLD = typer.Option(None, "--fold", help=H_FOLD)
SCHEDULER = typer.Option(None, "--scheduler", help=H_SCHED)
WARMUP_EPOCHS = typer.Option(None, "--warmup-epochs", help=H_WARMUP)
EMA = typer.Option(None, "--ema", help=H_EMA)
CLASS_BALANCE_MASKS = typer.Option(None, "--class-balance", help=H_BALANCE_MASKS)
AUGMENT = typer.Option(False, "--augment", help=H_AUGMENT)
AUGMENT_RECIPE = typer.Option(None, "--augment-recipe", help=H_RECIPE)
RESUME = typer.Option(None, "--resume", help=H_RESUME)
QUIET = typer.Option(False, "--quiet", "-q", help=H_QUIET)
PRECISION = typer.Option(None, "--precision", help=H_PRECISION)
CHANNELS_LAST = typer.Option(None, "--channels-last/--no-channels-last", help=H_CHANNELS_LAST)
COMPILE = typer.Option(None, "--compile/--no-compile", help=H_COMPILE)
CACHE = typer.Option(None, "--cache", help=H_CACHE)
SYNC_BN = typer.Option(None, "--sync-bn/--no-sync-bn", help=H_SYNC_BN)

# Command parameters that are not training settings, and the ones whose setting has another name or form.
_NOT_SETTINGS = ("resume", "folds")
_PATHS = ("data_dir", "out", "split", "aid")
_FLAGS = ("augment", "quiet")  # off means "the default", so a resumed run keeps its own


def _parse_options(pairs: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DlmiError(f"--model-option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters as training settings (the keyword arguments of :mod:`dlmi.api`)."""
    settings = {k: v for k, v in params.items() if k not in _NOT_SETTINGS}
    for key in _PATHS:
        if key in settings:
            settings[key] = str(settings[key]) if settings[key] else None
    for key in _FLAGS:
        settings[key] = settings[key] or None
    settings["model_options"] = _parse_options(settings.pop("model_option")) or None
    settings["compile"] = settings.pop("compile_model")
    return settings


def _run(task: str, settings: dict[str, Any], resume: Path | None) -> None:
    """Start or resume a run through the Python API (:mod:`dlmi.api`), then say where it is."""
    from dlmi import api

    train = {"classification": api.train_classifier, "segmentation": api.train_segmenter,
             "joint": api.train_joint}[task]
    _report(train(**settings, resume=resume))


def _report(run_dir: Path) -> None:
    from dlmi.training.compute.distributed import launch_context
    from dlmi.training.folder.run_folder import RunFolder

    if not launch_context().is_main:
        return  # under torchrun, rank 0 speaks for the run

    rows = RunFolder(run_dir).read_metrics()
    best = [r for r in rows if r.get("best")]
    line = f"run folder: {run_dir}"
    if best:
        b = best[-1]
        score = next((f"{k} {b[k]:.4f}" for k in ("val_score", "val_iou", "val_accuracy") if k in b), "")
        line += f"  best.pt: epoch {b['epoch']} ({score}, val_loss {b['val_loss']:.4f})"
    typer.echo(line)


@app.command("classifier")
def classifier_command(
    dataset: str = DATASET,
    data_dir: Path = DATA_DIR,
    model: str = typer.Option(None, "--model", help="Registered classification model. [default: seed-cnn]"),
    out: Path = OUT,
    loss: str = typer.Option(None, "--loss", help="Registered classification loss. [default: cross-entropy]"),
    image_size: int = IMAGE_SIZE,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = typer.Option(None, "--lr", help="Learning rate (AdamW). [default: 1e-3, the seed's]"),
    weight_decay: float = typer.Option(None, "--weight-decay", help=f"{H_WD} [default: 1e-5, the seed's]"),
    base_channels: int = BASE_CHANNELS,
    model_option: list[str] = MODEL_OPTION,
    device: str = DEVICE,
    deterministic: bool = DETERMINISTIC,
    seed: int = SEED,
    workers: int = WORKERS,
    split: Path = SPLIT,
    fold: int = FOLD,
    folds: int = typer.Option(None, "--folds", help=H_FOLDS_CLS),
    scheduler: str = SCHEDULER,
    warmup_epochs: int = WARMUP_EPOCHS,
    ema: float = EMA,
    class_balance: str = typer.Option(None, "--class-balance", help=H_BALANCE),
    augment: bool = AUGMENT,
    augment_recipe: str = AUGMENT_RECIPE,
    resume: Path = RESUME,
    quiet: bool = QUIET,
    precision: str = PRECISION,
    channels_last: bool = CHANNELS_LAST,
    compile_model: bool = COMPILE,
    cache: str = CACHE,
    sync_bn: bool = SYNC_BN,
) -> None:
    """Train a classifier (the seed's CNN by default: AdamW, lr 1e-3, weight decay 1e-5, grad-norm clip 5).

    Example: `dlmi train classifier --dataset synthetic --image-size 128 --epochs 5 --out runs/cls`
    """
    settings = _settings(locals())
    if folds is not None:
        _run_folds("classification", settings, folds, resume)
        return
    _run("classification", settings, resume)


@app.command("segmenter")
def segmenter_command(
    dataset: str = DATASET,
    data_dir: Path = DATA_DIR,
    model: str = typer.Option(None, "--model", help="Registered segmentation model. [default: unet]"),
    out: Path = OUT,
    loss: str = typer.Option(None, "--loss", help="Registered segmentation loss: dice, bce, mse, dice-bce, … "
                             "[default: dice]"),
    aid: Path = typer.Option(None, "--aid", help="Classifier run folder whose *normal* verdict empties the "
                             "mask (classifier-aided training; same dataset and split required)."),
    image_size: int = IMAGE_SIZE,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = typer.Option(None, "--lr", help="Learning rate (Adam). [default: 1e-3, the seed's]"),
    weight_decay: float = typer.Option(None, "--weight-decay", help=f"{H_WD} [default: 0, the seed's]"),
    base_channels: int = BASE_CHANNELS,
    model_option: list[str] = MODEL_OPTION,
    device: str = DEVICE,
    deterministic: bool = DETERMINISTIC,
    seed: int = SEED,
    workers: int = WORKERS,
    split: Path = typer.Option(None, "--split", help=H_SPLIT + " With --aid, the classifier's split."),
    fold: int = FOLD,
    scheduler: str = SCHEDULER,
    class_balance: str = CLASS_BALANCE_MASKS,
    augment: bool = AUGMENT,
    resume: Path = RESUME,
    quiet: bool = QUIET,
    precision: str = PRECISION,
    channels_last: bool = CHANNELS_LAST,
    compile_model: bool = COMPILE,
    cache: str = CACHE,
    sync_bn: bool = SYNC_BN,
) -> None:
    """Train a segmenter (U-Net by default: Adam, lr 1e-3, weight decay 0, grad-norm clip 5), optionally aided.

    Example: `dlmi train segmenter --dataset synthetic --image-size 128 --base-channels 16 --loss dice --aid runs/cls --out runs/seg`

    On 4 GPUs of one machine (docs/distributed.md): `torchrun --nproc-per-node 4 -m dlmi train segmenter --dataset busi --data-dir data/busi --batch-size 16 --out runs/seg`
    """  # noqa: E501
    settings = _settings(locals())
    _run("segmentation", settings, resume)


@app.command("joint")
def joint_command(
    dataset: str = DATASET,
    data_dir: Path = DATA_DIR,
    model: str = typer.Option(None, "--model", help="Registered joint model. [default: unet-mt]"),
    out: Path = OUT,
    loss: str = typer.Option(None, "--loss", help="Registered mask loss. [default: dice-bce]"),
    image_size: int = IMAGE_SIZE,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = typer.Option(None, "--lr", help="Learning rate (AdamW). [default: 2e-3]"),
    weight_decay: float = typer.Option(None, "--weight-decay", help=f"{H_WD} [default: 1e-4]"),
    base_channels: int = BASE_CHANNELS,
    model_option: list[str] = MODEL_OPTION,
    device: str = DEVICE,
    deterministic: bool = DETERMINISTIC,
    seed: int = SEED,
    workers: int = WORKERS,
    split: Path = SPLIT,
    fold: int = FOLD,
    folds: int = typer.Option(None, "--folds", help=H_FOLDS),
    scheduler: str = typer.Option(None, "--scheduler",
                                  help="LR schedule: none, cosine or poly. [default: poly]"),
    warmup_epochs: int = WARMUP_EPOCHS,
    ema: float = EMA,
    class_balance: str = CLASS_BALANCE_MASKS,
    class_weight: float = typer.Option(None, "--class-weight", help="Weight of the class loss. [default: 1]"),
    augment: bool = AUGMENT,
    augment_recipe: str = AUGMENT_RECIPE,
    resume: Path = RESUME,
    quiet: bool = QUIET,
    precision: str = PRECISION,
    channels_last: bool = CHANNELS_LAST,
    compile_model: bool = COMPILE,
    cache: str = CACHE,
    sync_bn: bool = SYNC_BN,
) -> None:
    """Train a joint model (``unet-mt``: one encoder, mask decoder + class head, its head the gate).

    Example: `dlmi train joint --dataset busi --data-dir data/busi --image-size 128 --epochs 40 --augment --augment-recipe ultrasound --ema 0.995 --warmup-epochs 2 --folds 5 --out runs/joint`
    """  # noqa: E501
    settings = _settings(locals())
    if folds is not None:
        _run_folds("joint", settings, folds, resume)
        return
    _run("joint", settings, resume)


def _run_folds(task: str, settings: dict[str, Any], folds: int, resume: Path | None) -> None:
    """``--folds K``: one model per fold of the split's development images, then ``ensemble.json``."""
    from dlmi import api

    train = {"classification": api.train_classifier, "joint": api.train_joint}[task]
    typer.echo(f"ensemble folder: {train(**settings, folds=folds, resume=resume)}")
