"""Synthetic lab data: exact when ideal, physically right when shifted, seeded, parsed options."""
import dataclasses
import math

import numpy as np
import pytest

from diffractive.asbuilt import AsBuilt, simulate_built
from diffractive.design import make_design
from diffractive.errors import D2NNError
from diffractive.measured.synthetic import Imperfections, choose_samples, sample_output, simulate_lab
from diffractive.simulate import design_transmissions, input_fields, simulate
from diffractive.stack import forward


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


def test_a_whole_pixel_layer_offset_is_the_rolled_layer(digits_split, roll):
    """t'(r) = t(r - d), uncovered pixels opaque: checked against an independent roll of the
    layer's transmission on the design grid (a small object and short gaps keep the light
    inside the grid, so the roll loses nothing the shifted plate would have passed)."""
    design = make_design(layer_shape=(96, 96), n_layers=2, pitch_m=0.4e-3, spacing_m=4e-3, seed=0,
                         input_size_yx_m=(6e-3, 6e-3), detector_size_m=1.2e-3, detector_spacing_m=2.4e-3)
    images, labels = digits_split()
    images, labels = images[:4], labels[:4]
    p = design.pitch_m
    off = np.array([[2 * p, -1 * p], [0.0, 0.0]])  # layer 1: 2 px towards +x, 1 px towards -y
    lab = simulate_lab(design, images, labels, imperfections=Imperfections(layer_offsets_m=off), fmt="scan")
    t = design_transmissions(design)
    t[0] = roll(t[0], 2, -1)
    out = forward(design.geometry, t, input_fields(design, images)).output
    ref = np.abs(out) ** 2
    assert np.abs(lab.intensity - ref).max() < 1e-3 * ref.max()
    assert np.abs(simulate_lab(design, images, labels, fmt="scan").intensity - ref).max() > 0.05 * ref.max()


def test_layer_misalignment_changes_the_output_but_not_when_zero(data):
    design, images, labels = data
    base = simulate_lab(design, images, labels)
    zero = simulate_lab(design, images, labels, imperfections=Imperfections(layer_offsets_m=np.zeros((2, 2))))
    np.testing.assert_array_equal(zero.powers, base.powers)
    assert AsBuilt.from_json(zero.truth["as_built"]).is_ideal and zero.truth["oversample"] == 1
    off = np.array([[0.0, 0.0], [2e-3, 0.3e-3]])
    moved = simulate_lab(design, images, labels, imperfections=Imperfections(layer_offsets_m=off))
    assert np.abs(moved.powers - base.powers).max() > 0.05 * base.powers.max()
    # the lab's layers are the as-built stack of diffractive.asbuilt, recorded in the truth
    ab = AsBuilt(layer_offsets_xy_m=off)
    assert moved.truth["as_built"] == ab.to_json() and moved.truth["layer_offsets_m"] == off.tolist()
    ref = simulate_built(design, images, ab).powers
    np.testing.assert_allclose(moved.powers, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_any_as_built_stack_and_oversampling(data):
    """A full AsBuilt (e.g. one draw of an error budget) at any oversampling is simulate_built's
    stack; layer_offsets_m adds to its layer offsets; the detector-frame misalignment applies on top."""
    design, images, labels = data
    p = design.pitch_m
    ab = AsBuilt(layer_offsets_xy_m=[(0.3 * p, 0.0), (0.0, -0.5 * p)], layer_rotations_rad=[0.0, 0.004],
                 gap_errors_m=[0.2e-3, -0.1e-3, 0.0], z_step_m=design.fabrication.z_step_m, absorption=True,
                 thickness_error=0.01)
    for k in (1, 2):
        lab = simulate_lab(design, images, labels, imperfections=Imperfections(as_built=ab), oversample=k)
        ref = simulate_built(design, images, ab, oversample=k).powers
        np.testing.assert_allclose(lab.powers, ref, rtol=1e-5, atol=1e-7 * ref.max())
        assert lab.truth["as_built"] == ab.to_json() and lab.truth["oversample"] == k
    extra = np.array([[0.2 * p, 0.0], [0.0, 0.5 * p]])
    lab = simulate_lab(design, images, labels, imperfections=Imperfections(as_built=ab, layer_offsets_m=extra))
    summed = dataclasses.replace(ab, layer_offsets_xy_m=[(0.5 * p, 0.0), (0.0, 0.0)])
    assert lab.truth["as_built"] == summed.to_json()
    np.testing.assert_allclose(lab.powers, simulate_built(design, images, summed).powers, rtol=1e-5)
    # a scan at the fine pitch over the plane is the oversampled stack's output intensity; one at the
    # design pitch samples it at the design's pixel centres
    direct = simulate_built(design, images[:2], ab, oversample=2, keep_intensity=True).intensity
    ny, nx = design.grid.shape
    fine = simulate_lab(design, images[:2], labels[:2], fmt="scan", oversample=2, scan_pitch_m=design.pitch_m / 2,
                        scan_shape=(2 * ny, 2 * nx), imperfections=Imperfections(as_built=ab))
    np.testing.assert_allclose(fine.intensity, direct, rtol=1e-5, atol=1e-7 * direct.max())
    coarse = simulate_lab(design, images[:2], labels[:2], fmt="scan", oversample=2,
                          imperfections=Imperfections(as_built=ab))
    assert coarse.intensity.shape[1:] == design.grid.shape and coarse.pitch_m == design.pitch_m
    with pytest.raises(D2NNError, match="oversample"):
        simulate_lab(design, images, labels, oversample=0)


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
                        ({"scan_scale": 0}, "scan_scale must be a positive"),
                        ({"as_built": {"layer_offsets_xy_m": []}}, "as_built must be"),
                        ({"layer_offsets_m": [1e-3, 0.0]}, "layer_offsets_m must be"),
                        ({"detector_offset_m": (1.0,)}, "detector_offset_m must be a pair"),
                        ({"detector_rotation_rad": float("inf")}, "detector_rotation_rad must be finite")]:
        with pytest.raises(D2NNError, match=msg):
            Imperfections(**kwargs)
    with pytest.raises(TypeError, match="gain_spread must be a real number"):
        Imperfections(gain_spread="5 %")
    with pytest.raises(TypeError, match="layer_shift"):  # sub-pixel shifts are exact now: no interpolation mode
        Imperfections(layer_shift="linear")
