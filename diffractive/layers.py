"""Thin optical elements: the complex transmission of a phase (or complex) layer.

A layer multiplies the field by its complex transmission ``t = A * exp(i*phi)``. With the
``exp(-i*omega*t)`` convention, ``exp(+i*phi)`` is the factor that extra optical path
gives a wave (a delay relative to air), so a thicker printed pixel has a larger ``phi``;
``fabrication`` maps phase to height with exactly this sign.
"""
from __future__ import annotations

import numpy as np

from .errors import D2NNError
from ._validate import finite_array
from .backend import get_array_module


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
            raise D2NNError("amplitude transmission must lie in [0, 1]")
        t = t * amplitude
    return t.astype(dtype, copy=False)
