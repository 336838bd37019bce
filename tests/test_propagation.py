"""Angular-spectrum propagation checked against analytic optics.

Every expected value here comes from a closed-form result (Fresnel integrals, Gaussian
beam optics, the Talbot effect, Parseval, an independently written FFT filter), never
from an earlier run of the code. Conventions under test (docs/physics.md): time
dependence exp(-i*omega*t), a wave travelling to +z is exp(+i*k*z), a field
exp(+i*2*pi*fx*x) travels towards +x, x runs along columns and y along rows.

Several tests use a pitch of lambda/2 or finer: such a grid can carry rays up to 90 deg,
which no finite window holds, so the sampling check always reports lost bandwidth.
The fields used there are smooth and carry nothing at those angles, so those calls pass
check="ignore"; the sampling checks have their own tests at the end.
"""
import warnings

import numpy as np
import pytest
from scipy.special import fresnel

from diffractive import Grid, SamplingError, SamplingWarning, propagate, transfer_function
from diffractive.backend import to_numpy
from diffractive.propagation import Engine, default_window, sampling_report

LAM = 0.75e-3            # 0.4 THz
K = 2 * np.pi / LAM


def rel_l2(a, b):
    return float(np.linalg.norm(np.ravel(a - b)) / np.linalg.norm(np.ravel(b)))


def centred_modulo(phase):
    """Wrap to (-pi, pi]."""
    return (phase + np.pi) % (2 * np.pi) - np.pi


# --------------------------------------------------------------------------- Fresnel
def _fresnel_edge_factor(x, a, z):
    """1-D factor of the Fresnel diffraction of a slit |xi| < a, lit by a unit plane wave.

    Fresnel integral: u(x) = sqrt(1/(i*lambda*z)) * int_{-a}^{a} exp(i*pi*(x-xi)^2/(lambda*z)) dxi;
    with t = sqrt(2/(lambda*z)) * (xi - x) this is (1/sqrt(2i)) * [C(t) + i*S(t)] from t1 to t2.
    Returns the bracket; the product of the x and y brackets times exp(ikz)/(2i) is the field.
    """
    s = np.sqrt(2 / (LAM * z))
    S2, C2 = fresnel(s * (a - x))
    S1, C1 = fresnel(-s * (a + x))
    return (C2 - C1) + 1j * (S2 - S1)


def test_square_aperture_matches_fresnel_integrals():
    # Geometry: a 30 mm (40 lambda) square aperture seen at z = 200 mm, Fresnel number
    # a^2/(lambda*z) = 1.5 (a = half width): a rich near-field pattern, far from both the
    # geometric shadow and the Fraunhofer limit. The analytic solution is paraxial; its
    # error is set by the quartic phase term k*a^4/(8 z^3) ~ pi*N_F^2*lambda/(4 z) ~ 0.01 rad
    # at the aperture edge, small enough at this z that the exact (non-paraxial) angular
    # spectrum agrees with it to ~3e-3 over the central region (half the aperture). A
    # shorter z at the same N_F (e.g. 100 mm) brings that error to 1e-2.
    # Pitch lambda/2 = 0.375 mm: the aperture is exactly 80 pixels wide, so its edges fall
    # on pixel boundaries and the sampled aperture has the continuous one's width.
    pitch, n, width_px, z = LAM / 2, 200, 80, 200e-3
    grid = Grid((n, n), pitch)
    X, Y = grid.meshgrid()
    a = width_px * pitch / 2
    assert a**2 / (LAM * z) == pytest.approx(1.5)
    u0 = ((np.abs(X) < a) & (np.abs(Y) < a)).astype(np.complex128)
    u = propagate(u0, wavelength_m=LAM, pitch_m=pitch, distance_m=z, check="ignore")

    x, y = grid.x_m(), grid.y_m()
    analytic = np.exp(1j * K * z) / 2j * np.outer(_fresnel_edge_factor(y, a, z), _fresnel_edge_factor(x, a, z))
    centre = (np.abs(X) <= a / 2) & (np.abs(Y) <= a / 2)
    assert rel_l2(u[centre], analytic[centre]) < 1e-2
    # The same check without the global phase exp(ikz), or with the opposite sign
    # convention, fails by far:
    assert rel_l2(u[centre], (analytic * np.exp(-1j * K * z))[centre]) > 0.5
    assert rel_l2(np.conj(u[centre]), analytic[centre]) > 0.5


