"""The CuPy contract of the physics core, checked on every CI run without a GPU.

CuPy refuses implicit conversion to NumPy and NumPy functions applied to its arrays fail (or
silently round-trip through the host); most CuPy bugs of an xp-generic core are of that kind.
:mod:`fakecupy` (tests/fakecupy.py) is a CPU stand-in as strict as CuPy at that boundary
(stricter about NumPy's dispatch protocols). The ``fake_cupy`` fixture installs it as
``cupy`` for one test, so the core's own detection (``get_array_module``, ``to_numpy``,
``resolve_backend("cupy")``, ``heights.array_kind``) picks it up unchanged. Each test runs a
part of the core (propagation, the engine with shifted hops, the stack forward and adjoint,
encoding, detectors, heights, the as-built model, tolerance analysis, simulate) through the
fake and compares the result with NumPy's to the precision of the dtype: the NumPy path runs
FFTW, the fake path NumPy's FFT, so they agree to rounding, not bit for bit.

This does not replace a real GPU test (``-m gpu`` on a CUDA machine): device memory,
streams, cuFFT and DLPack are not faked. It catches what can be caught without one.
"""
import sys

import numpy as np
import pytest

import fakecupy
from diffractive import backend
from diffractive.backend import get_array_module, resolve_backend, to_numpy
from diffractive.errors import FabricationError
from diffractive.grid import Grid

FakeArray = fakecupy.FakeArray
WAVELENGTH, PITCH = 0.75e-3, 0.4e-3


@pytest.fixture
def fake_cupy(monkeypatch):
    """fakecupy installed as ``cupy`` (and CuPy's availability re-read) for one test; the shared
    engines made on it are dropped afterwards."""
    from diffractive import clear_caches

    monkeypatch.setitem(sys.modules, "cupy", fakecupy)
    backend.cupy_available.cache_clear()
    try:
        yield fakecupy
    finally:
        clear_caches()
        backend.cupy_available.cache_clear()  # re-read with the real modules on next use


def dev(a):
    """A host array copied to the (fake) device."""
    return fakecupy.asarray(a)


def assert_close(got, want, rtol=1e-12):
    """``got`` is a device array equal to the host array ``want`` within ``rtol`` of its largest value."""
    assert isinstance(got, FakeArray), f"expected a device array, got {type(got).__name__}"
    assert isinstance(want, np.ndarray), f"the NumPy reference is a {type(want).__name__}"
    g = got.get()
    assert g.dtype == want.dtype and g.shape == want.shape
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(g, want, rtol=rtol, atol=rtol * scale)


def field(rng, shape, dtype=np.complex128):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


# ----------------------------------------------------------------------------- the fake itself
def test_the_fake_is_as_strict_as_cupy_at_the_host_boundary(fake_cupy):
    h = np.arange(6.0).reshape(2, 3)
    a = dev(h)
    # implicit conversions and NumPy's namespace refuse it
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.array([a])
    with pytest.raises(TypeError):
        np.exp(a)  # ufunc
    with pytest.raises(TypeError):
        np.conj(a)
    with pytest.raises(TypeError):
        np.sum(a)  # array function
    with pytest.raises(TypeError):
        np.concatenate([a, a])
    host_out = np.zeros((2, 3))
    with pytest.raises(TypeError):
        host_out[...] = a
    # host arrays do not mix into device arithmetic or functions, either way round
    with pytest.raises(TypeError):
        a + h
    with pytest.raises(TypeError):
        h * a
    with pytest.raises(TypeError):
        fake_cupy.exp(h)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        a[0] = np.ones(3)
    with pytest.raises(ValueError, match="same shape and dtype"):
        a[:] = np.ones((2, 3), dtype=np.float32)
    # what CuPy allows: scalars, explicit copies, syncing scalar conversions, iteration
    b = np.float64(2.0) * a + 1j
    assert isinstance(b, FakeArray) and b.dtype == np.complex128
    a[:] = h + 1  # whole-array host-to-device copy of the same shape and dtype
    s = a.sum()
    assert isinstance(s, FakeArray) and s.ndim == 0 and float(s) == 21.0
    assert int(a[1, 2]) == 6 and bool(a[0, 0] == 1) and f"{a[0, 1]:.1f}" == "2.0"
    rows = list(a)
    assert len(rows) == 2 and all(isinstance(r, FakeArray) and r.shape == (3,) for r in rows)
    got = a.get()
    assert type(got) is np.ndarray and np.array_equal(got, h + 1)
    got[0, 0] = -5  # get() is a copy, as from a device
    assert float(a[0, 0]) == 1.0
    view = a[:, 1:]
    view *= 0  # views share memory, in-place ops write through
    assert np.array_equal(a.get()[:, 1:], np.zeros((2, 2)))
    assert isinstance(fake_cupy.fft.fft2(a), FakeArray) and fake_cupy.float32 is np.float32
    # the core's detection sees it as CuPy
    assert get_array_module(a) is fake_cupy and get_array_module(h, a) is fake_cupy and get_array_module(h) is np
    assert resolve_backend("cupy") is fake_cupy
    assert type(to_numpy(a)) is np.ndarray and np.array_equal(to_numpy(a), a.get())
    from diffractive.heights import array_kind

    assert array_kind(a) == "cupy"


