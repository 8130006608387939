"""Reading images and masks from disk: any common mode in, 8-bit greyscale or a boolean mask out.

Images: grey, RGB, RGBA/LA (composited on black), palette, 1-bit, 16-bit and float files all become uint8
(H, W); 16-bit and float images are stretched from their own minimum to maximum, a window centred on the
middle of their values (:func:`dlmi.dicom.stretch_values`, the rule for wide DICOM data too), so an image of
one constant value, which carries no contrast, is mid-grey (128) whatever its value. A multipage TIFF is
refused in one line: one file is one image here (save each page as its own file).

Masks: any mode becomes bool (H, W) by the one rule of :data:`MASK_RULE` (:func:`binarise_values`), for
training, evaluation and ``dlmi evaluate masks`` alike. Every failure is a one-line :class:`DlmiError`
naming the file.

DICOM: ``.dcm`` / ``.dicom`` files, and files without an image suffix that carry the DICOM marker, are read
through :mod:`dlmi.dicom` (rescale, window, MONOCHROME1, colour to grey); a single-frame DICOM reads like a
PNG here, a multi-frame one is a one-line error (read its frames with :func:`dlmi.dicom.iter_dicom_frames`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dlmi.atomic import write_atomic
from dlmi.dicom import DICOM_SUFFIXES, is_dicom_file, stretch_values
from dlmi.errors import DlmiError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
LABEL_MAP_MAX = 15  # a mask whose values are whole numbers up to this is a label map: non-zero is lesion
MASK_RULE = ("lesion where the value is above half the range (127 for 8-bit masks; a colour mask's value is "
             "its brightest channel, transparency on black); in a label map (whole values of at most 15, "
             "such as 0/1, 0/2 or 0/1/2), wherever it is non-zero; a mask whose values all lie below half "
             "the range and is no label map (a soft map such as 3 and 120) is refused: threshold it first")


def is_image_file(path: Path) -> bool:
    """True for a file whose suffix, in any letter case, is a supported image format, and for a DICOM file
    without one (no suffix, or a numeric one as in UID-named files; told by its ``DICM`` marker)."""
    return path.suffix.lower() in PIL_SUFFIXES or is_dicom_file(path)


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() not in PIL_SUFFIXES and is_dicom_file(path)


def image_stem(path: Path) -> str:
    """The file name without its image suffix: ``a.png`` → ``a``; a DICOM file named by its UID
    (``1.2.840.5``) or without a suffix keeps its whole name."""
    suffix = path.suffix
    return path.name[: -len(suffix)] if suffix and suffix.lower() in IMAGE_SUFFIXES else path.name


@contextmanager
def _reading(path: Path, what: str = "cannot read image") -> Iterator[None]:
    """Turn any failure to open or decode ``path`` into a one-line :class:`DlmiError` naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except FileNotFoundError:
        raise DlmiError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DlmiError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise DlmiError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except _READ_ERRORS as exc:
        raise DlmiError(f"{path}: {what} ({_one_line(exc)})") from None


def _open(path: Path) -> Image.Image:
    with _reading(path):
        image = Image.open(path)
        image.load()
    pages = getattr(image, "n_frames", 1)
    if image.format == "TIFF" and pages > 1:
        raise DlmiError(f"{path}: a multipage TIFF ({pages} pages); one file is one image here: save each "
                        "page as its own file")
    return image


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def stretch_to_grey(array: np.ndarray) -> np.ndarray:
    """Map an array's own min..max onto 0..255 (a constant array becomes mid-grey: see the module's rule)."""
    return np.clip(np.rint(stretch_values(array)), 0, 255).astype(np.uint8)


