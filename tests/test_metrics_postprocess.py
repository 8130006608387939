"""Connected-component post-processing on drawn masks, and its selection rule."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from dlmi.metrics.postprocess import (
    PostProcess,
    apply_candidates,
    candidate_postprocesses,
    find_components,
    keep_largest_component,
    remove_small_components,
    select_best,
)


def two_blobs() -> np.ndarray:
    """A 32x32 mask: a 10x12 rectangle (120 px) and a 3x3 square (9 px)."""
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:14, 5:17] = True
    mask[22:25, 25:28] = True
    return mask


def test_keep_largest_component_drops_the_small_blob():
    mask = two_blobs()
    kept = keep_largest_component(mask)
    assert kept.sum() == 120
    assert kept[4:14, 5:17].all()
    assert not kept[22:25, 25:28].any()


def test_remove_small_components_by_size():
    mask = two_blobs()
    assert np.array_equal(remove_small_components(mask, 9), mask)     # 9 px survives a 9 px floor
    assert remove_small_components(mask, 10).sum() == 120
    assert not remove_small_components(mask, 121).any()


def test_diagonal_neighbours_are_one_component_with_8_connectivity():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    assert find_components(mask).count == 1
    assert find_components(mask, connectivity=4).count == 3


def test_a_u_shape_is_one_component_whose_arms_join_below():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:6, 1] = True
    mask[1:6, 5] = True
    mask[6, 1:6] = True
    components = find_components(mask)
    assert components.count == 1
    assert components.sizes.tolist() == [15]


def _reference_count(mask: np.ndarray) -> int:
    """Breadth-first flood fill with 8 neighbours (the slow, obvious way)."""
    seen = np.zeros_like(mask)
    count = 0
    height, width = mask.shape
    for y in range(height):
        for x in range(width):
            if mask[y, x] and not seen[y, x]:
                count += 1
                queue = deque([(y, x)])
                seen[y, x] = True
                while queue:
                    cy, cx = queue.popleft()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                queue.append((ny, nx))
    return count


def test_component_labelling_agrees_with_a_flood_fill_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(30):
        mask = rng.random((17, 23)) < rng.uniform(0.1, 0.6)
        components = find_components(mask)
        assert components.count == _reference_count(mask)
        assert components.sizes.sum() == mask.sum()
        assert np.array_equal(components.mask(np.ones(components.count, dtype=bool)), mask)
        assert np.array_equal(components.labels() > 0, mask)


def test_empty_masks_stay_empty():
    empty = np.zeros((6, 6), dtype=bool)
    assert not keep_largest_component(empty).any()
    assert not remove_small_components(empty, 3).any()
    assert find_components(empty).count == 0


def test_candidates_scale_with_image_size_and_apply_to_batches():
    names = [c.name for c in candidate_postprocesses(64)]
    assert names[:2] == ["none", "largest-component"]
    assert "min-size-41px" in names  # 1 % of 64*64 = 40.96
    assert [c.name for c in candidate_postprocesses(32)] == [
        "none", "largest-component", "min-size-3px", "min-size-5px", "min-size-10px"]  # 1 px would be a no-op
    batch = np.stack([two_blobs(), np.zeros((32, 32), bool)])
    outs = apply_candidates(batch, [PostProcess("none"), PostProcess("largest"), PostProcess("min-size", 10)])
    assert outs[0].sum() == 129 and outs[1].sum() == 120 and outs[2].sum() == 120
    assert not outs[1][1].any()


def test_selection_takes_the_best_score_and_the_simpler_option_on_a_tie():
    candidates = [PostProcess("none"), PostProcess("largest"), PostProcess("min-size", 5)]
    assert select_best(candidates, [0.5, 0.7, 0.6]).name == "largest-component"
    assert select_best(candidates, [0.7, 0.7, 0.7]).name == "none"
    with pytest.raises(ValueError):
        PostProcess("min-size", 0)
