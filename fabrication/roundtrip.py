"""From printed files back to optics: STL -> height map -> complex transmission.

:func:`heights_from_stl` reads an STL file on its own (it does not reuse the mesh
builder): it takes the upward-facing triangles, finds for each pixel centre of the
active area the triangle above it, and checks that the surface there is flat and lies on
a whole printer layer. :func:`printed_from_stl` does this for every layer of an export and
returns the heights in metres with the design carrying the export's material, ready for
:func:`diffractive.asbuilt.simulate_built` (``heights_m=``, with
``AsBuilt(absorption=True)``): ``d2nn simulate --from-stl`` simulates the stack as printed
through the one as-built model, at any oversampling. :func:`transmissions_from_stl` gives
the same stack's layer transmissions (:meth:`diffractive.asbuilt.BuiltStack.transmissions`:
:func:`diffractive.heights.height_to_transmission`, absorption included).

What is refused, always as one :class:`~diffractive.errors.FabricationError` line naming
the file (and the field): a manifest that :func:`~.export.read_manifest` refuses (not
UTF-8 JSON, gzip, a field of the wrong type or out of range, a layer file name with a
folder part, an active area that is not the design's ny x nx pixels); a material in the
manifest outside :data:`diffractive.design.LIMITS`; an STL that
:func:`~.mesh.read_stl_triangles` refuses (truncated -- a binary STL's declared triangle
count against its size --, damaged ASCII, no triangles, NaN or infinite coordinates); a
surface that is inside out (all triangles reversed) or has triangles reversed against
their neighbours (:func:`check_winding`); a pixel without one flat top on a whole printer
layer, or below 0 or above :data:`MAX_HEIGHT_MM`. Accepted: ASCII STL; an STL that differs
from the manifest's SHA-256 (with a warning); a surface that is not closed (a vertex moved
off, a facet missing) as long as every pixel has one flat top -- these heights are what
was asked for, and whether the file is printable is :func:`~.validate.stl_report`'s question.
"""
from __future__ import annotations

import dataclasses
import warnings as _warnings
from pathlib import Path

import numpy as np

from diffractive.errors import DesignError

from .export import read_manifest
from .materials import FabricationError, Material, material_from_dict
from .mesh import FabricationFileError, read_stl_triangles, sha256_file

#: Tallest pixel accepted when re-reading a layer (mm): a plate thicker than this is not a diffractive layer.
MAX_HEIGHT_MM = 100.0


