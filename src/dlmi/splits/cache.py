"""An on-disk cache of image hashes, keyed by the content of each image file.

Entries live under the dlmi cache root (:mod:`dlmi.cache`: ``$DLMI_CACHE_DIR``, default
``$XDG_CACHE_HOME/dlmi`` or ``~/.cache/dlmi``) in ``image-hashes/<hash version>/<key[:2]>/<key>.npz``. The
key (:func:`hash_key`) is made from the source's name, the hash version and the SHA-256 of the file's bytes
(of the decoded pixels for generated images), so a renamed or copied file hits the cache and an edited one
misses it. Entries are written atomically and sealed with a checksum; a corrupt one is dropped and rebuilt
with a warning, and a cache folder that cannot be written is skipped (with a warning).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlmi.cache import CorruptEntry, EntryStore, content_key
from dlmi.splits.hashing import HASH_VERSION

ENTRY_FORMAT = "e2"  # e2: entries sealed with a checksum (dlmi.cache)


def hash_key(source_name: str, *, file: str | None = None, pixels: str | None = None) -> str:
    """The entry key of an image: by its file's digest, or by its pixels' digest for generated images."""
    content = f"file={file}" if file is not None else f"pixels={pixels}"
    return content_key(f"format={ENTRY_FORMAT}", f"hash={HASH_VERSION}", f"source={source_name}", content)


def pixel_digest(image: np.ndarray) -> str:
    """SHA-256 of a grey image's shape and pixels: equal for pixel-identical images in any file format."""
    digest = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedHashes:
    """What the audit keeps per image: its perceptual hashes, pixel digest and size."""

    hashes: np.ndarray  # (P, 2) uint64
    pixels: str
    height: int
    width: int


class HashCache:
    """Get and put :class:`CachedHashes` by :func:`hash_key` (through :class:`dlmi.cache.EntryStore`)."""

    def __init__(self, root: Path | None = None, *, enabled: bool = True) -> None:
        self.store = EntryStore("image-hashes", f"{HASH_VERSION}-{ENTRY_FORMAT}", ".npz", root)
        self.enabled = enabled

    @property
    def folder(self) -> Path:
        return self.store.folder

    @property
    def hits(self) -> int:
        return self.store.hits

    @property
    def misses(self) -> int:
        return self.store.misses

    def get(self, key: str) -> CachedHashes | None:
        if not self.enabled:
            self.store.misses += 1
            return None
        return self.store.read(key, _decode)

    def put(self, key: str, entry: CachedHashes) -> None:
        if not self.enabled:
            return
        buffer = io.BytesIO()
        np.savez(buffer, hashes=entry.hashes, pixels=np.array(entry.pixels),
                 size=np.array([entry.height, entry.width]))
        self.store.write(key, buffer.getvalue())


def _decode(payload: bytes) -> CachedHashes:
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        hashes = data["hashes"].astype("<u8")
        if hashes.ndim != 2 or hashes.shape[1] != 2:
            raise CorruptEntry(f"hashes of shape {hashes.shape}, expected (P, 2)")
        return CachedHashes(hashes=hashes, pixels=str(data["pixels"]),
                            height=int(data["size"][0]), width=int(data["size"][1]))
