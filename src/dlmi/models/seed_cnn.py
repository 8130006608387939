"""The seed report's classification CNN, registered as ``seed-cnn``.

Three blocks of Conv2d(kernel 5, stride 2, padding 2) → BatchNorm2d → ReLU → MaxPool2d(2) with channels
in→64→128→256 shrink the image 64-fold, then Linear(256·(S/64)² → 256) → ReLU → Linear(256 → 64) → ReLU →
Linear(64 → K). At 512×512 with 3 classes this is exactly the report's 5,238,147 parameters.

This module is the plugin: it registers a light factory and imports no torch. The network itself is in
:mod:`dlmi.models.seed_cnn_torch`, imported when a model is built, so ``dlmi --help`` and ``dlmi predict``
(onnxruntime) never load PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl

if TYPE_CHECKING:
    from dlmi.models.seed_cnn_torch import SeedCNN

BLOCK_CHANNELS = (64, 128, 256)
DOWNSAMPLING = 64  # each block: stride-2 convolution then 2×2 max-pool → ÷4; three blocks → ÷64


def create_seed_cnn(num_classes: int, image_size: int = 512, in_channels: int = 1) -> SeedCNN:
    """The seed report's CNN: 3×(conv k5 s2 → BN → ReLU → max-pool) then 3 linear layers."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise DlmiError(f"seed-cnn: num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise DlmiError(f"seed-cnn: in_channels must be a positive integer, got {in_channels!r}")
    if not isinstance(image_size, int) or image_size < DOWNSAMPLING or image_size % DOWNSAMPLING:
        raise DlmiError(
            f"seed-cnn: image size must be a multiple of {DOWNSAMPLING} (at least {DOWNSAMPLING}), "
            f"got {image_size!r}; the network shrinks the image {DOWNSAMPLING}-fold (try 128, 256 or 512)"
        )
    from dlmi.models.seed_cnn_torch import SeedCNN

    return SeedCNN(num_classes=num_classes, image_size=image_size, in_channels=in_channels)


@hookimpl
def dlmi_register_models(register) -> None:
    register(
        "seed-cnn",
        create_seed_cnn,
        task="classification",
        description="The seed report's CNN: 3 conv blocks (k5 s2) + 3 linear; 5,238,147 params at 512², K=3",
    )
