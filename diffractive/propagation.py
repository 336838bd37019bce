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

The engine
----------
:class:`Engine` is the one object that runs hops. *A stack is made of hops*: an engine
is a chain of hops on one grid and one window, holding each hop's ``H`` and ``conj(H)``,
one pool of FFT workspaces (:mod:`diffractive.convolution`) and the one dispatch. A
single propagation is an engine of one hop (:meth:`Engine.hop`, what :func:`propagate`
runs); a stack of ``L`` layers is an engine of ``L + 1`` hops with the layers' masks
applied between them (:meth:`Engine.forward` / :meth:`Engine.backward`, whose model and
gradient :mod:`diffractive.stack` documents). This way round because the layers are data
passed per call while the hops are what is expensive to set up, and a one-hop stack is
then :func:`propagate` bit for bit. The dispatch: on NumPy each worker thread pushes one
sample at a time through all the hops of a call on its own single-threaded workspace, so
the buffers stay in cache; on CuPy the whole batch goes through at once.

An engine belongs to whoever makes it, and its memory goes when they drop it.
:func:`propagate` and :func:`diffractive.stack.forward` / ``backward`` instead share
process-wide engines (:func:`shared_engine`: the last 32 single hops and the last 8
stacks). **These caches hold transfer functions, FFTW plans with their aligned buffers
(one per worker thread) and, on CuPy, GPU memory, for the life of the process**, and
``$D2NN_FFTW_PLANNER`` (read when a workspace is planned) is ignored by engines already
cached. :func:`clear_caches` (also ``diffractive.clear_caches``) drops them and FFTW's
wisdom; the next call plans afresh with the current planner setting.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from ._validate import field_array, finite_real, positive_finite, shape2
from .backend import get_array_module
from .convolution import WorkspacePool, clear_fft_caches, run_chunks
from .errors import D2NNError


class SamplingWarning(UserWarning):
    """The grid, window or distance lose part of the physics; the message gives numbers."""


class SamplingError(D2NNError):
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
                      band_limit=True, dtype=np.complex128, xp=np, normalise=True, conjugate=False,
                      shift_xy_m=(0.0, 0.0)):
    """The angular-spectrum transfer function on the window's FFT frequency grid.

    Returns an array of shape ``window_shape`` in FFT order (zero frequency at [0, 0]),
    computed in float64 and cast to ``dtype``. With ``normalise`` it includes the
    ``1/(NY*NX)`` factor of the unnormalised inverse FFT used by
    :class:`~diffractive.convolution.Workspace`. ``conjugate`` gives the adjoint's ``conj(H)``.

    ``shift_xy_m = (sx, sy)``: the destination grid sits displaced by ``(sx, sy)`` metres
    from the source grid, and the hop returns the field sampled on it,
    ``out(r) = u(r + s)``: ``H`` times ``exp(+i 2 pi (fx sx + fy sy))``. The propagated
    field is band-limited, so this translation is exact for any (sub-pixel) ``s`` (a shift
    of the kernel, not an interpolation of the field); it narrows the wrap-around margin
    of the window on one side by ``|s|``.
    """
    NY, NX = window_shape
    fy, fx, kz_quadrant, iy, ix = _kz_grid(tuple(int(n) for n in window_shape), float(pitch_m),
                                           float(wavelength_m))
    # kz depends on fx^2 and fy^2 only: exponentiate one quadrant, then index the full window
    # (the as-built model recomputes these for every drawn stack; exp is the expensive part)
    q = np.exp((1j * distance_m) * kz_quadrant)
    q[kz_quadrant == 0] = 0.0  # evanescent: dropped
    H = q[iy[:, None], ix[None, :]]
    keep_y, keep_x = np.ones(NY), np.ones(NX)
    if band_limit:
        fy_max, fx_max = band_limit_frequencies(field_shape, window_shape, pitch_m, wavelength_m, distance_m)
        keep_y, keep_x = (np.abs(fy) <= fy_max).astype(float), (np.abs(fx) <= fx_max).astype(float)
    sx, sy = (float(v) for v in shift_xy_m)
    row = keep_y * np.exp(2j * np.pi * fy * sy) if sy else keep_y
    col = keep_x * np.exp(2j * np.pi * fx * sx) if sx else keep_x
    scale = 1.0 / (NY * NX) if normalise else 1.0
    H *= row[:, None] * scale
    H *= col[None, :]
    if conjugate:
        H = np.conj(H)
    return xp.asarray(H.astype(dtype))


