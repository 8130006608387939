"""The seed report's classification CNN as a PyTorch module (registered as ``seed-cnn`` by
:mod:`dlmi.models.seed_cnn`, which imports this module only when a model is built).

Three blocks of Conv2d(kernel 5, stride 2, padding 2) → BatchNorm2d → ReLU → MaxPool2d(2) with channels
in→64→128→256 shrink the image 64-fold, then Linear(256·(S/64)² → 256) → ReLU → Linear(256 → 64) → ReLU →
Linear(64 → K). At 512×512 with 3 classes this is exactly the report's 5,238,147 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from dlmi.models.seed_cnn import BLOCK_CHANNELS, DOWNSAMPLING


def _block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=5, stride=2, padding=2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


class SeedCNN(nn.Module):
    """The seed CNN for square ``image_size``×``image_size`` inputs; outputs (N, num_classes) logits."""

    def __init__(self, num_classes: int, image_size: int, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in BLOCK_CHANNELS:
            layers += _block(channels, out_channels)
            channels = out_channels
        self.features = nn.Sequential(*layers)
        side = image_size // DOWNSAMPLING
        # Flattening happens in forward (not an nn.Flatten) so the layer table matches the report's.
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )
        self.num_classes = num_classes
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
