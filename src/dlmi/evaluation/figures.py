"""Evaluation figures: the confusion matrix, the seed's qualitative panels and the reliability diagram,
written atomically as PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlmi.atomic import write_atomic


def _figure_module():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    plt = _figure_module()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def confusion_matrix_png(matrix: np.ndarray, classes: Sequence[str], path: str | Path, title: str) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with counts and row percentages."""
    plt = _figure_module()
    matrix = np.asarray(matrix)
    k = len(classes)
    figure, axis = plt.subplots(figsize=(1.3 * k + 2.2, 1.1 * k + 1.8))
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape, dtype=float), where=row_totals > 0)
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for t in range(k):
        for p in range(k):
            axis.text(p, t, f"{matrix[t, p]}\n{shares[t, p]:.0%}", ha="center", va="center",
                      color="white" if shares[t, p] > 0.6 else "black", fontsize=9)
    axis.set_xticks(range(k), classes, rotation=30, ha="right")
    axis.set_yticks(range(k), classes)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title, fontsize=9)
    return _save(figure, Path(path))


@dataclass
class PanelRow:
    """One row of the qualitative panels: an image, its truth, and each prediction with its caption."""

    title: str
    image: np.ndarray
    truth: np.ndarray
    predictions: list[tuple[str, np.ndarray]]


def panels_png(rows: Sequence[PanelRow], path: str | Path, title: str) -> Path:
    """A grid, one row per (side, class) example: image, true mask, prediction(s)."""
    plt = _figure_module()
    columns = 2 + max((len(r.predictions) for r in rows), default=0)
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.3 * columns, 2.4 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, row in enumerate(rows):
        cells = [("image", row.image, "gray"), ("truth", row.truth, "gray")]
        cells += [(caption, mask, "gray") for caption, mask in row.predictions]
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c >= len(cells):
                axis.set_visible(False)
                continue
            caption, picture, cmap = cells[c]
            axis.imshow(picture, cmap=cmap, vmin=0, vmax=1 if picture.dtype == bool else 255)
            axis.set_title(caption, fontsize=8)
            if c == 0:
                axis.set_ylabel(row.title, fontsize=8)
    figure.suptitle(title, fontsize=10)
    return _save(figure, Path(path))


def reliability_png(curves: Sequence[tuple[str, dict[str, Any]]], path: str | Path, title: str) -> Path:
    """A reliability diagram: per bin of top-class confidence, the accuracy against the mean confidence
    (one line per curve, e.g. before and after temperature scaling; the diagonal is perfect calibration),
    and below it how many images each bin holds. ``curves``: (label, :func:`reliability_bins` dict)."""
    plt = _figure_module()
    figure, (axis, counts) = plt.subplots(2, 1, figsize=(4.6, 5.6), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1]}, layout="constrained")
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    edges = np.asarray(curves[0][1]["edges"]) if curves else np.linspace(0, 1, 16)
    width = float(edges[1] - edges[0])
    for number, (label, bins) in enumerate(curves):
        filled = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"], strict=True) if c is not None]
        if filled:
            x, y = zip(*filled, strict=True)
            axis.plot(x, y, marker="o", markersize=4, linewidth=1.5, label=label)
        share = width / max(len(curves), 1)
        counts.bar(edges[:-1] + share * number, bins["count"], width=share, align="edge", label=label)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy (fraction correct)")
    axis.legend(fontsize=7, loc="upper left")
    axis.set_title(title, fontsize=9)
    counts.set_xlabel("top-class confidence (bin mean)")
    counts.set_ylabel("images")
    return _save(figure, Path(path))