@functools.lru_cache(maxsize=8)
def _kz_grid(window_shape, pitch_m, wavelength_m):
    """``(fy (NY,), fx (NX,), kz_quadrant, iy (NY,), ix (NX,))`` on the FFT grid:
    ``kz = 2 pi sqrt(1/lambda^2 - f^2)`` for propagating waves, exactly 0 for evanescent ones,
    on the non-negative-frequency quadrant; ``kz_quadrant[iy[i], ix[j]]`` is the value at FFT
    index (i, j). Cached: every drawn as-built stack recomputes its transfer functions on the
    same grid (cleared by clear_caches)."""
    NY, NX = window_shape
    fy = np.fft.fftfreq(NY, d=pitch_m)
    fx = np.fft.fftfreq(NX, d=pitch_m)
    iy = np.minimum(np.arange(NY), (NY - np.arange(NY)) % NY)
    ix = np.minimum(np.arange(NX), (NX - np.arange(NX)) % NX)
    qy, qx = fy[:NY // 2 + 1], fx[:NX // 2 + 1]
    arg = 1.0 / wavelength_m**2 - qx[None, :] ** 2 - qy[:, None] ** 2
    kz = 2 * np.pi * np.sqrt(np.where(arg > 0, arg, 0.0))
    for a in (fy, fx, kz, iy, ix):
        a.setflags(write=False)
    return fy, fx, kz, iy, ix


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
        raise D2NNError(f"check must be 'warn', 'error' or 'ignore', got {check!r}")
    if check == "ignore":
        return
    for msg in report.problems():
        msg = f"{context}: {msg}" if context else msg
        if check == "error":
            raise SamplingError(msg)
        warnings.warn(msg, SamplingWarning, stacklevel=3)


def check_hop_shifts(shifts_xy_m, n_hops: int) -> tuple:
    """``()`` for no lateral hop shifts, else ``n_hops`` finite ``(sx, sy)`` pairs (metres) as a tuple."""
    if shifts_xy_m is None or len(shifts_xy_m) == 0:
        return ()
    a = np.asarray(shifts_xy_m, dtype=np.float64)
    if a.shape != (n_hops, 2) or not np.all(np.isfinite(a)):
        raise D2NNError(f"shifts_xy_m must be {n_hops} finite (sx, sy) pairs in metres, one per hop, "
                        f"got shape {a.shape}")
    if not np.any(a):
        return ()
    return tuple((float(x), float(y)) for x, y in a)


def complex_dtype_for(dtype) -> np.dtype:
    """complex64 for single precision inputs, complex128 otherwise."""
    dtype = np.dtype(dtype)
    return np.dtype(np.complex64) if dtype in (np.float32, np.complex64, np.float16) else np.dtype(np.complex128)


class Engine:
    """The one object that runs hops: transfer functions, FFT workspaces and the dispatch.

    A chain of ``len(distances_m)`` hops on one grid and one window (see "The engine" in
    the module docstring): a single propagation is a one-hop engine, a stack of ``L``
    layers an engine of ``L + 1`` hops. The engine belongs to whoever made it; the
    functional entries share cached ones (:func:`shared_engine`).

    Parameters
    ----------
    field_shape : (ny, nx)
        Grid of the fields entering and leaving every hop, pixels.
    wavelength_m, pitch_m : float
        Metres, positive.
    distances_m : sequence of float
        Metres, finite, either sign (negative propagates backwards); one per hop.
    window_shape : (NY, NX), optional
        Padded FFT window, at least ``field_shape``; default :func:`default_window`.
    band_limit : bool
        Apply the band limit of the module docstring (default True).
    dtype : complex64 or complex128
        Precision of the transfer functions, workspaces and results.
    xp : numpy or cupy
    check : "warn" | "error" | "ignore"
        What to do when a hop's :class:`SamplingReport` finds lost bandwidth.

    Attributes
    ----------
    H, H_adjoint : lists of (NY, NX) arrays, FFT order
        Each hop's transfer function (``1/(NY*NX)`` folded in) and its conjugate.
    reports : list of :class:`SamplingReport`, one per hop.
    """

    def __init__(self, field_shape, *, wavelength_m, pitch_m, distances_m, window_shape=None,
                 band_limit=True, dtype=np.complex64, xp=np, check="warn", shifts_xy_m=()):
        self.field_shape = shape2("field shape", field_shape)
        self.wavelength_m = positive_finite("wavelength_m", wavelength_m)
        self.pitch_m = positive_finite("pitch_m", pitch_m)
        self.distances_m = tuple(finite_real(f"distances_m[{i}]", z) for i, z in enumerate(distances_m))
        if not self.distances_m:
            raise D2NNError("distances_m must hold at least one distance")
        self.window_shape = (default_window(self.field_shape) if window_shape is None
                             else shape2("window_shape", window_shape))
        if any(N < n for n, N in zip(self.field_shape, self.window_shape)):
            raise D2NNError(f"window_shape {list(self.window_shape)} must be at least the field shape "
                             f"{list(self.field_shape)}")
        self.band_limit = bool(band_limit)
        self.shifts_xy_m = check_hop_shifts(shifts_xy_m, len(self.distances_m))
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.reports = [sampling_report(self.field_shape, self.window_shape, self.pitch_m, self.wavelength_m, z,
                                        self.band_limit) for z in self.distances_m]
        for i, (r, z) in enumerate(zip(self.reports, self.distances_m)):
            where = f"propagating {z * 1e3:.4g} mm" if self.n_hops == 1 else f"hop {i} ({z * 1e3:.4g} mm)"
            check_sampling(r, check, context=where)
        self._make_transfer_functions()
        self.pool = WorkspacePool(self.field_shape, self.window_shape, self.dtype, xp)

    def _make_transfer_functions(self):
        shifts = self.shifts_xy_m or ((0.0, 0.0),) * len(self.distances_m)
        self.H = [transfer_function(self.field_shape, self.window_shape, self.pitch_m, self.wavelength_m, z,
                                    band_limit=self.band_limit, dtype=self.dtype, xp=self.xp, shift_xy_m=s)
                  for z, s in zip(self.distances_m, shifts)]
        self.H_adjoint = [self.xp.conj(h) for h in self.H]

    def retuned(self, *, wavelength_m=None, distances_m=None, shifts_xy_m=(), check="ignore") -> "Engine":
        """A new engine with other hops (``distances_m``, ``shifts_xy_m``: each hop's lateral
        offset of its destination grid, see :func:`transfer_function`) or another wavelength,
        on the same grid, window and precision, **sharing this engine's FFT workspaces**.

        The as-built model draws a new stack (gaps, source wavelength) for every batch; only
        the transfer functions change, so the FFTW plans and aligned buffers are kept. The
        two engines must not run at the same time (they share per-thread buffers).
        """
        eng = Engine.__new__(Engine)
        eng.__dict__.update(self.__dict__)
        eng.wavelength_m = self.wavelength_m if wavelength_m is None else positive_finite("wavelength_m", wavelength_m)
        if distances_m is not None:
            eng.distances_m = tuple(finite_real(f"distances_m[{i}]", z) for i, z in enumerate(distances_m))
            if not eng.distances_m:
                raise D2NNError("distances_m must hold at least one distance")
        eng.shifts_xy_m = check_hop_shifts(shifts_xy_m, len(eng.distances_m))
        eng.reports = [sampling_report(eng.field_shape, eng.window_shape, eng.pitch_m, eng.wavelength_m, z,
                                       eng.band_limit) for z in eng.distances_m]
        for i, (r, z) in enumerate(zip(eng.reports, eng.distances_m)):
            check_sampling(r, check, context=f"hop {i} ({z * 1e3:.4g} mm)")
        eng._make_transfer_functions()
        return eng

    @property
    def n_hops(self) -> int:
        """Number of hops (free-space gaps) in the chain."""
        return len(self.distances_m)

    @property
    def key(self) -> tuple:
        """``(field_shape, wavelength_m, pitch_m, distances_m, window_shape, band_limit, shifts_xy_m)``:
        engines with equal keys compute the same hops."""
        return (self.field_shape, self.wavelength_m, self.pitch_m, self.distances_m, self.window_shape,
                self.band_limit, self.shifts_xy_m)

    # -- the dispatch ----------------------------------------------------------------
    def _dispatch(self, step, batch: int, workers=None, state=None) -> list:
        """Run ``step(ws, sl, st)`` over a batch of ``batch`` samples.

        NumPy: contiguous chunks in worker threads (:func:`~diffractive.convolution.run_chunks`),
        each on its thread's single-sample workspace with ``sl = slice(i, i + 1)``, one
        sample at a time through every hop the step runs, so the buffers stay in cache.
        CuPy: one call with a batched workspace and ``sl = slice(0, batch)``.
        ``state()`` (if given) makes per-chunk scratch ``st`` once per chunk, never per
        sample. Returns the chunks' ``st`` in order (one entry on CuPy).
        """
        if self.xp is np:
            pool = self.pool

            def chunk(a, b):
                ws = pool.per_thread()
                st = None if state is None else state()
                for i in range(a, b):
                    step(ws, slice(i, i + 1), st)
                return st
            return run_chunks(chunk, batch, workers)
        st = None if state is None else state()
        step(self.pool.batched(batch), slice(0, batch), st)
        return [st]

    # -- one hop -----------------------------------------------------------------------
    def hop(self, field, *, index=0, adjoint=False, workers=None):
        """Apply hop ``index`` (or its adjoint, ``conj(H)``) to ``field`` (..., ny, nx).

        Returns a new array of shape ``field.shape`` and the engine's dtype. ``workers``:
        CPU threads (default all cores available to the process; ignored on CuPy).
        """
        if field.shape[-2:] != self.field_shape:
            raise D2NNError(f"field's last two axes {field.shape[-2:]} do not match the grid {self.field_shape}")
        H = (self.H_adjoint if adjoint else self.H)[index]
        lead = field.shape[:-2]
        flat = field.reshape((-1,) + self.field_shape)
        out = self.xp.empty(flat.shape, dtype=self.dtype)

        def step(ws, sl, _):
            ws.load(flat[sl])
            ws.hop(H)
            out[sl] = ws.result()
        self._dispatch(step, flat.shape[0], workers)
        return out.reshape(lead + self.field_shape)

    # -- a stack: layers between the hops ----------------------------------------------
    def _check_stack_inputs(self, transmissions, fields):
        from ._validate import finite_array  # noqa: PLC0415

        L, (ny, nx) = self.n_hops - 1, self.field_shape
        if transmissions.shape != (L, ny, nx):
            raise D2NNError(f"transmissions must have shape {(L, ny, nx)} (layers, ny, nx), got {transmissions.shape}")
        if fields.ndim != 3 or fields.shape[1:] != (ny, nx):
            raise D2NNError(f"input fields must have shape (batch, {ny}, {nx}), got {fields.shape}")
        finite_array("transmissions", transmissions, self.xp)
        finite_array("input fields", fields, self.xp)

    def forward(self, transmissions, fields, *, keep_arrivals=False, workers=None):
        """Hop, multiply by ``transmissions[l]``, ..., hop: the stack's forward pass.

        ``transmissions`` (L, ny, nx) complex with ``L = n_hops - 1``; ``fields``
        (B, ny, nx) complex, both cast to the engine's dtype. Returns ``(output, arrivals)``:
        the output-plane fields (B, ny, nx) and, with ``keep_arrivals``, the fields arriving
        at each layer before its mask (L, B, ny, nx), else ``None``.
        """
        xp, dtype = self.xp, self.dtype
        transmissions = xp.asarray(transmissions, dtype=dtype)
        fields = xp.asarray(fields, dtype=dtype)
        self._check_stack_inputs(transmissions, fields)
        H, L = self.H, self.n_hops - 1
        out = xp.empty(fields.shape, dtype=dtype)
        arrivals = xp.empty((L,) + fields.shape, dtype=dtype) if keep_arrivals else None

        def step(ws, sl, _):
            ws.load(fields[sl])
            for l in range(L):
                ws.hop(H[l])
                if keep_arrivals:
                    arrivals[l, sl] = ws.result()
                ws.modulate(transmissions[l])
            ws.hop(H[L])
            out[sl] = ws.result()
        self._dispatch(step, fields.shape[0], workers)
        return out, arrivals

    def backward(self, output, arrivals, transmissions, grad_intensity=None, *, grad_output=None,
                 need_input_grad=False, workers=None):
        """The stack's adjoint pass (the gradient of :mod:`diffractive.stack`'s docstring).

        ``output`` (B, ny, nx) and ``arrivals`` (L, B, ny, nx) from :meth:`forward` with
        ``keep_arrivals``; ``transmissions`` (L, ny, nx) as given to it. Give either
        ``grad_intensity`` = dL/dI (B, ny, nx) real for ``I = |output|^2`` or ``grad_output``
        = 2 dL/du* (B, ny, nx) complex. Returns ``(g_t, g_in)``: ``g_t`` (L, ny, nx)
        complex, summed over the batch, and the input-field gradient (B, ny, nx) if
        ``need_input_grad`` else ``None``.
        """
        if arrivals is None:
            raise D2NNError("backward needs forward(..., keep_arrivals=True)")
        xp, dtype, out, t = self.xp, output.dtype, output, transmissions
        H_adj, L = self.H_adjoint, self.n_hops - 1
        t_conj = xp.conj(t)
        g_in = xp.empty(out.shape, dtype=dtype) if need_input_grad else None
        if (grad_intensity is None) == (grad_output is None):
            raise D2NNError("give exactly one of grad_intensity and grad_output")

        def step(ws, sl, st):
            acc, tmp = st
            if grad_output is not None:
                ws.load(grad_output[sl])
            else:
                ws.load(out[sl], 2 * grad_intensity[sl].astype(out.real.dtype, copy=False))
            ws.hop(H_adj[L])
            for l in range(L - 1, -1, -1):
                a = ws.result()
                if tmp is None:
                    acc[l] += (xp.conj(arrivals[l, sl]) * a).sum(axis=0)
                else:  # one sample: accumulate without temporaries
                    xp.conjugate(arrivals[l, sl.start], out=tmp)
                    xp.multiply(tmp, a[0], out=tmp)
                    acc[l] += tmp
                if l == 0 and not need_input_grad:
                    break
                ws.modulate(t_conj[l])
                ws.hop(H_adj[l])
            if need_input_grad:
                g_in[sl] = ws.result()

        if xp is np:  # per-thread accumulator and scratch, made once per chunk
            def state():
                return np.zeros(t.shape, dtype=dtype), np.empty(t.shape[1:], dtype=dtype)
            g_t = sum(acc for acc, _ in self._dispatch(step, out.shape[0], workers, state))
        else:
            g_t = self._dispatch(step, out.shape[0], workers, lambda: (xp.zeros(t.shape, dtype=dtype), None))[0][0]
        return g_t, g_in


# -- process-wide shared engines --------------------------------------------------------
# Two caches so that many single hops (propagate; a training step's per-hop adjoints use
# L + 1 of them) do not evict the few stack engines, which hold L + 1 transfer functions each.
@functools.lru_cache(maxsize=32)
def _single_hop_engines(key, dtype, xp):
    shape, wavelength_m, pitch_m, distances_m, window, band_limit, _ = key
    return Engine(shape, wavelength_m=wavelength_m, pitch_m=pitch_m, distances_m=distances_m, window_shape=window,
                  band_limit=band_limit, dtype=dtype, xp=xp, check="ignore")


@functools.lru_cache(maxsize=8)
def _chain_engines(key, dtype, xp):
    return _single_hop_engines.__wrapped__(key, dtype, xp)


def shared_engine(field_shape, *, wavelength_m, pitch_m, distances_m, window_shape=None, band_limit=True,
                  dtype=np.complex64, xp=np) -> Engine:
    """The process-wide :class:`Engine` for these hops, made on first use and then reused.

    Arguments as for :class:`Engine` (no sampling check: callers check). The last 32
    single-hop and the last 8 multi-hop engines are kept until :func:`clear_caches`.
    """
    shape = shape2("field shape", field_shape)
    window = default_window(shape) if window_shape is None else shape2("window_shape", window_shape)
    key = (shape, float(wavelength_m), float(pitch_m), tuple(float(z) for z in distances_m), window,
           bool(band_limit), ())
    cache = _single_hop_engines if len(key[3]) == 1 else _chain_engines
    return cache(key, np.dtype(dtype), xp)


def clear_caches() -> None:
    """Drop every process-wide cache of the physics core, so its memory can be freed.

    The shared engines (:func:`shared_engine`, used by :func:`propagate` and
    :mod:`diffractive.stack`) hold transfer functions, FFT workspaces with their FFTW
    plans (one per worker thread) or GPU memory, for the life of the process. This also
    forgets FFTW's accumulated wisdom and, if CuPy is loaded, its FFT plan cache and the
    unused blocks of its memory pool (:func:`diffractive.convolution.clear_fft_caches`).
    Engines you hold yourself are not touched. The FFTW planner (``$D2NN_FFTW_PLANNER``)
    is read when a workspace is made, so a new setting takes effect for cached engines
    only after this call.
    """
    _single_hop_engines.cache_clear()
    _chain_engines.cache_clear()
    _kz_grid.cache_clear()
    clear_fft_caches()


def propagate(field, *, wavelength_m, pitch_m, distance_m, window_shape=None, band_limit=True, adjoint=False,
              check="warn", workers=None):
    """Propagate a complex field between parallel planes by the angular-spectrum method.

    Runs the process-wide one-hop :class:`Engine` for this geometry (:func:`shared_engine`).

    Parameters
    ----------
    field : array (..., ny, nx), NumPy or CuPy
        Complex amplitude sampled on the grid (leading batch axes allowed). Real input is
        treated as a complex field with zero phase. complex64/float32 stay single precision.
    wavelength_m, pitch_m : float
        Metres, positive.
    distance_m : float
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
    array, same shape and library as ``field``: the field on the same grid at ``distance_m``.
    """
    xp = get_array_module(field)
    field = xp.asarray(field)
    field_array("field", field, xp)
    wavelength_m = positive_finite("wavelength_m", wavelength_m)
    pitch_m = positive_finite("pitch_m", pitch_m)
    distance_m = finite_real("distance_m", distance_m)
    field_shape = tuple(int(n) for n in field.shape[-2:])
    window = default_window(field_shape) if window_shape is None else shape2("window_shape", window_shape)
    dtype = complex_dtype_for(field.dtype)
    eng = shared_engine(field_shape, wavelength_m=wavelength_m, pitch_m=pitch_m, distances_m=(distance_m,),
                        window_shape=window, band_limit=band_limit, dtype=dtype, xp=xp)
    check_sampling(eng.reports[0], check, context=f"propagating {distance_m * 1e3:.4g} mm")
    return eng.hop(field.astype(dtype, copy=False), adjoint=adjoint, workers=workers)
