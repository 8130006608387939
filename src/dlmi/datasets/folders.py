"""Class-per-folder layouts: the class folders and their image files, with errors that say what to fix."""

from __future__ import annotations

import re
from pathlib import Path

from dlmi.errors import DlmiError, warn
from dlmi.imageio import IMAGE_SUFFIXES, is_image_file

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``x (2).png`` before ``x (10).png``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in _DIGITS.split(name))


def image_files(folder: Path) -> list[Path]:
    """Visible image files directly in ``folder`` — an image suffix in any letter case, or DICOM without one
    (see :func:`dlmi.imageio.is_image_file`) — in natural order."""
    files = [p for p in folder.iterdir() if not p.name.startswith(".") and is_image_file(p) and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def _has_class_folders(folder: Path, classes: tuple[str, ...]) -> bool:
    return all((folder / c).is_dir() for c in classes)


def class_folders(data_dir: Path, dataset: str, classes: tuple[str, ...], layout: str) -> dict[str, Path]:
    """``{class: folder}`` for a folder holding one sub-folder per class, each with at least one image.

    A folder of the wrong layout (a class folder given instead of its parent, the archive's outer folder,
    missing or empty class folders) is a one-line :class:`DlmiError` naming the folder and ``layout``.
    """
    expects = f"dataset {dataset!r} expects {layout}"
    present = {c: data_dir / c for c in classes if (data_dir / c).is_dir()}
    missing = [c for c in classes if c not in present]
    if missing:
        entries = sorted(p for p in data_dir.iterdir() if not p.name.startswith("."))
        if not present:
            if not entries:
                raise DlmiError(f"{data_dir}: folder is empty; {expects}")
            if data_dir.name in classes or any(is_image_file(p) for p in entries):
                raise DlmiError(
                    f"{data_dir}: holds images, not class folders (is it one class folder?); "
                    f"point --data-dir at the folder above it; {expects}"
                )
            inner = [p for p in entries if p.is_dir() and _has_class_folders(p, classes)]
            if inner:
                raise DlmiError(
                    f"{data_dir}: no class folders here but {inner[0]} has them; use that; {expects}"
                )
        by_lower = {p.name.lower(): p.name for p in entries if p.is_dir()}
        hints = [f"{by_lower[c.lower()]!r} should be {c!r}" for c in missing if c.lower() in by_lower]
        hint = f" ({', '.join(hints)}: names are case-sensitive)" if hints else ""
        names = ", ".join(f"{c}/" for c in missing)
        plural = "s" if len(missing) > 1 else ""
        raise DlmiError(f"{data_dir}: missing class folder{plural} {names}{hint}; {expects}")
    for name, folder in present.items():
        if not image_files(folder):
            raise DlmiError(
                f"{folder}: no image files ({'/'.join(IMAGE_SUFFIXES)} or DICOM) in class folder {name!r}; "
                f"{expects}"
            )
    warn_unknown_class_folders(data_dir, dataset, classes)
    return present


def warn_unknown_class_folders(data_dir: Path, dataset: str, classes: tuple[str, ...]) -> list[str]:
    """Warn about sub-folders holding images that are not a class of ``dataset`` (a typo, an extra class):
    their images are left out. Returns their names."""
    folders = [p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    unknown = sorted((p.name for p in folders if p.name not in classes and image_files(p)), key=natural_key)
    if unknown:
        names = ", ".join(f"{n}/" for n in unknown)
        warn(f"{data_dir}: left out {names}: not a class of dataset {dataset!r} "
             f"({', '.join(classes)})")
    return unknown
