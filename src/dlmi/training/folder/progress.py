"""Training progress: rich bars on a terminal, one line per epoch otherwise, nothing when quiet."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    """One line summarising an epoch's metrics row."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key, value in row.items():
        if key in ("epoch", "best"):
            continue
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
    if row.get("best"):
        parts.append("(best)")
    return "  ".join(parts)


class TrainingProgress:
    """Progress for a run of ``epochs`` epochs starting after ``done`` completed ones.

    ``mode`` is ``"auto"`` (bars on a terminal, lines otherwise), ``"bars"``, ``"lines"`` or ``"quiet"``.
    """

    def __init__(self, epochs: int, done: int = 0, *, mode: str = "auto", stream: Any = None) -> None:
        self.epochs = epochs
        self.done = done
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bars" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self._progress: Any = None
        self._run_task: Any = None
        self._step_task: Any = None

    def __enter__(self) -> TrainingProgress:
        if self.mode == "bars":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.__enter__()
            self._run_task = self._progress.add_task("run", total=self.epochs, completed=self.done, info="")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def start_phase(self, name: str, epoch: int, steps: int) -> None:
        """Begin the training or validation steps of one epoch."""
        if self._progress is None:
            return
        if self._step_task is not None:
            self._progress.remove_task(self._step_task)
        self._step_task = self._progress.add_task(f"{name} {epoch}", total=steps, info="")

    def step(self, loss: float | None = None) -> None:
        if self._progress is None or self._step_task is None:
            return
        info = f"loss {loss:.4f}" if loss is not None else ""
        self._progress.update(self._step_task, advance=1, info=info)

    def end_epoch(self, row: dict[str, Any]) -> None:
        line = format_epoch(row, self.epochs)
        if self._progress is not None:
            if self._step_task is not None:
                self._progress.remove_task(self._step_task)
                self._step_task = None
            self._progress.update(self._run_task, advance=1, info="")
            self._progress.console.print(line)
        elif self.mode == "lines":
            print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        elif self.mode != "quiet":
            print(text, file=self.stream, flush=True)
