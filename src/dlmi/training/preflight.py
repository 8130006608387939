"""Checks that run before a training run writes anything: every name, task and loss output, one line each.

A mistyped ``--loss``, a segmentation loss given to ``train classifier`` or a loss that returns a map instead
of a number must fail *before* the run folder exists, so the same command can simply be run again.
The loss is tried on a small batch of the shapes training gives it (``docs/plugins.md``): logits
(2, K) with int64 labels for a classifier, logits (2, 1, 16, 16) with a float 0/1 mask for a segmenter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlmi.errors import DlmiError
from dlmi.machine import physical_memory
from dlmi.registry import Entry
from dlmi.training.config import CLASSIFICATION, SEGMENTATION, TrainConfig

TRIAL_BATCH = 2
TRIAL_SIDE = 16
BATCH_BYTES_PER_PIXEL = 8  # a collated batch: the float32 image and the float32 mask of every sample


def loss_task(task: str) -> str:
    """The task a training task's loss is registered for (a joint run's ``--loss`` is its mask loss)."""
    return CLASSIFICATION if task == CLASSIFICATION else SEGMENTATION


def _described(entry: Entry, kind: str) -> str:
    return f"{kind} {entry.name!r} (from {entry.source})"


def check_task(entry: Entry, kind: str, wanted: str, command: str, choices: list[str]) -> None:
    """A one-line error when ``entry`` was registered for another task than ``wanted``."""
    if entry.task is not None and entry.task != wanted:
        others = ", ".join(choices) or "none registered"
        raise DlmiError(f"{_described(entry, kind)} is a {entry.task} {kind}; {command} needs a {wanted} "
                        f"{kind} ({others})")


def trial_batch(task: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic logits and targets of the shapes training passes to a ``task`` loss."""
    generator = torch.Generator().manual_seed(0)
    if task == CLASSIFICATION:
        logits = torch.randn(TRIAL_BATCH, num_classes, generator=generator)
        labels = torch.arange(TRIAL_BATCH, dtype=torch.int64) % max(num_classes, 1)
        return logits, labels
    logits = torch.randn(TRIAL_BATCH, 1, TRIAL_SIDE, TRIAL_SIDE, generator=generator)
    masks = torch.zeros(TRIAL_BATCH, 1, TRIAL_SIDE, TRIAL_SIDE)
    masks[0, :, 4:10, 4:10] = 1.0
    return logits, masks


def check_loss_output(loss: nn.Module, entry: Entry, task: str, num_classes: int) -> None:
    """Call the loss once on a trial batch: it must run and return a single number."""
    logits, target = trial_batch(task, num_classes)
    logits.requires_grad_(True)
    what = _described(entry, "loss")
    try:
        value = loss(logits, target)
    except DlmiError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DlmiError(f"{what} fails on a {task} batch (logits {tuple(logits.shape)}, target "
                        f"{tuple(target.shape)}): {type(exc).__name__}: {first}") from exc
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise DlmiError(f"{what} returned {shape} for a batch of {TRIAL_BATCH}; a loss must return one "
                        "number (a scalar tensor): reduce it, e.g. with .mean()")
    if not value.requires_grad:
        raise DlmiError(f"{what} returned a value without a gradient; compute it from the logits with torch "
                        "operations (no .item(), numpy or .detach())")


def _shape_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_shape_of(v) for v in value) + ")"
    return f"a {type(value).__name__}"


def check_model_outputs(model: nn.Module, entry: Entry, task: str, num_classes: int, image_size: int) -> None:
    """One forward of a zero batch at the configured size (eval mode, no gradient): the outputs must have the
    shapes training, evaluation and export rely on — class logits (2, K), mask logits (2, 1, S, S), and for
    a joint model both, in that order (``docs/plugins.md``)."""
    batch = torch.zeros(TRIAL_BATCH, 1, image_size, image_size)
    mask_shape = (TRIAL_BATCH, 1, image_size, image_size)
    class_shape = (TRIAL_BATCH, num_classes)
    what = _described(entry, "model")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(batch)
    except DlmiError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DlmiError(f"{what} fails on a batch of shape {tuple(batch.shape)}: "
                        f"{type(exc).__name__}: {first}") from exc
    finally:
        model.train(was_training)
    if task == CLASSIFICATION:
        expected, got = f"class logits {class_shape}", [outputs]
        wanted = [class_shape]
    elif task == SEGMENTATION:
        expected, got = f"mask logits {mask_shape}", [outputs]
        wanted = [mask_shape]
    else:
        expected = f"(mask logits {mask_shape}, class logits {class_shape})"
        got = list(outputs[:2]) if isinstance(outputs, tuple | list) and len(outputs) >= 2 else [outputs]
        wanted = [mask_shape, class_shape]
    fits = len(got) == len(wanted) and all(isinstance(out, torch.Tensor) and tuple(out.shape) == shape
                                           for out, shape in zip(got, wanted, strict=True))
    if not fits:
        for_classes = "" if task == SEGMENTATION else f" for {num_classes} classes"
        raise DlmiError(f"{what} returns {_shape_of(outputs)} for a batch of shape {tuple(batch.shape)}; "
                        f"a {task} model{for_classes} must return {expected}")


def check_components(config: TrainConfig, num_classes: int, build_loss: Any) -> None:
    """The model and loss names exist and suit the task; the loss, built by ``build_loss()``, gives a number.

    ``config`` is resolved (defaults filled in); ``num_classes`` is the dataset's class count.
    """
    from dlmi.plugins import get_plugins

    plugins = get_plugins()
    command = {CLASSIFICATION: "train classifier", SEGMENTATION: "train segmenter"}.get(
        config.task, f"a {config.task} run")
    model = plugins.models.get(str(config.model))
    check_task(model, "model", config.task, command, plugins.models.names(task=config.task))
    wanted = loss_task(config.task)
    loss_entry = plugins.losses.get(str(config.loss))
    check_task(loss_entry, "loss", wanted, command, plugins.losses.names(task=wanted))
    try:
        loss = build_loss()
    except DlmiError:
        raise
    except Exception as exc:
        raise DlmiError(f"{_described(loss_entry, 'loss')} cannot be built: "
                        f"{type(exc).__name__}: {exc}") from exc
    check_loss_output(loss, loss_entry, wanted, num_classes)



def check_batch_memory(config: TrainConfig, train_samples: int, processes: int = 1) -> None:
    """Refuse a batch that cannot fit in this machine's memory, before anything is allocated or written.

    The estimate is a lower bound: one process's collated batch (``batch_size / processes`` samples, at
    most the training samples there are) as float32 images and masks of ``image_size``², without the
    model's activations — so a refusal is never wrong, though a run that passes may still run out.
    """
    memory = physical_memory()
    batch = min(config.batch_size // max(processes, 1), train_samples)
    needed = batch * config.image_size**2 * BATCH_BYTES_PER_PIXEL
    if memory is not None and needed > memory:
        raise DlmiError(
            f"a batch of {batch} images of {config.image_size}x{config.image_size} pixels needs at least "
            f"{needed / 2**30:.0f} GiB of memory, more than this machine's {memory / 2**30:.0f} GiB; lower "
            f"--batch-size or --image-size"
        )
