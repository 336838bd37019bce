"""Thin optical elements: phase layers and apertures.

A layer multiplies the field by its complex transmission ``t = A * exp(i*phi)``. With the
``exp(-i*omega*t)`` convention, ``exp(+i*phi)`` is the factor that extra optical path
gives a wave (a delay relative to air), so a thicker printed pixel has a larger ``phi``;
``fabrication`` maps phase to height with exactly this sign.
"""
from __future__ import annotations

import numpy as np

from ._validate import finite_array, positive_finite
from .backend import get_array_module
from .grid import Grid


def transmission(phase, amplitude=None, dtype=None):
    """Complex transmission ``amplitude * exp(i*phase)``.

    Parameters
    ----------
    phase : array (..., ny, nx), radians
    amplitude : array broadcastable to ``phase``, optional
        Amplitude transmission in [0, 1]; ``None`` means phase-only (1).
    dtype : complex dtype, optional (default complex64 for float32 phases, else complex128)
    """
    xp = get_array_module(phase, amplitude)
    phase = xp.asarray(phase)
    finite_array("phase", phase, xp)
    if dtype is None:
        dtype = np.complex64 if phase.dtype == np.float32 else np.complex128
    t = xp.exp(1j * phase.astype(np.float64 if np.dtype(dtype) == np.complex128 else np.float32))
    if amplitude is not None:
        amplitude = xp.asarray(amplitude)
        finite_array("amplitude", amplitude, xp)
        if bool(xp.any(amplitude < 0)) or bool(xp.any(amplitude > 1)):
            raise ValueError("amplitude transmission must lie in [0, 1]")
        t = t * amplitude
    return t.astype(dtype, copy=False)


def modulate(field, phase, amplitude=None):
    """Field after a thin layer: ``field * amplitude * exp(i*phase)`` (broadcasting)."""
    t = transmission(phase, amplitude, dtype=np.result_type(field.dtype, np.complex64))
    return field * t


def rect_aperture(grid: Grid, width_m: float, height_m: float | None = None, center_m=(0.0, 0.0), xp=np):
    """Binary mask (ny, nx), 1 where the pixel centre lies inside the rectangle."""
    width_m = positive_finite("width_m", width_m)
    height_m = width_m if height_m is None else positive_finite("height_m", height_m)
    X, Y = grid.meshgrid()
    inside = (np.abs(X - center_m[0]) <= width_m / 2 + 1e-12) & (np.abs(Y - center_m[1]) <= height_m / 2 + 1e-12)
    return xp.asarray(inside.astype(np.float64))


def circ_aperture(grid: Grid, radius_m: float, center_m=(0.0, 0.0), xp=np):
    """Binary mask (ny, nx), 1 where the pixel centre lies within ``radius_m``."""
    radius_m = positive_finite("radius_m", radius_m)
    X, Y = grid.meshgrid()
    inside = (X - center_m[0]) ** 2 + (Y - center_m[1]) ** 2 <= radius_m**2
    return xp.asarray(inside.astype(np.float64))
