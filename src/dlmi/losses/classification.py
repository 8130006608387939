"""Built-in classification loss: ``cross-entropy`` on (N, K) logits and (N,) integer labels.

The plugin module imports no torch: the factory imports it when a loss is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl

if TYPE_CHECKING:
    from torch import nn


def create_cross_entropy(
    class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0
) -> nn.CrossEntropyLoss:
    """Cross-entropy on logits; optional per-class weights (index = label) and label smoothing."""
    weights = None
    if class_weights is not None:
        weights = [float(w) for w in class_weights]
        if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise DlmiError(
                f"cross-entropy: class weights must be >= 0 and not all 0, got {list(class_weights)}"
            )
    if not 0.0 <= label_smoothing < 1.0:
        raise DlmiError(f"cross-entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    import torch
    from torch import nn

    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    # CrossEntropyLoss keeps the weights as a buffer, so .to(device) moves them with the module.
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


@hookimpl
def dlmi_register_losses(register) -> None:
    register("cross-entropy", create_cross_entropy, task="classification",
             description="Cross-entropy on logits (options: class_weights, label_smoothing)")
