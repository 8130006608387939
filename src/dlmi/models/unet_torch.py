"""The classic U-Net (Ronneberger et al., 2015) as PyTorch modules (registered as ``unet`` by
:mod:`dlmi.models.unet`, which imports this module only when a model is built).

Five levels (4 down, 4 up) of two 3×3 convolutions → BatchNorm → ReLU, 2×2 max-pooling on the way down,
upsampling plus the skip connection of the same level on the way up, and a 1×1 convolution to the output
logits. Channels are ``base_channels`` × (1, 2, 4, 8, 16).

Any input size works: ``forward`` pads height and width (bottom and right) up to a multiple of 16 by edge
replication and crops the output back. Replication, unlike reflection, is valid for any size (reflection
needs the padding to be smaller than the image, which fails below 16 px). The padding is computed from the
input's shape with plain arithmetic (no branch), so the model exports to ONNX with dynamic height and width.

Upsampling: ``bilinear=False`` (the default) uses a learned 2×2 transposed convolution, as in the paper and
as the default of milesial/Pytorch-UNet, the implementation the seed report points to (31,036,481
parameters at base 64). ``bilinear=True`` uses bilinear interpolation and, like milesial's variant, halves
the channels of the deepest level and of the decoder (17,261,825 parameters at base 64).

The default is also the reproducible one: the backward pass of bilinear interpolation has no deterministic
CUDA kernel, so ``torch.use_deterministic_algorithms(True)`` raises on a GPU with ``bilinear=True`` (as
torch 2.14's ``use_deterministic_algorithms`` documentation states), while transposed convolution has a
deterministic kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlmi.models.unet import SIZE_MULTIPLE


class DoubleConv(nn.Module):
    """(3×3 conv → BatchNorm → ReLU) × 2; the convolutions have no bias (BatchNorm supplies it)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2×2 max-pool, then a double convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Upsample ×2, concatenate the skip connection, then a double convolution.

    ``in_channels`` is the channel count after concatenation.
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, mid_channels=in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Sizes always match: forward pads the input to a multiple of 16, so every level halves exactly.
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net mapping (N, in_channels, H, W) images to (N, out_channels, H, W) logits, for any H and W."""

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 64, bilinear: bool = False
    ) -> None:
        super().__init__()
        c = base_channels
        factor = 2 if bilinear else 1
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.bilinear = bilinear
        self.inc = DoubleConv(in_channels, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.down3 = Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 16 * c // factor)
        self.up1 = Up(16 * c, 8 * c // factor, bilinear)
        self.up2 = Up(8 * c, 4 * c // factor, bilinear)
        self.up3 = Up(4 * c, 2 * c // factor, bilinear)
        self.up4 = Up(2 * c, c, bilinear)
        self.outc = nn.Conv2d(c, out_channels, kernel_size=1)

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded (bottom and right, edge replication) up to a multiple of 16."""
        height, width = x.shape[-2], x.shape[-1]
        # (-n) % m is the padding up to the next multiple of m (0 when already a multiple); no branch.
        return F.pad(x, (0, (-width) % SIZE_MULTIPLE, 0, (-height) % SIZE_MULTIPLE), mode="replicate")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's five levels (full resolution first, the bottleneck last) of a padded input."""
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        return [x1, x2, x3, x4, self.down4(x4)]

    def decode(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder's four outputs, coarsest (1/8) first, full resolution last."""
        x1, x2, x3, x4, x5 = levels
        y1 = self.up1(x5, x4)
        y2 = self.up2(y1, x3)
        y3 = self.up3(y2, x2)
        return [y1, y2, y3, self.up4(y3, x1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        return self.outc(self.decode(self.encode(self.padded(x)))[-1])[..., :height, :width]
