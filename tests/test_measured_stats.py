"""Statistics and calibration against known truths: Wilson intervals (closed form vs. the
defining inequality, and coverage), confusion, margins, power distribution, gain fitting."""
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from diffractive.measured.calibration import apply_gains, fit_gains, subtract_background
from diffractive.measured.stats import (Z95, confusion_matrix, margins, pooled_correlation, power_distribution,
                                        row_correlation, wilson_interval)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (44, 50), (1, 3), (500, 1000), (88, 100)])
def test_wilson_interval_solves_its_defining_inequality(k, n):
    # The Wilson interval is {p : |k/n - p| <= z sqrt(p (1 - p) / n)}; find its ends by root finding.
    f = lambda p: (k / n - p) ** 2 - Z95 ** 2 * p * (1 - p) / n  # noqa: E731
    ph = k / n
    lo = 0.0 if k == 0 else brentq(f, 1e-15, ph - 1e-12)
    hi = 1.0 if k == n else brentq(f, ph + 1e-12, 1 - 1e-15)
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-9)


def test_wilson_reference_value():
    # 0 successes in 10 trials: upper end z^2 / (n + z^2) = 0.2775 (Brown, Cai & DasGupta 2001)
    assert wilson_interval(0, 10)[1] == pytest.approx(Z95 ** 2 / (10 + Z95 ** 2))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


@pytest.mark.parametrize("n", [20, 50, 200])
@pytest.mark.parametrize("p", [0.3, 0.7, 0.88, 0.95])
def test_wilson_interval_covers_the_true_rate(n, p):
    # over many simulated runs of n Bernoulli(p) trials, the interval holds p about 95 % of the time
    rng = np.random.default_rng([n, int(1000 * p)])
    ks = rng.binomial(n, p, size=20000)
    table = np.array([wilson_interval(k, n) for k in range(n + 1)])
    covered = (table[ks, 0] <= p) & (p <= table[ks, 1])
    assert 0.92 <= covered.mean() <= 0.985
    exact = sum(binom.pmf(k, n, p) for k in range(n + 1) if table[k, 0] <= p <= table[k, 1])
    assert abs(covered.mean() - exact) < 4 * math.sqrt(exact * (1 - exact) / 20000) + 1e-3


def test_confusion_matrix_counts():
    conf = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_margins_are_positive_exactly_when_correct_and_relative_to_power():
    powers = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 1.0], [-0.1, 0.6, 0.5]])
    scores = powers  # one detector per class
    m = margins(scores, np.array([0, 0, 2]), powers)
    assert m == pytest.approx([(3 - 1) / 4, (1 - 2) / 4, (0.5 - 0.6) / 1.2])


def test_power_distribution_rows_sum_to_one_and_tolerate_negatives():
    powers = np.array([[1.0, 0.0], [0.8, -0.01], [0.2, 0.9]])
    d = power_distribution(powers, np.array([0, 0, 1]), 3)
    assert d[0] == pytest.approx([1.8 / 1.79, -0.01 / 1.79])
    assert d[1] == pytest.approx([0.2 / 1.1, 0.9 / 1.1])
    assert np.all(np.isnan(d[2]))


def test_correlations():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    b = np.array([[2.0, 4.0, 6.5], [0.0, 1.0, 2.0]])
    r = row_correlation(a, b)
    assert r[0] == pytest.approx(np.corrcoef(a[0], b[0])[0, 1]) and np.isnan(r[1])
    assert pooled_correlation(a * 7, a) == pytest.approx(1.0)


def test_fit_gains_recovers_known_gains_within_two_percent():
    rng = np.random.default_rng(3)
    N, K = 40, 10
    sim = rng.gamma(2.0, 1.0, (N, K))                      # simulated detector powers
    true = np.exp(0.15 * rng.normal(size=K))                # unknown detector gains
    scale = 37.0                                            # unknown overall units
    noise = 0.01 * sim.max(axis=1, keepdims=True).mean()
    meas = scale * true * sim + noise * rng.normal(size=(N, K))
    fit = fit_gains(meas, sim)
    assert fit.gains.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(fit.gains, true / true.mean(), rtol=0.02)
    assert fit.scale == pytest.approx(scale * true.mean(), rel=0.02)
    assert np.all(fit.stderr < 0.02) and fit.rms_relative_residual < 0.05
    # applying the fitted gains undoes the spread
    corrected = apply_gains(meas, fit.gains) / fit.scale
    assert np.abs(corrected - sim).max() < 0.1 * sim.max()


def test_fit_gains_leaves_unlit_detectors_unfitted():
    sim = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    fit = fit_gains(sim * 2, sim)
    assert fit.gains[0] == pytest.approx(1.0) and np.isnan(fit.gains[1])
    assert fit.to_json()["gains"][1] is None


def test_background_subtraction_keeps_negatives():
    out = subtract_background(np.array([[1.0, 0.05]]), np.array([0.1, 0.1]))
    np.testing.assert_allclose(out, [[0.9, -0.05]])
