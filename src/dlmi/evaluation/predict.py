"""Running trained models over one side of a split: batched, eval mode, ``torch.inference_mode()``.

The evaluated masks are at the segmenter's input size: each true mask is resized to it (nearest neighbour,
as in training) and compared with the prediction thresholded at the checkpoint's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dlmi.datasets.base import DatasetSource, Sample
from dlmi.datasets.loader import EvalImages
from dlmi.errors import DlmiError


@dataclass
class SidePredictions:
    """What the models said about one side's images (all arrays in sample order).

    ``masks``: bool (N, S, S) segmenter output thresholded (``None`` for a classifier run); ``true_masks``:
    bool (N, S, S); ``labels``: (N,) true classes; ``class_logits``: (N, K) of the classifier (the run itself
    or the aid; before temperature scaling), ``None`` without one; ``gated``: bool (N,) where the aid says
    normal (``None`` without aid).
    """

    samples: list[Sample]
    labels: np.ndarray
    true_masks: np.ndarray | None
    masks: np.ndarray | None
    class_logits: np.ndarray | None
    gated: np.ndarray | None

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    def aided_masks(self) -> np.ndarray:
        """The segmenter's masks, emptied where the aid says normal (the seed's classifier-aided masks)."""
        if self.masks is None or self.gated is None:
            raise ValueError("aided masks need a segmenter and an aid")
        out = self.masks.copy()
        out[self.gated] = False
        return out


def _checked_threshold(probability: float) -> float:
    if not 0 < probability < 1:
        raise DlmiError(f"segmentation threshold must be between 0 and 1, got {probability}")
    return float(probability)


def predict_side(
    source: DatasetSource,
    samples: Sequence[Sample],
    *,
    segmenter: Any = None,
    classifier: Any = None,
    batch_size: int = 16,
    workers: int = 0,
    device: torch.device | str = "cpu",
) -> SidePredictions:
    """Run the segmenter and/or the classifier (``dlmi.runtime.trained.Trained``) over ``samples``.

    With both, the classifier is the aid: ``gated`` marks the images it calls normal. A joint segmenter
    (task ``joint``, or an ensemble of them) is its own aid. Aided runs go through the very pipeline module
    that ``two_stage.onnx`` is exported from (:mod:`dlmi.runtime.two_stage`): the image is read at the
    segmenter's size and the classifier sees it resized inside the module, exactly as in the shipped graph.
    """
    from dlmi.runtime.two_stage import build_pipeline

    if segmenter is None and classifier is None:
        raise ValueError("predict_side needs a segmenter or a classifier")
    device = torch.device(device)
    pipeline = build_pipeline(segmenter, classifier) if segmenter is not None else None
    if segmenter is not None and classifier is not None and pipeline is None:
        raise DlmiError(f"{classifier.checkpoint}: the aid classifier has no normal class to gate with")
    size = segmenter.image_size if segmenter is not None else classifier.image_size
    # The mask is its probability above the threshold, as ``dlmi predict`` cuts it (not the logit above the
    # threshold's logit: the two differ by float rounding on pixels at the threshold).
    seg_cut = _checked_threshold(segmenter.threshold) if segmenter is not None else 0.5
    classes = list(classifier.classes if classifier is not None else segmenter.classes)

    labels: list[np.ndarray] = []
    true_masks: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    gates: list[np.ndarray] = []
    loader = DataLoader(EvalImages(source, samples, size), batch_size=batch_size, shuffle=False,
                        num_workers=workers)
    module = pipeline if pipeline is not None else (segmenter or classifier).model
    module.to(device).eval()
    with torch.inference_mode():
        for batch in loader:
            labels.append(batch["label"].numpy())
            true_masks.append(batch["mask"].numpy())
            image = batch["image"].to(device)
            if pipeline is not None:
                class_logits, seg_logits = pipeline.parts(image)
                mask_probs = torch.sigmoid(seg_logits)
                # the gate sees the calibrated probabilities, as in every prediction path
                gates.append(pipeline.rule(pipeline.class_probs(class_logits), mask_probs).cpu().numpy())
                logits.append(class_logits.float().cpu().numpy())
                masks.append((mask_probs[:, 0] > seg_cut).cpu().numpy())
            elif segmenter is not None:
                masks.append((torch.sigmoid(module(image)[:, 0].float()) > seg_cut).cpu().numpy())
            else:
                logits.append(module(image).float().cpu().numpy())

    def cat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype=dtype)

    class_logits = cat(logits, (0, len(classes)), np.float32) if logits or pipeline or classifier else None
    gated = None
    if pipeline is not None:
        gated = cat(gates, (0,), bool)
    return SidePredictions(
        samples=list(samples),
        labels=cat(labels, (0,), np.int64),
        true_masks=cat(true_masks, (0, size, size), bool) if segmenter is not None else None,
        masks=cat(masks, (0, size, size), bool) if segmenter is not None else None,
        class_logits=class_logits,
        gated=gated,
    )
