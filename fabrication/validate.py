"""Checks on meshes (closed, consistently wound, volume, bounds) and on printability.

``edge_check`` is a fast NumPy test on an indexed mesh (every directed edge exactly once
and its reverse present: closed, 2-manifold along edges, consistently wound).
``stl_report`` re-reads an STL file the way a slicer does - vertices merged by their
coordinates - and asks trimesh. ``printability`` turns a height map and the printer's
limits into numbers and warnings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from diffractive.heights import phase_period_m
from .materials import FabricationError


# --------------------------------------------------------------------------- meshes
@dataclass
class EdgeCheck:
    """What :func:`edge_check` found; counts are numbers of faces."""

    closed: bool              # every edge used by exactly two faces
    consistent: bool          # ... in opposite directions
    duplicate_faces: int
    degenerate_faces: int     # faces repeating a vertex index
    n_faces: int

    @property
    def ok(self) -> bool:
        """Closed, consistently wound, and no duplicate or degenerate faces."""
        return self.closed and self.consistent and not self.duplicate_faces and not self.degenerate_faces


def edge_check(faces, n_vertices=None) -> EdgeCheck:
    """Closedness and winding of an indexed triangle mesh, by sorting its directed edges.

    ``faces`` (F, 3) vertex indices; ``n_vertices`` defaults to the largest index + 1.
    """
    f = np.asarray(faces, dtype=np.int64)
    nv = int(f.max()) + 1 if n_vertices is None else int(n_vertices)
    degenerate = int(np.sum((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])))
    a = f.ravel()
    b = f[:, [1, 2, 0]].ravel()
    directed = np.sort(a * nv + b)
    unique_directed = not np.any(directed[1:] == directed[:-1])
    # closed under reversal <=> the sorted reversed edges are the same multiset
    has_reverse = bool(np.array_equal(directed, np.sort(b * nv + a)))
    del directed
    fs = np.sort(f, axis=1)
    if nv < 2**21:
        key = np.sort((fs[:, 0] * nv + fs[:, 1]) * nv + fs[:, 2])
        dup = int(np.sum(key[1:] == key[:-1]))
    else:
        k1 = fs[:, 0] * nv + fs[:, 1]
        o = np.lexsort((fs[:, 2], k1))
        k1, k2 = k1[o], fs[o, 2]
        dup = int(np.sum((k1[1:] == k1[:-1]) & (k2[1:] == k2[:-1])))
    # with unique directed edges, "every edge has its reverse" means each edge is in exactly two faces
    return EdgeCheck(closed=has_reverse, consistent=unique_directed and has_reverse, duplicate_faces=dup,
                     degenerate_faces=degenerate, n_faces=len(f))


def stl_report(path) -> dict:
    """What a slicer would see: load the STL, merge equal vertices, check with trimesh.

    Returns counts, flags, ``volume_mm3`` and ``bounds_mm`` ((2, 3): min and max corner) in
    the file's units (mm for ``d2nn export``).
    """
    import trimesh  # noqa: PLC0415

    from .mesh import read_stl_triangles  # noqa: PLC0415

    tri = read_stl_triangles(path)  # the one STL reader (FabricationFileError for a malformed file)
    m = trimesh.Trimesh(vertices=tri.reshape(-1, 3), faces=np.arange(3 * len(tri)).reshape(-1, 3), process=True)
    faces_sorted = np.sort(m.faces, axis=1)
    dup = len(faces_sorted) - len(np.unique(faces_sorted, axis=0))
    return {"faces": int(len(m.faces)), "vertices": int(len(m.vertices)), "watertight": bool(m.is_watertight),
            "winding_consistent": bool(m.is_winding_consistent), "volume_mm3": float(m.volume),
            "bounds_mm": m.bounds.tolist(), "duplicate_faces": int(dup),
            "degenerate_faces": int(np.sum(m.area_faces <= 0)), "bodies": int(m.body_count),
            "euler_number": int(m.euler_number)}


# --------------------------------------------------------------------------- printability
@dataclass
class PrinterSpec:
    """What the printer can do. Defaults: a Stratasys Objet30-class PolyJet printer
    (about 600 dpi in x/y, i.e. 42 um; 16 um layers in high-quality mode) - typical
    data-sheet values, not measured here; set your own."""

    xy_resolution_m: float = 42e-6
    min_feature_dots: float = 3.0       # a feature should span at least this many printer dots
    max_step_aspect: float = 3.0        # tallest step between neighbouring pixels / pitch
    min_base_m: float = 0.3e-3          # thinner bases warp or break
    max_thickness_m: float = 5e-3       # thicker plates absorb (and cost) a lot
    build_area_mm: tuple = (294.0, 192.0)   # tray of an Objet30-class printer (data sheet)


def fits_build_area(size_mm, printer: PrinterSpec) -> bool:
    """Whether a footprint ``size_mm`` = (a, b) in mm fits the printer's tray in either orientation."""
    a, b = sorted(float(v) for v in size_mm)
    A, B = sorted(float(v) for v in printer.build_area_mm)
    return a <= A and b <= B


