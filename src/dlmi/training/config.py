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

OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("none", "cosine", "poly")
AUGMENTATIONS = ("basic", "ultrasound")
CLASS_BALANCE = ("none", "sampler", "weights")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "memory", "disk", "none")

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


ALL_TASKS = (CLASSIFICATION, SEGMENTATION, JOINT)
MASK_TASKS = (SEGMENTATION, JOINT)


def setting(default: Any = dataclasses.MISSING, *, help: str | dict[str, str],
            flags: tuple[str, ...] | None = None, tasks: tuple[str, ...] = ALL_TASKS,
            **field_options: Any) -> Any:
    """A TrainConfig field that is also an option of each ``dlmi train`` command of ``tasks`` and a keyword
    of its ``dlmi.train_*`` function. ``flags``: the option's names when not ``--field-name`` (``--x/--no-x``
    for an on/off switch); ``help``: a string, or ``{task: string}`` where it differs per task."""
    metadata: dict[str, Any] = {"help": help, "tasks": tasks}
    if flags is not None:
        metadata["flags"] = flags
    return field(default=default, metadata=metadata, **field_options)


def setting_flags(setting_field: dataclasses.Field[Any]) -> tuple[str, ...]:
    """The ``dlmi train`` option names of a TrainConfig field."""
    return tuple(setting_field.metadata.get("flags") or ("--" + setting_field.name.replace("_", "-"),))


