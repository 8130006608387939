"""Built-in segmentation losses on logits as PyTorch modules: ``dice``, ``bce``, ``mse``, ``dice-bce``
(registered by :mod:`dlmi.losses.segmentation`, which imports this module only when a loss is built).

Each is called as ``loss(logits, target)`` with ``logits`` of shape (N, 1, H, W) (or (N, H, W)) and a
``target`` mask of the same number of elements per image, 0/1 (bool or float), and returns a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlmi.errors import DlmiError


def match_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` as a float tensor of ``logits``' shape (an (N,H,W) mask is fine for (N,1,H,W) logits)."""
    if target.shape != logits.shape:
        if target.numel() != logits.numel() or target.shape[:1] != logits.shape[:1]:
            raise DlmiError(
                f"loss: target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}"
            )
        target = target.reshape(logits.shape)
    return target.to(dtype=logits.dtype)


def soft_dice_per_image(probs: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    """(N,) soft Dice of each image: (2·Σpt + smooth) / (Σp + Σt + smooth), sums over that image's pixels."""
    probs = probs.reshape(probs.shape[0], -1)
    target = target.reshape(target.shape[0], -1)
    intersection = (probs * target).sum(dim=1)
    return (2.0 * intersection + smooth) / (probs.sum(dim=1) + target.sum(dim=1) + smooth)


class DiceLoss(nn.Module):
    """1 − soft Dice on sigmoid probabilities, computed per image then averaged over the batch.

    Dice is taken over each image's pixels separately and the N values are averaged, so an image's
    contribution does not depend on which other images share its batch (a batch-pooled Dice lets a large
    lesion drown a small one, and changes with the batch size). ``smooth`` (default 1) is added to the
    numerator and the denominator: an empty prediction of an empty mask scores Dice 1 (loss 0) instead of
    0/0, and a completely wrong prediction of a mask of n pixels scores 1/(n+1), about 0 (loss about 1).
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        if smooth < 0:
            raise DlmiError(f"dice loss: smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = match_target(logits, target)
        return 1.0 - soft_dice_per_image(torch.sigmoid(logits), target, self.smooth).mean()


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (``BCEWithLogits``), averaged over every pixel of the batch.

    ``pos_weight`` (optional) weighs the lesion pixels' term, for masks where lesion is rare.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = match_target(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)


class MSELoss(nn.Module):
    """Mean squared error between sigmoid probabilities and the 0/1 mask, averaged over every pixel."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = match_target(logits, target)
        return F.mse_loss(torch.sigmoid(logits), target)


class DiceBCELoss(nn.Module):
    """The weighted SUM ``dice_weight · Dice loss + bce_weight · BCE`` (both weights 1 by default).

    Dice loss is per image then batch-averaged (see :class:`DiceLoss`); BCE is the pixel mean. With the
    default weights the value lies in [0, 1 + BCE]; set both weights to 0.5 for the mean of the two.
    """

    def __init__(self, smooth: float = 1.0, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice = DiceLoss(smooth=smooth)
        self.bce = BCELoss()
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)
