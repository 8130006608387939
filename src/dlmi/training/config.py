"""What a training run needs to know: one dataclass, saved as the run folder's ``config.json``.

Defaults follow the seed report (``../shared/seed/SUMMARY.md``): greyscale 512×512 inputs; the classifier
trains with AdamW, lr 1e-3, weight decay 1e-5; the U-Net with Adam, lr 1e-3, weight decay 0; gradient norm
clipped at 5. The seed does not state epochs or batch size; ours are 30 and 8.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlmi.errors import DlmiError

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
JOINT = "joint"

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "poly")
AUGMENTATIONS = ("basic", "ultrasound")
CLASS_BALANCE = ("none", "sampler", "weights")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "memory", "disk", "both", "none")

# A config.json written before a setting existed ran with these values (not today's defaults), so that
# resuming such a run continues it as it was trained.
LEGACY_DEFAULTS: dict[str, Any] = {"precision": "fp32", "channels_last": False}

# The seed's settings per task; ``None`` fields of a TrainConfig take these.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    CLASSIFICATION: {
        "model": "seed-cnn", "loss": "cross-entropy", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-5,
        "best_metric": "val_accuracy",
    },
    SEGMENTATION: {
        "model": "unet", "loss": "dice", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
        "best_metric": "val_iou",
    },
    # dlmi's joint recipe (unet-mt): Dice+BCE with deep supervision plus cross-entropy, AdamW.
    JOINT: {
        "model": "unet-mt", "loss": "dice-bce", "optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4,
        "best_metric": "val_score",
    },
}

# The validation numbers each task logs that may choose the best checkpoint, and whether higher is better.
# (val_detect_accuracy needs a dataset with a normal class, val_iou_unaided an aid: checked at the start.)
TASK_METRICS: dict[str, dict[str, bool]] = {
    CLASSIFICATION: {"val_accuracy": True, "val_detect_accuracy": True, "val_loss": False},
    SEGMENTATION: {"val_iou": True, "val_dice": True, "val_iou_unaided": True, "val_loss": False},
    JOINT: {"val_score": True, "val_lesion_dice": True, "val_iou": True, "val_dice": True,
            "val_accuracy": True, "val_detect_accuracy": True, "val_empty_fpr": False, "val_loss": False},
}

# Whether a larger value of a best-checkpoint metric is better (every task's metrics together).
HIGHER_IS_BETTER = {name: higher for metrics in TASK_METRICS.values() for name, higher in metrics.items()}

# Settings that name files or folders: a ``pathlib.Path`` is accepted and kept as a string.
PATH_FIELDS = ("out", "data_dir", "aid", "split")


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the seed's default for this task".

    Example (in a notebook)::

        config = TrainConfig(task="segmentation", dataset="synthetic", out="runs/unet", image_size=64,
                             epochs=3, base_channels=8)
        run_dir = train_segmenter(config)
    """

    task: str
    dataset: str
    out: str | os.PathLike[str]
    data_dir: str | os.PathLike[str] | None = None
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    base_channels: int | None = None
    loss: str | None = None
    aid: str | os.PathLike[str] | None = None
    image_size: int = 512
    epochs: int = 30
    batch_size: int = 8
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = 5.0
    scheduler: str = "none"
    class_balance: str = "none"
    augment: bool = False
    best_metric: str | None = None
    device: str = "auto"
    deterministic: bool = True
    seed: int = 0
    workers: int = 0
    split: str | os.PathLike[str] | None = None
    fold: int | None = None
    quiet: bool = False
    # Speed and scale (docs/distributed.md): autocast precision, NHWC tensors, torch.compile, the decoded-
    # image cache, and BatchNorm over the global batch under torchrun.
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    cache: str = "auto"
    sync_bn: bool = True
    # The stronger recipe (docs/training.md): linear warm-up epochs before the schedule, an exponential
    # moving average of the weights (decay per optimiser step; 0 = off), the augmentation recipe used with
    # --augment, and for joint runs the class loss's weight and deep supervision.
    warmup_epochs: int = 0
    ema: float = 0.0
    augment_recipe: str = "basic"
    class_weight: float = 1.0
    deep_supervision: bool = True

    def __post_init__(self) -> None:
        for name in PATH_FIELDS:  # config.json holds strings; a Path from train_classifier() is fine too
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in for the task, and the values checked."""
        if self.task not in TASK_DEFAULTS:
            raise DlmiError(
                f"unknown task {self.task!r}; expected {CLASSIFICATION}, {SEGMENTATION} or {JOINT}"
            )
        defaults = TASK_DEFAULTS[self.task]
        filled = {k: (defaults[k] if getattr(self, k) is None else getattr(self, k)) for k in defaults}
        config = dataclasses.replace(self, **filled)
        config.validate()
        return config

    def validate(self) -> None:
        """Every setting's type (its hint, :mod:`dlmi.arguments`), then its value; one line for the first
        that is wrong."""
        from dlmi.arguments import check_fields

        check_fields(self, "training settings")
        checks = [
            (self.image_size >= 8, f"image_size must be at least 8, got {self.image_size}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.workers >= 0, f"workers must be 0 or more, got {self.workers}"),
            (self.fold is None or self.fold >= 0, f"fold must be 0 or more, got {self.fold}"),
            (self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay is None or self.weight_decay >= 0,
             f"weight_decay must be 0 or more, got {self.weight_decay}"),
            (self.grad_clip is None or self.grad_clip > 0,
             f"grad_clip must be positive, got {self.grad_clip}"),
            (self.base_channels is None or self.base_channels >= 1,
             f"base_channels must be at least 1, got {self.base_channels}"),
            (self.optimizer is None or self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}"),
            (self.scheduler in SCHEDULERS,
             f"unknown scheduler {self.scheduler!r}; expected one of {', '.join(SCHEDULERS)}"),
            (self.class_balance in CLASS_BALANCE,
             f"unknown class balance {self.class_balance!r}; expected one of {', '.join(CLASS_BALANCE)}"),
            (self.device in DEVICES or self.device.startswith("cuda:"),
             f"unknown device {self.device!r}; expected auto, cpu, cuda or cuda:N"),
            (self.precision in PRECISIONS,
             f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}"),
            (self.cache in CACHE_MODES,
             f"unknown cache {self.cache!r}; expected one of {', '.join(CACHE_MODES)}"),
            (self.best_metric is None or self.best_metric in self.task_metrics,
             f"best metric {self.best_metric!r} is not logged by {self.task} training; expected one of "
             f"{', '.join(self.task_metrics)}"),
            (self.best_metric != "val_iou_unaided" or self.aid is not None,
             "best metric 'val_iou_unaided' is logged only by aided training (--aid)"),
            (self.aid is None or self.task == SEGMENTATION, "--aid applies to segmenter training only"),
            (0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
             f"warmup_epochs must be 0 or more and below epochs, got {self.warmup_epochs}"),
            (0.0 <= self.ema < 1.0, f"ema must be in [0, 1), got {self.ema}"),
            (self.augment_recipe in AUGMENTATIONS,
             f"unknown augment recipe {self.augment_recipe!r}; expected one of {', '.join(AUGMENTATIONS)}"),
            (self.class_weight >= 0, f"class_weight must be 0 or more, got {self.class_weight}"),
            (self.class_balance != "weights" or self.task == CLASSIFICATION,
             "class balance 'weights' (cross-entropy weights) applies to classifier training only"),
        ]
        for ok, message in checks:
            if not ok:
                raise DlmiError(message)
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise DlmiError(f"{name} must be a path (str or pathlib.Path), got {type(value).__name__}")
        try:
            json.dumps(self.to_dict())
        except (TypeError, ValueError) as exc:
            raise DlmiError(f"the training settings must be JSON values (config.json): {exc}") from None

    def model_kwargs(self) -> dict[str, Any]:
        """Options passed to the model factory (``base_channels`` when set, plus ``model_options``)."""
        options = dict(self.model_options)
        if self.base_channels is not None:
            options["base_channels"] = self.base_channels
        return options

    @property
    def task_metrics(self) -> dict[str, bool]:
        """The metrics this task logs that may choose the best checkpoint (name → higher is better)."""
        return TASK_METRICS.get(self.task, {})

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.best_metric or TASK_DEFAULTS[self.task]["best_metric"]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DlmiError(f"{source}: unknown training settings {', '.join(unknown)}")
        data = {**LEGACY_DEFAULTS, **data}
        try:
            return cls(**data)
        except TypeError as exc:
            raise DlmiError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DlmiError(f"{path}: not found; is this a dlmi run folder?") from None
        except json.JSONDecodeError as exc:
            raise DlmiError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise DlmiError(f"{path}: expected a JSON object of training settings")
        return cls.from_dict(data, source=str(path))
