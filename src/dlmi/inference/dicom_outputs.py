"""``dlmi predict --dicom-seg / --dicom-sr``: a DICOM input's results as DICOM objects, made with highdicom.

- **SEG** (``OUT/dicom/<relative path>.dcm``, ``--dicom-seg``): a binary DICOM Segmentation (Segmentation
  Storage) of the lesion mask, one per DICOM input file: one segment frame per source frame, each frame's
  pixels those of its mask PNG. It references the source instance (study, series and SOP instance UIDs;
  the frame numbers of a multi-frame source; the frame of reference where the source has one), copies the
  source's patient and study modules (highdicom does), and holds one segment, ``lesion``, coded by the
  models' dataset plugin (:mod:`dlmi.datasets.segment_codes`), made by an automatic algorithm: name
  ``dlmi``, its version, family *Artificial Intelligence* (DCM 123110), and the sha256 of each model file
  as the algorithm's parameters. An empty mask (a gated image) gives a SEG all the same, its segment empty:
  every source frame keeps its frame (highdicom's ``omit_empty_frames=False``).
- **SR** (``OUT/dicom-sr/<relative path>.dcm``, ``--dicom-sr``): a Comprehensive SR (TID 1500 measurement
  report) with one measurement group per source frame, referencing that frame: the predicted class as a
  *Finding* (DCM 121071) and each class's probability as a measurement in UCUM ``1`` (no units, 0–1). The
  classes are not standard concepts, so they are coded in dlmi's private scheme ``99DLMI`` (code value and
  meaning: the class name; ``P-<class>``, *Probability of <class>*, for the measurements).

highdicom builds a SEG from single-frame images or from enhanced multi-frame images placed in a patient
coordinate system; an ultrasound cine (US Multi-frame Image Storage) is neither, so its SEG is built from
a single-frame stand-in of the source header and then given one frame per source frame: each frame's
derivation names its source frame (Referenced Frame Number), and a second dimension, the Temporal Position
Index, tells the frames apart. The references keep the source's real SOP class.

Both are written once every frame of their file is done (after the run's images; the masks read back from
the mask PNGs), and again whenever one of those frames is predicted anew. highdicom is imported on use:
without it ``--dicom-seg`` / ``--dicom-sr`` are refused in one line naming the extra, ``dlmi[dicom-seg]``.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlmi.atomic import write_atomic
from dlmi.datasets.segment_codes import Code, SegmentCodes
from dlmi.errors import DlmiError
from dlmi.inference.outputs import (
    CLASSIFY_MODE,
    OutputNameError,
    OutputWriteError,
    dicom_seg_path,
    dicom_sr_path,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dlmi.inference.predictor import Predictor

EXTRA = "pip install 'dlmi[dicom-seg]'"
PRIVATE_SCHEME = "99DLMI"  # dlmi's own coding scheme for the class names (the 99 prefix: a private scheme)
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9001, 9002
TEMPORAL_POSITION_INDEX = 0x00209128
FRAME_CONTENT_SEQUENCE = 0x00209111


def require_highdicom(option: str) -> Any:
    """The highdicom module; one line naming the extra when it is not installed."""
    try:
        import highdicom
    except ImportError:
        raise DlmiError(f"{option} needs highdicom, which is not installed here: {EXTRA}") from None
    return highdicom


def check_dicom_options(dicom_seg: bool, dicom_sr: bool, mode: str, classes: Sequence[str]) -> None:
    """Refuse, in one line, a DICOM output these models cannot give, or one without highdicom."""
    if dicom_seg:
        if mode == CLASSIFY_MODE:
            raise DlmiError("--dicom-seg writes the lesion mask as a DICOM Segmentation, and these models "
                            "hold only a classifier (no segmenter, so no mask); leave it out or add the "
                            "segmenter")
        require_highdicom("--dicom-seg")
    if dicom_sr:
        if not classes:
            raise DlmiError("--dicom-sr reports the predicted class and probabilities: it needs a classifier "
                            "(--aided, or a classifier alone in --models)")
        require_highdicom("--dicom-sr")


@dataclass(frozen=True)
class Algorithm:
    """What made the outputs: dlmi, its version, and the sha256 of each model file, by name."""

    version: str
    model_sha256: dict[str, str]
    name: str = "dlmi"

    def parameters(self) -> dict[str, str]:
        return {f"sha256 {name}": digest for name, digest in sorted(self.model_sha256.items())}


def algorithm_of(predictor: Predictor) -> Algorithm:
    from dlmi import __version__

    return Algorithm(__version__, dict(predictor.fingerprint().get("files") or {}))


def segment_codes_for(predictor: Predictor) -> SegmentCodes:
    """The segment's codes: an export folder's ``export.json`` ``segment``, else the dataset plugin's of the
    dataset the models name, else the generic default."""
    from dlmi.export.metadata import dataset_segment_codes, manifest_segment_codes

    folder = getattr(predictor, "folder", None)  # an export folder (onnxruntime)
    recorded = manifest_segment_codes(folder) if folder is not None else None
    return recorded if recorded is not None else dataset_segment_codes(predictor.info.dataset)


def _concept(hd: Any, code: Code) -> Any:
    return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])


def _family(hd: Any) -> Any:
    return hd.sr.CodedConcept(value="123110", scheme_designator="DCM", meaning="Artificial Intelligence")


def _source_header(path: Path) -> Dataset:
    from dlmi.dicom import read_header

    return read_header(path)


def _save(dataset: Any, path: Path) -> Path:
    """Write a DICOM dataset atomically; a name too long or a write error as dlmi's output errors."""
    try:
        return write_atomic(path, lambda handle: dataset.save_as(handle, enforce_file_format=True))
    except OSError as exc:
        error = OutputNameError if exc.errno == errno.ENAMETOOLONG else OutputWriteError
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from exc


