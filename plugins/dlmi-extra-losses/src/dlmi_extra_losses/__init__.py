"""dlmi-extra-losses: focal and Tversky segmentation losses, registered as a dlmi plugin.

Registering imports no torch: the factories import :mod:`dlmi_extra_losses.losses` (and with it torch)
when a loss is built, so ``dlmi --help`` and ``dlmi predict`` stay light with this plugin installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlmi import hookimpl

if TYPE_CHECKING:
    from dlmi_extra_losses.losses import FocalLoss, TverskyLoss

__all__ = ["FocalLoss", "TverskyLoss", "create_focal", "create_tversky", "dlmi_register_losses"]


def create_focal(alpha: float = 0.25, gamma: float = 2.0) -> FocalLoss:
    """Binary focal loss on logits (alpha=0.25, gamma=2), pixel mean."""
    from dlmi_extra_losses.losses import FocalLoss

    return FocalLoss(alpha=alpha, gamma=gamma)


def create_tversky(alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> TverskyLoss:
    """1 - Tversky index (alpha=0.3 FP, beta=0.7 FN), per image then batch mean."""
    from dlmi_extra_losses.losses import TverskyLoss

    return TverskyLoss(alpha=alpha, beta=beta, smooth=smooth)


def __getattr__(name: str) -> Any:
    """``from dlmi_extra_losses import FocalLoss`` still works; it imports the torch module then."""
    if name in ("FocalLoss", "TverskyLoss"):
        from dlmi_extra_losses import losses

        return getattr(losses, name)
    raise AttributeError(f"module 'dlmi_extra_losses' has no attribute {name!r}")


@hookimpl
def dlmi_register_losses(register) -> None:
    register("focal", create_focal, task="segmentation",
             description="Binary focal loss on logits (alpha=0.25, gamma=2), pixel mean")
    register("tversky", create_tversky, task="segmentation",
             description="1 - Tversky index (alpha=0.3 FP, beta=0.7 FN), per image then batch mean")
