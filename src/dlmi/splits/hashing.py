"""Perceptual hashes that survive re-encoding, rescaling, drawn marks and small crops.

Each image gets two 64-bit hashes — a DCT hash (pHash: the signs of the 8×8 lowest DCT frequencies of a
32×32 thumbnail against their median) and a gradient hash (dHash: whether each of 8×8 thumbnail pixels is
darker than its right neighbour) — of its whole frame and of 224 *probes*: sub-rectangles that trim up to
12 % of the width and up to 12 % of the height, in steps of 3 % on either side (15 trims per axis, 15² = 225
boxes, the whole frame first).

The distance between two images is the number of differing bits (of 128: pHash + dHash) between one
image's whole frame and the best-matching probe of the other, taking the smaller of the two directions.
An exact copy, a re-encode or a rescale scores about 0–6; a crop that trims up to 12 % per axis finds a
probe within 1.5 % of its frame and scores about the same; unrelated images score 20 or more (see
docs/data.md for the measured distributions and the choice of :data:`DEFAULT_THRESHOLD`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_VERSION = "phash8+dhash8-trim12-step3-v1"
MAX_TRIM = 0.12
TRIM_STEP = 0.03
HASH_BITS = 128
DEFAULT_THRESHOLD = 11

_PHASH_SIDE = 32
_LOW_FREQUENCIES = 8
_REDUCE_TO = 128  # shrink an image (integer box filter) until its short side is near this, before probing


def axis_trims(max_trim: float = MAX_TRIM, step: float = TRIM_STEP) -> list[tuple[float, float]]:
    """(start, end) fractions along one axis, trimming at most ``max_trim`` in total; untrimmed first."""
    steps = int(round(max_trim / step))
    return [(a * step, 1.0 - b * step) for a in range(steps + 1) for b in range(steps + 1 - a)]


@lru_cache(maxsize=4)
def probe_boxes(
    max_trim: float = MAX_TRIM, step: float = TRIM_STEP
) -> tuple[tuple[float, float, float, float], ...]:
    """Probe boxes ``(x0, y0, x1, y1)`` as fractions of the frame; box 0 is the whole frame."""
    trims = axis_trims(max_trim, step)
    return tuple((x0, y0, x1, y1) for (y0, y1) in trims for (x0, x1) in trims)


@lru_cache(maxsize=4)
def _dct_rows(side: int, count: int) -> np.ndarray:
    """The first ``count`` rows of the orthonormal DCT-II matrix of size ``side``."""
    k = np.arange(count)[:, None]
    i = np.arange(side)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * side)) * np.sqrt(2.0 / side)
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float64)


def _pack(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans → (N,) uint64."""
    return np.packbits(bits.astype(bool), axis=1).view("<u8").reshape(len(bits))


def _phash(thumbs: np.ndarray) -> np.ndarray:
    """(N, 32, 32) thumbnails → (N,) uint64 DCT hashes; the DC bit is always 0."""
    rows = _dct_rows(_PHASH_SIDE, _LOW_FREQUENCIES)
    coefficients = np.einsum("ij,njk,lk->nil", rows, thumbs, rows).reshape(len(thumbs), -1)
    median = np.median(coefficients[:, 1:], axis=1, keepdims=True)
    bits = coefficients > median
    bits[:, 0] = False
    return _pack(bits)


def _dhash(thumbs: np.ndarray) -> np.ndarray:
    """(N, 8, 9) thumbnails → (N,) uint64 gradient hashes."""
    return _pack((thumbs[:, :, 1:] > thumbs[:, :, :-1]).reshape(len(thumbs), -1))


def image_hashes(image: np.ndarray) -> np.ndarray:
    """The (225, 2) uint64 hashes (pHash, dHash) of a uint8 grey image's probes; row 0 is the whole frame."""
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey image, got shape {image.shape}")
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    import os
    side = int(os.environ.get("DLMI_WORK", "128"))
    if side > 0:
        scale = side / min(picture.size)
        size = (max(1, round(picture.size[0] * scale)), max(1, round(picture.size[1] * scale)))
        picture = picture.resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR)
    if os.environ.get("DLMI_MEDIAN"):
        from PIL import ImageFilter
        picture = picture.filter(ImageFilter.MedianFilter(int(os.environ["DLMI_MEDIAN"])))
    width, height = picture.size
    boxes = [(x0 * width, y0 * height, x1 * width, y1 * height) for (x0, y0, x1, y1) in probe_boxes()]
    box_filter = Image.Resampling.BOX
    square = np.stack(
        [np.asarray(picture.resize((_PHASH_SIDE, _PHASH_SIDE), box_filter, box=b), dtype=np.float64)
         for b in boxes]
    )
    strip = np.stack(
        [np.asarray(picture.resize((9, 8), box_filter, box=b), dtype=np.float64) for b in boxes]
    )
    return np.stack([_phash(square), _dhash(strip)], axis=1)


@dataclass(frozen=True)
class HashMatch:
    """Images ``first`` < ``second`` (indices) at ``distance`` bits: ``framed``'s whole frame matched the
    other image's probe ``probe`` (so that box of the other image shows what ``framed`` shows)."""

    first: int
    second: int
    distance: int
    framed: int
    probe: int


def _distances(frames: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """(F, 2) frames against (M, P, 2) probes → (F, M, P) bit distances (uint8: at most 128)."""
    counts = np.bitwise_count(frames[:, None, None, :] ^ probes[None])
    return counts[..., 0] + counts[..., 1]


def near_pairs(hashes: np.ndarray, threshold: int) -> list[HashMatch]:
    """Every pair of images at most ``threshold`` bits apart; ``hashes`` is (N, P, 2) uint64.

    The distance of a pair is the smaller of "first's frame against second's best probe" and the
    reverse. Runs row by row, so memory stays O(N·P).
    """
    count = len(hashes)
    frames = hashes[:, 0]
    matches: list[HashMatch] = []
    for i in range(count - 1):
        others = hashes[i + 1:]
        forward = _distances(frames[i:i + 1], others)[0]  # i's frame vs each later image's probes
        backward = _distances(frames[i + 1:], hashes[i:i + 1])[:, 0]  # later frames vs i's probes
        forward_probe = forward.argmin(axis=1)
        backward_probe = backward.argmin(axis=1)
        forward_best = forward[np.arange(len(others)), forward_probe]
        backward_best = backward[np.arange(len(others)), backward_probe]
        for offset in np.flatnonzero(np.minimum(forward_best, backward_best) <= threshold):
            j = i + 1 + int(offset)
            if forward_best[offset] <= backward_best[offset]:
                matches.append(HashMatch(i, j, int(forward_best[offset]), i, int(forward_probe[offset])))
            else:
                matches.append(HashMatch(i, j, int(backward_best[offset]), j, int(backward_probe[offset])))
    return matches
