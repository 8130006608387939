"""The modules that become ONNX graphs: a network plus its output head (logits → probabilities).

``AsHalf`` runs a network in float16 between float32 inputs and outputs, so an fp16 export keeps the
same interface (and preprocessing) as the fp32 one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ClassifierGraph(nn.Module):
    """(N,1,S,S) image in 0–1 → ``logits`` (N,K) and ``probs`` (N,K, softmax)."""

    output_names = ("logits", "probs")

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(image).float()
        return logits, torch.softmax(logits, dim=1)


class SegmenterGraph(nn.Module):
    """(N,1,H,W) image in 0–1 → ``logits`` (N,1,H,W) and ``probs`` (N,1,H,W, sigmoid)."""

    output_names = ("logits", "probs")

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.segmenter(image).float()
        return logits, torch.sigmoid(logits)


class AsHalf(nn.Module):
    """A float16 copy of ``network``: float32 input cast to half, its output cast back to float32."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(network).half().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.half()).float()


class JointOutput(nn.Module):
    """One output of a joint network ``m(x) -> (seg_logits, class_logits)``: ``index`` 0 the mask (as a
    segmenter), 1 the classes (as a classifier)."""

    MASK, CLASSES = 0, 1

    def __init__(self, joint: nn.Module, index: int) -> None:
        super().__init__()
        self.joint = joint
        self.index = int(index)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.joint(image)[self.index]