# --------------------------------------------------------------------------- Gaussian
@pytest.mark.parametrize("z_over_zr", [0.5, 1.0, 2.0])
def test_gaussian_beam_radius_amplitude_and_gouy_phase(z_over_zr):
    # Waist w0 = 5 lambda: paraxial Gaussian optics holds to ~(1/(k w0))^2 ~ 1e-3.
    # Odd grid: the optical axis is the centre of pixel (n//2, n//2).
    pitch, n, w0 = LAM / 2, 191, 5 * LAM
    grid = Grid((n, n), pitch)
    X, Y = grid.meshgrid()
    u0 = np.exp(-(X**2 + Y**2) / w0**2).astype(np.complex128)
    zr = np.pi * w0**2 / LAM
    z = z_over_zr * zr
    u = propagate(u0, wavelength_m=LAM, pitch_m=pitch, distance_m=z, check="ignore")

    w_theory = w0 * np.sqrt(1 + (z / zr) ** 2)
    intensity = np.abs(u) ** 2
    # For I ~ exp(-2 r^2 / w^2), <x^2> = w^2/4 (and likewise y).
    w_x = 2 * np.sqrt((intensity * X**2).sum() / intensity.sum())
    w_y = 2 * np.sqrt((intensity * Y**2).sum() / intensity.sum())
    assert w_x / w_theory == pytest.approx(1, abs=5e-3)
    assert w_y / w_theory == pytest.approx(1, abs=5e-3)

    on_axis = u[n // 2, n // 2]
    assert abs(on_axis) == pytest.approx(w0 / w_theory, rel=5e-3)
    gouy = np.arctan(z / zr)
    assert abs(centred_modulo(np.angle(on_axis) - (K * z - gouy))) < 5e-3
    # and the Gouy shift is really there (pi/8 .. 0.35 pi here, far above the tolerance)
    assert abs(centred_modulo(np.angle(on_axis) - K * z)) > 0.4


# --------------------------------------------------------------------------- Talbot
def _tukey(n, taper):
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(taper) + 0.5) / taper)
    w = np.ones(n)
    w[:taper], w[-taper:] = ramp, ramp[::-1]
    return w


def test_talbot_self_imaging_at_exact_nonparaxial_distance():
    # A cosine amplitude grating t = 1 + m cos(2 pi x / d) has only the orders 0 and +-1.
    # The +-1 orders pick up exp(i 2 pi z sqrt(1/lambda^2 - 1/d^2)) against exp(i k z) for
    # the 0 order, so the field repeats exactly (times exp(i k z_T)) at
    #   z_T = lambda / (1 - sqrt(1 - lambda^2/d^2))
    # and at z_T/2 the +-1 orders are inverted: the grating shifted by half a period.
    # d = 2 lambda makes the orders steep (30 deg): z_T = 5.60 mm against the paraxial
    # 2 d^2/lambda = 6.00 mm, a difference the test must resolve. The grating is finite
    # (a smooth Tukey envelope, flat in the middle) and is compared over the flat part
    # minus two periods on each side (the +-1 orders walk sideways ~2 d over z_T).
    d, ppd, n, taper, m = 2 * LAM, 8, 192, 48, 0.5
    pitch = d / ppd
    grid = Grid((n, n), pitch)
    X, _ = grid.meshgrid()
    envelope = np.outer(_tukey(n, taper), _tukey(n, taper))
    u0 = (envelope * (1 + m * np.cos(2 * np.pi * X / d))).astype(np.complex128)
    z_t = LAM / (1 - np.sqrt(1 - LAM**2 / d**2))
    c = slice(taper + 2 * ppd, n - taper - 2 * ppd)

    def image_error(z, shift):
        u = propagate(u0, wavelength_m=LAM, pitch_m=pitch, distance_m=z, check="ignore") * np.exp(-1j * K * z)
        expected = 1 + m * np.cos(2 * np.pi * (X[c, c] + shift) / d)
        return rel_l2(u[c, c], expected)

    assert image_error(z_t, 0) < 5e-3
    assert image_error(z_t / 2, d / 2) < 5e-3
    assert image_error(z_t / 2, 0) > 0.3            # contrast really is inverted at z_T/2
    assert image_error(2 * d**2 / LAM, 0) > 5e-2    # the paraxial Talbot distance is wrong


