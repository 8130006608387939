"""The duplicate audit: exact and near-duplicate images, grouped, with cross-label and mask conflicts.

Two images are *duplicates* when their hashes are at most ``threshold`` bits apart (see
:mod:`dlmi.splits.hashing`); a *group* is a connected component of that relation. A group *crosses labels*
when its images are filed under more than one class, and — for sets with masks — has a *mask conflict*
when two of its directly matched images have masks whose IoU, after aligning the matched regions and
resizing both to 64×64, is below :data:`MASK_IOU_LEVEL` (two empty masks agree).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dlmi.datasets.base import DatasetSource, FileDataset, Sample, list_samples, load_sample
from dlmi.digest import file_digest
from dlmi.errors import DlmiError
from dlmi.imageio import image_size, read_mask
from dlmi.machine import machine_cpus
from dlmi.splits.cache import CachedHashes, HashCache, hash_key, pixel_digest
from dlmi.splits.hashing import (
    DEFAULT_THRESHOLD,
    HASH_BITS,
    HASH_VERSION,
    HashMatch,
    image_hashes,
    near_pairs,
    probe_boxes,
)

MASK_IOU_LEVEL = 0.5
_MASK_GRID = 64

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DuplicatePair:
    """Two sample keys found to be duplicates.

    ``kind`` is ``identical-file`` (same bytes), ``identical-pixels`` (same decoded grey pixels) or
    ``near``; ``mask_iou`` is the aligned masks' IoU for sets with masks (else ``None``).
    """

    first: str
    second: str
    distance: int
    kind: str
    mask_iou: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"a": self.first, "b": self.second, "distance": self.distance,
                                "kind": self.kind}
        if self.mask_iou is not None:
            data["mask_iou"] = round(self.mask_iou, 4)
        return data


@dataclass
class HashedSamples:
    """The samples of a dataset with their hashes and digests, in the samples' order."""

    samples: list[Sample]
    hashes: np.ndarray  # (N, P, 2) uint64
    files: list[str | None]  # content digest of the image file (None for generated images)
    pixels: list[str]
    cache_hits: int = 0

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]


@dataclass
class AuditResult:
    """What :func:`audit_samples` found."""

    dataset: str
    data_dir: str | None
    threshold: int
    keys: list[str]
    labels: dict[str, str]
    has_masks: bool
    pairs: list[DuplicatePair]
    groups: list[list[str]]
    cross_label: list[list[str]]
    mask_conflicts: list[list[str]]
    seconds: float = 0.0
    cache_hits: int = 0
    matches: list[HashMatch] = field(default_factory=list, repr=False)

    def counts(self) -> dict[str, int]:
        return {
            "images": len(self.keys),
            "groups": len(self.groups),
            "images_in_groups": sum(len(g) for g in self.groups),
            "pairs": len(self.pairs),
            "identical_pairs": sum(p.kind != "near" for p in self.pairs),
            "identical_file_pairs": sum(p.kind == "identical-file" for p in self.pairs),
            "cross_label_groups": len(self.cross_label),
            "mask_conflict_groups": len(self.mask_conflicts),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "threshold": self.threshold,
            "hash": HASH_VERSION,
            "hash_bits": HASH_BITS,
            "mask_iou_level": MASK_IOU_LEVEL if self.has_masks else None,
            "counts": self.counts(),
            "groups": self.groups,
            "cross_label": self.cross_label,
            "mask_conflicts": self.mask_conflicts,
            "pairs": [p.to_json() for p in self.pairs],
            "seconds": round(self.seconds, 2),
            "cache_hits": self.cache_hits,
        }


def check_threshold(threshold: int | None) -> int:
    """The threshold to use (the default for ``None``); a one-line error outside 0..128."""
    if threshold is None:
        return DEFAULT_THRESHOLD
    if not 0 <= int(threshold) <= HASH_BITS:
        raise DlmiError(f"--threshold {threshold}: must be between 0 and {HASH_BITS} bits")
    return int(threshold)


def _hash_one(
    source: DatasetSource, sample: Sample, cache: HashCache
) -> tuple[str | None, CachedHashes, bool]:
    """(file digest or None, hashes, whether they came from the cache) of one sample."""
    digest = None
    if sample.image_path is not None:
        try:
            digest = file_digest(Path(sample.image_path))
        except OSError as exc:
            raise DlmiError(f"{sample.image_path}: cannot read ({exc.strerror or exc})") from None
        entry = cache.get(hash_key(source.name, file=digest))
        if entry is not None:
            return digest, entry, True
    image, _ = load_sample(source, sample)
    pixels = pixel_digest(image)
    cache_key = hash_key(source.name, file=digest) if digest is not None else hash_key(source.name,
                                                                                        pixels=pixels)
    if digest is None:
        entry = cache.get(cache_key)
        if entry is not None:
            return None, entry, True
    entry = CachedHashes(image_hashes(image), pixels, int(image.shape[0]), int(image.shape[1]))
    cache.put(cache_key, entry)
    return digest, entry, False


