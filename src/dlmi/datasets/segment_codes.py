"""What a dataset's lesion masks show, as coded concepts: the segment of a DICOM Segmentation.

A dataset plugin may declare ``segment`` (a :class:`SegmentCodes`) on its source class; BUSI declares the
anatomic region Breast. Without one, :data:`DEFAULT_SEGMENT_CODES` holds: category *Morphologically
Abnormal Structure* (SCT 49755003), type *Mass* (SCT 4147007), no anatomic region. Each concept is a
``(code value, coding scheme designator, code meaning)`` triple, as DICOM codes them (the values agree with
``pydicom.sr.codedict.codes.SCT``). Export writes them into ``export.json`` as ``segment``
(:meth:`SegmentCodes.to_json`); ``dlmi predict --dicom-seg`` reads them back from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlmi.errors import DlmiError

Code = tuple[str, str, str]  # (code value, coding scheme designator, code meaning)

MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = ("49755003", "SCT", "Morphologically Abnormal Structure")
MASS: Code = ("4147007", "SCT", "Mass")
BREAST: Code = ("76752008", "SCT", "Breast")


@dataclass(frozen=True)
class SegmentCodes:
    """The segment's property category and type, and the anatomic region (``None``: not stated)."""

    category: Code = MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    type: Code = MASS
    region: Code | None = None

    def to_json(self) -> dict[str, Any]:
        return {"category": list(self.category), "type": list(self.type),
                "region": list(self.region) if self.region is not None else None}

    @classmethod
    def from_json(cls, data: Any, where: str) -> SegmentCodes:
        """The codes of an ``export.json``'s ``segment``; one line naming ``where`` when malformed."""
        if not isinstance(data, dict):
            raise DlmiError(f"{where}: 'segment' must be an object of category, type and region codes")
        return cls(_code(data.get("category"), "category", where), _code(data.get("type"), "type", where),
                   None if data.get("region") is None else _code(data.get("region"), "region", where))


DEFAULT_SEGMENT_CODES = SegmentCodes()


def _code(value: Any, name: str, where: str) -> Code:
    if (not isinstance(value, list | tuple) or len(value) != 3
            or not all(isinstance(part, str) and part for part in value)):
        raise DlmiError(f"{where}: segment {name} must be [code value, coding scheme, code meaning], "
                        f"got {value!r:.80}")
    return (value[0], value[1], value[2])


def segment_codes_of(source: Any, where: str) -> SegmentCodes:
    """A dataset source's ``segment`` (checked), or the default when it declares none."""
    declared = getattr(source, "segment", None)
    if declared is None:
        return DEFAULT_SEGMENT_CODES
    if not isinstance(declared, SegmentCodes):
        raise DlmiError(f"{where}: .segment must be a dlmi.datasets.segment_codes.SegmentCodes, "
                        f"got {type(declared).__name__}")
    return SegmentCodes.from_json(declared.to_json(), where)
