"""Statistics of a measured (or simulated) set of detector readings.

All functions take NumPy arrays: ``powers`` (N, K) detector powers, ``scores`` (N, C)
class scores (signed sums of each class's detectors, :func:`diffractive.detectors.class_scores`),
``labels`` (N,) true classes.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import D2NNError

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95 %).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and keeps close to its
    nominal coverage for small ``n`` and rates near 0 or 1 (Wilson 1927; Brown, Cai &
    DasGupta 2001). Returns (lo, hi) as fractions; ``z`` is the normal quantile of the
    confidence level. ``n == 0`` gives ``(0, 1)``.
    """
    if n <= 0:
        return 0.0, 1.0
    if successes < 0 or successes > n:
        raise D2NNError(f"successes must lie in 0 ... n={n}, got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if successes == 0:
        lo = 0.0
    if successes == n:
        hi = 1.0
    return lo, hi


def confusion_matrix(labels, predictions, n_classes: int) -> np.ndarray:
    """Counts (C, C), C = ``n_classes``: rows are true classes, columns predicted classes.

    ``labels`` and ``predictions``: (N,) class indices.
    """
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(conf, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return conf


def margins(scores, labels, powers) -> np.ndarray:
    """Relative classification margin per sample, (N,), from ``scores`` (N, C), ``labels`` (N,) and ``powers`` (N, K).

    ``(score[true] - max over other classes of score) / sum_k |power_k|``: positive when
    the sample is classified correctly, and the fraction of the detected power by which
    it is. Samples with no detected power get 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    true = scores[np.arange(n), labels]
    other = scores.copy()
    other[np.arange(n), labels] = -np.inf
    best_other = other.max(axis=1) if scores.shape[1] > 1 else np.zeros(n)
    norm = np.abs(np.asarray(powers, dtype=np.float64)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(norm > 0, (true - best_other) / norm, 0.0)
    return m


def power_distribution(powers, labels, n_classes: int) -> np.ndarray:
    """Per true class, how the detected power divides over the detectors: (C, K).

    Row ``c`` is the mean power vector of the samples of class ``c`` divided by its sum
    (rows of classes without samples are NaN). Taking the mean before normalising keeps
    the rows meaningful when single readings are small or negative.
    """
    powers = np.asarray(powers, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full((n_classes, powers.shape[1]), np.nan)
    for c in range(n_classes):
        sel = labels == c
        if sel.any():
            mean = powers[sel].mean(axis=0)
            s = mean.sum()
            if s != 0:
                out[c] = mean / s
    return out


def _rows_to_unit_max(a) -> np.ndarray:
    """``a`` (N, K) with each row divided by its largest magnitude (rows of zeros left as they are)."""
    top = np.abs(a).max(axis=1, keepdims=True) if a.size else np.ones((len(a), 1))
    return a / np.where(top > 0, top, 1.0)


def row_correlation(a, b) -> np.ndarray:
    """Pearson correlation (N,) of each row of ``a`` (N, K) with the same row of ``b`` (N, K) (NaN if constant)."""
    a = _rows_to_unit_max(np.asarray(a, dtype=np.float64))  # the correlation does not change; squares
    b = _rows_to_unit_max(np.asarray(b, dtype=np.float64))  # of huge or subnormal readings then cannot overflow/underflow
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def pooled_correlation(a, b) -> float:
    """Pearson correlation of all readings of ``a`` and ``b`` (N, K), each sample normalised to unit total first.

    Samples with no power in either are left out; NaN when nothing (or nothing varying) is left.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.abs(a).sum(axis=1, keepdims=True)
    nb = np.abs(b).sum(axis=1, keepdims=True)
    ok = (na[:, 0] > 0) & (nb[:, 0] > 0)
    if ok.sum() == 0:
        return float("nan")
    x = (a[ok] / na[ok]).ravel()
    y = (b[ok] / nb[ok]).ravel()
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def describe(values) -> dict:
    """mean / median / min / max of finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