def task_settings(task: str) -> list[dataclasses.Field[Any]]:
    """The fields that ``dlmi train`` and ``dlmi.train_*`` offer for ``task``, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if task in f.metadata.get("tasks", ())]


# Fields that training records rather than the user sets (not options; not compared between fold runs).
RECORDED_FIELDS = ("pretrained_weights",)

# Settings renamed since a run's config.json may have been written: old name -> today's name.
RENAMED_SETTINGS = {"class_weight": "class_loss_weight"}


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the seed's default for this task".

    Each field but ``task`` is declared with :func:`setting`: its metadata makes the ``dlmi train`` options
    (``dlmi.cli.train``) and says which tasks take it (``dlmi.train_*``'s keywords are checked against it).

    Example (in a notebook)::

        config = TrainConfig(task="segmentation", dataset="synthetic", out="runs/unet", image_size=64,
                             epochs=3, base_channels=8)
        run_dir = train_segmenter(config)
    """

    task: str
    dataset: str = setting(help="Registered dataset name (see `dlmi plugins`).")
    out: str | os.PathLike[str] = setting(
        help="Run folder to create (config, split, metrics.jsonl, best.pt, last.pt, curves).")
    data_dir: str | os.PathLike[str] | None = setting(
        None, help="The dataset's folder (not needed for generated data such as `synthetic`).")
    model: str | None = setting(None, help={CLASSIFICATION: "Registered classification model.",
                                            SEGMENTATION: "Registered segmentation model.",
                                            JOINT: "Registered joint model."})
    model_options: dict[str, Any] = setting(
        flags=("--model-option",), default_factory=dict,
        help="Extra model option KEY=VALUE (VALUE read as JSON when it parses), repeatable.")
    base_channels: int | None = setting(
        None, help="Model width: the model's `base_channels` option. [default: the model's own]")
    loss: str | None = setting(None, help={CLASSIFICATION: "Registered classification loss.",
                                           SEGMENTATION: "Registered segmentation loss: dice, bce, mse, "
                                                         "dice-bce, …",
                                           JOINT: "Registered mask loss."})
    aid: str | os.PathLike[str] | None = setting(
        None, tasks=(SEGMENTATION,), help="Classifier run folder whose *normal* verdict empties the mask "
        "(classifier-aided training; same dataset and split required).")
    image_size: int = setting(512, help="Square input size in pixels (the seed's).")
    epochs: int = setting(30, help="Number of epochs.")
    batch_size: int = setting(8, help="Batch size.")
    optimizer: str | None = setting(None, help="Optimiser: adamw or adam.")
    lr: float | None = setting(None, help="Learning rate.")
    weight_decay: float | None = setting(None, help="Weight decay.")
    grad_clip: float | None = setting(5.0, help="Clip the gradient norm at this value (the seed's 5).")
    scheduler: str = setting("none", help={
        CLASSIFICATION: "Learning-rate schedule: none, cosine or poly (after any warm-up).",
        SEGMENTATION: "Learning-rate schedule: none, cosine or poly (after any warm-up).",
        JOINT: "Learning-rate schedule: none, cosine or poly (after any warm-up). [default: poly]"})
    class_balance: str = setting("none", help={
        CLASSIFICATION: "Class balance: none, sampler (class-balanced draws) or weights (CE weights).",
        SEGMENTATION: "Class balance: none or sampler (class-balanced draws).",
        JOINT: "Class balance: none or sampler (class-balanced draws)."})
    augment: bool = setting(False, help="Joint image/mask augmentation (the recipe: --augment-recipe).")
    best_metric: str | None = setting(None, help={
        task: "The validation number that chooses best.pt: " + ", ".join(metrics) + "."
        for task, metrics in TASK_METRICS.items()})
    device: str = setting("auto", help="auto (GPU when available), cpu, cuda or cuda:N.")
    deterministic: bool = setting(
        True, flags=("--deterministic/--no-deterministic",),
        help="cuDNN: deterministic kernels (reproducible) or autotuned (faster on a GPU).")
    seed: int = setting(0, help="Random seed for weights, order and augmentation; same seed on CPU → same "
                                "weights.")
    workers: int = setting(0, help="Data-loading worker processes.")
    split: str | os.PathLike[str] | None = setting(None, help={
        task: "Split file (from `dlmi data split`); without it a default split is made and saved in the run."
        + (" With --aid, the classifier's split." if task == SEGMENTATION else "") for task in ALL_TASKS})
    fold: int | None = setting(
        None, help="Fold K of a k-fold split file: train on its train part, validate on its val part.")
    quiet: bool = setting(False, flags=("--quiet", "-q"), help="No progress output.")
    # Speed and scale (docs/distributed.md): autocast precision, NHWC tensors, torch.compile, the decoded-
    # image cache, and BatchNorm over the global batch under torchrun.
    precision: str = setting(
        "auto", help="Forward-pass precision: auto (bf16 on GPUs and on CPUs with native bf16, else fp32), "
                     "fp32, bf16, fp16 (CUDA only, with loss scaling).")
    channels_last: bool = setting(True, flags=("--channels-last/--no-channels-last",),
                                  help="Channels-last tensors (faster convolutions on CPU and GPU).")
    compile: bool = setting(False, flags=("--compile/--no-compile",),
                            help="torch.compile the model (slow start; measured slower on CPU, try it on a "
                                 "GPU).")
    cache: str = setting("auto", help="Keep decoded, resized images: auto (memory if it fits, else disk), "
                                      "memory, disk ($DLMI_CACHE_DIR), none.")
    sync_bn: bool = setting(True, flags=("--sync-bn/--no-sync-bn",),
                            help="Under torchrun: BatchNorm statistics over the global batch.")
    # The stronger recipe (docs/training.md): linear warm-up epochs before the schedule, an exponential
    # moving average of the weights (decay per optimiser step; 0 = off), the augmentation recipe used with
    # --augment, and for joint runs the class loss's weight and deep supervision.
    warmup_epochs: int = setting(0, help="Linear warm-up epochs before the schedule.")
    ema: float = setting(0.0, help="Validate, save and export an EMA of the weights with this decay per step "
                                   "(0 = off).")
    augment_recipe: str = setting("basic", help="Augmentation recipe with --augment: basic or ultrasound "
                                                "(docs/training.md).")
    class_loss_weight: float = setting(1.0, tasks=(JOINT,), help="Weight of the class loss.")
    deep_supervision: bool = setting(True, tasks=(JOINT,),
                                     flags=("--deep-supervision/--no-deep-supervision",),
                                     help="Mask loss on the decoder's coarser outputs too.")
    # Recorded when the run starts, not set by the user: the model's pretrained starting weights (source,
    # file, sha256; dlmi.models.pretrained), or None when it starts from random weights.
    pretrained_weights: dict[str, str] | None = field(default=None, metadata={"recorded": True, "tasks": ()})

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
        from dlmi.datasets.base import MAX_IMAGE_SIZE

        check_fields(self, "training settings")
        checks = [
            (self.image_size >= 8, f"image_size must be at least 8, got {self.image_size}"),
            (self.image_size <= MAX_IMAGE_SIZE,
             f"image_size must be at most {MAX_IMAGE_SIZE} pixels, got {self.image_size}"),
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
            (self.class_loss_weight >= 0,
             f"class_loss_weight must be 0 or more, got {self.class_loss_weight}"),
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
        data = {RENAMED_SETTINGS.get(key, key): value for key, value in data.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DlmiError(f"{source}: unknown training settings {', '.join(unknown)}")
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
