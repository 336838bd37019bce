"""Choosing the array library: NumPy on the CPU, CuPy on an NVIDIA GPU.

There is no global switch. Functions take the array module from their input arrays
(:func:`get_array_module`) or from an explicit ``backend=`` argument
(:func:`resolve_backend`). CuPy is optional: ``import cupy`` can succeed on a machine
without a usable GPU, so availability is decided by ``cupy.is_available()``.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from .errors import BackendUnavailable, D2NNError


@functools.lru_cache(maxsize=1)
def cupy_available() -> bool:
    """True when CuPy imports *and* sees at least one CUDA device."""
    try:
        import cupy  # noqa: PLC0415

        return bool(cupy.is_available())
    except Exception:  # ImportError, CUDA driver errors, missing libraries
        return False


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy  # noqa: PLC0415

            return cupy
    return np


def resolve_backend(backend: str | None = None, like=None):
    """Return the array module for ``backend`` ("numpy", "cupy", "auto" or None).

    ``None`` means: the module of ``like`` if given, else NumPy. ``"auto"`` picks CuPy
    when a GPU is usable and NumPy otherwise. Asking for ``"cupy"`` without a usable GPU
    raises ``RuntimeError``: a silent fallback would hide a misconfiguration.
    """
    if backend is None:
        return get_array_module(like) if like is not None else np
    if backend == "numpy":
        return np
    if backend == "cupy":
        if not cupy_available():
            raise BackendUnavailable("backend='cupy' was requested but CuPy or a CUDA GPU is not available; "
                               "use backend='numpy' or install the 'gpu' extra on a CUDA machine")
        import cupy  # noqa: PLC0415

        return cupy
    if backend == "auto":
        return resolve_backend("cupy") if cupy_available() else np
    raise D2NNError(f"backend must be 'numpy', 'cupy', 'auto' or None, got {backend!r}")


def to_numpy(a) -> np.ndarray:
    """Copy a CuPy array to the host; return NumPy arrays unchanged."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def cpu_workers() -> int:
    """Number of CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
