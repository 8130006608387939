"""Running trained models over one side of a split: batched, eval mode, ``torch.inference_mode()``.

The evaluated masks are at the segmenter's input size: each true mask is resized to it (nearest neighbour,
as in training) and compared with the prediction thresholded at the checkpoint's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dlmi.datasets.base import DatasetSource, Sample
from dlmi.datasets.loader import resize_image, resize_mask
from dlmi.errors import DlmiError
from dlmi.gating import is_normal


class EvalImages(Dataset):
    """Each sample's image at each size in ``sizes``, its mask at ``sizes[0]``, its label and index."""

    def __init__(self, source: DatasetSource, samples: Sequence[Sample], sizes: Sequence[int]) -> None:
        self.source = source
        self.samples = list(samples)
        self.sizes = list(dict.fromkeys(sizes))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.source.load(self.samples[index])
        first = self.sizes[0]
        mask = np.zeros((first, first), dtype=bool) if mask is None else resize_mask(mask, first)
        item: dict[str, Any] = {
            "mask": torch.from_numpy(mask.copy()),
            "label": torch.tensor(self.samples[index].label, dtype=torch.long),
            "index": index,
        }
        for size in self.sizes:
            resized = resize_image(image, size).astype(np.float32) / 255.0
            item[f"image{size}"] = torch.from_numpy(resized)[None]
        return item


@dataclass
class SidePredictions:
    """What the models said about one side's images (all arrays in sample order).

    ``masks``: bool (N, S, S) segmenter output thresholded (``None`` for a classifier run); ``true_masks``:
    bool (N, S, S); ``labels``: (N,) true classes; ``class_logits``: (N, K) of the classifier (the run itself
    or the aid), ``None`` without one; ``gated``: bool (N,) where the aid says normal (``None`` without aid).
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DlmiError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DlmiError(f"--device {device}: not a device name (auto, cpu, cuda or cuda:N)") from None


def _logit(probability: float) -> float:
    if not 0 < probability < 1:
        raise DlmiError(f"segmentation threshold must be between 0 and 1, got {probability}")
    return math.log(probability / (1 - probability))


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
    """Run the segmenter and/or the classifier (``dlmi.training.run.Trained``) over ``samples``.

    With both, the classifier is the aid: ``gated`` marks the images it calls normal.
    """
    if segmenter is None and classifier is None:
        raise ValueError("predict_side needs a segmenter or a classifier")
    device = torch.device(device)
    seg_size = segmenter.image_size if segmenter is not None else None
    cls_size = classifier.image_size if classifier is not None else None
    sizes = [s for s in (seg_size, cls_size) if s is not None]
    normal_index = classifier.normal_index if (classifier is not None and segmenter is not None) else None
    if segmenter is not None and classifier is not None and normal_index is None:
        raise DlmiError(f"{classifier.checkpoint}: the aid classifier has no normal class to gate with")
    seg_cut = _logit(segmenter.threshold) if segmenter is not None else 0.0

    labels: list[np.ndarray] = []
    true_masks: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    loader = DataLoader(EvalImages(source, samples, sizes), batch_size=batch_size, shuffle=False,
                        num_workers=workers)
    models = [t.model for t in (segmenter, classifier) if t is not None]
    for model in models:
        model.to(device).eval()
    with torch.inference_mode():
        for batch in loader:
            labels.append(batch["label"].numpy())
            true_masks.append(batch["mask"].numpy())
            if segmenter is not None:
                out = segmenter.model(batch[f"image{seg_size}"].to(device))
                masks.append((out[:, 0] > seg_cut).cpu().numpy())
            if classifier is not None:
                logits.append(classifier.model(batch[f"image{cls_size}"].to(device)).float().cpu().numpy())

    def cat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype=dtype)

    class_logits = None
    gated = None
    if classifier is not None:
        class_logits = cat(logits, (0, len(classifier.classes)), np.float32)
        if normal_index is not None:
            gated = is_normal(torch.from_numpy(class_logits), normal_index).numpy()
    size = sizes[0]
    return SidePredictions(
        samples=list(samples),
        labels=cat(labels, (0,), np.int64),
        true_masks=cat(true_masks, (0, size, size), bool) if segmenter is not None else None,
        masks=cat(masks, (0, size, size), bool) if segmenter is not None else None,
        class_logits=class_logits,
        gated=gated,
    )