def check_winding(path, tri) -> None:
    """Raise :class:`FabricationFileError` unless the triangles ``tri`` (F, 3, 3) of ``path`` are
    wound consistently and outward (normals out by the right-hand rule, as an STL requires).

    Vertices are merged by their coordinates (as a slicer does). A directed edge used twice
    means a triangle is reversed against its neighbours (or the surface is not manifold); a
    negative signed volume (divergence theorem) means every triangle is reversed -- the
    surface is inside out, and its upward faces would be the bottoms: a stack re-read flat.
    """
    t = np.asarray(tri, dtype=np.float64)
    vol = float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])).sum()) / 6.0
    if not vol > 0:
        raise FabricationFileError(path, f"is inside out: its signed volume is {vol:.6g} mm^3, not positive "
                                         "(every triangle wound clockwise seen from outside; flip them)")
    v = (np.asarray(tri, dtype=np.float32).reshape(-1, 3) + np.float32(0.0)).view(np.uint32).astype(np.uint64)
    order = np.lexsort((v[:, 2], (v[:, 0] << np.uint64(32)) | v[:, 1]))
    vs = v[order]
    new = np.ones(len(vs), dtype=bool)
    new[1:] = np.any(vs[1:] != vs[:-1], axis=1)
    ids = np.empty(len(vs), dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    f = ids.reshape(-1, 3)
    nv = int(ids.max()) + 1
    edges = np.sort(np.concatenate([f[:, 0] * nv + f[:, 1], f[:, 1] * nv + f[:, 2], f[:, 2] * nv + f[:, 0]]))
    twice = int(np.count_nonzero(edges[1:] == edges[:-1]))
    if twice:
        raise FabricationFileError(path, f"has {twice} edge(s) used twice in the same direction: some triangles are "
                                         "wound the wrong way (reversed) or the surface is not manifold")


def heights_from_stl(path, shape, pitch_mm, z_step_mm, active_mm=None) -> np.ndarray:
    """Height of each pixel, in whole printer layers (int32 (ny, nx)), read from an STL file.

    ``active_mm`` = (x0, x1, y0, y1) of the active area (default: centred on the origin).
    Raises :class:`FabricationError` if the file cannot be read (:func:`~.mesh.read_stl_triangles`:
    truncated, damaged, non-finite), is not wound consistently outward (:func:`check_winding`),
    or a pixel centre has no flat top, two different tops, a height below 0 or above
    :data:`MAX_HEIGHT_MM`, or one that is not a whole number of ``z_step_mm`` layers.
    """
    ny, nx = shape
    p = float(pitch_mm)
    if active_mm is None:
        active_mm = (-nx * p / 2, nx * p / 2, -ny * p / 2, ny * p / 2)
    ax0, _, ay0, _ = (float(v) for v in active_mm)
    tri = read_stl_triangles(path)
    check_winding(path, tri)
    tri = tri.astype(np.float64)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(n, axis=1)
    up = (area2 > 0) & (n[:, 2] > 0.999 * area2)
    tri = tri[up]
    # pixel-centre index ranges covered by each triangle's bounding box
    lo, hi = tri[:, :, :2].min(axis=1), tri[:, :, :2].max(axis=1)
    # clipped before the cast: a far-away vertex (1e30 mm) must not wrap around int64
    ix0 = np.clip(np.ceil((lo[:, 0] - ax0) / p - 0.5 - 1e-6), 0, nx).astype(np.int64)
    ix1 = np.clip(np.floor((hi[:, 0] - ax0) / p - 0.5 + 1e-6), -1, nx - 1).astype(np.int64)
    iy0 = np.clip(np.ceil((lo[:, 1] - ay0) / p - 0.5 - 1e-6), 0, ny).astype(np.int64)
    iy1 = np.clip(np.floor((hi[:, 1] - ay0) / p - 0.5 + 1e-6), -1, ny - 1).astype(np.int64)
    cx, cy = np.maximum(ix1 - ix0 + 1, 0), np.maximum(iy1 - iy0 + 1, 0)
    count = cx * cy
    keep = count > 0
    tri, ix0, iy0, cx, count = tri[keep], ix0[keep], iy0[keep], cx[keep], count[keep]
    if count.sum() > 50 * nx * ny + 1000:
        raise FabricationError(f"{path}: top faces span many pixels each; not a pixel height map as written by "
                               "'d2nn export'")
    t = np.repeat(np.arange(len(tri)), count)
    k = np.arange(len(t)) - np.repeat(np.cumsum(count) - count, count)
    px = ix0[t] + k % cx[t]
    py = iy0[t] + k // cx[t]
    X = ax0 + (px + 0.5) * p
    Y = ay0 + (py + 0.5) * p
    a, b, c = tri[t, 0], tri[t, 1], tri[t, 2]
    # barycentric test of the pixel centre against each candidate triangle (in x, y)
    d = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    l1 = ((b[:, 1] - c[:, 1]) * (X - c[:, 0]) + (c[:, 0] - b[:, 0]) * (Y - c[:, 1])) / d
    l2 = ((c[:, 1] - a[:, 1]) * (X - c[:, 0]) + (a[:, 0] - c[:, 0]) * (Y - c[:, 1])) / d
    l3 = 1 - l1 - l2
    eps = 1e-6
    inside = (l1 >= -eps) & (l2 >= -eps) & (l3 >= -eps)
    pix = (py * nx + px)[inside]
    z = (l1 * a[:, 2] + l2 * b[:, 2] + l3 * c[:, 2])[inside]
    zmax = np.full(nx * ny, -np.inf)
    zmin = np.full(nx * ny, np.inf)
    np.maximum.at(zmax, pix, z)
    np.minimum.at(zmin, pix, z)
    missing = ~np.isfinite(zmax)
    if missing.any():
        j = int(np.argmax(missing))
        raise FabricationError(f"{path}: {int(missing.sum())} pixel(s) have no top face (first: row {j // nx}, "
                               f"column {j % nx}); does the active area ({ny} x {nx} pixels of {p:g} mm) match?")
    # the surface over a pixel centre must be one flat top (float32 coordinates: ~1e-5 mm)
    tol = max(1e-4, 1e-3 * z_step_mm)
    if np.any(zmax - zmin > tol):
        j = int(np.argmax(zmax - zmin))
        raise FabricationError(f"{path}: pixel (row {j // nx}, column {j % nx}) has tops at different heights "
                               f"({zmin[j]:.6g} and {zmax[j]:.6g} mm)")
    if zmax.min() < -tol or zmax.max() > MAX_HEIGHT_MM:
        j = int(np.argmin(zmax)) if zmax.min() < -tol else int(np.argmax(zmax))
        raise FabricationError(f"{path}: pixel (row {j // nx}, column {j % nx}) is {zmax[j]:.6g} mm high, outside "
                               f"0 .. {MAX_HEIGHT_MM:g} mm")
    lev = np.rint(zmax / z_step_mm)
    err = np.abs(zmax - lev * z_step_mm)
    if np.any(err > tol):
        j = int(np.argmax(err))
        raise FabricationError(f"{path}: pixel (row {j // nx}, column {j % nx}) is {zmax[j]:.6g} mm high, not a whole "
                               f"number of {z_step_mm:g} mm printer layers")
    return lev.reshape(ny, nx).astype(np.int32)


def heights_from_export(design, stl_dir, check_sha=True):
    """Heights (L, ny, nx) int32 in printer layers of every layer of the export in ``stl_dir``, and its manifest.

    The manifest's layer shape, layer count and pitch must match ``design``; with
    ``check_sha`` a file whose SHA-256 differs from the manifest's is read with a warning.
    """
    stl_dir = Path(stl_dir)
    man = read_manifest(stl_dir)  # the fields used below are checked there
    d = man["design"]
    ny, nx = design.layer_shape
    if list(d["layer_shape"]) != [ny, nx] or d["n_layers"] != design.n_layers:
        raise FabricationError(f"{stl_dir}/manifest.json: the export has {d.get('n_layers')} layers of "
                               f"{d.get('layer_shape')} pixels, the design {design.n_layers} of {[ny, nx]}")
    if abs(float(d["pitch_mm"]) - design.pitch_m * 1e3) > 1e-9 * design.pitch_m * 1e3 + 1e-12:
        raise FabricationError(f"{stl_dir}/manifest.json: pitch {d.get('pitch_mm')} mm differs from the design's "
                               f"{design.pitch_m * 1e3:g} mm")
    z_mm = float(man["z_step_mm"])
    active = (man.get("plate") or {}).get("active_mm")
    if active is not None:  # the active area is the design's grid: ny x nx pixels of the pitch
        p_mm = design.pitch_m * 1e3
        for k, (lo, hi, n) in enumerate(((active[0], active[1], nx), (active[2], active[3], ny))):
            if abs((hi - lo) - n * p_mm) > 1e-6 * n * p_mm:
                raise FabricationFileError(stl_dir / "manifest.json", f"spans {hi - lo:.6g} mm along {'xy'[k]}, "
                                           f"not the {n} x {p_mm:g} mm of the design's pixels",
                                           where="field 'plate.active_mm'")
    layers = sorted(man["layers"], key=lambda e: e["layer"])
    out = np.empty((design.n_layers, ny, nx), dtype=np.int32)
    for i, e in enumerate(layers):
        path = stl_dir / e["file"]
        if not path.exists() and not path.is_symlink():
            k = man["layers"].index(e)
            raise FabricationFileError(path, f"missing (manifest.json field 'layers[{k}].file' names it)")
        if check_sha and e.get("sha256") and sha256_file(path) != e["sha256"]:
            _warnings.warn(f"{path} differs from the SHA-256 recorded in the manifest (edited after export?); "
                           "reading it anyway", stacklevel=2)
        out[i] = heights_from_stl(path, (ny, nx), design.pitch_m * 1e3, z_mm, active)
    return out, man


def printed_from_stl(design, stl_dir, material=None):
    """The stack as printed, from the STL files of an export: ``(printed_design, heights_m, manifest)``.

    ``heights_m`` (L, ny, nx) float64, metres: every pixel's printed height (whole printer
    layers, z step from the manifest; base included). ``printed_design`` is ``design`` with
    the material ``material`` (a :class:`Material` or ``{name, n, kappa}``) or else the one
    the manifest recorded. Simulate it with
    ``simulate_built(printed_design, images, AsBuilt(absorption=True), heights_m=heights_m)``.
    """
    levels, man = heights_from_export(design, stl_dir)
    if material is None:
        mat = material_from_dict(man.get("material"), source=f"{stl_dir}/manifest.json field 'material'")
    elif isinstance(material, Material):
        mat = material
    else:
        mat = material_from_dict(material)
    try:
        printed = design if mat == design.material else dataclasses.replace(design, material=mat)
    except DesignError as e:  # e.g. n = 1e300: finite, > 1, and a NaN transmission (diffractive.design.LIMITS)
        if material is None:
            raise FabricationFileError(Path(stl_dir) / "manifest.json", str(e)) from None
        raise FabricationError(f"material: {e}") from None
    z_m = float(man["z_step_mm"]) * 1e-3
    return printed, levels.astype(np.float64) * z_m, man


def transmissions_from_stl(design, stl_dir, material=None) -> np.ndarray:
    """Complex transmissions (L, ny, nx) complex64 of the layers as printed, from their STL files.

    Heights are recovered exactly (:func:`printed_from_stl`); the material is ``material``
    or else the manifest's. The base's uniform phase and absorption are included: the
    layers of :func:`diffractive.asbuilt.build` ``(printed_design, AsBuilt(absorption=True))``.
    """
    from diffractive.asbuilt import AsBuilt, build  # noqa: PLC0415

    printed, heights_m, _ = printed_from_stl(design, stl_dir, material)
    return build(printed, AsBuilt(absorption=True)).transmissions(heights_m=heights_m).astype(np.complex64)
