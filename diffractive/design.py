"""The design: a frozen, typed description of a stack, and its folder ``design.json`` + ``phases.npz``.

A :class:`Design` is made of a :class:`~diffractive.stack.StackGeometry` (where the planes
are and how they are sampled), an :class:`~diffractive.encoding.InputSpec`, the
:class:`~diffractive.detectors.Detector` list, a :class:`~diffractive.materials.Material`,
a :class:`~diffractive.materials.Fabrication` and the layers (``phases``, ``amplitudes``).
Each part checks its own values when it is constructed and :class:`Design` checks how they
fit together, raising :class:`~diffractive.errors.FieldError` (a :class:`DesignError`)
naming the field (``material.n``, ``detectors[3].sign``). A design cannot be changed once
built: derive a new one with :func:`dataclasses.replace` or :meth:`Design.with_phases` /
:meth:`Design.with_record`.

JSON is only its serialisation: :meth:`Design.to_json` writes schema ``d2nn.design/2``
(docs/design-format.md); :meth:`Design.from_json` reads ``/2`` and ``/1`` (whose axis
conventions it converts, with an :class:`OldSchemaWarning`). :func:`load_design` names the
file in every error; :func:`save_design` writes through temporary files renamed into place
and refuses to overwrite an existing design unless ``overwrite=True``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import atomic_write, write_json_atomic  # noqa: F401  (re-exported)
from ._read import InputFileError, check_regular_file, finite_array, printable, read_json, read_npz
from .detectors import Detector
from .encoding import InputSpec
from .errors import DesignError, FieldError, InputTypeError, OutputExists, field_errors
from .grid import Grid
from .materials import LIN2018, Dispersion, Fabrication, Material
from .spectrum import Spectrum
from .stack import StackGeometry

__all__ = ["SCHEMA", "SCHEMA_V1", "APERTURES", "LIMITS", "MAX_AXIS_PIXELS", "Design", "DesignError",
           "DesignFileError", "FieldError", "OldSchemaWarning", "load_design", "save_design", "make_design",
           "Detector", "InputSpec", "Material", "Fabrication"]

SCHEMA = "d2nn.design/2"
SCHEMA_V1 = "d2nn.design/1"
APERTURES = ("opaque",)
MODULATIONS = ("phase", "complex")
_TOL = 1e-9  # relative slack on "fits on the plane" (sizes written as decimals)
#: Sane bounds on a design's physical values, (low, high) inclusive, in the field's units
#: (metres; n and kappa dimensionless). Beyond them a value is a typo or an attack, not a
#: design: 1.8e308 m between planes is "finite and positive" but its transfer function is
#: NaN. A lower bound of None is the field's own (> 0, or >= 0 for base_m).
LIMITS = {
    "wavelength_m": (1e-9, 1.0),        # 1 nm .. 1 m (0.4 THz is 0.75 mm)
    "pitch_m": (1e-9, 1.0),             # 1 nm .. 1 m
    "distances_m": (None, 100.0),       # each gap at most 100 m
    "material.n": (None, 10.0),         # printable dielectrics: 1.3 .. 4
    "material.kappa": (None, 10.0),
    "fabrication.base_m": (None, 0.1),  # at most 100 mm of base
    "fabrication.z_step_m": (1e-7, 0.01),  # 0.1 um (two-photon) .. 10 mm per printer layer
}
#: At most this many pixels along each axis of ``layer_shape`` and ``window_shape``
#: (a 16384 x 16384 complex64 window is 2 GiB).
MAX_AXIS_PIXELS = 16384
#: What make_design records by default: the Lin 2018 material's name, n and kappa (its
#: source and caveats stay in diffractive.materials.MATERIALS, where export looks them up).
DEFAULT_MATERIAL = dataclasses.replace(LIN2018.material, wavelength_m=None, source="", assumption="")


class DesignFileError(InputFileError, DesignError):
    """A file of a design folder is unreadable or malformed: an :class:`~diffractive._read.InputFileError`
    (``path``, ``where``, ``problem``) that is also a :class:`DesignError`."""


def _check_limits(g: StackGeometry, material: Material, fabrication: Fabrication) -> None:
    """Raise :class:`FieldError` for a value outside :data:`LIMITS` / :data:`MAX_AXIS_PIXELS`."""
    for key, shape in (("layer_shape", g.layer_shape), ("window_shape", g.window_shape)):
        if max(shape) > MAX_AXIS_PIXELS:
            raise FieldError(key, f"{list(shape)} has more than {MAX_AXIS_PIXELS} pixels along an axis")
    values = [("wavelength_m", "wavelength_m", g.wavelength_m), ("pitch_m", "pitch_m", g.pitch_m)]
    values += [(f"distances_m[{i}]", "distances_m", z) for i, z in enumerate(g.distances_m)]
    values += [("material.n", "material.n", material.n), ("material.kappa", "material.kappa", material.kappa),
               ("fabrication.base_m", "fabrication.base_m", fabrication.base_m),
               ("fabrication.z_step_m", "fabrication.z_step_m", fabrication.z_step_m)]
    if material.dispersion is not None:
        values += [(f"material.dispersion.n[{i}]", "material.n", v) for i, v in enumerate(material.dispersion.n)]
        values += [(f"material.dispersion.kappa[{i}]", "material.kappa", v)
                   for i, v in enumerate(material.dispersion.kappa)]
    for name, key, v in values:
        lo, hi = LIMITS[key]
        if (lo is not None and v < lo) or v > hi:
            span = f"at most {hi:g}" if lo is None else f"between {lo:g} and {hi:g}"
            raise FieldError(name, f"is {v!r}, outside the sane range of a design: {span} (diffractive.design.LIMITS)")


def _check_record(name: str, rec: dict) -> None:
    """Raise :class:`FieldError` unless ``rec`` is JSON that :func:`load_design` reads back: strings,
    finite numbers (integers of at most ``MAX_INT_DIGITS`` digits), booleans, null, lists and objects,
    nested at most ``MAX_JSON_DEPTH - 1`` deep (the record sits inside design.json's object)."""
    from ._read import MAX_INT_DIGITS, MAX_JSON_DEPTH  # noqa: PLC0415

    todo = [(rec, name, 1)]
    while todo:
        node, where, depth = todo.pop()
        if isinstance(node, (dict, list, tuple)):
            if depth > MAX_JSON_DEPTH - 1:
                raise FieldError(where, f"nests lists/objects deeper than design.json's {MAX_JSON_DEPTH} levels")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            todo.extend((v, f"{where}[{k}]" if not isinstance(node, dict) else f"{where}.{printable(str(k))}"
                         if k != "" else f'{where}[""]', depth + 1) for k, v in items)
        elif isinstance(node, bool) or node is None or isinstance(node, str):
            continue
        elif isinstance(node, int):
            if abs(node) >= 10 ** MAX_INT_DIGITS:
                raise FieldError(where, f"is an integer of more than {MAX_INT_DIGITS} digits, which design.json "
                                        "cannot hold (write it as a string)")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise FieldError(where, f"is {node!r}, which JSON cannot hold (use null, or a string)")
        else:
            raise FieldError(where, f"must be JSON (a string, number, boolean, null, list or object), got "
                                    f"{type(node).__name__}")


class OldSchemaWarning(UserWarning):
    """A design.json in an older schema was read (and converted); re-save it to upgrade."""


# --------------------------------------------------------------------------- read-only records
class FrozenDict(dict):
    """A read-only ``dict`` (provenance, metrics): JSON-serialisable, picklable, mutation raises."""

    def _readonly(self, *args, **kwargs):
        raise InputTypeError("a design's provenance and metrics are read-only; build a new design with "
                        "Design.with_record(...) or dataclasses.replace(...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def freeze(obj):
    """A read-only copy of a JSON-like value: dicts become :class:`FrozenDict`, lists tuples."""
    if isinstance(obj, dict):
        return FrozenDict({str(k): freeze(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return tuple(freeze(v) for v in obj)
    return obj


def thaw(obj):
    """A plain, mutable copy (dicts and lists) of a value made by :func:`freeze`."""
    if isinstance(obj, dict):
        return {k: thaw(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [thaw(v) for v in obj]
    return obj


def _readonly_array(name, a, dtype_kind="f"):
    a = np.array(a, copy=True)
    if a.dtype.kind != dtype_kind:
        raise DesignError(f"{name} must be real floating-point numbers, got dtype {a.dtype}")
    a.setflags(write=False)
    return a


# --------------------------------------------------------------------------- the design
@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value; compare to_json()
class Design:
    """Everything needed to simulate, train further, fabricate and evaluate a stack.

    All lengths in metres, phases in radians. ``phases`` (n_layers, ny, nx) and
    ``amplitudes`` (same shape, in [0, 1]; only for complex-modulation designs) are
    read-only copies. ``n_classes`` defaults to 1 + the largest detector class.
    ``provenance`` and ``metrics`` are free-form JSON records, read-only.
    """

    geometry: StackGeometry
    input: InputSpec
    detectors: tuple[Detector, ...]
    material: Material
    fabrication: Fabrication
    phases: np.ndarray
    amplitudes: np.ndarray | None = None
    n_classes: int | None = None
    aperture: str = "opaque"
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    spectrum: Spectrum | None = None

    def __post_init__(self):
        g = self.geometry
        for name, cls in (("geometry", StackGeometry), ("input", InputSpec), ("material", Material),
                          ("fabrication", Fabrication)):
            if not isinstance(getattr(self, name), cls):
                raise FieldError(name, f"must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if not g.band_limit:
            raise FieldError("geometry", "must use the band limit (design.json has no key to record band_limit=False)")
        _check_limits(g, self.material, self.fabrication)
        extent_y, extent_x = g.grid.extent_yx_m
        h, w = self.input.size_yx_m
        if h > extent_y * (1 + _TOL) or w > extent_x * (1 + _TOL):
            raise FieldError("input.size_yx_m", f"{[h, w]} m is larger than the layer "
                                                f"({extent_y:.4g} x {extent_x:.4g} m, h x w)")
        from .encoding import input_pixels  # noqa: PLC0415

        input_pixels(g.grid, (min(h, extent_y), min(w, extent_x)))  # at least one pixel (FieldError)
        dets = tuple(self.detectors) if isinstance(self.detectors, (list, tuple)) else None
        if not dets:
            raise FieldError("detectors", f"must be a non-empty list of Detector, got {self.detectors!r}")
        for k, d in enumerate(dets):
            if not isinstance(d, Detector):
                raise FieldError(f"detectors[{k}]", f"must be a Detector, got {type(d).__name__}")
            (cx, cy), (dw, dh) = d.center_xy_m, d.size_xy_m
            if abs(cx) + dw / 2 > extent_x / 2 * (1 + _TOL) or abs(cy) + dh / 2 > extent_y / 2 * (1 + _TOL):
                raise FieldError(f"detectors[{k}].center_xy_m",
                                 f"puts the detector partly outside the output plane ({extent_x:.4g} x {extent_y:.4g} m, "
                                 "w x h)")
        object.__setattr__(self, "detectors", dets)
        n_classes = 1 + max(d.class_index for d in dets) if self.n_classes is None else self.n_classes
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            raise FieldError("n_classes", f"must be an integer >= 2, got {n_classes!r}")
        object.__setattr__(self, "n_classes", int(n_classes))
        positive = {d.class_index for d in dets if d.sign == 1}
        for c in range(min(n_classes, len(dets) + 1)):  # more classes than detectors: one is missing
            if c not in positive:
                raise FieldError("detectors", f"has no positive detector for class {c}")
        if any(d.class_index >= n_classes for d in dets):
            raise FieldError("detectors", f"names a class >= n_classes ({n_classes})")
        self._check_spectrum(dets)
        if self.aperture not in APERTURES:
            raise FieldError("aperture", f"must be one of {list(APERTURES)}, got {self.aperture!r}")
        expected = (g.n_layers,) + g.layer_shape
        phases = _readonly_array("phases", self.phases)
        if phases.shape != expected:
            raise DesignError(f"phases have shape {phases.shape}, but the geometry says {expected} "
                              "(n_layers, ny, nx)")
        if not np.all(np.isfinite(phases)):
            raise DesignError("phases must be finite real numbers")
        object.__setattr__(self, "phases", phases)
        if self.amplitudes is not None:
            amp = _readonly_array("amplitudes", self.amplitudes)
            if amp.shape != expected or not np.all((amp >= 0) & (amp <= 1)):
                raise DesignError(f"amplitudes must have shape {expected} and lie in [0, 1]")
            object.__setattr__(self, "amplitudes", amp)
        for name in ("provenance", "metrics"):
            rec = getattr(self, name)
            if not isinstance(rec, dict):
                raise FieldError(name, f"must be a mapping (a JSON object), got {type(rec).__name__}")
            _check_record(name, rec)
            object.__setattr__(self, name, freeze(rec))

    def _check_spectrum(self, dets):
        s, m = self.spectrum, self.material
        if s is not None and not isinstance(s, Spectrum):
            raise FieldError("spectrum", f"must be a Spectrum, got {type(s).__name__}")
        if m.dispersion is not None:
            try:
                n0, k0 = m.dispersion.at(self.wavelength_m)
            except FieldError as e:
                raise FieldError("material.dispersion", f"at the design wavelength: {e.problem}") from None
            if abs(n0 - m.n) > 1e-6 or abs(k0 - m.kappa) > 1e-6:
                raise FieldError("material.n", f"{m.n!r} and kappa {m.kappa!r} must be the dispersion table's values "
                                               f"at the design wavelength ({n0:.7g}, {k0:.7g})")
        lines = self.lines
        for j, lam in enumerate(lines.wavelengths_m):
            try:
                m.at(lam)
            except FieldError as e:
                raise FieldError(f"spectrum.wavelengths_m[{j}]", e.problem) from None
        for k, d in enumerate(dets):
            if d.band is not None and d.band >= len(lines):
                raise FieldError(f"detectors[{k}].band", f"is {d.band}, but the source spectrum has {len(lines)} "
                                                         f"line{'s' if len(lines) != 1 else ''} (0 to {len(lines) - 1})")

    # ---- views of the parts
    @property
    def wavelength_m(self) -> float:
        """The design wavelength (metres): the phases are delays at it, and heights are printed for it."""
        return self.geometry.wavelength_m

    @property
    def lines(self) -> Spectrum:
        """The source spectrum (:mod:`diffractive.spectrum`): ``spectrum``, or one line at
        :attr:`wavelength_m` for a monochromatic design."""
        return Spectrum.monochromatic(self.wavelength_m) if self.spectrum is None else self.spectrum

    @property
    def is_monochromatic(self) -> bool:
        """True when the design is lit at its design wavelength alone (the monochromatic model)."""
        return self.lines.is_monochromatic_at(self.wavelength_m)

    @property
    def pitch_m(self) -> float:
        return self.geometry.pitch_m

    @property
    def layer_shape(self) -> tuple[int, int]:
        """``(ny, nx)``: rows, columns of every plane."""
        return self.geometry.layer_shape

    @property
    def distances_m(self) -> tuple[float, ...]:
        """``(input -> layer 1, ..., layer n_layers -> output)``, metres."""
        return self.geometry.distances_m

    @property
    def window_shape(self) -> tuple[int, int]:
        return self.geometry.window_shape

    @property
    def n_layers(self) -> int:
        return self.geometry.n_layers

    @property
    def grid(self) -> Grid:
        return self.geometry.grid

    @property
    def modulation(self) -> str:
        """``"complex"`` when the layers have amplitudes, else ``"phase"``."""
        return "complex" if self.amplitudes is not None else "phase"

    # ---- derived designs
    def with_phases(self, phases, amplitudes=None) -> "Design":
        """The same design with other layers (``amplitudes=None``: phase-only)."""
        return dataclasses.replace(self, phases=phases, amplitudes=amplitudes)

    def with_record(self, *, provenance: dict | None = None, metrics: dict | None = None) -> "Design":
        """The same design with ``provenance`` and/or ``metrics`` replaced (``None``: kept)."""
        return dataclasses.replace(self, provenance=thaw(self.provenance) if provenance is None else provenance,
                                   metrics=thaw(self.metrics) if metrics is None else metrics)

    # ---- serialisation
    def to_json(self) -> dict:
        """The design.json document (schema ``d2nn.design/2``) as plain JSON types."""
        g = self.geometry
        return {
            "schema": SCHEMA,
            "wavelength_m": g.wavelength_m,
            "pitch_m": g.pitch_m,
            "layer_shape": list(g.layer_shape),
            "n_layers": g.n_layers,
            "distances_m": list(g.distances_m),
            "window_shape": list(g.window_shape),
            "aperture": self.aperture,
            "n_classes": self.n_classes,
            "input": self.input.to_json(),
            "detectors": [d.to_json() for d in self.detectors],
            "material": self.material.to_json(),
            "fabrication": self.fabrication.to_json(),
            "modulation": self.modulation,
            "provenance": thaw(self.provenance),
            "metrics": thaw(self.metrics),
        } | ({} if self.spectrum is None else {"spectrum": self.spectrum.to_json()})

    @classmethod
    def from_json(cls, doc: dict, phases, amplitudes=None, source: str = "design.json") -> "Design":
        """Build a design from a parsed design.json (schema ``/2``, or ``/1`` converted with a warning).

        Every error is a :class:`DesignError` starting with ``source`` and naming the field.
        """
        fields = _fields_from_json(doc, source)
        try:
            return _assemble(cls, fields, phases, amplitudes)
        except DesignError as e:
            raise DesignError(f"{source}: {e}") from None


def _fields_from_json(doc, source: str) -> dict:
    """The keyword arguments of :class:`Design` (less the layers, plus ``modulation``) that
    the design.json document ``doc`` describes; a :class:`DesignError` naming ``source`` and the field."""
    try:
        if not isinstance(doc, dict):
            raise DesignError("must hold a JSON object")
        schema = doc.get("schema")
        if schema == SCHEMA_V1:
            doc = _upgrade_v1(doc, source)
        elif schema != SCHEMA:
            raise FieldError("schema", "is missing" if "schema" not in doc else
                             f"must be {SCHEMA!r} (or {SCHEMA_V1!r}), got {schema!r}")
        fields = _fields_v2(doc)
        _check_limits(fields["geometry"], fields["material"], fields["fabrication"])  # before any array is read
        return fields
    except DesignError as e:
        raise DesignError(f"{source}: {e}") from None


def _assemble(cls, fields: dict, phases, amplitudes) -> "Design":
    fields = dict(fields)
    modulation = fields.pop("modulation")
    if modulation == "complex" and amplitudes is None:
        raise DesignError("modulation is 'complex' but phases.npz has no 'amplitudes' array")
    return cls(**fields, phases=np.asarray(phases), amplitudes=amplitudes if modulation == "complex" else None)


# --------------------------------------------------------------------------- reading design.json
_TOP_KEYS = {"schema", "wavelength_m", "pitch_m", "layer_shape", "n_layers", "distances_m", "window_shape",
             "aperture", "n_classes", "input", "detectors", "material", "fabrication", "modulation",
             "provenance", "metrics", "spectrum"}
_REQUIRED = ("wavelength_m", "pitch_m", "layer_shape", "n_layers", "distances_m", "window_shape", "input",
             "detectors", "material", "fabrication")


def _get(obj: dict, key: str, where: str = ""):
    if key not in obj:
        raise FieldError(where + key, "is missing")
    return obj[key]


def _object(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise FieldError(name, f"must be an object, got {value!r}")
    return value


def _build(klass, doc: dict, name: str, required: tuple, optional: tuple = ()):
    """``klass(**doc)`` for a JSON object holding exactly ``required`` (+ ``optional``) keys."""
    doc = _object(doc, name)
    for key in required:
        _get(doc, key, name + ".")
    unknown = sorted(set(doc) - set(required) - set(optional))
    if unknown:
        raise FieldError(f"{name}.{printable(unknown[0])}", f"is not a key of {SCHEMA} {name} (known: "
                                                 f"{', '.join(required + optional)})")
    with field_errors(name):
        return klass(**doc)


def _fields_v2(doc: dict) -> dict:
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise FieldError(printable(unknown[0]), f"is not a key of {SCHEMA}")
    for key in _REQUIRED:
        _get(doc, key)
    n_layers = doc["n_layers"]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise FieldError("n_layers", f"must be a positive integer, got {n_layers!r}")
    dist = doc["distances_m"]
    if not isinstance(dist, list) or len(dist) != n_layers + 1:
        raise FieldError("distances_m", f"must be a list of n_layers + 1 = {n_layers + 1} distances, got {dist!r}")
    for key in ("layer_shape", "window_shape"):  # JSON lists only (a string would unpack as a pair)
        if not isinstance(doc[key], list):
            raise FieldError(key, f"must be a list [ny, nx] of two positive integers, got {doc[key]!r}")
    geometry = StackGeometry(doc["layer_shape"], doc["pitch_m"], doc["wavelength_m"], dist, doc["window_shape"])
    inp = _build(InputSpec, doc["input"], "input", ("encoding", "size_yx_m"), ("phase_scale",))
    dets_doc = doc["detectors"]
    if not isinstance(dets_doc, list) or not dets_doc:
        raise FieldError("detectors", "must be a non-empty list")
    detectors = [_build(Detector, d, f"detectors[{k}]", ("class_index", "center_xy_m", "size_xy_m"),
                        ("sign", "band")) for k, d in enumerate(dets_doc)]
    mat_doc = dict(_object(doc["material"], "material"))
    if "dispersion" in mat_doc:
        with field_errors("material"):
            mat_doc["dispersion"] = Dispersion.from_json(mat_doc["dispersion"])
    material = _build(Material, mat_doc, "material", ("name", "n", "kappa"),
                      ("wavelength_m", "source", "assumption", "dispersion"))
    spectrum = None if doc.get("spectrum") is None else Spectrum.from_json(doc["spectrum"])
    fabrication = _build(Fabrication, doc["fabrication"], "fabrication", ("base_m", "z_step_m"))
    modulation = doc.get("modulation", "phase")
    if modulation not in MODULATIONS:
        raise FieldError("modulation", f"must be 'phase' or 'complex', got {modulation!r}")
    for key in ("provenance", "metrics"):
        _object(doc.get(key, {}), key)
    return dict(geometry=geometry, input=inp, detectors=detectors, material=material, fabrication=fabrication,
                modulation=modulation, n_classes=doc.get("n_classes"), aperture=doc.get("aperture", "opaque"),
                provenance=doc.get("provenance", {}), metrics=doc.get("metrics", {}), spectrum=spectrum)


def _upgrade_v1(doc: dict, source: str) -> dict:
    """A ``d2nn.design/1`` document in ``/2`` form (the key names carry the axis order).

    ``/1`` had ``input.size_m`` as ``[h, w]`` but detector ``center_m`` as ``[x, y]`` and
    ``size_m`` as ``[w, h]``; ``/2`` keeps each order and says it in the name:
    ``input.size_yx_m``, ``detectors[k].center_xy_m``, ``detectors[k].size_xy_m``; the
    detector's ``class`` is ``class_index``. ``/1`` ignored unknown top-level keys and kept
    unknown keys inside ``input``/``material``/``fabrication``; here they are dropped (and
    listed in the warning).
    """
    out = {k: v for k, v in doc.items() if k in _TOP_KEYS}
    out["schema"] = SCHEMA
    dropped = [k for k in doc if k not in _TOP_KEYS]
    inp = doc.get("input")
    if isinstance(inp, dict):
        inp = dict(inp)
        if "size_m" in inp:
            inp["size_yx_m"] = inp.pop("size_m")
        for k in [k for k in inp if k not in ("encoding", "size_yx_m", "phase_scale")]:
            dropped.append(f"input.{k}")
            del inp[k]
        out["input"] = inp
    dets = doc.get("detectors")
    if isinstance(dets, list):
        new = []
        for d in dets:
            if isinstance(d, dict):
                d = dict(d)
                for old, key in (("class", "class_index"), ("center_m", "center_xy_m"), ("size_m", "size_xy_m")):
                    if old in d:
                        d[key] = d.pop(old)
            new.append(d)
        out["detectors"] = new
    for name, keys in (("material", ("name", "n", "kappa", "wavelength_m", "source", "assumption")),
                       ("fabrication", ("base_m", "z_step_m"))):
        if isinstance(doc.get(name), dict):
            out[name] = {k: v for k, v in doc[name].items() if k in keys}
            dropped += [f"{name}.{k}" for k in doc[name] if k not in keys]
    note = f"; keys not in {SCHEMA} dropped: {', '.join(dropped)}" if dropped else ""
    warnings.warn(f"{source}: read as schema {SCHEMA_V1}; re-save to upgrade to {SCHEMA}"
                  f" (scripts/upgrade_designs.py){note}", OldSchemaWarning, stacklevel=4)
    return out


# --------------------------------------------------------------------------- the folder
def load_design(path) -> Design:
    """Read and validate a design folder (or a path to its design.json).

    Everything is read through :mod:`diffractive._read` (regular files, size, UTF-8, JSON
    depth and integer limits, ``.npz`` headers). design.json is validated first; then
    ``phases.npz`` may hold only ``phases`` and (for ``"modulation": "complex"``, then
    required) ``amplitudes``, float arrays of exactly ``(n_layers, ny, nx)`` -- checked
    from their headers before anything is allocated -- with finite values. Every error is
    a :class:`DesignError` naming the file (and the field or array).
    """
    path = Path(path)
    folder = path.parent if path.name == "design.json" else path
    jpath, npath = folder / "design.json", folder / "phases.npz"
    if not folder.is_dir():
        raise DesignError(f"{folder}: no such design folder")
    try:
        for p in (jpath, npath):
            try:
                check_regular_file(p)
            except InputFileError as e:
                if e.problem != "no such file":
                    raise
                raise DesignFileError(p, "missing (a design folder holds design.json and phases.npz)") from None
        fields = _fields_from_json(read_json(jpath), str(jpath))
        g = fields["geometry"]
        shape = (g.n_layers,) + g.layer_shape
        complex_ = fields["modulation"] == "complex"
        arrays = read_npz(npath, kinds="f", shapes={"phases": shape, "amplitudes": shape})
        if "phases" not in arrays:
            raise DesignFileError(npath, "has no array named 'phases'")
        if complex_ != ("amplitudes" in arrays):
            raise DesignFileError(npath, "has an array 'amplitudes' but design.json says \"modulation\": \"phase\""
                                  if not complex_ else "has no array 'amplitudes', which design.json's "
                                  "\"modulation\": \"complex\" needs")
        for name, a in arrays.items():
            finite_array(npath, name, a, kinds="f")
        amplitudes = arrays.get("amplitudes")
        if amplitudes is not None and not np.all((amplitudes >= 0) & (amplitudes <= 1)):
            raise DesignFileError(npath, "must lie in [0, 1] (amplitude transmissions)", where="amplitudes")
    except InputFileError as e:
        if isinstance(e, DesignError):
            raise
        raise DesignFileError(e.path, e.problem, e.where) from None
    try:
        return _assemble(Design, fields, arrays["phases"], amplitudes)
    except DesignError as e:
        raise DesignError(f"{jpath}: {e}") from None


def save_design(design: Design, folder, *, overwrite=False) -> Path:
    """Write ``design`` to ``folder`` (created if needed), atomically per file; returns the folder.

    Refuses to replace an existing design.json unless ``overwrite``. A :class:`Design` is
    valid by construction, so nothing is checked here beyond its type.
    """
    if not isinstance(design, Design):
        raise InputTypeError(f"save_design needs a Design, got {type(design).__name__}")
    folder = Path(folder)
    doc = design.to_json()
    if (folder / "design.json").exists() and not overwrite:
        raise OutputExists(f"{folder}/design.json", "exists", {"overwrite": "replace it"})
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"phases": np.asarray(design.phases, dtype=np.float32)}
    if design.amplitudes is not None:
        arrays["amplitudes"] = np.asarray(design.amplitudes, dtype=np.float32)
    # phases first, design.json last: a folder with a design.json is always complete.
    atomic_write(folder / "phases.npz", lambda f: np.savez_compressed(f, **arrays))
    write_json_atomic(folder / "design.json", doc)
    return folder


# --------------------------------------------------------------------------- building one
def make_design(*, wavelength_m=LIN2018.wavelength_m, pitch_m=LIN2018.pitch_m, layer_shape=LIN2018.layer_shape,
                n_layers=LIN2018.n_layers, spacing_m=LIN2018.spacing_m, input_distance_m=None,
                output_distance_m=None, distances_m=None, window_shape=None, encoding="amplitude",
                input_size_yx_m=None, phase_scale=math.pi, detectors="lin", detector_size_m=None,
                detector_spacing_m=None, n_classes=10, material: Material | None = None,
                fabrication: Fabrication | None = None, phases=None, amplitudes=None, seed=0,
                provenance=None, spectrum: Spectrum | None = None) -> Design:
    """Build a :class:`Design` from a few parameters (defaults: :data:`diffractive.materials.LIN2018`).

    Distances: ``distances_m`` (n_layers + 1 values) if given, else ``spacing_m`` between
    layers and ``input_distance_m`` / ``output_distance_m`` (default ``spacing_m``) to the
    input and output planes. ``phases=None`` gives uniformly random phases from ``seed`` (a
    stand-in before training). ``detectors`` is ``"lin"``, ``"differential"`` or a list of
    :class:`~diffractive.detectors.Detector` (``"spectral"``: one detector read at each line of
    ``spectrum``, :func:`~diffractive.detectors.spectral_layout`); ``detector_size_m`` (side of each square) and
    ``detector_spacing_m`` go to the layout. The input image covers half the layer
    (``input_size_yx_m = (h, w)``) unless told otherwise. ``window_shape=None``: the default
    FFT window. ``spectrum``: the source's lines (default: monochromatic at ``wavelength_m``).
    """
    from .detectors import differential_layout, lin_layout, spectral_layout  # noqa: PLC0415

    grid = Grid(layer_shape, pitch_m)
    if isinstance(detectors, str):
        layouts = {"lin": lin_layout, "differential": differential_layout, "spectral": spectral_layout}
        if detectors not in layouts:
            raise FieldError("detectors", f"must be 'lin', 'differential', 'spectral' or a list, got {detectors!r}")
        if detectors == "spectral" and (spectrum is None or len(spectrum) != n_classes):
            have = 1 if spectrum is None else len(spectrum)
            raise FieldError("detectors", f"'spectral' reads class c at line c: it needs a spectrum of n_classes = "
                                          f"{n_classes} lines, got {have}")
        layout = layouts[detectors]
        detectors = layout(grid, n_classes, size_m=detector_size_m, spacing_m=detector_spacing_m)
    if input_size_yx_m is None:
        input_size_yx_m = (grid.extent_yx_m[0] / 2, grid.extent_yx_m[1] / 2)
    if distances_m is None:
        distances_m = [spacing_m if input_distance_m is None else input_distance_m]
        distances_m += [spacing_m] * (n_layers - 1)
        distances_m += [spacing_m if output_distance_m is None else output_distance_m]
    elif len(distances_m) != n_layers + 1:
        raise FieldError("distances_m", f"must hold n_layers + 1 = {n_layers + 1} values, got {list(distances_m)}")
    if phases is None:
        phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, (n_layers,) + tuple(layer_shape))
    return Design(
        geometry=StackGeometry(tuple(layer_shape), pitch_m, wavelength_m, tuple(distances_m), window_shape),
        input=InputSpec(encoding, tuple(input_size_yx_m), phase_scale),
        detectors=tuple(detectors), n_classes=n_classes,
        material=DEFAULT_MATERIAL if material is None else material,
        fabrication=LIN2018.fabrication if fabrication is None else fabrication,
        phases=np.asarray(phases, dtype=np.float32),
        amplitudes=None if amplitudes is None else np.asarray(amplitudes, dtype=np.float32),
        provenance=dict(provenance or {"seed": seed}), spectrum=spectrum)
