"""Starting and resuming a training run: config → data → model → loop → run folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlmi.atomic import write_json_atomic
from dlmi.datasets.base import normal_index
from dlmi.datasets.loader import ImageDataset
from dlmi.errors import DlmiError
from dlmi.runtime.checkpoint import load_checkpoint
from dlmi.runtime.trained import build_meta, build_model
from dlmi.training.compute.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    distributed_session,
    main_process_first,
)
from dlmi.training.compute.precision import resolve_precision
from dlmi.training.compute.rng import restore_rng, seed_everything
from dlmi.training.config import CLASSIFICATION, JOINT, SEGMENTATION, TrainConfig
from dlmi.training.data.augment import JointAugment
from dlmi.training.data.cache import CachePlan, cached_source, plan_cache, prefill
from dlmi.training.data.sampling import EpochDataset, ShardSampler
from dlmi.training.data.split_data import (
    SIDES,
    SplitData,
    class_weights,
    make_default_split,
    make_loader,
    make_train_sampler,
    prepare_data,
    read_split,
)
from dlmi.training.folder.run_folder import RunFolder
from dlmi.training.loop import TaskSteps, Trainer
from dlmi.training.preflight import check_batch_memory, check_components
from dlmi.training.steps.aid import ClassifierGate, aid_split_path, load_aid
from dlmi.training.steps.classification import ClassificationSteps, classification_loss
from dlmi.training.steps.segmentation import SegmentationSteps

# Settings that may change when a run is resumed; any other change would make a different run.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "quiet", "deterministic", "cache", "compile",
                       "channels_last")


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


def train_joint(config: TrainConfig) -> Path:
    """Train a joint segmenter + classifier (``unet-mt``) into ``config.out``; returns the run folder."""
    if config.task != JOINT:
        raise DlmiError(f"train_joint needs task={JOINT!r}, got {config.task!r}")
    return train(config)


def train(config: TrainConfig) -> Path:
    """Start a new run of either task (in every process, when started by torchrun)."""
    config = config.resolved()
    with distributed_session(config.device) as (context, device):
        return _train(config, context, device)


def _train(config: TrainConfig, context: DistributedContext, device: torch.device) -> Path:
    run = RunFolder(Path(config.out))
    if context.is_main:
        run.check_new()
    check_global_batch(config, context)
    resolve_precision(config.precision, device)  # a precision the device lacks: refused before any file
    gate = load_aid(config.aid, config.dataset, device) if config.aid else None
    with main_process_first(context):  # rank 0 fills the hash cache; the others then read it
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
    # Every name, option and the loss's output are checked before the run folder is written, so a
    # mistake leaves nothing behind and the same command can be run again.
    check_logged_metric(config, data)
    check_batch_memory(config, len(data.samples["train"]), context.world_size)
    check_components(config, len(data.classes), lambda: _build_loss(config, data))
    seed_everything(config.seed, config.deterministic)
    model = _create_model(_make_meta(config, data, run))
    config = dataclasses.replace(config, pretrained_weights=getattr(model, "pretrained_weights", None))
    if context.is_main:
        from dlmi.splits import save_split

        run.create()
        save_split(split, run.split)
        write_json_atomic(run.config, config.to_dict())
    trainer = build_trainer(config, run, data, gate, device, context, model=model)
    trainer.fit(progress_mode=_progress_mode(config))
    _calibrate(run, data, context, device)
    return run.path


def _calibrate(run: RunFolder, data: SplitData, context: DistributedContext, device: torch.device) -> None:
    """Fit the finished run's temperature on its val side (:mod:`dlmi.training.calibrate`), once."""
    if context.is_main:
        from dlmi.training.calibrate import calibrate_run

        calibrate_run(run.path, data.source, data.samples["val"], device)


def check_logged_metric(config: TrainConfig, data: SplitData) -> None:
    """``best_metric`` must be a number this run logs: detect accuracy needs a normal class."""
    if config.best_metric == "val_detect_accuracy" and data.normal_class not in data.classes:
        raise DlmiError(f"best metric 'val_detect_accuracy': dataset {config.dataset!r} has no normal class, "
                        "so detect accuracy is not logged; use val_accuracy or val_loss")


def _build_loss(config: TrainConfig, data: SplitData) -> nn.Module:
    """The run's loss module on the CPU, as training builds it (class weights included)."""
    if config.task == CLASSIFICATION:
        weight = None
        if config.class_balance == "weights":
            weight = class_weights(data.samples["train"], len(data.classes))
        return classification_loss(str(config.loss), weight)
    from dlmi.plugins import create_loss

    return create_loss(str(config.loss))


