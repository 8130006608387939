"""The joint network ``unet-mt``: one U-Net encoder, a U-Net decoder and a classification head.

A multi-task U-Net: the encoder is the classic U-Net's (``dlmi.models.unet``); the decoder predicts the
lesion mask; a head on the deepest features (global average and max pooling, dropout, a linear layer)
predicts the image's class (for BUSI: normal / benign / malignant); with ``head="lesion"`` it also reads
the bottleneck and the coarser decoder levels averaged under the predicted mask. Both are trained together,
and the class head is the gate of classifier-aided segmentation, so the encoder runs once per image.

``forward(x)`` returns ``(seg_logits (N,1,H,W), class_logits (N,K))``. With ``deep=True`` (training with
deep supervision) it also returns the logits of three coarser decoder levels (1/8, 1/4, 1/2 of the padded
input), as in nnU-Net: the loss of each is added with halving weights.

Any input size works, as for ``unet``: the input is padded (edge replication) to a multiple of 16 and the
outputs are cropped back.
"""

from __future__ import annotations

from typing import Any

from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl

#: Class heads: ``global`` reads the bottleneck's global average and max; ``lesion`` adds features averaged
#: under the predicted mask at four scales.
HEADS = ("global", "lesion")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DlmiError(f"unet-mt: {name} must be a positive integer, got {value!r}")
    return value


def create_unet_mt(
    num_classes: int = 3,
    in_channels: int = 1,
    out_channels: int = 1,
    base_channels: int = 16,
    dropout: float = 0.3,
    head: str = "global",
    image_size: int | None = None,
    encoder: str | None = None,
    weights: str | None = None,
) -> Any:
    """A joint U-Net (segmentation + classification head); torch is imported only when one is built.

    ``encoder="resnet18"`` / ``"resnet34"``: on torchvision's ResNet, the class head on its last stage
    (:class:`dlmi.models.resnet_unet_torch.JointResNetUNet`), from ``weights="imagenet"`` or a state-dict
    file (:mod:`dlmi.models.pretrained`) or random.
    """
    from dlmi.models.pretrained import check_encoder_options

    _positive_int("num_classes", num_classes)
    _positive_int("in_channels", in_channels)
    _positive_int("out_channels", out_channels)
    _positive_int("base_channels", base_channels)
    if not 0.0 <= float(dropout) < 1.0:
        raise DlmiError(f"unet-mt: dropout must be in [0, 1), got {dropout!r}")
    if head not in HEADS:
        raise DlmiError(f"unet-mt: head must be one of {', '.join(HEADS)}, got {head!r}")
    check_encoder_options("unet-mt", encoder, weights)
    if encoder is not None:
        from dlmi.models.resnet_unet_torch import JointResNetUNet
        from dlmi.models.unet import with_encoder_weights

        return with_encoder_weights(
            lambda state: JointResNetUNet(num_classes, encoder, in_channels, out_channels, base_channels,
                                          float(dropout), head, state), encoder, weights)
    from dlmi.models.unet_mt_torch import JointUNet

    return JointUNet(num_classes, in_channels, out_channels, base_channels, float(dropout), head)


@hookimpl
def dlmi_register_models(register) -> None:
    register(
        "unet-mt",
        create_unet_mt,
        task="joint",
        description="Joint U-Net: one encoder, mask decoder + class head (options base_channels=16, "
                    "dropout=0.3, head=global|lesion; encoder=resnet18|resnet34 "
                    "weights=imagenet|PATH: a ResNet encoder); its class head gates the mask",
    )
