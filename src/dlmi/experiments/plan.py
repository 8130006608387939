"""The experiments of one reproduction: the seed's runs, their aided versions, a "dlmi improved" variant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlmi.experiments.profiles import Profile

# Where each dataset lives under ``--data-root`` (the layout of ../shared/data).
DATA_FOLDERS = {"brain-mri": "brain_mri", "busi": "busi"}

# The reference report's U-Net losses and its classifier (the experiment that aids their U-Nets).
REFERENCE_LOSSES = ("bce", "mse", "dice")
REFERENCE_CLASSIFIER = "busi-cls"
IMPROVED_CLASSIFIER = "busi-cls-improved"


@dataclass(frozen=True)
class Experiment:
    """One training run and its evaluation (segmenters: with and without the aid at evaluation)."""

    name: str
    title: str
    task: str
    dataset: str
    variant: str = "seed"
    loss: str | None = None
    aid: str | None = None
    eval_aid: str | None = None
    epochs: int = 1
    image_size: int = 128
    batch_size: int = 8
    base_channels: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def trained_aided(self) -> bool:
        return self.aid is not None

    @property
    def needs(self) -> tuple[str, ...]:
        """The experiments whose run folders this one reads (its training aid and its evaluation aid)."""
        return tuple(dict.fromkeys(n for n in (self.aid, self.eval_aid) if n))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "task": self.task, "dataset": self.dataset,
            "variant": self.variant, "loss": self.loss, "trained_aided": self.trained_aided,
            "aid": self.aid, "eval_aid": self.eval_aid, "epochs": self.epochs, "image_size": self.image_size,
            "batch_size": self.batch_size, "base_channels": self.base_channels,
            "augment": bool(self.settings.get("augment", False)),
            "scheduler": self.settings.get("scheduler", "none"),
            "class_balance": self.settings.get("class_balance", "none"),
        }


def plan_experiments(profile: Profile) -> list[Experiment]:
    """Every experiment of ``profile``, in an order where each one's aid comes first."""
    cls = {"task": "classification", "image_size": profile.classifier_image_size,
           "batch_size": profile.classifier_batch_size}
    seg = {"task": "segmentation", "dataset": "busi", "image_size": profile.segmenter_image_size,
           "batch_size": profile.segmenter_batch_size, "base_channels": profile.segmenter_base_channels}
    plan = [
        Experiment("brain-mri-cls", "brain MRI classifier (seed CNN, 2 classes)", dataset="brain-mri",
                   epochs=profile.classifier_epochs, **cls),
        Experiment(REFERENCE_CLASSIFIER, "BUSI classifier (seed CNN, 3 classes)", dataset="busi",
                   epochs=profile.classifier_epochs, **cls),
    ]
    for loss in REFERENCE_LOSSES:
        plan.append(Experiment(f"busi-unet-{loss}", f"U-Net, {loss.upper()} loss", loss=loss,
                               eval_aid=REFERENCE_CLASSIFIER, epochs=profile.segmenter_epochs, **seg))
    for loss in REFERENCE_LOSSES:
        plan.append(Experiment(f"busi-unet-{loss}-aided", f"U-Net, {loss.upper()} loss, aided training",
                               loss=loss, aid=REFERENCE_CLASSIFIER, eval_aid=REFERENCE_CLASSIFIER,
                               epochs=profile.segmenter_epochs, **seg))
    if profile.improved:
        improved = {"augment": True, "scheduler": "cosine"}
        plan.append(Experiment(
            IMPROVED_CLASSIFIER,
            "BUSI classifier, dlmi improved (class-balanced sampler, augment, cosine lr)",
            dataset="busi", variant="improved",
            epochs=profile.improved_classifier_epochs or profile.classifier_epochs,
            settings={**improved, "class_balance": "sampler"}, **cls))
        plan.append(Experiment(
            "busi-unet-dice-bce-improved", "U-Net, Dice+BCE loss, augment, cosine lr (dlmi improved)",
            loss="dice-bce", eval_aid=IMPROVED_CLASSIFIER, variant="improved",
            epochs=profile.improved_segmenter_epochs or profile.segmenter_epochs, settings=improved, **seg))
    return plan
