"""Registering raster scans of the output plane to the design, and integrating detectors.

Frames and the transform
------------------------
The *design frame* is the output plane of the design (metres, axes of
:mod:`diffractive.grid`, origin on the stack's optical axis); detectors are defined in
it. The *scan frame* is what the scanner's coordinates say (``origin_m`` and ``pitch_m``
of the scan file). A :class:`Registration` maps a scan point ``x`` to the design-frame
point it actually sampled:

    r = offset + scale * R(rotation) @ x

so ``offset`` is the displacement of the scan frame (the detector plane) relative to the
stack's axis, in the same sense as ``d2nn measure-sim --misalign detector=DX,DY``; a
positive rotation turns the scan frame counter-clockwise (x towards y); ``scale`` is the
true scan step divided by ``pitch_m``.

Estimation
----------
``register_to_simulation`` matches the scans against the simulated output intensity of
the same inputs: a coarse integer-pixel offset from the FFT cross-correlation (summed
over samples, means removed) of the scans with the simulated patterns resampled to the
scan step, then Nelder–Mead refinement of the mean normalised cross-correlation with the
simulated patterns interpolated by cubic B-splines (sub-pixel offset; optionally
rotation and scale). ``register_to_detectors`` is the fallback when the inputs are not
known: the offset (within a search radius) that maximises the fraction of the scanned
power landing on the detectors.

Integration
-----------
Detector powers are the scan summed over each detector's region mapped into the scan
frame, each scan pixel weighted by the fraction of its area inside (exact for an
axis-aligned region, 8 x 8 sub-samples per pixel when rotated), times
``(scale * pitch_scan / pitch_design)**2`` so that they are in the units of
:func:`diffractive.simulate.simulate` (sum of ``|u|^2`` over design pixels) when the scan
samples the same intensity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._validate import one_of
from ..detectors import _coverage_1d
from .io import MeasuredDataError


@dataclass
class Registration:
    """Scan frame -> design frame: ``r = offset + scale * R(rotation) @ x`` (see module doc).

    ``offset_m`` (dx, dy) in metres, ``rotation_rad`` in radians (counter-clockwise),
    ``scale`` the true scan step / recorded ``pitch_m``; ``method`` how it was found,
    ``score`` the match (a correlation, or the fraction of power on the detectors),
    ``n_samples`` the scans used.
    """

    offset_m: tuple = (0.0, 0.0)
    rotation_rad: float = 0.0
    scale: float = 1.0
    method: str = "none"
    score: float = float("nan")
    n_samples: int = 0
    note: str = ""

    def to_design(self, x, y):
        """Design-frame (rx, ry), metres, of scan-frame points ``x, y`` (metres; scalars or arrays of one shape)."""
        c, s = math.cos(self.rotation_rad), math.sin(self.rotation_rad)
        return (self.offset_m[0] + self.scale * (c * x - s * y), self.offset_m[1] + self.scale * (s * x + c * y))

    def to_scan(self, rx, ry):
        """The inverse of :meth:`to_design`: scan-frame (x, y), metres, of design-frame points ``rx, ry``."""
        c, s = math.cos(self.rotation_rad), math.sin(self.rotation_rad)
        dx, dy = (rx - self.offset_m[0]) / self.scale, (ry - self.offset_m[1]) / self.scale
        return c * dx + s * dy, -s * dx + c * dy

    def to_json(self) -> dict:
        """JSON-ready dict (offset in metres, rotation in radians and degrees; NaN score as None)."""
        return {"method": self.method, "offset_m": [float(v) for v in self.offset_m],
                "rotation_rad": float(self.rotation_rad), "rotation_deg": math.degrees(self.rotation_rad),
                "scale": float(self.scale), "score": None if not math.isfinite(self.score) else float(self.score),
                "n_samples": int(self.n_samples), "note": self.note}


# --------------------------------------------------------------------------- geometry checks
def detector_span(detectors):
    """(xmin, xmax, ymin, ymax) of the detector rectangles, metres."""
    xs = [d.center_xy_m[0] + s * d.size_xy_m[0] / 2 for d in detectors for s in (-1, 1)]
    ys = [d.center_xy_m[1] + s * d.size_xy_m[1] / 2 for d in detectors for s in (-1, 1)]
    return min(xs), max(xs), min(ys), max(ys)


def check_scan_geometry(scan, detectors) -> None:
    """Refuse scans whose size (shape x ``pitch_m``) cannot hold the design's detectors.

    Two checks: the scan step must be finer than the smallest detector (otherwise it
    cannot resolve them — typically ``pitch_m`` was given in mm), and the scanned area
    (at its ``origin_m``, or centred) must cover every detector at its nominal position.
    """
    smallest = min(min(d.size_xy_m) for d in detectors)
    H, W = scan.shape
    p = scan.pitch_m
    src = scan.source
    if p > smallest:
        raise MeasuredDataError(
            f"{src}: field 'pitch_m' = {p:g} m is coarser than the smallest detector ({smallest * 1e3:.4g} mm), so "
            f"the {H} x {W} scan cannot resolve the detectors; pitch_m must be the scan step in metres")
    x0, x1 = scan.origin_m[0] - p / 2, scan.origin_m[0] + (W - 0.5) * p
    y0, y1 = scan.origin_m[1] - p / 2, scan.origin_m[1] + (H - 0.5) * p
    dx0, dx1, dy0, dy1 = detector_span(detectors)
    tol = 1e-9 + 1e-6 * p
    if dx0 < x0 - tol or dx1 > x1 + tol or dy0 < y0 - tol or dy1 > y1 + tol:
        where = "at its origin_m" if scan.origin_given else "centred on the axis"
        raise MeasuredDataError(
            f"{src}: field 'intensity' of {H} x {W} pixels at pitch_m = {p * 1e3:.4g} mm covers x {x0 * 1e3:.4g} ... "
            f"{x1 * 1e3:.4g} mm, y {y0 * 1e3:.4g} ... {y1 * 1e3:.4g} mm ({where}), which does not hold the design's "
            f"detectors (x {dx0 * 1e3:.4g} ... {dx1 * 1e3:.4g} mm, y {dy0 * 1e3:.4g} ... {dy1 * 1e3:.4g} mm); "
            "check pitch_m, origin_m and the scan shape")


# --------------------------------------------------------------------------- integration
def scan_detector_masks(shape, pitch_m, origin_m, detectors, reg: Registration, n_sub: int = 8) -> np.ndarray:
    """Area weights (K, H, W) of each detector region on the scan grid, for registration ``reg``.

    ``shape`` (H, W), ``pitch_m`` and ``origin_m`` (x, y) in metres describe the scan grid;
    each weight is the fraction (0 ... 1) of that scan pixel inside the registered detector
    (``n_sub`` x ``n_sub`` sub-samples per pixel when rotated).
    """
    H, W = shape
    xs = origin_m[0] + np.arange(W) * pitch_m
    ys = origin_m[1] + np.arange(H) * pitch_m
    masks = np.zeros((len(detectors), H, W))
    for k, d in enumerate(detectors):
        (cx, cy), (w, h) = d.center_xy_m, d.size_xy_m
        if reg.rotation_rad == 0.0:
            sx, sy = (cx - reg.offset_m[0]) / reg.scale, (cy - reg.offset_m[1]) / reg.scale
            hw, hh = w / 2 / reg.scale, h / 2 / reg.scale
            masks[k] = np.outer(_coverage_1d(ys, pitch_m, sy - hh, sy + hh), _coverage_1d(xs, pitch_m, sx - hw, sx + hw))
            continue
        corners = [reg.to_scan(cx + a * w / 2, cy + b * h / 2) for a in (-1, 1) for b in (-1, 1)]
        cxs, cys = [c[0] for c in corners], [c[1] for c in corners]
        j0 = max(0, int(np.floor((min(cxs) - origin_m[0]) / pitch_m)) - 1)
        j1 = min(W, int(np.ceil((max(cxs) - origin_m[0]) / pitch_m)) + 2)
        i0 = max(0, int(np.floor((min(cys) - origin_m[1]) / pitch_m)) - 1)
        i1 = min(H, int(np.ceil((max(cys) - origin_m[1]) / pitch_m)) + 2)
        if j0 >= j1 or i0 >= i1:
            continue
        sub = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * pitch_m
        px = (xs[j0:j1, None] + sub[None, :]).ravel()  # (nj * n_sub,)
        py = (ys[i0:i1, None] + sub[None, :]).ravel()
        X, Y = np.meshgrid(px, py)
        rx, ry = reg.to_design(X, Y)
        inside = (np.abs(rx - cx) <= w / 2) & (np.abs(ry - cy) <= h / 2)
        frac = inside.reshape(i1 - i0, n_sub, j1 - j0, n_sub).mean(axis=(1, 3))
        masks[k, i0:i1, j0:j1] = frac
    return masks


def integrate_scan(scan, detectors, reg: Registration, design_pitch_m: float):
    """Detector powers (N, K), total scanned power (N,) and each detector's covered fraction (K,).

    Powers and totals are in design-pixel units (see module doc; ``design_pitch_m`` in
    metres). A covered fraction below 1 means part of that registered detector lies outside
    the scan.
    """
    masks = scan_detector_masks(scan.shape, scan.pitch_m, scan.origin_m, detectors, reg)
    factor = (reg.scale * scan.pitch_m / design_pitch_m) ** 2
    inten = scan.intensity
    powers = np.einsum("nhw,khw->nk", inten, masks, optimize=True) * factor
    totals = inten.sum(axis=(1, 2)) * factor
    areas = np.array([d.size_xy_m[0] * d.size_xy_m[1] for d in detectors])
    covered = masks.sum(axis=(1, 2)) * (reg.scale * scan.pitch_m) ** 2 / areas
    return powers, totals, covered


# --------------------------------------------------------------------------- interpolation
def _bspline3(t):
    a = np.abs(t)
    out = np.zeros_like(a)
    m1 = a < 1
    m2 = (a >= 1) & (a < 2)
    out[m1] = 2 / 3 - a[m1] ** 2 + a[m1] ** 3 / 2
    out[m2] = (2 - a[m2]) ** 3 / 6
    return out


def _basis_matrix(pos, n):
    """Cubic B-spline weights (len(pos), n) of coefficients at fractional indices ``pos``."""
    return _bspline3(np.asarray(pos, dtype=np.float64)[:, None] - np.arange(n)[None, :])


class _Reference:
    """Simulated output intensities as cubic-spline coefficients on the design grid."""

    def __init__(self, intensity, design_pitch_m):
        from scipy import ndimage  # noqa: PLC0415

        self.intensity = np.asarray(intensity, dtype=np.float64)
        # as scipy.ndimage does for mode "grid-constant": zero-pad, then prefilter
        pad = self.PAD
        padded = np.pad(self.intensity, ((0, 0), (pad, pad), (pad, pad)))
        self.coef = np.stack([ndimage.spline_filter(a, order=3, mode="grid-constant") for a in padded])
        self.pitch = design_pitch_m
        self.ny, self.nx = self.intensity.shape[1:]

    PAD = 12

    def index(self, rx, ry):
        """Fractional (row, column) in the padded coefficient array."""
        return ry / self.pitch + (self.ny - 1) / 2 + self.PAD, rx / self.pitch + (self.nx - 1) / 2 + self.PAD

    def sample(self, xs, ys, reg: Registration):
        """Reference patterns at the scan points (len(ys), len(xs)) under ``reg``: (n, H, W)."""
        if reg.rotation_rad == 0.0:
            rx, _ = reg.to_design(xs, np.zeros_like(xs))
            _, ry = reg.to_design(np.zeros_like(ys), ys)
            rows, cols = self.index(rx, ry)
            By, Bx = _basis_matrix(rows, self.coef.shape[1]), _basis_matrix(cols, self.coef.shape[2])
            return np.einsum("hi,nij,wj->nhw", By, self.coef, Bx, optimize=True)
        from scipy import ndimage  # noqa: PLC0415

        X, Y = np.meshgrid(xs, ys)
        rx, ry = reg.to_design(X, Y)
        rows, cols = self.index(rx, ry)
        return np.stack([ndimage.map_coordinates(c, [rows, cols], order=3, prefilter=False, mode="grid-constant",
                                                 cval=0.0) for c in self.coef])


def _unit_max(a):
    """``a`` (..., H, W) with each frame divided by its largest magnitude (frames of zeros left as they are):
    the correlations below do not change, and squares of huge or subnormal values cannot overflow/underflow."""
    top = np.abs(a).max(axis=(-2, -1), keepdims=True)
    return a / np.where(top > 0, top, 1.0)


def _centred_unit(a):
    a = _unit_max(a)
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    norm = np.sqrt((a * a).sum(axis=(-2, -1), keepdims=True))
    return a / np.where(norm > 0, norm, 1)


def _pick(n, max_samples):
    if n <= max_samples:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_samples)).astype(int))


def _coarse_offset(scans, canvases, pitch, origin, canvas_shape, max_offset_m=None):
    """Integer-pixel offset (metres) maximising the summed cross-correlation."""
    from scipy.signal import fftconvolve  # noqa: PLC0415

    acc = None
    # all scans (and all canvases) scaled by one factor: the offset does not change, and huge or
    # subnormal values cannot overflow/underflow in the products
    m_top = max(float(np.abs(m).max()) for m in scans) or 1.0
    t_top = max(float(np.abs(t).max()) for t in canvases) or 1.0
    for m, t in zip(scans, canvases):
        m, t = m / m_top, t / t_top
        c = fftconvolve(m - m.mean(), (t - t.mean())[::-1, ::-1], mode="full")
        acc = c if acc is None else acc + c
    hh, ww = canvas_shape
    lag_y = np.arange(acc.shape[0]) - (hh - 1)
    lag_x = np.arange(acc.shape[1]) - (ww - 1)
    ox_all = -(ww - 1) / 2 * pitch - origin[0] - lag_x * pitch
    oy_all = -(hh - 1) / 2 * pitch - origin[1] - lag_y * pitch
    if max_offset_m is not None:
        tol = max_offset_m + 1e-9 * pitch
        allowed = (np.abs(oy_all)[:, None] <= tol) & (np.abs(ox_all)[None, :] <= tol)
        acc = np.where(allowed, acc, -np.inf)
    a, b = np.unravel_index(int(np.argmax(acc)), acc.shape)
    return float(ox_all[b]), float(oy_all[a])


def _canvas(extent_hw, pitch):
    """Coordinates of a grid at ``pitch`` centred on the axis that covers ``extent_hw``."""
    hh = int(np.ceil(extent_hw[0] / pitch)) + 1
    ww = int(np.ceil(extent_hw[1] / pitch)) + 1
    return (np.arange(ww) - (ww - 1) / 2) * pitch, (np.arange(hh) - (hh - 1) / 2) * pitch


def register_to_simulation(scan, sim_intensity, design_pitch_m: float, *, mode: str = "offset",
                           max_samples: int = 16) -> Registration:
    """Estimate the registration of ``scan`` by matching simulated intensities of the same inputs.

    ``sim_intensity`` (N, ny, nx) on the design grid (pitch ``design_pitch_m``, metres), in
    the order of the scans.
    ``mode``: ``"offset"`` (lateral offset only) or ``"full"`` (offset, rotation, scale).
    Uses at most ``max_samples`` scans, spread over the file. Returns a :class:`Registration`
    whose ``score`` is the mean normalised cross-correlation at the optimum.
    """
    from scipy.optimize import minimize  # noqa: PLC0415

    one_of("mode", mode, ("offset", "full"))
    sel = _pick(scan.n, max_samples)
    ref = _Reference(np.asarray(sim_intensity)[sel], design_pitch_m)
    meas = _centred_unit(scan.intensity[sel])
    xs, ys = scan.x_m(), scan.y_m()
    p = scan.pitch_m

    # coarse: integer-pixel offset from the cross-correlation at the scan step
    cx, cy = _canvas((ref.ny * design_pitch_m, ref.nx * design_pitch_m), p)
    canv = ref.sample(cx, cy, Registration())
    ox, oy = _coarse_offset(scan.intensity[sel], canv, p, scan.origin_m, (len(cy), len(cx)))

    r_pat = max(np.hypot(scan.shape[0], scan.shape[1]) / 2, 1.0)  # pixels: lever arm for angle and scale

    def unpack(v):
        reg = Registration(offset_m=(v[0] * p, v[1] * p))
        if len(v) > 2:
            reg.rotation_rad = v[2] / r_pat
            reg.scale = math.exp(v[3] / r_pat)
        return reg

    def cost(v):
        pred = _centred_unit(ref.sample(xs, ys, unpack(v)))
        return -float(np.mean((pred * meas).sum(axis=(-2, -1))))

    v0 = np.array([ox / p, oy / p])
    simplex = np.array([v0, v0 + [0.6, 0.0], v0 + [0.0, 0.6]])
    res = minimize(cost, v0, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-10, "maxiter": 400})
    v = res.x
    if mode == "full":
        v1 = np.concatenate([v, [0.0, 0.0]])
        simplex = np.array([v1] + [v1 + 0.6 * e for e in np.eye(4)])
        res = minimize(cost, v1, method="Nelder-Mead",
                       options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-10, "maxiter": 1500})
        v = res.x
    reg = unpack(v)
    reg.method = "simulation"
    reg.score = -float(res.fun)
    reg.n_samples = int(len(sel))
    reg.note = (f"matched {len(sel)} scans to the simulated output of the same inputs "
                f"({'offset, rotation and scale' if mode == 'full' else 'lateral offset'})")
    return reg


def register_to_detectors(scan, detectors, design_pitch_m: float, *, max_offset_m: float | None = None) -> Registration:
    """Fallback registration without known inputs: the lateral offset, within
    ``max_offset_m`` (default: half the smallest distance between detector centres), that
    maximises the fraction of the scanned power falling on the detectors.

    ``max_offset_m`` in metres; returns a :class:`Registration` (offset only) whose ``score``
    is that fraction for the mean normalised scan.
    """
    from scipy.optimize import minimize  # noqa: PLC0415

    p = scan.pitch_m
    if max_offset_m is None:
        cs = np.array([d.center_xy_m for d in detectors])
        dists = np.hypot(*(cs[:, None, :] - cs[None, :, :]).transpose(2, 0, 1))
        dists = dists[dists > 0]
        max_offset_m = 0.5 * float(dists.min()) if dists.size else 5 * p
    totals = scan.intensity.sum(axis=(1, 2))
    norm = np.where(totals != 0, totals, 1.0)[:, None, None]
    mean_scan = (scan.intensity / norm).mean(axis=0)
    span = detector_span(detectors)
    ext = (2 * max(abs(span[2]), abs(span[3])) + 2 * p, 2 * max(abs(span[0]), abs(span[1])) + 2 * p)
    cx, cy = _canvas(ext, p)
    union = scan_detector_masks((len(cy), len(cx)), p, (cx[0], cy[0]), detectors, Registration()).sum(axis=0)
    ox, oy = _coarse_offset([mean_scan], [union], p, scan.origin_m, (len(cy), len(cx)),
                            max_offset_m=max_offset_m)

    def cost(v):
        reg = Registration(offset_m=(v[0] * p, v[1] * p))
        if np.hypot(*reg.offset_m) > max_offset_m * 1.5:
            return 1.0
        masks = scan_detector_masks(scan.shape, p, scan.origin_m, detectors, reg)
        return -float((mean_scan[None] * masks).sum())

    v0 = np.array([ox / p, oy / p])
    simplex = np.array([v0, v0 + [0.6, 0.0], v0 + [0.0, 0.6]])
    res = minimize(cost, v0, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-12, "maxiter": 300})
    reg = Registration(offset_m=(float(res.x[0] * p), float(res.x[1] * p)), method="detectors",
                       score=-float(res.fun), n_samples=scan.n,
                       note=(f"no inputs known to simulate: offset (searched within {max_offset_m * 1e3:.3g} mm) that "
                             "puts the most scanned power on the detectors"))
    return reg
