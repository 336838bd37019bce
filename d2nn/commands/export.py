"""``d2nn export``: STL files for printing a design's layers, a holder and a manifest."""
from __future__ import annotations

import sys

from . import UserError
from .units import length_m


def register(sub):
    """Add the ``export`` subcommand to ``sub`` (the ``d2nn`` subparsers); its ``func`` is :func:`run`."""
    p = sub.add_parser(
        "export", help="write printable STL files (layers, holder) for a design",
        description="Turn a design's phase maps into printed heights (material index and absorption, printer z "
                    "step, base) and write layer_01.stl ... layer_NN.stl, holder.stl and manifest.json to --out. "
                    "STL coordinates are millimetres. Material and fabrication settings default to the design's "
                    "(design.json 'material' and 'fabrication'). Lengths take a unit (16um, 0.6mm, 1e-3m); "
                    "see docs/fabrication.md.")
    p.add_argument("design", help="design folder (holding design.json and phases.npz)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (must be new or empty)")
    m = p.add_argument_group("material (default: the design's)")
    from fabrication.materials import material_names  # noqa: PLC0415

    m.add_argument("--material", metavar="NAME", help=f"a material from the table: {', '.join(material_names())}")
    m.add_argument("--material-file", metavar="TOML", help="a TOML file with name, n, kappa (at the design wavelength)")
    m.add_argument("--n", type=float, help="refractive index at the design wavelength (> 1)")
    m.add_argument("--kappa", type=float, help="extinction coefficient at the design wavelength (>= 0)")
    f = p.add_argument_group("printer (default: the design's 'fabrication' settings)")
    f.add_argument("--z-step", type=length_m, metavar="LENGTH", help="printer layer thickness, e.g. 16um")
    f.add_argument("--base", type=length_m, metavar="LENGTH", help="base thickness under the relief, e.g. 0.5mm")
    f.add_argument("--xy-resolution", type=length_m, metavar="LENGTH", default=None,
                   help="printer x/y resolution for the printability check (default 42um)")
    g = p.add_argument_group("plates")
    g.add_argument("--margin", type=length_m, metavar="LENGTH", default="5mm",
                   help="frame width around the active area (default 5mm)")
    g.add_argument("--verify", choices=["auto", "yes", "no"], default="auto",
                   help="check each layer mesh is closed and consistently wound before writing it "
                        "(auto: meshes up to 5 million faces)")
    p.add_argument("--tolerance", metavar="JSON", default=None,
                   help="tolerance.json of 'd2nn tolerance --report' to copy into manifest.json (default: "
                        "DESIGN/tolerance/tolerance.json if it exists)")
    p.add_argument("--force", action="store_true", help="replace an existing export in a non-empty DIR")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``d2nn export`` with the parsed ``args``; returns the exit code (0).

    Length options arrive in metres (:data:`.units.length_m`); ``--margin`` is passed on in mm.
    """
    from diffractive.design import load_design  # noqa: PLC0415
    from fabrication.export import export_design  # noqa: PLC0415
    from fabrication.materials import resolve_material  # noqa: PLC0415
    from fabrication.plate import PlateSpec  # noqa: PLC0415
    from fabrication.validate import PrinterSpec  # noqa: PLC0415

    if args.material and args.material_file:
        raise UserError("give --material or --material-file, not both")
    from pathlib import Path  # noqa: PLC0415

    from diffractive._io import refuse_overwriting_inputs  # noqa: PLC0415
    from diffractive.tolerance import DESIGN_REPORT, read_summary  # noqa: PLC0415

    folder = Path(args.design).parent if Path(args.design).name == "design.json" else Path(args.design)
    tolerance_file = args.tolerance or (folder / DESIGN_REPORT)
    # before anything is read: the export may replace files in --out, which must hold no input
    refuse_overwriting_inputs(args.out, [folder / "design.json", folder / "phases.npz", args.material_file,
                                         tolerance_file if Path(tolerance_file).exists() else None],
                              option="--out")
    design = load_design(args.design)
    material = resolve_material(design.material, name=args.material, n=args.n, kappa=args.kappa,
                                material_file=args.material_file)
    if args.xy_resolution is not None and not args.xy_resolution > 0:
        raise UserError(f"--xy-resolution must be positive, got {args.xy_resolution:g} m")
    printer = PrinterSpec() if args.xy_resolution is None else PrinterSpec(xy_resolution_m=args.xy_resolution)
    say = None if args.quiet else (lambda msg: print(f"export: {msg}", file=sys.stderr, flush=True))
    tolerance = None
    if args.tolerance is not None or Path(tolerance_file).is_file():
        tolerance = read_summary(tolerance_file)
    res = export_design(design, args.out, material=material, z_step_m=args.z_step, base_m=args.base,
                        plate=PlateSpec(margin_mm=args.margin * 1e3), printer=printer, force=args.force,
                        verify={"auto": "auto", "yes": True, "no": False}[args.verify], progress=say,
                        design_path=args.design, tolerance=tolerance)
    man = res.manifest
    x0, x1, y0, y1 = man["plate"]["outer_mm"]
    print(f"{args.design} -> {res.out_dir}: {man['design']['n_layers']} layers + holder (millimetres)")
    print(f"  material {man['material']['name']}: n = {man['material']['n']}, kappa = {man['material']['kappa']}")
    print(f"  z step {man['z_step_mm']:g} mm, base {man['base_mm']:g} mm, plates {x1 - x0:g} x {y1 - y0:g} x "
          f"{man['plate']['frame_thickness_mm']:g} mm, {sum(e['faces'] for e in man['layers']):,} faces in all")
    if tolerance is not None and "expected_accuracy" in tolerance:
        print(f"  as built under budget '{tolerance['budget']}': {100 * tolerance['expected_accuracy']:.1f} % expected, "
              f"5th percentile {100 * tolerance['p5_accuracy']:.1f} % (tolerances in manifest.json)")
    elif tolerance is None:
        print("  no tolerance analysis found: run 'd2nn tolerance' to know how precisely to assemble the stack")
    if res.warnings:
        print(f"{len(res.warnings)} warning(s), also in manifest.json", file=sys.stderr)
    return 0
