"""Built-in segmentation losses on logits, registered as ``dice``, ``bce``, ``mse``, ``dice-bce``.

Each is called as ``loss(logits, target)`` with ``logits`` of shape (N, 1, H, W) (or (N, H, W)) and a
``target`` mask of the same number of elements per image, 0/1 (bool or float), and returns a scalar. The
definitions are in :mod:`dlmi.losses.segmentation_torch`; this module is the plugin, registering light
factories that import it (and torch) only when a loss is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlmi.hookspecs import hookimpl

if TYPE_CHECKING:
    from dlmi.losses.segmentation_torch import BCELoss, DiceBCELoss, DiceLoss, MSELoss


def create_dice(smooth: float = 1.0) -> DiceLoss:
    """1 − soft Dice on sigmoid probabilities, per image then averaged over the batch."""
    from dlmi.losses.segmentation_torch import DiceLoss

    return DiceLoss(smooth=smooth)


def create_bce(pos_weight: float | None = None) -> BCELoss:
    """Binary cross-entropy on logits, averaged over every pixel of the batch."""
    from dlmi.losses.segmentation_torch import BCELoss

    return BCELoss(pos_weight=pos_weight)


def create_mse() -> MSELoss:
    """Mean squared error between sigmoid probabilities and the 0/1 mask, averaged over every pixel."""
    from dlmi.losses.segmentation_torch import MSELoss

    return MSELoss()


def create_dice_bce(smooth: float = 1.0, dice_weight: float = 1.0, bce_weight: float = 1.0) -> DiceBCELoss:
    """``dice_weight`` · Dice loss + ``bce_weight`` · BCE (both weights 1 by default)."""
    from dlmi.losses.segmentation_torch import DiceBCELoss

    return DiceBCELoss(smooth=smooth, dice_weight=dice_weight, bce_weight=bce_weight)


@hookimpl
def dlmi_register_losses(register) -> None:
    register("dice", create_dice, task="segmentation",
             description="1 − soft Dice (smooth=1), per image then batch mean; on logits")
    register("bce", create_bce, task="segmentation",
             description="Binary cross-entropy with logits, pixel mean")
    register("mse", create_mse, task="segmentation",
             description="Mean squared error of sigmoid probabilities vs the 0/1 mask, pixel mean")
    register("dice-bce", create_dice_bce, task="segmentation",
             description="Sum of Dice loss and BCE (weights dice_weight=1, bce_weight=1)")
