"""The generic training loop: epochs of task steps, validation, checkpoints, metrics and curves.

A task (classification, segmentation) supplies a :class:`TaskSteps`; the loop owns the optimiser, the
learning-rate schedule, gradient clipping, the RNG states and everything written to the run folder.
Slots for later additions: :meth:`Trainer.autocast` (mixed precision), :meth:`Trainer.make_train_sampler`
(distributed samplers) and :attr:`Trainer.is_main_process` (only the main process writes files).
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
from dlmi.training.checkpoint import save_checkpoint
from dlmi.training.config import TrainConfig
from dlmi.training.curves import plot_learning_curves
from dlmi.training.progress import TrainingProgress
from dlmi.training.rng import capture_rng
from dlmi.training.run_dir import RunFolder


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
    """The learning rate of ``epoch`` (1-based): constant, or cosine from ``lr`` towards 0 over the run."""
    assert config.lr is not None
    if config.scheduler == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / config.epochs))
    return config.lr


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    lr, weight_decay = config.lr, config.weight_decay or 0.0
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise DlmiError(f"unknown optimizer {config.optimizer!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when one is available, else the CPU; asking for an absent GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DlmiError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


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
    """Runs epochs ``state.epoch + 1 … config.epochs`` and writes the run folder after each."""

    is_main_process: bool = True

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
    ) -> None:
        self.config = config
        self.steps = steps
        self.model = model.to(device)
        self.run = run
        self.meta = meta
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.generator = generator
        self.device = device
        self.optimizer = build_optimizer(config, self.model)
        self.state = TrainState()
        self.metric_name = config.best_metric or "val_loss"

    # -- hooks for later additions -------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision context of forward passes (full precision here)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self) -> None:
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()

    # -- checkpoints ---------------------------------------------------------------------------------
    def load_state(self, payload: dict[str, Any]) -> None:
        """Continue from a ``last.pt`` payload: weights, optimiser, epoch, best result (RNG: the caller)."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = TrainState(
            epoch=int(payload["epoch"]),
            best_score=payload.get("best_score"),
            best_loss=payload.get("best_loss"),
            best_epoch=payload.get("best_epoch"),
        )

    def _payload(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "meta": self.meta, "epoch": row["epoch"], "metrics": row}

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
        save_checkpoint(self.run.last, last)
        config = self.config
        context = f"{config.dataset}, {config.image_size} px, {config.model}" + (
            f", loss {config.loss}" if self.steps.task == "segmentation" else "") + (
            ", aided" if config.aid else "")
        plot_learning_curves(self.run.read_metrics(), self.run.path, self.steps.task, context)

    # -- epochs --------------------------------------------------------------------------------------
    def _batches(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        non_blocking = self.device.type == "cuda"
        for batch in loader:
            yield {k: (v.to(self.device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
                   for k, v in batch.items()}

    def _run_epoch(self, loader: DataLoader, training: bool, epoch: int,
                   progress: TrainingProgress) -> dict[str, float]:
        self.model.train(training)
        prefix = "train" if training else "val"
        progress.start_phase("train" if training else "valid", epoch, len(loader))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        records: dict[str, list[torch.Tensor]] = {}
        show_loss = progress.mode == "bars"
        with torch.set_grad_enabled(training):
            for batch in self._batches(loader):
                with self.autocast():
                    result = self.steps.forward(self.model, batch, training)
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
        metrics = {f"{prefix}_loss": float(loss_sum.item()) / max(count, 1)}
        metrics.update(self.steps.summarize({k: torch.cat(v) for k, v in records.items()}, prefix))
        return metrics

    def fit(self, progress_mode: str = "auto") -> TrainState:
        config = self.config
        higher = config.higher_is_better
        with TrainingProgress(config.epochs, self.state.epoch, mode=progress_mode) as progress:
            for epoch in range(self.state.epoch + 1, config.epochs + 1):
                started = time.perf_counter()
                lr = scheduled_lr(config, epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                row: dict[str, Any] = {"epoch": epoch}
                row.update(self._run_epoch(self.train_loader, True, epoch, progress))
                if not math.isfinite(row["train_loss"]):
                    raise DlmiError(
                        f"{self.run.path}: the training loss became {row['train_loss']} in epoch {epoch}; "
                        "try a lower --lr"
                    )
                row.update(self._run_epoch(self.val_loader, False, epoch, progress))
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
