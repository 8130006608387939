"""The gate: where the model says *normal*, the segmentation is an empty mask. The one implementation.

The rule (:class:`Gate`): an image is gated when its class probabilities say normal — the arg-max class is
the normal class, or, with a ``normal_threshold`` (chosen on an ensemble's out-of-fold predictions and kept
in ``ensemble.json`` and the export's metadata), the normal class's probability is at least that — or, with
``min_lesion_pixels`` > 0, when fewer of its pixels than that have a mask probability above ``threshold``.

The functions take torch tensors and numpy arrays alike (only ``argmax(1)``, indexing, comparisons and
``sum`` over the non-batch axes, which both spell the same), so the exported graph, PyTorch prediction and
evaluation (tensors), and out-of-fold scoring and tiled prediction (arrays) run the same code. Aided
training uses :func:`gate_logits` the same way (a gated image's output is a constant: no gradient).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:  # torch is imported where a tensor is made: ONNX prediction (numpy) runs without it
    import torch

# A logit whose sigmoid is 0 in fp32 and fp16 alike, and which fits in fp16 (max 65504).
EMPTY_LOGIT = -1.0e4

Array = TypeVar("Array", "torch.Tensor", np.ndarray)


def says_normal(class_probs: Array, normal_index: int, normal_threshold: float | None = None) -> Array:
    """Bool (N,) from class probabilities (N,K): the arg-max class is ``normal_index``, or with
    ``normal_threshold`` the normal class's probability is at least that."""
    if normal_threshold is None:
        return class_probs.argmax(1) == normal_index
    return class_probs[:, normal_index] >= normal_threshold


def lesion_pixels(mask_probs: Array, threshold: float) -> Array:
    """Int (N,): the pixels of each (N,…) probability map above ``threshold``."""
    above = mask_probs > threshold
    return above.sum(axis=tuple(range(1, above.ndim)))


def is_normal(class_logits: torch.Tensor, normal_index: int) -> torch.Tensor:
    """Bool (N,) — the arg-max class of the logits is the normal class (the same as of their softmax)."""
    import torch

    return says_normal(torch.softmax(class_logits.float(), dim=1), normal_index)


@dataclass(frozen=True)
class Gate:
    """The gate's settings: the normal class, the rule that says normal, the smallest lesion, the mask's
    probability threshold (for the lesion size)."""

    normal_index: int
    normal_threshold: float | None = None
    min_lesion_pixels: int = 0
    threshold: float = 0.5

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], normal_index: int) -> Gate:
        """The gate a model's metadata (a checkpoint's ``meta``, an ensemble's, an export's) describes."""
        normal_threshold = meta.get("normal_threshold")
        return cls(normal_index=int(normal_index),
                   normal_threshold=None if normal_threshold is None else float(normal_threshold),
                   min_lesion_pixels=int(meta.get("min_lesion_pixels") or 0),
                   threshold=float(meta.get("threshold", 0.5)))

    def scaled_min_pixels(self, pixels: int, model_pixels: int) -> int:
        """``min_lesion_pixels`` (counted at the model's ``model_pixels``) for a mask of ``pixels``: the same
        fraction of the image (tiled prediction works at the image's own size)."""
        if self.min_lesion_pixels <= 0 or pixels == model_pixels:
            return self.min_lesion_pixels
        return int(math.ceil(self.min_lesion_pixels * pixels / float(model_pixels)))

    def describe(self, class_name: str = "normal") -> str:
        """The rule in words, e.g. ``P(normal) ≥ 0.3, or fewer than 16 pixels above 0.7``."""
        said = (f"P({class_name}) ≥ {self.normal_threshold:g}" if self.normal_threshold is not None
                else f"the arg-max class is {class_name}")
        if self.min_lesion_pixels > 0:
            said += f", or fewer than {self.min_lesion_pixels} pixels above {self.threshold:g}"
        return said

    def margin(self, class_probs: np.ndarray) -> np.ndarray:
        """Float (N,): how far each image's class probabilities are from switching the classifier's part of
        the gate — ``P(normal) − normal_threshold``, or under the arg-max rule ``P(normal) −`` the largest
        other class's probability. Positive says normal (gated), negative not; the smallest-lesion part is
        not measured here."""
        probs = np.asarray(class_probs, dtype=np.float64)
        normal = probs[:, self.normal_index]
        if self.normal_threshold is not None:
            return normal - self.normal_threshold
        others = np.delete(probs, self.normal_index, axis=1)
        return normal - (others.max(axis=1) if others.shape[1] else 0.0)

    def __call__(self, class_probs: Array, mask_probs: Array | None = None, *,
                 min_lesion_pixels: int | None = None) -> Array:
        """Bool (N,): the images whose mask is emptied. ``mask_probs`` (N,…) is needed only with a
        smallest lesion; ``min_lesion_pixels`` overrides it (see :meth:`scaled_min_pixels`)."""
        gated = says_normal(class_probs, self.normal_index, self.normal_threshold)
        smallest = self.min_lesion_pixels if min_lesion_pixels is None else int(min_lesion_pixels)
        if smallest > 0:
            if mask_probs is None:
                raise ValueError("a gate with a smallest lesion needs the mask probabilities")
            gated = gated | (lesion_pixels(mask_probs, self.threshold) < smallest)
        return gated


def gate_logits(seg_logits: torch.Tensor, gated: torch.Tensor) -> torch.Tensor:
    """Replace the (N,1,H,W) logits of gated images by :data:`EMPTY_LOGIT` (a constant: no gradient flows)."""
    import torch

    mask = gated.view(-1, *([1] * (seg_logits.dim() - 1)))
    return torch.where(mask, torch.full_like(seg_logits, EMPTY_LOGIT), seg_logits)