def to_grey(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an 8-bit greyscale array (H, W)."""
    mode = image.mode
    if mode in WIDE_MODES:
        array = np.asarray(image)
        return stretch_to_grey(array.mean(axis=2) if array.ndim == 3 else array)
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        # Composite on black: transparent pixels carry no image content.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.uint8)


def mask_values(image: Image.Image) -> tuple[np.ndarray, float]:
    """Each pixel's value as :data:`MASK_RULE` reads it (the brightest channel, after palette and alpha on
    black), and half the mode's range."""
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8), 127.5  # 0/1: a label map
    if image.mode in WIDE_MODES:
        values = np.asarray(image).astype(np.float64)
        values = values.max(axis=2) if values.ndim == 3 else values
        if image.mode == "F":
            return values, 0.5
        return values, 127.5 if float(values.max(initial=0)) <= 255 else 32767.5
    if image.mode in ("P", "PA", "RGBA", "LA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    values = np.asarray(image)
    return (values.max(axis=2) if values.ndim == 3 else values), 127.5


def binarise_values(values: np.ndarray, half: float, path: str | os.PathLike[str]) -> np.ndarray:
    """A mask's values as bool (H, W) by :data:`MASK_RULE`; a one-line error naming ``path`` for a mask that
    is neither above half the range where it is lesion nor a label map."""
    top = float(values.max(initial=0))
    if top > half:
        return values > half
    if top <= LABEL_MAP_MAX and bool(np.all(values == np.round(values))):
        return values > 0
    low = float(values.min()) if values.size else 0.0
    raise DlmiError(f"{path}: mask values lie between {low:g} and {top:g}, all below half the range "
                    f"({half:g}), and it is no label map (whole values up to {LABEL_MAP_MAX}): threshold it "
                    "to 0 and 255 first")


def read_grey(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as 8-bit greyscale (H, W); a one-line :class:`DlmiError` on failure."""
    path = Path(path)
    if _is_dicom(path):
        from dlmi.dicom import read_dicom_grey

        return read_dicom_grey(path)
    image = _open(path)
    try:
        return to_grey(image)
    except (ValueError, OSError) as exc:
        reason = _one_line(exc)
        raise DlmiError(f"{path}: cannot convert image mode {image.mode} to grey ({reason})") from None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    path = Path(path)
    if _is_dicom(path):
        from dlmi.dicom import dicom_image_size

        return dicom_image_size(path)
    with _reading(path, "not a readable image"), Image.open(path) as image:
        return image.size


def read_mask(
    paths: Sequence[str | os.PathLike[str]], size: tuple[int, int] | None = None
) -> np.ndarray:
    """OR-merge one or more mask files into a boolean array (H, W), each binarised by :func:`binarise_values`.

    ``size`` is the image's (width, height); a mask of another size is an error naming the file.
    """
    if not paths:
        raise DlmiError("read_mask needs at least one mask file")
    merged: np.ndarray | None = None
    reference = "its image" if size is not None else ""
    for raw in paths:
        path = Path(raw)
        mask = _read_one_mask(path)
        found = (mask.shape[1], mask.shape[0])
        if size is not None and found != tuple(size):
            raise DlmiError(f"{path}: mask is {found[0]}x{found[1]} but {reference} is {size[0]}x{size[1]}")
        merged = mask if merged is None else (merged | mask)
        if not reference:
            reference, size = str(path), found
    assert merged is not None
    return merged


def read_mask_values(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """A mask file's values and half their range (:func:`mask_values`; DICOM by its bits stored)."""
    path = Path(path)
    if _is_dicom(path):
        from dlmi.dicom import dicom_mask_values

        return dicom_mask_values(path)
    image = _open(path)
    try:
        return mask_values(image)
    except (ValueError, OSError) as exc:
        raise DlmiError(f"{path}: cannot read mode {image.mode} as a mask ({_one_line(exc)})") from None


def _read_one_mask(path: Path) -> np.ndarray:
    return binarise_values(*read_mask_values(path), path)


def write_png_atomic(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an array as PNG through a temporary file and an atomic rename (bool arrays as 1-bit PNG)."""
    image = Image.fromarray(array)
    return write_atomic(path, lambda handle: image.save(handle, format="PNG"))
