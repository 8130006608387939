"""Generated ultrasound-like images with exact lesion masks, registered as ``synthetic``.

Needs no files, so it is the default that lets training, evaluation and the tests run anywhere. Each
sample is generated from ``(seed, index, size)`` alone, in a few milliseconds: the same triple gives the
same sample again (across platforms, floating-point rounding may change a rare pixel by one grey level or
flip a boundary pixel of the mask).

Labels follow BUSI's order: 0 normal (no lesion), 1 benign (smooth, wider-than-tall, hypoechoic oval,
often with posterior enhancement), 2 malignant (irregular, spiculated, often taller-than-wide,
heterogeneous, often with posterior shadowing). Every image shows layered breast-like tissue (skin, fat,
gland, muscle) under depth attenuation and multiplicative Rayleigh speckle, with hypoechoic fat lobules as
decoys that are not lesions. Sample ``index`` has label ``index % 3`` and the key
``CLASS/synthetic_NNNN.png``; ``dlmi data synth`` writes the same samples as a BUSI-layout folder.

Difficulty (tuned so learning takes a few epochs): the seed CNN, trained on the default 300 images (seed 0)
with Adam 1e-3, batch 16, scores about chance after epoch 1 and 0.83–0.86 accuracy after epoch 10 on 300
fresh images (seed 1), at 64 and at 128 px.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from dlmi.datasets.base import Sample, normal_index
from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl

CLASSES = ("normal", "benign", "malignant")
_KEY = re.compile(r"^(?P<cls>[a-z]+)/synthetic_(?P<index>\d+)\.png$")


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field (about unit variance) upsampled from a ``cells``×``cells`` grid."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))


def _wave(rng: np.random.Generator, x: np.ndarray, knots: int) -> np.ndarray:
    """A smooth random 1-D curve over ``x`` in [0, 1]."""
    return np.interp(x, np.linspace(0, 1, knots), rng.standard_normal(knots))


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fully developed speckle: the magnitude of a correlated complex Gaussian field, mean 1 (Rayleigh)."""
    cells = max(4, size // 2)
    parts = [_smooth(rng, size, cells) for _ in range(2)]
    amplitude = np.hypot(parts[0], parts[1])
    return amplitude / amplitude.mean()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _tissue(rng: np.random.Generator, size: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Layered echogenicity: bright skin line, dark fat, bright mottled gland, striated muscle."""
    column = x[0]
    skin = 0.035 + 0.008 * _wave(rng, column, 5)
    fat_end = rng.uniform(0.14, 0.3) + 0.04 * _wave(rng, column, 6)
    gland_end = rng.uniform(0.78, 0.92) + 0.03 * _wave(rng, column, 6)
    edge = 1.5 / size
    fat = rng.uniform(0.35, 0.5)
    gland = rng.uniform(0.65, 0.85) * (1 + 0.18 * _smooth(rng, size, 6))
    muscle = rng.uniform(0.45, 0.6) * (1 + 0.25 * np.sin(2 * np.pi * (y * rng.uniform(14, 22) + 0.3 * x)))
    tissue = fat + (gland - fat) * _sigmoid((y - fat_end) / (3 * edge))
    tissue = tissue + (muscle - tissue) * _sigmoid((y - gland_end) / (2 * edge))
    tissue = tissue + 1.2 * np.exp(-(((y - skin) / (1.5 * edge)) ** 2))
    return tissue * (1 + 0.1 * _smooth(rng, size, 12))


def _lobules(rng: np.random.Generator, tissue: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Hypoechoic fat lobules: smooth, flat, moderately dark ovals that are normal anatomy."""
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.75)
        a, b = rng.uniform(0.06, 0.16), rng.uniform(0.03, 0.07)
        r = np.hypot((x - cx) / a, (y - cy) / b)
        tissue = tissue * (1 - rng.uniform(0.15, 0.35) * _sigmoid((1 - r) / 0.15))
    return tissue


def _lesion(
    rng: np.random.Generator, malignant: bool, size: int, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The lesion's exact mask, its soft in-image weight (0–1) and its geometry."""
    cx, cy = rng.uniform(0.28, 0.72), rng.uniform(0.35, 0.62)
    a = rng.uniform(0.08, 0.19)
    angle = rng.uniform(-0.3, 0.3) if not malignant else rng.uniform(-0.6, 0.6)
    b = a * (rng.uniform(0.45, 0.85) if not malignant else rng.uniform(0.7, 1.3))
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    theta = np.arctan2(v / b, u / a)
    # The boundary's radius as a function of angle, tabulated once and interpolated per pixel.
    angles = np.linspace(-np.pi, np.pi, 1025, dtype=np.float32)
    table = np.ones_like(angles)
    if malignant:
        for k in range(3, 9):
            table += rng.uniform(0, 0.12) / np.sqrt(k) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
        for _ in range(rng.integers(3, 10)):
            kappa = rng.uniform(30, 120)
            table += rng.uniform(0.15, 0.6) * np.exp(kappa * (np.cos(angles - rng.uniform(0, 2 * np.pi)) - 1))
    else:
        for k in (2, 3, 4):
            table += rng.uniform(0, 0.05) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    radius = np.interp(theta, angles, table).astype(np.float32)
    distance = np.hypot(u / a, v / b) - radius  # < 0 inside
    mask = distance < 0
    softness = (1.2 if not malignant else 2.5) / (size * a)
    weight = _sigmoid(-distance / softness)
    return mask, weight, {"cx": cx, "cy": cy, "a": a, "b": b}


def generate(index: int, seed: int = 0, size: int = 128) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample ``index`` of the set ``seed`` at ``size``×``size``: (uint8 image, bool mask, label)."""
    label = index % len(CLASSES)
    rng = np.random.default_rng([seed, index])
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    tissue = _lobules(rng, _tissue(rng, size, x, y), x, y)
    mask = np.zeros((size, size), dtype=bool)
    if label:
        malignant = label == 2
        mask, weight, shape = _lesion(rng, malignant, size, x, y)
        inside = rng.uniform(0.08, 0.32) if not malignant else rng.uniform(0.08, 0.36)
        texture = 1 + (0.1 if not malignant else 0.35) * _smooth(rng, size, 10)
        tissue = tissue * (1 - weight) + inside * texture * weight
        below = _sigmoid((y - shape["cy"]) / 0.02) * np.exp(-(((x - shape["cx"]) / (0.8 * shape["a"])) ** 4))
        below = below * (1 - weight)
        if malignant and rng.random() < 0.65:
            tissue = tissue * (1 - rng.uniform(0.25, 0.6) * below)
        elif not malignant and rng.random() < 0.55:
            tissue = tissue * (1 + rng.uniform(0.15, 0.45) * below)
    attenuation = np.exp(-rng.uniform(0.4, 1.6) * y)
    envelope = tissue * attenuation * (1 + rng.uniform(0.5, 0.9) * (_speckle(rng, size) - 1))
    gain = rng.uniform(150, 200)
    noise = 4 * rng.standard_normal((size, size), dtype=np.float32)
    display = np.clip(envelope, 0, None) ** 0.7 * gain + noise
    return np.clip(np.rint(display), 0, 255).astype(np.uint8), mask, label


class SyntheticDataset:
    """Generated breast-ultrasound-like images: normal / benign / malignant with exact lesion masks."""

    name = "synthetic"
    classes = CLASSES
    normal_class = "normal"
    has_masks = True
    needs_data_dir = False

    def __init__(self, count: int = 300, size: int = 128, seed: int = 0) -> None:
        for option, value, low in (("count", count, 1), ("size", size, 16), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DlmiError(f"synthetic: {option} must be an integer >= {low}, got {value!r}")
        self.count, self.size, self.seed = count, size, seed
        self.digits = max(4, len(str(count - 1)))

    def key(self, index: int) -> str:
        return f"{CLASSES[index % len(CLASSES)]}/synthetic_{index:0{self.digits}d}.png"

    def samples(self, data_dir: Path | None = None) -> list[Sample]:
        """All ``count`` samples, classes interleaved (``data_dir`` is ignored)."""
        return [Sample(self.key(i), i % len(CLASSES)) for i in range(self.count)]

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        match = _KEY.match(sample.key)
        if not match or int(match["index"]) >= self.count:
            raise DlmiError(f"{sample.key}: not a sample of synthetic (count={self.count}, seed={self.seed})")
        image, mask, label = generate(int(match["index"]), self.seed, self.size)
        if CLASSES[label] != match["cls"]:
            raise DlmiError(f"{sample.key}: synthetic sample {match['index']} is {CLASSES[label]!r}")
        return image, mask

    @property
    def normal_index(self) -> int | None:
        return normal_index(CLASSES, self.normal_class)


@hookimpl
def dlmi_register_datasets(register) -> None:
    register(
        "synthetic",
        SyntheticDataset,
        description="Generated ultrasound-like normal/benign/malignant images with exact masks (no files)",
    )
