"""Segmenter training steps: a mask loss on the U-Net's logits, optionally gated by a frozen classifier.

Metrics (per epoch, over the side's images), with ``dlmi.metrics.segmentation``'s definitions: the
prediction is ``sigmoid(logit) > threshold`` (0.5); ``iou`` is the mean of per-image IoU and ``dice`` the
mean of per-image Dice over all images, where an image with an empty truth and an empty prediction scores 1
(the seed's rule). With an aid, ``iou``/``dice`` are the gated (aided) numbers and ``iou_unaided`` the
U-Net's own.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dlmi.metrics.segmentation import dice_from_counts, iou_from_counts
from dlmi.training.loop import StepResult
from dlmi.training.steps.aid import ClassifierGate


def mask_counts_torch(logits: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, 3) int64 on the logits' device: per image ``|P∩T|``, ``|P|``, ``|T|``; ``P = σ(logit) > t``."""
    logit_threshold = math.log(threshold / (1.0 - threshold))
    pred = (logits > logit_threshold).flatten(1)
    truth = (masks > 0.5).flatten(1)
    return torch.stack([(pred & truth).sum(1), pred.sum(1), truth.sum(1)], dim=1)


class SegmentationSteps:
    """Forward + loss for a segmenter; ``records`` hold per-image mask counts (and the gate's verdicts)."""

    task = "segmentation"

    def __init__(self, loss_fn: nn.Module, gate: ClassifierGate | None = None,
                 threshold: float = 0.5) -> None:
        self.loss_fn = loss_fn
        self.gate = gate
        self.threshold = threshold

    def forward(self, model: nn.Module, batch: dict[str, Any], training: bool) -> StepResult:
        images, masks = batch["image"], batch["mask"]
        raw = model(images).float()  # the loss and the metrics in fp32 under autocast
        records: dict[str, torch.Tensor] = {}
        logits = raw
        if self.gate is not None:
            logits, gated = self.gate.apply(raw, images)
            records["gated"] = gated
            records["counts_unaided"] = mask_counts_torch(raw.detach(), masks, self.threshold)
        loss = self.loss_fn(logits, masks)
        records["counts"] = mask_counts_torch(logits.detach(), masks, self.threshold)
        return StepResult(loss=loss, records=records)

    def summarize(self, records: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
        counts = records["counts"].cpu().numpy()
        metrics = {
            f"{prefix}_iou": float(iou_from_counts(*counts.T).mean()),
            f"{prefix}_dice": float(dice_from_counts(*counts.T).mean()),
        }
        if "counts_unaided" in records:
            unaided = records["counts_unaided"].cpu().numpy()
            metrics[f"{prefix}_iou_unaided"] = float(iou_from_counts(*unaided.T).mean())
            metrics[f"{prefix}_gated_fraction"] = float(records["gated"].double().mean().cpu())
        return metrics
