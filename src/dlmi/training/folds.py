"""Cross-validation ensembles: ``dlmi train joint|classifier --folds K`` trains one model per fold.

The folder ``out`` gets ``split.json`` (the base split with its train and val sides re-dealt into K folds by
:func:`dlmi.splits.split.with_folds`; the test side unchanged), ``fold-0`` … ``fold-{K-1}`` (ordinary run
folders, each trained on its fold's train part and validated on its val part), and last ``ensemble.json``.

Every setting of the ensemble is chosen on out-of-fold predictions — each development image predicted by
the one member that did not train on it (with flip TTA, as the ensemble runs) — never on the test side:
the probability threshold, the smallest lesion (in pixels at the model's size) below which an image is
called lesion-free, and the gate's rule (the arg-max class is normal, or the normal class's probability is at
least a threshold), by the highest seed mIoU with the gate (all images; empty ∩ empty = 1). First, though,
the class head's temperature is fitted on the out-of-fold class logits (:func:`fit_oof_temperature`,
:mod:`dlmi.runtime.calibration`), and the gate's rule is chosen on the calibrated probabilities — the ones
every prediction path gives.

Each member is its run's ``last.pt`` (``MEMBER_CHECKPOINT``, recorded in ``ensemble.json``), for the
out-of-fold scores and for the ensemble alike: its ``best.pt`` is chosen on its val part — the very fold that
scores it out of fold — so out-of-fold numbers of ``best.pt`` members would be optimistic.

Resumable: a finished fold is kept, an interrupted one continues from its ``last.pt``, and ``ensemble.json``
is written (atomically) only once every fold has finished. A fold started with other settings than the
command's (beyond those a resume may change) is refused, naming them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dlmi.atomic import write_json_atomic
from dlmi.errors import DlmiError
from dlmi.training.config import CLASSIFICATION, JOINT, RECORDED_FIELDS, TrainConfig

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
NORMAL_THRESHOLDS = (None, 0.3, 0.4, 0.5, 0.6, 0.7)  # None: the arg-max class is normal
MIN_LESION_FRACTIONS = (0.0, 0.0005, 0.001, 0.002, 0.004)  # of the image's pixels (8, 16, 33, 66 at 128²)
# The checkpoint of each fold's run that joins the ensemble: the last epoch's, not one chosen on the fold.
MEMBER_CHECKPOINT = "last.pt"


def fold_dir(out: Path, fold: int) -> Path:
    return out / f"fold-{fold}"


def _finished(run: Path, epochs: int) -> bool:
    from dlmi.training.folder.run_folder import RunFolder

    folder = RunFolder(run)
    if not folder.last.is_file():
        return False
    rows = folder.read_metrics()
    return bool(rows) and int(rows[-1]["epoch"]) >= epochs


def train_folds(config: TrainConfig, folds: int, *, flip_tta: bool = True) -> Path:
    """Train ``folds`` joint models (one per fold) into ``config.out`` and write its ``ensemble.json``."""
    from dlmi.splits import load_split, save_split
    from dlmi.splits.split import with_folds
    from dlmi.training.data.split_data import load_dataset_samples, make_default_split, read_split
    from dlmi.training.folder.run_folder import RunFolder
    from dlmi.training.start import RESUMABLE_OVERRIDES, resume_training, train

    if config.task not in (JOINT, CLASSIFICATION):
        raise DlmiError(
            f"--folds trains an ensemble of joint models or classifiers, not of {config.task} models"
        )
    if folds < 2:
        raise DlmiError(f"--folds {folds}: an ensemble needs at least 2 folds")
    config = config.resolved()
    out = Path(config.out)
    split_path = out / "split.json"
    if split_path.is_file():
        split = load_split(split_path)
        if not split.folds or len(split.folds) != folds:
            raise DlmiError(
                f"{split_path}: holds {len(split.folds or [])} folds, not {folds}; use a new --out"
            )
    else:
        _, samples = load_dataset_samples(config)
        base = read_split(config.split) if config.split else make_default_split(config)
        split = base if base.folds and len(base.folds) == folds else with_folds(base, samples, folds,
                                                                               seed=config.seed)
        out.mkdir(parents=True, exist_ok=True)
        save_split(split, split_path)
    runs = [fold_dir(out, fold) for fold in range(folds)]
    configs = [dataclasses.replace(config, out=str(run), split=str(split_path), fold=fold)
               for fold, run in enumerate(runs)]
    for run, member in zip(runs, configs, strict=True):  # every fold checked before any trains
        if run.exists():
            check_same_member(run, member)
            RunFolder(run).check_resumable()
    members = []
    for run, member in zip(runs, configs, strict=True):
        if _finished(run, config.epochs):
            pass
        elif (run / "last.pt").is_file():
            resume_training(run, **{k: getattr(member, k) for k in RESUMABLE_OVERRIDES})
        else:
            if run.exists():
                import shutil

                shutil.rmtree(run)  # a fold that never finished an epoch (checked above): start it again
            train(member)
        members.append(run.name)
    manifest: dict[str, Any] = {"kind": "dlmi ensemble", "members": members, "flip_tta": flip_tta,
                                "member_checkpoint": MEMBER_CHECKPOINT}
    if config.task == CLASSIFICATION:
        oof = out_of_fold(out, members, flip_tta=flip_tta, device=config.device)
        manifest["oof_accuracy"] = oof_accuracy(oof)
        manifest["oof_images"] = len(oof["labels"])
        calibration = fit_oof_temperature(oof, members)
    if config.task == JOINT:
        choice = choose_postprocess(out, members, flip_tta=flip_tta, device=config.device)
        calibration = choice["calibration"]
        manifest.update(threshold=choice["threshold"], min_lesion_pixels=choice["min_lesion_pixels"],
                        normal_threshold=choice["normal_threshold"], postprocess=choice)
    manifest.update(temperature=calibration["temperature"], calibration=calibration)
    write_json_atomic(out / "ensemble.json", manifest)
    return out


def check_same_member(run: Path, member: TrainConfig) -> None:
    """A fold already started continues only with the settings it was started with (those a resume may
    change aside); otherwise the command would silently get the old ones."""
    from dlmi.training.start import RESUMABLE_OVERRIDES

    stored_path = run / "config.json"
    if not stored_path.is_file():
        return
    stored, given = TrainConfig.load(stored_path).to_dict(), member.to_dict()
    # out and split: this fold's, by construction; recorded fields: what the run found when it started
    ignored = (*RESUMABLE_OVERRIDES, *RECORDED_FIELDS, "out", "split")

    def same(key: str) -> bool:
        a, b = stored.get(key), given.get(key)
        if key in ("data_dir", "aid") and a is not None and b is not None:
            return os.path.abspath(a) == os.path.abspath(b)
        return bool(a == b)

    differing = [k for k in given if k not in ignored and not same(k)]
    if differing:
        named = ", ".join(f"{k} ({stored.get(k)!r} stored, {given[k]!r} given)" for k in differing)
        raise DlmiError(f"{run}: this fold was started with other settings: {named}; run the command with "
                        "the stored settings to continue, or use a new --out")


def out_of_fold(out: Path, members: list[str], *, flip_tta: bool, device: str = "cpu",
                temperature: float = 1.0) -> dict[str, Any]:
    """Every development image predicted by the member that did not train on it (its ``last.pt``): class
    logits (the log of the member's mean probabilities over its flip-TTA views, as the ensemble's) and class
    probs (``softmax(logits / temperature)``), and for joint members mask probs and true masks (``None``
    for classifiers)."""
    from dlmi.datasets.loader import EvalImages
    from dlmi.metrics.calibration import scaled_probabilities
    from dlmi.runtime.ensemble import ClassifierEnsemble, JointEnsemble
    from dlmi.runtime.trained import load_trained
    from dlmi.splits import load_split, split_samples
    from dlmi.training.data.split_data import load_dataset_samples

    split = load_split(out / "split.json")
    keys, labels, probs, masks, truths = [], [], [], [], []
    from dlmi.runtime.device import resolve_device

    torch_device = resolve_device(device)
    for fold, name in enumerate(members):
        member = load_trained(out / name, checkpoint_name=MEMBER_CHECKPOINT, map_location=torch_device)
        config = TrainConfig.load(out / name / "config.json")
        source, samples = load_dataset_samples(config)
        val = list(split_samples(split, samples, "val", fold=fold))
        joint = config.task == JOINT
        ensemble = JointEnsemble if joint else ClassifierEnsemble
        net = ensemble([member.model], flip_tta=flip_tta).to(torch_device).eval()
        loader = DataLoader(EvalImages(source, val, member.image_size), batch_size=16)
        with torch.inference_mode():
            for batch in loader:
                outputs = net(batch["image"].to(torch_device))
                class_logits = outputs[1] if joint else outputs
                probs.append(class_logits.float().cpu().numpy())
                if joint:
                    # float32, as prediction thresholds them (float16 rounding moves pixels across it)
                    masks.append(torch.sigmoid(outputs[0][:, 0]).cpu().numpy())
                    truths.append(batch["mask"].numpy())
                labels.append(batch["label"].numpy())
        keys += [s.key for s in val]
    logits = np.concatenate(probs)
    return {"keys": keys, "labels": np.concatenate(labels), "class_logits": logits,
            "class_probs": scaled_probabilities(logits, temperature).astype(np.float32),
            "mask_probs": np.concatenate(masks) if masks else None,
            "true_masks": np.concatenate(truths) if truths else None, "normal_index": member.normal_index}


def fit_oof_temperature(oof: dict[str, Any], members: list[str]) -> dict[str, Any]:
    """The class head's temperature fitted on the out-of-fold logits
    (:func:`dlmi.metrics.calibration.fit_temperature`), as ``ensemble.json`` records it."""
    from dlmi.metrics.calibration import TEMPERATURE_DEFINITION, fit_temperature, negative_log_likelihood

    logits, labels = oof["class_logits"], oof["labels"]
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature,
            "calibrated_on": f"out-of-fold predictions of the {len(members)} members' {MEMBER_CHECKPOINT} "
                             f"({len(labels)} images)",
            "images": int(len(labels)), "method": TEMPERATURE_DEFINITION,
            "nll_before": negative_log_likelihood(logits, labels, 1.0),
            "nll_after": negative_log_likelihood(logits, labels, temperature)}


def oof_accuracy(oof: dict[str, Any]) -> float:
    """How often the held-out member's arg-max class was the true one."""
    return float((oof["class_probs"].argmax(1) == oof["labels"]).mean())