# --------------------------------------------------------------------------- energy and direction
def test_energy_conserved_and_tilted_beam_walks_the_right_way():
    # An off-axis Gaussian beam tilted towards +x and -y on a non-square grid: nothing
    # reaches the grid's edge, its spectrum lies far inside the band limit and far from
    # the evanescent cut-off, so the power must be conserved and the centroid must move
    # by z*tan(theta) along each axis (exp(+i 2 pi fx x) travels towards +x; x along
    # columns, y along rows).
    pitch, shape, w = LAM / 4, (176, 192), 3 * LAM
    grid = Grid(shape, pitch)
    X, Y = grid.meshgrid()
    sin_x, sin_y = 0.3, -0.2
    x0, y0 = -16 * pitch, 12 * pitch
    u0 = np.exp(-((X - x0) ** 2 + (Y - y0) ** 2) / w**2 + 1j * K * (sin_x * X + sin_y * Y))
    z = 20e-3
    u = propagate(u0, wavelength_m=LAM, pitch_m=pitch, distance_m=z, check="ignore")
    p0, p1 = np.sum(np.abs(u0) ** 2), np.sum(np.abs(u) ** 2)
    assert p1 / p0 == pytest.approx(1, abs=1e-9)

    cos_z = np.sqrt(1 - sin_x**2 - sin_y**2)  # direction cosines of the beam axis
    intensity = np.abs(u) ** 2 / p1
    assert (intensity * X).sum() - x0 == pytest.approx(z * sin_x / cos_z, rel=1e-2)
    assert (intensity * Y).sum() - y0 == pytest.approx(z * sin_y / cos_z, rel=1e-2)


def test_round_trip_returns_the_band_limited_field():
    # Propagating by +z then -z gives back the field filtered by the mask that H keeps:
    # propagating waves (f < 1/lambda) inside the band limit. The field below carries a
    # Gaussian (inside that mask), a cos component along x at 0.65/lambda (propagating
    # but beyond the band limit of 0.287/lambda that this small window allows) and one
    # along y at 1.5/lambda (evanescent). The expected result is computed here with plain
    # numpy FFTs from the formulas in docs/physics.md.
    pitch, n, N, z = LAM / 4, 128, 144, 10e-3
    grid = Grid((n, n), pitch)
    X, Y = grid.meshgrid()
    env = np.exp(-(X**2 + Y**2) / (4 * LAM) ** 2)
    u0 = (env * (1 + 0.7 * np.cos(2 * np.pi * 0.65 * X / LAM) + 0.5 * np.cos(2 * np.pi * 1.5 * Y / LAM))
          ).astype(np.complex128)
    kw = dict(wavelength_m=LAM, pitch_m=pitch, window_shape=(N, N), check="ignore")
    back = propagate(propagate(u0, distance_m=z, **kw), distance_m=-z, **kw)

    walkoff = min(N / 2, N - n) * pitch                    # what the window holds
    f_limit = 1 / (LAM * np.sqrt((z / walkoff) ** 2 + 1))  # Matsushima-Shimobaba
    assert f_limit * LAM == pytest.approx(0.2873, abs=1e-4)
    f = np.fft.fftfreq(N, d=pitch)
    FX, FY = np.meshgrid(f, f)
    keep = (FX**2 + FY**2 < 1 / LAM**2) & (np.abs(FX) <= f_limit) & (np.abs(FY) <= f_limit)
    padded = np.zeros((N, N), complex)
    padded[:n, :n] = u0
    expected = np.fft.ifft2(np.fft.fft2(padded) * keep)[:n, :n]
    assert rel_l2(back, expected) < 1e-6
    assert rel_l2(back, u0) > 0.3  # the filter really removed something
    # ... and it is the band limit that removed the x component:
    no_limit = dict(kw, band_limit=False)
    back_nl = propagate(propagate(u0, distance_m=z, **no_limit), distance_m=-z, **no_limit)
    assert rel_l2(back_nl, expected) > 0.1


