"""The one cache mechanism behind dlmi's caches: where entries live, how keys are made, how entries are
written and read back.

* **Root**: ``$DLMI_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlmi``, else ``~/.cache/dlmi``; each cache has its
  own folder below it (``image-hashes/``, ``resized/``, ``resized-copy/``).
* **Key**: :func:`content_key` — the SHA-256 over the settings that change an entry's content and the
  :func:`~dlmi.digest.file_digest` of every input file (:class:`FileDigests`), so a renamed or copied
  file hits and an edited one, another size or another version misses.
* **Writing**: atomic (:func:`~dlmi.atomic.write_atomic`), with a SHA-256 of the payload sealed at its end,
  so several processes may fill a cache at once and an interrupted write never leaves a half entry.
* **Reading**: an entry whose seal or content does not check out is dropped with a one-line warning
  naming it and rebuilt by the caller: never a traceback, never wrong data. A cache folder that cannot be
  written is skipped (one warning) and the work is done without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dlmi.atomic import write_atomic
from dlmi.digest import file_digest

CACHE_ENV = "DLMI_CACHE_DIR"
SEAL_BYTES = 32  # a SHA-256 of the payload, at the end of every entry file

T = TypeVar("T")


class CorruptEntry(ValueError):
    """Raised by a decoder when an entry's payload is not what its key promises."""


def cache_root() -> Path:
    """The dlmi cache folder (not created here)."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dlmi"


def content_key(*parts: str) -> str:
    """An entry's key: the SHA-256 (hex) over its content-deciding settings and input digests, in order."""
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def warn(message: str) -> None:
    """A one-line cache warning on stderr."""
    print(f"dlmi: warning: {message}", file=sys.stderr)


def warn_corrupt(path: Path, reason: str) -> None:
    warn(f"{path}: corrupt cache entry ({reason}); dropped and rebuilt")


class FileDigests:
    """:func:`~dlmi.digest.file_digest` of files, remembered per (path, size, mtime) within this process."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: str | os.PathLike[str]) -> str:
        stat = os.stat(path)
        memo = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
        digest = self._known.get(memo)
        if digest is None:
            digest = self._known[memo] = file_digest(path)
        return digest


def seal(payload: bytes) -> bytes:
    """``payload`` followed by its SHA-256, as an entry file holds it."""
    return payload + hashlib.sha256(payload).digest()


def unseal(data: bytes) -> bytes:
    """The payload of a sealed entry; :class:`CorruptEntry` when it is short or its checksum differs."""
    payload, stored = data[:-SEAL_BYTES], data[-SEAL_BYTES:]
    if len(data) < SEAL_BYTES or hashlib.sha256(payload).digest() != stored:
        raise CorruptEntry("checksum mismatch: truncated or altered")
    return payload


class EntryStore:
    """One cache's entries, one file each: ``<root>/<name>/<version>/<key[:2]>/<key><suffix>``."""

    def __init__(self, name: str, version: str, suffix: str, root: Path | None = None) -> None:
        self.folder = Path(root if root is not None else cache_root()) / name / version
        self.suffix = suffix
        self.writable = True
        self.readable = True  # False after the first entry that exists but cannot be read (warned once)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{self.suffix}"

    def read(self, key: str, decode: Callable[[bytes], T]) -> T | None:
        """The decoded entry of ``key``, or ``None`` (a miss) when absent or corrupt (dropped, warned)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # not there (the folder may not even be a folder)
            self.misses += 1
            return None
        except OSError as exc:
            if self.readable:
                self.readable = False
                warn(f"{path}: cannot read cache entry ({exc.strerror or exc}); rebuilding it and any other "
                     "such entry")
            self.misses += 1
            return None
        try:
            value = decode(unseal(data))
        except Exception as exc:  # whatever the decoder makes of damaged bytes: drop the entry, never fail
            self.drop(path, str(exc) or type(exc).__name__)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def drop(self, path: Path, reason: str) -> None:
        warn_corrupt(path, " ".join(reason.split()))
        with contextlib.suppress(OSError):  # a read-only cache: the rebuilt value is used all the same
            path.unlink(missing_ok=True)

    def write(self, key: str, payload: bytes) -> None:
        """Store ``payload`` under ``key`` atomically; a folder that cannot be written disables the store."""
        if not self.writable:
            return
        sealed = seal(payload)
        try:
            write_atomic(self.path(key), lambda handle: handle.write(sealed))
        except OSError as exc:
            if not self.writable:
                return  # another thread found it out first, and said so
            self.writable = False
            warn(f"{self.folder}: cache folder cannot be written ({exc.strerror or exc}); "
                 "going on without it")


def replace_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder entry with ``build(folder)`` in a temporary folder beside ``target``, then swap it in.

    An interrupted build leaves ``target`` as it was (or absent), never half made.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build(building)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(building, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target
