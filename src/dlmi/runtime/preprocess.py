"""Between image files and model tensors: the training preprocessing, and probabilities back to full size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dlmi.datasets.loader import resize_image


def model_input(grey: np.ndarray, size: int) -> np.ndarray:
    """A uint8 (H, W) grey image as the model's (1, S, S) float32 input in 0–1 (bilinear resize, /255)."""
    return (resize_image(grey, size).astype(np.float32) / 255.0)[None]


def as_float(grey: np.ndarray) -> np.ndarray:
    """A uint8 (H, W) image as float32 in 0–1 at its own size (for tiling)."""
    return grey.astype(np.float32) / 255.0


def resize_probabilities(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float (h, w) probability map to (height, width)."""
    if probs.shape == (height, width):
        return probs.astype(np.float32, copy=False)
    image = Image.fromarray(np.ascontiguousarray(probs, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
