"""The classic U-Net (Ronneberger et al., 2015), registered as ``unet``.

Five levels (4 down, 4 up) of two 3×3 convolutions → BatchNorm → ReLU, 2×2 max-pooling on the way down,
upsampling plus the skip connection of the same level on the way up, and a 1×1 convolution to the output
logits; any input size (padded inside ``forward`` to a multiple of 16). The network and the reasons for
its choices (padding, upsampling, determinism) are documented in :mod:`dlmi.models.unet_torch`.

This module is the plugin: it registers a light factory and imports no torch; the network is imported
when a model is built, so ``dlmi --help`` and ``dlmi predict`` (onnxruntime) never load PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl

if TYPE_CHECKING:
    from dlmi.models.unet_torch import UNet

DEPTH = 4
SIZE_MULTIPLE = 2**DEPTH
_NETWORK_NAMES = ("UNet", "DoubleConv", "Down", "Up")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DlmiError(f"unet: {name} must be a positive integer, got {value!r}")
    return value


def create_unet(
    in_channels: int = 1, out_channels: int = 1, base_channels: int | None = None, bilinear: bool = False,
    encoder: str | None = None, weights: str | None = None,
) -> UNet:
    """The classic U-Net (4 down, 4 up, skip connections; base 64); any input size, padded inside forward.

    ``encoder="resnet18"`` / ``"resnet34"``: a U-Net decoder (base 16) on torchvision's ResNet instead
    (:mod:`dlmi.models.resnet_unet_torch`), from ``weights="imagenet"`` or a state-dict file
    (:mod:`dlmi.models.pretrained`) or random.
    """
    from dlmi.models.pretrained import check_encoder_options

    _positive_int("in_channels", in_channels)
    _positive_int("out_channels", out_channels)
    check_encoder_options("unet", encoder, weights)
    if encoder is not None:
        if bilinear:
            raise DlmiError("unet: bilinear applies to the classic U-Net, not to encoder=" + str(encoder))
        from dlmi.models.resnet_unet_torch import ResNetUNet

        base = _positive_int("base_channels", 16 if base_channels is None else base_channels)
        return with_encoder_weights(lambda state: ResNetUNet(encoder, in_channels, out_channels, base, state),
                                    encoder, weights)
    base = _positive_int("base_channels", 64 if base_channels is None else base_channels)
    from dlmi.models.unet_torch import UNet

    return UNet(in_channels, out_channels, base, bool(bilinear))


def with_encoder_weights(build: Any, encoder: str, weights: str | None) -> Any:
    """``build(state_dict)`` with ``encoder``'s checked weights (or ``None``: random), the weights' record
    kept on the model as ``pretrained_weights`` (training writes it into config.json and the checkpoint)."""
    if weights is None:
        return build(None)
    from dlmi.models.pretrained import load_encoder_weights

    loaded = load_encoder_weights(encoder, weights)
    model = build(loaded.state_dict)
    model.pretrained_weights = loaded.record()
    return model


def __getattr__(name: str) -> Any:
    """``from dlmi.models.unet import UNet`` (or a building block) still works: it imports the network."""
    if name in _NETWORK_NAMES:
        from dlmi.models import unet_torch

        return getattr(unet_torch, name)
    raise AttributeError(f"module 'dlmi.models.unet' has no attribute {name!r}")


@hookimpl
def dlmi_register_models(register) -> None:
    register(
        "unet",
        create_unet,
        task="segmentation",
        description="Classic U-Net (options base_channels=64, bilinear=False); any H×W (padded to ×16); "
                    "encoder=resnet18|resnet34 weights=imagenet|PATH: a ResNet encoder (base 16)",
    )
