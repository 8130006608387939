"""Tiled segmentation of a large image at its own resolution, instead of squashing it to the model's size.

The image is cut into overlapping tiles of the model's size (50% overlap), each tile is segmented, and the
tiles' probabilities are stitched back as a weighted mean with a separable Hann window
``w(i) = sin²(π (i + ½) / T)``: a pixel near a tile's centre counts more than one near its edge, where the
network sees less context, so the seams do not show. At 50% overlap the Hann windows of neighbouring tiles
sum to a constant. The window is strictly positive, so a pixel covered by one tile only still gets that
tile's value. A side shorter than the tile is taken whole (the U-Net accepts any size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np


def tile_starts(length: int, tile: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least 50% overlap."""
    if length <= tile:
        return [0]
    stride = max(tile // 2, 1)
    count = math.ceil((length - tile) / stride) + 1
    return sorted({int(round(x)) for x in np.linspace(0, length - tile, count)})


def hann_window(height: int, width: int) -> np.ndarray:
    """Separable window (height, width), float32, strictly positive, largest at the centre."""

    def one(n: int) -> np.ndarray:
        return (np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2).astype(np.float32)

    return np.outer(one(height), one(width))


def tile_boxes(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    """(top, left, tile height, tile width) of every tile, row by row."""
    th, tw = min(tile, height), min(tile, width)
    for top in tile_starts(height, tile):
        for left in tile_starts(width, tile):
            yield top, left, th, tw


def segment_tiled(
    image: np.ndarray,
    segment: Callable[[np.ndarray], np.ndarray],
    tile: int,
    batch_size: int = 8,
) -> np.ndarray:
    """Lesion probabilities (H, W) of a float32 (H, W) image in 0–1, from ``segment`` on (N,1,th,tw) tiles."""
    height, width = image.shape
    boxes = list(tile_boxes(height, width, tile))
    th, tw = boxes[0][2], boxes[0][3]
    window = hann_window(th, tw)
    total = np.zeros((height, width), dtype=np.float32)
    weight = np.zeros((height, width), dtype=np.float32)
    for first in range(0, len(boxes), max(batch_size, 1)):
        chunk = boxes[first:first + max(batch_size, 1)]
        batch = np.stack([image[t:t + th, left:left + tw] for t, left, _, _ in chunk])[:, None]
        probs = segment(batch.astype(np.float32, copy=False))
        for (top, left, _, _), prob in zip(chunk, probs, strict=True):
            total[top:top + th, left:left + tw] += window * prob[0]
            weight[top:top + th, left:left + tw] += window
    return total / weight