def resume_training(run_dir: str | os.PathLike[str], **overrides: Any) -> Path:
    """Continue an interrupted run from its ``last.pt`` on the same curve.

    ``overrides`` may change the settings in ``RESUMABLE_OVERRIDES`` (``epochs`` to extend a finished
    run, ``device``, ``workers``, ``quiet``, ``deterministic``, ``cache``, ``compile``, ``channels_last``).
    Under torchrun every process reads the run folder, so it must be on a filesystem every node sees.
    """
    run = RunFolder(Path(run_dir))
    if not run.path.is_dir():
        raise DlmiError(f"{run.path}: no such run folder to resume")
    run.check_resumable()
    config = TrainConfig.load(run.config)
    bad = sorted(k for k, v in overrides.items() if v is not None and k not in RESUMABLE_OVERRIDES)
    if bad:
        raise DlmiError(
            f"{run.config}: cannot change {', '.join(bad)} when resuming; only "
            f"{', '.join(RESUMABLE_OVERRIDES)} may change"
        )
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}).resolved()
    with distributed_session(config.device) as (context, device):
        return _resume(run, config, context, device)


def _resume(run: RunFolder, config: TrainConfig, context: DistributedContext, device: torch.device) -> Path:
    check_global_batch(config, context)
    resolve_precision(config.precision, device)
    gate = load_aid(config.aid, config.dataset, device) if config.aid else None
    data = prepare_data(config, read_split(run.split), split_name=str(run.split))
    if gate is not None:
        check_same_split(data, gate)
    if context.is_main:
        write_json_atomic(run.config, config.to_dict())
    trainer = build_trainer(config, run, data, gate, device, context)
    if run.last.is_file():
        payload = load_checkpoint(run.last, map_location="cpu")
        trainer.load_state(payload)
        restore_rng(payload["rng"], trainer.generator)
    if context.is_main:
        run.truncate_metrics(trainer.state.epoch)
    if trainer.state.epoch >= config.epochs:
        return run.path
    trainer.fit(progress_mode=_progress_mode(config))
    _calibrate(run, data, context, device)
    return run.path


def check_global_batch(config: TrainConfig, context: DistributedContext) -> None:
    """``--batch-size`` is the global batch: it must split evenly over the processes."""
    if config.batch_size % context.world_size:
        raise DlmiError(
            f"--batch-size {config.batch_size} is the global batch, split over {context.world_size} "
            f"processes; choose a multiple of {context.world_size}"
        )


def check_same_split(data: SplitData, gate: ClassifierGate) -> None:
    """The aid classifier's split must cut this dataset exactly as the segmenter's split does."""
    split_path = aid_split_path(gate)
    aid_config = split_path.parent / "config.json"
    fold = TrainConfig.load(aid_config).fold if aid_config.is_file() else None
    from dlmi.training.data.split_data import split_sides

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


def _make_meta(config: TrainConfig, data: SplitData, run: RunFolder) -> dict[str, Any]:
    meta = build_meta(
        task=config.task,
        model=str(config.model),
        model_options=config.model_kwargs(),
        num_classes=1 if config.task == SEGMENTATION else len(data.classes),
        classes=data.classes,
        normal_class=data.normal_class,
        image_size=config.image_size,
        dataset=config.dataset,
        run_dir=run.path.resolve(),
    )
    if config.pretrained_weights:  # where the starting weights came from, for export.json and the card
        meta["pretrained_weights"] = dict(config.pretrained_weights)
    return meta


def _create_model(meta: dict[str, Any], *, starting_weights: bool = True) -> nn.Module:
    """The run's fresh model, its outputs checked by one forward at the configured size.

    ``starting_weights=False``: without pretrained starting weights (a resumed run gets its checkpoint's)."""
    from dlmi.plugins import get_plugins
    from dlmi.training.preflight import check_model_outputs

    model = _build_model(meta, starting_weights)
    check_model_outputs(model, get_plugins().models.get(str(meta["model"])), meta["task"],
                        len(meta["classes"]), int(meta["image_size"]))
    return model


