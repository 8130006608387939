"""A trained model's temperature: where it was fitted, how it is stored, how every path reads it.

The class probabilities every path gives (the exported graphs, ``dlmi predict`` with either backend,
``dlmi evaluate``'s aided masks) are ``softmax(class_logits / T)``
(:func:`dlmi.metrics.calibration.scaled_probabilities`). ``T`` is fitted on held-out logits:

- a single run: on its val side with its ``best.pt``, at the end of training; stored in the run folder as
  ``calibration.json`` (``{"temperature", "checkpoint", "calibrated_on", ...}``); it applies to that
  checkpoint only (another checkpoint of the run has ``T = 1``);
- a fold ensemble: on its members' out-of-fold logits, in ``train_folds``; stored in ``ensemble.json``
  (``temperature``, ``calibration``).

:func:`load_trained` puts it into the model's ``meta`` (``temperature``, ``calibration``). A model without one
(trained before dlmi fitted temperatures, a bare checkpoint, a run without a val side) has ``T = 1`` and
``calibrated_on`` ``None``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlmi.errors import DlmiError

CALIBRATION_FILE = "calibration.json"


def temperature_of(meta: Mapping[str, Any]) -> float:
    """The temperature a model's metadata records; 1.0 where none."""
    value = meta.get("temperature")
    return 1.0 if value is None else float(value)


def calibrated_on(meta: Mapping[str, Any]) -> str | None:
    """What the temperature was fitted on, in words; ``None`` where none was fitted (``T = 1``)."""
    record = meta.get("calibration")
    if isinstance(record, Mapping) and record.get("calibrated_on"):
        return str(record["calibrated_on"])
    return None


def check_temperature(value: object, where: str) -> float:
    """A stored temperature, checked: a finite number above 0; one line naming the file otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise DlmiError(f"{where}: 'temperature' must be a number above 0, got {value!r:.40}")
    return float(value)


def read_run_calibration(run_dir: Path | None, checkpoint_name: str) -> dict[str, Any] | None:
    """The run folder's ``calibration.json`` when it was fitted for ``checkpoint_name``, else ``None``."""
    if run_dir is None:
        return None
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DlmiError(f"{path}: cannot be read ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise DlmiError(f"{path}: expected a JSON object")
    record["temperature"] = check_temperature(record.get("temperature"), str(path))
    return record if record.get("checkpoint") == checkpoint_name else None
