"""Finding the images under a folder: recursive, any supported suffix in any letter case, in a fixed order.

Left out, and said so by the caller: files matching an ``--exclude`` pattern, the current output folder, and
every folder that holds an earlier ``dlmi predict`` output (its ``predictions.json`` or ``progress.jsonl``),
so masks and overlays are never read back as inputs. Symbolic links whose target is missing are listed
apart, to be reported as skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from dlmi.errors import DlmiError
from dlmi.imageio import is_image_file

PREDICTIONS_JSON = "predictions.json"
PROGRESS_LOG = "progress.jsonl"
SHARD_PROGRESS_LOGS = "progress-*-of-*.jsonl"
PREDICTIONS_KIND_KEYS = ("settings", "predictions")


def matches(path: PurePosixPath, patterns: Sequence[str]) -> bool:
    """Whether a relative path or its file name matches one of the glob ``patterns`` (any letter case)."""
    name, full = path.name.lower(), str(path).lower()
    return any(fnmatchcase(name, p.lower()) or fnmatchcase(full, p.lower()) for p in patterns)


def _first_line(path: Path, limit: int = 1 << 20) -> str:
    with path.open("rb") as handle:
        return handle.readline(limit).decode("utf-8", errors="replace")


def is_prediction_output(folder: Path) -> bool:
    """Whether ``folder`` holds the output of a ``dlmi predict`` run (finished or interrupted)."""
    log, table = folder / PROGRESS_LOG, folder / PREDICTIONS_JSON
    try:
        # a shard's run (dlmi predict --num-shards) writes progress-I-of-N.jsonl instead
        for path in [log, *sorted(folder.glob(SHARD_PROGRESS_LOGS))[:1]]:
            if path.is_file():
                header = json.loads(_first_line(path))
                if isinstance(header, dict) and "settings" in header:
                    return True
        if table.is_file():
            data = json.loads(table.read_text(encoding="utf-8"))
            return isinstance(data, dict) and all(k in data for k in PREDICTIONS_KIND_KEYS)
    except (OSError, ValueError):
        return False
    return False


@dataclass
class ImageListing:
    """What :func:`scan_images` found under a folder (paths relative to it, POSIX, sorted)."""

    files: list[PurePosixPath] = field(default_factory=list)
    broken_links: list[PurePosixPath] = field(default_factory=list)
    output_folders: list[PurePosixPath] = field(default_factory=list)
    excluded: int = 0  # image files left out because they match one of the ``patterns``


def scan_images(
    folder: str | os.PathLike[str],
    exclude: str | os.PathLike[str] | None = None,
    patterns: Sequence[str] = (),
) -> ImageListing:
    """Image files under ``folder``; ``exclude`` (the output folder, when it lies inside) and earlier
    prediction outputs are skipped with everything under them, and so are files matching one of the glob
    ``patterns`` (e.g. ``*_mask*``). Other files are ignored."""
    root = Path(folder)
    if not root.is_dir():
        raise DlmiError(f"{root}: no such folder")
    if is_prediction_output(root):
        raise DlmiError(f"{root}: holds the output of an earlier `dlmi predict` ({PREDICTIONS_JSON} / "
                        f"{PROGRESS_LOG}); give the folder of the images themselves")
    skip = Path(exclude).resolve() if exclude is not None else None
    listing = ImageListing()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            sub = here / name
            if skip is not None and sub.resolve() == skip:
                continue
            if is_prediction_output(sub):
                listing.output_folders.append(PurePosixPath(sub.relative_to(root).as_posix()))
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            path = here / name
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if not is_image_file(path):
                continue
            if matches(relative, patterns):
                listing.excluded += 1
                continue
            if path.is_file():
                listing.files.append(relative)
            elif path.is_symlink() and not path.exists():
                listing.broken_links.append(relative)
    listing.files.sort()
    listing.broken_links.sort()
    listing.output_folders.sort()
    return listing


def find_images(
    folder: str | os.PathLike[str],
    exclude: str | os.PathLike[str] | None = None,
    patterns: Sequence[str] = (),
) -> list[PurePosixPath]:
    """The image files of :func:`scan_images` (sorted POSIX paths relative to ``folder``)."""
    return scan_images(folder, exclude, patterns).files
