"""The network behind the ``unet-mt`` plugin (see :mod:`dlmi.models.unet_mt`)."""

from __future__ import annotations

import torch
from torch import nn

from dlmi.models.unet_mt import HEADS
from dlmi.models.unet_torch import UNet


def lesion_features(mask_logits: torch.Tensor, maps: list[torch.Tensor],
                    scales: tuple[int, ...]) -> list[torch.Tensor]:
    """Each map (downsampled by its scale from the padded input) averaged under the mask probability (about 0
    where no lesion is seen), and the mask's mean probability: the ``head="lesion"`` features."""
    weight = torch.sigmoid(mask_logits.detach().float()).to(maps[0].dtype)
    pooled = []
    for scale, feature in zip(scales, maps, strict=True):
        w = nn.functional.avg_pool2d(weight, scale) * (scale * scale)
        pooled.append((feature * w).sum(dim=(2, 3)) / (w.sum(dim=(2, 3)) + 1.0))
    pooled.append(weight.mean(dim=(2, 3)))
    return pooled


class JointUNet(UNet):
    """The classic U-Net (its encoder, decoder and padding) plus a class head and deep-supervision outputs
    on the three coarser decoder levels.

    ``head="global"``: the class head reads the bottleneck's global average and max. ``head="lesion"`` also
    reads the bottleneck and the three coarser decoder levels averaged under the predicted mask (its
    probability, detached: the class loss does not move the mask) and the mask's mean probability, so the
    class is decided from the lesion's own features at several scales.
    """

    #: Downsampling of the bottleneck and of the three coarser decoder levels (the padded input is a
    #: multiple of 16, so each is an exact average pooling of the full-size mask).
    _LESION_SCALES = (16, 8, 4, 2)

    def __init__(self, num_classes: int = 3, in_channels: int = 1, out_channels: int = 1,
                 base_channels: int = 16, dropout: float = 0.3, head: str = "global") -> None:
        super().__init__(in_channels, out_channels, base_channels, bilinear=False)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        c = base_channels
        self.num_classes = num_classes
        self.head_kind = head
        self.aux = nn.ModuleList(nn.Conv2d(ch, out_channels, kernel_size=1) for ch in (8 * c, 4 * c, 2 * c))
        features = 2 * 16 * c + ((16 + 8 + 4 + 2) * c + 1 if head == "lesion" else 0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor, deep: bool = False):  # noqa: ANN201 - tuple of 2 or 3
        height, width = x.shape[-2], x.shape[-1]
        levels = self.encode(self.padded(x))
        bottleneck = levels[-1]
        decoded = self.decode(levels)
        padded_logits = self.outc(decoded[-1])
        features = [bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))]
        if self.head_kind == "lesion":
            features += lesion_features(padded_logits, [bottleneck, *decoded[:3]], self._LESION_SCALES)
        class_logits = self.head(torch.cat(features, dim=1))
        seg_logits = padded_logits[..., :height, :width]
        if not deep:
            return seg_logits, class_logits
        return seg_logits, class_logits, [head(y) for head, y in zip(self.aux, decoded[:3], strict=True)]
