"""Writing any dataset source's samples to disk in BUSI layout (``CLASS/NAME.png`` + ``NAME_mask.png``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlmi.atomic import write_text_atomic
from dlmi.datasets.base import DatasetSource, Sample, load_sample
from dlmi.errors import DlmiError
from dlmi.imageio import write_png_atomic

DATASET_MANIFEST = "dlmi-dataset.json"


def write_class_folders(
    source: DatasetSource,
    samples: Sequence[Sample],
    out_dir: Path,
    *,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Write each sample as ``out_dir/KEY`` (PNG) and, with masks, ``…/STEM_mask.png``; counts per class.

    Every file is written atomically. ``out_dir`` must be empty or absent unless ``overwrite``. A JSON
    manifest (``dlmi-dataset.json``: the source, its classes and ``provenance``) goes beside the class
    folders; dataset loaders ignore it.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DlmiError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DlmiError(f"{out_dir}: folder is not empty; choose a new folder or pass --overwrite")
    counts = {name: 0 for name in source.classes}
    for sample in samples:
        image, mask = load_sample(source, sample)
        image_path = (out_dir / sample.key).with_suffix(".png")
        write_png_atomic(image, image_path)
        if source.has_masks:
            mask = np.zeros(image.shape, dtype=bool) if mask is None else mask
            write_png_atomic(mask, image_path.with_name(f"{image_path.stem}_mask.png"))
        counts[source.classes[sample.label]] += 1
    manifest = {"dataset": source.name, "classes": list(source.classes), "normal_class": source.normal_class,
                "counts": counts, **(provenance or {})}
    write_text_atomic(out_dir / DATASET_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return counts
