"""Scan registration and detector integration on synthetic scans with a known offset."""
import math

import numpy as np
import pytest

from diffractive.detectors import detector_masks, readout
from diffractive.measured.synthetic import Imperfections, simulate_lab
from diffractive.measured.io import Scan, centred_origin
from diffractive.measured.registration import (Registration, integrate_scan, register_to_detectors,
                                               register_to_simulation, scan_detector_masks)
from diffractive.simulate import simulate


@pytest.fixture(scope="module")
def setup(small_design, digits_split):
    design = small_design()
    images, labels = digits_split()
    images, labels = images[:16], labels[:16]
    sim = simulate(design, images, keep_intensity=True)
    return design, images, labels, sim


def lab_scan(design, images, labels, *, offset=(0.0, 0.0), pitch=None, noise=0.0, rotation=0.0, scale=1.0, seed=0):
    imp = Imperfections(noise=noise, detector_offset_m=offset, detector_rotation_rad=rotation, scan_scale=scale)
    lab = simulate_lab(design, images, labels, imperfections=imp, fmt="scan", scan_pitch_m=pitch, seed=seed)
    return Scan(intensity=lab.intensity, labels=labels, pitch_m=lab.pitch_m, origin_m=lab.origin_m, source="synthetic")


def test_identity_scan_integrates_to_the_simulated_powers(setup):
    design, images, labels, sim = setup
    scan = lab_scan(design, images, labels)
    np.testing.assert_array_equal(scan.intensity, sim.intensity)
    powers, totals, covered = integrate_scan(scan, design.detectors, Registration(), design.pitch_m)
    np.testing.assert_allclose(powers, sim.powers, rtol=1e-5)
    np.testing.assert_allclose(totals, sim.total_power, rtol=1e-5)
    np.testing.assert_allclose(covered, 1.0)


@pytest.mark.parametrize("offset_px,pitch", [((0.0, 0.0), None), ((0.7, -1.3), None), ((-2.4, 0.45), None),
                                             ((1.6, 2.2), 0.5e-3), ((-0.8, -0.3), 0.3e-3)])
def test_registration_recovers_a_known_offset_within_half_a_scan_pixel(setup, offset_px, pitch):
    design, images, labels, sim = setup
    p_d = design.pitch_m
    offset = (offset_px[0] * p_d, offset_px[1] * p_d)
    scan = lab_scan(design, images, labels, offset=offset, pitch=pitch, noise=0.02)
    reg = register_to_simulation(scan, sim.intensity, p_d)
    err = np.hypot(reg.offset_m[0] - offset[0], reg.offset_m[1] - offset[1])
    assert err < 0.5 * scan.pitch_m
    assert err < 0.1 * scan.pitch_m  # in practice much better than required
    assert reg.method == "simulation" and reg.score > 0.8


def test_registered_integration_restores_the_detector_powers(setup):
    design, images, labels, sim = setup
    off = (1.5 * design.pitch_m, -2.0 * design.pitch_m)  # whole-pixel multiple of 0.5 px: integration is exact
    scan = lab_scan(design, images, labels, offset=off)
    naive, _, _ = integrate_scan(scan, design.detectors, Registration(), design.pitch_m)
    reg = register_to_simulation(scan, sim.intensity, design.pitch_m)
    powers, _, _ = integrate_scan(scan, design.detectors, reg, design.pitch_m)
    err_naive = np.abs(naive - sim.powers).max()
    err_reg = np.abs(powers - sim.powers).max()
    assert err_reg < 0.2 * err_naive


def test_registration_full_recovers_rotation_and_scale(setup):
    design, images, labels, sim = setup
    off, rot, scale = (0.5 * design.pitch_m, -0.8 * design.pitch_m), math.radians(1.5), 1.03
    scan = lab_scan(design, images[:8], labels[:8], offset=off, rotation=rot, scale=scale, noise=0.01)
    reg = register_to_simulation(scan, sim.intensity[:8], design.pitch_m, mode="full")
    assert np.hypot(reg.offset_m[0] - off[0], reg.offset_m[1] - off[1]) < 0.25 * scan.pitch_m
    assert reg.rotation_rad == pytest.approx(rot, abs=math.radians(0.3))
    assert reg.scale == pytest.approx(scale, abs=0.005)


def test_registration_by_power_on_detectors_without_inputs(small_design):
    # scans with a bright spot on each sample's detector, displaced by a known offset
    design = small_design()
    shape, p = (64, 64), design.pitch_m
    origin = centred_origin(shape, p)
    x = origin[0] + np.arange(shape[1]) * p
    y = origin[1] + np.arange(shape[0]) * p
    X, Y = np.meshgrid(x, y)
    off = (0.9 * p, -0.6 * p)
    rng = np.random.default_rng(0)
    I = []
    for c in range(10):
        cx, cy = design.detectors[c].center_xy_m
        # the spot at design point (cx, cy) appears at scan point (cx, cy) - offset
        I.append(np.exp(-((X - cx + off[0]) ** 2 + (Y - cy + off[1]) ** 2) / (2 * (1.5 * p) ** 2))
                 + 0.01 * rng.random(shape))
    scan = Scan(intensity=np.array(I), labels=np.arange(10), pitch_m=p, origin_m=origin, source="spots")
    reg = register_to_detectors(scan, design.detectors, p)
    assert np.hypot(reg.offset_m[0] - off[0], reg.offset_m[1] - off[1]) < 0.5 * p
    assert reg.method == "detectors"


def test_rotated_masks_keep_the_detector_area(small_design):
    design = small_design()
    p = 0.3e-3
    shape = (80, 80)
    reg = Registration(offset_m=(0.2e-3, -0.1e-3), rotation_rad=0.3, scale=1.1)
    masks = scan_detector_masks(shape, p, centred_origin(shape, p), design.detectors, reg)
    areas = np.array([d.size_xy_m[0] * d.size_xy_m[1] for d in design.detectors])
    np.testing.assert_allclose(masks.sum(axis=(1, 2)) * (reg.scale * p) ** 2, areas, rtol=0.02)
    # axis-aligned masks on the design grid equal the library's detector masks
    m0 = scan_detector_masks(design.grid.shape, design.pitch_m, centred_origin(design.grid.shape, design.pitch_m),
                             design.detectors, Registration())
    np.testing.assert_allclose(m0, detector_masks(design.detectors, design.grid), atol=1e-6)
    inten = np.random.default_rng(0).random((3,) + design.grid.shape)
    np.testing.assert_allclose(np.einsum("nhw,khw->nk", inten, m0), readout(inten, m0), rtol=1e-12)
