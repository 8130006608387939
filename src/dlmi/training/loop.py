"""The generic training loop: epochs of task steps, validation, checkpoints, metrics and curves.

A task (classification, segmentation) supplies a :class:`TaskSteps`; the loop owns the optimiser, the
learning-rate schedule, gradient clipping, the RNG states and everything written to the run folder.
Speed and scale (``docs/distributed.md``): :meth:`Trainer.autocast` (mixed precision), channels-last
tensors, ``torch.compile``, DistributedDataParallel under torchrun, with :attr:`Trainer.is_main_process`
(only rank 0 writes files).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from dlmi.errors import DlmiError
from dlmi.runtime.checkpoint import save_checkpoint
from dlmi.training.compute.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    all_reduce_sum,
    gather_records,
    synchronise_batchnorm,
    wrap_ddp,
)
from dlmi.training.compute.precision import Precision
from dlmi.training.compute.rng import capture_rng
from dlmi.training.config import TrainConfig
from dlmi.training.folder.curves import plot_learning_curves
from dlmi.training.folder.progress import TrainingProgress
from dlmi.training.folder.run_folder import RunFolder

__all__ = ["StepResult", "TaskSteps", "Trainer", "TrainState", "build_optimizer", "scheduled_lr"]


@dataclass
class StepResult:
    """One batch's mean loss (with its graph when training) and per-image records (detached, on device)."""

    loss: torch.Tensor
    records: dict[str, torch.Tensor] = field(default_factory=dict)


