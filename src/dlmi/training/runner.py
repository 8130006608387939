"""Starting and resuming a training run: config → data → model → loop → run folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlmi.atomic import write_json_atomic
from dlmi.datasets.loader import ImageDataset
from dlmi.errors import DlmiError
from dlmi.training.aid import ClassifierGate, aid_split_path, load_aid
from dlmi.training.augment import JointAugment
from dlmi.training.checkpoint import load_checkpoint
from dlmi.training.classifier import ClassificationSteps, classification_loss
from dlmi.training.config import CLASSIFICATION, SEGMENTATION, TrainConfig
from dlmi.training.data import (
    SIDES,
    RunData,
    class_weights,
    make_default_split,
    make_loader,
    make_train_sampler,
    prepare_data,
    read_split,
)
from dlmi.training.loop import TaskSteps, Trainer, resolve_device
from dlmi.training.rng import restore_rng, seed_everything
from dlmi.training.run import build_meta, build_model
from dlmi.training.run_dir import RunFolder
from dlmi.training.segmenter import SegmentationSteps

# Settings that may change when a run is resumed; any other change would make a different run.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "quiet", "deterministic")


def train_classifier(config: TrainConfig) -> Path:
    """Train a classifier into ``config.out``; returns the run folder."""
    if config.task != CLASSIFICATION:
        raise DlmiError(f"train_classifier needs task={CLASSIFICATION!r}, got {config.task!r}")
    return train(config)


def train_segmenter(config: TrainConfig) -> Path:
    """Train a segmenter (aided when ``config.aid`` names a classifier run) into ``config.out``."""
    if config.task != SEGMENTATION:
        raise DlmiError(f"train_segmenter needs task={SEGMENTATION!r}, got {config.task!r}")
    return train(config)


def train(config: TrainConfig) -> Path:
    """Start a new run of either task."""
    config = config.resolved()
    run = RunFolder(Path(config.out))
    run.check_new()
    device = resolve_device(config.device)
    gate = load_aid(config.aid, config.dataset, device) if config.aid else None
    if config.split:
        split, split_name = read_split(config.split), config.split
    elif gate is not None:
        split_path = aid_split_path(gate)
        split, split_name = read_split(split_path), str(split_path)
    else:
        split, split_name = make_default_split(config), "default split"
    data = prepare_data(config, split, split_name=split_name)
    if gate is not None:
        check_same_split(data, gate)
    from dlmi.splits import save_split

    run.create()
    save_split(split, run.split)
    write_json_atomic(run.config, config.to_dict())
    trainer = _build_trainer(config, run, data, gate, device)
    trainer.fit(progress_mode=_progress_mode(config))
    return run.path


def resume_training(run_dir: str | os.PathLike[str], **overrides: Any) -> Path:
    """Continue an interrupted run from its ``last.pt`` on the same curve.

    ``overrides`` may change ``epochs`` (to extend a finished run), ``device``, ``workers`` and ``quiet``.
    """
    run = RunFolder(Path(run_dir))
    if not run.path.is_dir():
        raise DlmiError(f"{run.path}: no such run folder to resume")
    config = TrainConfig.load(run.config)
    bad = sorted(k for k, v in overrides.items() if v is not None and k not in RESUMABLE_OVERRIDES)
    if bad:
        raise DlmiError(
            f"{run.config}: cannot change {', '.join(bad)} when resuming; only "
            f"{', '.join(RESUMABLE_OVERRIDES)} may change"
        )
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}).resolved()
    device = resolve_device(config.device)
    gate = load_aid(config.aid, config.dataset, device) if config.aid else None
    data = prepare_data(config, read_split(run.split), split_name=str(run.split))
    if gate is not None:
        check_same_split(data, gate)
    write_json_atomic(run.config, config.to_dict())
    trainer = _build_trainer(config, run, data, gate, device)
    if run.last.is_file():
        payload = load_checkpoint(run.last, map_location="cpu")
        trainer.load_state(payload)
        restore_rng(payload["rng"], trainer.generator)
    run.truncate_metrics(trainer.state.epoch)
    if trainer.state.epoch >= config.epochs:
        return run.path
    trainer.fit(progress_mode=_progress_mode(config))
    return run.path


def check_same_split(data: RunData, gate: ClassifierGate) -> None:
    """The aid classifier's split must cut this dataset exactly as the segmenter's split does."""
    split_path = aid_split_path(gate)
    aid_config = split_path.parent / "config.json"
    fold = TrainConfig.load(aid_config).fold if aid_config.is_file() else None
    from dlmi.training.data import split_sides

    aid_split = read_split(split_path)
    aid_sides = split_sides(aid_split, [s for side in SIDES for s in data.samples[side]], fold)
    for side in SIDES:
        ours, theirs = data.keys(side), sorted(s.key for s in aid_sides[side])
        if ours != theirs:
            raise DlmiError(
                f"{split_path}: the aid classifier's split differs from the segmenter's on the {side} side "
                f"({len(theirs)} vs {len(ours)} samples); train both on the same --split"
            )


def _progress_mode(config: TrainConfig) -> str:
    return "quiet" if config.quiet else "auto"


def _make_meta(config: TrainConfig, data: RunData, run: RunFolder) -> dict[str, Any]:
    return build_meta(
        task=config.task,
        model=str(config.model),
        model_options=config.model_kwargs(),
        num_classes=len(data.classes) if config.task == CLASSIFICATION else 1,
        classes=data.classes,
        normal_class=data.normal_class,
        image_size=config.image_size,
        dataset=config.dataset,
        run_dir=run.path.resolve(),
    )


def _create_model(meta: dict[str, Any]) -> nn.Module:
    try:
        return build_model(meta)
    except TypeError as exc:
        raise DlmiError(
            f"model {meta['model']!r} does not accept options {meta['model_options']} ({exc})"
        ) from None


def _build_steps(config: TrainConfig, data: RunData, gate: ClassifierGate | None,
                 device: torch.device) -> TaskSteps:
    if config.task == CLASSIFICATION:
        weight = None
        if config.class_balance == "weights":
            weight = class_weights(data.samples["train"], len(data.classes))
        loss = classification_loss(str(config.loss), weight).to(device)
        normal = data.classes.index(data.normal_class) if data.normal_class in data.classes else None
        return ClassificationSteps(loss, normal_index=normal)
    from dlmi.plugins import create_loss

    return SegmentationSteps(create_loss(str(config.loss)).to(device), gate=gate)


def _build_trainer(config: TrainConfig, run: RunFolder, data: RunData, gate: ClassifierGate | None,
                   device: torch.device) -> Trainer:
    meta = _make_meta(config, data, run)
    seed_everything(config.seed, config.deterministic)
    model = _create_model(meta)
    steps = _build_steps(config, data, gate, device)
    generator = torch.Generator().manual_seed(config.seed)
    transform = JointAugment() if config.augment else None
    train_set = ImageDataset(data.source, data.samples["train"], config.image_size, transform=transform)
    val_set = ImageDataset(data.source, data.samples["val"], config.image_size)
    sampler = make_train_sampler(config.class_balance, data.samples["train"], generator)
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, batch_size=config.batch_size, workers=config.workers,
                               generator=generator, shuffle=True, sampler=sampler, pin_memory=pin)
    val_loader = make_loader(val_set, batch_size=config.batch_size, workers=config.workers,
                             generator=None, shuffle=False, pin_memory=pin)
    return Trainer(config, steps, model, run, meta, train_loader, val_loader, generator, device)
