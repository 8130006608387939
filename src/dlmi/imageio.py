"""Reading images and masks from disk: any common mode in, 8-bit greyscale or a boolean mask out."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dlmi.atomic import write_atomic
from dlmi.errors import DlmiError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """True for a file whose suffix, in any letter case, is a supported image format."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
        return image
    except FileNotFoundError:
        raise DlmiError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DlmiError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DlmiError(f"{path}: cannot read image ({exc})") from None


def to_grey(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an 8-bit greyscale array (H, W)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if array.ndim == 3:
            array = array.mean(axis=2)
        lo, hi = float(array.min()), float(array.max())
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA"):
        # Composite on black: transparent pixels carry no image content.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_grey(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as 8-bit greyscale (H, W); a one-line :class:`DlmiError` on failure."""
    return to_grey(_open(Path(path)))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DlmiError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DlmiError(f"{path}: not a readable image ({exc})") from None


def read_mask(
    paths: Sequence[str | os.PathLike[str]], size: tuple[int, int] | None = None
) -> np.ndarray:
    """OR-merge one or more mask files into a boolean array (H, W).

    Any mode is binarised: a pixel is lesion where its greyscale value is above 127 (so JPEG
    ringing around a 0/255 mask does not count). ``size`` is the image's (width, height); a mask of
    another size is an error naming the file.
    """
    if not paths:
        raise DlmiError("read_mask needs at least one mask file")
    merged: np.ndarray | None = None
    for raw in paths:
        path = Path(raw)
        image = _open(path)
        if size is not None and image.size != tuple(size):
            raise DlmiError(
                f"{path}: mask is {image.size[0]}x{image.size[1]} but its image is {size[0]}x{size[1]}"
            )
        mask = to_grey(image) > 127 if image.mode != "1" else np.asarray(image, dtype=bool)
        merged = mask if merged is None else (merged | mask)
        size = image.size
    assert merged is not None
    return merged


def write_png_atomic(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an array as PNG through a temporary file and an atomic rename."""
    image = Image.fromarray(array)
    return write_atomic(path, lambda handle: image.save(handle, format="PNG"))
