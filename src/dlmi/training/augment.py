"""Joint image/mask augmentation with torchvision transforms v2 (``--augment``).

The mask travels as a ``tv_tensors.Mask``, so geometric transforms move it with the image (nearest
interpolation) and intensity transforms leave it alone. Only horizontal flips: in ultrasound the transducer
is at the top, so a vertical flip would make an image no scanner produces.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


class JointAugment:
    """``transform(image, mask) -> (image, mask)`` on (1,H,W) float tensors; picklable for data workers."""

    def __init__(self, *, flip: float = 0.5, degrees: float = 10.0, translate: float = 0.05,
                 scale: tuple[float, float] = (0.9, 1.1), brightness: float = 0.2,
                 contrast: float = 0.2) -> None:
        self.transform = v2.Compose([
            v2.RandomHorizontalFlip(p=flip),
            v2.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale),
            v2.ColorJitter(brightness=brightness, contrast=contrast),
        ])

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_image, out_mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return out_image.as_subclass(torch.Tensor).clamp_(0.0, 1.0), out_mask.as_subclass(torch.Tensor)
