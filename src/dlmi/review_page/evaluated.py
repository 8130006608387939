"""The review page of an evaluated side (``dlmi evaluate RUN`` writes ``RUN/review-test.html``).

The rows come from the evaluator's own predictions (the masks it scored, at the segmenter's input size, the
true masks resized to it with nearest-neighbour sampling, as evaluation does); the true class is the split's
label. The image panels show the image resized to that size (bilinear), so every panel lines up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dlmi.datasets.base import load_sample
from dlmi.digest import file_digest
from dlmi.metrics.segmentation import DICE_DEFINITION, EMPTY_MASK_RULE, IOU_DEFINITION
from dlmi.review_page.build import AREA_DEFINITION, MARGIN_DEFINITION, ReviewData, ReviewItem, apply_flags

PAGE_PATTERN = "review-{side}.html"
TRUE_CLASS_FROM_SPLIT = "true class = the sample's label in the split (its dataset's class)"


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def page_path(out_dir: Path, side: str) -> Path:
    return out_dir / PAGE_PATTERN.format(side=side)


def from_evaluation(evaluator: Any, side: str) -> ReviewData:
    """The page's data for one evaluated side of ``evaluator`` (a :class:`dlmi.evaluation.Evaluator`)."""
    from dlmi import __version__
    from dlmi.runtime.two_stage import build_pipeline

    inputs = evaluator.inputs
    preds = evaluator.predictions(side)
    trained, aid = inputs.trained, inputs.aid
    source_classes = list(inputs.source.classes)
    gate = None
    if trained.task != "classification":
        pipeline = build_pipeline(trained, aid)
        gate = pipeline.rule if pipeline is not None else None
    class_model = aid if aid is not None else trained
    classes = list(class_model.classes or source_classes) if preds.class_logits is not None else []
    probs = _softmax(preds.class_logits.astype(np.float64)) if preds.class_logits is not None else None
    margins = gate.margin(probs) if gate is not None and probs is not None else None
    masks = preds.aided_masks() if preds.gated is not None else preds.masks
    size = trained.image_size
    items = []
    for i, sample in enumerate(preds.samples):
        row: dict[str, Any] = {
            "key": sample.key, "file": sample.key,
            "class": classes[int(probs[i].argmax())] if probs is not None else None,
            "probs": [round(float(p), 4) for p in probs[i]] if probs is not None else [],
            "gated": bool(preds.gated[i]) if preds.gated is not None else None,
            "margin": round(float(margins[i]), 4) if margins is not None else None,
            "area": round(float(masks[i].mean()), 6) if masks is not None else None,
            "pixels": int(masks[i].sum()) if masks is not None else None,
            "uncertainty": None, "mask_disagreement": None,
            "true_class": source_classes[int(preds.labels[i])],
        }
        mask = masks[i] if masks is not None else None
        truth = preds.true_masks[i] if preds.true_masks is not None else None

        def pictures(sample=sample, mask=mask, truth=truth) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray | None]:
            grey, _ = load_sample(inputs.source, sample)
            shown = np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR))
            return shown, (mask if mask is not None else np.zeros((size, size), dtype=bool)), truth

        items.append(ReviewItem(row, pictures))
    models = [trained] + ([aid] if aid is not None else [])
    gate_line = (f"{gate.describe(classes[gate.normal_index] if classes else 'normal')}; mask threshold "
                 f"{trained.threshold:g}") if gate is not None else "no gate"
    provenance = [
        ("page made by", f"dlmi {__version__} (dlmi evaluate)"),
        ("models", "; ".join(f"{Path(m.checkpoint).name} sha256 {file_digest(m.checkpoint)}"
                             for m in models)),
        ("runs", "; ".join(str(m.run_dir or m.checkpoint) for m in models)),
        ("classes", ", ".join(classes or source_classes)),
        ("gate", gate_line),
        ("input", f"{inputs.dataset} {inputs.data_dir or ''}, {side} side of {inputs.split_file}"),
        ("images", f"{len(items)} evaluated, 0 skipped"),
        ("masks", f"at {size}x{size} px (true masks resized, nearest)" if masks is not None else "none"),
    ]
    definitions = [MARGIN_DEFINITION, AREA_DEFINITION, TRUE_CLASS_FROM_SPLIT]
    if masks is not None:
        definitions += [DICE_DEFINITION, IOU_DEFINITION, EMPTY_MASK_RULE]
    run_name = Path(str(trained.run_dir or trained.checkpoint)).name
    review = ReviewData(f"dlmi review — {run_name}, {side} side", provenance, classes or source_classes,
                        items, definitions=definitions, normal_class=inputs.source.normal_class,
                        page_id=f"evaluate-{file_digest(trained.checkpoint)[:12]}-{side}")
    apply_flags(review, None)
    return review