# --- the Segmentation -------------------------------------------------------------------------------------


def _single_frame_stand_in(header: Dataset) -> Dataset:
    """The source header as a single-frame Secondary Capture image (same UIDs, patient and study), which
    highdicom builds a SEG from; the references are given the real SOP class and frames afterwards."""
    from pydicom.uid import SecondaryCaptureImageStorage

    stand_in = copy.deepcopy(header)
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "SharedFunctionalGroupsSequence",
                    "PerFrameFunctionalGroupsSequence"):
        if keyword in stand_in:
            delattr(stand_in, keyword)
    stand_in.SOPClassUID = SecondaryCaptureImageStorage
    return stand_in


def _set_reference_class(dataset: Dataset, instance_uid: str, sop_class: str) -> None:
    """Every reference to ``instance_uid`` in ``dataset`` (nested sequences too) names ``sop_class``."""
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                if item.get("ReferencedSOPInstanceUID") == instance_uid:
                    item.ReferencedSOPClassUID = sop_class
                _set_reference_class(item, instance_uid, sop_class)


def _one_frame_per_source_frame(seg: Any, masks: np.ndarray) -> None:
    """Give a SEG built from one frame a frame per source frame: each derived from its source frame, told
    apart by a Temporal Position Index dimension, the pixels bit-packed frame after frame."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import pack_bits

    frames = len(masks)
    first = seg.PerFrameFunctionalGroupsSequence[0]
    if frames > 1:
        dimension = Dataset()
        dimension.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
        dimension.DimensionIndexPointer = TEMPORAL_POSITION_INDEX
        dimension.FunctionalGroupPointer = FRAME_CONTENT_SEQUENCE
        dimension.DimensionDescriptionLabel = "Temporal Position Index"
        seg.DimensionIndexSequence.append(dimension)
    items = []
    for number in range(1, frames + 1):
        item = copy.deepcopy(first)
        for derivation in item.DerivationImageSequence:
            for source in derivation.SourceImageSequence:
                source.ReferencedFrameNumber = number
        if frames > 1:
            content = item.FrameContentSequence[0]
            content.TemporalPositionIndex = number
            content.DimensionIndexValues = [1, number]
        items.append(item)
    seg.PerFrameFunctionalGroupsSequence = items
    seg.NumberOfFrames = frames
    seg.PixelData = pack_bits(masks.astype(np.uint8))


def build_seg(source: Path, masks: Sequence[np.ndarray], *, codes: SegmentCodes, algorithm: Algorithm) -> Any:
    """The SEG of ``masks`` (one bool (H, W) per source frame, in frame order) over the DICOM ``source``."""
    hd = require_highdicom("--dicom-seg")
    from pydicom.uid import generate_uid

    header = _source_header(source)
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    if stack.shape[1:] != (int(header.Rows), int(header.Columns)):
        raise DlmiError(f"{source}: its masks are {stack.shape[2]}x{stack.shape[1]} pixels but the image is "
                        f"{header.Columns}x{header.Rows}")
    native = "NumberOfFrames" not in header  # a single-frame IOD: highdicom references it as it is
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=_concept(hd, codes.category),
        segmented_property_type=_concept(hd, codes.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=_family(hd), version=algorithm.version,
            parameters=algorithm.parameters() or None),
        anatomic_regions=[_concept(hd, codes.region)] if codes.region is not None else None,
    )
    seg = hd.seg.Segmentation(
        source_images=[header if native else _single_frame_stand_in(header)],
        pixel_array=stack if native else stack[:1],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="dlmi", manufacturer_model_name="dlmi", software_versions=algorithm.version,
        device_serial_number="none", content_label="LESION",
        content_description=f"dlmi {algorithm.version} lesion mask"[:64],
        omit_empty_frames=False,  # an empty (gated) mask is an empty segment, every frame kept
    )
    if not native:
        _set_reference_class(seg, header.SOPInstanceUID, header.SOPClassUID)
        _one_frame_per_source_frame(seg, stack)
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    if "PatientOrientation" not in seg and (shared is None or "PlaneOrientationSequence" not in shared):
        seg.PatientOrientation = header.get("PatientOrientation", "")  # type 2C without a plane orientation
    return seg


def write_seg(source: Path, masks: Sequence[np.ndarray], path: Path, *, codes: SegmentCodes,
              algorithm: Algorithm) -> Path:
    """Write the SEG of ``masks`` over ``source`` to ``path`` atomically (see :func:`build_seg`)."""
    return _save(build_seg(source, masks, codes=codes, algorithm=algorithm), path)


# --- the structured report --------------------------------------------------------------------------------


def _class_code(hd: Any, name: str) -> Any:
    return hd.sr.CodedConcept(value=name[:16], scheme_designator=PRIVATE_SCHEME, meaning=name[:64])


def build_sr(source: Path, records: Sequence[dict[str, Any]], *, algorithm: Algorithm) -> Any:
    """A Comprehensive SR of ``records`` (one per source frame, in frame order: ``class`` and
    ``probabilities``) over the DICOM ``source``: a measurement group per frame."""
    hd = require_highdicom("--dicom-sr")
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    header = _source_header(source)
    multi_frame = "NumberOfFrames" in header
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version,
        parameters=[f"{k}={v}" for k, v in algorithm.parameters().items()] or None)
    groups = []
    for number, record in enumerate(records, start=1):
        probabilities = record.get("probabilities") or {}
        measurements = [
            hd.sr.Measurement(
                name=hd.sr.CodedConcept(value=f"P-{name}"[:16], scheme_designator=PRIVATE_SCHEME,
                                        meaning=f"Probability of {name}"[:64]),
                value=float(probability), unit=codes.UCUM.NoUnits, algorithm_id=algorithm_id)
            for name, probability in probabilities.items()]
        finding = [hd.sr.QualitativeEvaluation(name=codes.DCM.Finding,
                                               value=_class_code(hd, record["class"]))]
        reference = hd.sr.SourceImageForMeasurementGroup.from_source_image(
            header, referenced_frame_numbers=[number] if multi_frame else None)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"frame {number}"),
            source_images=[reference], measurements=measurements, qualitative_evaluations=finding,
            algorithm_id=algorithm_id))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="dlmi", manufacturer_name="dlmi", model_name=algorithm.version))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    return hd.sr.ComprehensiveSR(
        evidence=[header], content=report, series_instance_uid=generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="dlmi",
        series_description="dlmi classification")


def write_sr(source: Path, records: Sequence[dict[str, Any]], path: Path, *, algorithm: Algorithm) -> Path:
    """Write the SR of ``records`` over ``source`` to ``path`` atomically (see :func:`build_sr`)."""
    return _save(build_sr(source, records, algorithm=algorithm), path)


# --- taking part in a folder's prediction -----------------------------------------------------------------


class DicomOutputs:
    """The DICOM outputs of one folder's prediction: dropped when a frame of their file is predicted anew,
    written for every DICOM file whose frames are all done and whose output is missing."""

    def __init__(self, folder: Path, out: Path, predictor: Predictor, *, seg: bool, sr: bool,
                 log: Callable[[str], None]) -> None:
        self.folder, self.out, self.seg, self.sr, self.log = folder, out, seg, sr, log
        self.codes = segment_codes_for(predictor) if seg else None
        self.algorithm = algorithm_of(predictor) if seg or sr else None

    def forget(self, pending: Sequence[Any]) -> None:
        """Delete the SEG and SR of the files with a frame to predict in this run: they would be stale."""
        for file in sorted({str(u.file) for u in pending if u.frame is not None}):
            for relative in (dicom_seg_path(file), dicom_sr_path(file)):
                (self.out / relative).unlink(missing_ok=True)

    def write_missing(self, units: Sequence[Any], records: dict[str, dict[str, Any]],
                      fail: Callable[[Any, str], None]) -> int:
        """Write the missing SEG / SR of every DICOM file whose frames all have records; a file that cannot
        have one is passed to ``fail`` with the reason. How many files were written."""
        if not (self.seg or self.sr):
            return 0
        by_file: dict[Any, list[Any]] = {}
        others = set()
        for unit in units:
            if unit.frame is None:
                others.add(unit.file)
            else:
                by_file.setdefault(unit.file, []).append(unit)
        if others:
            options = " / ".join(o for o, on in (("--dicom-seg", self.seg), ("--dicom-sr", self.sr)) if on)
            self.log(f"{options}: {len(others)} input file(s) are not DICOM; nothing DICOM is written for "
                     "them (their masks and tables are)")
        written = 0
        for file, frames in by_file.items():
            done = [records.get(u.key) for u in sorted(frames, key=lambda u: u.frame)]
            if any(r is None for r in done):
                continue  # a frame failed: its file gets no DICOM output
            try:
                written += self._write_file(file, done)
            except OutputNameError as exc:
                fail(file, str(exc))
            except OutputWriteError:
                raise
            except DlmiError as exc:
                fail(file, str(exc))
            except Exception as exc:  # highdicom refusing this source's header: this file only
                fail(file, f"{self.folder / file}: cannot write its DICOM output ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:200]})")
        return written

    def _write_file(self, file: Any, records: list[dict[str, Any]]) -> int:
        from dlmi.imageio import read_mask

        source = self.folder / file
        written = 0
        assert self.algorithm is not None
        seg_file = self.out / dicom_seg_path(str(file))
        if self.seg and not seg_file.is_file():
            assert self.codes is not None
            masks = [read_mask([self.out / r["mask"]]) for r in records]
            write_seg(source, masks, seg_file, codes=self.codes, algorithm=self.algorithm)
            written = 1
        sr_file = self.out / dicom_sr_path(str(file))
        if self.sr and not sr_file.is_file():
            write_sr(source, records, sr_file, algorithm=self.algorithm)
            written = 1
        return written
