"""Band-limited angular-spectrum propagation between parallel planes.

Physics (the conventions every part of d2nn shares):

* Time dependence ``exp(-i*omega*t)``; a plane wave travelling towards +z is
  ``exp(+i*k*z)``. The transfer function over a distance ``z`` is

      H(fx, fy) = exp(i * 2*pi * z * sqrt(1/lambda^2 - fx^2 - fy^2))

  for propagating waves. **Evanescent components (fx^2 + fy^2 >= 1/lambda^2) are dropped**
  (set to zero): at THz plate spacings of many wavelengths they decay to nothing, and
  keeping them would make the backward (-z) propagation unstable.
* The field is zero-padded into a larger *window* so the FFT's cyclic convolution equals
  the linear one on the field's own grid (:mod:`diffractive.convolution`).
* Band limit (Matsushima & Shimobaba, Opt. Express 17, 19662 (2009)): ``H`` is zeroed for
  ``|fx| > 1 / (lambda * sqrt((z / s_x)^2 + 1))`` (likewise y), where ``s_x`` is the
  largest lateral walk-off that the window can hold without wrapping onto the field:
  ``s_x = min(NX/2, NX - nx) * pitch``. With the usual 2x padding ``s_x = NX*pitch/2`` and
  this is exactly their ``1 / (lambda * sqrt((2*df*z)^2 + 1))`` with ``df = 1/(NX*pitch)``.
  A smaller window lowers the limit: rays steeper than the walk-off allows are dropped
  rather than wrapped around, and :func:`sampling_report` says how much of the grid's
  bandwidth that costs.
* The adjoint of a hop (crop . IFFT . H . FFT . pad) is the same hop with ``conj(H)``,
  which for propagating waves equals propagation by ``-z``.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from ._validate import field_array, finite_real, positive_finite, shape2
from .backend import get_array_module
from .convolution import WorkspacePool, run_chunks


class SamplingWarning(UserWarning):
    """The grid, window or distance lose part of the physics; the message gives numbers."""


class SamplingError(ValueError):
    """Raised instead of :class:`SamplingWarning` when ``check="error"``."""


def default_window(field_shape) -> tuple[int, int]:
    """2x zero padding, rounded up to an FFT-friendly size (factors 2, 3, 5, 7)."""
    import scipy.fft  # noqa: PLC0415

    return tuple(int(scipy.fft.next_fast_len(2 * n)) for n in field_shape)


def walkoff_margin_m(field_shape, window_shape, pitch_m) -> tuple[float, float]:
    """Largest lateral shift (y, x) in metres that the window holds without wrap-around."""
    return tuple(min(N / 2, N - n) * pitch_m for n, N in zip(field_shape, window_shape))


def band_limit_frequencies(field_shape, window_shape, pitch_m, wavelength_m, distance_m):
    """Band-limit frequencies ``(fy_max, fx_max)`` in cycles/metre (see module docstring)."""
    z = abs(distance_m)
    out = []
    for s in walkoff_margin_m(field_shape, window_shape, pitch_m):
        if s <= 0:
            out.append(0.0)
        elif z == 0:
            out.append(1.0 / wavelength_m)
        else:
            out.append(1.0 / (wavelength_m * math.sqrt((z / s) ** 2 + 1.0)))
    return tuple(out)


def transfer_function(field_shape, window_shape, pitch_m, wavelength_m, distance_m, *,
                      band_limit=True, dtype=np.complex128, xp=np, normalise=True, conjugate=False):
    """The angular-spectrum transfer function on the window's FFT frequency grid.

    Returns an array of shape ``window_shape`` in FFT order (zero frequency at [0, 0]),
    computed in float64 and cast to ``dtype``. With ``normalise`` it includes the
    ``1/(NY*NX)`` factor of the unnormalised inverse FFT used by
    :class:`~diffractive.convolution.Workspace`. ``conjugate`` gives the adjoint's ``conj(H)``.
    """
    NY, NX = window_shape
    fy = np.fft.fftfreq(NY, d=pitch_m)[:, None]
    fx = np.fft.fftfreq(NX, d=pitch_m)[None, :]
    arg = 1.0 / wavelength_m**2 - fx**2 - fy**2
    propagating = arg > 0
    kz_z = 2 * np.pi * distance_m * np.sqrt(np.where(propagating, arg, 0.0))
    H = np.where(propagating, np.exp(1j * kz_z), 0.0)
    if band_limit:
        fy_max, fx_max = band_limit_frequencies(field_shape, window_shape, pitch_m, wavelength_m, distance_m)
        H = H * ((np.abs(fx) <= fx_max) & (np.abs(fy) <= fy_max))
    if normalise:
        H = H / (NY * NX)
    if conjugate:
        H = np.conj(H)
    return xp.asarray(H.astype(dtype))


@dataclass(frozen=True)
class SamplingReport:
    """How well a grid, window and distance represent free-space propagation.

    All frequencies in cycles/metre, angles in degrees, lengths in metres.
    """

    grid_max_frequency: float      # min(1/(2*pitch), 1/lambda): what the grid can carry
    kept_frequency: tuple          # band limit (fy, fx) actually applied
    kept_angle_deg: tuple          # the steepest propagation angles that survive (y, x)
    grid_angle_deg: float          # the steepest angle the grid could carry
    walkoff_needed_m: float        # lateral spread of the steepest grid ray over |z|
    walkoff_margin_m: tuple        # what the window holds (y, x)
    window_needed: tuple           # window (NY, NX) that would keep the full grid bandwidth
    band_limited: bool

    @property
    def kept_fraction(self) -> float:
        """Fraction (0..1) of the grid's bandwidth kept, on the more limited axis."""
        return min(self.kept_frequency) / self.grid_max_frequency

    def problems(self, tolerance: float = 0.95) -> list[str]:
        msgs = []
        if self.kept_fraction < tolerance:
            what = ("the band limit drops the steeper rays" if self.band_limited
                    else "the transfer function aliases (band_limit=False) for the steeper rays")
            msgs.append(
                f"the window holds a lateral walk-off of only {1e3 * min(self.walkoff_margin_m):.3g} mm but rays "
                f"the grid carries spread {1e3 * self.walkoff_needed_m:.3g} mm over this distance, so {what}: "
                f"angles above {min(self.kept_angle_deg):.3g} deg of the grid's {self.grid_angle_deg:.3g} deg "
                f"({100 * (1 - self.kept_fraction):.0f}% of the bandwidth) are lost; use window_shape >= "
                f"{list(self.window_needed)} or a shorter distance to keep them")
        return msgs


