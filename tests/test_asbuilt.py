"""The as-built model (diffractive/asbuilt.py) against independent references.

References: whole-pixel rolls of the layers in the global frame (an independent way to move a
plate), np.rot90, a design whose distances are changed, the plate model of
diffractive.heights (what d2nn export prints), and finite differences for the torch path.
"""
import dataclasses
import math

import numpy as np
import pytest

from diffractive.asbuilt import AsBuilt, apply_placement, build, check_oversample, placement, simulate_built
from diffractive.design import make_design
from diffractive.detectors import Detector
from diffractive.errors import D2NNError, FieldError
from diffractive.heights import phase_to_transmission
from diffractive.simulate import simulate


def _design(n=96, spacing_m=4e-3, **kw):
    """A stack whose field stays well inside the grid (small object, short gaps), so moving a
    plate by a few pixels loses nothing at the edges."""
    args = dict(layer_shape=(n, n), n_layers=2, pitch_m=0.4e-3, spacing_m=spacing_m, seed=0,
                input_size_yx_m=(6e-3, 6e-3), detector_size_m=1.2e-3, detector_spacing_m=2.4e-3)
    args.update(kw)
    return make_design(**args)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).random((4, 8, 8)).astype(np.float32)


def test_the_ideal_as_built_stack_is_the_simulated_design(images):
    """Against the stack forward of the designed exp(i phi) read out by the detector masks
    (simulate() itself now runs simulate_built, so it is not the reference)."""
    from diffractive.detectors import detector_masks, readout
    from diffractive.stack import forward

    d = _design()
    out = forward(d.geometry, np.exp(1j * d.phases).astype(np.complex64), d.input.fields(images, d.grid)).output
    ref = readout(np.abs(out) ** 2, detector_masks(d.detectors, d.grid))
    np.testing.assert_allclose(simulate(d, images).powers, ref, rtol=2e-5, atol=1e-6 * ref.max())
    got = simulate_built(d, images).powers
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6 * ref.max())
    assert AsBuilt().is_ideal and not AsBuilt(thickness_error=0.01).is_ideal


def test_placement_rolls_whole_pixels_and_the_k_cell_shift_is_the_whole_pixel_shift(roll):
    t = np.random.default_rng(0).random((12, 10))
    one = apply_placement(t, placement(t.shape, 1, (2.0, -1.0)), t.shape)
    np.testing.assert_array_equal(one, roll(t, 2, -1))
    for k in (2, 3):
        fine = apply_placement(t, placement(t.shape, k, (2.0, -1.0)), (12 * k, 10 * k))
        np.testing.assert_array_equal(fine, np.kron(one, np.ones((k, k))))
        # half a printed pixel at k = 2 is one fine cell: an exact roll of the upsampled print
    fine = apply_placement(t, placement(t.shape, 2, (0.5, 0.0)), (24, 20))
    np.testing.assert_array_equal(fine, roll(np.kron(t, np.ones((2, 2))), 1, 0))


def test_placement_rotates_a_quarter_turn_counter_clockwise_in_the_xy_frame():
    t = np.random.default_rng(1).random((8, 8))
    rot = apply_placement(t, placement(t.shape, 1, (0.0, 0.0), math.pi / 2), t.shape)
    # rows are y (increasing), columns x: (x, y) -> (-y, x) is np.rot90 with k = -1
    np.testing.assert_array_equal(rot, np.rot90(t, -1))


@pytest.mark.parametrize("k,shift_cells", [(1, (1, 0)), (1, (2, -1)), (2, (1, -1)), (2, (3, 2))])
def test_a_shifted_layer_equals_the_rolled_layer(images, k, shift_cells, roll):
    """Lateral offsets run as shifted hops (exact for any offset); an independent whole-cell
    roll of the layer's transmission on the global grid must give the same output."""
    d = _design()
    p = d.pitch_m / k
    sx, sy = shift_cells
    shifted = build(d, AsBuilt(layer_offsets_xy_m=[(sx * p, sy * p), (0.0, 0.0)]), oversample=k)
    ideal = build(d, oversample=k)
    t = ideal.transmissions()
    t[0] = roll(t[0], sx, sy)
    ref = ideal.intensity(images, transmissions=t)
    got = shifted.intensity(images)
    assert np.abs(got - ref).max() < 1e-3 * ref.max()


