"""The classifier-aided two-stage pipeline as one module: classify, segment, and gate where *normal*.

The same module is exported as ``two_stage.onnx``, run by ``dlmi predict --backend torch`` and by
``dlmi evaluate``, so the PyTorch, ONNX and evaluation pipelines are one definition. The gate is
:class:`dlmi.runtime.gating.Gate` — the rule tiled prediction and out-of-fold scoring apply too — emptying
the mask through :func:`dlmi.runtime.gating.gate_logits`, as aided training does; the classifier sees the
segmenter-sized image resized by :func:`classifier_input`, as in aided training.

Three pipelines share one interface, ``parts(image) -> (class_logits, seg_logits)`` (the segmenter's logits
before the gate) and ``forward(image) -> (class_probs, mask_probs, gated)``:

- :class:`TwoStage`: a separate classifier and U-Net (the seed's pipeline);
- :class:`JointPipeline`: one network with a segmentation and a classification output (``unet-mt``): the
  encoder runs once;
- an ensemble of joint networks (:class:`dlmi.runtime.ensemble.JointEnsemble`, the models of K
  cross-validation folds with flip test-time augmentation) is itself a joint network, so it runs as a
  :class:`JointPipeline` and exports as one graph.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlmi.runtime.gating import Gate, gate_logits

OUTPUT_NAMES = ("class_probs", "mask_probs", "gated")


def classifier_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """``image`` (N,1,H,W) resized to the classifier's S×S (bilinear, antialiased); unchanged when it fits."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class Pipeline(nn.Module):
    """Shared head of every pipeline: class logits and ungated mask logits → probabilities and the gate
    (:class:`dlmi.runtime.gating.Gate`, the one rule every path applies)."""

    output_names = OUTPUT_NAMES
    rule: Gate

    @property
    def normal_index(self) -> int:
        return self.rule.normal_index

    def parts(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (N,K), segmentation logits (N,1,H,W) before the gate), both float32."""
        raise NotImplementedError

    def outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class probs (N,K), mask probs (N,1,H,W) before the gate, gated (N,) bool)."""
        class_logits, seg_logits = self.parts(image)
        class_probs, mask_probs = torch.softmax(class_logits, dim=1), torch.sigmoid(seg_logits)
        return class_probs, mask_probs, self.rule(class_probs, mask_probs)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        class_logits, seg_logits = self.parts(image)
        class_probs = torch.softmax(class_logits, dim=1)
        gated = self.rule(class_probs, torch.sigmoid(seg_logits))
        return class_probs, torch.sigmoid(gate_logits(seg_logits, gated)), gated


class TwoStage(Pipeline):
    """(N,1,S,S) image in 0–1 at the segmenter's size → ``class_probs`` (N,K), ``mask_probs`` (N,1,S,S),
    ``gated`` (N,) bool. ``mask_probs`` is exactly 0 where ``gated`` (the classifier's arg-max is normal).
    """

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
        self.rule = Gate(int(normal_index))
        self.classifier_size = int(classifier_size)
        self.segmenter_size = int(segmenter_size)

    def classifier_input(self, image: torch.Tensor) -> torch.Tensor:
        return classifier_input(image, self.classifier_size)

    def parts(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        class_logits = self.classifier(self.classifier_input(image)).float()
        return class_logits, self.segmenter(image).float()


class JointPipeline(Pipeline):
    """A joint network ``model(image) -> (seg_logits, class_logits)``: its own class head is the gate.

    Two post-processing rules chosen on out-of-fold predictions, kept in the graph: with ``normal_threshold``
    an image is gated when its normal-class probability is at least that (instead of the arg-max being
    normal); with ``min_lesion_pixels`` > 0 it is also gated (called lesion-free) when fewer of its pixels
    than that pass ``threshold``.
    """

    def __init__(self, model: nn.Module, *, normal_index: int, min_lesion_pixels: int = 0,
                 threshold: float = 0.5, normal_threshold: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.rule = Gate(int(normal_index), None if normal_threshold is None else float(normal_threshold),
                         int(min_lesion_pixels), float(threshold))

    @property
    def min_lesion_pixels(self) -> int:
        return self.rule.min_lesion_pixels

    @property
    def normal_threshold(self) -> float | None:
        return self.rule.normal_threshold

    def parts(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg_logits, class_logits = self.model(image)
        return class_logits.float(), seg_logits.float()


def build_pipeline(segmenter: Any, classifier: Any = None) -> Pipeline | None:
    """The aided pipeline of trained models (:class:`dlmi.runtime.trained.Trained`), or ``None`` unaided.

    A joint segmenter (task ``joint``) gates with its own head; a plain segmenter needs a ``classifier``
    with a normal class (``None`` is returned without one).
    """
    if segmenter.task == "joint":
        if segmenter.normal_index is None:
            return None
        options = joint_pipeline_options(segmenter.meta, segmenter.normal_index)
        return JointPipeline(segmenter.model, **options)
    if classifier is None or classifier.normal_index is None:
        return None
    return TwoStage(classifier.model, segmenter.model, normal_index=classifier.normal_index,
                    classifier_size=classifier.image_size, segmenter_size=segmenter.image_size)


def joint_pipeline_options(meta: dict[str, Any], normal_index: int) -> dict[str, Any]:
    """A joint model's :class:`JointPipeline` settings from its metadata (the post-processing rules an
    ensemble's ``ensemble.json`` chose; defaults for a single run)."""
    rule = Gate.from_meta(meta, normal_index)
    return {"normal_index": rule.normal_index, "min_lesion_pixels": rule.min_lesion_pixels,
            "threshold": rule.threshold, "normal_threshold": rule.normal_threshold}


def pipeline_rule(segmenter: Any, classifier: Any = None) -> dict[str, Any]:
    """The post-processing of the masks that the pipeline of these trained models gives, JSON-able: the mask
    threshold and, aided, the gate (:class:`~dlmi.runtime.gating.Gate`), read from the models' metadata as
    every prediction path reads them, where they were chosen, and a ``note`` in words.

    This is dlmi's one post-processing: a fold ensemble's settings were chosen on out-of-fold predictions
    (``ensemble.json``); a single run predicts with its checkpoint's threshold and the arg-max gate.
    """
    pipeline = build_pipeline(segmenter, classifier)
    gate = pipeline.rule if pipeline is not None else None
    threshold = float(segmenter.threshold)
    chosen = (segmenter.meta.get("postprocess") or {}).get("selected_on")
    rule: dict[str, Any] = {
        "threshold": threshold,
        "min_lesion_pixels": gate.min_lesion_pixels if gate is not None else 0,
        "normal_threshold": gate.normal_threshold if gate is not None else None,
        "gate": None,
        "selected_on": chosen,
    }
    note = f"as dlmi predict applies it: a pixel is lesion where its probability > {threshold:g}"
    if gate is not None:
        gate_model = segmenter if segmenter.task == "joint" else classifier
        normal_name = gate_model.classes[gate.normal_index] if gate_model.classes else "normal"
        rule["gate"] = gate.describe(normal_name)
        note += f"; aided, the mask is emptied where {rule['gate']}"
    note += (f"; chosen on {chosen}" if chosen else
             "; the run's own settings (a single run chooses no post-processing after training)")
    rule["note"] = note
    return rule
