"""The one idiom for checking inputs: small functions applied where values enter the library.

Each helper takes the parameter's ``name`` and its ``value``, returns the value converted
(a float, a pair of ints, ...) and otherwise raises a :class:`~diffractive.errors.D2NNError`
whose message starts with ``name`` -- :class:`~diffractive.errors.InputTypeError` (also a
``TypeError``) for a value of the wrong type. A bad value is so reported once, naming the
parameter, before any work is done. Call these instead of writing ``if not x > 0: raise``;
domain rules with a physical reason live beside their type (``n > 1`` is
:func:`diffractive.materials.check_index`).
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .errors import D2NNError, InputTypeError


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise InputTypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def positive_finite(name: str, value) -> float:
    """Return ``value`` as a float > 0, or raise naming ``name``."""
    value = _real(name, value)
    if not math.isfinite(value) or value <= 0:
        raise D2NNError(f"{name} must be a positive finite number, got {value!r}")
    return value


def non_negative_finite(name: str, value) -> float:
    """Return ``value`` as a finite float >= 0, or raise naming ``name``."""
    value = _real(name, value)
    if not math.isfinite(value) or value < 0:
        raise D2NNError(f"{name} must be a non-negative finite number, got {value!r}")
    return value


def finite_real(name: str, value) -> float:
    """Return ``value`` as a finite float (any sign), or raise naming ``name``."""
    value = _real(name, value)
    if not math.isfinite(value):
        raise D2NNError(f"{name} must be finite, got {value!r}")
    return value


def positive_int(name: str, value) -> int:
    """Return ``value`` as an int >= 1, or raise naming ``name`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise D2NNError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def one_of(name: str, value, choices) -> object:
    """Return ``value`` if it is one of ``choices``, or raise naming ``name`` and the choices."""
    if value not in choices:
        raise D2NNError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def shape2(name: str, value) -> tuple[int, int]:
    """Return a pair of positive ints ``(ny, nx)`` or raise naming ``name``."""
    try:
        ny, nx = value
    except (TypeError, ValueError):
        raise D2NNError(f"{name} must be a pair [ny, nx], got {value!r}") from None
    out = []
    for v in (ny, nx):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise D2NNError(f"{name} must hold two positive integers, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def finite_array(name: str, array, xp) -> None:
    """Raise :class:`D2NNError` naming ``name`` if ``array`` holds NaN or infinity."""
    if not bool(xp.all(xp.isfinite(array))):
        raise D2NNError(f"{name} contains NaN or infinite values")


def field_array(name: str, field, xp, min_ndim: int = 2) -> None:
    """Check that ``field`` is an array of at least ``min_ndim`` dims with finite values."""
    if not hasattr(field, "ndim") or field.ndim < min_ndim:
        got = getattr(field, "shape", type(field).__name__)
        raise D2NNError(f"{name} must be an array whose last two axes are the grid (ny, nx), got {got}")
    finite_array(name, field, xp)
