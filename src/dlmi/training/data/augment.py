"""Joint image/mask augmentation with torchvision transforms v2 (``--augment``, ``--augment-recipe``).

The mask travels as a ``tv_tensors.Mask``, so geometric transforms move it with the image (nearest
interpolation) and intensity transforms leave it alone. Only horizontal flips: in ultrasound the transducer
is at the top, so a vertical flip would make an image no scanner produces.

Recipes:

- ``basic``: flip, small affine (±10°, ±5 % shift, 0.9–1.1 scale), brightness/contrast ±0.2;
- ``ultrasound``: flip, a wider affine (±15°, ±8 %, 0.85–1.2), then on the image only: brightness/contrast
  ±0.25, gamma 0.7–1.5 (p 0.3), Gaussian blur σ 0.5–1 (p 0.2), multiplicative speckle noise (p 0.2) and
  additive Gaussian noise σ ≤ 0.03 (p 0.2) — the intensity changes of gain, probes and scanners.
"""

from __future__ import annotations

import torch

RECIPES = ("basic", "ultrasound")


def _torchvision():
    """torchvision's ``tv_tensors`` and ``transforms.v2``, imported when augmentation is first used: importing
    torchvision takes about a second (it loads torch._dynamo), which a run without ``--augment`` (and every
    ``dlmi train`` that stops at a mistake in its options) need not wait for."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    return tv_tensors, v2


class RandomGamma:
    """``x ** g`` with ``g`` drawn log-uniformly in ``gamma`` (with probability ``p``); x in 0–1."""

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), p: float = 0.3) -> None:
        self.gamma, self.p = gamma, p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        low, high = torch.log(torch.tensor(self.gamma))
        return image.clamp(0.0, 1.0) ** torch.exp(low + (high - low) * torch.rand(()))


class RandomNoise:
    """Speckle (``x·(1 + σn)``) and additive Gaussian noise, each with probability ``p``; σ ≤ ``sigma``."""

    def __init__(self, sigma: float = 0.03, speckle: float = 0.15, p: float = 0.2) -> None:
        self.sigma, self.speckle, self.p = sigma, speckle, p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < self.p:
            image = image * (1.0 + self.speckle * torch.rand(()) * torch.randn_like(image))
        if torch.rand(()) < self.p:
            image = image + self.sigma * torch.rand(()) * torch.randn_like(image)
        return image


class JointAugment:
    """``transform(image, mask) -> (image, mask)`` on (1,H,W) float tensors; picklable for data workers."""

    def __init__(self, *, flip: float = 0.5, degrees: float = 10.0, translate: float = 0.05,
                 scale: tuple[float, float] = (0.9, 1.1), brightness: float = 0.2,
                 contrast: float = 0.2, gamma: float = 0.0, blur: float = 0.0, noise: float = 0.0) -> None:
        tv_tensors, v2 = _torchvision()
        # The wrapper classes, kept once: __call__ runs per image on the training hot path.
        self._as_image, self._as_mask = tv_tensors.Image, tv_tensors.Mask
        self.transform = v2.Compose([
            v2.RandomHorizontalFlip(p=flip),
            v2.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale),
            v2.ColorJitter(brightness=brightness, contrast=contrast),
        ])
        intensity: list = []
        if gamma > 0:
            intensity.append(RandomGamma(p=gamma))
        if blur > 0:
            intensity.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.5, 1.0))], p=blur))
        if noise > 0:
            intensity.append(RandomNoise(p=noise))
        self.intensity = v2.Compose(intensity) if intensity else None

    @classmethod
    def recipe(cls, name: str) -> JointAugment:
        """The named recipe (see the module docstring)."""
        if name == "ultrasound":
            return cls(degrees=15.0, translate=0.08, scale=(0.85, 1.2), brightness=0.25, contrast=0.25,
                       gamma=0.3, blur=0.2, noise=0.2)
        if name == "basic":
            return cls()
        raise ValueError(f"unknown augmentation recipe {name!r}; expected one of {', '.join(RECIPES)}")

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_image, out_mask = self.transform(self._as_image(image), self._as_mask(mask))
        out_image = out_image.as_subclass(torch.Tensor)
        if self.intensity is not None:
            out_image = self.intensity(out_image)
        return out_image.clamp_(0.0, 1.0), out_mask.as_subclass(torch.Tensor)
