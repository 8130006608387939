"""A copy of a dataset resized once to a model's input size, so training does not decode big PNGs every epoch.

Images are resized with the loader's own bilinear resize and masks (already OR-merged) with its nearest-
neighbour resize, then stored as lossless PNGs under the same sample keys. Read back at that size, the
loader's resize is the identity, so a model at the copy's size sees exactly the tensors it would see
reading the originals. Only sources whose image files are PNGs (BUSI) are copied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dlmi.atomic import write_json_atomic
from dlmi.errors import DlmiError

MARKER = "dlmi-resized-copy.json"


def resized_copy(dataset: str, data_dir: Path, size: int, cache_dir: Path) -> Path:
    """The folder of ``dataset``'s copy at ``size`` px (made when missing or stale); same layout and keys."""
    from dlmi.datasets.base import load_sample
    from dlmi.datasets.loader import resize_image, resize_mask
    from dlmi.plugins import get_dataset

    source = get_dataset(dataset)
    samples = source.samples(data_dir)
    target = cache_dir / f"{dataset}-{size}px"
    expected = {"dataset": dataset, "source": str(data_dir.resolve()), "size": size, "images": len(samples)}
    marker = target / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == expected:
        return target
    if any(s.image_path is None or s.image_path.suffix.lower() != ".png" for s in samples):
        raise DlmiError(f"{data_dir}: a resized copy needs PNG images (keys keep their file names)")
    if target.exists():
        shutil.rmtree(target)
    for sample in samples:
        image, mask = load_sample(source, sample)
        path = target / sample.key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(resize_image(image, size)).save(path)
        if mask is not None:
            small = resize_mask(mask, size).astype(np.uint8) * 255
            Image.fromarray(small).save(path.with_name(f"{path.stem}_mask.png"))
    write_json_atomic(marker, expected)
    return target
