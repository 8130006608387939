"""What a dataset holds, per class: image and mask counts and the range of image sizes.

File-backed samples are measured from file headers only (no pixel decoding), so summarising BUSI's 1,421
files takes well under a second; generated samples (no image file) are generated to be measured. Mask files
whose size differs from their image, and unreadable files, are collected as problems rather than stopping
at the first one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dlmi.datasets.base import DatasetSource, Sample, list_samples, load_sample
from dlmi.errors import DlmiError
from dlmi.imageio import image_size


@dataclass
class ClassSummary:
    """One class; ``masks`` counts images with a mask (a file, or generated), ``mask_files`` the files."""

    name: str
    images: int = 0
    masks: int = 0
    mask_files: int = 0
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None

    def add_size(self, width: int, height: int) -> None:
        self.min_width = width if self.min_width is None else min(self.min_width, width)
        self.max_width = width if self.max_width is None else max(self.max_width, width)
        self.min_height = height if self.min_height is None else min(self.min_height, height)
        self.max_height = height if self.max_height is None else max(self.max_height, height)

    def merge(self, other: ClassSummary) -> None:
        self.images += other.images
        self.masks += other.masks
        self.mask_files += other.mask_files
        if other.min_width is not None:
            self.add_size(other.min_width, other.min_height)  # type: ignore[arg-type]
            self.add_size(other.max_width, other.max_height)  # type: ignore[arg-type]


@dataclass
class DatasetSummary:
    """Per-class counts and sizes of one dataset, plus the problems found while measuring it."""

    dataset: str
    data_dir: str | None
    classes: list[ClassSummary]
    normal_class: str | None
    has_masks: bool
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> ClassSummary:
        total = ClassSummary("total")
        for summary in self.classes:
            total.merge(summary)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "normal_class": self.normal_class,
            "has_masks": self.has_masks,
            "classes": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.classes},
            "total": {k: v for k, v in asdict(self.total).items() if k != "name"},
            "problems": list(self.problems),
        }


def _measure_files(sample: Sample, summary: ClassSummary, problems: list[str]) -> None:
    assert sample.image_path is not None
    try:
        width, height = image_size(sample.image_path)
    except DlmiError as exc:
        problems.append(str(exc))
        return
    summary.images += 1
    summary.add_size(width, height)
    if sample.mask_paths:
        summary.masks += 1
        summary.mask_files += len(sample.mask_paths)
    for mask_path in sample.mask_paths:
        try:
            mask_width, mask_height = image_size(mask_path)
        except DlmiError as exc:
            problems.append(str(exc))
            continue
        if (mask_width, mask_height) != (width, height):
            problems.append(
                f"{mask_path}: mask is {mask_width}x{mask_height} but its image is {width}x{height}"
            )


def _measure_generated(source: DatasetSource, sample: Sample, summary: ClassSummary) -> None:
    image, mask = load_sample(source, sample)
    summary.images += 1
    summary.add_size(image.shape[1], image.shape[0])
    if mask is not None:
        summary.masks += 1


def summarize(source: DatasetSource, data_dir: Path | None = None) -> DatasetSummary:
    """Count and measure every sample of ``source`` (a layout error is raised, a bad file is a problem)."""
    samples = list_samples(source, data_dir)
    per_class = [ClassSummary(name) for name in source.classes]
    problems: list[str] = []
    for sample in samples:
        summary = per_class[sample.label]
        if sample.image_path is not None:
            _measure_files(sample, summary, problems)
        else:
            _measure_generated(source, sample, summary)
    return DatasetSummary(
        dataset=source.name,
        data_dir=str(data_dir) if data_dir is not None and source.needs_data_dir else None,
        classes=per_class,
        normal_class=source.normal_class,
        has_masks=source.has_masks,
        problems=problems,
    )
