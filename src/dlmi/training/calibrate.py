"""One run's temperature: fitted on its val side at the end of training (:mod:`dlmi.runtime.calibration`).

The run's ``best.pt`` (what export and prediction load by default) predicts the val side's images as
evaluation reads them; the temperature that minimises the negative log-likelihood of those class logits
(:func:`dlmi.metrics.calibration.fit_temperature`) is written to ``calibration.json`` in the run folder,
atomically. ``best.pt`` was chosen on the same side, so the fit is on images the run did not train on but
did select its checkpoint with. A run without a class head, or without val images, gets none (``T = 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dlmi.atomic import write_json_atomic
from dlmi.datasets.base import DatasetSource, Sample
from dlmi.runtime.calibration import CALIBRATION_FILE

CHECKPOINT = "best.pt"


def class_logits_of(trained: Any, source: DatasetSource, samples: Sequence[Sample],
                    device: torch.device | str = "cpu",
                    batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """((N,K) class logits, (N,) labels) of a trained classifier or joint model on ``samples``."""
    from dlmi.datasets.loader import EvalImages

    model = trained.model.to(device).eval()
    logits, labels = [], []
    loader = DataLoader(EvalImages(source, list(samples), trained.image_size), batch_size=batch_size)
    with torch.inference_mode():
        for batch in loader:
            output = model(batch["image"].to(device))
            class_logits = output[1] if trained.task == "joint" else output
            logits.append(class_logits.float().cpu().numpy())
            labels.append(batch["label"].numpy())
    classes = len(trained.classes)
    return (np.concatenate(logits) if logits else np.zeros((0, classes), np.float32),
            np.concatenate(labels) if labels else np.zeros(0, np.int64))


def calibrate_run(run_dir: str | Path, source: DatasetSource, val: Sequence[Sample],
                  device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """Fit the run's temperature on ``val`` with its ``best.pt`` and write ``calibration.json``; ``None``
    (nothing written) for a run without a class head or without val images."""
    from dlmi.metrics.calibration import TEMPERATURE_DEFINITION, fit_temperature, negative_log_likelihood
    from dlmi.runtime.trained import load_trained

    run_dir = Path(run_dir)
    if not val or not (run_dir / CHECKPOINT).is_file():
        return None
    trained = load_trained(run_dir, checkpoint_name=CHECKPOINT, map_location=device)
    if trained.task not in ("classification", "joint"):
        return None
    logits, labels = class_logits_of(trained, source, val, device)
    temperature = fit_temperature(logits, labels)
    record = {"temperature": temperature, "checkpoint": CHECKPOINT,
              "calibrated_on": f"the val side of {run_dir} with its {CHECKPOINT} ({len(labels)} images)",
              "images": int(len(labels)), "method": TEMPERATURE_DEFINITION,
              "nll_before": negative_log_likelihood(logits, labels, 1.0),
              "nll_after": negative_log_likelihood(logits, labels, temperature)}
    write_json_atomic(run_dir / CALIBRATION_FILE, record)
    return record
