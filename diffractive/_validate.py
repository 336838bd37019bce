"""Checks applied where physical quantities enter the library.

Every public function validates its inputs with these helpers, so a bad value is
reported once, with the parameter's name, before any work is done.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np


def positive_finite(name: str, value) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def finite_real(name: str, value) -> float:
    """Return ``value`` as a finite float (any sign), or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def shape2(name: str, value) -> tuple[int, int]:
    """Return a pair of positive ints ``(ny, nx)`` or raise naming ``name``."""
    try:
        ny, nx = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair [ny, nx], got {value!r}") from None
    out = []
    for v in (ny, nx):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must hold two positive integers, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def finite_array(name: str, array, xp) -> None:
    """Raise ``ValueError`` if ``array`` holds NaN or infinity."""
    if not bool(xp.all(xp.isfinite(array))):
        raise ValueError(f"{name} contains NaN or infinite values")


def field_array(name: str, field, xp, min_ndim: int = 2) -> None:
    """Check that ``field`` is an array of at least ``min_ndim`` dims with finite values."""
    if not hasattr(field, "ndim") or field.ndim < min_ndim:
        got = getattr(field, "shape", type(field).__name__)
        raise ValueError(f"{name} must be an array whose last two axes are the grid (ny, nx), got {got}")
    finite_array(name, field, xp)
