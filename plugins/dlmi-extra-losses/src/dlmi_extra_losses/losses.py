"""Focal and Tversky losses, called as ``loss(logits, target)`` like dlmi's built-in losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlmi import DlmiError


def _as_float_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.numel() != logits.numel():
        raise DlmiError(
            f"loss: target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    return target.reshape(logits.shape).to(logits.dtype)


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al., 2017) on logits, averaged over every pixel of the batch.

    ``-alpha_t · (1 - p_t)^gamma · log(p_t)``, where ``p_t`` is the probability given to the true class and
    ``alpha_t`` is ``alpha`` for lesion pixels and ``1 - alpha`` for background. ``gamma=0, alpha=0.5`` is
    half the binary cross-entropy.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0 or gamma < 0:
            raise DlmiError(f"focal loss: need 0 <= alpha <= 1 and gamma >= 0, got {alpha=}, {gamma=}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _as_float_target(logits, target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # = -log(p_t)
        p_t = torch.exp(-bce)
        alpha_t = self.alpha * target + (1.0 - self.alpha) * (1.0 - target)
        return (alpha_t * (1.0 - p_t) ** self.gamma * bce).mean()


class TverskyLoss(nn.Module):
    """1 - Tversky index on sigmoid probabilities, per image then averaged over the batch.

    Tversky index = (TP + smooth) / (TP + alpha·FP + beta·FN + smooth) with soft counts TP = Σpt,
    FP = Σp(1-t), FN = Σ(1-p)t over one image's pixels. ``alpha = beta = 0.5`` with ``smooth = s/2`` is
    the Dice loss with smoothing ``s``; the default ``beta = 0.7`` weighs missed lesion pixels more than
    false alarms.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> None:
        super().__init__()
        if alpha < 0 or beta < 0 or smooth < 0:
            raise DlmiError(f"tversky loss: alpha, beta, smooth must be >= 0, got {alpha}, {beta}, {smooth}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _as_float_target(logits, target).reshape(logits.shape[0], -1)
        probs = torch.sigmoid(logits).reshape(logits.shape[0], -1)
        tp = (probs * target).sum(dim=1)
        fp = (probs * (1.0 - target)).sum(dim=1)
        fn = ((1.0 - probs) * target).sum(dim=1)
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1.0 - index.mean()
