"""An ensemble (the K models of ``dlmi train joint|classifier --folds K``) as one network of the same kind.

:class:`JointEnsemble` averages its members' probabilities — softmax of the class logits, sigmoid of the mask
logits — over the members and, with ``flip_tta``, over the image and its horizontal mirror (the mirrored
mask flipped back). It returns the logits of those means, ``(seg_logits, class_logits)``, the interface of a
single ``unet-mt``; so the gate, the threshold, evaluation, aided prediction and the exported
``two_stage.onnx`` treat an ensemble exactly as one model. :class:`ClassifierEnsemble` does the same for
classifiers (the log of the mean softmax is its logits).

An ensemble folder holds ``ensemble.json`` (its members' run folders relative to it, whether flip TTA is
on, the post-processing chosen on the members' out-of-fold predictions) and the members' run folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlmi.errors import DlmiError
from dlmi.runtime.trained import Trained

ENSEMBLE_FILE = "ensemble.json"
_EPS = 1e-6


def mean_class_logits(member_probs: torch.Tensor) -> torch.Tensor:
    """(M,N,K) members' class probabilities → (N,K) logits of their mean, ``log mean p`` (clamped)."""
    return torch.log(member_probs.mean(0).clamp(_EPS, 1.0))


def mean_mask_logits(member_masks: torch.Tensor) -> torch.Tensor:
    """(M,N,1,H,W) members' mask probabilities → (N,1,H,W) logits of their mean, ``log p − log(1 − p)``."""
    mean = member_masks.mean(0).clamp(_EPS, 1.0 - _EPS)
    return torch.log(mean) - torch.log1p(-mean)


class _Averaged(nn.Module):
    """Members and the views each one sees: the image, and its mirror with ``flip_tta``.

    ``member_outputs(image)`` gives each member's probabilities (the mean over its views), the ensemble's
    output is the logits of their mean, and :mod:`dlmi.runtime.uncertainty` measures their disagreement."""

    averages_members = True

    def __init__(self, members: Sequence[nn.Module], *, flip_tta: bool = True) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.flip_tta = bool(flip_tta)

    def views(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [image, torch.flip(image, dims=[-1])] if self.flip_tta else [image]


class JointEnsemble(_Averaged):
    """The mean of joint networks ``m(x) -> (seg_logits, class_logits)`` (and of their mirrored views)."""

    def member_outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask probs (M,N,1,H,W), class probs (M,N,K)): each member's mean over its views (the mirrored
        view's mask flipped back)."""
        views = self.views(image)
        masks, classes = [], []
        for member in self.members:
            mask_sum: torch.Tensor | None = None
            class_sum: torch.Tensor | None = None
            for mirrored, view in enumerate(views):
                seg_logits, class_logits = member(view)[:2]
                mask = torch.sigmoid(seg_logits.float())
                if mirrored:
                    mask = torch.flip(mask, dims=[-1])
                probs = torch.softmax(class_logits.float(), dim=1)
                class_sum = probs if class_sum is None else class_sum + probs
                mask_sum = mask if mask_sum is None else mask_sum + mask
            assert class_sum is not None and mask_sum is not None
            masks.append(mask_sum / float(len(views)))
            classes.append(class_sum / float(len(views)))
        return torch.stack(masks), torch.stack(classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks, classes = self.member_outputs(image)
        return mean_mask_logits(masks), mean_class_logits(classes)


class ClassifierEnsemble(_Averaged):
    """The mean softmax of classifiers ``m(x) -> class_logits`` (and of mirrored views); returns its log."""

    def member_outputs(self, image: torch.Tensor) -> torch.Tensor:
        """(M,N,K): each member's class probabilities, the mean over its views."""
        views = self.views(image)
        return torch.stack([
            torch.stack([torch.softmax(member(view).float(), dim=1) for view in views]).mean(0)
            for member in self.members])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return mean_class_logits(self.member_outputs(image))


@dataclass
class TrainedEnsemble(Trained):
    """An ensemble folder loaded for use: a :class:`dlmi.runtime.trained.Trained` whose model is the ensemble
    (``checkpoint`` is its ``ensemble.json``), plus its loaded ``members``."""

    members: list[Trained] = field(default_factory=list)


def is_ensemble(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / ENSEMBLE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DlmiError(f"{path}: cannot read the ensemble manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("members"), list) or not data["members"]:
        raise DlmiError(f"{path}: expected {{\"members\": [run folders…], …}}")
    return data


def load_ensemble(folder: str | os.PathLike[str], *, checkpoint_name: str = "best.pt",
                  map_location: str | torch.device = "cpu") -> TrainedEnsemble:
    """The members named by ``folder/ensemble.json`` as one :class:`TrainedEnsemble` in eval mode.

    Each member is the checkpoint its ``member_checkpoint`` names (``last.pt`` for dlmi's fold ensembles);
    ``checkpoint_name`` only for a manifest without one (written before dlmi recorded it: ``best.pt``)."""
    from dlmi.runtime.trained import load_trained

    folder = Path(folder)
    manifest = read_manifest(folder)
    checkpoint_name = str(manifest.get("member_checkpoint") or checkpoint_name)
    members = [load_trained(folder / str(m), checkpoint_name=checkpoint_name, map_location=map_location)
               for m in manifest["members"]]
    first = members[0]
    for member in members:
        if member.task not in ("joint", "classification"):
            raise DlmiError(f"{member.checkpoint}: ensemble members must be joint models or classifiers, "
                            f"not {member.task} models")
        for key in ("task", "image_size", "classes", "normal_class", "dataset"):
            if member.meta.get(key) != first.meta.get(key):
                raise DlmiError(f"{member.checkpoint}: its {key} differs from {first.checkpoint}'s; "
                                "an ensemble's members must agree")
    flip_tta = bool(manifest.get("flip_tta", True))
    meta = dict(first.meta)
    meta.update(
        model="ensemble",
        members=[str(m.checkpoint) for m in members],
        flip_tta=flip_tta,
        threshold=float(manifest.get("threshold", first.threshold)),
        run_dir=str(folder),
    )
    meta["member_checkpoint"] = checkpoint_name
    for key in ("min_lesion_pixels", "normal_threshold", "postprocess"):
        if key in manifest:
            meta[key] = manifest[key]
    meta.pop("calibration", None)  # a member's own (single-run) temperature is not the ensemble's
    meta.pop("temperature", None)
    if manifest.get("temperature") is not None:  # fitted on the out-of-fold logits (dlmi.runtime.calibration)
        from dlmi.runtime.calibration import check_temperature

        meta["temperature"] = check_temperature(manifest["temperature"], str(folder / ENSEMBLE_FILE))
        meta["calibration"] = manifest.get("calibration")
    kind = JointEnsemble if first.task == "joint" else ClassifierEnsemble
    model = kind([m.model for m in members], flip_tta=flip_tta).to(map_location).eval()
    return TrainedEnsemble(model=model, meta=meta, checkpoint=folder / ENSEMBLE_FILE, run_dir=folder,
                           members=members)
