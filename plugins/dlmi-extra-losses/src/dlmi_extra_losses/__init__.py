"""dlmi-extra-losses: focal and Tversky segmentation losses, registered as a dlmi plugin."""

from __future__ import annotations

from dlmi import hookimpl
from dlmi_extra_losses.losses import FocalLoss, TverskyLoss

__all__ = ["FocalLoss", "TverskyLoss", "dlmi_register_losses"]


@hookimpl
def dlmi_register_losses(register) -> None:
    register("focal", FocalLoss, task="segmentation",
             description="Binary focal loss on logits (alpha=0.25, gamma=2), pixel mean")
    register("tversky", TverskyLoss, task="segmentation",
             description="1 - Tversky index (alpha=0.3 FP, beta=0.7 FN), per image then batch mean")
