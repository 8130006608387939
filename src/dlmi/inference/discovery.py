"""Finding the images under a folder: recursive, any supported suffix in any letter case, in a fixed order."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from dlmi.errors import DlmiError
from dlmi.imageio import is_image_file


def find_images(
    folder: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None
) -> list[PurePosixPath]:
    """Image files under ``folder`` as sorted POSIX paths relative to it; ``exclude`` (e.g. the output
    folder, when it lies inside) is skipped with everything under it. Other files are ignored."""
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
            if is_image_file(path) and path.is_file():
                found.append(PurePosixPath(path.relative_to(root).as_posix()))
    return sorted(found)
