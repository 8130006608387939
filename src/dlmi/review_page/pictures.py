"""The pictures the review page links: per image a small thumbnail and a detail strip, written as PNG files
into a folder beside the page (relative links, so the page and its folder open from a shared drive).

* thumbnail: the prediction overlay (the grey image, the predicted lesion tinted red and outlined, as
  ``dlmi predict``'s overlays), at most :data:`THUMB_SIZE` pixels on its longer side;
* detail strip: equal panels side by side, at most :data:`PANEL_SIZE` pixels on the longer side —
  image | truth | prediction | errors with a truth, image | prediction without. The truth panel tints the
  true lesion green; the errors panel shows the dimmed image with false-positive pixels (predicted, not true)
  in orange, false-negative pixels (true, not predicted) in blue and true positives in white
  (:data:`ERROR_COLOURS`; the Okabe–Ito orange and blue stay distinct to colour-blind readers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dlmi.inference.outputs import overlay, write_png

THUMB_SIZE = 96
PANEL_SIZE = 320
SEPARATOR = 4  # dark pixels between two panels
TRUTH_RGB = np.array([0, 170, 90], dtype=np.float32)
TRUTH_TINT = 0.45
ERROR_COLOURS = {"false_positive": (230, 159, 0), "false_negative": (0, 114, 178),
                 "true_positive": (245, 245, 245)}
DIM = 0.55  # the errors panel's image brightness, so the colours stand out


def _fit(height: int, width: int, limit: int) -> tuple[int, int]:
    """(height, width) scaled to at most ``limit`` on the longer side (never enlarged)."""
    scale = min(1.0, limit / float(max(height, width, 1)))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == size:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(image) > 127


def truth_panel(grey: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB: the image with the true lesion tinted green."""
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    rgb[truth] = rgb[truth] * (1 - TRUTH_TINT) + TRUTH_RGB * TRUTH_TINT
    return rgb.clip(0, 255).astype(np.uint8)


def error_panel(grey: np.ndarray, prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB: the dimmed image, false positives orange, false negatives blue, true positives white."""
    rgb = np.repeat((grey.astype(np.float32) * DIM)[..., None], 3, axis=2).astype(np.uint8)
    rgb[prediction & ~truth] = ERROR_COLOURS["false_positive"]
    rgb[truth & ~prediction] = ERROR_COLOURS["false_negative"]
    rgb[prediction & truth] = ERROR_COLOURS["true_positive"]
    return rgb


def thumbnail(grey: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB: the prediction overlay at most :data:`THUMB_SIZE` on its longer side."""
    size = _fit(*grey.shape, THUMB_SIZE)
    return _resize_rgb(overlay(grey, prediction), size)


def detail_strip(grey: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """RGB: image | truth | prediction | errors (or image | prediction without a truth), each panel at most
    :data:`PANEL_SIZE` on its longer side, the masks resized with nearest-neighbour sampling."""
    size = _fit(*grey.shape, PANEL_SIZE)
    small = np.asarray(Image.fromarray(grey).resize((size[1], size[0]), Image.Resampling.BILINEAR)) \
        if grey.shape != size else grey
    predicted = resize_mask(prediction, size)
    panels = [np.repeat(small[..., None], 3, axis=2)]
    if truth is not None:
        true = resize_mask(truth, size)
        panels += [truth_panel(small, true), overlay(small, predicted), error_panel(small, predicted, true)]
    else:
        panels.append(overlay(small, predicted))
    gap = np.full((size[0], SEPARATOR, 3), 24, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for panel in panels:
        parts += [gap, panel] if parts else [panel]
    return np.concatenate(parts, axis=1)


def write_pictures(folder: Path, index: int, grey: np.ndarray, prediction: np.ndarray,
                   truth: np.ndarray | None) -> tuple[str, str]:
    """Write image ``index``'s thumbnail and detail strip under ``folder``; their paths relative to it."""
    thumb, detail = f"thumbs/{index:06d}.png", f"detail/{index:06d}.png"
    write_png(thumbnail(grey, prediction), folder / thumb)
    write_png(detail_strip(grey, prediction, truth), folder / detail)
    return thumb, detail
