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

import numpy as np

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
class Dispersion:
    """A material's index and extinction against frequency: a measured table.

    ``frequency_hz`` (strictly increasing, at least 2 rows), ``n`` (> 1) and ``kappa``
    (>= 0), one value per row; ``source`` says where the numbers come from. :meth:`at`
    interpolates linearly in frequency and refuses a wavelength outside the table's range
    (no extrapolation: a resin's absorption grows with frequency, and a guess beyond the
    measured band is not physics). Bad values raise :class:`FieldError` naming the field
    (``dispersion.n[3]``).
    """

    frequency_hz: tuple
    n: tuple
    kappa: tuple
    source: str = ""

    def __post_init__(self):
        cols = {}
        for name in ("frequency_hz", "n", "kappa"):
            v = getattr(self, name)
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
                raise FieldError(name, f"must be a list of numbers, got {v!r}")
            cols[name] = v
        rows = len(cols["frequency_hz"])
        if rows < 2 or rows > 10_000:
            raise FieldError("frequency_hz", f"must hold 2 to 10000 rows (a table to interpolate), got {rows}")
        for name in ("n", "kappa"):
            if len(cols[name]) != rows:
                raise FieldError(name, f"must hold one value per frequency ({rows}), got {len(cols[name])}")
        out = {}
        for name, check in (("frequency_hz", positive_finite), ("n", check_index), ("kappa", check_kappa)):
            vals = []
            for i, v in enumerate(cols[name]):
                try:
                    vals.append(check(f"{name}[{i}]", v) if check is positive_finite else check(v))
                except FieldError as e:
                    raise FieldError(f"{name}[{i}]", e.problem) from None
                except ValueError as e:
                    raise FieldError(f"{name}[{i}]", str(e)) from None
            out[name] = tuple(vals)
        f = out["frequency_hz"]
        for i in range(1, rows):
            if not f[i] > f[i - 1]:
                raise FieldError(f"frequency_hz[{i}]", f"must be above the row before ({f[i - 1]!r} Hz): the table "
                                                       f"must be in increasing frequency, got {f[i]!r}")
        for name, v in out.items():
            object.__setattr__(self, name, v)
        if not isinstance(self.source, str):
            raise FieldError("source", f"must be a string, got {self.source!r}")

    @property
    def range_hz(self) -> tuple[float, float]:
        return self.frequency_hz[0], self.frequency_hz[-1]

    def at(self, wavelength_m: float) -> tuple[float, float]:
        """``(n, kappa)`` at ``wavelength_m`` (linear in frequency); :class:`FieldError`
        ('wavelength_m') outside the table, with the numbers."""
        from .spectrum import frequency_hz  # noqa: PLC0415

        f = frequency_hz(positive_finite("wavelength_m", wavelength_m))
        lo, hi = self.range_hz
        # 1e-9 relative slack: a line written in THz and converted through c lands on the table's edge
        if f < lo * (1 - 1e-9) or f > hi * (1 + 1e-9):
            raise FieldError("wavelength_m", f"{wavelength_m * 1e3:.6g} mm ({f / 1e12:.6g} THz) is outside the "
                                             f"material's dispersion table ({lo / 1e12:.6g} to {hi / 1e12:.6g} THz); "
                                             "measure the material over the band or narrow the spectrum")
        f = min(max(f, lo), hi)
        return (float(np.interp(f, self.frequency_hz, self.n)), float(np.interp(f, self.frequency_hz, self.kappa)))

    def to_json(self) -> dict:
        out = {"frequency_hz": list(self.frequency_hz), "n": list(self.n), "kappa": list(self.kappa)}
        if self.source:
            out["source"] = self.source
        return out

    @classmethod
    def from_json(cls, doc) -> "Dispersion":
        if not isinstance(doc, dict):
            raise FieldError("dispersion", f"must be an object, got {doc!r}")
        unknown = sorted(set(doc) - {"frequency_hz", "n", "kappa", "source"})
        if unknown:
            raise FieldError(f"dispersion.{unknown[0]}", "is not a key of a dispersion table (known: frequency_hz, "
                                                         "n, kappa, source)")
        for key in ("frequency_hz", "n", "kappa"):
            if key not in doc:
                raise FieldError(f"dispersion.{key}", "is missing")
        with field_errors("dispersion"):
            return cls(doc["frequency_hz"], doc["n"], doc["kappa"], doc.get("source", ""))