def sampling_report(field_shape, window_shape, pitch_m, wavelength_m, distance_m, band_limit=True) -> SamplingReport:
    """Compute a :class:`SamplingReport` (no warnings; see :func:`check_sampling`)."""
    f_grid = min(1 / (2 * pitch_m), 1 / wavelength_m)
    kept = band_limit_frequencies(field_shape, window_shape, pitch_m, wavelength_m, distance_m)
    kept = tuple(min(k, f_grid) for k in kept)

    def angle(f):
        return math.degrees(math.asin(min(1.0, wavelength_m * f)))

    sin_grid = min(1.0, wavelength_m * f_grid)
    tan_grid = sin_grid / math.sqrt(max(1e-12, 1 - sin_grid**2))
    walk = abs(distance_m) * tan_grid
    need = []
    for n in field_shape:
        s_px = math.ceil(walk / pitch_m)
        need.append(int(max(n + s_px, 2 * s_px)))
    return SamplingReport(
        grid_max_frequency=f_grid, kept_frequency=kept, kept_angle_deg=tuple(angle(k) for k in kept),
        grid_angle_deg=angle(f_grid), walkoff_needed_m=walk,
        walkoff_margin_m=walkoff_margin_m(field_shape, window_shape, pitch_m),
        window_needed=tuple(need), band_limited=band_limit)


def check_sampling(report: SamplingReport, check: str = "warn", context: str = "") -> None:
    """Warn (``check="warn"``), raise :class:`SamplingError` (``"error"``) or do nothing."""
    if check not in ("warn", "error", "ignore"):
        raise ValueError(f"check must be 'warn', 'error' or 'ignore', got {check!r}")
    if check == "ignore":
        return
    for msg in report.problems():
        msg = f"{context}: {msg}" if context else msg
        if check == "error":
            raise SamplingError(msg)
        warnings.warn(msg, SamplingWarning, stacklevel=3)


def complex_dtype_for(dtype) -> np.dtype:
    """complex64 for single precision inputs, complex128 otherwise."""
    dtype = np.dtype(dtype)
    return np.dtype(np.complex64) if dtype in (np.float32, np.complex64, np.float16) else np.dtype(np.complex128)