# ----------------------------------------------------------------------------- propagation and the engine
def test_transfer_function_and_propagate_match_numpy(fake_cupy, rng):
    from diffractive.propagation import propagate, transfer_function

    kw = dict(dtype=np.complex128, shift_xy_m=(0.3e-3, -0.1e-3))
    H = transfer_function((32, 32), (64, 64), PITCH, WAVELENGTH, 8e-3, xp=fake_cupy, **kw)
    assert_close(H, transfer_function((32, 32), (64, 64), PITCH, WAVELENGTH, 8e-3, **kw))
    u = field(rng, (3, 32, 32))
    args = dict(wavelength_m=WAVELENGTH, pitch_m=PITCH, distance_m=8e-3, check="ignore")
    for adjoint in (False, True):
        assert_close(propagate(dev(u), adjoint=adjoint, **args), propagate(u, adjoint=adjoint, **args))
    # single precision and real input keep their precision rules
    u64 = u.astype(np.complex64)
    assert_close(propagate(dev(u64), **args), propagate(u64, **args), rtol=2e-5)
    assert_close(propagate(dev(u.real), **args), propagate(u.real, **args))


def test_engine_with_shifted_hops_matches_numpy(fake_cupy, rng):
    from diffractive.propagation import Engine

    kw = dict(wavelength_m=WAVELENGTH, pitch_m=PITCH, distances_m=(6e-3, 5e-3, 7e-3), dtype=np.complex128,
              check="ignore", shifts_xy_m=((0.2e-3, 0.0), (-0.13e-3, 0.05e-3), (0.0, 0.4e-3)))
    on_dev, on_host = Engine((32, 32), xp=fake_cupy, **kw), Engine((32, 32), **kw)
    u = field(rng, (2, 32, 32))
    for i in range(3):
        assert_close(on_dev.hop(dev(u), index=i), on_host.hop(u, index=i))
    assert_close(on_dev.hop(dev(u), index=1, adjoint=True), on_host.hop(u, index=1, adjoint=True))
    t = np.exp(1j * rng.uniform(0, 2 * np.pi, (2, 32, 32)))
    out_d, arr_d = on_dev.forward(dev(t), dev(u), keep_arrivals=True)
    out_h, arr_h = on_host.forward(t, u, keep_arrivals=True)
    assert_close(out_d, out_h)
    assert_close(arr_d, arr_h)
    dI = rng.normal(size=(2, 32, 32))
    g_d, gin_d = on_dev.backward(out_d, arr_d, dev(t), dev(dI), need_input_grad=True)
    g_h, gin_h = on_host.backward(out_h, arr_h, t, dI, need_input_grad=True)
    assert_close(g_d, g_h)
    assert_close(gin_d, gin_h)
    # a retuned engine (the as-built model's next draw) shares the workspaces and stays on the device
    re_d = on_dev.retuned(distances_m=(6.1e-3, 5e-3, 7e-3), shifts_xy_m=((0.1e-3, 0.1e-3),) * 3)
    re_h = on_host.retuned(distances_m=(6.1e-3, 5e-3, 7e-3), shifts_xy_m=((0.1e-3, 0.1e-3),) * 3)
    assert_close(re_d.hop(dev(u), index=0), re_h.hop(u, index=0))


