"""Decoded, resized samples kept so later epochs (and later runs) skip decoding (``--cache``).

Two layers:

* ``memory``: :class:`~dlmi.datasets.loader.ImageDataset`'s own cache — each sample's uint8 image and bool
  mask at the model's size, ``S² · 2`` bytes per sample: BUSI's 702 images take 23 MB at 128 px and
  368 MB at 512 px (184 MB of images, 184 MB of masks) in each training process.
* ``disk``: one ``.npy`` file per sample under ``<cache root>/resized/v2/`` (the root is
  ``$DLMI_CACHE_DIR``, default ``~/.cache/dlmi``: :mod:`dlmi.cache`), keyed by the SHA-256 of the image
  and mask files' bytes, the size, the source and the preprocessing (so an edited file, another size or
  another dlmi/Pillow version misses). Written atomically and sealed with a checksum, so several data
  workers and processes may fill it at once and a corrupt entry is dropped and rebuilt with a warning;
  a cache folder that cannot be written is skipped (with a warning).

``auto`` (the default) keeps samples in memory when every training process on the machine can hold its
copy within a quarter of the machine's memory, and uses the disk cache otherwise. Augmentation runs
after the cache, so it is drawn afresh every epoch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlmi.cache import CorruptEntry, EntryStore, FileDigests, content_key
from dlmi.datasets.base import DatasetSource, Sample, load_sample
from dlmi.datasets.loader import ImageDataset, resize_image, resize_mask
from dlmi.machine import physical_memory

DISK_FORMAT = "v2"  # v2: entries sealed with a checksum (dlmi.cache)
MEMORY_SHARE = 0.25  # of physical memory, for ``auto``


def resize_settings(image_size: int) -> list[str]:
    """The settings that decide a resized sample's pixels (key parts of every resized cache entry)."""
    import PIL

    from dlmi import __version__

    return [f"dlmi={__version__}", f"pillow={PIL.__version__}", f"size={image_size}",
            "preprocess=grey-uint8,bilinear-image,nearest-mask,or-merged-masks"]



def memory_bytes(samples: int, image_size: int) -> int:
    """What the memory cache holds for ``samples`` samples: a uint8 image and a bool mask of S² each."""
    return samples * image_size * image_size * 2


@dataclass(frozen=True)
class CachePlan:
    """Which layers a run uses, and why."""

    memory: bool
    disk: bool
    estimate_bytes: int

    def describe(self) -> dict[str, Any]:
        return {"memory": self.memory, "disk": self.disk,
                "memory_estimate_mb": round(self.estimate_bytes / 1e6, 1)}


def plan_cache(mode: str, samples: int, image_size: int, processes_per_machine: int = 1) -> CachePlan:
    """The layers of ``--cache mode`` for ``samples`` samples at ``image_size`` (per process)."""
    estimate = memory_bytes(samples, image_size)
    if mode == "auto":
        total = physical_memory()
        fits = total is None or estimate * processes_per_machine <= MEMORY_SHARE * total
        return CachePlan(memory=fits, disk=not fits, estimate_bytes=estimate)
    return CachePlan(memory=mode == "memory", disk=mode == "disk", estimate_bytes=estimate)


class ResizedDiskCache:
    """Resized samples on disk, one ``.npy`` per key: uint8 (2, S, S) = image, mask (or (1, S, S) alone).

    Stored through :class:`dlmi.cache.EntryStore`: atomic, sealed, a corrupt entry dropped and rebuilt.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.store = EntryStore("resized", DISK_FORMAT, ".npy", root)
        self._digests = FileDigests()

    @property
    def folder(self) -> Path:
        return self.store.folder

    @property
    def writable(self) -> bool:
        return self.store.writable

    @property
    def hits(self) -> int:
        return self.store.hits

    @property
    def misses(self) -> int:
        return self.store.misses

    def key(self, source: DatasetSource, sample: Sample, image_size: int) -> str | None:
        """The entry's key, or ``None`` for a sample without files (generated data is not cached on disk)."""
        if sample.image_path is None:
            return None
        kind = type(source)
        parts = [
            f"format={DISK_FORMAT}",
            f"source={getattr(source, 'name', '')}:{kind.__module__}.{kind.__qualname__}",
            *resize_settings(image_size),
            f"masks={int(bool(getattr(source, 'has_masks', False)))}",
            f"image={self._digests(sample.image_path)}",
        ]
        parts += [f"mask={self._digests(p)}" for p in sample.mask_paths]
        return content_key(*parts)

    def path(self, key: str) -> Path:
        return self.store.path(key)

    def get(self, key: str, image_size: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        def decode(payload: bytes) -> tuple[np.ndarray, np.ndarray | None]:
            planes = np.load(io.BytesIO(payload), allow_pickle=False)
            if planes.dtype != np.uint8 or planes.ndim != 3 or planes.shape[0] not in (1, 2) \
                    or planes.shape[1:] != (image_size, image_size):
                raise CorruptEntry(f"planes {planes.dtype} {planes.shape}, expected uint8 (1 or 2, "
                                   f"{image_size}, {image_size})")
            return planes[0], (planes[1] > 0 if planes.shape[0] == 2 else None)

        return self.store.read(key, decode)

    def put(self, key: str, image: np.ndarray, mask: np.ndarray | None) -> None:
        if not self.store.writable:
            return
        planes = image[None] if mask is None else np.stack([image, mask.astype(np.uint8)])
        buffer = io.BytesIO()
        np.save(buffer, planes, allow_pickle=False)
        self.store.write(key, buffer.getvalue())


class DiskCachedSource:
    """A dataset source whose ``load`` returns samples already resized, read from the disk cache if there."""

    def __init__(self, source: DatasetSource, image_size: int, cache: ResizedDiskCache) -> None:
        self.source = source
        self.image_size = image_size
        self.cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def samples(self, data_dir: Path | None) -> list[Sample]:
        return self.source.samples(data_dir)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        size = self.image_size
        key = self.cache.key(self.source, sample, size)
        if key is not None:
            hit = self.cache.get(key, size)
            if hit is not None:
                return hit
        image, mask = load_sample(self.source, sample)  # the source's own result, checked before resizing
        image = resize_image(image, size)
        mask = None if mask is None else resize_mask(mask, size)
        if key is not None:
            self.cache.put(key, image, mask)
        return image, mask


def cached_source(source: DatasetSource, image_size: int, plan: CachePlan,
                  root: Path | None = None) -> DatasetSource:
    """``source`` behind the disk cache when the plan uses it."""
    if not plan.disk:
        return source
    return DiskCachedSource(source, image_size, ResizedDiskCache(root))  # type: ignore[return-value]


def prefill(datasets: Sequence[ImageDataset], threads: int) -> None:
    """Decode every sample into the datasets' memory caches now, with ``threads`` threads.

    Done in the main process before data workers start, so the workers (forked) share one copy.
    """
    jobs = [(d, i) for d in datasets if d.cache for i in range(len(d))]
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(lambda job: job[0].load_resized(job[1]), jobs))
