"""Forward simulation of a design on a batch of images: intensity, detector powers, classes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import transmission


@dataclass
class SimulationResult:
    """NumPy arrays: ``powers`` (N, K), ``scores`` (N, C), ``predictions`` (N,),
    ``total_power`` (N,) on the output plane, and ``intensity`` (N, ny, nx) if asked for."""

    powers: np.ndarray
    scores: np.ndarray
    predictions: np.ndarray
    total_power: np.ndarray
    intensity: np.ndarray | None = None


def design_transmissions(design, xp=np, dtype=np.complex64, phases=None):
    """Complex transmissions (L, ny, nx) of a design's layers (``phases`` overrides)."""
    phases = design.phases if phases is None else phases
    amp = None if design.amplitudes is None else xp.asarray(design.amplitudes, dtype=np.float32)
    return transmission(xp.asarray(phases, dtype=np.float32), amp, dtype=dtype)


def input_fields(design, images, xp=np):
    """Encode images (B, h, w) in [0, 1] as the design's input fields (B, ny, nx)."""
    return design.input.fields(xp.asarray(images, dtype=np.float32), design.grid)


def simulate(design, images, *, batch_size=64, backend=None, keep_intensity=False, transmissions=None,
             progress=None) -> SimulationResult:
    """Simulate ``images`` (N, h, w) through ``design``; returns a :class:`SimulationResult`.

    ``transmissions`` (L, ny, nx) replaces the design's ideal layers. ``progress(n_done)``
    is called after each batch. The ideal stack of the as-built model
    (:func:`diffractive.asbuilt.simulate_built` with no deviations), which runs the design's
    layers ``exp(i phi)`` on the process-wide engine.
    """
    from .asbuilt import simulate_built  # noqa: PLC0415

    return simulate_built(design, images, transmissions=transmissions, batch_size=batch_size, backend=backend,
                          keep_intensity=keep_intensity, progress=progress)
