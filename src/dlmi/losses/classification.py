"""Built-in classification loss: ``cross-entropy`` on (N, K) logits and (N,) integer labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl


def create_cross_entropy(
    class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0
) -> nn.CrossEntropyLoss:
    """Cross-entropy on logits; optional per-class weights (index = label) and label smoothing."""
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor([float(w) for w in class_weights], dtype=torch.float32)
        if weight.numel() == 0 or bool((weight < 0).any()) or float(weight.sum()) <= 0:
            raise DlmiError(
                f"cross-entropy: class weights must be >= 0 and not all 0, got {list(class_weights)}"
            )
    if not 0.0 <= label_smoothing < 1.0:
        raise DlmiError(f"cross-entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    # CrossEntropyLoss keeps the weights as a buffer, so .to(device) moves them with the module.
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


@hookimpl
def dlmi_register_losses(register) -> None:
    register("cross-entropy", create_cross_entropy, task="classification",
             description="Cross-entropy on logits (options: class_weights, label_smoothing)")
