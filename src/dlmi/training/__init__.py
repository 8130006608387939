"""Training: the loop, run folders and checkpoints.

From a notebook::

    from dlmi.training import TrainConfig, train_classifier, train_segmenter, resume_training

    classifier = train_classifier(TrainConfig(task="classification", dataset="synthetic", out="runs/cls",
                                              image_size=64, epochs=3))
    segmenter = train_segmenter(TrainConfig(task="segmentation", dataset="synthetic", out="runs/seg",
                                            image_size=64, epochs=3, base_channels=8, aid=str(classifier)))
"""

from __future__ import annotations

from dlmi.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "dlmi.training.config",
    "train": "dlmi.training.start",
    "train_classifier": "dlmi.training.start",
    "train_segmenter": "dlmi.training.start",
    "resume_training": "dlmi.training.start",
    "Trained": "dlmi.runtime.trained",
    "load_trained": "dlmi.runtime.trained",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
