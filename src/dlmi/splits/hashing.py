"""Perceptual hashes that survive re-encoding, rescaling, drawn marks and small crops.

An image is first resized (box filter) so that its short side is 128 px. It then gets two 64-bit hashes —
a DCT hash (pHash: whether each of the 8×8 lowest DCT frequencies of a 32×32 thumbnail is above their
median; the DC bit is always 0) and a gradient hash (dHash: whether each pixel of a 9×8 thumbnail is
brighter than its left neighbour) — for its whole frame and for 783 *probes*: boxes that trim the frame by
up to 12 % of its width and up to 12 % of its height in total, in steps of 2 % on either side (28 trims per
axis, 28² = 784 boxes, the whole frame first). All thumbnails are exact box averages, computed for every
probe at once as two matrix products per hash (a few milliseconds per image).

The distance between two images is the number of differing bits (of 128: pHash + dHash) between one
image's whole frame and the best-matching probe of the other, taking the smaller of the two directions. So
a crop of up to 12 % per axis meets a probe within 1 % of its own frame on each side and scores like a
re-encode (0–6 on planted copies); docs/data.md gives the distributions measured on the shared sets and
the choice of :data:`DEFAULT_THRESHOLD`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_VERSION = "phash8+dhash8-side128-trim12-step2-v1"
MAX_TRIM = 0.12
TRIM_STEP = 0.02
HASH_BITS = 128
DEFAULT_THRESHOLD = 11

_PHASH_SIDE = 32
_LOW_FREQUENCIES = 8
_WORKING_SIDE = 128  # every image is first resized so that its short side is this many pixels


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


def _box_weights(pixels: int, start: float, end: float, cells: int) -> np.ndarray:
    """(cells, pixels) weights that average the span [start, end) (in pixels) into ``cells`` equal cells.

    Partial pixels count by their overlap, as a box filter does, so any fractional span is exact.
    """
    edges = start + (end - start) * np.arange(cells + 1) / cells
    left = np.arange(pixels)[None, :]
    overlap = np.minimum(edges[1:, None], left + 1) - np.maximum(edges[:-1, None], left)
    return np.clip(overlap, 0.0, None) / ((end - start) / cells)


@lru_cache(maxsize=64)
def _axis_operators(pixels: int, cells: int, dct: bool) -> np.ndarray:
    """Stacked (trims × rows, pixels) operators: each trim's box average into ``cells`` cells, followed
    by the 8 lowest DCT rows when ``dct``."""
    project = _dct_rows(cells, _LOW_FREQUENCIES) if dct else None
    blocks = []
    for start, end in axis_trims():
        weights = _box_weights(pixels, start * pixels, end * pixels, cells)
        blocks.append(project @ weights if project is not None else weights)
    return np.concatenate(blocks)


def _product(rows: np.ndarray, work: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``rows @ work @ columns.T`` with einsum: no BLAS threads, whose wake-ups dominate at this size."""
    return np.einsum("ik,lk->il", np.einsum("ij,jk->ik", rows, work), columns)


def image_hashes(image: np.ndarray) -> np.ndarray:
    """The (P, 2) uint64 hashes (pHash, dHash) of a uint8 grey image's probes; row 0 is the whole frame.

    The image is resized (box filter) so that its short side is 128 px; every probe's 32×32 and 9×8
    thumbnails are exact box averages, computed for all probes at once as matrix products.
    """
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey image, got shape {image.shape}")
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    scale = _WORKING_SIDE / min(picture.size)
    size = (max(1, round(picture.size[0] * scale)), max(1, round(picture.size[1] * scale)))
    picture = picture.resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR)
    work = np.asarray(picture, dtype=np.float64)
    height, width = work.shape
    trims = len(axis_trims())
    rows, columns = _axis_operators(height, _PHASH_SIDE, True), _axis_operators(width, _PHASH_SIDE, True)
    low = _product(rows, work, columns)
    low = low.reshape(trims, 8, trims, 8).transpose(0, 2, 1, 3).reshape(trims * trims, 64)
    median = np.median(low[:, 1:], axis=1, keepdims=True)
    phash_bits = low > median
    phash_bits[:, 0] = False
    strip = _product(_axis_operators(height, 8, False), work, _axis_operators(width, 9, False))
    strip = np.round(strip.reshape(trims, 8, trims, 9).transpose(0, 2, 1, 3), 6)
    dhash_bits = (strip[..., 1:] > strip[..., :-1]).reshape(trims * trims, 64)
    return np.stack([_pack(phash_bits), _pack(dhash_bits)], axis=1)


@dataclass(frozen=True)
class HashMatch:
    """Images ``first`` < ``second`` (indices) at ``distance`` bits: ``framed``'s whole frame matched the
    other image's probe ``probe`` (so that box of the other image shows what ``framed`` shows)."""

    first: int
    second: int
    distance: int
    framed: int
    probe: int


def near_pairs(hashes: np.ndarray, threshold: int) -> list[HashMatch]:
    """Every pair of images at most ``threshold`` bits apart; ``hashes`` is (N, P, 2) uint64.

    The distance of a pair is the smaller of "first's frame against second's best probe" and the
    reverse. Runs row by row, so memory stays O(N·P).
    """
    count = len(hashes)
    phash = np.ascontiguousarray(hashes[..., 0])
    dhash = np.ascontiguousarray(hashes[..., 1])
    matches: list[HashMatch] = []

    def best(p_hashes: np.ndarray, p_against: np.ndarray, d_hashes: np.ndarray, d_against: np.ndarray):
        distance = np.bitwise_count(p_hashes ^ p_against)
        distance += np.bitwise_count(d_hashes ^ d_against)
        where = distance.argmin(axis=1)
        return distance[np.arange(len(distance)), where], where

    for i in range(count - 1):
        # i's frame against each later image's probes, and each later image's frame against i's probes
        forward, forward_probe = best(phash[i + 1:], phash[i, 0], dhash[i + 1:], dhash[i, 0])
        backward, backward_probe = best(phash[i + 1:, :1], phash[i][None], dhash[i + 1:, :1], dhash[i][None])
        for offset in np.flatnonzero(np.minimum(forward, backward) <= threshold):
            j = i + 1 + int(offset)
            if forward[offset] <= backward[offset]:
                matches.append(HashMatch(i, j, int(forward[offset]), i, int(forward_probe[offset])))
            else:
                matches.append(HashMatch(i, j, int(backward[offset]), j, int(backward_probe[offset])))
    return matches
