"""The classifier's gate: where the classifier says *normal*, the segmentation is an empty mask.

Used the same way in aided training (a gated image's output is a constant, so it gives no gradient), in
evaluation, and inside the exported two-stage ONNX graph.
"""

from __future__ import annotations

import torch

# A logit whose sigmoid is 0 in fp32 and fp16 alike, and which fits in fp16 (max 65504).
EMPTY_LOGIT = -1.0e4


def is_normal(class_logits: torch.Tensor, normal_index: int) -> torch.Tensor:
    """Bool (N,) — the classifier's arg-max class is the normal class."""
    return class_logits.argmax(dim=1) == normal_index


def says_normal(class_logits: torch.Tensor, normal_index: int,
                normal_threshold: float | None = None) -> torch.Tensor:
    """Bool (N,) — :func:`is_normal`, or with ``normal_threshold`` the normal class's probability is at least
    that (a post-processing rule chosen on out-of-fold predictions)."""
    if normal_threshold is None:
        return is_normal(class_logits, normal_index)
    return torch.softmax(class_logits.float(), dim=1)[:, normal_index] >= normal_threshold


def gate_logits(seg_logits: torch.Tensor, gated: torch.Tensor) -> torch.Tensor:
    """Replace the (N,1,H,W) logits of gated images by :data:`EMPTY_LOGIT` (a constant: no gradient flows)."""
    mask = gated.view(-1, *([1] * (seg_logits.dim() - 1)))
    return torch.where(mask, torch.full_like(seg_logits, EMPTY_LOGIT), seg_logits)
