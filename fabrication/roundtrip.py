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
"""
from __future__ import annotations

import dataclasses
import warnings as _warnings
from pathlib import Path

import numpy as np

from .export import read_manifest
from .materials import FabricationError, Material, material_from_dict
from .mesh import read_stl_triangles, sha256_file


def heights_from_stl(path, shape, pitch_mm, z_step_mm, active_mm=None) -> np.ndarray:
    """Height of each pixel, in whole printer layers (int32 (ny, nx)), read from an STL file.

    ``active_mm`` = (x0, x1, y0, y1) of the active area (default: centred on the origin).
    Raises :class:`FabricationError` if a pixel centre has no flat top, two different
    tops, or a height that is not a whole number of ``z_step_mm`` layers.
    """
    ny, nx = shape
    p = float(pitch_mm)
    if active_mm is None:
        active_mm = (-nx * p / 2, nx * p / 2, -ny * p / 2, ny * p / 2)
    ax0, _, ay0, _ = (float(v) for v in active_mm)
    tri = read_stl_triangles(path).astype(np.float64)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(n, axis=1)
    up = (area2 > 0) & (n[:, 2] > 0.999 * area2)
    tri = tri[up]
    # pixel-centre index ranges covered by each triangle's bounding box
    lo, hi = tri[:, :, :2].min(axis=1), tri[:, :, :2].max(axis=1)
    ix0 = np.maximum(np.ceil((lo[:, 0] - ax0) / p - 0.5 - 1e-6), 0).astype(np.int64)
    ix1 = np.minimum(np.floor((hi[:, 0] - ax0) / p - 0.5 + 1e-6), nx - 1).astype(np.int64)
    iy0 = np.maximum(np.ceil((lo[:, 1] - ay0) / p - 0.5 - 1e-6), 0).astype(np.int64)
    iy1 = np.minimum(np.floor((hi[:, 1] - ay0) / p - 0.5 + 1e-6), ny - 1).astype(np.int64)
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
    man = read_manifest(stl_dir)
    d = man.get("design", {})
    ny, nx = design.layer_shape
    if list(d.get("layer_shape", [])) != [ny, nx] or int(d.get("n_layers", -1)) != design.n_layers:
        raise FabricationError(f"{stl_dir}/manifest.json: the export has {d.get('n_layers')} layers of "
                               f"{d.get('layer_shape')} pixels, the design {design.n_layers} of {[ny, nx]}")
    if abs(float(d.get("pitch_mm", -1)) - design.pitch_m * 1e3) > 1e-9 * design.pitch_m * 1e3 + 1e-12:
        raise FabricationError(f"{stl_dir}/manifest.json: pitch {d.get('pitch_mm')} mm differs from the design's "
                               f"{design.pitch_m * 1e3:g} mm")
    z_mm = float(man["z_step_mm"])
    active = man.get("plate", {}).get("active_mm")
    layers = sorted(man.get("layers", []), key=lambda e: e["layer"])
    if len(layers) != design.n_layers:
        raise FabricationError(f"{stl_dir}/manifest.json: lists {len(layers)} layers, the design has {design.n_layers}")
    out = np.empty((design.n_layers, ny, nx), dtype=np.int32)
    for i, e in enumerate(layers):
        path = stl_dir / e["file"]
        if not path.is_file():
            raise FabricationError(f"{path}: missing")
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
    printed = design if mat == design.material else dataclasses.replace(design, material=mat)
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
