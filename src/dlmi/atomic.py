"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# The permissions an ordinary ``open(path, "w")`` gives: 0o666 less the umask (read once, at import).
FILE_MODE = 0o666 & ~_read_umask()
TMP_NAME_KEEP = 48  # characters of the file's name in its temporary's name (at most 4 bytes each in UTF-8)


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the start of the file's name only, so that any name the file system allows
    # for the file itself also fits its temporary (``.`` + 48 characters + ``.XXXXXXXX.tmp``).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:TMP_NAME_KEEP]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600 files; outputs should be readable like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
