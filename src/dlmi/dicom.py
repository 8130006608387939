"""Reading DICOM images as 8-bit greyscale, frame by frame, with pydicom.

What a frame goes through, in the order of the DICOM standard's grey pipeline (PS3.3 C.11):

1. decoding: native (uncompressed, also big-endian and deflated) pixel data, and the compressed transfer
   syntaxes pydicom's pixel handlers decode here — JPEG baseline and 8-bit extended (Pillow), JPEG 2000 and
   HTJ2K (pylibjpeg-openjpeg), RLE. JPEG lossless and JPEG-LS need python-gdcm (``pip install
   'dlmi[dicom-lossless]'``). A transfer syntax that nothing here decodes (video, for example) is a one-line
   :class:`DlmiError` naming it;
2. colour: RGB is converted to grey with the ITU-R 601 luma weights (as Pillow's ``convert("L")`` and
   :mod:`dlmi.imageio` do for RGB files); YBR_FULL / YBR_FULL_422 (ultrasound's usual JPEG colour) first
   to RGB by pydicom; PALETTE COLOR through its lookup table;
3. modality LUT: Rescale Slope / Intercept (or a Modality LUT Sequence), per frame for enhanced multi-frame
   objects (functional groups);
4. VOI: the VOI LUT Sequence or the first Window Center / Width (with its VOI LUT Function: LINEAR,
   LINEAR_EXACT or SIGMOID), mapped onto 0–255. Without either, unsigned data of at most 8 bits keep their
   values (scaled to 0–255 when fewer than 8 bits), so an 8-bit DICOM reads exactly like the same image saved
   as PNG; wider or rescaled data are stretched from the frame's own minimum to maximum, as
   :mod:`dlmi.imageio` does for 16-bit files;
5. MONOCHROME1 (and a Presentation LUT Shape of INVERSE) is inverted, so that bright means more signal.

Multi-frame files (ultrasound cine) are read one frame at a time (:func:`iter_dicom_frames`); a
single-frame file also reads through :func:`dlmi.imageio.read_grey`, like a PNG. :class:`DicomReference`
keeps only the SOP Instance UID, the Series Instance UID and the frame number: no patient identifier leaves
this module.

pydicom is imported when a DICOM file is actually read, so importing this module costs nothing.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlmi.errors import DlmiError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
_REFERENCE_TAGS = ("SOPInstanceUID", "SeriesInstanceUID")
_LOSSLESS_HINT = "install python-gdcm to decode it (pip install 'dlmi[dicom-lossless]')"


@dataclass(frozen=True)
class DicomReference:
    """Where a frame came from, without identifying the patient: UIDs and the frame number (1-based)."""

    sop_instance_uid: str
    series_instance_uid: str
    frame: int
    frames: int

    def as_dict(self) -> dict[str, str | int]:
        return {"sop_instance_uid": self.sop_instance_uid, "series_instance_uid": self.series_instance_uid,
                "frame": self.frame, "frames": self.frames}


@dataclass
class DicomFrame:
    """One frame as uint8 greyscale (H, W) and its reference."""

    grey: np.ndarray
    reference: DicomReference


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """A ``.dcm`` / ``.dicom`` file (any letter case), or a file without an image suffix — none, or a
    numeric one as in UID-named files (``1.2.840.113619.2.5``) — whose bytes 128–131 read ``DICM``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix and not suffix[1:].isdigit():
        return False
    try:
        return _has_dicom_marker(path)
    except OSError:
        return False


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn pydicom's failures on ``path`` into a one-line :class:`DlmiError` naming the file."""
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every non-conformance it tolerates
            yield
    except DlmiError:
        raise
    except FileNotFoundError:
        raise DlmiError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DlmiError(f"{path}: is a folder, not a DICOM file") from None
    except InvalidDicomError as exc:
        raise DlmiError(f"{path}: not a readable DICOM file ({_one_line(exc)})") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, RuntimeError,
            NotImplementedError, struct.error) as exc:
        raise DlmiError(f"{path}: {what} ({_one_line(exc)})") from None


