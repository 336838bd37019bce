"""Error budgets: how far each part of a built stack may deviate, as distributions to draw from.

A budget is a TOML file. Each error kind is a table holding one distribution, ``uniform = a``
(uniform on [-a, +a]) or ``normal = sigma``, independent per layer / gap / axis as the kind
says (:data:`KINDS`); ``defects`` holds ``fraction`` instead. Top-level keys: ``name``,
``description``, ``absorption`` (apply the resin's absorption, default true: a printed plate
absorbs) and ``quantise`` (round heights to the design's printer step, default true). Each
table may carry a ``source`` string saying where its number comes from::

    name = "holder"
    absorption = true
    quantise = true

    [lateral_m]            # each layer, each axis
    uniform = 0.2e-3
    source = "assumption: ..."

    [rotation_deg]
    uniform = 0.3

Lengths are in metres (keys ending ``_m``), angles in degrees (``_deg``), the rest are
relative errors (0.01 = 1 %). :func:`load_budget` takes a shipped name (:func:`budget_names`:
``holder``, ``hand``) or a path; :meth:`ErrorBudget.draw` turns a budget into one
:class:`~diffractive.asbuilt.AsBuilt`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._validate import non_negative_finite
from .asbuilt import AsBuilt
from .errors import D2NNError, FieldError, field_errors

BUDGET_DIR = Path(__file__).with_name("budgets")


@dataclass(frozen=True)
class Kind:
    """One error kind: its budget key, what it is, how many independent values a draw holds
    (``per``: "layer", "layer-axis", "gap", "axis" or "stack"), the unit of its size, and the
    size a sweep uses when a budget does not name it."""

    key: str
    what: str
    per: str
    unit: str
    default_size: float


#: Every error kind a budget may hold, in the order reports list them.
KINDS = {k.key: k for k in (
    Kind("lateral_m", "lateral offset of each layer", "layer-axis", "m", 0.2e-3),
    Kind("rotation_deg", "in-plane rotation of each layer", "layer", "deg", 0.3),
    Kind("axial_m", "error of each gap (input to layer 1, ..., last layer to output)", "gap", "m", 0.25e-3),
    Kind("thickness", "relative error of all printed heights", "stack", "", 0.02),
    Kind("defects", "fraction of pixels printed at a random height", "stack", "", 0.001),
    Kind("index", "relative error of the resin's refractive index", "stack", "", 0.01),
    Kind("kappa", "relative error of the resin's extinction coefficient", "stack", "", 0.2),
    Kind("wavelength", "relative detuning of the source wavelength", "stack", "", 0.0025),
    Kind("input_offset_m", "lateral offset of the input object", "axis", "m", 0.2e-3),
    Kind("input_scale", "relative error of the input object's size", "stack", "", 0.01),
    Kind("detector_offset_m", "lateral offset of the detector plane", "axis", "m", 0.2e-3),
    Kind("detector_rotation_deg", "rotation of the detector plane", "stack", "deg", 0.3),
)}

DISTRIBUTIONS = ("uniform", "normal")

#: Sizes no budget may reach, by unit: a length beyond 10 cm or a half-turn is not an assembly
#: tolerance but a typo (1e308 would turn every transfer function into NaN), and a relative
#: error of 100 % (or a defect fraction of 1) leaves no material or source to speak of.
_LIMITS = {"m": (0.1, "0.1 m"), "deg": (180.0, "180 deg"), "": (1.0, "1 (100 %)")}


@dataclass(frozen=True)
class Distribution:
    """``uniform`` on [-size, +size] or ``normal`` with standard deviation ``size``
    (``defects``: ``fixed``, the fraction itself); ``source`` says where the number comes from."""

    shape: str
    size: float
    source: str = ""

    def sample(self, rng, n):
        if self.shape == "uniform":
            return rng.uniform(-self.size, self.size, n)
        if self.shape == "normal":
            return rng.normal(0.0, self.size, n)
        return np.full(n, self.size)

    def to_json(self) -> dict:
        out = {"fraction" if self.shape == "fixed" else self.shape: self.size}
        if self.source:
            out["source"] = self.source
        return out


@dataclass(frozen=True)
class ErrorBudget:
    """Distributions of the error kinds (:data:`KINDS`) of a built stack; kinds absent are zero."""

    name: str
    errors: dict
    absorption: bool = True
    quantise: bool = True
    description: str = ""

    def __post_init__(self):
        for key, dist in self.errors.items():
            if key not in KINDS:
                raise FieldError(key, f"is not an error kind (kinds: {', '.join(KINDS)})")
            if not isinstance(dist, Distribution):
                raise FieldError(key, f"must be a Distribution, got {type(dist).__name__}")

    @property
    def kinds(self) -> list[str]:
        """The error kinds this budget holds, in :data:`KINDS` order."""
        return [k for k in KINDS if k in self.errors and self.errors[k].size > 0]

    @property
    def is_empty(self) -> bool:
        """True when every draw is the designed stack (no kind, no absorption, no quantisation)."""
        return not self.kinds and not self.absorption and not self.quantise

    def size(self, kind: str) -> float:
        """The budget's size of ``kind`` (``uniform`` half-width or ``normal`` sigma), 0 if absent."""
        return self.errors[kind].size if kind in self.errors else 0.0

    def only(self, kind: str, size: float) -> "ErrorBudget":
        """This budget's printing model (absorption, quantisation) with one error kind of ``size``
        (same distribution shape as here; uniform if absent) — one point of a sweep."""
        if kind not in KINDS:
            raise FieldError("kind", f"{kind!r} is not an error kind (kinds: {', '.join(KINDS)})")
        shape = "fixed" if kind == "defects" else self.errors[kind].shape if kind in self.errors else "uniform"
        return dataclasses.replace(self, name=f"{self.name}:{kind}={size:g}",
                                   errors={kind: Distribution(shape, float(size))} if size > 0 else {})

    def without_errors(self) -> "ErrorBudget":
        """The printing model alone: every draw is the stack printed as designed."""
        return dataclasses.replace(self, name=f"{self.name}:none", errors={})

    def draw(self, rng, n_layers: int, z_step_m: float | None = None) -> AsBuilt:
        """One :class:`AsBuilt` drawn from the budget with ``rng`` (a NumPy Generator).

        ``z_step_m`` is the design's printer step (used when ``quantise``). Every kind draws
        its values in a fixed order whether or not it is present, so adding one kind to a
        budget does not change the draws of the others for the same seed.
        """
        L = int(n_layers)
        e = self.errors

        def values(key, n):
            v = rng.standard_normal(n), rng.random(n)  # always consume the same stream
            if key not in e or e[key].size == 0:
                return np.zeros(n)
            d = e[key]
            if d.shape == "uniform":
                return (2 * v[1] - 1) * d.size
            if d.shape == "normal":
                return v[0] * d.size
            return np.full(n, d.size)

        lateral = values("lateral_m", 2 * L).reshape(L, 2)
        rot = np.deg2rad(values("rotation_deg", L))
        axial = values("axial_m", L + 1)
        thickness, defects, index, kappa, wave = (float(values(k, 1)[0]) for k in
                                                  ("thickness", "defects", "index", "kappa", "wavelength"))
        inp = values("input_offset_m", 2)
        scale = float(values("input_scale", 1)[0])
        det = values("detector_offset_m", 2)
        det_rot = math.radians(float(values("detector_rotation_deg", 1)[0]))
        seed = int(rng.integers(0, 2**31 - 1))
        return AsBuilt(layer_offsets_xy_m=lateral if np.any(lateral) else (),
                       layer_rotations_rad=rot if np.any(rot) else (), gap_errors_m=axial if np.any(axial) else (),
                       thickness_error=thickness, z_step_m=z_step_m if self.quantise else None,
                       defect_fraction=abs(defects), defect_seed=seed if defects else 0, index_error=index, kappa_error=kappa,
                       absorption=self.absorption, wavelength_error=wave, input_offset_xy_m=tuple(inp),
                       input_scale_error=scale, detector_offset_xy_m=tuple(det), detector_rotation_rad=det_rot)

    def to_json(self) -> dict:
        """The budget as one JSON object (the TOML file's content)."""
        out = {"name": self.name, "absorption": self.absorption, "quantise": self.quantise}
        if self.description:
            out["description"] = self.description
        out.update({k: self.errors[k].to_json() for k in KINDS if k in self.errors})
        return out