# ----------------------------------------------------------------------------- the stack
def test_stack_forward_and_adjoint_match_numpy(fake_cupy, rng):
    from diffractive import stack
    from diffractive.layers import transmission

    g = stack.StackGeometry((32, 32), PITCH, WAVELENGTH, (6e-3, 5e-3, 7e-3))
    phases, amps = rng.uniform(0, 2 * np.pi, (2, 32, 32)), rng.uniform(0.5, 1.0, (2, 32, 32))
    t_d, t_h = transmission(dev(phases), dev(amps)), transmission(phases, amps)
    assert_close(t_d, t_h)
    assert_close(transmission(dev(phases.astype(np.float32))), transmission(phases.astype(np.float32)), rtol=1e-6)
    u = field(rng, (3, 32, 32))
    fw_d = stack.forward(g, t_d, dev(u), keep_arrivals=True)
    fw_h = stack.forward(g, t_h, u, keep_arrivals=True)
    assert_close(fw_d.output, fw_h.output)
    assert_close(fw_d.arrivals, fw_h.arrivals)
    dI = rng.normal(size=(3, 32, 32))
    g_d, gin_d = stack.backward(g, fw_d, dev(dI), need_input_grad=True)
    g_h, gin_h = stack.backward(g, fw_h, dI, need_input_grad=True)
    assert_close(g_d, g_h)
    assert_close(gin_d, gin_h)
    go = field(rng, (3, 32, 32))
    g_d, none = stack.backward(g, fw_d, grad_output=dev(go))
    assert none is None
    assert_close(g_d, stack.backward(g, fw_h, grad_output=go)[0])
    # host transmissions with device fields: copied to the device explicitly, same answer
    assert_close(stack.forward(g, t_h, dev(u)).output, fw_h.output)


# ----------------------------------------------------------------------------- encoding and detectors
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encoding_matches_numpy(fake_cupy, rng, dtype):
    from diffractive.encoding import InputSpec, encode, place_images

    grid = Grid((32, 32), PITCH)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    for shape, size in (((3, 8, 8), (6.4e-3, 4.8e-3)), ((2, 28, 28), (4.0e-3, 4.0e-3))):  # enlarge, shrink
        img = rng.uniform(size=shape).astype(dtype)
        assert_close(place_images(dev(img), grid, size), place_images(img, grid, size), rtol)
        for enc in ("amplitude", "phase"):
            assert_close(encode(dev(img), grid, size, enc, dtype=np.complex128),
                         encode(img, grid, size, enc, dtype=np.complex128), rtol)
    spec = InputSpec("phase", (6.4e-3, 6.4e-3), 2.0)
    assert_close(spec.fields(dev(img), grid), spec.fields(img, grid), 1e-6)


def test_detectors_match_numpy(fake_cupy, rng):
    from diffractive.detectors import class_scores, detector_masks, differential_layout, lin_layout, readout

    grid = Grid((32, 32), PITCH)
    for dets in (lin_layout(grid), differential_layout(grid)):
        m_d = detector_masks(dets, grid, fake_cupy, np.float64)
        m_h = detector_masks(dets, grid, np, np.float64)
        assert_close(m_d, m_h)
        inten = rng.uniform(size=(4, 32, 32))
        p_d, p_h = readout(dev(inten), m_d), readout(inten, m_h)
        assert_close(p_d, p_h)
        assert_close(readout(dev(inten), m_h), p_h)  # host masks are copied over explicitly
        assert_close(class_scores(p_d, dets), class_scores(p_h, dets))


