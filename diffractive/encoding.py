"""Putting input images onto the input plane.

An image (values in [0, 1]) is resampled to cover a rectangle of ``size_yx_m = (h, w)``
metres (height along y first, like the arrays' (rows, columns)) centred on the optical axis, and becomes the field just after the input plane:

* ``"amplitude"``: the field amplitude is the image (a transmissive mask lit by a unit
  plane wave);
* ``"phase"``: the field is ``exp(i * phase_scale * image)`` inside the rectangle (a
  transparent phase object), 0 outside it (the input aperture).

Resampling is separable and linear (``out = Ry @ image @ Rx.T``): bilinear with
pixel-centre alignment when enlarging, box (area) averaging when shrinking. It works on a
whole batch at once, on NumPy or CuPy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validate import finite_array, positive_finite
from .backend import get_array_module
from .errors import D2NNError, FieldError, field_errors
from .grid import Grid

ENCODINGS = ("amplitude", "phase")


def resample_matrix(n_src: int, n_dst: int) -> np.ndarray:
    """Linear map (n_dst, n_src) resampling a 1-D signal covering the same extent."""
    if n_dst >= n_src:
        pos = (np.arange(n_dst) + 0.5) * n_src / n_dst - 0.5  # destination centres in source pixels
        pos = np.clip(pos, 0, n_src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_src - 1)
        frac = pos - lo
        R = np.zeros((n_dst, n_src))
        R[np.arange(n_dst), lo] += 1 - frac
        R[np.arange(n_dst), hi] += frac
        return R
    edges_dst = np.arange(n_dst + 1) * n_src / n_dst
    R = np.zeros((n_dst, n_src))
    for i in range(n_dst):
        a, b = edges_dst[i], edges_dst[i + 1]
        for j in range(int(np.floor(a)), int(np.ceil(b))):
            R[i, j] = (min(b, j + 1) - max(a, j)) / (b - a)
    return R


def input_pixels(grid: Grid, size_yx_m) -> tuple[int, int]:
    """Number of grid pixels (rows, cols) the input rectangle ``size_yx_m = (h, w)`` (metres) covers."""
    if isinstance(size_yx_m, (str, bytes)) or not hasattr(size_yx_m, "__len__") or len(size_yx_m) != 2:
        raise D2NNError(f"input size_yx_m must be a pair (h, w) of lengths in metres, got {size_yx_m!r}")
    h, w = (positive_finite("input size_yx_m", v) for v in size_yx_m)
    ny, nx = int(round(h / grid.pitch_m)), int(round(w / grid.pitch_m))
    if ny < 1 or nx < 1 or ny > grid.ny or nx > grid.nx:
        raise FieldError("input.size_yx_m", f"= {list(size_yx_m)} m covers {ny} x {nx} pixels of "
                                            f"{grid.pitch_m:g} m, which must be between 1 and the grid "
                                            f"{list(grid.shape)}")
    return ny, nx


def place_images(images, grid: Grid, size_yx_m):
    """Resample images (B, h, w) onto the rectangle ``size_yx_m`` (m) of the grid: real (B, ny, nx), zero outside."""
    xp = get_array_module(images)
    images = xp.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise D2NNError(f"images must have shape (batch, height, width), got {images.shape}")
    finite_array("images", images, xp)
    ty, tx = input_pixels(grid, size_yx_m)
    dtype = np.float32 if images.dtype == np.float32 else np.float64
    Ry = xp.asarray(resample_matrix(images.shape[1], ty), dtype=dtype)
    Rx = xp.asarray(resample_matrix(images.shape[2], tx), dtype=dtype)
    small = Ry @ images.astype(dtype, copy=False) @ Rx.T
    out = xp.zeros((images.shape[0],) + grid.shape, dtype=dtype)
    y0, x0 = (grid.ny - ty) // 2, (grid.nx - tx) // 2
    out[:, y0:y0 + ty, x0:x0 + tx] = small
    return out


def encode(images, grid: Grid, size_yx_m, encoding: str = "amplitude", phase_scale: float = np.pi,
           dtype=np.complex64):
    """Input field (B, ny, nx) for a batch of images (B, h, w) in [0, 1] (see module docstring).

    ``size_yx_m = (h, w)``: the rectangle (metres) the images cover; ``phase_scale`` (rad per
    unit image value) is used by the ``"phase"`` encoding only.
    """
    if encoding not in ENCODINGS:
        raise D2NNError(f"input encoding must be one of {ENCODINGS}, got {encoding!r}")
    xp = get_array_module(images)
    placed = place_images(images, grid, size_yx_m)
    if encoding == "amplitude":
        return placed.astype(dtype)
    ty, tx = input_pixels(grid, size_yx_m)
    y0, x0 = (grid.ny - ty) // 2, (grid.nx - tx) // 2
    field = xp.zeros(placed.shape, dtype=dtype)
    field[:, y0:y0 + ty, x0:x0 + tx] = xp.exp(1j * phase_scale * placed[:, y0:y0 + ty, x0:x0 + tx])
    return field


@dataclass(frozen=True)
class InputSpec:
    """How a design puts images on its input plane (design.json field ``input``).

    ``encoding``: one of :data:`ENCODINGS`; ``size_yx_m = (h, w)``: the rectangle, metres,
    centred on the axis, that an image covers; ``phase_scale``: radians per unit image
    value for the ``"phase"`` encoding (kept, unused, for ``"amplitude"``). Bad values raise
    :class:`~diffractive.errors.FieldError` naming the field.
    """

    encoding: str
    size_yx_m: tuple[float, float]
    phase_scale: float = math.pi

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise FieldError("encoding", f"must be one of {list(ENCODINGS)}, got {self.encoding!r}")
        v = self.size_yx_m
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2:
            raise FieldError("size_yx_m", f"must be a pair [h, w] of lengths in metres, got {v!r}")
        with field_errors("size_yx_m"):
            size = tuple(positive_finite("size_yx_m", x) for x in v)
        object.__setattr__(self, "size_yx_m", size)
        with field_errors("phase_scale"):
            object.__setattr__(self, "phase_scale", positive_finite("phase_scale", self.phase_scale))

    def fields(self, images, grid: Grid, dtype=np.complex64):
        """Input fields (B, ny, nx) on ``grid`` for images (B, h, w) in [0, 1] (NumPy or CuPy)."""
        return encode(images, grid, self.size_yx_m, self.encoding, self.phase_scale, dtype=dtype)

    def to_json(self) -> dict:
        return {"encoding": self.encoding, "size_yx_m": list(self.size_yx_m), "phase_scale": self.phase_scale}
