"""A copy of a dataset resized once to a model's input size, so training does not decode big PNGs every epoch.

Images are resized with the loader's own bilinear resize and masks (already OR-merged) with its nearest-
neighbour resize, then stored as lossless PNGs under the same sample keys. Read back at that size, the
loader's resize is the identity, so a model at the copy's size sees exactly the tensors it would see
reading the originals. Only sources whose image files are PNGs (BUSI) are copied.

The copy is a cache entry of :mod:`dlmi.cache`: it lives under ``<cache root>/resized-copy/`` (or the
``cache_dir`` given), its key is made from the content of every source file and the settings, it is built
in a temporary folder and swapped in whole, and its marker records the SHA-256 of every file it wrote: a
copy whose files do not match is rebuilt with a warning, one made from other content silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dlmi.atomic import write_json_atomic
from dlmi.cache import FileDigests, cache_root, content_key, replace_folder, warn_corrupt
from dlmi.datasets.base import DatasetSource, Sample
from dlmi.digest import file_digest
from dlmi.errors import DlmiError

MARKER = "dlmi-resized-copy.json"
COPY_FORMAT = "v2"  # v2: keyed by content, files' digests in the marker
COPY_FOLDER = "resized-copy"


def default_copy_dir() -> Path:
    """Where resized copies live unless told: ``<cache root>/resized-copy``."""
    return cache_root() / COPY_FOLDER


def copy_key(dataset: str, source: DatasetSource, samples: list[Sample], size: int) -> str:
    """The copy's key: the size, the preprocessing and versions, and every source file's digest."""
    from dlmi.training.data.cache import resize_settings

    digests = FileDigests()
    parts = [f"format={COPY_FORMAT}", f"dataset={dataset}", *resize_settings(size),
             f"masks={int(bool(source.has_masks))}"]
    for sample in samples:
        files = [sample.image_path, *sample.mask_paths]
        parts.append(f"{sample.key}:" + ",".join(digests(p) for p in files if p is not None))
    return content_key(*parts)


def _damage(target: Path, key: str) -> tuple[Path, str] | None:
    """(a file, what is wrong with it) when the copy at ``target`` of ``key`` is damaged, else ``None``.

    Raises ``LookupError`` when the copy is whole but of other content (stale, not damaged).
    """
    marker = target / MARKER
    try:
        recorded: Any = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return marker, f"unreadable marker: {exc}"
    if not isinstance(recorded, dict):
        return marker, "marker is not a JSON object"
    if recorded.get("key") != key:  # another source, size or version (or an older copy format)
        raise LookupError("made from other content")
    files = recorded.get("files")
    if not isinstance(files, dict):
        return marker, "marker without a file list"
    present = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} - {MARKER}
    extra = sorted(present - set(files))
    if extra:
        return target / extra[0], "a file the copy did not write"
    for name, digest in sorted(files.items()):
        path = target / name
        if name not in present:
            return path, "missing"
        try:
            if file_digest(path) != digest:
                return path, "content differs from when it was written"
        except OSError as exc:
            return path, f"unreadable: {exc.strerror or exc}"
    return None


def resized_copy(dataset: str, data_dir: Path, size: int, cache_dir: Path | None = None) -> Path:
    """The folder of ``dataset``'s copy at ``size`` px (made when missing, stale or damaged); same layout and
    keys. ``cache_dir`` defaults to :func:`default_copy_dir`."""
    from dlmi.datasets.base import list_samples, load_sample
    from dlmi.datasets.loader import resize_image, resize_mask
    from dlmi.plugins import get_dataset

    source = get_dataset(dataset)
    samples = list_samples(source, data_dir)
    if any(s.image_path is None or s.image_path.suffix.lower() != ".png" for s in samples):
        raise DlmiError(f"{data_dir}: a resized copy needs PNG images (keys keep their file names)")
    target = (cache_dir if cache_dir is not None else default_copy_dir()) / f"{dataset}-{size}px"
    key = copy_key(dataset, source, samples, size)
    if target.exists():
        try:
            damage = _damage(target, key)
        except LookupError:
            pass  # stale: rebuilt below without a warning
        else:
            if damage is None:
                return target
            warn_corrupt(*damage)

    def build(folder: Path) -> None:
        written: dict[str, str] = {}
        for sample in samples:
            image, mask = load_sample(source, sample)
            path = folder / sample.key
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(resize_image(image, size)).save(path)
            outputs = [path]
            if mask is not None:
                small = resize_mask(mask, size).astype(np.uint8) * 255
                outputs.append(path.with_name(f"{path.stem}_mask.png"))
                Image.fromarray(small).save(outputs[-1])
            written.update({p.relative_to(folder).as_posix(): file_digest(p) for p in outputs})
        record = {"dataset": dataset, "source": str(data_dir.resolve()), "size": size,
                  "images": len(samples), "key": key, "files": written}
        write_json_atomic(folder / MARKER, record)

    try:
        return replace_folder(target, build)
    except OSError as exc:
        raise DlmiError(f"{exc.filename or target}: cannot write the resized copy ({exc.strerror or exc}); "
                        "give another --cache-dir or DLMI_CACHE_DIR") from None
