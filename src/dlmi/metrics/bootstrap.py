"""Percentile bootstrap intervals over images.

Definition (named ``percentile bootstrap over images``): draw ``resamples`` sets of ``n`` images with
replacement from the ``n`` evaluated images, recompute the statistic on each set, and report the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those values. Seeded, so the same inputs
give the same interval; the same seed and ``n`` draw the same resamples, so two statistics over the same
images (e.g. with and without the classifier's aid) are resampled in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_METHOD = "percentile bootstrap over images"
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0



def check_resamples(resamples: object) -> int:
    """``--resamples`` as given by a user: a whole number of at least 1 (0 or less would give no interval)."""
    from dlmi.errors import DlmiError

    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise DlmiError(f"--resamples {resamples!r}: the number of bootstrap resamples must be a whole "
                        f"number of at least 1 (default {DEFAULT_RESAMPLES})")
    return resamples


# Resampled index matrices are built in chunks of at most this many entries (bounded memory for big n).
_CHUNK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval."""

    low: float
    high: float
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    method: str = BOOTSTRAP_METHOD

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low


def resample_indices(n: int, resamples: int, seed: int):
    """Yield (chunk, n) int arrays of image indices drawn with replacement; ``resamples`` rows in all."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ENTRIES // max(n, 1))
    done = 0
    while done < resamples:
        rows = min(chunk, resamples - done)
        yield rng.integers(0, n, size=(rows, n))
        done += rows


def bootstrap_interval(
    n: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval | None:
    """Percentile interval of ``statistic`` over ``n`` images.

    ``statistic(indices)`` receives a (B, n) int array of resampled image indices and returns the (B,)
    statistic of each resample (vectorised); resamples where it is undefined may return NaN and are left
    out. ``None`` when ``n`` is 0 or the statistic is undefined on every resample.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n <= 0 or resamples <= 0:
        return None
    values = np.concatenate(
        [np.asarray(statistic(idx), dtype=np.float64) for idx in resample_indices(n, resamples, seed)]
    )
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high), confidence, resamples, seed)


def bootstrap_mean(
    values: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval | None:
    """Percentile interval of the mean of per-image ``values`` (e.g. per-image IoU, or 0/1 correctness)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return bootstrap_interval(
        values.size, lambda idx: values[idx].mean(axis=1),
        resamples=resamples, confidence=confidence, seed=seed,
    )


def bootstrap_ratio(
    numerators: np.ndarray,
    denominators: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval | None:
    """Percentile interval of ``sum(numerators) / sum(denominators)`` over resampled images.

    Used for ratios that are not a mean over all images, such as a class's precision (its true positives
    over the images predicted as that class); a resample with a zero denominator is left out.
    """
    num = np.asarray(numerators, dtype=np.float64).reshape(-1)
    den = np.asarray(denominators, dtype=np.float64).reshape(-1)
    if num.shape != den.shape:
        raise ValueError("numerators and denominators must have the same length")

    def statistic(idx: np.ndarray) -> np.ndarray:
        top, bottom = num[idx].sum(axis=1), den[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)

    return bootstrap_interval(num.size, statistic, resamples=resamples, confidence=confidence, seed=seed)


def scored_mean(
    values: np.ndarray,
    definition: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> dict[str, float | int | str | None]:
    """A reported number: the mean of per-image ``values`` with its interval, image count and definition.

    ``{"value", "low", "high", "n", "definition"}``; value and bounds are ``None`` over zero images.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    interval = bootstrap_mean(values, resamples=resamples, confidence=confidence, seed=seed)
    return {
        "value": float(values.mean()) if values.size else None,
        "low": interval.low if interval else None,
        "high": interval.high if interval else None,
        "n": int(values.size),
        "definition": definition,
    }


def interval_settings(
    resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE, seed: int = DEFAULT_SEED
) -> dict[str, float | int | str]:
    """How every ``low``/``high`` pair of a report was computed (stored once per report)."""
    return {"method": BOOTSTRAP_METHOD, "confidence": confidence, "resamples": resamples, "seed": seed}
