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

from dlmi.runtime.calibration import temperature_of
from dlmi.runtime.gating import Gate, gate_logits

# The first three are the graph's outputs since its first version; the per-image uncertainty
# (:mod:`dlmi.runtime.uncertainty`) came after them, so a consumer that reads the first three still works.
BASE_OUTPUTS = ("class_probs", "mask_probs", "gated")
OUTPUT_NAMES = (*BASE_OUTPUTS, "uncertainty", "mask_disagreement")


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
    temperature: float = 1.0  # the class head's (dlmi.runtime.calibration): class probs softmax(logits / T)

    @property
    def normal_index(self) -> int:
        return self.rule.normal_index

    def parts(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (N,K), segmentation logits (N,1,H,W) before the gate), both float32."""
        raise NotImplementedError

    def votes(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                  bool]:
        """:meth:`parts` and the votes behind them (:mod:`dlmi.runtime.uncertainty`): (class logits, seg
        logits, class votes (V,N,K), mask votes (V',N,1,H,W), whether the class votes are ensemble
        members)."""
        raise NotImplementedError

    def class_probs(self, class_logits: torch.Tensor) -> torch.Tensor:
        """The calibrated class probabilities, ``softmax(class_logits / T)``: what the gate and users see."""
        return torch.softmax(class_logits / self.temperature, dim=1)

    def outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class probs (N,K), mask probs (N,1,H,W) before the gate, gated (N,) bool)."""
        class_logits, seg_logits = self.parts(image)
        class_probs, mask_probs = self.class_probs(class_logits), torch.sigmoid(seg_logits)
        return class_probs, mask_probs, self.rule(class_probs, mask_probs)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:data:`OUTPUT_NAMES`: class probs, gated mask probs, gated, uncertainty (N,), mask disagreement
        (N,)."""
        from dlmi.runtime.uncertainty import mask_disagreement, probability_spread

        class_logits, seg_logits, class_votes, mask_votes, ensemble = self.votes(image)
        class_probs = self.class_probs(class_logits)
        gated = self.rule(class_probs, torch.sigmoid(seg_logits))
        return (class_probs, torch.sigmoid(gate_logits(seg_logits, gated)), gated,
                probability_spread(class_votes, self.normal_index, self.temperature, ensemble),
                mask_disagreement(mask_votes, self.rule.threshold))


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
        threshold: float = 0.5,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.segmenter = segmenter
        # The threshold matters to the gate only with a smallest lesion (none here); the masks whose
        # disagreement ``mask_disagreement`` measures are cut at it.
        self.rule = Gate(int(normal_index), threshold=float(threshold))
        self.classifier_size = int(classifier_size)
        self.segmenter_size = int(segmenter_size)
        self.temperature = float(temperature)

    def classifier_input(self, image: torch.Tensor) -> torch.Tensor:
        return classifier_input(image, self.classifier_size)

    def parts(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        class_logits = self.classifier(self.classifier_input(image)).float()
        return class_logits, self.segmenter(image).float()

    def votes(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                  bool]:
        from dlmi.runtime.uncertainty import class_votes, mask_votes

        class_logits, classes, ensemble = class_votes(self.classifier, self.classifier_input(image))
        seg_logits, masks = mask_votes(self.segmenter, image)
        return class_logits, seg_logits, classes, masks, ensemble


class JointPipeline(Pipeline):
    """A joint network ``model(image) -> (seg_logits, class_logits)``: its own class head is the gate.

    Two post-processing rules chosen on out-of-fold predictions, kept in the graph: with ``normal_threshold``
    an image is gated when its normal-class probability is at least that (instead of the arg-max being
    normal); with ``min_lesion_pixels`` > 0 it is also gated (called lesion-free) when fewer of its pixels
    than that pass ``threshold``.
    """

    def __init__(self, model: nn.Module, *, normal_index: int, min_lesion_pixels: int = 0,
                 threshold: float = 0.5, normal_threshold: float | None = None,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
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

    def votes(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                  bool]:
        from dlmi.runtime.uncertainty import joint_votes

        seg_logits, class_logits, masks, classes, ensemble = joint_votes(self.model, image)
        return class_logits, seg_logits, classes, masks, ensemble


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
                    classifier_size=classifier.image_size, segmenter_size=segmenter.image_size,
                    threshold=segmenter.threshold, temperature=temperature_of(classifier.meta))


def joint_pipeline_options(meta: dict[str, Any], normal_index: int) -> dict[str, Any]:
    """A joint model's :class:`JointPipeline` settings from its metadata (the post-processing rules an
    ensemble's ``ensemble.json`` chose; defaults for a single run) and its temperature."""
    rule = Gate.from_meta(meta, normal_index)
    return {"normal_index": rule.normal_index, "min_lesion_pixels": rule.min_lesion_pixels,
            "threshold": rule.threshold, "normal_threshold": rule.normal_threshold,
            "temperature": temperature_of(meta)}


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