# ----------------------------------------------------------------------------- heights
def test_heights_match_numpy(fake_cupy, rng):
    from diffractive import heights as H

    lam, n, kappa = WAVELENGTH, 1.7227, 0.0311
    for dtype in (np.float64, np.float32):
        rtol = 1e-12 if dtype == np.float64 else 1e-6
        ph = rng.uniform(-7, 7, (2, 16, 16)).astype(dtype)
        assert_close(H.phase_to_height(dev(ph), lam, n, base_m=0.5e-3), H.phase_to_height(ph, lam, n, base_m=0.5e-3),
                     rtol)
        q_d = H.phase_to_height(dev(ph), lam, n, base_m=0.5e-3, z_step_m=16e-6)
        assert_close(q_d, H.phase_to_height(ph, lam, n, base_m=0.5e-3, z_step_m=16e-6), rtol)
        steps = H.phase_to_steps(dev(ph), lam, n, 16e-6)
        assert steps.dtype == np.int32
        assert_close(steps, H.phase_to_steps(ph, lam, n, 16e-6), 0)
        h = H.phase_to_height(ph, lam, n)
        assert_close(H.height_to_phase(dev(h), lam, n), H.height_to_phase(h, lam, n), rtol)
        assert_close(H.height_to_transmission(dev(h), lam, n, kappa), H.height_to_transmission(h, lam, n, kappa), rtol)
        assert_close(H.phase_to_transmission(dev(ph), lam, n, kappa, z_step_m=16e-6),
                     H.phase_to_transmission(ph, lam, n, kappa, z_step_m=16e-6), rtol)
    assert_close(H.phase_to_height(dev(np.arange(4)), lam, n), H.phase_to_height(np.arange(4), lam, n))  # ints
    bad = np.ones(4)
    bad[2] = np.nan
    with pytest.raises(FabricationError, match="1 non-finite value"):
        H.phase_to_height(dev(bad), lam, n)
    with pytest.raises(FabricationError, match="must be real"):
        H.phase_to_height(dev(bad + 1j), lam, n)
    with pytest.raises(FabricationError, match=">= 0"):
        H.height_to_phase(dev(-np.ones(3)), lam, n)


# ----------------------------------------------------------------------------- as built, tolerance, simulate
@pytest.fixture
def tiny(small_design, design_images):
    """A 32 x 32, two-layer design (random phases) and 24 of its test images with labels."""
    d = small_design(layer_shape=(32, 32))
    images, labels = design_images(d)
    return d, images[:24], labels[:24]


def _every_error():
    from diffractive.asbuilt import AsBuilt

    return AsBuilt(layer_offsets_xy_m=((0.1e-3, -0.2e-3), (0.05e-3, 0.0)), layer_rotations_rad=(0.01, -0.02),
                   gap_errors_m=(0.1e-3, 0.0, -0.1e-3), thickness_error=0.01, z_step_m=16e-6, defect_fraction=0.02,
                   defect_seed=4, index_error=0.01, kappa_error=0.1, absorption=True, wavelength_error=0.001,
                   input_offset_xy_m=(0.1e-3, 0.2e-3), input_scale_error=0.02, detector_offset_xy_m=(-0.1e-3, 0.0),
                   detector_rotation_rad=0.01)


def test_asbuilt_stack_matches_numpy(fake_cupy, tiny):
    from diffractive.asbuilt import build

    d, images, _ = tiny
    ab = _every_error()
    s_d, s_h = build(d, ab, oversample=2, xp=fake_cupy), build(d, ab, oversample=2)
    assert s_d.xp is fake_cupy and s_h.xp is np
    assert_close(s_d.masks, s_h.masks, 1e-6)
    t_d, t_h = s_d.transmissions(), s_h.transmissions()
    assert t_d.shape == (2, 64, 64)
    assert_close(t_d, t_h, 1e-6)
    assert_close(s_d.input_fields(images[:4]), s_h.input_fields(images[:4]), 1e-6)
    i_d, i_h = s_d.intensity(images[:4]), s_h.intensity(images[:4])
    assert_close(i_d, i_h, 2e-5)
    assert_close(s_d.readout(i_d), s_h.readout(i_h), 2e-5)
    h = np.full((d.n_layers,) + d.layer_shape, 0.2e-3, dtype=np.float32)  # measured heights: a flat print
    assert_close(s_d.transmissions(heights_m=dev(h)), s_h.transmissions(heights_m=h), 1e-6)
    # the next draw reuses the engine's workspaces, on the device
    nxt = build(d, ab.combined(_every_error()), oversample=2, xp=fake_cupy, engine=s_d.engine())
    assert nxt.engine().xp is fake_cupy


