"""BUSI breast ultrasound (Kaggle ``Dataset_BUSI_with_GT``), registered as ``busi``.

Layout: ``DIR/{normal,benign,malignant}/NAME.png`` with the lesion mask ``NAME_mask.png`` and, for some
lesions, further masks ``NAME_mask_1.png``, ``NAME_mask_2.png`` … that are OR-merged into one. Images and
masks may be PNG, JPEG, BMP, TIFF or DICOM (``NAME.dcm``, or a DICOM file without a suffix or named by its
UID, such as a PACS export writes) in any mix; a DICOM image must have one frame.

Labels: 0 normal, 1 benign, 2 malignant — the "no finding" class first, then by severity, so label 0 is
what the classifier's normal gate tests and a larger label is a worse finding. Normal images have empty
masks (with or without an all-black mask file). ``samples()`` checks, from the folder listing alone, that
every benign and malignant image has a mask file and that no mask lacks its image; a mask whose size
differs from its image is found when the sample is loaded, and by ``dlmi data summary``.
"""

from __future__ import annotations

import re
from pathlib import Path

from dlmi.datasets.base import FileDataset, Sample
from dlmi.datasets.folders import class_folders, image_files, natural_key
from dlmi.datasets.segment_codes import BREAST, SegmentCodes
from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl
from dlmi.imageio import image_stem

_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


class BusiDataset(FileDataset):
    """BUSI breast ultrasound: normal / benign / malignant, with lesion masks."""

    name = "busi"
    classes = ("normal", "benign", "malignant")
    normal_class = "normal"
    has_masks = True
    segment = SegmentCodes(region=BREAST)  # a DICOM SEG's lesion: a mass in the breast
    needs_data_dir = True
    expected_layout = (
        "DIR/{normal,benign,malignant}/NAME.png (or .jpg, .dcm, DICOM) with its mask NAME_mask.png (plus "
        "NAME_mask_1.png ... merged), as in Kaggle's Dataset_BUSI_with_GT"
    )

    def samples(self, data_dir: Path | None) -> list[Sample]:
        data_dir = self.check_data_dir(data_dir)
        folders = class_folders(data_dir, self.name, self.classes, self.expected_layout)
        samples: list[Sample] = []
        for label, class_name in enumerate(self.classes):
            samples += self._class_samples(class_name, label, folders[class_name])
        return samples

    def _class_samples(self, class_name: str, label: int, folder: Path) -> list[Sample]:
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in image_files(folder):
            stem = image_stem(path)
            match = _MASK.match(stem)
            if match:
                k = int(match["k"]) if match["k"] is not None else -1
                masks.setdefault(match["stem"], []).append((k, path))
                continue
            if stem in images:
                raise DlmiError(
                    f"{path}: two images named {stem!r} ({images[stem].name} and {path.name}); "
                    f"their masks would be ambiguous; {self.name} expects {self.expected_layout}"
                )
            images[stem] = path
        for stem, found in masks.items():
            if stem not in images:
                raise DlmiError(
                    f"{found[0][1]}: mask without an image {stem}.png (or .jpg, .dcm, ...) in {folder}; "
                    f"{self.name} expects {self.expected_layout}"
                )
        samples = []
        for stem, image_path in sorted(images.items(), key=lambda item: natural_key(item[1].name)):
            mask_paths = tuple(path for _, path in sorted(masks.get(stem, []), key=lambda m: m[0]))
            if not mask_paths and class_name != self.normal_class:
                raise DlmiError(
                    f"{image_path}: no mask file {stem}_mask.png for this {class_name} image; "
                    f"{self.name} expects {self.expected_layout}"
                )
            samples.append(Sample(f"{class_name}/{image_path.name}", label, image_path, mask_paths))
        if not samples:
            raise DlmiError(
                f"{folder}: only mask files, no images; {self.name} expects {self.expected_layout}"
            )
        return samples


@hookimpl
def dlmi_register_datasets(register) -> None:
    register(
        "busi",
        BusiDataset,
        description="Breast ultrasound (Kaggle Dataset_BUSI_with_GT): normal/benign/malignant + lesion masks",
    )
