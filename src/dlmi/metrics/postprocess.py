"""Post-processing of predicted masks by connected components, and its selection on the val side.

Definitions:

* a connected component is a maximal set of lesion pixels linked through their 8 neighbours (pixels that
  touch at a corner belong together; :data:`CONNECTIVITY`);
* ``largest-component`` keeps the component with the most pixels (on a tie, the first in raster order) and
  clears the rest; an empty mask stays empty;
* ``min-size-<N>px`` clears every component of fewer than N pixels;
* ``none`` leaves the mask as it is.

The option is chosen on the val side — the candidate with the highest val score wins, ties going to the
earlier (simpler) candidate, ``none`` first — and the evaluated side is then reported with and without it.
Labelling is this module's own run-length union-find (numpy plus a short loop over runs): no SciPy needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONNECTIVITY = 8
# Candidate minimum component sizes, as fractions of the image's pixel count (0.1 %, 0.25 %, 0.5 %, 1 %).
MIN_SIZE_FRACTIONS = (0.001, 0.0025, 0.005, 0.01)


@dataclass(frozen=True)
class Components:
    """The connected components of one mask, stored as row runs.

    ``rows``, ``starts``, ``ends`` (exclusive) describe each horizontal run of lesion pixels;
    ``run_component`` is the 0-based component of each run; ``sizes`` the pixel count of each component.
    """

    shape: tuple[int, int]
    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    run_component: np.ndarray
    sizes: np.ndarray

    @property
    def count(self) -> int:
        return int(self.sizes.size)

    def mask(self, keep: np.ndarray) -> np.ndarray:
        """Bool (H, W) mask of the components where ``keep`` (bool, one per component) is true."""
        height, width = self.shape
        chosen = np.asarray(keep, dtype=bool)[self.run_component] if self.count else np.zeros(0, dtype=bool)
        edges = np.zeros((height, width + 1), dtype=np.int32)
        np.add.at(edges, (self.rows[chosen], self.starts[chosen]), 1)
        np.add.at(edges, (self.rows[chosen], self.ends[chosen]), -1)
        return np.cumsum(edges, axis=1)[:, :width] > 0

    def labels(self) -> np.ndarray:
        """Int32 (H, W) label image: 0 background, 1..count the components (numbered in raster order)."""
        out = np.zeros(self.shape, dtype=np.int32)
        for row, start, end, comp in zip(self.rows, self.starts, self.ends, self.run_component, strict=True):
            out[row, start:end] = comp + 1
        return out


def _find(parent: list[int], node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def find_components(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> Components:
    """Connected components of a bool (H, W) mask (``connectivity`` 8 or 4)."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask of shape {mask.shape}: expected (H, W)")
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    end_rows, ends = np.nonzero(step == -1)
    assert np.array_equal(rows, end_rows)
    n_runs = rows.size
    if n_runs == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Components((height, width), empty, empty, empty, empty, empty)

    # Runs of row r+1 that touch run a of row r: with 8-connectivity, start_b <= end_a and end_b >= start_a
    # (ends exclusive); with 4-connectivity both strictly. Keys order runs by (row, column).
    stride = width + 2
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    below = (rows + 1) * stride
    touch_corner = connectivity == 8
    first = np.searchsorted(end_keys, below + starts, side="left" if touch_corner else "right")
    stop = np.searchsorted(start_keys, below + ends, side="right" if touch_corner else "left")
    counts = np.maximum(stop - first, 0)
    upper = np.repeat(np.arange(n_runs), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    lower = first[upper] + offsets

    parent = list(range(n_runs))
    for a, b in zip(upper.tolist(), lower.tolist(), strict=True):
        root_a, root_b = _find(parent, a), _find(parent, b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    roots = np.array([_find(parent, i) for i in range(n_runs)], dtype=np.int64)
    _, run_component = np.unique(roots, return_inverse=True)  # roots ascend in raster order of first run
    sizes = np.bincount(run_component, weights=ends - starts).astype(np.int64)
    return Components((height, width), rows, starts, ends, run_component.astype(np.int64), sizes)


def keep_largest_component(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> np.ndarray:
    """Only the largest connected component of ``mask`` (the first in raster order on a tie)."""
    return PostProcess("largest").apply_one(find_components(mask, connectivity))


def remove_small_components(mask: np.ndarray, min_pixels: int,
                            connectivity: int = CONNECTIVITY) -> np.ndarray:
    """``mask`` without its connected components of fewer than ``min_pixels`` pixels."""
    return PostProcess("min-size", min_pixels).apply_one(find_components(mask, connectivity))


@dataclass(frozen=True)
class PostProcess:
    """One post-processing option: ``none``, ``largest`` or ``min-size`` (with ``min_pixels``)."""

    kind: str = "none"
    min_pixels: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "largest", "min-size"):
            raise ValueError(f"unknown post-processing {self.kind!r}")
        if self.kind == "min-size" and self.min_pixels < 1:
            raise ValueError("min-size post-processing needs min_pixels >= 1")

    @property
    def name(self) -> str:
        names = {"none": "none", "largest": "largest-component"}
        return names.get(self.kind, f"min-size-{self.min_pixels}px")

    def keep(self, sizes: np.ndarray) -> np.ndarray:
        """Which components (given their sizes) survive."""
        if self.kind == "none":
            return np.ones(sizes.size, dtype=bool)
        if self.kind == "largest":
            keep = np.zeros(sizes.size, dtype=bool)
            if sizes.size:
                keep[int(np.argmax(sizes))] = True
            return keep
        return sizes >= self.min_pixels

    def apply_one(self, components: Components) -> np.ndarray:
        return components.mask(self.keep(components.sizes))

    def apply(self, masks: np.ndarray) -> np.ndarray:
        """Apply to a bool (N, H, W) or (H, W) array of masks."""
        masks = np.asarray(masks, dtype=bool)
        if self.kind == "none":
            return masks.copy()
        if masks.ndim == 2:
            return self.apply_one(find_components(masks))
        return np.stack([self.apply_one(find_components(m)) for m in masks]) if len(masks) else masks.copy()


def candidate_postprocesses(image_size: int | tuple[int, int]) -> list[PostProcess]:
    """The options tried on the val side: none, largest component, and min-size at fractions of the image.

    Min-size floors are :data:`MIN_SIZE_FRACTIONS` of the image's pixel count, rounded, 2 pixels at least.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    # A floor of 1 pixel removes nothing, so tiny images get fewer candidates.
    sizes = sorted({n for f in MIN_SIZE_FRACTIONS if (n := round(f * height * width)) >= 2})
    return [PostProcess("none"), PostProcess("largest"), *(PostProcess("min-size", n) for n in sizes)]


def apply_candidates(masks: np.ndarray, candidates: Sequence[PostProcess]) -> list[np.ndarray]:
    """Each candidate applied to a bool (N, H, W) batch, labelling each mask's components once."""
    masks = np.asarray(masks, dtype=bool)
    components = [find_components(m) for m in masks] if any(c.kind != "none" for c in candidates) else []
    out = []
    for candidate in candidates:
        if candidate.kind == "none":
            out.append(masks.copy())
        else:
            out.append(np.stack([candidate.apply_one(c) for c in components]) if components
                       else masks.copy())
    return out


def select_best(candidates: Sequence[PostProcess], scores: Sequence[float]) -> PostProcess:
    """The candidate with the highest score; a tie goes to the earlier (simpler) one."""
    if not candidates or len(candidates) != len(scores):
        raise ValueError("need one score per candidate")
    best = 0
    for index, score in enumerate(scores):
        if score > scores[best]:
            best = index
    return candidates[best]
