"""Export a design for printing: ``layer_NN.stl`` per layer, ``holder.stl``, ``manifest.json``.

All STL coordinates are millimetres (what slicers assume); the manifest says so and
records the material, the printer z step, the quantised base, per-file statistics and
SHA-256 digests. Nothing is half-written: everything is built in a temporary directory
next to the target and moved into place at the end (``manifest.json`` last); a failure
removes the temporary directory and leaves the target as it was.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffractive.design import write_json_atomic
from diffractive.errors import OutputExists

from diffractive.heights import base_steps, check_base, check_z_step, phase_period_m, phase_to_steps, relief_levels
from .holder import HolderSpec, build_holder
from .materials import FabricationError, Material, resolve_material
from .mesh import FabricationFileError, height_field_mesh, write_stl
from .plate import PlateSpec, plate_height_field, plate_layout
from .validate import PrinterSpec, edge_check, fits_build_area, printability

SCHEMA = "d2nn.export/1"
MANIFEST = "manifest.json"
VERIFY_AUTO_MAX_FACES = 5_000_000
CONVENTION = ("heights h = base + wrap(phi)/(2 pi) * lambda/(n-1), rounded to whole z steps (base too); "
              "transmission t = exp(i 2 pi (n-1) h/lambda) * exp(-2 pi kappa h/lambda) (exp(-i omega t) time "
              "convention, phase delay relative to air, as diffractive.layers applies exp(+i phi)); STL x, y = the "
              "design grid's x, y (pixel (i, j) at x = (j-(nx-1)/2) pitch, y = (i-(ny-1)/2) pitch); the flat "
              "side (z = 0) faces the source, the relief faces the detectors")


def layer_filename(index: int, n_layers: int) -> str:
    """STL file name of layer ``index`` (1-based) of ``n_layers``: ``layer_01.stl``, zero-padded to
    at least two digits (more when ``n_layers`` needs them)."""
    return f"layer_{index:0{max(2, len(str(n_layers)))}d}.stl"


@dataclass
class ExportResult:
    """What :func:`export_design` wrote: the folder ``out_dir``, the ``manifest`` (the dict
    written to manifest.json; lengths in mm) and the ``warnings`` (strings, also in the manifest)."""

    out_dir: Path
    manifest: dict
    warnings: list = field(default_factory=list)


def fabrication_settings(design, *, material: Material | None = None, z_step_m=None, base_m=None):
    """(material, z step, base) for an export: the arguments, else the design's values.

    ``z_step_m`` (printer layer thickness) and ``base_m`` (base under the relief) are in
    metres; ``None`` takes the design's ``fabrication`` values, ``material`` ``None`` the
    design's material. Returns (:class:`Material`, z step in m, base in m), validated.
    """
    mat = material if material is not None else resolve_material(design.material)
    z = check_z_step(design.fabrication.z_step_m if z_step_m is None else z_step_m)
    b = check_base(design.fabrication.base_m if base_m is None else base_m)
    return mat, z, b


def _check_target(out: Path, force: bool):
    try:
        if out.is_symlink() and not out.exists():
            raise FabricationError(f"{out} is a dangling symbolic link; remove it or choose another output folder")
        if out.exists() and not out.is_dir():
            raise FabricationError(f"{out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise OutputExists(out, "exists and is not empty", {"force": "replace the export in it"})
    except OSError as e:
        if isinstance(e, OutputExists):
            raise
        raise FabricationError(f"{out}: cannot be listed ({e.strerror or e})") from None


def _publish(staging: Path, out: Path, new_files: list[str]):
    """Move the staged files into ``out`` (manifest last)."""
    if not out.exists():
        os.rename(staging, out)
        return
    if not any(out.iterdir()):
        os.rmdir(out)
        os.rename(staging, out)
        return
    # --force on a non-empty directory: replace our files, keep anything else the user put there
    old_manifest = out / MANIFEST
    if old_manifest.exists():
        old_manifest.unlink()            # a folder without a manifest is an incomplete export
    for p in out.glob("layer_*.stl"):
        if p.name not in new_files:
            p.unlink()
    for name in new_files:
        if name != MANIFEST:
            os.replace(staging / name, out / name)
    os.replace(staging / MANIFEST, out / MANIFEST)
    shutil.rmtree(staging, ignore_errors=True)


@dataclass
class ExportPlan:
    """Everything decided before any file is written (see :func:`plan_export`).

    ``z_step_m`` and ``base_m`` in metres (the base as requested; ``base_levels`` is what is
    printed); ``frame_level`` the frame height in printer layers; ``levels`` (L, ny, nx)
    int32 pixel heights in printer layers; ``layouts`` one :class:`~.plate.PlateLayout` per
    layer (mm); ``printability`` a :class:`~.validate.Printability`; ``warnings`` strings.
    """

    material: Material
    z_step_m: float
    base_m: float                  # as requested
    base_levels: int               # base in printer layers
    relief_levels: int             # printer layers per 2 pi
    frame_level: int
    levels: np.ndarray             # (L, ny, nx) int32 heights in printer layers
    layouts: list
    printability: object
    warnings: list


def plan_export(design, *, material: Material | None = None, z_step_m=None, base_m=None,
                plate: PlateSpec | None = None, printer: PrinterSpec | None = None) -> ExportPlan:
    """Validate the settings and compute heights, plate layouts and printability (no files).

    ``z_step_m`` and ``base_m`` in metres (``None``: the design's); ``plate`` (frame
    geometry, mm) and ``printer`` default to :class:`PlateSpec` and :class:`PrinterSpec`.
    Raises :class:`FabricationError` when the base or the frame cannot be printed.
    """
    mat, z, b = fabrication_settings(design, material=material, z_step_m=z_step_m, base_m=base_m)
    plate = plate or PlateSpec()
    lam = float(design.wavelength_m)
    warnings: list[str] = []
    if mat.wavelength_m is not None and abs(mat.wavelength_m - lam) > 1e-3 * lam:
        warnings.append(f"material {mat.name!r} was characterised at {mat.wavelength_m * 1e3:.4g} mm but the design "
                        f"uses {lam * 1e3:.4g} mm")
    if design.amplitudes is not None:
        warnings.append("the design modulates amplitude too; a single-material printed layer reproduces only the "
                        "phases (its absorption follows its thickness)")
    levels = phase_to_steps(np.asarray(design.phases), lam, mat.n, z, b)       # (L, ny, nx) int32
    nb = base_steps(b, z)
    if nb < 1:
        raise FabricationError(f"base thickness {b * 1e3:.4g} mm is less than half a printer layer ({z * 1e3:.4g} mm): "
                               "pixels with zero phase would have no material; use a base of at least one z step")
    if abs(nb * z - b) > 1e-9 * max(b, z):
        warnings.append(f"base {b * 1e3:.4g} mm rounded to {nb} printer layers = {nb * z * 1e3:.4g} mm")
    n_rel = relief_levels(lam, mat.n, z)
    frame_level = nb + n_rel
    if plate.frame_height_mm is not None:
        frame_level = int(round(plate.frame_height_mm / (z * 1e3)))
        if frame_level < int(levels.max()):
            raise FabricationError(f"frame height {plate.frame_height_mm:g} mm is below the tallest pixel "
                                   f"({int(levels.max()) * z * 1e3:.4g} mm)")
    L, ny, nx = levels.shape
    pitch_mm, z_mm = design.pitch_m * 1e3, z * 1e3
    layouts = [plate_layout((ny, nx), pitch_mm, z_mm, frame_level, layer_number=i + 1, spec=plate, warnings=warnings)
               for i in range(L)]
    report = printability(levels, design.pitch_m, z, lam, mat.n, mat.kappa, frame_level=frame_level,
                          printer=printer or PrinterSpec())
    warnings += report.warnings
    return ExportPlan(mat, z, b, nb, n_rel, frame_level, levels, layouts, report, warnings)


def export_design(design, out_dir, *, material: Material | None = None, z_step_m=None, base_m=None,
                  plate: PlateSpec | None = None, holder: HolderSpec | None = None, printer: PrinterSpec | None = None,
                  force: bool = False, verify="auto", progress=None, design_path=None,
                  tolerance: dict | None = None) -> ExportResult:
    """Write the STL files and the manifest for ``design`` into ``out_dir``; returns an :class:`ExportResult`.

    ``material``, ``z_step_m``, ``base_m`` (metres), ``plate``, ``printer`` as for
    :func:`plan_export`; ``holder`` the holder geometry (:class:`HolderSpec`, mm). STL
    coordinates are millimetres. ``force`` replaces an earlier export in a non-empty
    ``out_dir`` (else :class:`~diffractive.errors.OutputExists`). ``design_path`` is recorded in
    the manifest. ``verify``: True checks every layer mesh (closed, consistently wound, no duplicate or
    degenerate faces) before writing it; "auto" does so for meshes up to
    ``VERIFY_AUTO_MAX_FACES`` faces. ``progress(message)`` is called as work proceeds.
    ``tolerance``: the design's tolerance summary (:func:`diffractive.tolerance.read_summary`),
    written into the manifest so that whoever assembles the stack knows how precise to be.
    """
    t_start = time.perf_counter()
    say = progress or (lambda msg: None)
    out = Path(out_dir)
    _check_target(out, force)
    plan = plan_export(design, material=material, z_step_m=z_step_m, base_m=base_m, plate=plate, printer=printer)
    mat, z, b, nb, n_rel = plan.material, plan.z_step_m, plan.base_m, plan.base_levels, plan.relief_levels
    levels, layouts, report, warnings = plan.levels, plan.layouts, plan.printability, list(plan.warnings)
    lam = float(design.wavelength_m)
    L, ny, nx = levels.shape
    pitch_mm, z_mm = design.pitch_m * 1e3, z * 1e3
    for w in warnings:
        say(f"warning: {w}")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)      # mkdtemp makes it private; the export is an ordinary folder
        layer_entries = []
        plane = np.cumsum(design.distances_m)[:-1] * 1e3
        for i in range(L):
            t0 = time.perf_counter()
            name = layer_filename(i + 1, L)
            hf = plate_height_field(levels[i], layouts[i])
            mesh = height_field_mesh(hf)
            verified = None
            if verify is True or (verify == "auto" and mesh.n_faces <= VERIFY_AUTO_MAX_FACES):
                chk = edge_check(mesh.faces, len(mesh.vertices))
                if not chk.ok:
                    raise FabricationError(f"internal error: the mesh of layer {i + 1} is not a closed, consistently "
                                           f"wound surface ({chk})")
                verified = True
            sha, vol = write_stl(staging / name, mesh.vertices, mesh.faces,
                                 header=f"d2nn layer {i + 1}/{L} units=mm")
            expected = hf.volume_mm3()
            if abs(vol - expected) > 1e-3 * expected:
                raise FabricationError(f"internal error: layer {i + 1} mesh volume {vol:.6g} mm^3 differs from its "
                                       f"height map's {expected:.6g} mm^3")
            lv = levels[i]
            layer_entries.append({
                "file": name, "layer": i + 1, "plane_mm": float(plane[i]),
                "min_height_mm": int(lv.min()) * z_mm, "max_height_mm": int(lv.max()) * z_mm,
                "min_level": int(lv.min()), "max_level": int(lv.max()),
                "volume_mm3": vol, "height_field_volume_mm3": expected, "faces": mesh.n_faces,
                "saddle_vertices": mesh.n_saddles, "verified": verified, "label": layouts[i].text, "sha256": sha})
            say(f"layer {i + 1}/{L}: {mesh.n_faces:,} faces, {vol:,.1f} mm^3 ({time.perf_counter() - t0:.2f} s)")
        lay0 = layouts[0]
        hres = build_holder(lay0.size_mm, lay0.thickness_mm, [d * 1e3 for d in design.distances_m], lay0.margin_mm,
                            holder)
        warnings += hres.warnings
        pr = printer or PrinterSpec()
        for what, size in (("plate", lay0.size_mm), ("holder", (hres.info["length_mm"], hres.info["width_mm"]))):
            if not fits_build_area(size, pr):
                warnings.append(f"the {what} ({size[0]:.1f} x {size[1]:.1f} mm) is larger than the printer's "
                                f"{pr.build_area_mm[0]:g} x {pr.build_area_mm[1]:g} mm build area")
                say(f"warning: {warnings[-1]}")
        sha_h, vol_h = write_stl(staging / "holder.stl", hres.vertices, hres.faces, header="d2nn holder units=mm")
        say(f"holder: {len(hres.faces):,} faces")
        manifest = {
            "schema": SCHEMA,
            "units": "mm",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "generator": _generator(),
            "design": {"path": None if design_path is None else str(design_path),
                       "wavelength_mm": lam * 1e3, "pitch_mm": pitch_mm, "layer_shape": [ny, nx], "n_layers": L,
                       "distances_mm": [d * 1e3 for d in design.distances_m], "aperture": design.aperture,
                       "provenance": dict(design.provenance),
                       # the source the stack was designed for: the heights are printed for wavelength_mm,
                       # and the design was trained to work with these lines (docs/physics.md, "Spectrum")
                       "source": {**design.lines.to_json(), "describe": design.lines.describe(),
                                  "monochromatic": design.is_monochromatic}},
            "material": mat.to_json(),
            "z_step_mm": z_mm,
            "base_mm": nb * z_mm,
            "base_requested_mm": b * 1e3,
            "phase_period_mm": phase_period_m(lam, mat.n) * 1e3,
            "relief_levels": n_rel,
            "convention": CONVENTION,
            "plate": lay0.to_json(),
            "layers": layer_entries,
            "holder": {"file": "holder.stl", "faces": int(len(hres.faces)), "volume_mm3": vol_h, "sha256": sha_h,
                       **hres.info},
            "printability": {"numbers": report.numbers, "warnings": report.warnings},
            "tolerance": tolerance if tolerance is not None else {
                "computed": False, "how": "d2nn tolerance DESIGN --dataset NAME --report DESIGN/tolerance"},
            "warnings": warnings,
            "seconds": round(time.perf_counter() - t_start, 3),
        }
        write_json_atomic(staging / MANIFEST, manifest)
        _publish(staging, out, [e["file"] for e in layer_entries] + ["holder.stl", MANIFEST])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, manifest, warnings)


def _generator() -> str:
    try:
        from diffractive import __version__  # noqa: PLC0415

        return f"d2nn {__version__}"
    except Exception:  # pragma: no cover
        return "d2nn"


def read_manifest(stl_dir) -> dict:
    """The manifest.json of the export in folder ``stl_dir``, as a dict (lengths in mm).

    Read through :func:`diffractive._read.read_json`; the fields the round trip uses are
    checked (:func:`check_manifest`). Raises :class:`~.mesh.FabricationFileError` (a
    :class:`FabricationError`) naming the file and the field.
    """
    from diffractive._read import InputFileError, check_regular_file, read_json  # noqa: PLC0415

    path = Path(stl_dir) / MANIFEST
    try:
        try:
            check_regular_file(path)
        except InputFileError as e:
            if e.problem != "no such file":
                raise
            raise FabricationFileError(path, f"missing (is {stl_dir} a 'd2nn export' directory?)") from None
        doc = read_json(path)
    except InputFileError as e:
        raise e if isinstance(e, FabricationFileError) else FabricationFileError(e.path, e.problem, e.where) from None
    check_manifest(doc, path)
    return doc


def check_manifest(doc, path=MANIFEST) -> None:
    """Raise :class:`~.mesh.FabricationFileError` naming ``path`` and the field unless the parsed
    manifest ``doc`` has what :mod:`fabrication.roundtrip` reads: ``schema``, ``units`` "mm",
    ``design.layer_shape`` (two positive integers), ``design.n_layers`` and ``design.pitch_mm``,
    ``z_step_mm`` (finite, > 0, within :data:`diffractive.design.LIMITS`), ``plate.active_mm``
    (x0 < x1, y0 < y1, finite; optional), and ``layers``: one object per layer with ``layer``
    numbered 1 .. n_layers, a plain file name ``file`` (no folder part) and an optional
    ``sha256`` string. ``material`` is checked where it is used (``material_from_dict``).
    """
    from diffractive.design import LIMITS  # noqa: PLC0415

    def bad(name, problem):
        return FabricationFileError(path, problem, where=f"field '{name}'")

    def obj(value, name):
        if not isinstance(value, dict):
            raise bad(name, f"must be an object, got {_short(value)}")
        return value

    def number(value, name, lo=0.0, hi=math.inf):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo < value <= hi:
            raise bad(name, "must be a finite number" + (f" > {lo:g}" if lo > -math.inf else "")
                      + (f" and at most {hi:g}" if hi < math.inf else "") + f", got {_short(value)}")
        return float(value)

    def count(value, name):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(name, f"must be a positive integer, got {_short(value)}")
        return value

    obj(doc, "(top level)")
    if doc.get("schema") != SCHEMA:
        raise bad("schema", f"must be {SCHEMA!r}, got {_short(doc.get('schema'))}")
    if doc.get("units") != "mm":
        raise bad("units", f"must be 'mm', got {_short(doc.get('units'))}")
    d = obj(doc.get("design"), "design")
    shape = d.get("layer_shape")
    if not isinstance(shape, list) or len(shape) != 2:
        raise bad("design.layer_shape", f"must be a list [ny, nx] of two positive integers, got {_short(shape)}")
    for k, v in enumerate(shape):
        count(v, f"design.layer_shape[{k}]")
    n_layers = count(d.get("n_layers"), "design.n_layers")
    number(d.get("pitch_mm"), "design.pitch_mm", 0.0, LIMITS["pitch_m"][1] * 1e3)
    lo, hi = LIMITS["fabrication.z_step_m"]
    if "z_step_mm" not in doc:
        raise bad("z_step_mm", "is missing")
    number(doc["z_step_mm"], "z_step_mm", 0.0, hi * 1e3)
    if doc["z_step_mm"] < lo * 1e3:
        raise bad("z_step_mm", f"must be at least {lo * 1e3:g} mm, got {doc['z_step_mm']!r}")
    plate = doc.get("plate")
    if plate is not None:
        active = obj(plate, "plate").get("active_mm")
        if active is not None:
            if not isinstance(active, list) or len(active) != 4:
                raise bad("plate.active_mm",
                          f"must be a list [x0, x1, y0, y1] of four numbers (mm), got {_short(active)}")
            for k, v in enumerate(active):
                number(v, f"plate.active_mm[{k}]", -math.inf)
            if not (active[0] < active[1] and active[2] < active[3]):
                raise bad("plate.active_mm", f"must have x0 < x1 and y0 < y1, got {active}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != n_layers:
        raise bad("layers", f"must be a list of design.n_layers = {n_layers} objects, got {_short(layers)}")
    for k, e in enumerate(layers):
        obj(e, f"layers[{k}]")
        count(e.get("layer"), f"layers[{k}].layer")
        name = e.get("file")
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
                or not name.isprintable():
            raise bad(f"layers[{k}].file", f"must be the plain name of a file in the export folder, got {_short(name)}")
        if e.get("sha256") is not None and not isinstance(e["sha256"], str):
            raise bad(f"layers[{k}].sha256", f"must be a string, got {_short(e['sha256'])}")
    files = [e["file"] for e in layers]
    for k, name in enumerate(files):
        if name in files[:k]:  # two plates cannot be one mesh: the second would be read as the first
            raise bad(f"layers[{k}].file", f"names {name!r}, the file of layers[{files.index(name)}] too")
    if sorted(e["layer"] for e in layers) != list(range(1, n_layers + 1)):
        raise bad("layers", f"must number its layers 1 .. {n_layers} once each, got {[e['layer'] for e in layers]}")


def _short(value) -> str:
    """``repr(value)``, cut to 60 characters (a manifest value in an error message)."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."
