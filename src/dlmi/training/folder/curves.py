"""Learning-curve PNGs from ``metrics.jsonl`` rows (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlmi.atomic import write_atomic

LABELS = {
    "train_loss": "train side", "val_loss": "val side",
    "train_accuracy": "train side", "val_accuracy": "val side",
    "train_iou": "train side", "val_iou": "val side", "val_iou_unaided": "val side, without the aid",
}


def plot_curve(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], path: Path, *, title: str, ylabel: str
) -> Path | None:
    """Plot ``keys`` against epoch into ``path`` (atomically); ``None`` when no row has any of them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key in present:
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                  label=LABELS.get(key, key))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def plot_learning_curves(rows: Sequence[dict[str, Any]], run_dir: Path, task: str,
                         context: str = "") -> list[Path]:
    """``curve_loss.png`` and ``curve_accuracy.png`` (classifier) or ``curve_iou.png`` (segmenter).

    ``context`` (e.g. dataset, image size, model) is added to each title.
    """
    suffix = f"\n{context}" if context else ""
    written = [plot_curve(rows, ["train_loss", "val_loss"], run_dir / "curve_loss.png",
                          title="Loss" + suffix, ylabel="loss")]
    if task == "joint":
        written.append(plot_curve(rows, ["train_lesion_dice", "val_lesion_dice", "train_accuracy",
                                         "val_accuracy"], run_dir / "curve_joint.png",
                                  title="Lesion Dice (unaided) and class accuracy" + suffix, ylabel="score"))
    elif task == "classification":
        written.append(plot_curve(rows, ["train_accuracy", "val_accuracy"], run_dir / "curve_accuracy.png",
                                  title="Accuracy (arg-max class = true class)" + suffix, ylabel="accuracy"))
    else:
        keys = ["train_iou", "val_iou", "val_iou_unaided"]
        written.append(plot_curve(rows, keys, run_dir / "curve_iou.png",
                                  title="Mean per-image IoU (empty truth and empty prediction = 1)" + suffix,
                                  ylabel="mean IoU"))
    return [p for p in written if p is not None]
