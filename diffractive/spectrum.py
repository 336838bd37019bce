r"""The source spectrum: the wavelengths a stack is lit with and their weights.

Everything in the physics core is monochromatic at one wavelength; a broadband source is a
set of monochromatic simulations added incoherently (different frequencies do not
interfere on a detector that integrates over many periods):

    P_k = sum_j w_j P_k(lambda_j),          sum_j w_j = 1,

where ``P_k(lambda)`` is detector ``k``'s power with the source at ``lambda`` alone and the
weights ``w_j`` are the source's relative power at each line (a pulsed THz time-domain
source sampled at a few frequencies, or the lines of a multi-wavelength source). A detector
may instead read one line only (``Detector.band = j``: ``P_k = w_j P_k(lambda_j)``), the
readout of spectrally encoded classifiers (Li et al., "Spectrally encoded single-pixel
machine vision using diffractive networks", Sci. Adv. 7, eabd7690 (2021)), where class
``c`` is the power of one detector at wavelength ``c``.

At each wavelength the printed heights (fixed: what was printed for the design wavelength)
give the layer's transmission with that wavelength's material index, ``exp(i 2 pi (n(lambda)
- 1) h / lambda) exp(-2 pi kappa(lambda) h / lambda)`` (:mod:`diffractive.heights`,
:meth:`diffractive.materials.Material.at`), and the transfer functions are those of that
wavelength (:func:`diffractive.asbuilt.build` with ``wavelength_m``). A spectrum of one line
at the design wavelength is the monochromatic model, bit for bit.

:class:`Spectrum` holds the lines; :func:`readout_weights` the (lines x detectors) matrix of
the sum above; :func:`sample_lines` the random subset of lines a training step may use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validate import finite_real
from .errors import FieldError, field_errors

#: Speed of light in vacuum, m/s (exact, SI).
SPEED_OF_LIGHT_M_S = 299_792_458.0
#: The most lines a spectrum may hold (each is a full simulation of the stack).
MAX_LINES = 64


def frequency_hz(wavelength_m: float) -> float:
    """``c / lambda``."""
    return SPEED_OF_LIGHT_M_S / wavelength_m


def wavelength_m(frequency_hz_: float) -> float:
    """``c / f``."""
    return SPEED_OF_LIGHT_M_S / frequency_hz_


@dataclass(frozen=True)
class Spectrum:
    """Source lines ``wavelengths_m`` (metres, distinct, positive) with relative ``weights``
    (>= 0, normalised here to sum 1; default equal). Bad values raise
    :class:`~diffractive.errors.FieldError` naming the field."""

    wavelengths_m: tuple
    weights: tuple | None = None

    def __post_init__(self):
        w = self.wavelengths_m
        if isinstance(w, (str, bytes)) or not hasattr(w, "__len__") or not 1 <= len(w) <= MAX_LINES:
            raise FieldError("wavelengths_m", f"must be a list of 1 to {MAX_LINES} wavelengths in metres, got {w!r}")
        lam = []
        for i, v in enumerate(w):
            with field_errors(f"wavelengths_m[{i}]"):
                v = finite_real(f"wavelengths_m[{i}]", v)
            if not 1e-9 <= v <= 1.0:
                raise FieldError(f"wavelengths_m[{i}]", f"must lie between 1 nm and 1 m, got {v!r}")
            lam.append(v)
        if len(set(lam)) != len(lam):
            raise FieldError("wavelengths_m", f"names a wavelength twice: {lam}")
        weights = self.weights
        if weights is None:
            weights = [1.0] * len(lam)
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") or len(weights) != len(lam):
            raise FieldError("weights", f"must hold one weight per wavelength ({len(lam)}), got {weights!r}")
        ws = []
        for i, v in enumerate(weights):
            with field_errors(f"weights[{i}]"):
                v = finite_real(f"weights[{i}]", v)
            if v < 0:
                raise FieldError(f"weights[{i}]", f"must be >= 0 (a source's relative power), got {v!r}")
            ws.append(v)
        total = math.fsum(ws)
        if total <= 0:
            raise FieldError("weights", "must not all be zero")
        object.__setattr__(self, "wavelengths_m", tuple(lam))
        object.__setattr__(self, "weights", tuple(v / total for v in ws))

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def monochromatic(cls, wavelength_m_: float) -> "Spectrum":
        """One line of weight 1."""
        return cls((wavelength_m_,), (1.0,))

    @classmethod
    def from_band(cls, low_hz: float, high_hz: float, count: int, weights=None) -> "Spectrum":
        """``count`` lines equally spaced in frequency from ``low_hz`` to ``high_hz`` (both
        included; ``count = 1``: the band's centre), ordered by frequency."""
        with field_errors("band_hz"):
            lo, hi = finite_real("band_hz[0]", low_hz), finite_real("band_hz[1]", high_hz)
        if not 0 < lo < hi:
            raise FieldError("band_hz", f"must be two frequencies 0 < low < high in Hz, got [{lo!r}, {hi!r}]")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_LINES:
            raise FieldError("count", f"must be a whole number of lines from 1 to {MAX_LINES}, got {count!r}")
        f = [0.5 * (lo + hi)] if count == 1 else list(np.linspace(lo, hi, int(count)))
        return cls(tuple(wavelength_m(v) for v in f), weights)

    # -- views ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.wavelengths_m)

    @property
    def frequencies_hz(self) -> tuple:
        return tuple(frequency_hz(v) for v in self.wavelengths_m)

    @property
    def shortest_m(self) -> float:
        return min(self.wavelengths_m)

    def is_monochromatic_at(self, wavelength_m_: float) -> bool:
        """True for one line exactly at ``wavelength_m_`` (the monochromatic model)."""
        return len(self) == 1 and self.wavelengths_m[0] == wavelength_m_

    def scaled(self, factor: float) -> "Spectrum":
        """Every line's wavelength times ``factor`` (a source detuned by ``factor - 1``), same weights."""
        return Spectrum(tuple(v * factor for v in self.wavelengths_m), self.weights)

    def describe(self) -> str:
        """``"0.38-0.42 THz, 5 lines"`` or ``"0.4 THz"``."""
        f = sorted(self.frequencies_hz)
        if len(f) == 1:
            return f"{f[0] / 1e12:.4g} THz"
        return f"{f[0] / 1e12:.4g}-{f[-1] / 1e12:.4g} THz, {len(f)} lines"

    def to_json(self) -> dict:
        return {"wavelengths_m": list(self.wavelengths_m), "weights": list(self.weights),
                "frequencies_thz": [round(v / 1e12, 9) for v in self.frequencies_hz]}

    @classmethod
    def from_json(cls, doc) -> "Spectrum":
        """Inverse of :meth:`to_json` (``frequencies_thz`` is informative and must agree if present)."""
        if not isinstance(doc, dict):
            raise FieldError("spectrum", f"must be an object, got {doc!r}")
        unknown = sorted(set(doc) - {"wavelengths_m", "weights", "frequencies_thz"})
        if unknown:
            raise FieldError(f"spectrum.{unknown[0]}", "is not a key of a spectrum (known: wavelengths_m, weights, "
                                                       "frequencies_thz)")
        if "wavelengths_m" not in doc:
            raise FieldError("spectrum.wavelengths_m", "is missing")
        with field_errors("spectrum"):
            s = cls(doc["wavelengths_m"], doc.get("weights"))
        f = doc.get("frequencies_thz")
        if f is not None:
            ok = isinstance(f, list) and len(f) == len(s) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isclose(v * 1e12, g, rel_tol=1e-6)
                for v, g in zip(f, s.frequencies_hz))
            if not ok:
                raise FieldError("spectrum.frequencies_thz", "does not match wavelengths_m (c / lambda)")
        return s


