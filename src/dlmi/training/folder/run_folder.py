"""The run folder's layout and its per-epoch metrics log (``metrics.jsonl``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlmi.atomic import write_text_atomic
from dlmi.errors import DlmiError
from dlmi.runtime.trained import BEST_CHECKPOINT, LAST_CHECKPOINT


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (``[]`` when there is none), one per logged epoch.

    Lines are appended and fsynced one at a time, so a kill can only cut the last line short: an unreadable
    last line is dropped (resuming rewrites the log without it). An unreadable line anywhere else, or a row
    without an integer ``epoch``, is not a dlmi log and is an error.
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn by a kill
            raise DlmiError(f"{path}: line {number} is not JSON (only the last line can be cut short)") \
                from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise DlmiError(f"{path}: line {number} is not an epoch's row (an object with an integer epoch)")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def best(self) -> Path:
        return self.path / BEST_CHECKPOINT

    @property
    def last(self) -> Path:
        return self.path / LAST_CHECKPOINT

    @property
    def runtime(self) -> Path:
        """How the latest (re)start computed: device, precision, processes, cache (``runtime.json``)."""
        return self.path / "runtime.json"

    def curve(self, name: str) -> Path:
        return self.path / f"curve_{name}.png"

    def check_new(self) -> None:
        """Refuse a folder that already holds a run (continue it with resume instead), or another tool's
        ``metrics.jsonl``."""
        if self.path.exists() and not self.path.is_dir():
            raise DlmiError(f"{self.path}: exists and is not a folder")
        if self.config.exists() or self.last.exists() or self.best.exists():
            raise DlmiError(
                f"{self.path}: already holds a training run; continue it with --resume {self.path} "
                "or choose another --out"
            )
        if self.metrics.exists():  # not a dlmi run (no config.json), but training would append to its log
            raise DlmiError(
                f"{self.metrics}: this folder is not a dlmi run but holds a metrics.jsonl that training "
                "would append to; choose another --out"
            )

    def check_resumable(self) -> None:
        """Resuming continues from ``last.pt``. Without it, only a run that has trained nothing yet (no logged
        epoch, no ``best.pt``) starts again from the beginning; anything else would overwrite what is there,
        so it is refused and the folder left as it is."""
        if self.last.is_file():
            return
        rows = self.read_metrics()
        plural = "s" if len(rows) != 1 else ""
        held = [f"{len(rows)} logged epoch{plural} in {self.metrics.name}"] if rows else []
        if self.best.exists():
            held.append(self.best.name)
        if held:
            raise DlmiError(
                f"{self.path}: has no {self.last.name} to resume from but holds {' and '.join(held)}, which "
                f"resuming would overwrite; restore {self.last.name}, or train again with another --out"
            )

    def create(self) -> None:
        """Make a fresh run folder (after :meth:`check_new`)."""
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The logged epochs (:func:`read_metrics_log`: a last line cut short by a kill is dropped)."""
        return read_metrics_log(self.metrics)

    def truncate_metrics(self, up_to_epoch: int) -> list[dict[str, Any]]:
        """Keep one line per epoch up to ``up_to_epoch`` (the last written wins); rewrite atomically."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for row in self.read_metrics():
            if row["epoch"] <= up_to_epoch:
                by_epoch[row["epoch"]] = row
        rows = [by_epoch[e] for e in sorted(by_epoch)]
        write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one epoch's line and flush it to disk."""
        with open(self.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