class AngularSpectrum:
    """A cached propagator for one geometry: the transfer function and FFT workspaces.

    The stateful wrapper around :func:`transfer_function` and
    :class:`~diffractive.convolution.Workspace`; :func:`propagate` builds (and caches)
    one of these per geometry. Call it on fields of shape ``(..., ny, nx)``.
    """

    def __init__(self, field_shape, *, wavelength_m, pitch_m, distance_m, window_shape=None,
                 band_limit=True, dtype=np.complex64, xp=np, check="warn"):
        self.field_shape = shape2("field shape", field_shape)
        self.wavelength_m = positive_finite("wavelength", wavelength_m)
        self.pitch_m = positive_finite("pitch", pitch_m)
        self.distance_m = finite_real("distance", distance_m)
        self.window_shape = default_window(self.field_shape) if window_shape is None else shape2("window_shape", window_shape)
        if any(N < n for n, N in zip(self.field_shape, self.window_shape)):
            raise ValueError(f"window_shape {list(self.window_shape)} must be at least the field shape "
                             f"{list(self.field_shape)}")
        self.band_limit = bool(band_limit)
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.report = sampling_report(self.field_shape, self.window_shape, self.pitch_m, self.wavelength_m,
                                      self.distance_m, self.band_limit)
        check_sampling(self.report, check, context=f"propagating {self.distance_m * 1e3:.4g} mm")
        args = (self.field_shape, self.window_shape, self.pitch_m, self.wavelength_m, self.distance_m)
        self.H = transfer_function(*args, band_limit=self.band_limit, dtype=self.dtype, xp=xp)
        self.H_adjoint = xp.conj(self.H)
        self._pool = WorkspacePool(self.field_shape, self.window_shape, self.dtype, xp)

    def __call__(self, field, *, adjoint=False, workers=None):
        """Propagate ``field`` (..., ny, nx) by ``distance_m`` (or apply the adjoint)."""
        xp = self.xp
        if field.shape[-2:] != self.field_shape:
            raise ValueError(f"field's last two axes {field.shape[-2:]} do not match the grid {self.field_shape}")
        H = self.H_adjoint if adjoint else self.H
        lead = field.shape[:-2]
        flat = field.reshape((-1,) + self.field_shape)
        out = xp.empty(flat.shape, dtype=self.dtype)
        if xp is np:
            def work(a, b):
                ws = self._pool.per_thread()
                for i in range(a, b):
                    ws.load(flat[i])
                    ws.hop(H)
                    out[i] = ws.result()[0]
            run_chunks(work, flat.shape[0], workers)
        else:
            ws = self._pool.batched(flat.shape[0])
            ws.load(flat)
            ws.hop(H)
            out[...] = ws.result()
        return out.reshape(lead + self.field_shape)

    def adjoint(self, field, **kw):
        """Apply the adjoint (propagation with ``conj(H)``)."""
        return self(field, adjoint=True, **kw)


@functools.lru_cache(maxsize=32)
def _cached_propagator(field_shape, wavelength_m, pitch_m, distance_m, window_shape, band_limit, dtype, xp):
    return AngularSpectrum(field_shape, wavelength_m=wavelength_m, pitch_m=pitch_m, distance_m=distance_m,
                           window_shape=window_shape, band_limit=band_limit, dtype=dtype, xp=xp, check="ignore")


def propagate(field, *, wavelength, pitch, distance, window_shape=None, band_limit=True, adjoint=False,
              check="warn", workers=None):
    """Propagate a complex field between parallel planes by the angular-spectrum method.

    Parameters
    ----------
    field : array (..., ny, nx), NumPy or CuPy
        Complex amplitude sampled on the grid (leading batch axes allowed). Real input is
        treated as a complex field with zero phase. complex64/float32 stay single precision.
    wavelength, pitch : float
        Metres, positive.
    distance : float
        Metres, either sign (negative propagates backwards).
    window_shape : (NY, NX), optional
        Padded FFT window; default 2x the grid, rounded up to a fast FFT size.
    band_limit : bool
        Apply the band limit described in the module docstring (default True).
    adjoint : bool
        Apply the adjoint operator (``conj(H)``) instead.
    check : "warn" | "error" | "ignore"
        What to do when the sampling report finds lost bandwidth (:class:`SamplingWarning`).
    workers : int, optional
        CPU threads (default: all cores available to the process).

    Returns
    -------
    array, same shape and library as ``field``: the field on the same grid at ``distance``.
    """
    xp = get_array_module(field)
    field = xp.asarray(field)
    field_array("field", field, xp)
    wavelength = positive_finite("wavelength", wavelength)
    pitch = positive_finite("pitch", pitch)
    distance = finite_real("distance", distance)
    field_shape = tuple(int(n) for n in field.shape[-2:])
    window = default_window(field_shape) if window_shape is None else shape2("window_shape", window_shape)
    dtype = complex_dtype_for(field.dtype)
    prop = _cached_propagator(field_shape, wavelength, pitch, distance, window, bool(band_limit), dtype, xp)
    check_sampling(prop.report, check, context=f"propagating {distance * 1e3:.4g} mm")
    return prop(field.astype(dtype, copy=False), adjoint=adjoint, workers=workers)
