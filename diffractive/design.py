"""The design folder: ``design.json`` + ``phases.npz`` (+ ``metrics.json``, ``figures/``).

Schema ``d2nn.design/1`` is documented in docs/design-format.md. Reading validates every
key and raises :class:`DesignError` naming the file and the field; writing goes through
temporary files renamed into place and refuses to overwrite an existing design unless
``overwrite=True``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ._io import atomic_write, write_json_atomic  # noqa: F401  (re-exported)
from .detectors import Detector
from .encoding import ENCODINGS
from .grid import Grid
from .stack import StackGeometry

SCHEMA = "d2nn.design/1"
APERTURES = ("opaque",)


class DesignError(ValueError):
    """A design folder or design.json is missing, malformed or inconsistent."""


@dataclass
class Design:
    """Everything needed to simulate, train further, fabricate and evaluate a stack.

    All lengths in metres, phases in radians (``phases``: (layers, ny, nx)).
    ``amplitudes`` (same shape, in [0, 1]) is present only for complex-modulation designs.
    """

    wavelength_m: float
    pitch_m: float
    layer_shape: tuple[int, int]
    distances_m: list[float]
    window_shape: tuple[int, int]
    input: dict
    detectors: list[Detector]
    material: dict
    fabrication: dict
    phases: np.ndarray
    amplitudes: np.ndarray | None = None
    n_classes: int = 10
    aperture: str = "opaque"
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.distances_m) - 1

    @property
    def grid(self) -> Grid:
        return Grid(self.layer_shape, self.pitch_m)

    @property
    def geometry(self) -> StackGeometry:
        return StackGeometry(self.layer_shape, self.pitch_m, self.wavelength_m, tuple(self.distances_m),
                             self.window_shape)

    def with_phases(self, phases, amplitudes=None) -> "Design":
        return replace(self, phases=np.asarray(phases), amplitudes=amplitudes)

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "wavelength_m": self.wavelength_m,
            "pitch_m": self.pitch_m,
            "layer_shape": list(self.layer_shape),
            "n_layers": self.n_layers,
            "distances_m": list(self.distances_m),
            "window_shape": list(self.window_shape),
            "aperture": self.aperture,
            "n_classes": self.n_classes,
            "input": dict(self.input),
            "detectors": [d.to_json() for d in self.detectors],
            "material": dict(self.material),
            "fabrication": dict(self.fabrication),
            "modulation": "complex" if self.amplitudes is not None else "phase",
            "provenance": dict(self.provenance),
            "metrics": dict(self.metrics),
        }


# --------------------------------------------------------------------------- validation
class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key, msg):
        raise DesignError(f"{self.source}: field '{key}' {msg}")

    def get(self, obj, key, where=""):
        name = f"{where}{key}"
        if not isinstance(obj, dict) or key not in obj:
            self.fail(name, "is missing")
        return obj[key]

    def number(self, obj, key, where="", positive=True, allow_zero=False):
        v = self.get(obj, key, where)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(f"{where}{key}", f"must be a finite number, got {v!r}")
        if positive and (v < 0 or (v == 0 and not allow_zero)):
            self.fail(f"{where}{key}", f"must be {'non-negative' if allow_zero else 'positive'}, got {v!r}")
        return float(v)

    def int_pair(self, obj, key, where=""):
        v = self.get(obj, key, where)
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)):
            self.fail(f"{where}{key}", f"must be a list of two positive integers, got {v!r}")
        return int(v[0]), int(v[1])

    def num_pair(self, obj, key, where="", positive=True):
        v = self.get(obj, key, where)
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            self.fail(f"{where}{key}", f"must be a list of two finite numbers, got {v!r}")
        if positive and not all(x > 0 for x in v):
            self.fail(f"{where}{key}", f"must hold positive numbers, got {v!r}")
        return float(v[0]), float(v[1])


def design_from_json(doc: dict, phases: np.ndarray, amplitudes=None, source="design.json") -> Design:
    """Validate a parsed design.json and build a :class:`Design` (raises :class:`DesignError`)."""
    r = _Reader(source)
    if not isinstance(doc, dict):
        raise DesignError(f"{source}: must hold a JSON object")
    schema = r.get(doc, "schema")
    if schema != SCHEMA:
        r.fail("schema", f"must be {SCHEMA!r}, got {schema!r}")
    wavelength = r.number(doc, "wavelength_m")
    pitch = r.number(doc, "pitch_m")
    layer_shape = r.int_pair(doc, "layer_shape")
    n_layers = r.get(doc, "n_layers")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        r.fail("n_layers", f"must be a positive integer, got {n_layers!r}")
    dist = r.get(doc, "distances_m")
    if not isinstance(dist, list) or len(dist) != n_layers + 1:
        r.fail("distances_m", f"must be a list of n_layers + 1 = {n_layers + 1} distances, got {dist!r}")
    distances = [r.number({f"distances_m[{i}]": d}, f"distances_m[{i}]") for i, d in enumerate(dist)]
    window = r.int_pair(doc, "window_shape")
    if window[0] < layer_shape[0] or window[1] < layer_shape[1]:
        r.fail("window_shape", f"{list(window)} must be at least layer_shape {list(layer_shape)}")
    aperture = doc.get("aperture", "opaque")
    if aperture not in APERTURES:
        r.fail("aperture", f"must be one of {APERTURES}, got {aperture!r}")
    inp = r.get(doc, "input")
    if not isinstance(inp, dict):
        r.fail("input", "must be an object")
    enc = r.get(inp, "encoding", "input.")
    if enc not in ENCODINGS:
        r.fail("input.encoding", f"must be one of {list(ENCODINGS)}, got {enc!r}")
    size = r.num_pair(inp, "size_m", "input.")
    extent = (layer_shape[0] * pitch, layer_shape[1] * pitch)
    if size[0] > extent[0] * (1 + 1e-9) or size[1] > extent[1] * (1 + 1e-9):
        r.fail("input.size_m", f"{list(size)} m is larger than the layer ({extent[0]:.4g} x {extent[1]:.4g} m)")
    if "phase_scale" in inp:
        r.number(inp, "phase_scale", "input.")
    dets_doc = r.get(doc, "detectors")
    if not isinstance(dets_doc, list) or not dets_doc:
        r.fail("detectors", "must be a non-empty list")
    detectors = []
    for k, d in enumerate(dets_doc):
        w = f"detectors[{k}]."
        cls = r.get(d, "class", w)
        if not isinstance(cls, int) or isinstance(cls, bool) or cls < 0:
            r.fail(w + "class", f"must be a non-negative integer, got {cls!r}")
        center = r.num_pair(d, "center_m", w, positive=False)
        dsize = r.num_pair(d, "size_m", w)
        sign = d.get("sign", 1)
        if sign not in (1, -1) or isinstance(sign, bool):
            r.fail(w + "sign", f"must be 1 or -1, got {sign!r}")
        if abs(center[0]) + dsize[0] / 2 > extent[1] / 2 * (1 + 1e-9) or abs(center[1]) + dsize[1] / 2 > extent[0] / 2 * (1 + 1e-9):
            r.fail(w + "center_m", f"puts the detector partly outside the output plane ({extent[1]:.4g} x {extent[0]:.4g} m)")
        detectors.append(Detector(cls, center, dsize, sign))
    n_classes = doc.get("n_classes", 1 + max(d.class_index for d in detectors))
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
        r.fail("n_classes", f"must be an integer >= 2, got {n_classes!r}")
    for c in range(n_classes):
        if not any(d.class_index == c and d.sign == 1 for d in detectors):
            r.fail("detectors", f"has no positive detector for class {c}")
    if any(d.class_index >= n_classes for d in detectors):
        r.fail("detectors", f"names a class >= n_classes ({n_classes})")
    mat = r.get(doc, "material")
    if not isinstance(mat, dict):
        r.fail("material", "must be an object")
    name = r.get(mat, "name", "material.")
    if not isinstance(name, str) or not name:
        r.fail("material.name", f"must be a non-empty string, got {name!r}")
    n = r.number(mat, "n", "material.")
    if n <= 1:
        r.fail("material.n", f"must be greater than 1 (a material denser than air), got {n!r}")
    r.number(mat, "kappa", "material.", allow_zero=True)
    fab = r.get(doc, "fabrication")
    if not isinstance(fab, dict):
        r.fail("fabrication", "must be an object")
    r.number(fab, "base_m", "fabrication.", allow_zero=True)
    r.number(fab, "z_step_m", "fabrication.")
    for key in ("provenance", "metrics"):
        if key in doc and not isinstance(doc[key], dict):
            r.fail(key, "must be an object")
    phases = np.asarray(phases)
    expected = (n_layers,) + layer_shape
    if phases.shape != expected:
        raise DesignError(f"{source}: phases have shape {phases.shape}, but design.json says {expected} "
                          "(n_layers, layer_shape)")
    if not np.issubdtype(phases.dtype, np.floating) or not np.all(np.isfinite(phases)):
        raise DesignError(f"{source}: phases must be finite real numbers")
    modulation = doc.get("modulation", "phase")
    if modulation not in ("phase", "complex"):
        r.fail("modulation", f"must be 'phase' or 'complex', got {modulation!r}")
    if modulation == "complex":
        if amplitudes is None:
            raise DesignError(f"{source}: modulation is 'complex' but phases.npz has no 'amplitudes' array")
        amplitudes = np.asarray(amplitudes)
        if amplitudes.shape != expected or not np.all((amplitudes >= 0) & (amplitudes <= 1)):
            raise DesignError(f"{source}: amplitudes must have shape {expected} and lie in [0, 1]")
    else:
        amplitudes = None
    return Design(wavelength_m=wavelength, pitch_m=pitch, layer_shape=layer_shape, distances_m=distances,
                  window_shape=window, input=dict(inp), detectors=detectors, material=dict(mat),
                  fabrication=dict(fab), phases=phases, amplitudes=amplitudes, n_classes=n_classes,
                  aperture=aperture, provenance=dict(doc.get("provenance", {})), metrics=dict(doc.get("metrics", {})))


def load_design(path) -> Design:
    """Read and validate a design folder (or a path to its design.json)."""
    path = Path(path)
    folder = path.parent if path.name == "design.json" else path
    jpath, npath = folder / "design.json", folder / "phases.npz"
    if not folder.is_dir():
        raise DesignError(f"{folder}: no such design folder")
    if not jpath.is_file():
        raise DesignError(f"{jpath}: missing (a design folder holds design.json and phases.npz)")
    if not npath.is_file():
        raise DesignError(f"{npath}: missing (a design folder holds design.json and phases.npz)")
    try:
        doc = json.loads(jpath.read_text())
    except json.JSONDecodeError as e:
        raise DesignError(f"{jpath}: not valid JSON ({e})") from None
    try:
        with np.load(npath) as z:
            if "phases" not in z:
                raise DesignError(f"{npath}: has no array named 'phases'")
            phases = z["phases"]
            amplitudes = z["amplitudes"] if "amplitudes" in z else None
    except (OSError, ValueError) as e:
        if isinstance(e, DesignError):
            raise
        raise DesignError(f"{npath}: cannot be read as .npz ({e})") from None
    return design_from_json(doc, phases, amplitudes, source=str(jpath))


def save_design(design: Design, folder, *, overwrite=False) -> Path:
    """Write ``design`` to ``folder`` (created if needed), atomically per file.

    Validates the design first (so nothing is written for an invalid one) and refuses to
    replace an existing design.json unless ``overwrite``.
    """
    folder = Path(folder)
    doc = design.to_json()
    design_from_json(json.loads(json.dumps(doc)), design.phases, design.amplitudes, source=f"{folder}/design.json")
    if (folder / "design.json").exists() and not overwrite:
        raise FileExistsError(f"{folder}/design.json exists; pass overwrite=True (--force) to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"phases": np.asarray(design.phases, dtype=np.float32)}
    if design.amplitudes is not None:
        arrays["amplitudes"] = np.asarray(design.amplitudes, dtype=np.float32)
    # phases first, design.json last: a folder with a design.json is always complete.
    atomic_write(folder / "phases.npz", lambda f: np.savez_compressed(f, **arrays))
    write_json_atomic(folder / "design.json", doc)
    return folder


# Lin et al. (Science 2018) printed in VeroBlackPlus RGD875; n at 0.4 THz from the same work.
DEFAULT_MATERIAL = {"name": "VeroBlackPlus RGD875", "n": 1.7227, "kappa": 0.031}
DEFAULT_FABRICATION = {"base_m": 0.5e-3, "z_step_m": 16e-6}


def make_design(*, wavelength_m=0.75e-3, pitch_m=0.4e-3, layer_shape=(200, 200), n_layers=5,
                spacing_m=30e-3, input_distance_m=None, output_distance_m=None, window_shape=None,
                encoding="amplitude", input_size_m=None, detectors="lin", detector_size_m=None,
                detector_spacing_m=None, n_classes=10, material=None, fabrication=None, phases=None,
                seed=0, provenance=None) -> Design:
    """Build a :class:`Design` from a few parameters (defaults: the Lin et al. 2018 geometry).

    ``phases=None`` gives uniformly random phases from ``seed`` (a stand-in before
    training). ``detectors`` is ``"lin"``, ``"differential"`` or a list of
    :class:`~diffractive.detectors.Detector`. The input image covers half the layer unless
    ``input_size_m`` says otherwise.
    """
    from .detectors import differential_layout, lin_layout  # noqa: PLC0415
    from .propagation import default_window  # noqa: PLC0415

    grid = Grid(layer_shape, pitch_m)
    if isinstance(detectors, str):
        if detectors not in ("lin", "differential"):
            raise ValueError(f"detectors must be 'lin', 'differential' or a list, got {detectors!r}")
        layout = lin_layout if detectors == "lin" else differential_layout
        detectors = layout(grid, n_classes, size_m=detector_size_m, spacing_m=detector_spacing_m)
    if input_size_m is None:
        input_size_m = [grid.extent_m[0] / 2, grid.extent_m[1] / 2]
    distances = [spacing_m if input_distance_m is None else input_distance_m]
    distances += [spacing_m] * (n_layers - 1)
    distances += [spacing_m if output_distance_m is None else output_distance_m]
    if phases is None:
        phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, (n_layers,) + tuple(layer_shape))
    design = Design(
        wavelength_m=float(wavelength_m), pitch_m=float(pitch_m), layer_shape=tuple(layer_shape),
        distances_m=[float(d) for d in distances],
        window_shape=tuple(default_window(layer_shape) if window_shape is None else window_shape),
        input={"encoding": encoding, "size_m": [float(v) for v in input_size_m]},
        detectors=list(detectors), n_classes=n_classes,
        material=dict(DEFAULT_MATERIAL if material is None else material),
        fabrication=dict(DEFAULT_FABRICATION if fabrication is None else fabrication),
        phases=np.asarray(phases, dtype=np.float32), provenance=dict(provenance or {"seed": seed}))
    design_from_json(json.loads(json.dumps(design.to_json())), design.phases, source="make_design")
    return design
