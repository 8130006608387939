"""Writing real DICOM files with pydicom for tests (no test functions here).

Every file carries patient identifiers (:data:`PATIENT`), so tests can check that none of them reaches dlmi's
outputs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-0042-SECRET", "PatientBirthDate": "19700101",
           "InstitutionName": "St Example Hospital", "AccessionNumber": "ACC-99887766"}


def new_dataset(rows: int, columns: int, *, frames: int = 1, sop_instance_uid: str | None = None,
                series_instance_uid: str | None = None) -> Dataset:
    """A dataset with file meta, UIDs, the patient identifiers and an image's size (no pixels yet)."""
    sop_class = UltrasoundMultiFrameImageStorage if frames > 1 else SecondaryCaptureImageStorage
    sop = sop_instance_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "US" if frames > 1 else "OT"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str | None = None,
    bits_stored: int | None = None,
    compress: str | None = None,
    preamble: bool = True,
    **elements: Any,
) -> Path:
    """``pixels`` — (H, W) grey, (H, W, 3) colour, or (F, H, W[, 3]) frames — as a DICOM file.

    ``photometric`` defaults to MONOCHROME2 (RGB for colour); ``bits_stored`` to the dtype's width.
    ``compress`` is a transfer syntax UID pydicom can encode (RLE, JPEG 2000); other keywords become data
    elements (``RescaleSlope=2``, ``WindowCenter=40``, ...). ``preamble=False`` writes no 128-byte preamble
    and ``DICM`` marker, as some old exports do.
    """
    colour = pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] == 3 and photometric != "MONOCHROME2")
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    rows, columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds = new_dataset(rows, columns, frames=frames)
    photometric = photometric or ("RGB" if colour else "MONOCHROME2")
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8,
                      generate_instance_uid=False)
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in elements.items():
        setattr(ds, key, value)
    if compress is not None:
        ds.compress(compress, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        path.write_bytes(buffer.getvalue()[132:])  # drop the preamble and "DICM" (meta group kept)
    return path


def write_jpeg_dicom(path: Path, frames: list[np.ndarray], *, quality: int = 95) -> Path:
    """RGB frames (H, W, 3) as a JPEG Baseline DICOM in YBR_FULL_422, as ultrasound machines write cine."""
    rows, columns = frames[0].shape[:2]
    ds = new_dataset(rows, columns, frames=len(frames))
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame, "RGB").save(buffer, format="JPEG", quality=quality, subsampling=1)  # 4:2:2
        encoded.append(buffer.getvalue())
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_encapsulated(path: Path, transfer_syntax: str, rows: int = 8, columns: int = 8) -> Path:
    """A file claiming a compressed ``transfer_syntax`` with an opaque fragment (for undecodable syntaxes)."""
    ds = new_dataset(rows, columns)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_without_image(path: Path) -> Path:
    """A valid DICOM file with no pixel data (like a structured report)."""
    ds = new_dataset(1, 1)
    del ds.Rows, ds.Columns
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ultrasound(path: Path, pixels: np.ndarray, *, frame_of_reference: bool = True,
                     patient_name: str = "Doe^Jane") -> Path:
    """An 8-bit MONOCHROME2 ultrasound image as a scanner writes it: (H, W) as Ultrasound Image Storage,
    (F, H, W) as an Ultrasound Multi-frame (cine) file, with the patient and study modules filled
    (``PatientName`` as given), and a Frame of Reference UID unless ``frame_of_reference`` is False."""
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    rows, columns = pixels.shape[-2:]
    ds = new_dataset(rows, columns, frames=frames)
    sop_class = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = "US"
    ds.PatientName = patient_name
    ds.PatientSex = "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240131", "093000", "STUDY-7"
    ds.ReferringPhysicianName = "Smith^John"
    ds.SeriesNumber, ds.InstanceNumber = 3, 1
    ds.BodyPartExamined = "BREAST"
    if frame_of_reference:
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
    ds.set_pixel_data(pixels, "MONOCHROME2", 8, generate_instance_uid=False)
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
