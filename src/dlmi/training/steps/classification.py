"""Classifier training steps: cross-entropy on the class logits; accuracy and detect accuracy per epoch.

Metrics (per epoch, over the side's images): ``accuracy`` = fraction of images whose arg-max class is the
true class; ``detect_accuracy`` (datasets with a normal class) = fraction whose predicted normal/not-normal
agrees with the truth, read from the same arg-max prediction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlmi.errors import DlmiError
from dlmi.training.loop import StepResult


class ClassificationSteps:
    """Forward + loss for a classifier; ``records`` hold each image's predicted and true class."""

    task = "classification"

    def __init__(self, loss_fn: nn.Module, normal_index: int | None = None) -> None:
        self.loss_fn = loss_fn
        self.normal_index = normal_index

    def forward(self, model: nn.Module, batch: dict[str, Any], training: bool) -> StepResult:
        logits = model(batch["image"]).float()  # the loss in fp32 under autocast
        loss = self.loss_fn(logits, batch["label"])
        records = {"pred": logits.detach().argmax(dim=1), "label": batch["label"]}
        return StepResult(loss=loss, records=records)

    def summarize(self, records: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
        pred, label = records["pred"].cpu(), records["label"].cpu()
        metrics = {f"{prefix}_accuracy": float((pred == label).double().mean())}
        if self.normal_index is not None:
            agree = (pred == self.normal_index) == (label == self.normal_index)
            metrics[f"{prefix}_detect_accuracy"] = float(agree.double().mean())
        return metrics


def classification_loss(name: str, class_weights: list[float] | None = None) -> nn.Module:
    """The registered loss ``name`` (``cross-entropy`` by default), with per-class weights when given."""
    from dlmi.plugins import create_loss

    if class_weights is None:
        return create_loss(name)
    try:
        return create_loss(name, class_weights=class_weights)
    except TypeError:
        raise DlmiError(
            f"loss {name!r} takes no class weights; use --class-balance sampler instead"
        ) from None
