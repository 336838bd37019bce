"""Calibration of detector readings: background, per-detector gains, gain fitting.

Model of a reading: ``measured[n, k] = scale * gain[k] * true[n, k] + background[k] + noise``.
``background`` comes from a dark measurement and is subtracted; ``gain`` either comes from
a calibration file (applied: ``corrected = (measured - background) / gain``) or is fitted
by least squares against the simulated powers of the same inputs.

The overall ``scale`` (source power, detector units) cannot be separated from the gains
by any measurement of ratios, so fitted gains are reported relative to their mean
(mean 1) and the mean is reported as ``scale`` (measured units per simulated unit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import D2NNError


@dataclass
class GainFit:
    """Least-squares per-detector gains: ``measured[:, k] ~ scale * gains[k] * simulated[:, k]``.

    ``gains`` (K,) have mean 1 over the detectors that could be fitted (``None``-like NaN
    where a detector received too little simulated power to fit); ``stderr`` (K,) are their
    standard errors from the residuals; ``rms_relative_residual`` is the rms residual of
    the fit divided by the rms measured power. ``problem`` says, in words, why no gain
    could be fitted (then every gain is NaN), else ``""``.
    """

    gains: np.ndarray
    stderr: np.ndarray
    scale: float
    rms_relative_residual: float
    n: int
    problem: str = ""

    def to_json(self) -> dict:
        """JSON-ready dict of the fit (NaN gains and errors become None)."""
        def clean(a):
            return [None if not np.isfinite(v) else float(v) for v in a]
        def num(v):
            return float(v) if np.isfinite(v) else None
        return {"gains": clean(self.gains), "stderr": clean(self.stderr), "scale": num(self.scale),
                "rms_relative_residual": num(self.rms_relative_residual), "n": self.n,
                "problem": self.problem or None}


def subtract_background(values, background):
    """``values - background`` as float64 (background broadcast over samples); negatives are kept.

    ``values`` (N, K) powers with ``background`` (K,), or (N, H, W) scans with (H, W);
    ``background`` None: ``values`` as they are (float64).
    """
    if background is None:
        return np.asarray(values, dtype=np.float64)
    return np.asarray(values, dtype=np.float64) - np.asarray(background, dtype=np.float64)


def apply_gains(powers, gains):
    """Divide each detector's readings ``powers`` (N, K) by its gain (``gains`` (K,), positive; None: 1)."""
    if gains is None:
        return np.asarray(powers, dtype=np.float64)
    return np.asarray(powers, dtype=np.float64) / np.asarray(gains, dtype=np.float64)


def fit_gains(measured, simulated, *, min_signal=1e-6) -> GainFit:
    """Fit per-detector gains by least squares through the origin, detector by detector.

    ``gain_k = sum_n m[n,k] s[n,k] / sum_n s[n,k]^2``. A detector whose simulated power is
    below ``min_signal`` (a fraction) times the largest detector's (summed over samples) is
    not fitted (NaN). ``measured`` and ``simulated`` are (N, K) powers of the same samples;
    needs N >= 2. Returns a :class:`GainFit`.
    """
    m = np.asarray(measured, dtype=np.float64)
    s = np.asarray(simulated, dtype=np.float64)
    if m.shape != s.shape or m.ndim != 2:
        raise D2NNError(f"measured {m.shape} and simulated {s.shape} powers must both be (N, K)")
    n, k = m.shape
    if n < 2:
        raise D2NNError("fitting gains needs at least 2 samples")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(s))):
        raise D2NNError("fitting gains needs finite measured and simulated powers")
    # the fit is done on both arrays scaled to a largest magnitude of 1 (and scaled back), so
    # that neither huge nor tiny (subnormal) readings overflow or underflow in the squares
    m_max, s_max = float(np.abs(m).max()), float(np.abs(s).max())
    nan = np.full(k, np.nan)
    if s_max == 0:
        return GainFit(nan, nan.copy(), float("nan"), float("nan"), n,
                       problem="the simulated powers are zero on every detector")
    if m_max == 0:
        return GainFit(nan, nan.copy(), float("nan"), float("nan"), n,
                       problem="the measured powers are zero on every detector")
    m, s = m / m_max, s / s_max
    ss = (s * s).sum(axis=0)
    ok = ss > min_signal * ss.max()
    beta = np.full(k, np.nan)
    se = np.full(k, np.nan)
    beta[ok] = (m[:, ok] * s[:, ok]).sum(axis=0) / ss[ok]
    resid = m[:, ok] - beta[ok] * s[:, ok]
    sigma2 = (resid ** 2).sum(axis=0) / max(n - 1, 1)
    se[ok] = np.sqrt(sigma2 / ss[ok])
    scale = float(np.mean(beta[ok]))
    rms_m = np.sqrt(np.mean(m[:, ok] ** 2))
    rel = float(np.sqrt(np.mean(resid ** 2)) / rms_m) if rms_m > 0 else float("nan")
    if not scale > 0:
        return GainFit(nan, nan.copy(), float("nan"), rel, n,
                       problem=f"the least-squares gains average to {scale * m_max / s_max:.3g} (not positive: the "
                               "measured powers do not follow the simulated ones)")
    with np.errstate(over="ignore"):
        return GainFit(gains=beta / scale, stderr=se / scale, scale=scale * (m_max / s_max),
                       rms_relative_residual=rel, n=n)