def test_evanescent_waves_are_dropped():
    # Two tilted Gaussians (waist 5 lambda) on a lambda/4 grid: spatial frequency
    # (0.5, 0.5)/lambda propagates (|f| = 0.71/lambda), (0.9, 0.9)/lambda is evanescent
    # (|f| = 1.27/lambda, its spectrum is > 0.27/lambda outside the circle). Over 0.3 mm
    # (0.4 lambda) the band limit keeps |fx|, |fy| up to 0.995/lambda, so it is the
    # evanescent cut-off alone that must remove the second beam: its power goes to zero,
    # the propagating beam keeps all of its power.
    pitch, n, N, z = LAM / 4, 128, 144, 0.3e-3
    X, Y = Grid((n, n), pitch).meshgrid()
    g = np.exp(-(X**2 + Y**2) / (5 * LAM) ** 2)
    kw = dict(wavelength_m=LAM, pitch_m=pitch, distance_m=z, window_shape=(N, N), check="ignore")
    evanescent = g * np.exp(2j * np.pi * 0.9 * (X + Y) / LAM)
    propagating = g * np.exp(2j * np.pi * 0.5 * (X + Y) / LAM)
    power = np.sum(g**2)
    assert np.sum(np.abs(propagate(evanescent, **kw)) ** 2) < 1e-9 * power
    both = propagate(evanescent + propagating, **kw)
    assert np.sum(np.abs(both) ** 2) / power == pytest.approx(1, abs=1e-9)


# --------------------------------------------------------------------------- adjoint
@pytest.mark.parametrize("shape,window,z", [((64, 64), (72, 72), 10e-3), ((48, 40), None, -25e-3),
                                             ((33, 20), (64, 50), 4e-3)])
def test_adjoint_identity(rng, shape, window, z):
    def rand(*s):
        return rng.standard_normal(s) + 1j * rng.standard_normal(s)

    u, v = rand(3, *shape), rand(3, *shape)
    kw = dict(wavelength_m=LAM, pitch_m=0.4e-3, distance_m=z, window_shape=window, check="ignore")
    Pu = propagate(u, **kw)
    Pv = propagate(v, adjoint=True, **kw)
    lhs, rhs = np.vdot(v, Pu), np.vdot(Pv, u)      # <Pu, v> and <u, P*v>
    assert abs(lhs - rhs) <= 1e-6 * abs(lhs)
    # for propagating waves the adjoint is propagation by -z
    back = propagate(v, **dict(kw, distance_m=-z))
    assert rel_l2(Pv, back) < 1e-12


def test_transfer_function_is_the_documented_formula():
    # H = exp(i 2 pi z sqrt(1/lambda^2 - fx^2 - fy^2)), zero for evanescent waves and
    # outside the band limit, with 1/(NY*NX) folded in; checked at single frequencies.
    pitch, field, window, z = LAM / 3, (40, 30), (80, 64), 12e-3
    H = transfer_function(field, window, pitch, LAM, z) * (80 * 64)
    fy, fx = np.fft.fftfreq(80, d=pitch), np.fft.fftfreq(64, d=pitch)
    walk = (min(40, 40) * pitch, min(32, 34) * pitch)
    lim = [1 / (LAM * np.sqrt((z / s) ** 2 + 1)) for s in walk]
    for i, j in [(0, 0), (3, 5), (77, 2), (10, 60), (40, 32), (20, 1)]:
        f2 = fx[j] ** 2 + fy[i] ** 2
        if f2 < 1 / LAM**2 and abs(fy[i]) <= lim[0] and abs(fx[j]) <= lim[1]:
            expected = np.exp(2j * np.pi * z * np.sqrt(1 / LAM**2 - f2))
        else:
            expected = 0
        assert H[i, j] == pytest.approx(expected, abs=1e-12), (i, j)


