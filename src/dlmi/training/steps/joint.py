"""Joint training steps: a mask loss and a class loss on one network's two outputs (``unet-mt``).

Loss = mask loss (the registered ``--loss``, by default ``dice-bce``) on the full-resolution logits, plus
the same loss on the deep-supervision outputs (weights 1/2, 1/4, 1/8 of the main one, then all divided by
their sum, as in nnU-Net; targets downsampled by area averaging), plus ``class_loss_weight`` × cross-entropy
of the class head (label smoothing ``label_smoothing``). Every image gives a mask gradient, normal ones
included (their target is empty): the class head's gate is applied at evaluation and in the exported graph.

Metrics per epoch (definitions of ``docs/metrics.md``), with the prediction ``σ(logit) > 0.5`` and the
gate = the class head's arg-max is *normal*:

- ``lesion_dice``: mean per-image Dice over images whose true mask is not empty, unaided (no gate);
- ``iou`` / ``dice``: seed mIoU / mean Dice over all images, aided (empty ∩ empty = 1);
- ``empty_fpr``: fraction of images with an empty true mask given any lesion pixel, aided;
- ``accuracy``, ``detect_accuracy``: of the class head;
- ``score`` = (lesion_dice + accuracy) / 2, the default for choosing the best epoch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlmi.metrics.segmentation import dice_from_counts, iou_from_counts
from dlmi.runtime.gating import gate_logits
from dlmi.training.loop import StepResult
from dlmi.training.steps.segmentation import mask_counts_torch

DEEP_WEIGHTS = (1.0, 0.5, 0.25, 0.125)


class JointSteps:
    """Forward + loss for a joint network ``model(x, deep) -> (seg, class[, aux])``."""

    task = "joint"

    def __init__(self, seg_loss: nn.Module, normal_index: int | None, *, class_loss_weight: float = 1.0,
                 label_smoothing: float = 0.1, deep_supervision: bool = True, threshold: float = 0.5) -> None:
        self.seg_loss = seg_loss
        self.normal_index = normal_index
        self.class_loss_weight = float(class_loss_weight)
        self.class_loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.deep_supervision = deep_supervision
        self.threshold = threshold

    def mask_loss(self, seg: torch.Tensor, aux: list[torch.Tensor] | None,
                  masks: torch.Tensor) -> torch.Tensor:
        target = masks.float().reshape(seg.shape)
        loss = self.seg_loss(seg, target)
        if not aux:
            return loss
        total, weights = loss * DEEP_WEIGHTS[0], DEEP_WEIGHTS[0]
        padded = _padded(target, aux[-1])
        for weight, logits in zip(DEEP_WEIGHTS[1:], reversed(aux), strict=False):
            small = F.adaptive_avg_pool2d(padded, logits.shape[-2:])
            total = total + weight * self.seg_loss(logits.float(), small)
            weights += weight
        return total / weights

    def forward(self, model: nn.Module, batch: dict[str, Any], training: bool) -> StepResult:
        images, masks, labels = batch["image"], batch["mask"], batch["label"]
        deep = training and self.deep_supervision
        outputs = model(images, deep=True) if deep else model(images)
        seg, class_logits = outputs[0].float(), outputs[1].float()
        aux = [a.float() for a in outputs[2]] if deep else None
        class_loss = self.class_loss(class_logits, labels)
        loss = self.mask_loss(seg, aux, masks) + self.class_loss_weight * class_loss
        records: dict[str, torch.Tensor] = {
            "pred": class_logits.detach().argmax(dim=1),
            "label": labels,
            "counts_unaided": mask_counts_torch(seg.detach(), masks, self.threshold),
        }
        if self.normal_index is not None:
            gated = records["pred"] == self.normal_index
            records["counts"] = mask_counts_torch(gate_logits(seg.detach(), gated), masks, self.threshold)
        else:
            records["counts"] = records["counts_unaided"]
        return StepResult(loss=loss, records=records)

    def summarize(self, records: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
        pred, label = records["pred"].cpu(), records["label"].cpu()
        counts = records["counts"].cpu().numpy()
        unaided = records["counts_unaided"].cpu().numpy()
        lesion = unaided[:, 2] > 0
        empty = counts[:, 2] == 0
        lesion_dice = float(dice_from_counts(*unaided[lesion].T).mean()) if lesion.any() else float("nan")
        accuracy = float((pred == label).double().mean())
        metrics = {
            f"{prefix}_accuracy": accuracy,
            f"{prefix}_lesion_dice": lesion_dice,
            f"{prefix}_iou": float(iou_from_counts(*counts.T).mean()),
            f"{prefix}_dice": float(dice_from_counts(*counts.T).mean()),
            f"{prefix}_empty_fpr": float((counts[empty, 1] > 0).mean()) if empty.any() else float("nan"),
        }
        if self.normal_index is not None:
            agree = (pred == self.normal_index) == (label == self.normal_index)
            metrics[f"{prefix}_detect_accuracy"] = float(agree.double().mean())
        metrics[f"{prefix}_score"] = (lesion_dice + accuracy) / 2 if lesion.any() else accuracy
        return metrics


def _padded(target: torch.Tensor, finest_aux: torch.Tensor) -> torch.Tensor:
    """The target padded (edge) as the network padded its input, so area pooling lands on the aux grid: the
    finest deep-supervision output is at 1/2 of the padded input (a multiple of 16 for the classic U-Net,
    of 32 for a ResNet encoder), so the padded size is twice its size."""
    height, width = target.shape[-2:]
    full_height, full_width = 2 * finest_aux.shape[-2], 2 * finest_aux.shape[-1]
    return F.pad(target, (0, full_width - width, 0, full_height - height), mode="replicate")