def test_simulate_built_with_a_budget_draw_matches_numpy(fake_cupy, tiny):
    from diffractive.asbuilt import build, simulate_built
    from diffractive.budget import load_budget

    d, images, _ = tiny
    ab = load_budget("holder").draw(np.random.default_rng(3), d.n_layers, d.fabrication.z_step_m)
    assert ab.defect_fraction > 0 and ab.layer_offsets_xy_m and ab.absorption  # the draw exercises the model
    kw = dict(oversample=2, batch_size=10, keep_intensity=True)
    r_d = simulate_built(d, images, ab, backend="cupy", **kw)
    r_h = simulate_built(d, images, ab, backend="numpy", **kw)
    for name in ("powers", "scores", "total_power", "intensity"):
        got, want = getattr(r_d, name), getattr(r_h, name)
        assert type(got) is np.ndarray, f"{name} must come back to the host"  # SimulationResult holds NumPy
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max(), err_msg=name)
    assert np.array_equal(r_d.predictions, r_h.predictions)
    # a built stack given: its library, also for measured heights and given transmissions
    stack = build(d, ab, oversample=2, xp=fake_cupy)
    seen, transmissions = [], stack.transmissions
    stack.transmissions = lambda **kw: (seen.append(type(kw["heights_m"])), transmissions(**kw))[1]
    h = np.full((d.n_layers,) + d.layer_shape, 0.3e-3)
    r_d = simulate_built(d, images[:5], stack=stack, heights_m=h)
    assert seen == [FakeArray]  # the measured heights went to the stack's device, not through the host path
    r_h = simulate_built(d, images[:5], ab, oversample=2, heights_m=h)
    np.testing.assert_allclose(r_d.powers, r_h.powers, rtol=2e-5, atol=2e-5 * np.abs(r_h.powers).max())
    t = build(d, ab, oversample=2).transmissions()
    r_d = simulate_built(d, images[:5], stack=stack, transmissions=t)
    r_h = simulate_built(d, images[:5], ab, oversample=2, transmissions=t)
    np.testing.assert_allclose(r_d.powers, r_h.powers, rtol=2e-5, atol=2e-5 * np.abs(r_h.powers).max())


def test_tolerance_and_simulate_run_on_the_device(fake_cupy, tiny):
    from diffractive.budget import load_budget
    from diffractive.simulate import simulate
    from diffractive.tolerance import accuracy_under, analyse

    d, images, labels = tiny
    r_d = simulate(d, images, backend="cupy", keep_intensity=True, batch_size=16)
    r_h = simulate(d, images, backend="numpy", keep_intensity=True, batch_size=16)
    np.testing.assert_allclose(r_d.intensity, r_h.intensity, rtol=2e-5, atol=2e-5 * r_h.intensity.max())
    np.testing.assert_allclose(r_d.powers, r_h.powers, rtol=2e-5, atol=2e-5 * r_h.powers.max())
    assert np.array_equal(r_d.predictions, r_h.predictions)
    budget = load_budget("holder")
    kw = dict(draws=2, oversample=2, seed=5, workers=1)
    p_d = accuracy_under(d, images, labels, budget, backend="cupy", **kw)
    p_h = accuracy_under(d, images, labels, budget, backend="numpy", **kw)
    assert len(p_d.accuracies) == 2 and p_d.accuracies == p_h.accuracies
    res = analyse(d, images[:8], labels[:8], budget, draws=1, kinds=["lateral_m"], factors=(1.0,), sweep_draws=1,
                  backend="cupy", workers=1)
    ref = analyse(d, images[:8], labels[:8], budget, draws=1, kinds=["lateral_m"], factors=(1.0,), sweep_draws=1,
                  backend="numpy", workers=1)
    assert res.to_json()["summary"] == ref.to_json()["summary"]


def test_a_broadband_simulation_matches_numpy(fake_cupy, tiny):
    """Several lines with a dispersive material and a one-band detector, on the device."""
    import dataclasses

    from diffractive.asbuilt import simulate_built
    from diffractive.materials import Dispersion, Material
    from diffractive.spectrum import Spectrum

    d, images, _ = tiny
    table = Dispersion((0.36e12, 299_792_458.0 / d.wavelength_m, 0.44e12), (1.70, d.material.n, 1.75),
                       (0.02, d.material.kappa, 0.05))
    dets = d.detectors[:-1] + (dataclasses.replace(d.detectors[-1], band=1),)
    bb = dataclasses.replace(d, spectrum=Spectrum((0.72e-3, 0.76e-3, 0.8e-3), (1, 2, 1)), detectors=dets,
                             material=dataclasses.replace(d.material, dispersion=table))
    kw = dict(batch_size=10, keep_intensity=True)
    ab = _every_error()
    r_d = simulate_built(bb, images, ab, backend="cupy", **kw)
    r_h = simulate_built(bb, images, ab, backend="numpy", **kw)
    for name in ("powers", "total_power", "intensity"):
        got, want = getattr(r_d, name), getattr(r_h, name)
        assert type(got) is np.ndarray, f"{name} must come back to the host"
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max(), err_msg=name)