# --------------------------------------------------------------------------- backends
def test_numpy_and_cupy_agree(xp, rng):
    """CuPy gives NumPy's result to 1e-5 (complex64). On the NumPy run, the pyFFTW path
    is compared with the scipy.fft fallback instead (the same arithmetic, another FFT)."""
    shape, window, z = (48, 40), (96, 80), 30e-3
    field = (rng.standard_normal((3,) + shape) + 1j * rng.standard_normal((3,) + shape)).astype(np.complex64)
    kw = dict(wavelength_m=LAM, pitch_m=0.4e-3, distance_m=z, window_shape=window, check="ignore")
    ref = propagate(field, **kw)
    assert ref.dtype == np.complex64
    if xp is np:
        from diffractive.convolution import Workspace

        H = transfer_function(shape, window, 0.4e-3, LAM, z, dtype=np.complex64)
        ws = Workspace(shape, window, np.complex64, batch=3, use_pyfftw=False)
        ws.load(field)
        ws.hop(H)
        got = ws.result().copy()
    else:
        out = propagate(xp.asarray(field), **kw)
        assert type(out) is type(xp.asarray(field)) and out.dtype == np.complex64
        got = to_numpy(out)
        adj = to_numpy(propagate(xp.asarray(field), adjoint=True, **kw))
        assert rel_l2(adj, propagate(field, adjoint=True, **kw)) < 1e-5
    assert rel_l2(got, ref) < 1e-5


def test_batch_axes_and_dtypes(rng):
    field = rng.standard_normal((2, 3, 20, 24)) + 1j * rng.standard_normal((2, 3, 20, 24))
    kw = dict(wavelength_m=LAM, pitch_m=0.4e-3, distance_m=5e-3, check="ignore")
    out = propagate(field, **kw)
    assert out.shape == field.shape and out.dtype == np.complex128
    np.testing.assert_allclose(out[1, 2], propagate(field[1, 2], **kw), rtol=0, atol=1e-12)
    out32 = propagate(field.astype(np.complex64), **kw)
    assert out32.dtype == np.complex64
    assert rel_l2(out32, out) < 1e-5
    assert propagate(field.real.astype(np.float32), **kw).dtype == np.complex64
    np.testing.assert_allclose(propagate(field.real, workers=2, **kw), propagate(field.real, workers=1, **kw),
                               atol=1e-12)


# --------------------------------------------------------------------------- bad input
GOOD = dict(wavelength_m=LAM, pitch_m=0.4e-3, distance_m=10e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, complex(np.nan, 0), complex(0, np.inf)])
def test_non_finite_field_is_refused(bad):
    field = np.ones((16, 16), complex)
    field[3, 4] = bad
    with pytest.raises(ValueError, match="field.*(NaN|infinite)"):
        propagate(field, **GOOD)


@pytest.mark.parametrize("field", [np.ones(16, complex), np.array(1.0 + 0j), "not an array"])
def test_field_without_a_grid_is_refused(field):
    with pytest.raises((ValueError, TypeError), match="field"):
        propagate(field, **GOOD)


@pytest.mark.parametrize("name", ["wavelength_m", "pitch_m"])
@pytest.mark.parametrize("value", [0.0, -1e-3, np.nan, np.inf])
def test_non_positive_or_non_finite_lengths_are_refused(name, value):
    with pytest.raises(ValueError, match=name):
        propagate(np.ones((16, 16), complex), **dict(GOOD, **{name: value}))


@pytest.mark.parametrize("name,value,exc", [("pitch_m", "0.4 mm", TypeError), ("wavelength_m", None, TypeError),
                                            ("distance_m", np.nan, ValueError), ("distance_m", "far", TypeError)])
def test_wrong_types_are_refused(name, value, exc):
    with pytest.raises(exc, match=name):
        propagate(np.ones((16, 16), complex), **dict(GOOD, **{name: value}))


def test_bad_window_shape_and_check_option():
    with pytest.raises(ValueError, match="window_shape"):
        propagate(np.ones((16, 16), complex), window_shape=(8, 32), **GOOD)
    with pytest.raises(ValueError, match="window_shape"):
        propagate(np.ones((16, 16), complex), window_shape=(32,), **GOOD)
    with pytest.raises(ValueError, match="check"):
        propagate(np.ones((16, 16), complex), check="loud", **GOOD)