def test_moving_everything_together_moves_the_output(images, roll):
    """Equivariance: input, layers and detectors all displaced by the same d give the ideal
    powers. Checked against rolls of the input field and the layers and moved detectors,
    independently of the shifted hops (whose relative shifts are then all zero)."""
    d = _design()
    p = d.pitch_m
    ab = AsBuilt(layer_offsets_xy_m=[(2 * p, -3 * p)] * 2, input_offset_xy_m=(2 * p, -3 * p),
                 detector_offset_xy_m=(2 * p, -3 * p))
    assert build(d, ab).geometry.hop_shifts_xy_m == ()
    ideal = simulate(d, images).powers
    np.testing.assert_allclose(simulate_built(d, images, ab).powers, ideal, rtol=1e-5, atol=1e-7 * ideal.max())
    moved = dataclasses.replace(d, detectors=tuple(
        Detector(q.class_index, (q.center_xy_m[0] + 2 * p, q.center_xy_m[1] - 3 * p), q.size_xy_m, q.sign)
        for q in d.detectors))
    st = build(moved)
    t = roll(st.transmissions(), 2, -3)
    fields = roll(d.input.fields(images, d.grid), 2, -3)
    from diffractive.stack import forward

    out = forward(d.geometry, t, fields).output
    powers = st.readout(np.abs(out) ** 2)
    np.testing.assert_allclose(powers, ideal, rtol=2e-3, atol=1e-4 * ideal.max())


def test_a_quarter_turn_of_everything_is_the_rotated_output(images):
    d = _design(n=64, detectors="lin")
    quarter = AsBuilt(layer_rotations_rad=[math.pi / 2] * 2, detector_rotation_rad=math.pi / 2)
    st = build(d, quarter)
    from diffractive.stack import forward

    # the object turned with the rest (the input field itself, not the image: the encoding's
    # resampling of an 8 x 8 image onto the grid is not symmetric under rotation)
    fields = np.ascontiguousarray(np.rot90(d.input.fields(images, d.grid), -1, axes=(1, 2)))
    out = np.abs(forward(st.geometry, st.transmissions(), fields).output) ** 2
    ideal = build(d).intensity(images)
    np.testing.assert_allclose(out, np.rot90(ideal, -1, axes=(1, 2)), rtol=1e-4, atol=1e-6 * ideal.max())
    np.testing.assert_allclose(st.readout(out), simulate(d, images).powers, rtol=1e-4)


def test_an_axial_error_is_the_changed_distance(images):
    d = _design()
    errors = (0.5e-3, -0.3e-3, 0.2e-3)
    moved = dataclasses.replace(d, geometry=dataclasses.replace(
        d.geometry, distances_m=tuple(z + e for z, e in zip(d.distances_m, errors))))
    np.testing.assert_allclose(simulate_built(d, images, AsBuilt(gap_errors_m=errors)).powers,
                               simulate(moved, images).powers, rtol=2e-5)
    with pytest.raises(D2NNError, match="must stay positive"):
        build(d, AsBuilt(gap_errors_m=(-5e-3, 0, 0)))


def test_the_wavelength_detuning_is_a_design_at_the_detuned_wavelength_with_scaled_phases(images):
    """lambda' = lambda (1 + e): propagation at lambda' and the print's phase 2 pi (n-1) h / lambda'."""
    d = _design()
    e = 0.01
    detuned = dataclasses.replace(d, geometry=dataclasses.replace(d.geometry, wavelength_m=d.wavelength_m * (1 + e)))
    ref_t = np.exp(1j * np.mod(d.phases.astype(np.float64), 2 * np.pi) / (1 + e)).astype(np.complex64)
    ref = simulate(detuned, images, transmissions=ref_t).powers
    got = simulate_built(d, images, AsBuilt(wavelength_error=e)).powers
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5 * ref.max())


def test_printed_layers_are_the_plate_model_that_export_prints():
    d = _design(n=32)
    st = build(d, AsBuilt(z_step_m=16e-6, absorption=True))
    m, f = d.material, d.fabrication
    ref = phase_to_transmission(d.phases, d.wavelength_m, m.n, m.kappa, base_m=f.base_m, z_step_m=16e-6)
    np.testing.assert_allclose(st.transmissions(), ref, rtol=1e-5, atol=1e-6)
    thick = build(d, AsBuilt(thickness_error=0.02, index_error=-0.01))
    h = f.base_m + np.mod(d.phases.astype(np.float64), 2 * np.pi) * d.wavelength_m / (2 * np.pi * (m.n - 1))
    want = np.exp(2j * np.pi * (m.n * 0.99 - 1) * h * 1.02 / d.wavelength_m)
    np.testing.assert_allclose(thick.transmissions(), want, rtol=1e-4, atol=1e-4)


