"""Brain MRI tumour detection (Kaggle, N. Chakrabarty), registered as ``brain-mri``.

Layout: ``DIR/no/`` and ``DIR/yes/`` holding .jpg/.jpeg/.png/.bmp/.tif files in any letter case and any
colour mode, or single-frame DICOM files. Labels: 0 no (no tumour, the normal class), 1 yes. No masks.
"""

from __future__ import annotations

from pathlib import Path

from dlmi.datasets.base import FileDataset, Sample
from dlmi.datasets.folders import class_folders, image_files
from dlmi.hookspecs import hookimpl


class BrainMriDataset(FileDataset):
    """Brain MRI: tumour yes / no, classification only."""

    name = "brain-mri"
    classes = ("no", "yes")
    normal_class = "no"
    has_masks = False
    needs_data_dir = True
    expected_layout = "DIR/no/ and DIR/yes/ holding .jpg/.jpeg/.png/.bmp/.tif or DICOM images (no masks)"

    def samples(self, data_dir: Path | None) -> list[Sample]:
        data_dir = self.check_data_dir(data_dir)
        folders = class_folders(data_dir, self.name, self.classes, self.expected_layout)
        return [
            Sample(f"{class_name}/{path.name}", label, path)
            for label, class_name in enumerate(self.classes)
            for path in image_files(folders[class_name])
        ]


@hookimpl
def dlmi_register_datasets(register) -> None:
    register(
        "brain-mri",
        BrainMriDataset,
        description="Brain MRI tumour detection (Kaggle): no/yes folders, classification only",
    )