def test_propagator_refuses_a_field_of_another_shape():
    prop = Engine((16, 16), wavelength_m=LAM, pitch_m=0.4e-3, distances_m=(1e-2,), check="ignore")
    with pytest.raises(ValueError, match="field.*grid"):
        prop.hop(np.ones((16, 18), complex))


# --------------------------------------------------------------------------- sampling checks
def test_short_window_long_distance_warns_with_numbers():
    # 64 x 64 pixels of 0.4 mm in an 80 x 80 window hold a walk-off of
    # min(80/2, 80-64) * 0.4 = 6.4 mm; the grid carries rays at asin(lambda/(2 pitch)) =
    # 69.6 deg, which spread z*tan = 100 mm * 2.694 = 269 mm; keeping them needs
    # ceil(269.4/0.4) = 674 pixels of margin: window >= max(64 + 674, 2*674) = 1348.
    field = np.ones((64, 64), complex)
    kw = dict(wavelength_m=LAM, pitch_m=0.4e-3, distance_m=100e-3, window_shape=(80, 80))
    with pytest.warns(SamplingWarning) as record:
        propagate(field, **kw)
    msg = str(record[0].message)
    for number in ("100 mm", "6.4 mm", "269 mm", "69.6 deg", "1348"):
        assert number in msg, (number, msg)
    assert "window_shape" in msg  # says what to change
    with pytest.raises(SamplingError, match="6.4 mm"):
        propagate(field, check="error", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        propagate(field, check="ignore", **kw)
    rep = sampling_report((64, 64), (80, 80), 0.4e-3, LAM, 100e-3)
    assert rep.window_needed == (1348, 1348)
    assert rep.kept_fraction < 0.1


def test_lin_geometry_is_sampled_well():
    # Lin et al. 2018: 0.75 mm, 0.4 mm pitch, 200 x 200 layers, 400 x 400 window, 30 mm.
    # The window holds 80 mm of walk-off; the band limit keeps 1.248 of the grid's 1.25
    # cycles/mm (99.9 %), so there is nothing to warn about.
    assert default_window((200, 200)) == (400, 400)
    rep = sampling_report((200, 200), (400, 400), 0.4e-3, LAM, 30e-3)
    assert rep.kept_fraction == pytest.approx(1 / np.sqrt((30 / 80) ** 2 + 1) * (1 / LAM) / 1250, rel=1e-9)
    assert rep.kept_fraction > 0.99 and rep.problems() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = propagate(np.ones((200, 200), complex), wavelength_m=LAM, pitch_m=0.4e-3, distance_m=30e-3,
                        window_shape=(400, 400), check="error")
    assert out.shape == (200, 200)


def test_fftw_planner_choice_changes_no_physics_and_bad_values_are_refused(rng, monkeypatch):
    from diffractive import convolution

    if not convolution.HAVE_PYFFTW:
        pytest.skip("pyFFTW is not installed")
    field = (rng.standard_normal((2, 24, 24)) + 1j * rng.standard_normal((2, 24, 24))).astype(np.complex64)
    out = {}
    for planner in ("measure", "estimate"):
        monkeypatch.setenv("D2NN_FFTW_PLANNER", planner)
        prop = Engine((24, 24), wavelength_m=0.75e-3, pitch_m=0.4e-3, distances_m=(5e-3,), check="ignore")
        out[planner] = prop.hop(field, workers=1)   # a new engine plans anew, with the planner set now
        assert prop.pool.per_thread().planner == planner
    np.testing.assert_allclose(out["estimate"], out["measure"], rtol=0, atol=1e-5 * np.abs(out["measure"]).max())
    monkeypatch.setenv("D2NN_FFTW_PLANNER", "patient")
    with pytest.raises(ValueError, match="D2NN_FFTW_PLANNER='patient': must be one of"):
        Engine((24, 24), wavelength_m=0.75e-3, pitch_m=0.4e-3, distances_m=(5e-3,), check="ignore").hop(field)


# --------------------------------------------------------------------------- the engine and its caches
def test_clear_caches_empties_the_shared_engines_and_lets_a_new_planner_take_effect(rng, monkeypatch):
    # The shared engines keep their FFTW plans: a new D2NN_FFTW_PLANNER is ignored by an
    # engine already cached, and takes effect once clear_caches() has dropped it (and
    # FFTW's wisdom, which later plans would otherwise reuse).
    from diffractive import clear_caches, convolution, propagation, shared_engine
    from diffractive.stack import StackGeometry, forward

    field = (rng.standard_normal((2, 24, 24)) + 1j * rng.standard_normal((2, 24, 24))).astype(np.complex64)
    kw = dict(wavelength_m=LAM, pitch_m=0.4e-3, check="ignore", workers=1)
    geo = dict(wavelength_m=LAM, pitch_m=0.4e-3, distances_m=(5e-3,), dtype=np.complex64)
    monkeypatch.setenv("D2NN_FFTW_PLANNER", "measure")
    clear_caches()
    propagate(field, distance_m=5e-3, **kw)
    stack = StackGeometry((24, 24), 0.4e-3, LAM, (5e-3, 6e-3))
    forward(stack, np.ones((1, 24, 24), np.complex64), field, workers=1)
    assert propagation._single_hop_engines.cache_info().currsize == 1
    assert propagation._chain_engines.cache_info().currsize == 1
    first = shared_engine((24, 24), **geo)
    assert shared_engine((24, 24), **geo) is first                 # cached, not rebuilt

    monkeypatch.setenv("D2NN_FFTW_PLANNER", "estimate")
    before = propagate(field, distance_m=5e-3, **kw)
    if convolution.HAVE_PYFFTW:
        assert first.pool.per_thread().planner == "measure"        # the cached engine ignores it
        assert len(pyfftw_wisdom()) > 200

    clear_caches()
    assert propagation._single_hop_engines.cache_info().currsize == 0
    assert propagation._chain_engines.cache_info().currsize == 0
    if convolution.HAVE_PYFFTW:
        assert len(pyfftw_wisdom()) < 200                           # FFTW's wisdom is forgotten too
    after = propagate(field, distance_m=5e-3, **kw)
    second = shared_engine((24, 24), **geo)
    assert second is not first
    if convolution.HAVE_PYFFTW:
        assert second.pool.per_thread().planner == "estimate"      # the new setting took effect
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * np.abs(before).max())
    clear_caches()   # later tests plan with their own setting again


