"""Calibration of class probabilities: temperature scaling, expected calibration error, Brier score.

Definitions (also in ``docs/metrics.md``):

- **Temperature scaling** (Guo et al. 2017): calibrated probabilities ``softmax(z / T)`` of the class logits
  ``z`` with one temperature ``T > 0`` for every class and image; ``T`` minimises the negative log-likelihood
  (mean over images of ``−log p_true``) of held-out logits. It is fitted over ``log T`` (so ``T`` stays
  positive) by a bounded golden-section search on ``T ∈ [0.05, 20]``; ``T > 1`` softens over-confident
  probabilities, ``T < 1`` sharpens them; the arg-max class never changes.
- **Expected calibration error (ECE)**: the top-class confidence ``c_i = max_k p_ik`` of each image is put
  into one of 15 equal-width bins ``[b/15, (b+1)/15)`` (the last bin also holds 1.0);
  ``ECE = Σ_b (n_b / N) · |acc_b − conf_b|``, where ``acc_b`` is the fraction of the bin's images whose
  arg-max class is the true one and ``conf_b`` their mean confidence. 0 is perfect; empty bins add nothing.
- **Brier score** (multi-class): ``(1/N) Σ_i Σ_k (p_ik − y_ik)²`` with ``y_i`` the one-hot true class;
  0 is perfect, 2 the worst (a sure, wrong prediction).

Intervals: percentile bootstrap over images (:mod:`dlmi.metrics.bootstrap`), the bins recomputed on every
resample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dlmi.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_interval

ECE_BINS = 15
T_MIN, T_MAX = 0.05, 20.0
ECE_DEFINITION = (f"expected calibration error: top-class confidences in {ECE_BINS} equal-width bins "
                  f"[b/{ECE_BINS}, (b+1)/{ECE_BINS}) (1.0 in the last); sum over bins of (images in bin / N) "
                  "× |accuracy in bin − mean confidence in bin|")
BRIER_DEFINITION = ("multi-class Brier score: mean over images of the sum over classes of "
                    "(probability − one-hot truth)²; 0 best, 2 worst")
NLL_DEFINITION = "negative log-likelihood: mean over images of −log(probability of the true class)"
TEMPERATURE_DEFINITION = ("temperature scaling: probabilities softmax(logits / T), one T > 0 fitted by "
                          "minimising the negative log-likelihood over log T (bounded golden-section search, "
                          f"T in [{T_MIN:g}, {T_MAX:g}])")


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` of (N,K) logits, float64, computed stably."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean ``−log softmax(logits / T)[true class]`` (:data:`NLL_DEFINITION`)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    top = z.max(axis=1, keepdims=True)
    log_norm = (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]
    labels = np.asarray(labels, dtype=np.int64)
    return float((log_norm - z[np.arange(len(z)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 80) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (:data:`TEMPERATURE_DEFINITION`):
    a golden-section search over ``log T`` in ``[log 0.05, log 20]`` (the NLL is convex in ``1/T``, so it
    has one minimum there). 1.0 for no images."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits (N,K) and labels (N,) must agree, got {logits.shape} and {labels.shape}")
    if len(labels) == 0:
        return 1.0

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = math.log(T_MIN), math.log(T_MAX)
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    return float(math.exp((low + high) / 2.0))


def _top(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)


def _bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.floor(confidence * bins).astype(np.int64), 0, bins - 1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[Any]]:
    """Per bin of top-class confidence: ``edges`` (bins+1), ``count``, ``confidence`` (mean) and ``accuracy``
    (``None`` in empty bins) — the reliability diagram's numbers and the ECE's terms."""
    confidence, correct = _top(probs, labels)
    index = _bin_of(confidence, bins)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    return {"edges": [b / bins for b in range(bins + 1)], "count": count.tolist(),
            "confidence": [float(s / n) if n else None for s, n in zip(conf_sum, count, strict=True)],
            "accuracy": [float(s / n) if n else None for s, n in zip(acc_sum, count, strict=True)]}


def _ece_rows(confidence: np.ndarray, correct: np.ndarray, idx: np.ndarray, bins: int) -> np.ndarray:
    """ECE of each resample (row of ``idx``), vectorised: per-row bin sums via one flat bincount."""
    rows, n = idx.shape
    conf, corr = confidence[idx], correct[idx]
    flat = (np.arange(rows)[:, None] * bins + _bin_of(conf, bins)).ravel()
    diff = np.bincount(flat, weights=(conf - corr).ravel(), minlength=rows * bins).reshape(rows, bins)
    return np.abs(diff).sum(axis=1) / n


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (:data:`ECE_DEFINITION`) of (N,K) probabilities against (N,) true classes; NaN for no images."""
    confidence, correct = _top(probs, labels)
    if confidence.size == 0:
        return float("nan")
    return float(_ece_rows(confidence, correct, np.arange(confidence.size)[None], bins)[0])


def brier_per_image(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) ``Σ_k (p_ik − y_ik)²`` — the Brier score is their mean."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(probs)), np.asarray(labels, dtype=np.int64)] = 1.0
    return ((probs - onehot) ** 2).sum(axis=1)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score (:data:`BRIER_DEFINITION`); NaN for no images."""
    values = brier_per_image(probs, labels)
    return float(values.mean()) if values.size else float("nan")


def calibration_scores(probs: np.ndarray, labels: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES,
                       seed: int = DEFAULT_SEED, bins: int = ECE_BINS) -> dict[str, Any]:
    """``{"ece", "brier"}`` as reported numbers (``value``, ``low``, ``high``, ``n``, ``definition``; 95 %
    percentile bootstrap over images) and the ``reliability`` bins."""
    confidence, correct = _top(probs, labels)
    brier = brier_per_image(probs, labels)
    n = int(confidence.size)

    def scored(value: float, interval: Any, definition: str) -> dict[str, Any]:
        return {"value": None if n == 0 else value, "low": interval.low if interval else None,
                "high": interval.high if interval else None, "n": n, "definition": definition}

    ece_interval = bootstrap_interval(n, lambda idx: _ece_rows(confidence, correct, idx, bins),
                                      resamples=resamples, seed=seed)
    brier_interval = bootstrap_interval(n, lambda idx: brier[idx].mean(axis=1), resamples=resamples,
                                        seed=seed)
    return {"ece": scored(expected_calibration_error(probs, labels, bins), ece_interval, ECE_DEFINITION),
            "brier": scored(brier_score(probs, labels), brier_interval, BRIER_DEFINITION),
            "reliability": reliability_bins(probs, labels, bins)}


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float, *,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """ECE, Brier and NLL of ``logits`` before (``T = 1``) and after temperature scaling with ``temperature``,
    each with its bootstrap interval (the same resamples before and after: paired)."""
    labels = np.asarray(labels, dtype=np.int64)
    before = calibration_scores(scaled_probabilities(logits, 1.0), labels, resamples=resamples, seed=seed)
    after = calibration_scores(scaled_probabilities(logits, temperature), labels, resamples=resamples,
                               seed=seed)
    for part, t in ((before, 1.0), (after, temperature)):
        part["nll"] = {"value": negative_log_likelihood(logits, labels, t) if len(labels) else None,
                       "definition": NLL_DEFINITION}
    return {"temperature": float(temperature), "definition": TEMPERATURE_DEFINITION,
            "before": before, "after": after}
