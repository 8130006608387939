"""U-Nets on a torchvision ResNet encoder: ``unet`` and ``unet-mt`` with ``--model-option encoder=resnet18``
(or ``resnet34``), built by their factories (:mod:`dlmi.models.unet`, :mod:`dlmi.models.unet_mt`).

Encoder: torchvision's ResNet without its pooling and classifier; its stem takes one grey channel, made
from the RGB filters by :func:`dlmi.models.resnet.grey_stem` when pretrained weights are given. Its five
stages (stem 1/2, ``layer1`` 1/4, ``layer2`` 1/8, ``layer3`` 1/16, ``layer4`` 1/32; 64, 64, 128, 256, 512
channels) are the U-Net's skip connections. Decoder: at each level a learned 2×2 transposed convolution
(deterministic on CUDA, as for the classic U-Net), the skip concatenated, a double 3×3 convolution; widths
``base_channels`` × (16, 8, 4, 2, 1), the last level at full resolution without a skip; a 1×1 convolution to
the logits.

Input: the same tensor as every dlmi model, grey in [0, 1]. ``forward`` first applies the ImageNet
normalisation that the pretrained filters expect, so it is part of every exported graph: the grey value is
normalised with the mean of ImageNet's R, G, B means and of their standard deviations
(:data:`GREY_MEAN`, :data:`GREY_STD`), the grey-image counterpart of the summed RGB stem. It is recorded as
``input_normalisation`` (export metadata, model card).

Any input size works: the input is padded (bottom and right, edge replication) to a multiple of 32, and to
at least 64, and the outputs cropped back, with the padding computed from the shape (``torch.sym_max``, no
branch) so ONNX export keeps dynamic sizes. The joint variant returns what ``unet-mt`` returns:
``(seg, class)`` and, with ``deep=True``, the logits of the decoder's 1/8, 1/4 and 1/2 levels for deep
supervision.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlmi.models.resnet import grey_stem
from dlmi.models.unet_mt_torch import lesion_features
from dlmi.models.unet_torch import DoubleConv

SIZE_MULTIPLE = 32
MIN_SIZE = 2 * SIZE_MULTIPLE
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = sum(IMAGENET_MEAN) / 3
GREY_STD = sum(IMAGENET_STD) / 3
STAGE_CHANNELS = (64, 64, 128, 256, 512)  # stem, layer1..layer4 of resnet18 and resnet34
DECODER_WIDTHS = (16, 8, 4, 2, 1)  # × base_channels, coarsest first

INPUT_NORMALISATION = {
    "applied": "inside the network (every exported graph): feed grey in [0, 1] as for any dlmi model",
    "formula": "(x - mean) / std on the grey channel",
    "mean": round(GREY_MEAN, 6),
    "std": round(GREY_STD, 6),
    "why": "ImageNet's R, G, B mean and std averaged, as the grey stem sums the RGB filters",
}


class UpBlock(nn.Module):
    """2×2 transposed convolution, the skip concatenated (when there is one), then a double convolution."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat([skip, x], dim=1))