def _build_model(meta: dict[str, Any], starting_weights: bool = True) -> nn.Module:
    try:
        return build_model(meta, starting_weights=starting_weights)
    except DlmiError:
        raise
    except TypeError as exc:
        raise DlmiError(
            f"model {meta['model']!r} does not accept options {meta['model_options']} ({exc})"
        ) from None
    except Exception as exc:  # a plugin's factory failing on these options: name it, one line
        from dlmi.plugins import get_plugins

        source = get_plugins().models.get(str(meta["model"])).source
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DlmiError(f"model {meta['model']!r} (from {source}) cannot be built with options "
                        f"{meta['model_options']}: {type(exc).__name__}: {first}") from exc


def _build_steps(config: TrainConfig, data: SplitData, gate: ClassifierGate | None,
                 device: torch.device) -> TaskSteps:
    if config.task == CLASSIFICATION:
        weight = None
        if config.class_balance == "weights":
            weight = class_weights(data.samples["train"], len(data.classes))
        loss = classification_loss(str(config.loss), weight).to(device)
        normal = normal_index(data.classes, data.normal_class)
        return ClassificationSteps(loss, normal_index=normal)
    from dlmi.plugins import create_loss

    if config.task == JOINT:
        from dlmi.training.steps.joint import JointSteps

        normal = normal_index(data.classes, data.normal_class)
        return JointSteps(create_loss(str(config.loss)).to(device), normal,
                          class_loss_weight=config.class_loss_weight,
                          deep_supervision=config.deep_supervision)
    return SegmentationSteps(create_loss(str(config.loss)).to(device), gate=gate)


def build_trainer(config: TrainConfig, run: RunFolder, data: SplitData, gate: ClassifierGate | None,
                  device: torch.device, context: DistributedContext = SINGLE_PROCESS, *,
                  model: nn.Module | None = None) -> Trainer:
    """The trainer of a resolved ``config``: model, task steps, cached datasets, samplers, loaders.

    ``model``: one already built (right after seeding, as here) by the caller; by default it is built here.
    Writes ``runtime.json`` into the run folder (main process); ``benchmarks/train_speed.py`` uses it too.
    """
    meta = _make_meta(config, data, run)
    if model is None:
        seed_everything(config.seed, config.deterministic)
        # A resumed run takes its weights from last.pt; without one it starts again from the start.
        model = _create_model(meta, starting_weights=not run.last.is_file())
    steps = _build_steps(config, data, gate, device)
    precision = resolve_precision(config.precision, device)
    generator = torch.Generator().manual_seed(config.seed)
    transform = JointAugment.recipe(config.augment_recipe) if config.augment else None
    plan = plan_cache(config.cache, len(data.samples["train"]) + len(data.samples["val"]), config.image_size,
                      processes_per_machine=context.local_world_size)
    source = cached_source(data.source, config.image_size, plan)
    train_set = ImageDataset(source, data.samples["train"], config.image_size, transform=transform,
                             cache=plan.memory)
    val_set = ImageDataset(source, data.samples["val"], config.image_size, cache=plan.memory)
    if plan.memory and config.workers > 0:
        prefill([train_set, val_set], threads=config.workers)
    batch = config.batch_size // context.world_size
    pin = device.type == "cuda"
    train_sampler = make_train_sampler(config.class_balance, data.samples["train"], seed=config.seed,
                                       context=context)
    val_sampler = ShardSampler(len(val_set), rank=context.rank, world_size=context.world_size)
    train_loader = make_loader(EpochDataset(train_set, config.seed), batch_size=batch, workers=config.workers,
                               generator=generator, sampler=train_sampler, pin_memory=pin)
    val_loader = make_loader(EpochDataset(val_set, config.seed), batch_size=batch, workers=config.workers,
                             generator=None, sampler=val_sampler, pin_memory=pin)
    trainer = Trainer(config, steps, model, run, meta, train_loader, val_loader, generator, device,
                      context=context, precision=precision)
    if context.is_main:
        write_runtime(run, trainer, plan, batch)
    return trainer


def write_runtime(run: RunFolder, trainer: Trainer, plan: CachePlan, batch_per_process: int) -> None:
    """``runtime.json``: how this (re)start of the run computes — not settings, but what they resolved to."""
    config, context = trainer.config, trainer.context
    write_json_atomic(run.runtime, {
        "device": str(trainer.device),
        "precision": trainer.precision.name,
        "channels_last": trainer.channels_last,
        "compile": config.compile,
        "processes": context.world_size,
        "backend": context.backend,
        "batch_per_process": batch_per_process,
        "global_batch": config.batch_size,
        "synced_batchnorm": trainer.synced_batchnorm,
        "cache": plan.describe(),
        "workers": config.workers,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    })