def _has_dicom_marker(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(_MAGIC_OFFSET)
        return handle.read(len(_MAGIC)) == _MAGIC


def read_header(path: str | os.PathLike[str]) -> Dataset:
    """The file's data elements up to the pixel data (the pixels are not read)."""
    from pydicom import dcmread

    path = Path(path)
    with _reading(path, "cannot read DICOM header"):
        # force: files without the 128-byte preamble (older exports) are read too; a non-DICOM file then
        # fails below for want of an image.
        header = dcmread(path, stop_before_pixels=True, force=True)
        if "Rows" not in header and not _has_dicom_marker(path):
            raise DlmiError(f"{path}: not a readable DICOM file (no DICM marker and no image elements)")
        if "Rows" not in header or "Columns" not in header:
            kind = header.get("SOPClassUID")
            what = f" ({kind.name})" if kind is not None and hasattr(kind, "name") else ""
            raise DlmiError(f"{path}: DICOM file without an image{what}; nothing to read")
        _ensure_transfer_syntax(header)
    return header


def _ensure_transfer_syntax(header: Dataset) -> None:
    """Fill in a missing Transfer Syntax UID from how the file was actually encoded."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(header, "file_meta", None)
    if meta is None:
        header.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = header.original_encoding
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def number_of_frames(header: Dataset, path: str | os.PathLike[str]) -> int:
    """Frames in the file (1 where Number of Frames is absent or empty)."""
    try:
        raw = header.get("NumberOfFrames")
        count = int(raw) if raw not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise DlmiError(f"{path}: Number of Frames is not a whole number ({_one_line(exc)})") from None
    return max(count, 1)


def check_decodable(path: str | os.PathLike[str], header: Dataset) -> None:
    """A one-line :class:`DlmiError` naming the transfer syntax when nothing installed can decode it."""
    from pydicom.pixels import get_decoder

    uid = header.file_meta.TransferSyntaxUID
    name = f"{uid.name} ({uid})" if uid.name != uid else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DlmiError(f"{path}: transfer syntax {name} cannot be decoded: pydicom has no decoder for it; "
                        "convert the file to an uncompressed or JPEG transfer syntax first") from None
    if not decoder.is_available:
        wants_gdcm = any(m.startswith("gdcm") for m in decoder.missing_dependencies)
        hint = _LOSSLESS_HINT if wants_gdcm else "needs " + "; ".join(decoder.missing_dependencies)
        raise DlmiError(f"{path}: transfer syntax {name} cannot be decoded here; {hint}")


def dicom_references(path: str | os.PathLike[str]) -> list[DicomReference]:
    """One :class:`DicomReference` per frame of the file (header only; no pixels are decoded)."""
    path = Path(path)
    header = read_header(path)
    frames = number_of_frames(header, path)
    return [_reference(header, frame, frames) for frame in range(1, frames + 1)]


def _reference(header: Dataset, frame: int, frames: int) -> DicomReference:
    sop, series = (str(header.get(tag, "") or "") for tag in _REFERENCE_TAGS)
    return DicomReference(sop_instance_uid=sop, series_instance_uid=series, frame=frame, frames=frames)


def dicom_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a DICOM image, from its header."""
    header = read_header(path)
    return int(header.Columns), int(header.Rows)


# --- the grey pipeline -----------------------------------------------------------------------------------


@dataclass
class _Window:
    center: float
    width: float
    function: str  # LINEAR, LINEAR_EXACT or SIGMOID


@dataclass
class _FrameSettings:
    """The values that turn one frame's stored pixels into grey."""

    slope: float = 1.0
    intercept: float = 0.0
    window: _Window | None = None


def _first(value: Any) -> Any:
    """The first value of a possibly multi-valued element."""
    if value is None:
        return None
    try:
        return value[0] if not isinstance(value, (str, bytes)) and len(value) else value
    except TypeError:
        return value


def _number(value: Any) -> float | None:
    try:
        number = float(_first(value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_settings(item: Any, into: _FrameSettings) -> None:
    """Rescale and window values found directly in ``item`` (a dataset or a functional-group item)."""
    slope, intercept = _number(item.get("RescaleSlope")), _number(item.get("RescaleIntercept"))
    if slope is not None and slope != 0:
        into.slope = slope
    if intercept is not None:
        into.intercept = intercept
    center, width = _number(item.get("WindowCenter")), _number(item.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(_first(item.get("VOILUTFunction")) or "LINEAR").upper()
        into.window = _Window(center, width, function)


def _frame_settings(header: Dataset, index: int) -> _FrameSettings:
    """Rescale and window for frame ``index`` (0-based): the dataset's own values, then the shared and the
    frame's functional groups of an enhanced multi-frame object (PS3.3 C.7.6.16), each overriding."""
    settings = _FrameSettings()
    _read_settings(header, settings)
    groups = []
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for name in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(name)
            if items:
                _read_settings(items[0], settings)
    return settings


def _windowed(values: np.ndarray, window: _Window) -> np.ndarray:
    """Window Center / Width onto 0–255, by the VOI LUT Function's formula (PS3.3 C.11.2.1.2-3)."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0) * 255.0
    if w < 1:  # LINEAR needs a width of at least 1
        return np.where(values > c - 0.5, 255.0, 0.0)
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0


def stretch_values(values: np.ndarray) -> np.ndarray:
    """Values onto 0–255 (float) from their own minimum to maximum: a window centred on the middle of their
    range. A constant array is a window centred on its one value, so it is mid-grey (127.5), whatever the
    value: it carries no contrast. The one rule for wide DICOM data and 16-bit / float image files."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return values
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return np.full(values.shape, 127.5)
    return (values - lo) / (hi - lo) * 255.0


def _as_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, 3) array, as float (Pillow's ``convert("L")`` weights)."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _colour_to_grey(pixels: np.ndarray, header: Dataset) -> np.ndarray:
    if str(header.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(pixels, header)
        scale = 255.0 / 65535.0 if rgb.dtype.itemsize > 1 else 1.0
        return _as_uint8(_luma(rgb) * scale)
    if pixels.dtype == np.uint8:
        # Pillow's own conversion: bit-identical to reading the same RGB image from a PNG.
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(pixels), "RGB").convert("L"), dtype=np.uint8)
    return _as_uint8(stretch_values(_luma(pixels)))


def _monochrome_to_grey(pixels: np.ndarray, header: Dataset, settings: _FrameSettings) -> np.ndarray:
    from pydicom.pixels import apply_voi

    bits = int(header.get("BitsStored") or header.get("BitsAllocated") or 8)
    signed = int(header.get("PixelRepresentation") or 0) == 1
    modality_lut = bool(header.get("ModalityLUTSequence"))
    rescaled = settings.slope != 1.0 or settings.intercept != 0.0
    if modality_lut:
        from pydicom.pixels import apply_modality_lut

        values = apply_modality_lut(pixels, header).astype(np.float64)
    else:
        values = pixels.astype(np.float64) * settings.slope + settings.intercept
    if header.get("VOILUTSequence") and not np.issubdtype(pixels.dtype, np.floating):
        lut_input = np.rint(values).astype(np.int64)
        depth = int(header.VOILUTSequence[0].LUTDescriptor[2])
        grey = apply_voi(lut_input, header, index=0).astype(np.float64) * (255.0 / (2**depth - 1))
    elif settings.window is not None:
        grey = _windowed(values, settings.window)
    elif not signed and not rescaled and not modality_lut and bits <= 8 and pixels.dtype.kind in "ub":
        grey = values * (255.0 / (2**bits - 1))  # 8-bit data as they are, as a PNG would read
    else:
        grey = stretch_values(values)
    grey = _as_uint8(grey)
    photometric = str(header.get("PhotometricInterpretation", "")).upper()
    inverse = str(header.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if (photometric == "MONOCHROME1") != inverse:
        grey = 255 - grey
    return grey


def frame_to_grey(pixels: np.ndarray, header: Dataset, index: int = 0) -> np.ndarray:
    """One decoded frame (as pydicom gives it, colour already in RGB) as uint8 grey (H, W)."""
    if pixels.ndim == 3:
        return _colour_to_grey(pixels, header)
    if str(header.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        return _colour_to_grey(pixels, header)
    return _monochrome_to_grey(pixels, header, _frame_settings(header, index))


# --- reading -------------------------------------------------------------------------------------------


def _pixel_source(path: Path, header: Dataset) -> str | Dataset:
    """The path itself (pydicom then reads one frame at a time), or the whole dataset where pydicom cannot
    find the pixels from the path alone (deflated files, files without a preamble)."""
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    if _has_dicom_marker(path) and header.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian:
        return str(path)
    dataset = dcmread(path, force=True)
    dataset.file_meta.TransferSyntaxUID = header.file_meta.TransferSyntaxUID
    return dataset


def iter_dicom_frames(path: str | os.PathLike[str]) -> Iterator[DicomFrame]:
    """Every frame of a DICOM file as uint8 grey with its :class:`DicomReference`, one frame in memory at a
    time (for native pixel data; a compressed frame is decoded on its own)."""
    from pydicom.pixels import iter_pixels

    path = Path(path)
    header = read_header(path)
    frames = number_of_frames(header, path)
    check_decodable(path, header)
    with _reading(path, f"cannot decode {header.file_meta.TransferSyntaxUID.name} pixel data"):
        source = _pixel_source(path, header)
        decoded = iter_pixels(source)
        for index in range(frames):
            pixels = next(decoded)
            yield DicomFrame(frame_to_grey(pixels, header, index), _reference(header, index + 1, frames))


def read_dicom_grey(path: str | os.PathLike[str], frame: int | None = None) -> np.ndarray:
    """A DICOM image as uint8 grey (H, W). A multi-frame file needs ``frame`` (1-based); without it, it is a
    one-line error (use :func:`iter_dicom_frames` to read every frame)."""
    from pydicom.pixels import pixel_array

    path = Path(path)
    header = read_header(path)
    frames = number_of_frames(header, path)
    if frame is None and frames > 1:
        raise DlmiError(f"{path}: multi-frame DICOM ({frames} frames); one image is expected here — "
                        "read its frames one by one (dlmi.dicom.iter_dicom_frames)")
    index = (frame or 1) - 1
    if not 0 <= index < frames:
        raise DlmiError(f"{path}: has {frames} frame(s); frame {frame} does not exist")
    check_decodable(path, header)
    with _reading(path, f"cannot decode {header.file_meta.TransferSyntaxUID.name} pixel data"):
        pixels = pixel_array(_pixel_source(path, header), index=index if frames > 1 else None)
        return frame_to_grey(pixels, header, index)


def dicom_mask_values(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """A single-frame DICOM mask's stored values (H, W), the brightest sample of each pixel, and half their
    range (``2**BitsStored``); :func:`dlmi.imageio.binarise_values` makes the mask of them."""
    from pydicom.pixels import pixel_array

    path = Path(path)
    header = read_header(path)
    frames = number_of_frames(header, path)
    if frames > 1:
        raise DlmiError(f"{path}: multi-frame DICOM ({frames} frames) cannot be a mask of one image")
    check_decodable(path, header)
    with _reading(path, f"cannot decode {header.file_meta.TransferSyntaxUID.name} pixel data"):
        values = pixel_array(_pixel_source(path, header)).astype(np.float64)
    if values.ndim == 3:
        values = values.max(axis=2)
    bits = int(header.get("BitsStored") or 8)
    return values, (2**bits - 1) / 2.0
