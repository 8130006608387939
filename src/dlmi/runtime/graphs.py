"""The modules that become ONNX graphs: a network plus its output head (logits → probabilities).

``AsHalf`` runs a network in float16 between float32 inputs and outputs, so an fp16 export keeps the
same interface (and preprocessing) as the fp32 one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ClassifierGraph(nn.Module):
    """(N,1,S,S) image in 0–1 → ``logits`` (N,K), ``probs`` (N,K): ``softmax(logits / temperature)``, the
    calibrated probabilities (:mod:`dlmi.runtime.calibration`), and ``uncertainty`` (N,): the spread of
    the votes' probability of the ``reference`` class (:func:`dlmi.runtime.uncertainty.probability_spread`;
    ``None``: the arg-max class)."""

    output_names = ("logits", "probs", "uncertainty")

    def __init__(self, classifier: nn.Module, *, temperature: float = 1.0,
                 reference: int | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.temperature = float(temperature)
        self.reference = None if reference is None else int(reference)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from dlmi.runtime.uncertainty import class_votes, probability_spread

        logits, votes, ensemble = class_votes(self.classifier, image)
        spread = probability_spread(votes, self.reference, self.temperature, ensemble)
        return logits, torch.softmax(logits / self.temperature, dim=1), spread


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

    @property
    def averages_members(self) -> bool:
        return bool(getattr(self.network, "averages_members", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.half()).float()

    def member_outputs(self, x: torch.Tensor) -> Any:
        """A wrapped ensemble's members' probabilities (float32)."""
        outputs = self.network.member_outputs(x.half())
        return outputs.float() if isinstance(outputs, torch.Tensor) else tuple(o.float() for o in outputs)


class JointOutput(nn.Module):
    """One output of a joint network ``m(x) -> (seg_logits, class_logits)``: ``index`` 0 the mask (as a
    segmenter), 1 the classes (as a classifier)."""

    MASK, CLASSES = 0, 1

    def __init__(self, joint: nn.Module, index: int) -> None:
        super().__init__()
        self.joint = joint
        self.index = int(index)

    @property
    def averages_members(self) -> bool:
        return bool(getattr(self.joint, "averages_members", False))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.joint(image)[self.index]

    def member_outputs(self, image: torch.Tensor) -> torch.Tensor:
        """A wrapped joint ensemble's members' probabilities of this output."""
        return self.joint.member_outputs(image)[self.index]
