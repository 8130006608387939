"""A trained model read back from a run folder or a checkpoint file, rebuilt from its ``meta``.

The checkpoint's ``meta`` (see ``docs/architecture.md``) is enough to rebuild the model through the registry,
so a single ``.pt`` file can be evaluated, exported or used for prediction without its ``config.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlmi.datasets.base import normal_index
from dlmi.errors import DlmiError
from dlmi.runtime.checkpoint import load_checkpoint

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
TASKS = ("classification", "segmentation", "joint")
META_KEYS = (
    "task", "model", "model_options", "num_classes", "classes", "normal_class",
    "image_size", "dataset", "threshold", "dlmi_version", "run_dir",
)


@dataclass
class Trained:
    """A trained model in eval mode, the checkpoint's ``meta``, and where it came from."""

    model: nn.Module
    meta: dict[str, Any]
    checkpoint: Path
    run_dir: Path | None

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    @property
    def normal_index(self) -> int | None:
        """Index of the normal class (classifiers of a dataset with a normal class), else ``None``."""
        return normal_index(self.classes, self.meta.get("normal_class"))

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    @property
    def temperature(self) -> float:
        """The class head's temperature (:mod:`dlmi.runtime.calibration`); 1.0 where none was fitted."""
        from dlmi.runtime.calibration import temperature_of

        return temperature_of(self.meta)


def build_meta(
    *,
    task: str,
    model: str,
    model_options: dict[str, Any],
    num_classes: int,
    classes: list[str] | tuple[str, ...],
    normal_class: str | None,
    image_size: int,
    dataset: str,
    run_dir: str | os.PathLike[str] | None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """The checkpoint ``meta`` of the run-folder contract, JSON-able values only."""
    from dlmi import __version__

    if task not in TASKS:
        raise DlmiError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return {
        "task": task,
        "model": model,
        "model_options": dict(model_options),
        "num_classes": int(num_classes),
        "classes": [str(c) for c in classes],
        "normal_class": normal_class,
        "image_size": int(image_size),
        "dataset": dataset,
        "threshold": float(threshold),
        "dlmi_version": __version__,
        "run_dir": str(run_dir) if run_dir is not None else None,
    }


# The model option naming a model's starting weights (``resnet18``; the encoders of ``unet`` / ``unet-mt``).
STARTING_WEIGHTS_OPTION = "weights"


def build_model(meta: dict[str, Any], *, starting_weights: bool = True) -> nn.Module:
    """A fresh (untrained) model of the kind ``meta`` describes, from the registry.

    ``starting_weights=False`` (a model about to receive a checkpoint's weights) leaves out the ``weights``
    option, so a model trained from pretrained weights loads without their file (or a download).
    """
    from dlmi.plugins import create_model

    task = meta["task"]
    options = dict(meta.get("model_options") or {})
    if not starting_weights:
        options.pop(STARTING_WEIGHTS_OPTION, None)
    if task == "classification":
        return create_model(meta["model"], num_classes=int(meta["num_classes"]),
                            image_size=int(meta["image_size"]), **options)
    if task == "segmentation":
        return create_model(meta["model"], in_channels=1, out_channels=1, **options)
    if task == "joint":
        return create_model(meta["model"], num_classes=int(meta["num_classes"]), in_channels=1,
                            out_channels=1, **options)
    raise DlmiError(f"unknown task {task!r} in checkpoint meta; expected one of {', '.join(TASKS)}")


def resolve_checkpoint(path: str | os.PathLike[str], name: str = BEST_CHECKPOINT) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or ``None``) for a run folder (its ``name``) or a ``.pt`` file."""
    path = Path(path)
    if path.is_dir():
        checkpoint = path / name
        if not checkpoint.is_file():
            raise DlmiError(
                f"{path}: not a run folder (no {name}); train one with `dlmi train ... --out {path}`"
            )
        return checkpoint, path
    if path.is_file():
        parent = path.parent
        is_run = (parent / "config.json").is_file() or (parent / "metrics.jsonl").is_file()
        return path, parent if is_run else None
    raise DlmiError(f"{path}: no such run folder or checkpoint file")


def load_trained(
    path: str | os.PathLike[str],
    *,
    checkpoint_name: str = BEST_CHECKPOINT,
    map_location: str | torch.device = "cpu",
) -> Trained:
    """Load a run folder (its ``best.pt``) or a ``.pt`` file as a :class:`Trained` model in eval mode.

    An ensemble folder (with ``ensemble.json``), or its ``ensemble.json`` itself (what an export's
    ``export.json`` names as the checkpoint), loads as a :class:`dlmi.runtime.ensemble.TrainedEnsemble`,
    which has the same attributes.
    """
    from dlmi.runtime.ensemble import ENSEMBLE_FILE, is_ensemble, load_ensemble

    if Path(path).is_dir() and is_ensemble(path):
        return load_ensemble(path, checkpoint_name=checkpoint_name, map_location=map_location)
    if Path(path).name == ENSEMBLE_FILE and Path(path).is_file():
        return load_ensemble(Path(path).parent, checkpoint_name=checkpoint_name, map_location=map_location)
    checkpoint, run_dir = resolve_checkpoint(path, checkpoint_name)
    payload = load_checkpoint(checkpoint, map_location=map_location)
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        raise DlmiError(f"{checkpoint}: checkpoint has no 'meta' dict; it was not written by dlmi train")
    missing = [k for k in ("task", "model", "image_size") if k not in meta]
    if missing:
        raise DlmiError(f"{checkpoint}: checkpoint meta lacks {', '.join(missing)}")
    model = build_model(meta, starting_weights=False)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DlmiError(f"{checkpoint}: weights do not fit model {meta['model']!r} ({first})") from None
    model.to(map_location)
    model.eval()
    meta = dict(meta)
    from dlmi.runtime.calibration import read_run_calibration

    calibration = read_run_calibration(run_dir, checkpoint.name)
    if calibration is not None:  # the temperature fitted for this checkpoint (dlmi.runtime.calibration)
        meta.update(temperature=calibration["temperature"], calibration=calibration)
    return Trained(model=model, meta=meta, checkpoint=checkpoint, run_dir=run_dir)
