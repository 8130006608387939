"""The network behind the ``unet-mt`` plugin (see :mod:`dlmi.models.unet_mt`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlmi.models.unet_torch import SIZE_MULTIPLE, DoubleConv, Down, Up


class JointUNet(nn.Module):
    """U-Net encoder/decoder with a class head on the bottleneck and deep-supervision outputs."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, out_channels: int = 1,
                 base_channels: int = 16, dropout: float = 0.3) -> None:
        super().__init__()
        c = base_channels
        self.num_classes = num_classes
        self.base_channels = base_channels
        self.inc = DoubleConv(in_channels, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.down3 = Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 16 * c)
        self.up1 = Up(16 * c, 8 * c, bilinear=False)
        self.up2 = Up(8 * c, 4 * c, bilinear=False)
        self.up3 = Up(4 * c, 2 * c, bilinear=False)
        self.up4 = Up(2 * c, c, bilinear=False)
        self.outc = nn.Conv2d(c, out_channels, kernel_size=1)
        self.aux = nn.ModuleList(nn.Conv2d(ch, out_channels, kernel_size=1) for ch in (8 * c, 4 * c, 2 * c))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * 16 * c, num_classes))

    def forward(self, x: torch.Tensor, deep: bool = False):  # noqa: ANN201 - tuple of 2 or 3
        height, width = x.shape[-2], x.shape[-1]
        x = F.pad(x, (0, (-width) % SIZE_MULTIPLE, 0, (-height) % SIZE_MULTIPLE), mode="replicate")
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        pooled = torch.cat([x5.mean(dim=(2, 3)), x5.amax(dim=(2, 3))], dim=1)
        class_logits = self.head(pooled)
        y1 = self.up1(x5, x4)
        y2 = self.up2(y1, x3)
        y3 = self.up3(y2, x2)
        y4 = self.up4(y3, x1)
        seg_logits = self.outc(y4)[..., :height, :width]
        if not deep:
            return seg_logits, class_logits
        aux = [head(y) for head, y in zip(self.aux, (y1, y2, y3), strict=True)]
        return seg_logits, class_logits, aux