class TaskSteps(Protocol):
    """What a task gives the loop."""

    task: str

    def forward(self, model: nn.Module, batch: dict[str, Any], training: bool) -> StepResult:
        """Forward pass and loss on a batch already on the device."""
        ...

    def summarize(self, records: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
        """Epoch metrics (``prefix`` is ``train`` or ``val``) from the concatenated per-image records."""
        ...


def scheduled_lr(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based).

    The first ``warmup_epochs`` rise linearly (``lr·e/(w+1)``); then constant, cosine from ``lr`` towards 0,
    or poly (``lr·(1 − t)^0.9``, nnU-Net's) over the remaining epochs, ``t`` their elapsed fraction.
    """
    assert config.lr is not None
    warmup = config.warmup_epochs
    if epoch <= warmup:
        return config.lr * epoch / (warmup + 1)
    progress = (epoch - 1 - warmup) / max(config.epochs - warmup, 1)
    if config.scheduler == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.scheduler == "poly":
        return config.lr * (1.0 - progress) ** 0.9
    return config.lr


def ema_update(decay: float) -> Any:
    """In-place EMA step for ``AveragedModel``: ``avg ← d·avg + (1−d)·w``, ``d = min(decay, (1+n)/(10+n))``.

    The warm-up of ``d`` over the first updates ``n`` keeps the random initial weights from lingering in
    the average (with a fixed 0.995 they would still weigh 28 % after 256 steps). Integer buffers (BatchNorm's
    batch counter) are copied.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: Any) -> None:
        n = float(updates)
        d = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    lr, weight_decay = config.lr, config.weight_decay or 0.0
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise DlmiError(f"unknown optimizer {config.optimizer!r}")


def _is_better(score: float, loss: float, best: tuple[float, float] | None, higher_is_better: bool) -> bool:
    """A better score, or the same score with a lower validation loss."""
    if math.isnan(score):
        return False
    if best is None:
        return True
    best_score, best_loss = best
    if score != best_score:
        return score > best_score if higher_is_better else score < best_score
    return loss < best_loss


@dataclass
class TrainState:
    """Where a run stands: the last completed epoch and the best validation result so far."""

    epoch: int = 0
    best_score: float | None = None
    best_loss: float | None = None
    best_epoch: int | None = None


class Trainer:
    """Runs epochs ``state.epoch + 1 … config.epochs`` and writes the run folder after each.

    ``context`` places this process in a torchrun run (one process by default); ``precision`` is the
    resolved ``fp32``/``bf16``/``fp16``. The model is moved to ``device`` (channels-last when the config
    says so), its BatchNorm synchronised and wrapped in DistributedDataParallel under torchrun, and
    compiled with ``--compile``; ``self.model`` stays the plain module whose state dict is saved.
    """

    def __init__(
        self,
        config: TrainConfig,
        steps: TaskSteps,
        model: nn.Module,
        run: RunFolder,
        meta: dict[str, Any],
        train_loader: DataLoader,
        val_loader: DataLoader,
        generator: torch.Generator,
        device: torch.device,
        *,
        context: DistributedContext = SINGLE_PROCESS,
        precision: str = "fp32",
    ) -> None:
        self.config = config
        self.steps = steps
        self.context = context
        self.device = device
        self.precision = Precision(precision, device)
        self.channels_last = config.channels_last
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.synced_batchnorm = context.enabled and config.sync_bn
        if self.synced_batchnorm:
            model = synchronise_batchnorm(model, device)
        self.model = model
        self.run = run
        self.meta = meta
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.generator = generator
        self.optimizer = build_optimizer(config, self.model)
        self.train_model: nn.Module = (wrap_ddp(self.model, device, self.synced_batchnorm)
                                       if context.enabled else self.model)
        self.eval_model: nn.Module = self.model
        if config.compile:
            self.train_model = torch.compile(self.train_model)
            self.eval_model = torch.compile(self.model) if context.enabled else self.train_model
        self.state = TrainState()
        self.metric_name = config.best_metric or "val_loss"
        # An exponential moving average of the weights (buffers too): validated, saved and exported in place
        # of the raw weights, which last.pt keeps for resuming.
        self.ema: nn.Module | None = None
        if config.ema > 0:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(self.model, multi_avg_fn=ema_update(config.ema), use_buffers=True)
            self.eval_model = self.ema.module

    @property
    def is_main_process(self) -> bool:
        """Only the main process (rank 0) writes the run folder."""
        return self.context.is_main

    # -- precision and the optimiser step ------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision context of forward passes (autocast to bf16/fp16, or nothing for fp32)."""
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        scaler = self.precision.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def optimizer_step(self) -> None:
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    # -- checkpoints ---------------------------------------------------------------------------------
    def load_state(self, payload: dict[str, Any]) -> None:
        """Continue from a ``last.pt`` payload: weights, optimiser, epoch, best result (RNG: the caller)."""
        self.model.load_state_dict(payload.get("train_weights", payload["model"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(payload["model"])
            if "ema_updates" in payload:
                self.ema.n_averaged.fill_(int(payload["ema_updates"]))
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.precision.scaler is not None and payload.get("scaler"):
            self.precision.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState(
            epoch=int(payload["epoch"]),
            best_score=payload.get("best_score"),
            best_loss=payload.get("best_loss"),
            best_epoch=payload.get("best_epoch"),
        )

    def _payload(self, row: dict[str, Any]) -> dict[str, Any]:
        # Contiguous (NCHW) tensors: a checkpoint does not depend on the layout it was trained in.
        source = self.ema.module if self.ema is not None else self.model
        weights = {k: v.contiguous() for k, v in source.state_dict().items()}
        return {"model": weights, "meta": self.meta, "epoch": row["epoch"], "metrics": row}

    def save_epoch(self, row: dict[str, Any], is_best: bool) -> None:
        """Metrics line, then best.pt, then last.pt: a crash between them repeats this epoch on resume."""
        if not self.is_main_process:
            return
        self.run.append_metrics(row)
        if is_best:
            save_checkpoint(self.run.best, self._payload(row))
        last = self._payload(row)
        last.update(
            optimizer=self.optimizer.state_dict(),
            scheduler={"name": self.config.scheduler, "epochs": self.config.epochs},
            rng=capture_rng(self.generator),
            best_score=self.state.best_score,
            best_loss=self.state.best_loss,
            best_epoch=self.state.best_epoch,
        )
        if self.ema is not None:
            last["train_weights"] = {k: v.contiguous() for k, v in self.model.state_dict().items()}
            last["ema_updates"] = int(self.ema.n_averaged.item())
        if self.precision.scaler is not None:
            last["scaler"] = self.precision.scaler.state_dict()
        save_checkpoint(self.run.last, last)
        config = self.config
        context = f"{config.dataset}, {config.image_size} px, {config.model}" + (
            f", loss {config.loss}" if self.steps.task != "classification" else "") + (
            ", aided" if config.aid else "")
        plot_learning_curves(self.run.read_metrics(), self.run.path, self.steps.task, context)

    # -- epochs --------------------------------------------------------------------------------------
    def _batches(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        non_blocking = self.device.type == "cuda"
        image_format = torch.channels_last if self.channels_last else torch.preserve_format
        for batch in loader:
            moved = {k: (v.to(self.device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
                     for k, v in batch.items()}
            image = moved.get("image")
            if isinstance(image, torch.Tensor) and image.dim() == 4:
                moved["image"] = image.contiguous(memory_format=image_format)
            yield moved

    def run_epoch(self, loader: DataLoader, training: bool, epoch: int,
                  progress: TrainingProgress | None = None) -> dict[str, float]:
        """One pass over ``loader`` (training steps or validation); metrics over every process's images."""
        progress = progress if progress is not None else TrainingProgress(1, mode="quiet")
        model = self.train_model if training else self.eval_model
        model.train(training)
        prefix = "train" if training else "val"
        progress.start_phase("train" if training else "valid", epoch, len(loader))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        records: dict[str, list[torch.Tensor]] = {}
        show_loss = progress.mode == "bars"
        with torch.set_grad_enabled(training):
            for batch in self._batches(loader):
                with self.autocast():
                    result = self.steps.forward(model, batch, training)
                if training:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.backward(result.loss)
                    self.optimizer_step()
                n = batch["image"].shape[0]
                loss = result.loss.detach()
                loss_sum += loss.double() * n
                count += n
                for key, value in result.records.items():
                    records.setdefault(key, []).append(value)
                progress.step(loss.item() if show_loss else None)
        totals = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=self.device)])
        totals = all_reduce_sum(totals, self.context)
        metrics = {f"{prefix}_loss": float(totals[0].item()) / max(float(totals[1].item()), 1.0)}
        joined = gather_records({k: torch.cat(v) for k, v in records.items()}, self.context)
        metrics.update(self.steps.summarize(joined, prefix))
        return metrics

    def fit(self, progress_mode: str = "auto") -> TrainState:
        config = self.config
        higher = config.higher_is_better
        mode = progress_mode if self.is_main_process else "quiet"
        with TrainingProgress(config.epochs, self.state.epoch, mode=mode) as progress:
            for epoch in range(self.state.epoch + 1, config.epochs + 1):
                started = time.perf_counter()
                lr = scheduled_lr(config, epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                sampler = getattr(self.train_loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                row: dict[str, Any] = {"epoch": epoch}
                row.update(self.run_epoch(self.train_loader, True, epoch, progress))
                if not math.isfinite(row["train_loss"]):
                    raise DlmiError(
                        f"{self.run.path}: the training loss became {row['train_loss']} in epoch {epoch}; "
                        "try a lower --lr"
                    )
                row.update(self.run_epoch(self.val_loader, False, epoch, progress))
                row["lr"] = lr
                row["seconds"] = round(time.perf_counter() - started, 3)
                score = row.get(self.metric_name, row["val_loss"])
                state = self.state
                best = None if state.best_score is None else (state.best_score, state.best_loss)
                is_best = _is_better(score, row["val_loss"], best, higher)
                if is_best:
                    self.state.best_score, self.state.best_loss = score, row["val_loss"]
                    self.state.best_epoch = epoch
                row["best"] = is_best
                self.state.epoch = epoch
                self.save_epoch(row, is_best)
                progress.end_epoch(row)
        return self.state