def readout_weights(spectrum: Spectrum, detectors) -> np.ndarray:
    """Matrix ``W`` (J lines, K detectors): detector powers are ``sum_j W[j] * P(lambda_j)``.

    ``W[j, k] = w_j`` for a detector that integrates over the band (``band`` None) and for a
    detector of band ``j``; 0 otherwise.
    """
    J, K = len(spectrum), len(detectors)
    W = np.zeros((J, K), dtype=np.float64)
    for k, d in enumerate(detectors):
        band = getattr(d, "band", None)
        if band is None:
            W[:, k] = spectrum.weights
        else:
            W[band, k] = spectrum.weights[band]
    return W


def sample_lines(spectrum: Spectrum, count: int | None, rng) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, factors)``: ``count`` lines drawn uniformly without replacement (all of
    them, in order, for ``None`` or ``count >= J``) and the factor ``J / count`` each
    sampled line's weight is multiplied by.

    Why that factor: with ``S`` the sampled set, ``E[sum_{j in S} (J/m) w_j x_j] = sum_j w_j
    x_j`` for any per-line quantity ``x_j``. Applied to per-line *losses* (objective "each")
    the sampled loss and its gradient are unbiased estimates of the full-band ones. Applied
    to per-line *powers* (objective "band") the sampled powers are unbiased, but the loss of
    the sampled powers is not the loss of the full-band powers (the loss is not linear in
    them): the gradient is then that of the expected sampled loss, a different, noisier
    objective whose minimiser coincides only as ``count -> J``.
    """
    J = len(spectrum)
    if count is None or count >= J:
        return np.arange(J), np.ones(J)
    idx = np.sort(rng.choice(J, size=int(count), replace=False))
    return idx, np.full(len(idx), J / int(count))


__all__ = ["MAX_LINES", "SPEED_OF_LIGHT_M_S", "Spectrum", "frequency_hz", "readout_weights", "sample_lines",
           "wavelength_m"]
