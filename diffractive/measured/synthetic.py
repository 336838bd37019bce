"""Synthetic "lab" measurements of a design: the simulation with a printed stack's imperfections.

For tests of :mod:`diffractive.measured` and for planning tolerances (``d2nn measure-sim``,
whose option parsing lives in :mod:`d2nn.commands.measure_sim`). It takes typed values only.
What it models, all optional and seeded:

* **The stack as built** (:mod:`diffractive.asbuilt`, the one model of a printed,
  assembled stack that the tolerance analysis, PAT and ``d2nn simulate`` also run): any
  :class:`~diffractive.asbuilt.AsBuilt` (``Imperfections.as_built``; e.g. one draw of an
  error budget, :mod:`diffractive.budget`), on a grid oversampled ``oversample`` times.
  ``Imperfections.layer_offsets_m`` is the shorthand for lateral offsets of the layers: it
  is added to ``as_built.layer_offsets_xy_m``. A layer displaced by ``d_l`` has
  transmission ``t_l(r - d_l)``; the offset is folded into the propagation (a shifted
  hop), so it is exact for any sub-pixel value. Nothing interpolates the complex
  transmission (that would average random phasors into an absorption the print does not
  have). Light that misses a displaced plate is blocked (the opaque-aperture model of
  :mod:`diffractive.stack`).
* **Misalignment of the detector plane / scanner frame.** The detectors (or the scan
  grid) sit at design-frame points ``r = offset + scale * R(rotation) @ x`` instead of
  ``x`` — the transform of :class:`diffractive.measured.registration.Registration`, which
  is what registration recovers. A plane (or a scan on the simulation grid) that is only
  translated is the output grid translated: the last hop is shifted by ``offset``
  (:func:`diffractive.asbuilt.hop_shifts`), exact for any offset, with the field that
  enters the grid from beyond its edge. Otherwise the complex output field is sampled at
  those points by band-limited (trigonometric) interpolation of the field zero-padded to
  twice its size (separable points; exact at whole-pixel offsets, but it takes the field
  beyond the grid as zero), or, for rotated points, by cubic splines on the field
  upsampled 4x that way. (An ``as_built`` may also move the detector
  plane, ``detector_offset_xy_m`` / ``detector_rotation_rad``; that moves the plane inside
  the stack, the scan frame with it, on top of this transform. ``d2nn measure-sim
  --budget`` hands a draw's detector-plane errors to this transform instead, so that the
  truth file holds them where registration looks.)
* **Per-detector gain spread** (detector-power format only): ``gain_k = exp(spread * z_k)``,
  ``z_k ~ N(0, 1)``, normalised to mean 1.
* **Dark offset**: a constant per detector (per scan pixel) of ``dark * ref * U(0.5, 1.5)``.
* **Detector noise**: additive Gaussian, standard deviation ``noise * ref``, where ``ref``
  is the mean over samples of the largest (gain-scaled) detector power, or for scans the
  mean peak pixel intensity. Readings can therefore come out slightly negative.

A reading is ``gain * P + dark + noise``; :class:`LabData` keeps the true values, the
as-built realisation among them (``truth["as_built"]``, :meth:`AsBuilt.to_json`). When the
stack prints as designed (no quantisation, absorption, thickness, index, wavelength or
defect error) and ``oversample`` is 1, the layers are the designed ``exp(i phi)`` exactly
(the printed plate differs by a global phase only), so without imperfections the powers
equal :func:`diffractive.simulate.simulate`'s bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .._validate import finite_real, non_negative_finite, one_of, positive_finite
from ..asbuilt import AsBuilt, build_lines, check_oversample
from ..detectors import class_scores
from ..errors import D2NNError
from ..grid import Grid
from ..stack import forward
from .io import centred_origin
from .registration import Registration


@dataclass
class Imperfections:
    """What is wrong with the printed, assembled and measured stack (lengths in metres, angles in radians).

    ``noise``, ``gain_spread`` and ``dark`` are fractions (>= 0, see the module docstring);
    ``detector_offset_m`` is the (dx, dy) of the detector plane / scan frame,
    ``detector_rotation_rad`` its rotation, ``scan_scale`` (> 0) the true scan step over
    the recorded pitch; ``layer_offsets_m`` (L, 2) the (dx, dy) of each layer (``None``:
    none), added to those of ``as_built``; ``as_built`` the stack as built
    (:class:`~diffractive.asbuilt.AsBuilt`, ``None``: as designed). Bad values raise
    :class:`~diffractive.errors.D2NNError` naming the field.
    """

    noise: float = 0.0
    gain_spread: float = 0.0
    dark: float = 0.0
    detector_offset_m: tuple = (0.0, 0.0)
    detector_rotation_rad: float = 0.0
    scan_scale: float = 1.0
    layer_offsets_m: np.ndarray | None = None
    as_built: AsBuilt | None = None

    def __post_init__(self):
        for name in ("noise", "gain_spread", "dark"):
            setattr(self, name, non_negative_finite(name, getattr(self, name)))
        self.scan_scale = positive_finite("scan_scale", self.scan_scale)
        try:
            dx, dy = self.detector_offset_m
        except (TypeError, ValueError):
            raise D2NNError(f"detector_offset_m must be a pair (dx, dy), got {self.detector_offset_m!r}") from None
        self.detector_offset_m = (finite_real("detector_offset_m[0]", dx), finite_real("detector_offset_m[1]", dy))
        self.detector_rotation_rad = finite_real("detector_rotation_rad", self.detector_rotation_rad)
        if self.layer_offsets_m is not None:
            a = np.asarray(self.layer_offsets_m, dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != 2 or not np.all(np.isfinite(a)):
                raise D2NNError(f"layer_offsets_m must be finite (dx, dy) pairs, one per layer, got shape {a.shape}")
            self.layer_offsets_m = a
        if self.as_built is not None and not isinstance(self.as_built, AsBuilt):
            raise D2NNError(f"as_built must be a diffractive.asbuilt.AsBuilt, got {type(self.as_built).__name__}")

    @property
    def registration(self) -> Registration:
        """The detector-plane / scan-frame misalignment as a :class:`Registration` (scan frame -> design frame)."""
        return Registration(offset_m=tuple(float(v) for v in self.detector_offset_m),
                            rotation_rad=float(self.detector_rotation_rad), scale=float(self.scan_scale))

    def detector_is_ideal(self) -> bool:
        """True when the detector plane is not offset, rotated or rescaled."""
        return tuple(self.detector_offset_m) == (0.0, 0.0) and self.detector_rotation_rad == 0 and self.scan_scale == 1

    def stack_as_built(self, n_layers: int) -> AsBuilt:
        """The :class:`AsBuilt` the layers are simulated with: ``as_built`` (or the designed
        stack) with ``layer_offsets_m`` added to its layer offsets. Raises
        :class:`D2NNError` if ``layer_offsets_m`` does not hold ``n_layers`` pairs."""
        ab = AsBuilt() if self.as_built is None else self.as_built
        if self.layer_offsets_m is None:
            return ab
        if self.layer_offsets_m.shape != (n_layers, 2):
            raise D2NNError(f"layer_offsets_m must have shape ({n_layers}, 2), got {self.layer_offsets_m.shape}")
        if not np.any(self.layer_offsets_m):
            return ab
        off = self.layer_offsets_m + (np.asarray(ab.layer_offsets_xy_m) if ab.layer_offsets_xy_m else 0.0)
        return dataclasses.replace(ab, layer_offsets_xy_m=off)


@dataclass
class LabData:
    """Synthetic measurement: ``kind`` "detectors" (``powers`` (N, K)) or "scan" (``intensity`` (N, H, W)).

    ``labels`` (N,), ``inputs`` (N,) dataset indices or None, ``sample_ids`` N strings;
    scans: ``pitch_m`` (metres) and ``origin_m`` (x, y) metres; ``dark`` a dark measurement
    ((n_dark, K) or (n_dark, H, W)) or None; ``noiseless_powers`` (N, K) before gains, dark
    and noise (detectors only); ``truth`` the imperfections drawn, JSON-ready.
    """

    kind: str
    labels: np.ndarray
    inputs: np.ndarray | None
    sample_ids: list
    powers: np.ndarray | None = None
    intensity: np.ndarray | None = None
    pitch_m: float | None = None
    origin_m: tuple | None = None
    dark: np.ndarray | None = None
    noiseless_powers: np.ndarray | None = None
    truth: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- samples
def choose_samples(labels, n: int, seed: int = 0) -> np.ndarray:
    """Indices (n,) int64 into ``labels`` (N,) of ``n`` samples, balanced over classes (round
    robin over a seeded shuffle of each class)."""
    labels = np.asarray(labels)
    if n > len(labels):
        raise D2NNError(f"asked for {n} samples but the split has only {len(labels)}")
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    out = []
    while len(out) < n:
        for pool in pools:
            if pool and len(out) < n:
                out.append(int(pool.pop(0)))
    return np.asarray(out, dtype=np.int64)


# --------------------------------------------------------------------------- optics helpers
def _dft_matrix(pos, n_pad):
    f = np.fft.fftfreq(n_pad)
    return np.exp(2j * np.pi * np.outer(pos, f)) / n_pad


def sample_output(fields, pitch_m: float, X, Y) -> np.ndarray:
    """Complex fields (B, ny, nx) on the design grid sampled at design-frame points ``X, Y`` (H, W).

    ``pitch_m``, ``X`` and ``Y`` in metres. Returns (B, H, W) complex128. Band-limited
    interpolation (see module docstring); points outside the grid get ~0.
    """
    fields = np.asarray(fields)
    B, ny, nx = fields.shape
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    rows = Y / pitch_m + (ny - 1) / 2
    cols = X / pitch_m + (nx - 1) / 2
    Py, Px = 2 * ny, 2 * nx
    separable = np.allclose(rows, rows[:, :1], atol=1e-12, rtol=0) and np.allclose(cols, cols[:1, :], atol=1e-12, rtol=0)
    out = np.empty((B,) + X.shape, dtype=np.complex128)
    if separable:
        Ey, Ex = _dft_matrix(rows[:, 0], Py), _dft_matrix(cols[0, :], Px)
        for b in range(B):
            U = np.fft.fft2(fields[b].astype(np.complex128), s=(Py, Px))
            out[b] = Ey @ U @ Ex.T
        return out
    from scipy import ndimage  # noqa: PLC0415

    up = 4
    fy = np.arange(-up, up * (ny + 1)) / up  # fine grid, fractional row indices -1 ... ny
    fx = np.arange(-up, up * (nx + 1)) / up
    Ey, Ex = _dft_matrix(fy, Py), _dft_matrix(fx, Px)
    fr, fc = (rows + 1) * up, (cols + 1) * up
    for b in range(B):
        U = np.fft.fft2(fields[b].astype(np.complex128), s=(Py, Px))
        fine = Ey @ U @ Ex.T
        re_ = ndimage.map_coordinates(fine.real, [fr, fc], order=3, mode="constant", cval=0.0)
        im_ = ndimage.map_coordinates(fine.imag, [fr, fc], order=3, mode="constant", cval=0.0)
        out[b] = re_ + 1j * im_
    return out


# --------------------------------------------------------------------------- the lab
def simulate_lab(design, images, labels, *, imperfections: Imperfections | None = None, fmt: str = "detectors",
                 inputs=None, scan_pitch_m: float | None = None, scan_shape=None, seed: int = 0, n_dark: int = 8,
                 batch_size: int = 64, progress=None, oversample: int = 1) -> LabData:
    """Synthetic measurement of ``images`` (N, h, w) through ``design`` with ``imperfections``.

    ``labels`` (N,) true classes, ``inputs`` (N,) their dataset indices (recorded only).
    ``fmt``: ``"detectors"`` (powers, as in a detector CSV) or ``"scan"`` (raster scans of
    the output plane at ``scan_pitch_m`` metres, default the design pitch, of ``scan_shape``
    (H, W), default covering the output plane, centred on the nominal axis). The stack is
    :func:`diffractive.asbuilt.build` of ``imperfections.stack_as_built`` on a grid
    ``oversample`` times finer than the design's (1 to
    :data:`~diffractive.asbuilt.MAX_OVERSAMPLE`; powers stay in design-grid units).
    Everything random comes from ``seed``; ``n_dark`` frames of dark measurement are made
    when ``imperfections.dark`` > 0; ``progress(n_done)`` is called after each batch.
    Without imperfections, detector powers equal those of
    :func:`diffractive.simulate.simulate` and a scan at the design pitch is the simulated
    output intensity.
    """
    imp = imperfections or Imperfections()
    if fmt not in ("detectors", "scan"):
        one_of("fmt", fmt, ("detectors", "scan"))
    if fmt == "scan" and imp.gain_spread:
        raise D2NNError("a detector gain spread applies to the detector-power format only (a scan has one probe)")
    k = check_oversample(oversample)
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(images)
    rng = np.random.default_rng(seed)
    grid = design.grid
    L = design.n_layers
    as_built = imp.stack_as_built(L)
    fine = Grid((design.layer_shape[0] * k, design.layer_shape[1] * k), design.pitch_m / k)
    reg = imp.registration
    if fmt == "scan":
        p_s = design.pitch_m if scan_pitch_m is None else float(scan_pitch_m)
        if scan_shape is None:
            scan_shape = (max(2, int(math.floor(grid.extent_yx_m[0] / p_s + 1e-9))),
                          max(2, int(math.floor(grid.extent_yx_m[1] / p_s + 1e-9))))
        origin = centred_origin(scan_shape, p_s)
        xs = origin[0] + np.arange(scan_shape[1]) * p_s
        ys = origin[1] + np.arange(scan_shape[0]) * p_s
        on_grid = math.isclose(p_s, fine.pitch_m) and tuple(scan_shape) == tuple(fine.shape)
    else:
        xs, ys = fine.x_m(), fine.y_m()
        on_grid = True
    # A detector plane (or scan frame) that is only translated is the output plane's grid
    # translated: the last hop computes it exactly, from the whole window. Interpolating the
    # cropped output instead treats the field beyond the crop as zero, wrong at the edges.
    translated = on_grid and imp.detector_rotation_rad == 0 and imp.scan_scale == 1
    stack_ab = as_built.combined(AsBuilt(detector_offset_xy_m=tuple(imp.detector_offset_m))) if translated \
        else as_built
    identity = translated or (on_grid and imp.detector_is_ideal())
    # one stack per line of the source spectrum (one for a monochromatic design), summed
    # incoherently with the readout weights of diffractive.spectrum
    lines = build_lines(design, stack_ab, oversample=k)
    parts = [(st, st.transmissions()) for st in lines.stacks]
    Xs, Ys = np.meshgrid(xs, ys)
    Xd, Yd = reg.to_design(Xs, Ys)
    k2 = float(k * k)

    powers, totals, intens = [], [], []
    for a in range(0, n, batch_size):
        p_sum = tot = i_sum = 0.0
        for j, (stack, t) in enumerate(parts):
            engine = stack.engine(np.result_type(t.dtype, np.complex64))
            fields = stack.input_fields(images[a:a + batch_size])
            out = forward(stack.geometry, t, fields, engine=engine).output
            if not identity:
                out = sample_output(out, fine.pitch_m, Xd, Yd)
            inten = out.real ** 2 + out.imag ** 2
            w = lines.line_weights[j]
            if fmt == "detectors":
                p_sum = p_sum + np.asarray(stack.readout(inten), dtype=np.float64) * lines.weights[j]
                tot = tot + w * inten.sum(axis=(-2, -1)).astype(np.float64) / k2
            else:
                i_sum = i_sum + w * inten.astype(np.float64)
        if fmt == "detectors":
            powers.append(p_sum)
            totals.append(tot)
        else:
            intens.append(i_sum)
        if progress is not None:
            progress(min(n, a + batch_size))

    ids = [f"s{i:04d}" for i in range(n)]
    layer_off = np.asarray(as_built.layer_offsets_xy_m) if as_built.layer_offsets_xy_m else np.zeros((L, 2))
    truth = {"schema": "d2nn.labsim/1", "format": "csv" if fmt == "detectors" else "scan", "seed": int(seed), "n": n,
             "noise": imp.noise, "gain_spread": imp.gain_spread, "dark": imp.dark,
             "detector_offset_m": [float(v) for v in imp.detector_offset_m],
             "detector_rotation_rad": float(imp.detector_rotation_rad), "scan_scale": float(imp.scan_scale),
             "layer_offsets_m": layer_off.tolist(), "oversample": k, "as_built": as_built.to_json(),
             "labels": labels.tolist(), "inputs": None if inputs is None else [int(v) for v in inputs]}
    if fmt == "detectors":
        P = np.concatenate(powers) if powers else np.zeros((0, len(design.detectors)))
        K = P.shape[1]
        z = rng.normal(0, 1, K)
        gains = np.exp(imp.gain_spread * z)
        gains = gains / gains.mean()
        clean = P * gains
        ref = float(np.mean(clean.max(axis=1))) if n else 0.0
        dark_level = imp.dark * ref * rng.uniform(0.5, 1.5, K)
        meas = clean + dark_level + imp.noise * ref * rng.normal(0, 1, clean.shape)
        dark = dark_level + imp.noise * ref * rng.normal(0, 1, (n_dark, K)) if imp.dark > 0 else None
        pred = np.argmax(class_scores(P, design.detectors, design.n_classes), axis=1)
        truth.update({"gains": gains.tolist(), "reference_level": ref, "dark_level": dark_level.tolist(),
                      "noiseless_predictions": pred.tolist(),
                      "noiseless_power_on_detectors": (P.sum(1) / np.maximum(np.concatenate(totals), 1e-300)).tolist()})
        return LabData("detectors", labels, inputs, ids, powers=meas, dark=dark, noiseless_powers=P, truth=truth)

    I = np.concatenate(intens) if intens else np.zeros((0,) + tuple(scan_shape))
    ref = float(np.mean(I.max(axis=(1, 2)))) if n else 0.0
    dark_level = imp.dark * ref * rng.uniform(0.5, 1.5, I.shape[1:])
    meas = I + dark_level + imp.noise * ref * rng.normal(0, 1, I.shape)
    dark = (dark_level + imp.noise * ref * rng.normal(0, 1, (n_dark,) + I.shape[1:])) if imp.dark > 0 else None
    truth.update({"gains": [1.0] * len(design.detectors), "reference_level": ref, "scan_pitch_m": p_s,
                  "scan_shape": list(scan_shape), "origin_m": list(origin)})
    return LabData("scan", labels, inputs, ids, intensity=meas, pitch_m=p_s, origin_m=origin, dark=dark, truth=truth)
