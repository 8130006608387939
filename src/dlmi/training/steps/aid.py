"""Classifier-aided segmentation: a frozen classifier's *normal* verdict gates the U-Net's output.

As the seed describes: the trained classifier predicts each image's class; where it says *normal*, the
U-Net's output is replaced by an empty mask (:func:`dlmi.runtime.gating.gate_logits`), so that image gives
the U-Net no gradient during training and an empty prediction at evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dlmi.errors import DlmiError
from dlmi.runtime.gating import gate_logits, is_normal
from dlmi.runtime.trained import Trained, load_trained
from dlmi.runtime.two_stage import classifier_input


class ClassifierGate:
    """``gate(images) -> bool (N,)``: True where the frozen classifier predicts the normal class.

    Images are resized to the classifier's own size by :func:`dlmi.runtime.two_stage.classifier_input`,
    as in the exported two-stage graph and in evaluation.
    """

    def __init__(self, trained: Trained, device: torch.device | str = "cpu") -> None:
        if trained.task != "classification":
            raise DlmiError(
                f"{trained.checkpoint}: --aid needs a classifier run, this one is a {trained.task} run"
            )
        normal_index = trained.normal_index
        if normal_index is None:
            raise DlmiError(f"{trained.checkpoint}: the classifier's dataset has no normal class to gate on")
        self.trained = trained
        self.normal_index = normal_index
        self.image_size = trained.image_size
        self.classifier = trained.model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(classifier_input(images, self.image_size))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return is_normal(self.class_logits(images), self.normal_index)

    def apply(self, seg_logits: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gated logits, gated flags) for a batch of images and the U-Net's logits on them."""
        gated = self(images)
        return gate_logits(seg_logits, gated), gated


def load_aid(
    path: str | os.PathLike[str], dataset: str, device: torch.device | str = "cpu"
) -> ClassifierGate:
    """The classifier of run ``path`` as a gate; it must have been trained on ``dataset`` (its classes)."""
    from dlmi.plugins import get_dataset
    from dlmi.runtime.pairing import check_pair

    trained = load_trained(path, map_location="cpu")
    source = get_dataset(dataset)
    check_pair(trained.meta, {"dataset": dataset, "classes": list(source.classes),
                              "normal_class": source.normal_class},
               classifier_name=f"--aid {trained.checkpoint}", segmenter_name=f"of dataset {dataset!r}")
    return ClassifierGate(trained, device=device)


def aid_split_path(gate: ClassifierGate) -> Path:
    """The split file of the aid classifier's run folder (a bare ``.pt`` file has none: an error)."""
    run_dir = gate.trained.run_dir
    if run_dir is None or not (run_dir / "split.json").is_file():
        raise DlmiError(
            f"{gate.trained.checkpoint}: --aid needs the classifier's run folder (with its split.json) "
            "so the segmenter can be checked to use the same split"
        )
    return run_dir / "split.json"
