"""Detector regions on the output plane and their readout.

A detector is a rectangle on the output plane (centre ``center_xy_m = (x, y)`` and size
``size_xy_m = (w, h)`` in metres, axes as in :mod:`diffractive.grid`) that belongs to one class and carries a sign. Class ``c``'s score
is the signed sum of its detectors' powers: one ``+1`` detector per class gives the
Lin et al. (Science 2018) readout, a ``+1``/``-1`` pair per class the differential
detection of Li et al. (Adv. Photonics 2019), score = P+ - P-.

Power is the sum of ``|u|^2`` over the region, each pixel weighted by the fraction of its
area inside the rectangle (so a detector need not sit on pixel boundaries); it is in the
same relative units as the intensity (multiply by ``pitch**2`` for an area integral).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import finite_real, positive_finite
from .backend import get_array_module
from .errors import D2NNError, FieldError, field_errors
from .grid import Grid


@dataclass(frozen=True)
class Detector:
    """One rectangular detector on the output plane, metres.

    ``center_xy_m = (x, y)`` is its centre and ``size_xy_m = (w, h)`` its width along ``x``
    and height along ``y`` (axes as in :mod:`diffractive.grid`); it votes for class
    ``class_index`` with ``sign`` +1 or -1. It integrates the power over the source
    spectrum, or with ``band = j`` reads line ``j`` only (spectrally encoded readouts,
    :mod:`diffractive.spectrum`). Bad values raise :class:`~diffractive.errors.FieldError`
    naming the field.
    """

    class_index: int
    center_xy_m: tuple[float, float]
    size_xy_m: tuple[float, float]
    sign: int = 1
    band: int | None = None  # read one line of the source spectrum only (diffractive.spectrum)

    def __post_init__(self):
        c = self.class_index
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0:
            raise FieldError("class_index", f"must be a non-negative integer, got {c!r}")
        with field_errors("center_xy_m"):
            cx, cy = _pair("center_xy_m", self.center_xy_m, finite_real)
        with field_errors("size_xy_m"):
            w, h = _pair("size_xy_m", self.size_xy_m, positive_finite)
        if isinstance(self.sign, bool) or self.sign not in (1, -1):
            raise FieldError("sign", f"must be 1 or -1, got {self.sign!r}")
        object.__setattr__(self, "class_index", int(c))
        object.__setattr__(self, "center_xy_m", (cx, cy))
        object.__setattr__(self, "size_xy_m", (w, h))
        object.__setattr__(self, "sign", int(self.sign))
        b = self.band
        if b is not None:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 0:
                raise FieldError("band", f"must be a line index of the source spectrum (0, 1, ...) or absent, "
                                         f"got {b!r}")
            object.__setattr__(self, "band", int(b))

    def to_json(self) -> dict:
        out = {"class_index": self.class_index, "center_xy_m": list(self.center_xy_m),
               "size_xy_m": list(self.size_xy_m), "sign": self.sign}
        if self.band is not None:
            out["band"] = self.band
        return out


def _pair(name, value, check):
    """Two numbers checked by ``check(name, v)`` (a list or tuple of length 2), else ``ValueError``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise D2NNError(f"{name} must be a pair of numbers, got {value!r}")
    return tuple(check(name, v) for v in value)


def _coverage_1d(centers, pitch, lo, hi):
    """Fraction of each pixel [c - p/2, c + p/2] inside [lo, hi]."""
    a = np.clip(np.minimum(centers + pitch / 2, hi) - np.maximum(centers - pitch / 2, lo), 0, None)
    return a / pitch


def detector_masks(detectors, grid: Grid, xp=np, dtype=np.float32):
    """Area-weighted masks, shape (K, ny, nx), values in [0, 1].

    Raises ``ValueError`` if a detector lies (partly) outside the grid.
    """
    x, y = grid.x_m(), grid.y_m()
    half_h, half_w = grid.extent_yx_m[0] / 2, grid.extent_yx_m[1] / 2
    masks = np.zeros((len(detectors),) + grid.shape, dtype=np.float64)
    for k, d in enumerate(detectors):
        (cx, cy), (w, h) = d.center_xy_m, d.size_xy_m
        if abs(cx) + w / 2 > half_w + 1e-9 or abs(cy) + h / 2 > half_h + 1e-9:
            raise D2NNError(f"detector {k} (class {d.class_index}) at ({cx:.4g}, {cy:.4g}) m of size ({w:.4g}, {h:.4g}) m "
                             f"reaches outside the output plane ({2 * half_w:.4g} x {2 * half_h:.4g} m)")
        masks[k] = np.outer(_coverage_1d(y, grid.pitch_m, cy - h / 2, cy + h / 2),
                            _coverage_1d(x, grid.pitch_m, cx - w / 2, cx + w / 2))
    return xp.asarray(masks.astype(dtype))


def readout(intensity, masks):
    """Detector powers (..., K) from intensity (..., ny, nx) and masks (K, ny, nx)."""
    xp = get_array_module(intensity, masks)
    K = masks.shape[0]
    flat = intensity.reshape(intensity.shape[:-2] + (-1,))
    return flat @ xp.asarray(masks, dtype=flat.dtype).reshape(K, -1).T


