"""A tiny BUSI-layout folder of real PNGs for tests (no test functions here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("normal", "benign", "malignant")


def write_busi_folder(root: Path, per_class: int = 10, size: int = 64) -> Path:
    """CLASS/NAME.png plus NAME_mask.png: benign = bright disk, malignant = dark disk, normal = empty mask."""
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(100 * label + i)
            image = rng.normal(100, 25, (size, size))
            mask = np.zeros((size, size), dtype=bool)
            if label:
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                r = int(rng.integers(size // 8, size // 5))
                yy, xx = np.mgrid[0:size, 0:size]
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                image[mask] = 220 if label == 1 else 30
            stem = f"{name} ({i + 1})"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / name / f"{stem}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / name / f"{stem}_mask.png")
    return root
