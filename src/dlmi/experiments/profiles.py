"""Reproduction profiles: the image sizes, widths and epochs one ``dlmi reproduce`` run uses.

``gpu`` follows the seed (512², U-Net base 64); ``cpu`` is sized to finish within an hour on a 2-core
machine; ``tiny`` exists for the tests (a minute on generated data).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dlmi.errors import DlmiError


@dataclass(frozen=True)
class Profile:
    """Every setting a reproduction run depends on besides the data."""

    name: str
    description: str
    classifier_image_size: int
    classifier_epochs: int
    classifier_batch_size: int
    segmenter_image_size: int
    segmenter_base_channels: int
    segmenter_epochs: int
    segmenter_batch_size: int
    threads: int | None
    device: str = "auto"
    improved: bool = True
    improved_classifier_epochs: int | None = None
    improved_segmenter_epochs: int | None = None
    resamples: int = 2000
    busi_copy_size: int | None = None
    eval_batch_size: int = 16
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "gpu": Profile(
        name="gpu",
        description="the seed's settings: 512² inputs, U-Net base 64, seed-like epochs (needs a GPU)",
        classifier_image_size=512, classifier_epochs=30, classifier_batch_size=16,
        segmenter_image_size=512, segmenter_base_channels=64, segmenter_epochs=30, segmenter_batch_size=8,
        threads=None, device="auto", improved=True,
        improved_classifier_epochs=40, improved_segmenter_epochs=40,
    ),
    "cpu": Profile(
        name="cpu",
        description="sized for under an hour on a 2-core CPU: classifier and U-Net at 128², U-Net base 8; "
                    "BUSI read from a copy resized once to 128 px",
        classifier_image_size=128, classifier_epochs=20, classifier_batch_size=16,
        segmenter_image_size=128, segmenter_base_channels=8, segmenter_epochs=12, segmenter_batch_size=8,
        threads=1, device="cpu", improved=True,
        improved_classifier_epochs=30, improved_segmenter_epochs=18, busi_copy_size=128,
    ),
    "tiny": Profile(
        name="tiny",
        description="for tests only: classifier 64² (the seed CNN's smallest), U-Net 32² base 4, one epoch",
        classifier_image_size=64, classifier_epochs=1, classifier_batch_size=8,
        segmenter_image_size=32, segmenter_base_channels=4, segmenter_epochs=1, segmenter_batch_size=8,
        threads=1, device="cpu", improved=True, improved_classifier_epochs=1, improved_segmenter_epochs=1,
        resamples=200, busi_copy_size=64,
    ),
}


def get_profile(name: str, **overrides: Any) -> Profile:
    """The named profile, with any field replaced by a non-``None`` override."""
    if name not in PROFILES:
        raise DlmiError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise DlmiError(f"unknown profile settings {', '.join(unknown)}")
    return dataclasses.replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})
