"""Synthetic lab data: exact when ideal, physically right when shifted, seeded, parsed options."""
import math

import numpy as np
import pytest

from diffractive.labsim import (Imperfections, choose_samples, parse_angle, parse_length, parse_misalign,
                                sample_output, shift_layers, simulate_lab)
from diffractive.simulate import design_transmissions, simulate

from test_measured_common import digits_split, small_design


@pytest.fixture(scope="module")
def data():
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


def test_parsing_of_lengths_angles_and_misalignments():
    p = 0.4e-3
    assert parse_length("0.2mm", p) == pytest.approx(2e-4)
    assert parse_length("50um", p) == pytest.approx(5e-5)
    assert parse_length("1.5px", p) == pytest.approx(6e-4)
    assert parse_length("-3e-4", p) == pytest.approx(-3e-4)
    assert parse_angle("2") == pytest.approx(math.radians(2)) and parse_angle("0.01rad") == 0.01
    with pytest.raises(ValueError, match="is not a length"):
        parse_length("2 inches", p)
    rng = np.random.default_rng(0)
    m = parse_misalign(["detector=0.3mm,-1px", "layer2=10um,0", "rotation=1", "scale=1.01"], 3, p, rng)
    assert m["detector_offset_m"] == pytest.approx((3e-4, -4e-4))
    np.testing.assert_allclose(m["layer_offsets_m"], [[0, 0], [1e-5, 0], [0, 0]])
    assert m["detector_rotation_rad"] == pytest.approx(math.radians(1)) and m["scan_scale"] == 1.01
    m = parse_misalign(["layers=50um"], 5, p, np.random.default_rng(1))
    assert m["layer_offsets_m"].shape == (5, 2) and 1e-6 < np.abs(m["layer_offsets_m"]).mean() < 2e-4
    for bad, msg in [("layer4=1,1", "the design has layers 1 ... 3"), ("tilt=3", "unknown key"),
                     ("detector", "expected KEY=VALUE"), ("detector=1,2,3", "give DX,DY"),
                     ("scale=-1", "positive"), ("layers=-1mm", "standard deviation")]:
        with pytest.raises(ValueError, match=msg):
            parse_misalign([bad], 3, p, rng)


def test_choose_samples_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 30)
    idx = choose_samples(labels, 50, seed=1)
    assert len(set(idx.tolist())) == 50 and np.bincount(labels[idx]).tolist() == [5] * 10
    assert choose_samples(labels, 50, seed=1).tolist() == idx.tolist()
    with pytest.raises(ValueError, match="only 300"):
        choose_samples(labels, 301)
