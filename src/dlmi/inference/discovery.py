"""Finding the images under a folder: recursive, any supported suffix in any letter case, in a fixed order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from dlmi.errors import DlmiError
from dlmi.imageio import is_image_file


def matches(path: PurePosixPath, patterns: Sequence[str]) -> bool:
    """Whether a relative path or its file name matches one of the glob ``patterns`` (any letter case)."""
    name, full = path.name.lower(), str(path).lower()
    return any(fnmatchcase(name, p.lower()) or fnmatchcase(full, p.lower()) for p in patterns)


def find_images(
    folder: str | os.PathLike[str],
    exclude: str | os.PathLike[str] | None = None,
    patterns: Sequence[str] = (),
) -> list[PurePosixPath]:
    """Image files under ``folder`` as sorted POSIX paths relative to it; ``exclude`` (e.g. the output
    folder, when it lies inside) is skipped with everything under it, and so are files matching one of the
    glob ``patterns`` (e.g. ``*_mask*``). Other files are ignored."""
    root = Path(folder)
    if not root.is_dir():
        raise DlmiError(f"{root}: no such folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[PurePosixPath] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None:
            dirnames[:] = [d for d in dirnames if (here / d).resolve() != skip]
        dirnames.sort()
        for name in filenames:
            path = here / name
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if is_image_file(path) and path.is_file() and not matches(relative, patterns):
                found.append(relative)
    return sorted(found)