class ResNetUNet(nn.Module):
    """U-Net on a ResNet encoder: (N, in_channels, H, W) in [0, 1] → (N, out_channels, H, W) logits."""

    size_multiple = SIZE_MULTIPLE
    input_normalisation = INPUT_NORMALISATION

    def __init__(self, encoder: str = "resnet18", in_channels: int = 1, out_channels: int = 1,
                 base_channels: int = 16, state_dict: dict[str, Any] | None = None) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, encoder)(weights=None)
        if state_dict is not None:  # checked by dlmi.models.pretrained; the classifier keys are not used
            encoder_state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
            net.load_state_dict(encoder_state, strict=False)
            net.conv1 = grey_stem(net.conv1, in_channels)
        else:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.encoder_name = encoder
        self.in_channels, self.out_channels, self.base_channels = in_channels, out_channels, base_channels
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.pool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        widths = [base_channels * w for w in DECODER_WIDTHS]
        skips = [STAGE_CHANNELS[3], STAGE_CHANNELS[2], STAGE_CHANNELS[1], STAGE_CHANNELS[0], 0]
        ins = [STAGE_CHANNELS[4], *widths[:-1]]
        self.ups = nn.ModuleList(UpBlock(i, s, w) for i, s, w in zip(ins, skips, widths, strict=True))
        self.outc = nn.Conv2d(widths[-1], out_channels, kernel_size=1)
        self.register_buffer("mean", torch.tensor(GREY_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(GREY_STD), persistent=False)
        self.pretrained_weights: dict[str, str] | None = None  # set by the factory when weights are loaded

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` normalised, then padded (bottom and right, edge replication) up to a multiple of 32 and at
        least 64, so the 1/32 stage has at least 2×2 values (BatchNorm needs more than one per channel when
        a training batch holds one image)."""
        height, width = x.shape[-2], x.shape[-1]
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        full_height = torch.sym_max(height + (-height) % SIZE_MULTIPLE, MIN_SIZE)
        full_width = torch.sym_max(width + (-width) % SIZE_MULTIPLE, MIN_SIZE)
        return F.pad(x, (0, full_width - width, 0, full_height - height), mode="replicate")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's five stages (1/2 first, the 1/32 bottleneck last) of a padded input."""
        s0 = self.stem(x)
        s1 = self.layer1(self.pool(s0))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        return [s0, s1, s2, s3, self.layer4(s3)]

    def decode(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder's five outputs, coarsest (1/16) first, full resolution last."""
        skips = [levels[3], levels[2], levels[1], levels[0], None]
        y, out = levels[4], []
        for up, skip in zip(self.ups, skips, strict=True):
            y = up(y, skip)
            out.append(y)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        return self.outc(self.decode(self.encode(self.padded(x)))[-1])[..., :height, :width]


class JointResNetUNet(ResNetUNet):
    """:class:`ResNetUNet` plus ``unet-mt``'s class head on the last stage (``layer4``) and deep-supervision
    outputs on the decoder's 1/8, 1/4 and 1/2 levels; ``head="lesion"`` as for ``unet-mt``
    (:class:`dlmi.models.unet_mt_torch.JointUNet`), on ``layer4`` and those three levels."""

    #: Downsampling of layer4 and of the decoder's 1/8, 1/4, 1/2 levels (exact on the padded input).
    _LESION_SCALES = (32, 8, 4, 2)

    def __init__(self, num_classes: int = 3, encoder: str = "resnet18", in_channels: int = 1,
                 out_channels: int = 1, base_channels: int = 16, dropout: float = 0.3, head: str = "global",
                 state_dict: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, in_channels, out_channels, base_channels, state_dict)
        self.num_classes = num_classes
        self.head_kind = head
        widths = [base_channels * w for w in DECODER_WIDTHS]
        self.aux = nn.ModuleList(nn.Conv2d(ch, out_channels, kernel_size=1) for ch in widths[1:4])
        bottleneck = STAGE_CHANNELS[4]
        features = 2 * bottleneck + (bottleneck + sum(widths[1:4]) + 1 if head == "lesion" else 0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor, deep: bool = False):  # noqa: ANN201 - tuple of 2 or 3
        height, width = x.shape[-2], x.shape[-1]
        levels = self.encode(self.padded(x))
        bottleneck = levels[-1]
        decoded = self.decode(levels)
        padded_logits = self.outc(decoded[-1])
        features = [bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))]
        if self.head_kind == "lesion":
            features += lesion_features(padded_logits, [bottleneck, *decoded[1:4]], self._LESION_SCALES)
        class_logits = self.head(torch.cat(features, dim=1))
        seg_logits = padded_logits[..., :height, :width]
        if not deep:
            return seg_logits, class_logits
        return seg_logits, class_logits, [head(y) for head, y in zip(self.aux, decoded[1:4], strict=True)]