@dataclass
class Printability:
    """``numbers`` (lengths in mm, phase errors in radians, amplitude transmissions as
    fractions; keys name the units) and ``warnings`` (strings)."""

    numbers: dict
    warnings: list = field(default_factory=list)


def printability(levels, pitch_m, z_step_m, wavelength_m, n, kappa, *, frame_level=None, min_frame_feature_m=None,
                 printer: PrinterSpec | None = None) -> Printability:
    """Numbers and warnings for a stack of height maps ``levels`` (L, ny, nx) in printer layers.

    ``pitch_m``, ``z_step_m``, ``wavelength_m`` and ``min_frame_feature_m`` in metres; ``n``
    and ``kappa`` the material's refractive index and extinction coefficient; ``frame_level``
    the frame height in printer layers (counts towards the total thickness). Returns a
    :class:`Printability`.
    """
    pr = printer or PrinterSpec()
    lv = np.asarray(levels)
    if lv.ndim == 2:
        lv = lv[None]
    z = float(z_step_m)
    h = lv.astype(np.float64) * z
    step = 0.0
    if lv.shape[2] > 1:
        step = max(step, float(np.abs(np.diff(lv, axis=2)).max()) * z)
    if lv.shape[1] > 1:
        step = max(step, float(np.abs(np.diff(lv, axis=1)).max()) * z)
    period = phase_period_m(wavelength_m, n)
    thickest = float(h.max()) if frame_level is None else max(float(h.max()), frame_level * z)
    smallest = float(pitch_m) if min_frame_feature_m is None else min(float(pitch_m), float(min_frame_feature_m))
    nums = {
        "pitch_mm": pitch_m * 1e3,
        "smallest_lateral_feature_mm": smallest * 1e3,
        "printer_xy_resolution_mm": pr.xy_resolution_m * 1e3,
        "tallest_step_mm": step * 1e3,
        "tallest_step_aspect": step / pitch_m,
        "min_height_mm": float(h.min()) * 1e3,
        "max_height_mm": float(h.max()) * 1e3,
        "total_thickness_mm": thickest * 1e3,
        "phase_levels_per_2pi": period / z,
        "max_quantisation_phase_error_rad": math.pi * z / period,
        "amplitude_transmission_thinnest": math.exp(-2 * math.pi * kappa * float(h.min()) / wavelength_m),
        "amplitude_transmission_thickest": math.exp(-2 * math.pi * kappa * float(h.max()) / wavelength_m),
    }
    w = []
    if smallest < pr.min_feature_dots * pr.xy_resolution_m:
        w.append(f"smallest lateral feature {smallest * 1e3:.3f} mm is only {smallest / pr.xy_resolution_m:.1f} "
                 f"printer dots of {pr.xy_resolution_m * 1e3:.3f} mm (want >= {pr.min_feature_dots:g}); "
                 "pixels will blur into each other")
    if step > pr.max_step_aspect * pitch_m:
        w.append(f"tallest step between neighbouring pixels is {step * 1e3:.3f} mm, {step / pitch_m:.1f} x the "
                 f"{pitch_m * 1e3:.3f} mm pitch (limit {pr.max_step_aspect:g}); thin free-standing columns may break")
    if float(h.min()) < pr.min_base_m:
        w.append(f"thinnest point of a layer is {float(h.min()) * 1e3:.3f} mm (< {pr.min_base_m * 1e3:.3f} mm); "
                 "the plate may warp or break - raise the base thickness (base_m)")
    if thickest > pr.max_thickness_m:
        w.append(f"total thickness {thickest * 1e3:.3f} mm exceeds {pr.max_thickness_m * 1e3:.3f} mm")
    if period / z < 8:
        w.append(f"z step {z * 1e3:.4f} mm gives only {period / z:.1f} height levels per 2 pi "
                 f"(max phase error {math.pi * z / period:.2f} rad)")
    if nums["amplitude_transmission_thickest"] < 0.5:
        w.append(f"absorption: the thickest pixel ({float(h.max()) * 1e3:.3f} mm) passes only "
                 f"{nums['amplitude_transmission_thickest'] ** 2 * 100:.1f} % of the power (kappa = {kappa:g})")
    return Printability(nums, w)