def score_matrix(detectors, n_classes: int | None = None) -> np.ndarray:
    """Matrix S (K, C) with S[k, c] = sign_k if detector k belongs to class c; scores = powers @ S."""
    n_classes = 1 + max(d.class_index for d in detectors) if n_classes is None else n_classes
    S = np.zeros((len(detectors), n_classes))
    for k, d in enumerate(detectors):
        if d.class_index >= n_classes:
            raise D2NNError(f"detector {k} has class {d.class_index} but there are only {n_classes} classes")
        S[k, d.class_index] = d.sign
    missing = [c for c in range(n_classes) if not np.any(S[:, c] > 0)]
    if missing:
        raise D2NNError(f"classes {missing} have no positive detector")
    return S


def class_scores(powers, detectors, n_classes: int | None = None):
    """Class scores (..., C) = signed sum of each class's detector powers."""
    xp = get_array_module(powers)
    return powers @ xp.asarray(score_matrix(detectors, n_classes), dtype=powers.dtype)


def _row_layout(counts, size_m, spacing_xy_m):
    """Centres (x, y) of detectors in rows of the given counts, centred on the axis, y increasing."""
    centers = []
    n_rows = len(counts)
    for r, count in enumerate(counts):
        y = (r - (n_rows - 1) / 2) * spacing_xy_m[1]
        for c in range(count):
            centers.append(((c - (count - 1) / 2) * spacing_xy_m[0], y))
    return centers


def lin_layout(grid: Grid, n_classes: int = 10, size_m: float | None = None, spacing_m: float | None = None,
               rows: tuple[int, ...] | None = None):
    """Square detectors in rows (3-4-3 for 10 classes, as in Lin et al. 2018).

    ``size_m`` defaults to 1/12 of the smaller grid extent; ``spacing_m`` (centre to
    centre, both axes) to 2.5 detector sizes, which keeps the whole pattern inside the
    central ~60 % of the plane.
    """
    extent = min(grid.extent_yx_m)
    size_m = extent / 12 if size_m is None else positive_finite("size_m", size_m)
    spacing_m = 2.5 * size_m if spacing_m is None else positive_finite("spacing_m", spacing_m)
    if rows is None:
        rows = (3, 4, 3) if n_classes == 10 else _balanced_rows(n_classes)
    if sum(rows) != n_classes:
        raise D2NNError(f"rows {rows} hold {sum(rows)} detectors, not n_classes={n_classes}")
    centers = _row_layout(rows, size_m, (spacing_m, spacing_m))
    return [Detector(c, ctr, (size_m, size_m), 1) for c, ctr in enumerate(centers)]


def spectral_layout(grid: Grid, n_classes: int = 10, size_m: float | None = None, spacing_m: float | None = None):
    """One square detector on the axis, read once per line: class ``c`` is its power at line
    ``c`` of the source spectrum (``band = c``), the single-pixel spectrally encoded readout of
    Li et al., Sci. Adv. 7, eabd7690 (2021). Needs a spectrum of ``n_classes`` lines.
    ``size_m`` defaults to 1/12 of the smaller grid extent; ``spacing_m`` is unused."""
    extent = min(grid.extent_yx_m)
    size_m = extent / 12 if size_m is None else positive_finite("size_m", size_m)
    return [Detector(c, (0.0, 0.0), (size_m, size_m), 1, band=c) for c in range(n_classes)]


def differential_layout(grid: Grid, n_classes: int = 10, size_m: float | None = None,
                        spacing_m: float | None = None):
    """A +/- detector pair per class (Li et al. 2019), in rows of up to 5 pairs.

    Pairs sit side by side (positive left); detectors are listed class by class,
    positive first. ``size_m`` defaults to 1/24 of the smaller grid extent and
    ``spacing_m`` (centre to centre along a row; rows are ``2 * spacing_m`` apart) to 1.75
    detector sizes, so a row of 10 detectors spans the central ~70 % of the plane, like
    :func:`lin_layout`.
    """
    extent = min(grid.extent_yx_m)
    size_m = extent / 24 if size_m is None else positive_finite("size_m", size_m)
    spacing_m = 1.75 * size_m if spacing_m is None else positive_finite("spacing_m", spacing_m)
    per_row = min(5, n_classes)
    rows = [per_row] * (n_classes // per_row) + ([n_classes % per_row] if n_classes % per_row else [])
    cols = _row_layout([2 * r for r in rows], size_m, (spacing_m, 2 * spacing_m))
    out = []
    for c in range(n_classes):
        out.append(Detector(c, cols[2 * c], (size_m, size_m), 1))
        out.append(Detector(c, cols[2 * c + 1], (size_m, size_m), -1))
    return out


def _balanced_rows(n):
    n_rows = max(1, int(round(np.sqrt(n))))
    base = [n // n_rows] * n_rows
    for i in range(n % n_rows):
        base[i] += 1
    return tuple(base)