def pyfftw_wisdom() -> bytes:
    """FFTW's single-precision wisdom as exported (about 70 bytes when empty)."""
    import pyfftw

    return pyfftw.export_wisdom()[1]


def test_an_engine_of_several_hops_runs_each_hop_like_propagate(rng):
    # Engine.hop(index=l) is propagate() by distances_m[l]; both precisions, adjoint too.
    for dtype in (np.complex64, np.complex128):
        field = (rng.standard_normal((3, 20, 18)) + 1j * rng.standard_normal((3, 20, 18))).astype(dtype)
        eng = Engine((20, 18), wavelength_m=LAM, pitch_m=0.4e-3, distances_m=(4e-3, -6e-3), window_shape=(40, 40),
                     dtype=dtype, check="ignore")
        assert eng.n_hops == 2 and eng.key[3] == (4e-3, -6e-3)
        for index, z in enumerate(eng.distances_m):
            for adjoint in (False, True):
                got = eng.hop(field, index=index, adjoint=adjoint)
                ref = propagate(field, wavelength_m=LAM, pitch_m=0.4e-3, distance_m=z, window_shape=(40, 40),
                                adjoint=adjoint, check="ignore")
                assert got.dtype == dtype
                assert rel_l2(got, ref) < (1e-6 if dtype == np.complex64 else 1e-13)


def test_engine_refuses_bad_distances():
    with pytest.raises(ValueError, match="at least one distance"):
        Engine((8, 8), wavelength_m=LAM, pitch_m=0.4e-3, distances_m=())
    with pytest.raises(ValueError, match=r"distances_m\[1\]"):
        Engine((8, 8), wavelength_m=LAM, pitch_m=0.4e-3, distances_m=(1e-3, np.inf))