def oof_masks(oof: dict[str, Any], *, threshold: float, min_lesion_pixels: int = 0,
              normal_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The out-of-fold masks (N,H,W) bool and gate (N,) bool under one setting: the runtime's gate
    (:class:`dlmi.runtime.gating.Gate`) on the out-of-fold probabilities; no gate without a normal class."""
    from dlmi.runtime.gating import Gate

    probs = oof["mask_probs"]
    normal = oof["normal_index"]
    if normal is None:
        gated = np.zeros(len(probs), dtype=bool)
    else:
        rule = Gate(normal, normal_threshold, min_lesion_pixels, threshold)
        gated = np.asarray(rule(oof["class_probs"], probs), dtype=bool)
    pred = probs > threshold
    pred[gated] = False
    return pred, gated


def choose_postprocess(out: Path, members: list[str], *, flip_tta: bool,
                       device: str = "cpu") -> dict[str, Any]:
    """The threshold, lesion-size rule and gate rule with the highest out-of-fold seed mIoU (gate applied), on
    the probabilities calibrated by the temperature fitted first on the same out-of-fold logits
    (``calibration``)."""
    from dlmi.metrics.calibration import scaled_probabilities
    from dlmi.metrics.segmentation import dice_from_counts, iou_from_counts, mask_counts

    oof = out_of_fold(out, members, flip_tta=flip_tta, device=device)
    calibration = fit_oof_temperature(oof, members)
    oof["class_probs"] = scaled_probabilities(oof["class_logits"], calibration["temperature"])
    probs, truth = oof["mask_probs"].astype(np.float32), oof["true_masks"].astype(bool)
    normal = oof["normal_index"]
    pixels = probs.shape[1] * probs.shape[2]
    lesion = truth.reshape(len(truth), -1).any(1)
    rules = [None] if normal is None else list(NORMAL_THRESHOLDS)
    areas = {t: (probs > t).reshape(len(probs), -1).sum(1) for t in THRESHOLDS}
    table = []
    for threshold, fraction, normal_threshold in itertools.product(THRESHOLDS, MIN_LESION_FRACTIONS, rules):
        min_pixels = int(math.ceil(fraction * pixels))
        pred, gated = oof_masks(oof, threshold=threshold, min_lesion_pixels=min_pixels,
                                normal_threshold=normal_threshold)
        area = areas[threshold]
        counts = mask_counts(pred, truth)
        scores, dice = iou_from_counts(*counts), dice_from_counts(*counts)
        table.append({"threshold": threshold, "min_lesion_pixels": min_pixels,
                      "normal_threshold": normal_threshold,
                      "miou_seed_aided": float(scores.mean()),
                      "lesion_dice_aided": float(dice[lesion].mean()) if lesion.any() else float("nan"),
                      "empty_fpr_aided": float((~gated[~lesion] & (area[~lesion] > 0)).mean())
                      if (~lesion).any() else float("nan")})
    # Highest seed mIoU; ties to the plainest rule (the arg-max gate, threshold nearest 0.5, then the smallest
    # size rule).
    best = max(table, key=lambda r: (round(r["miou_seed_aided"], 6), r["normal_threshold"] is None,
                                     -abs(r["threshold"] - 0.5), -r["min_lesion_pixels"]))
    return {"selected_on": f"out-of-fold predictions of the {len(members)} members' {MEMBER_CHECKPOINT} "
                           f"({len(probs)} images)",
            "criterion": "seed mIoU with the gate (all images; empty truth and empty prediction = 1)",
            "threshold": best["threshold"], "min_lesion_pixels": best["min_lesion_pixels"],
            "normal_threshold": best["normal_threshold"],
            "oof_accuracy": oof_accuracy(oof), "calibration": calibration,
            "oof_best": best, "candidates": table}
