"""The shared loader: any dataset source's samples as resized 0–1 tensors.

This module imports no torch at import time: the resize functions are used by ``dlmi evaluate masks`` and
``dlmi predict``, which must stay light, and :class:`ImageDataset` imports torch only when it makes tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dlmi.datasets.base import DatasetSource, Sample, load_sample

if TYPE_CHECKING:
    import torch


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W) image to (size, size)."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool (H, W) mask to (size, size), or to a (height, width) shape."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if mask.shape == shape:
        return mask
    as_u8 = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(as_u8.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


class ImageDataset:
    """Samples of a source as ``{"image": (1,S,S) float 0–1, "label": long, "mask": (1,S,S) float, "index"}``.

    A map-style dataset for ``torch.utils.data.DataLoader`` (``__len__`` and ``__getitem__``; it needs no
    base class), so that building one and :meth:`load_resized` work without importing torch.

    ``transform(image, mask)`` (tensors) runs after resizing, for joint augmentation. With ``cache=True``
    each sample is decoded and resized once and kept as uint8/bool arrays (about S² · 2 bytes per sample,
    e.g. 23 MB for BUSI's 702 images at 128 px), so later epochs skip decoding; every DataLoader worker
    process keeps its own copy.
    """

    def __init__(
        self,
        source: DatasetSource,
        samples: Sequence[Sample],
        image_size: int,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        cache: bool = False,
    ) -> None:
        self.source = source
        self.samples = list(samples)
        self.image_size = image_size
        self.transform = transform
        self.cache = cache
        self._cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 image and bool mask at the model's size (an all-false mask when the source has none)."""
        if index in self._cached:
            return self._cached[index]
        image, mask = load_sample(self.source, self.samples[index])
        image = resize_image(image, self.image_size)
        if mask is None:
            mask = np.zeros((self.image_size, self.image_size), dtype=bool)
        else:
            mask = resize_mask(mask, self.image_size)
        if self.cache:
            image.setflags(write=False)
            mask.setflags(write=False)
            self._cached[index] = (image, mask)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        image, mask = self.load_resized(index)
        image_t = torch.from_numpy(image.astype(np.float32) / 255.0)[None]
        mask_t = torch.from_numpy(mask.astype(np.float32))[None]
        if self.transform is not None:
            image_t, mask_t = self.transform(image_t, mask_t)
        return {
            "image": image_t,
            "mask": mask_t,
            "label": torch.tensor(self.samples[index].label, dtype=torch.long),
            "index": index,
        }


class EvalImages(ImageDataset):
    """Each sample as training's loader reads and resizes it (:class:`ImageDataset`, no augmentation), with
    the mask as bool (S, S) for scoring: ``{"image": (1,S,S) float 0–1, "mask", "label", "index"}``."""

    def __init__(self, source: DatasetSource, samples: Sequence[Sample], size: int) -> None:
        super().__init__(source, samples, int(size))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item["mask"] = item["mask"][0].bool()
        return item
