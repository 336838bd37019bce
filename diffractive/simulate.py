"""Forward simulation of a design on a batch of images: intensity, detector powers, classes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import resolve_backend, to_numpy
from .detectors import class_scores, detector_masks, readout
from .layers import transmission
from .stack import forward


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

    ``transmissions`` (L, ny, nx) replaces the design's ideal layers (e.g. layers
    recovered from STL files). ``progress(n_done)`` is called after each batch.
    """
    xp = resolve_backend(backend)
    t = design_transmissions(design, xp) if transmissions is None else xp.asarray(transmissions, dtype=np.complex64)
    masks = detector_masks(design.detectors, design.grid, xp)
    geometry = design.geometry
    powers, totals, intens = [], [], []
    n = len(images)
    for a in range(0, n, batch_size):
        fields = input_fields(design, images[a:a + batch_size], xp)
        out = forward(geometry, t, fields).output
        inten = (out.real ** 2 + out.imag ** 2)
        powers.append(to_numpy(readout(inten, masks)))
        totals.append(to_numpy(inten.sum(axis=(-2, -1))))
        if keep_intensity:
            intens.append(to_numpy(inten))
        if progress is not None:
            progress(min(n, a + batch_size))
    powers = np.concatenate(powers) if powers else np.zeros((0, len(design.detectors)))
    scores = class_scores(powers.astype(np.float64), design.detectors, design.n_classes)
    return SimulationResult(powers=powers, scores=scores, predictions=np.argmax(scores, axis=1),
                            total_power=np.concatenate(totals) if totals else np.zeros(0),
                            intensity=np.concatenate(intens) if keep_intensity else None)