#: The empty budget: every draw is the designed stack (robust training with it is plain training).
EMPTY = ErrorBudget("none", {}, absorption=False, quantise=False)


def budget_names() -> list[str]:
    """Names of the shipped budgets (TOML files in ``diffractive/budgets/``)."""
    return sorted(p.stem for p in BUDGET_DIR.glob("*.toml"))


def parse_budget(doc: dict, source: str = "<budget>") -> ErrorBudget:
    """An :class:`ErrorBudget` from a parsed TOML document; errors name ``source`` and the key."""
    if not isinstance(doc, dict):
        raise D2NNError(f"{source}: a budget must be a table")
    errors = {}
    top = {"name", "description", "absorption", "quantise"}
    for key, value in doc.items():
        if key in top:
            continue
        if key not in KINDS:
            raise D2NNError(f"{source}: unknown key {key!r} (error kinds: {', '.join(KINDS)}; "
                            f"also {', '.join(sorted(top))})")
        if not isinstance(value, dict):
            raise D2NNError(f"{source}: [{key}] must be a table such as {{ uniform = ... }} or {{ normal = ... }}")
        allowed = {"fraction", "source"} if key == "defects" else set(DISTRIBUTIONS) | {"source"}
        extra = sorted(set(value) - allowed)
        if extra:
            raise D2NNError(f"{source}: [{key}] has unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")
        shapes = [s for s in allowed - {"source"} if s in value]
        if len(shapes) != 1:
            raise D2NNError(f"{source}: [{key}] must give exactly one of {', '.join(sorted(allowed - {'source'}))}")
        shape = shapes[0]
        try:
            with field_errors(f"{key}.{shape}"):
                size = non_negative_finite(f"{key}.{shape}", value[shape])
        except FieldError as e:
            raise D2NNError(f"{source}: {e}") from None
        limit = _LIMITS[KINDS[key].unit]
        if size >= limit[0]:
            raise D2NNError(f"{source}: [{key}] {shape} must be below {limit[1]}, got {size!r}")
        note = value.get("source", "")
        if not isinstance(note, str):
            raise D2NNError(f"{source}: [{key}] source must be a string")
        errors[key] = Distribution("fixed" if shape == "fraction" else shape, size, note)
    flags = {}
    for key in ("absorption", "quantise"):
        v = doc.get(key, True)
        if not isinstance(v, bool):
            raise D2NNError(f"{source}: {key} must be true or false, got {v!r}")
        flags[key] = v
    for key in ("name", "description"):
        if key in doc and not isinstance(doc[key], str):
            raise D2NNError(f"{source}: {key} must be a string")
    return ErrorBudget(doc.get("name", Path(source).stem), errors, description=doc.get("description", ""), **flags)


def load_budget(name_or_path) -> ErrorBudget:
    """A shipped budget by name (``holder``, ``hand``) or a budget TOML file by path.

    Raises :class:`D2NNError` with one line naming the file and key for anything malformed.
    The file is read through :func:`diffractive._read.read_toml` (a folder, a FIFO, gzip or
    non-UTF-8 bytes, invalid TOML: an :class:`~diffractive._read.InputFileError` naming it).
    """
    from ._read import read_toml  # noqa: PLC0415

    text = str(name_or_path)
    if text in budget_names():
        path = BUDGET_DIR / f"{text}.toml"
    else:
        path = Path(text)
        try:
            absent = not path.exists() and not path.is_symlink()
        except (OSError, ValueError):  # a name the system cannot look up (a NUL byte, too long)
            absent = True
        if absent:
            raise D2NNError(f"budget {text!r} is neither a shipped budget ({', '.join(budget_names())}) nor a file")
    return parse_budget(read_toml(path), str(path))


__all__ = ["BUDGET_DIR", "DISTRIBUTIONS", "Distribution", "EMPTY", "ErrorBudget", "KINDS", "Kind", "budget_names",
           "load_budget", "parse_budget"]
