"""Synthetic lab data: exact when ideal, physically right when shifted, seeded, parsed options."""
import math

import numpy as np
import pytest

from diffractive.errors import D2NNError
from diffractive.measured.synthetic import Imperfections, choose_samples, sample_output, shift_layers, simulate_lab
from diffractive.simulate import design_transmissions, simulate


@pytest.fixture(scope="module")
def data(small_design, digits_split):
    design = small_design()
    images, labels = digits_split()
    return design, images[:12], labels[:12]


def test_ideal_lab_equals_the_simulation(data):
    design, images, labels = data
    sim = simulate(design, images, keep_intensity=True)
    lab = simulate_lab(design, images, labels)
    np.testing.assert_array_equal(lab.powers, sim.powers.astype(np.float64))
    np.testing.assert_array_equal(lab.truth["noiseless_predictions"], sim.predictions)
    scan = simulate_lab(design, images, labels, fmt="scan")
    np.testing.assert_array_equal(scan.intensity, sim.intensity.astype(np.float64))
    assert scan.pitch_m == design.pitch_m and scan.intensity.shape[1:] == design.grid.shape


def test_gains_noise_and_dark_follow_the_model(data):
    design, images, labels = data
    imp = Imperfections(noise=0.01, gain_spread=0.1, dark=0.05)
    lab = simulate_lab(design, images, labels, imperfections=imp, seed=4)
    g = np.asarray(lab.truth["gains"])
    assert g.mean() == pytest.approx(1.0) and g.std() > 0.02
    resid = lab.powers - lab.noiseless_powers * g - np.asarray(lab.truth["dark_level"])
    assert resid.std() == pytest.approx(0.01 * lab.truth["reference_level"], rel=0.25)
    assert lab.dark.shape == (8, len(design.detectors))
    again = simulate_lab(design, images, labels, imperfections=imp, seed=4)
    np.testing.assert_array_equal(again.powers, lab.powers)  # seeded
    with pytest.raises(ValueError, match="gain spread applies to the detector-power format"):
        simulate_lab(design, images, labels, imperfections=imp, fmt="scan")


def test_field_sampling_is_band_limited_interpolation():
    # a smooth Gaussian beam sampled at sub-pixel offsets equals the analytic beam
    n, p = 64, 1.0
    x = (np.arange(n) - (n - 1) / 2) * p
    X, Y = np.meshgrid(x, x)
    w, kx = 5.0, 0.2

    def beam(X, Y):
        return np.exp(-(X ** 2 + Y ** 2) / w ** 2) * np.exp(1j * kx * X)

    field = beam(X, Y)[None]
    Xs, Ys = np.meshgrid(x[10:50] + 0.37, x[5:45] - 0.81)
    got = sample_output(field, p, Xs, Ys)[0]
    np.testing.assert_allclose(got, beam(Xs, Ys), atol=1e-8)
    # rotated (non-separable) points go through the 4x-upsampled spline path: still accurate
    c, s = math.cos(0.3), math.sin(0.3)
    Xr, Yr = c * Xs - s * Ys, s * Xs + c * Ys
    np.testing.assert_allclose(sample_output(field, p, Xr, Yr)[0], beam(Xr, Yr), atol=2e-4)
    # whole-pixel offsets reproduce the samples
    np.testing.assert_allclose(sample_output(field, p, X[:, :-3] + 3, Y[:, :-3])[0], field[0][:, 3:], atol=1e-12)


def test_layer_shifts():
    rng = np.random.default_rng(0)
    t = np.exp(1j * rng.uniform(0, 2 * np.pi, (2, 16, 16))).astype(np.complex64)
    off = np.array([[2.0, -1.0], [0.0, 0.0]])  # layer 1: 2 px right (+x), 1 px up (-y)
    for mode in ("nearest", "linear"):
        s = shift_layers(t, off, 1.0, mode)
        np.testing.assert_allclose(s[0, :15, 2:], t[0, 1:, :14], atol=1e-6)  # t'(r) = t(r - d)
        assert np.all(s[0, :, :2] == 0) and np.all(s[0, 15, :] == 0)       # uncovered edge: opaque
        np.testing.assert_array_equal(s[1], t[1])
    half = shift_layers(t, np.array([[0.5, 0.0], [0.0, 0.0]]), 1.0, "linear")
    np.testing.assert_allclose(half[0, :, 1:], 0.5 * (t[0, :, 1:] + t[0, :, :-1]), atol=1e-6)
    assert np.array_equal(shift_layers(t, np.array([[0.4, 0.0], [0, 0]]), 1.0, "nearest"), t)


def test_layer_misalignment_changes_the_output_but_not_when_zero(data):
    design, images, labels = data
    base = simulate_lab(design, images, labels)
    zero = simulate_lab(design, images, labels, imperfections=Imperfections(layer_offsets_m=np.zeros((2, 2))))
    np.testing.assert_array_equal(zero.powers, base.powers)
    moved = simulate_lab(design, images, labels,
                         imperfections=Imperfections(layer_offsets_m=np.array([[0.0, 0.0], [2e-3, 0.0]])))
    assert np.abs(moved.powers - base.powers).max() > 0.05 * base.powers.max()
    t = design_transmissions(design)
    assert shift_layers(t, np.zeros((2, 2)), design.pitch_m).tolist() == t.tolist()


def test_choose_samples_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 30)
    idx = choose_samples(labels, 50, seed=1)
    assert len(set(idx.tolist())) == 50 and np.bincount(labels[idx]).tolist() == [5] * 10
    assert choose_samples(labels, 50, seed=1).tolist() == idx.tolist()
    with pytest.raises(ValueError, match="only 300"):
        choose_samples(labels, 301)


def test_imperfections_are_typed_and_checked():
    imp = Imperfections(noise=1, detector_offset_m=[1e-4, np.float64(-2e-4)])
    assert imp.noise == 1.0 and imp.detector_offset_m == (1e-4, -2e-4)
    for kwargs, msg in [({"noise": -0.1}, "noise must be a non-negative"), ({"dark": float("nan")}, "dark"),
                        ({"scan_scale": 0}, "scan_scale must be a positive"), ({"layer_shift": "cubic"}, "layer_shift"),
                        ({"detector_offset_m": (1.0,)}, "detector_offset_m must be a pair"),
                        ({"detector_rotation_rad": float("inf")}, "detector_rotation_rad must be finite")]:
        with pytest.raises(D2NNError, match=msg):
            Imperfections(**kwargs)
    with pytest.raises(TypeError, match="gain_spread must be a real number"):
        Imperfections(gain_spread="5 %")
