"""The stack engine (diffractive.stack): adjoint, exact gradients, analytic beam, backends.

Complex128 throughout, on small grids, so identities hold to ~1e-12 and finite
differences to ~1e-8.
"""
import numpy as np
import pytest

from diffractive import Grid, propagate
from diffractive.backend import to_numpy
from diffractive.layers import transmission
from diffractive.stack import StackGeometry, backward, forward

LAM = 0.75e-3


def rel_l2(a, b):
    return float(np.linalg.norm(np.ravel(a - b)) / np.linalg.norm(np.ravel(b)))


def crandn(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


@pytest.fixture
def tiny():
    """3 layers of 12 x 14 pixels, 4 hops of unequal length, a non-square window."""
    return StackGeometry((12, 14), 0.4e-3, LAM, (3e-3, 2e-3, 4e-3, 2.5e-3), window_shape=(24, 30))


def _random_layers(rng, geometry):
    shape = (geometry.n_layers,) + geometry.layer_shape
    phase = rng.uniform(0, 2 * np.pi, shape)
    amp = rng.uniform(0.3, 0.9, shape)
    return phase, amp


def test_stack_adjoint_identity(rng, tiny):
    # S: input field -> output field for fixed layers; backward(grad_output=v) with
    # need_input_grad returns S* v. <S u, v> = <u, S* v>.
    phase, amp = _random_layers(rng, tiny)
    t = transmission(phase, amp)
    u, v = crandn(rng, 4, *tiny.layer_shape), crandn(rng, 4, *tiny.layer_shape)
    res = forward(tiny, t, u, keep_arrivals=True, workers=2)
    _, s_adj_v = backward(tiny, res, grad_output=v, need_input_grad=True, workers=2)
    lhs, rhs = np.vdot(v, res.output), np.vdot(s_adj_v, u)
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_stack_is_the_composition_of_hops_and_layers(rng, tiny):
    # The documented model: propagate, multiply by t_l (opaque outside the grid), ...,
    # propagate to the output plane.
    phase, amp = _random_layers(rng, tiny)
    t = transmission(phase, amp)
    u = crandn(rng, 2, *tiny.layer_shape)
    kw = dict(wavelength_m=LAM, pitch_m=tiny.pitch_m, window_shape=tiny.window_shape, check="ignore")
    expected = u
    for l, z in enumerate(tiny.distances_m):
        expected = propagate(expected, distance_m=z, **kw)
        if l < tiny.n_layers:
            expected = expected * t[l]
    assert rel_l2(forward(tiny, t, u).output, expected) < 1e-12


def test_stack_of_uniform_layers_carries_a_gaussian_beam():
    # Uniform phase layers only add their phases: the output is the analytic Gaussian beam
    # at the total distance times exp(i * sum(phi)). Checked on axis (amplitude, phase
    # with Gouy term) and by the beam radius.
    pitch, n, w0 = LAM / 2, 95, 4 * LAM
    zr = np.pi * w0**2 / LAM
    geometry = StackGeometry((n, n), pitch, LAM, (0.3 * zr, 0.4 * zr, 0.5 * zr))
    phis = np.array([0.7, -2.1])
    t = transmission(np.broadcast_to(phis[:, None, None], (2, n, n)))
    X, Y = Grid((n, n), pitch).meshgrid()
    u0 = np.exp(-(X**2 + Y**2) / w0**2)[None].astype(complex)
    out = forward(geometry, t, u0).output[0]
    z = 1.2 * zr
    w = w0 * np.sqrt(1 + (z / zr) ** 2)
    c = out[n // 2, n // 2]
    assert abs(c) == pytest.approx(w0 / w, rel=5e-3)
    phase_err = np.angle(c * np.exp(-1j * (2 * np.pi / LAM * z - np.arctan(z / zr) + phis.sum())))
    assert abs(phase_err) < 5e-3
    intensity = np.abs(out) ** 2
    assert 2 * np.sqrt((intensity * X**2).sum() / intensity.sum()) == pytest.approx(w, rel=5e-3)


def _loss(geometry, phase, amp, u, weights):
    out = forward(geometry, transmission(phase, amp), u).output
    return float(np.sum(weights * np.abs(out) ** 2))


@pytest.mark.parametrize("workers", [1, 2])
def test_stack_gradients_match_finite_differences(rng, tiny, workers):
    # L = sum_b sum_pixels w * |output|^2 (a real loss). backward gives g_t; then
    #   dL/dphi = Im(conj(t) * g_t),   dL/dA = Re(conj(g_t) * exp(i phi)),
    # and the gradient for the input field is dL/dRe(u) + i dL/dIm(u).
    phase, amp = _random_layers(rng, tiny)
    u = crandn(rng, 3, *tiny.layer_shape)
    weights = rng.uniform(0, 1, u.shape)
    t = transmission(phase, amp)
    res = forward(tiny, t, u, keep_arrivals=True, workers=workers)
    g_t, g_in = backward(tiny, res, grad_intensity=weights, need_input_grad=True, workers=workers)
    assert g_t.shape == t.shape and g_in.shape == u.shape
    d_phi = np.imag(np.conj(t) * g_t)
    d_amp = np.real(np.conj(g_t) * np.exp(1j * phase))

    h = 1e-6
    L, ny, nx = phase.shape
    for l in range(L):
        for _ in range(3):
            i, j = rng.integers(ny), rng.integers(nx)
            for arr, grad in ((phase, d_phi), (amp, d_amp)):
                plus, minus = arr.copy(), arr.copy()
                plus[l, i, j] += h
                minus[l, i, j] -= h
                args = (plus, amp) if arr is phase else (phase, plus)
                args_m = (minus, amp) if arr is phase else (phase, minus)
                fd = (_loss(tiny, *args, u, weights) - _loss(tiny, *args_m, u, weights)) / (2 * h)
                assert grad[l, i, j] == pytest.approx(fd, rel=1e-6, abs=1e-9), (l, i, j)
    for _ in range(3):
        b, i, j = rng.integers(3), rng.integers(ny), rng.integers(nx)
        for unit, part in ((1, np.real), (1j, np.imag)):
            plus, minus = u.copy(), u.copy()
            plus[b, i, j] += h * unit
            minus[b, i, j] -= h * unit
            fd = (_loss(tiny, phase, amp, plus, weights) - _loss(tiny, phase, amp, minus, weights)) / (2 * h)
            assert part(g_in[b, i, j]) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_backward_needs_saved_arrivals_and_one_gradient(rng, tiny):
    t = transmission(np.zeros((3,) + tiny.layer_shape))
    u = crandn(rng, 1, *tiny.layer_shape)
    with pytest.raises(ValueError, match="keep_arrivals"):
        backward(tiny, forward(tiny, t, u), grad_intensity=np.ones(u.shape))
    res = forward(tiny, t, u, keep_arrivals=True)
    with pytest.raises(ValueError, match="exactly one"):
        backward(tiny, res)


def test_stack_bad_shapes_and_geometry(rng, tiny):
    t = transmission(np.zeros((3,) + tiny.layer_shape))
    with pytest.raises(ValueError, match="transmissions"):
        forward(tiny, t[:2], crandn(rng, 1, *tiny.layer_shape))
    with pytest.raises(ValueError, match="input fields"):
        forward(tiny, t, crandn(rng, 1, 12, 12))
    with pytest.raises(ValueError, match="input fields"):
        forward(tiny, t, crandn(rng, *tiny.layer_shape))
    with pytest.raises(ValueError, match=r"distances_m\[1\]"):
        StackGeometry((8, 8), 0.4e-3, LAM, (1e-3, -1e-3))
    with pytest.raises(ValueError, match="pitch_m"):
        StackGeometry((8, 8), 0.0, LAM, (1e-3,))
    with pytest.raises(ValueError, match="wavelength_m"):
        StackGeometry((8, 8), 0.4e-3, -LAM, (1e-3,))
    with pytest.raises(ValueError, match="window_shape"):
        StackGeometry((8, 8), 0.4e-3, LAM, (1e-3,), window_shape=(8, 4))
    with pytest.raises(ValueError, match="layer_shape"):
        StackGeometry((8, 0), 0.4e-3, LAM, (1e-3,))


def test_lin_stack_geometry_passes_its_sampling_check():
    g = StackGeometry((200, 200), 0.4e-3, LAM, (30e-3,) * 6, window_shape=(400, 400))
    g.check("error")
    assert all(r.kept_fraction > 0.99 for r in g.sampling_reports())


def test_stack_numpy_and_cupy_agree(xp, rng, tiny):
    """complex64 forward and backward on ``xp`` agree with a complex128 NumPy reference to
    1e-5: on the CuPy run this is the NumPy/CuPy agreement (skipped without a GPU), on the
    NumPy run the single-precision path."""
    phase, amp = _random_layers(rng, tiny)
    u = crandn(rng, 5, *tiny.layer_shape)
    w = rng.uniform(0, 1, u.shape)
    t = transmission(phase, amp)
    ref = forward(tiny, t, u, keep_arrivals=True)
    g_ref, gi_ref = backward(tiny, ref, grad_intensity=w, need_input_grad=True)
    t32 = transmission(xp.asarray(phase, dtype=np.float32), xp.asarray(amp, dtype=np.float32))
    got = forward(tiny, t32, xp.asarray(u, dtype=np.complex64), keep_arrivals=True)
    g, gi = backward(tiny, got, grad_intensity=xp.asarray(w, dtype=np.float32), need_input_grad=True)
    assert got.output.dtype == np.complex64 and type(got.output) is type(t32)
    assert rel_l2(to_numpy(got.output), ref.output) < 1e-5
    assert rel_l2(to_numpy(g), g_ref) < 1e-5
    assert rel_l2(to_numpy(gi), gi_ref) < 1e-5


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_one_hop_stack_and_propagate_agree_exactly(rng, dtype):
    # A stack without layers is one hop: the same engine, the same arithmetic, the same bits.
    g = StackGeometry((12, 14), 0.4e-3, LAM, (3e-3,), window_shape=(24, 30))
    u = crandn(rng, 4, *g.layer_shape).astype(dtype)
    out = forward(g, np.ones((0,) + g.layer_shape, dtype), u, workers=1).output
    ref = propagate(u, wavelength_m=LAM, pitch_m=g.pitch_m, distance_m=3e-3, window_shape=g.window_shape,
                    check="ignore", workers=1)
    assert out.dtype == ref.dtype == dtype
    assert np.array_equal(out, ref)


def test_stack_runs_on_an_engine_its_caller_owns(rng, tiny):
    # new_engine() gives an uncached engine; forward/backward use it when given and refuse
    # one made for another geometry or precision.
    from diffractive.stack import new_engine, shared_engine

    phase, amp = _random_layers(rng, tiny)
    t = transmission(phase, amp)
    u = crandn(rng, 3, *tiny.layer_shape)
    w = rng.uniform(0, 1, u.shape)
    own = new_engine(tiny, np.complex128)
    assert own is not shared_engine(tiny, np.complex128) and own.n_hops == tiny.n_layers + 1
    ref = forward(tiny, t, u, keep_arrivals=True)
    got = forward(tiny, t, u, keep_arrivals=True, engine=own)
    assert rel_l2(got.output, ref.output) < 1e-13
    g_ref, gi_ref = backward(tiny, ref, grad_intensity=w, need_input_grad=True)
    g, gi = backward(tiny, got, grad_intensity=w, need_input_grad=True, engine=own)
    assert rel_l2(g, g_ref) < 1e-13 and rel_l2(gi, gi_ref) < 1e-13
    other = StackGeometry(tiny.layer_shape, tiny.pitch_m, LAM, (3e-3, 2e-3, 4e-3, 2.6e-3), window_shape=(24, 30))
    with pytest.raises(ValueError, match="another geometry"):
        forward(other, t, u, engine=own)
    with pytest.raises(ValueError, match="complex64"):
        forward(tiny, t.astype(np.complex64), u.astype(np.complex64), engine=own)
