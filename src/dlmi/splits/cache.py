"""An on-disk cache of image hashes, keyed by the content of each image file.

Entries live in ``$DLMI_CACHE_DIR`` (default ``$XDG_CACHE_HOME/dlmi`` or ``~/.cache/dlmi``) under
``image-hashes/<hash version>/<first two hex digits>/<sha256>.npz``. The key is the SHA-256 of the file's
bytes (of the decoded pixels for generated images), so a renamed or copied file hits the cache and an edited
one misses it. Each entry is written atomically; a cache folder that cannot be written is skipped silently.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlmi.atomic import write_atomic
from dlmi.splits.hashing import HASH_VERSION

CACHE_ENV = "DLMI_CACHE_DIR"


def cache_root() -> Path:
    """The dlmi cache folder (not created here)."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dlmi"


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
    """Get and put :class:`CachedHashes` by content digest."""

    def __init__(self, root: Path | None = None, *, enabled: bool = True) -> None:
        self.folder = (root if root is not None else cache_root()) / "image-hashes" / HASH_VERSION
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npz"

    def get(self, digest: str) -> CachedHashes | None:
        if not self.enabled:
            self.misses += 1
            return None
        try:
            with np.load(self._path(digest), allow_pickle=False) as data:
                entry = CachedHashes(
                    hashes=data["hashes"].astype("<u8"),
                    pixels=str(data["pixels"]),
                    height=int(data["size"][0]),
                    width=int(data["size"][1]),
                )
        except (OSError, KeyError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, digest: str, entry: CachedHashes) -> None:
        if not self.enabled:
            return
        buffer = io.BytesIO()
        np.savez(buffer, hashes=entry.hashes, pixels=np.array(entry.pixels),
                 size=np.array([entry.height, entry.width]))
        try:
            write_atomic(self._path(digest), lambda handle: handle.write(buffer.getvalue()))
        except OSError:
            self.enabled = False  # read-only or full: carry on without a cache