# --------------------------------------------------------------------------- external tools
_ADMESH_FIELDS = {
    "facets": r"Number of facets\s*:\s*(\d+)\s+(\d+)",
    "disconnected_1": r"Facets with 1 disconnected edge\s*:\s*(\d+)\s+(\d+)",
    "disconnected_2": r"Facets with 2 disconnected edges\s*:\s*(\d+)\s+(\d+)",
    "disconnected_3": r"Facets with 3 disconnected edges\s*:\s*(\d+)\s+(\d+)",
    "disconnected_total": r"Total disconnected facets\s*:\s*(\d+)\s+(\d+)",
    "parts": r"Number of parts\s*:\s*(\d+)",
    "degenerate": r"Degenerate facets\s*:\s*(\d+)",
    "edges_fixed": r"Edges fixed\s*:\s*(\d+)",
    "facets_removed": r"Facets removed\s*:\s*(\d+)",
    "facets_added": r"Facets added\s*:\s*(\d+)",
    "facets_reversed": r"Facets reversed\s*:\s*(\d+)",
    "backwards_edges": r"Backwards edges\s*:\s*(\d+)",
    "normals_fixed": r"Normals fixed\s*:\s*(\d+)",
    "volume": r"Volume\s*:\s*([-+0-9.eE]+)",
}


def parse_admesh(text: str) -> dict:
    """Numbers from ``admesh FILE`` output (it exits 0 even for broken meshes).

    Two-column fields give the original count (``*_final`` for the final one); ``volume``
    is in the file's units cubed (mm^3). ``ok`` is True when admesh found nothing to repair.
    Raises :class:`FabricationError` (a ValueError) if a field is missing.
    """
    import re  # noqa: PLC0415

    out = {}
    for key, pat in _ADMESH_FIELDS.items():
        m = re.search(pat, text)
        if m is None:
            raise FabricationError(f"admesh output has no '{key}' line (pattern {pat!r})")
        vals = m.groups()
        out[key] = float(vals[0]) if key == "volume" else int(vals[0])
        if len(vals) == 2:
            out[key + "_final"] = int(vals[1])
    repairs = ("disconnected_total", "degenerate", "edges_fixed", "facets_removed", "facets_added",
               "facets_reversed", "backwards_edges", "normals_fixed")
    out["ok"] = all(out[k] == 0 for k in repairs) and out["facets"] == out["facets_final"]
    return out


def parse_prusa_info(text: str) -> dict:
    """``key = value`` lines of ``prusa-slicer --info FILE`` (exits 0 even for broken meshes).

    Values stay strings; ``ok`` is True for a manifold mesh without open edges. Raises
    :class:`FabricationError` if the ``manifold`` or ``number_of_facets`` line is missing.
    """
    out = {}
    for line in text.splitlines():
        if " = " in line and not line.startswith("["):
            k, v = (s.strip() for s in line.split(" = ", 1))
            out[k] = v
    if "manifold" not in out or "number_of_facets" not in out:
        raise FabricationError("prusa-slicer --info output has no 'manifold' / 'number_of_facets' lines")
    out["ok"] = out["manifold"] == "yes" and out.get("open_edges", "0") == "0"
    return out