def test_defects_replace_the_drawn_fraction_of_pixels_reproducibly():
    d = _design(n=64)
    a = build(d, AsBuilt(defect_fraction=0.05, defect_seed=4)).transmissions()
    b = build(d, AsBuilt(defect_fraction=0.05, defect_seed=4)).transmissions()
    m, base = d.material, d.fabrication.base_m
    # the designed layers times the base's global phase: the printed plate without defects
    ideal = build(d).transmissions() * np.exp(2j * np.pi * (m.n - 1) * base / d.wavelength_m)
    np.testing.assert_array_equal(a, b)
    changed = np.mean(np.abs(a - ideal) > 1e-4)
    assert 0.03 < changed < 0.06  # 5 % drawn (a few land on almost the right height)
    c = build(d, AsBuilt(defect_fraction=0.05, defect_seed=5)).transmissions()
    assert not np.array_equal(a, c)


def test_oversampling_converges():
    """The ideal stack simulated with k x k cells per printed pixel converges as k grows
    (relative L2 difference of the detector powers; numbers in docs/asbuilt.md)."""
    d = make_design(layer_shape=(32, 32), n_layers=2, pitch_m=0.4e-3, spacing_m=8e-3, seed=0)
    imgs = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    P = {k: simulate_built(d, imgs, oversample=k).powers for k in (1, 2, 4, 8)}
    diff = {k: np.linalg.norm(P[k] - P[2 * k]) / np.linalg.norm(P[2 * k]) for k in (1, 2, 4)}
    assert diff[4] < diff[2] < diff[1]
    assert diff[4] < 0.1 and diff[4] < 0.5 * diff[2]


def test_powers_keep_their_units_at_every_oversampling(images):
    """Without errors the total output power is the same at k = 1 and 2 (energy per
    design-grid pixel, not per simulation cell). Flat layers: a random print would scatter
    power into angles that only the finer grid resolves (and loses)."""
    d = _design(phases=np.zeros((2, 96, 96), np.float32))
    a, b = simulate_built(d, images), simulate_built(d, images, oversample=2)
    np.testing.assert_allclose(b.total_power, a.total_power, rtol=0.05)


def test_bad_as_built_values_name_their_field():
    d = _design(n=32)
    with pytest.raises(FieldError, match="layer_offsets_xy_m"):
        build(d, AsBuilt(layer_offsets_xy_m=[(0.0, 0.0)] * 3))
    with pytest.raises(FieldError, match="defect_fraction"):
        AsBuilt(defect_fraction=1.0)
    with pytest.raises(FieldError, match="thickness_error"):
        AsBuilt(thickness_error=float("nan"))
    with pytest.raises(FieldError, match="oversample"):
        check_oversample(0)
    with pytest.raises(FieldError, match="oversample"):
        check_oversample(2.0)
    assert AsBuilt.from_json(AsBuilt(gap_errors_m=(1e-4, 0, 0)).to_json()) == AsBuilt(gap_errors_m=(1e-4, 0, 0))
    with pytest.raises(FieldError, match="tilt"):
        AsBuilt.from_json({"tilt": 1})


def test_the_torch_path_has_the_finite_difference_gradient():
    """The differentiable as-built path (printed heights, rotation, shifted hops, gap and
    index errors, absorption) against central finite differences in float64."""
    torch = pytest.importorskip("torch")
    from training.bridge import from_xp, stack_intensity

    d = _design(n=24, spacing_m=3e-3, input_size_yx_m=(4e-3, 4e-3), detector_size_m=0.8e-3,
                detector_spacing_m=1.6e-3)
    ab = AsBuilt(layer_offsets_xy_m=[(0.13e-3, -0.05e-3), (0.0, 0.2e-3)], layer_rotations_rad=[0.01, -0.02],
                 gap_errors_m=(1e-4, -2e-4, 0.0), index_error=0.01, absorption=True, thickness_error=0.01)
    st = build(d, ab, oversample=2)
    imgs = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    fields = from_xp(st.input_fields(imgs).astype(np.complex128), "cpu")
    phase = torch.tensor(d.phases.astype(np.float64), requires_grad=True)
    weights = torch.tensor(np.random.default_rng(1).random((2, len(d.detectors))))

    def loss(ph):
        t = st.transmissions(phases=ph)
        return (st.readout(stack_intensity(t, fields, st.geometry, engine=st.engine(np.complex128))) * weights).sum()

    g, = torch.autograd.grad(loss(phase), phase)
    rng = np.random.default_rng(2)
    for _ in range(4):
        l, i, j = rng.integers(0, 2), rng.integers(4, 20), rng.integers(4, 20)
        e = torch.zeros_like(phase)
        e[l, i, j] = 1e-5
        with torch.no_grad():
            fd = (loss(phase + e) - loss(phase - e)) / 2e-5
        assert abs(float(fd) - float(g[l, i, j])) < 1e-5 * float(g.abs().max()) + 1e-6 * abs(float(fd))
