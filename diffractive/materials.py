"""The thin-plate model's parameters: printing materials, printer settings, and the Lin 2018 defaults.

A layer is a plate whose thickness varies pixel by pixel; what it does to the wave depends
on the material's complex refractive index ``n + i*kappa`` at the design wavelength
(:class:`Material`) and on how the printer builds it (:class:`Fabrication`: the solid base
under the relief and the vertical step heights are quantised to). Both are part of a
design (design.json fields ``material`` and ``fabrication``); the height <-> phase <->
transmission maps that use them live in :mod:`diffractive.heights`.

This module is the one home of the reference experiment's numbers, :data:`LIN2018`
(Lin et al., "All-optical machine learning using diffractive deep neural networks",
Science 361, 1004 (2018), doi:10.1126/science.aat8084): the defaults of
:func:`diffractive.design.make_design`, of training configs (training/config.py) and of
``d2nn export`` (fabrication/materials.py) all read it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ._validate import finite_real, positive_finite
from .errors import FieldError, field_errors

LIN2018_CITATION = "Lin et al., Science 361, 1004 (2018), doi:10.1126/science.aat8084"


def check_index(n) -> float:
    """Return ``n`` as float if it is a finite refractive index > 1, else raise :class:`FieldError` ('n').

    The one check of "n > 1": a thin plate delays the wave by ``(n - 1) * height``, so a
    material must be optically denser than air for heights to encode phases.
    """
    with field_errors("n"):
        n = finite_real("n", n)
    if n <= 1:
        raise FieldError("n", f"must be greater than 1 (the material must slow the wave relative to air), got {n!r}")
    return n


def check_kappa(kappa) -> float:
    """Return ``kappa`` as float if it is a finite extinction coefficient >= 0, else raise :class:`FieldError`."""
    with field_errors("kappa"):
        kappa = finite_real("kappa", kappa)
    if kappa < 0:
        raise FieldError("kappa", f"must be >= 0 (a passive material absorbs), got {kappa!r}")
    return kappa


@dataclass(frozen=True)
class Material:
    """A printing material at one wavelength: refractive index ``n`` and extinction ``kappa``.

    The complex index is ``n + i*kappa``; under ``exp(-i omega t)`` the amplitude falls as
    ``exp(-2 pi kappa d / wavelength)`` through a thickness ``d``. ``wavelength_m`` is where
    the values were measured (``None``: not stated); ``source`` says where they come from;
    ``assumption`` is set when a value is not verified against its source. Bad values raise
    :class:`~diffractive.errors.FieldError` naming the field.
    """

    name: str
    n: float
    kappa: float
    wavelength_m: float | None = None
    source: str = ""
    assumption: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise FieldError("name", f"must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "n", check_index(self.n))
        object.__setattr__(self, "kappa", check_kappa(self.kappa))
        if self.wavelength_m is not None:
            with field_errors("wavelength_m"):
                object.__setattr__(self, "wavelength_m", positive_finite("wavelength_m", self.wavelength_m))
        for key in ("source", "assumption"):
            if not isinstance(getattr(self, key), str):
                raise FieldError(key, f"must be a string, got {getattr(self, key)!r}")

    def to_json(self) -> dict:
        """``{name, n, kappa}`` plus the optional keys that are set (design.json, export manifests)."""
        out = {"name": self.name, "n": self.n, "kappa": self.kappa}
        if self.wavelength_m is not None:
            out["wavelength_m"] = self.wavelength_m
        if self.source:
            out["source"] = self.source
        if self.assumption:
            out["assumption"] = self.assumption
        return out


@dataclass(frozen=True)
class Fabrication:
    """How the printer builds a plate: ``base_m`` (m, >= 0) of solid base under the relief,
    heights quantised to ``z_step_m`` (m, > 0), the printer's vertical step."""

    base_m: float
    z_step_m: float

    def __post_init__(self):
        with field_errors("base_m"):
            base = finite_real("base_m", self.base_m)
        if base < 0:
            raise FieldError("base_m", f"must be non-negative, got {base!r}")
        object.__setattr__(self, "base_m", base)
        with field_errors("z_step_m"):
            object.__setattr__(self, "z_step_m", positive_finite("z_step_m", self.z_step_m))

    def to_json(self) -> dict:
        return {"base_m": self.base_m, "z_step_m": self.z_step_m}


#: Materials whose values come with a source (looked up by ``d2nn export --material``).
MATERIALS: dict[str, Material] = {
    "VeroBlackPlus RGD875": Material(
        name="VeroBlackPlus RGD875", n=1.7227, kappa=0.031, wavelength_m=0.75e-3,
        source=f"n: {LIN2018_CITATION} (0.4 THz)",
        assumption="kappa = 0.031 is the value commonly quoted from the supplementary material of Lin et al. "
                   "2018 at 0.4 THz; it could not be checked against the source text here. Measure it "
                   "(THz-TDS) for your resin and printer before relying on absorption numbers."),
}


@dataclass(frozen=True)
class Reference:
    """A reference experiment's geometry, material and printing (SI units; ``layer_shape`` is (ny, nx))."""

    citation: str
    wavelength_m: float
    pitch_m: float
    layer_shape: tuple[int, int]
    n_layers: int
    spacing_m: float
    material: Material
    fabrication: Fabrication


#: Lin et al. 2018, MNIST classifier: 0.4 THz (lambda = 0.75 mm), 5 layers of 200 x 200 pixels
#: at 0.4 mm pitch, 30 mm apart, printed in VeroBlackPlus RGD875 (n = 1.7227 at 0.4 THz).
#: The printing values (0.5 mm base, 16 um vertical step) are this project's defaults, not
#: numbers from the paper.
LIN2018 = Reference(
    citation=LIN2018_CITATION, wavelength_m=0.75e-3, pitch_m=0.4e-3, layer_shape=(200, 200), n_layers=5,
    spacing_m=30e-3, material=MATERIALS["VeroBlackPlus RGD875"],
    fabrication=Fabrication(base_m=0.5e-3, z_step_m=16e-6))