def read_dispersion(path) -> Dispersion:
    """A dispersion table from a CSV file: a header row naming ``frequency_thz`` (or
    ``frequency_hz``), ``n`` and ``kappa`` (any order, other columns refused), then one row
    per frequency; lines starting with ``#`` are comments (a ``# source: ...`` line is kept as
    the table's source). Anything malformed raises :class:`~diffractive._read.InputFileError`
    naming the file, the line and the column."""
    import csv  # noqa: PLC0415

    from ._read import InputFileError, read_text  # noqa: PLC0415

    text = read_text(path)
    source, rows = "", []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.lower().startswith("source:"):
                source = body[7:].strip()
            continue
        rows.append((lineno, line))
    if not rows:
        raise InputFileError(path, "holds no header row (frequency_thz, n, kappa)")
    head_line, head = rows[0]
    header = [h.strip().lower() for h in next(csv.reader([head]))]
    freq_key = "frequency_thz" if "frequency_thz" in header else "frequency_hz"
    scale = 1e12 if freq_key == "frequency_thz" else 1.0
    want = {freq_key, "n", "kappa"}
    if set(header) != want or len(header) != 3:
        raise InputFileError(path, f"must have the columns frequency_thz (or frequency_hz), n, kappa; got "
                                   f"{', '.join(header)!s}"[:300], where=f"line {head_line}")
    cols = {k: [] for k in header}
    for lineno, line in rows[1:]:
        cells = next(csv.reader([line]))
        if len(cells) != 3:
            raise InputFileError(path, f"must hold 3 values, got {len(cells)}", where=f"line {lineno}")
        for key, cell in zip(header, cells):
            try:
                v = float(cell)
            except ValueError:
                raise InputFileError(path, f"is not a number: {cell.strip()!r}"[:200],
                                     where=f"line {lineno}, column '{key}'") from None
            cols[key].append(v * scale if key == freq_key else v)
    try:
        return Dispersion(tuple(cols[freq_key]), tuple(cols["n"]), tuple(cols["kappa"]), source)
    except FieldError as e:
        name, _, rest = e.field.partition("[")
        col = freq_key if name == "frequency_hz" else name
        where = f"column '{col}'" + (f", data row {int(rest[:-1]) + 1}" if rest else "")
        raise InputFileError(path, e.problem, where=where) from None


@dataclass(frozen=True)
class Material:
    """A printing material: refractive index ``n`` and extinction ``kappa`` at the design wavelength.

    The complex index is ``n + i*kappa``; under ``exp(-i omega t)`` the amplitude falls as
    ``exp(-2 pi kappa d / wavelength)`` through a thickness ``d``. ``wavelength_m`` is where
    the values were measured (``None``: not stated); ``source`` says where they come from;
    ``assumption`` is set when a value is not verified against its source; ``dispersion``
    (optional) is a measured table of ``n`` and ``kappa`` against frequency, used away from the
    design wavelength (:meth:`at`; a design checks that ``n``, ``kappa`` equal the table at its
    wavelength). Bad values raise :class:`~diffractive.errors.FieldError` naming the field.
    """

    name: str
    n: float
    kappa: float
    wavelength_m: float | None = None
    source: str = ""
    assumption: str = ""
    dispersion: Dispersion | None = None

    def __post_init__(self):
        if self.dispersion is not None and not isinstance(self.dispersion, Dispersion):
            raise FieldError("dispersion", f"must be a Dispersion table, got {type(self.dispersion).__name__}")
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

    @property
    def is_dispersive(self) -> bool:
        return self.dispersion is not None

    def at(self, wavelength_m: float) -> tuple[float, float]:
        """``(n, kappa)`` at ``wavelength_m``: the dispersion table's (interpolated, refused
        outside its range), or, for a material without a table, ``(n, kappa)`` at every
        wavelength -- the non-dispersive assumption that a single measured value forces."""
        if self.dispersion is None:
            return self.n, self.kappa
        return self.dispersion.at(wavelength_m)

    def to_json(self) -> dict:
        """``{name, n, kappa}`` plus the optional keys that are set (design.json, export manifests)."""
        out = {"name": self.name, "n": self.n, "kappa": self.kappa}
        if self.dispersion is not None:
            out["dispersion"] = self.dispersion.to_json()
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
                   "(THz-TDS) for your resin and printer before relying on absorption numbers. No dispersion "
                   "table is shipped (none could be checked here): broadband simulations use these 0.4 THz values "
                   "at every frequency, an assumption; give a measured table (docs/physics.md, 'Spectrum')."),
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