def hash_samples(
    source: DatasetSource,
    samples: Sequence[Sample],
    *,
    cache: HashCache | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> HashedSamples:
    """Hash every sample (through the cache); image decoding and resizing run on a few threads."""
    cache = cache if cache is not None else HashCache()
    samples = list(samples)
    workers = workers or min(4, machine_cpus())
    results: list[tuple[str | None, CachedHashes, bool]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, result in enumerate(pool.map(lambda s: _hash_one(source, s, cache), samples), start=1):
            results.append(result)
            if progress is not None:
                progress(done, len(samples))
    if not results:
        return HashedSamples([], np.zeros((0, len(probe_boxes()), 2), dtype="<u8"), [], [])
    return HashedSamples(
        samples=samples,
        hashes=np.stack([entry.hashes for _, entry, _ in results]),
        files=[digest for digest, _, _ in results],
        pixels=[entry.pixels for _, entry, _ in results],
        cache_hits=sum(hit for _, _, hit in results),
    )


def connected_groups(count: int, edges: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components with two or more members, each sorted, ordered by their first member."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for node in range(count):
        members.setdefault(root(node), []).append(node)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def _pair_kind(hashed: HashedSamples, i: int, j: int) -> str:
    if hashed.files[i] is not None and hashed.files[i] == hashed.files[j]:
        return "identical-file"
    if hashed.pixels[i] == hashed.pixels[j]:
        return "identical-pixels"
    return "near"


def _mask_on_grid(mask: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The part of ``mask`` inside ``box`` (fractions), resized to the 64×64 comparison grid."""
    height, width = mask.shape
    x0, y0, x1, y1 = box
    picture = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = picture.resize((_MASK_GRID, _MASK_GRID), Image.Resampling.BOX,
                             box=(x0 * width, y0 * height, x1 * width, y1 * height))
    return np.asarray(resized) >= 128


def mask_iou(framed_mask: np.ndarray, other_mask: np.ndarray, probe: int) -> float:
    """IoU of ``framed_mask`` and ``other_mask``'s probe box on a 64×64 grid (1.0 when both are empty)."""
    a = _mask_on_grid(framed_mask, (0.0, 0.0, 1.0, 1.0))
    b = _mask_on_grid(other_mask, probe_boxes()[probe])
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _load_mask(source: DatasetSource, sample: Sample) -> np.ndarray:
    """A sample's mask; for a plain file-backed source, read without decoding the image."""
    if type(source).load is FileDataset.load and sample.image_path is not None:
        if sample.mask_paths:
            return read_mask(sample.mask_paths)
        width, height = image_size(sample.image_path)
        return np.zeros((height, width), dtype=bool)
    _, mask = load_sample(source, sample)
    return mask if mask is not None else np.zeros((1, 1), dtype=bool)


def audit_hashed(
    source: DatasetSource,
    hashed: HashedSamples,
    *,
    threshold: int | None = None,
    data_dir: Path | None = None,
    masks: bool = True,
) -> AuditResult:
    """Pairs, groups, cross-label groups and mask conflicts of already hashed samples."""
    started = time.perf_counter()
    threshold = check_threshold(threshold)
    samples = hashed.samples
    keys = hashed.keys
    classes = tuple(source.classes)
    labels = {s.key: classes[s.label] if 0 <= s.label < len(classes) else str(s.label) for s in samples}
    matches = near_pairs(hashed.hashes, threshold)
    check_masks = masks and bool(getattr(source, "has_masks", False))
    loaded: dict[int, np.ndarray] = {}

    def mask_of(index: int) -> np.ndarray:
        if index not in loaded:
            loaded[index] = _load_mask(source, samples[index])
        return loaded[index]

    pairs: list[DuplicatePair] = []
    disagreeing: list[tuple[int, int]] = []
    for match in matches:
        iou = None
        if check_masks:
            other = match.second if match.framed == match.first else match.first
            iou = mask_iou(mask_of(match.framed), mask_of(other), match.probe)
            if iou < MASK_IOU_LEVEL:
                disagreeing.append((match.first, match.second))
        pairs.append(DuplicatePair(keys[match.first], keys[match.second], match.distance,
                                   _pair_kind(hashed, match.first, match.second), iou))
    components = connected_groups(len(keys), [(m.first, m.second) for m in matches])
    groups = [[keys[i] for i in component] for component in components]
    cross_label = [group for group in groups if len({labels[k] for k in group}) > 1]
    conflicted = {min(a, b) for a, b in disagreeing}
    component_of = {i: n for n, component in enumerate(components) for i in component}
    conflict_groups = sorted({component_of[i] for i in conflicted})
    return AuditResult(
        dataset=source.name,
        data_dir=str(data_dir) if data_dir is not None else None,
        threshold=threshold,
        keys=keys,
        labels=labels,
        has_masks=check_masks,
        pairs=pairs,
        groups=groups,
        cross_label=cross_label,
        mask_conflicts=[groups[n] for n in conflict_groups],
        seconds=time.perf_counter() - started,
        cache_hits=hashed.cache_hits,
        matches=matches,
    )


def audit_samples(
    source: DatasetSource,
    samples: Sequence[Sample],
    *,
    threshold: int | None = None,
    data_dir: Path | None = None,
    cache: HashCache | None = None,
    progress: Progress | None = None,
    masks: bool = True,
) -> AuditResult:
    """Audit a list of samples of ``source`` (see the module docstring)."""
    started = time.perf_counter()
    threshold = check_threshold(threshold)
    hashed = hash_samples(source, samples, cache=cache, progress=progress)
    result = audit_hashed(source, hashed, threshold=threshold, data_dir=data_dir, masks=masks)
    result.seconds = time.perf_counter() - started
    return result


def audit_dataset(
    dataset_name: str,
    data_dir: Path | None,
    *,
    threshold: int | None = None,
    cache: HashCache | None = None,
    progress: Progress | None = None,
) -> AuditResult:
    """Audit every sample of the registered dataset ``dataset_name`` in ``data_dir``."""
    from dlmi.plugins import get_dataset

    threshold = check_threshold(threshold)
    source = get_dataset(dataset_name)
    folder = Path(data_dir) if data_dir is not None else None
    samples = list_samples(source, folder)
    return audit_samples(source, samples, threshold=threshold, data_dir=folder, cache=cache,
                         progress=progress)
