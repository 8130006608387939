"""A from-scratch classifier alternative: torchvision's ResNet-18 on one grey channel, ``resnet18``.

The stem convolution takes 1 channel instead of 3; everything else is torchvision's ResNet-18 (11.2 M
parameters with 3 classes). By default the weights start random (``weights=None``), which needs no
download. ``weights="imagenet"`` starts from torchvision's ImageNet weights (fetched by torchvision into its
cache, so the machine must reach download.pytorch.org once), with the stem's RGB filters summed to one
grey channel — the same response to a grey image as the RGB network gives.

Any square input size works (adaptive pooling before the linear layer); ``image_size`` is accepted and
ignored, as the classification hook passes it to every classifier.

This module is the plugin (no torch import); the network is built in :func:`create_resnet18`.
"""

from __future__ import annotations

from typing import Any

from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl

WEIGHTS = (None, "imagenet")


def create_resnet18(num_classes: int, image_size: int | None = None, in_channels: int = 1,
                    weights: str | None = None, dropout: float = 0.0) -> Any:
    """ResNet-18 with a ``in_channels``-channel stem and a ``num_classes`` head (optionally dropout first)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DlmiError(f"resnet18: num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise DlmiError(f"resnet18: in_channels must be a positive integer, got {in_channels!r}")
    if weights not in WEIGHTS:
        raise DlmiError(f"resnet18: weights must be none or 'imagenet', got {weights!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise DlmiError(f"resnet18: dropout must be in [0, 1), got {dropout!r}")
    from torch import nn
    from torchvision.models import ResNet18_Weights, resnet18

    if weights == "imagenet":
        try:
            net = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
        except Exception as exc:  # no network, a proxy, a broken cache: say which
            raise DlmiError(f"resnet18: could not load torchvision's ImageNet weights ({exc})") from None
        net.conv1 = grey_stem(net.conv1, in_channels)
    else:
        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    head = nn.Linear(net.fc.in_features, num_classes)
    net.fc = nn.Sequential(nn.Dropout(float(dropout)), head) if dropout else head
    return net


def grey_stem(rgb_stem: Any, in_channels: int = 1) -> Any:
    """A copy of a pretrained RGB stem convolution that takes ``in_channels`` grey channels.

    The RGB filters are summed over R, G, B (and spread evenly over ``in_channels``), so a grey image gets
    the response the RGB network gives to that image replicated on its three channels. Used by ``resnet18``
    and by the ResNet encoders of ``unet`` / ``unet-mt`` (:mod:`dlmi.models.resnet_unet_torch`).
    """
    import torch
    from torch import nn

    rgb = rgb_stem.weight.detach()
    stem = nn.Conv2d(in_channels, rgb.shape[0], kernel_size=rgb_stem.kernel_size, stride=rgb_stem.stride,
                     padding=rgb_stem.padding, bias=rgb_stem.bias is not None)
    with torch.no_grad():
        stem.weight.copy_(rgb.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
        if rgb_stem.bias is not None:
            stem.bias.copy_(rgb_stem.bias.detach())
    return stem


@hookimpl
def dlmi_register_models(register) -> None:
    register(
        "resnet18",
        create_resnet18,
        task="classification",
        description="torchvision ResNet-18 on 1 grey channel, from scratch (option weights='imagenet' "
                    "downloads torchvision's; dropout=0)",
    )
