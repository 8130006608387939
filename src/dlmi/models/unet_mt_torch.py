"""The network behind the ``unet-mt`` plugin (see :mod:`dlmi.models.unet_mt`)."""

from __future__ import annotations

import torch
from torch import nn

from dlmi.models.unet_torch import UNet


class JointUNet(UNet):
    """The classic U-Net (its encoder, decoder and padding) plus a class head on the bottleneck and
    deep-supervision outputs on the three coarser decoder levels."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, out_channels: int = 1,
                 base_channels: int = 16, dropout: float = 0.3) -> None:
        super().__init__(in_channels, out_channels, base_channels, bilinear=False)
        c = base_channels
        self.num_classes = num_classes
        self.aux = nn.ModuleList(nn.Conv2d(ch, out_channels, kernel_size=1) for ch in (8 * c, 4 * c, 2 * c))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * 16 * c, num_classes))

    def forward(self, x: torch.Tensor, deep: bool = False):  # noqa: ANN201 - tuple of 2 or 3
        height, width = x.shape[-2], x.shape[-1]
        levels = self.encode(self.padded(x))
        bottleneck = levels[-1]
        class_logits = self.head(torch.cat([bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))], dim=1))
        decoded = self.decode(levels)
        seg_logits = self.outc(decoded[-1])[..., :height, :width]
        if not deep:
            return seg_logits, class_logits
        return seg_logits, class_logits, [head(y) for head, y in zip(self.aux, decoded[:3], strict=True)]
