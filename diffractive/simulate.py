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


def line_sampling(design, spectrum=None) -> list[dict]:
    """How well the design's grid and window carry each line of ``spectrum`` (default the
    design's): one record per line, ``{"wavelength_m", "frequency_thz", "kept_fraction",
    "grid_angle_deg", "problems"}``, where ``kept_fraction`` is the smallest fraction of the
    grid's bandwidth that any hop keeps (:class:`~diffractive.propagation.SamplingReport`)
    and ``grid_angle_deg`` the steepest ray the grid carries at that wavelength (shorter
    wavelengths: smaller angles for the same pitch). The worst line is the one to read."""
    import dataclasses  # noqa: PLC0415

    from .spectrum import frequency_hz  # noqa: PLC0415

    lines = design.lines if spectrum is None else spectrum
    out = []
    for lam in lines.wavelengths_m:
        reports = dataclasses.replace(design.geometry, wavelength_m=lam).sampling_reports()
        out.append({"wavelength_m": lam, "frequency_thz": frequency_hz(lam) / 1e12,
                    "kept_fraction": min(r.kept_fraction for r in reports),
                    "grid_angle_deg": min(r.grid_angle_deg for r in reports),
                    "problems": [f"hop {i}: {p}" for i, r in enumerate(reports) for p in r.problems()]})
    return out


def frequency_sweep(design, images, labels, frequencies_hz, *, as_built=None, oversample: int = 1,
                    heights_m=None, batch_size: int = 64, backend=None, progress=None) -> list[dict]:
    """Accuracy of ``design`` lit by one line at each of ``frequencies_hz`` in turn (a tunable
    or drifting CW source): ``[{"frequency_thz", "wavelength_m", "accuracy", "correct", "n"}]``.

    The printed heights stay those of the design wavelength; at each frequency the material's
    index comes from its dispersion table (or its single value, the non-dispersive
    assumption) and every hop propagates at that wavelength (:func:`diffractive.asbuilt.build_lines`).
    ``heights_m`` (L, ny, nx): heights actually printed (e.g. re-read from STL files) instead of
    the design's phases, as in :func:`diffractive.asbuilt.simulate_built`.
    ``progress(i_done)`` after each frequency. Designs whose detectors read single lines of
    their own spectrum (``band``) are refused: they have no meaning under another source.
    """
    from .asbuilt import simulate_built  # noqa: PLC0415
    from .spectrum import Spectrum, wavelength_m  # noqa: PLC0415

    labels = np.asarray(labels)
    rows = []
    for i, f in enumerate(frequencies_hz):
        lam = wavelength_m(float(f))
        res = simulate_built(design, images, as_built, oversample=oversample, heights_m=heights_m,
                             batch_size=batch_size, backend=backend, spectrum=Spectrum.monochromatic(lam))
        correct = int(np.sum(res.predictions == labels))
        rows.append({"frequency_thz": float(f) / 1e12, "wavelength_m": lam, "correct": correct, "n": int(len(labels)),
                     "accuracy": correct / len(labels) if len(labels) else float("nan")})
        if progress is not None:
            progress(i + 1)
    return rows


def plot_frequency_sweep(curves: dict, path, *, design_frequency_thz=None, title="accuracy against source frequency"):
    """Accuracy (%) against frequency (THz) for each ``name -> rows`` of :func:`frequency_sweep`,
    written to ``path`` (PNG, atomically)."""
    from ._plot import new_figure, save_png  # noqa: PLC0415

    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for name, rows in curves.items():
        ax.plot([r["frequency_thz"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", label=name)
    if design_frequency_thz is not None:
        ax.axvline(design_frequency_thz, color="0.6", ls=":", lw=1, label="design frequency")
    ax.set_xlabel("source frequency (THz)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
