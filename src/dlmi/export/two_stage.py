"""The classifier-aided two-stage pipeline as one module: classify, segment, and gate where *normal*.

The same module is exported as ``two_stage.onnx`` and run by ``dlmi predict --backend torch``, so the
PyTorch and ONNX pipelines are one definition. The gate is :func:`dlmi.gating.gate_logits` — the same
function aided training and evaluation use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlmi.gating import gate_logits, is_normal


class TwoStage(nn.Module):
    """(N,1,S,S) image in 0–1 at the segmenter's size → ``class_probs`` (N,K), ``mask_probs`` (N,1,S,S),
    ``gated`` (N,) bool.

    The classifier sees the image resized (bilinear, antialiased — as in aided training) to its own size
    when that differs from the segmenter's. ``mask_probs`` is exactly 0 where ``gated`` (the classifier's
    arg-max is the normal class).
    """

    output_names = ("class_probs", "mask_probs", "gated")

    def __init__(
        self,
        classifier: nn.Module,
        segmenter: nn.Module,
        *,
        normal_index: int,
        classifier_size: int,
        segmenter_size: int,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.segmenter = segmenter
        self.normal_index = int(normal_index)
        self.classifier_size = int(classifier_size)
        self.segmenter_size = int(segmenter_size)

    def classifier_input(self, image: torch.Tensor) -> torch.Tensor:
        if self.classifier_size == self.segmenter_size:
            return image
        size = (self.classifier_size, self.classifier_size)
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        class_logits = self.classifier(self.classifier_input(image)).float()
        gated = is_normal(class_logits, self.normal_index)
        seg_logits = gate_logits(self.segmenter(image).float(), gated)
        return torch.softmax(class_logits, dim=1), torch.sigmoid(seg_logits), gated
