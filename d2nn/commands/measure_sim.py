"""``d2nn measure-sim``: synthetic lab measurements of a design, with realistic imperfections."""
from __future__ import annotations

import dataclasses
import json
import math
import re

from . import UserError
from .units import length_m_or_px, parse_angle, parse_length, to_metres

HELP = "synthetic lab data (detector powers or scans) from the simulation, with imperfections"
DESCRIPTION = """\
Simulate what the lab would measure on the printed stack for N test images: detector powers
(--format csv) or raster scans of the output plane (--format scan), with detector noise, a
spread of detector gains, a dark offset, and lateral misalignment of the layers and of the
detector plane. The stack is the as-built model of diffractive.asbuilt (the one that
'd2nn simulate --from-stl', the tolerance analysis and robust training use): layer offsets
are exact for any sub-pixel value (they move the plate, nothing is interpolated), and
--budget draws a whole as-built stack (offsets, rotations, gaps, printing, material, source)
from an error budget. --oversample K simulates K x K cells per printed pixel (rotations and
the flat-topped pixels resolved; K^2 times the work per FFT side). The output is what
'd2nn evaluate' reads; the true imperfections go to OUT.truth.json (its "gains" can be
passed to 'd2nn evaluate --gains'; "as_built" is the stack drawn), and with --dark a dark
measurement to OUT-dark.csv / OUT-dark.npz. Everything random comes from --seed."""

EPILOG = """\
--misalign items (repeatable; lengths with a unit: m, mm, um, or px = design pixels; a bare
number is refused, except 0):
  detector=DX,DY   detector plane (scanner frame) displaced by (DX, DY); detector=S: random, std S
  layers=S         every layer displaced at random, each component ~ N(0, S); layers=DX,DY: all alike
  layerN=DX,DY     layer N (1 = nearest the input) displaced
  rotation=A       detector plane / scan frame rotated by A (with a unit: 0.5deg, 0.01rad)
  scale=F          true scan step = F * pitch_m recorded in the file (a plain factor)
example: --misalign detector=0.3mm,-0.1mm --misalign layers=50um --misalign rotation=0.2deg

--budget NAME|FILE (a shipped budget, e.g. holder or hand, or a budget TOML file) draws one
as-built stack with --seed; --misalign layer offsets add to the drawn ones. The drawn
detector-plane offset and rotation become the detector-plane misalignment above (what
'd2nn evaluate' registers), so they cannot be combined with --misalign detector=/rotation=.
example: --budget holder --seed 3 --oversample 2"""


def register(sub):
    """Add the ``measure-sim`` subcommand to ``sub`` (the ``d2nn`` subparsers); its ``func`` is :func:`run`."""
    import argparse  # noqa: PLC0415

    p = sub.add_parser("measure-sim", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("design", help="design folder (holding design.json and phases.npz)")
    p.add_argument("--dataset", required=True, help="fashion-mnist, mnist, digits")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    p.add_argument("--samples", type=int, required=True, metavar="N",
                   help="number of test objects (balanced over classes, chosen with --seed)")
    p.add_argument("--noise", type=float, default=0.0, metavar="F",
                   help="additive Gaussian detector noise, std as a fraction of the mean largest detector power "
                        "(scan: of the mean peak pixel); default 0")
    p.add_argument("--detector-gain-spread", type=float, default=0.0, metavar="F",
                   help="log-normal spread of per-detector gains (0.05 = about 5 %%), csv only; default 0")
    p.add_argument("--dark", type=float, default=0.0, metavar="F",
                   help="dark offset, as a fraction of the same reference as --noise; also writes a dark "
                        "measurement next to --out")
    p.add_argument("--misalign", action="append", default=[], metavar="KEY=VALUE", help="see below; repeatable")
    p.add_argument("--budget", default=None, metavar="NAME|FILE",
                   help="draw the stack as built from this error budget (shipped: holder, hand; or a TOML file) "
                        "with --seed; see below")
    p.add_argument("--oversample", type=int, default=1, metavar="K",
                   help="simulation cells per printed pixel along each axis (1 ... 8; default 1)")
    p.add_argument("--layer-shift", default=None, help=argparse.SUPPRESS)  # removed: refused with a message
    p.add_argument("--scan-pitch", type=length_m_or_px, default=None, metavar="LENGTH",
                   help="scan step (default: the design pitch); e.g. 0.5mm or 1px")
    p.add_argument("--format", required=True, choices=["csv", "scan"], dest="fmt")
    p.add_argument("--out", required=True, metavar="FILE", help=".csv for --format csv, .npz for --format scan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.set_defaults(func=run)


def parse_misalign(specs, n_layers: int, pitch_m: float, rng) -> dict:
    """Parse ``--misalign`` items into the typed values of
    :class:`diffractive.measured.synthetic.Imperfections`: ``detector_offset_m`` (dx, dy),
    ``detector_rotation_rad``, ``scan_scale`` and ``layer_offsets_m`` (n_layers, 2).

    Items (lengths as in :func:`d2nn.commands.units.parse_length`, with ``px`` = ``pitch_m``):
    ``detector=DX,DY`` (or ``detector=S``: random, each component ~ N(0, S)),
    ``layers=S`` (each layer random, components ~ N(0, S)) or ``layers=DX,DY`` (all layers),
    ``layerN=DX,DY`` (layer N, counted from 1 at the input), ``rotation=ANGLE`` (detector
    plane / scan frame, with a unit), ``scale=F`` (true scan step / recorded pitch_m).
    Random offsets are drawn from ``rng`` in the order the items are given. Raises
    :class:`UserError` naming the item.
    """
    import numpy as np  # noqa: PLC0415

    out = {"detector_offset_m": (0.0, 0.0), "detector_rotation_rad": 0.0, "scan_scale": 1.0,
           "layer_offsets_m": np.zeros((n_layers, 2))}

    def pair_or_sigma(key, value):
        parts = value.split(",")
        if len(parts) == 1:
            s = parse_length(parts[0], pitch_m)
            if s < 0:
                raise UserError(f"--misalign {key}={value}: a single value is a standard deviation and must be >= 0")
            return None, s
        if len(parts) != 2:
            raise UserError(f"--misalign {key}={value}: give DX,DY or a single standard deviation")
        return (parse_length(parts[0], pitch_m), parse_length(parts[1], pitch_m)), None

    for spec in specs or []:
        if "=" not in spec:
            raise UserError(f"--misalign {spec!r}: expected KEY=VALUE (detector=, layers=, layerN=, rotation=, scale=)")
        key, value = (s.strip() for s in spec.split("=", 1))
        key = key.lower()
        try:
            if key == "detector":
                pair, sigma = pair_or_sigma(key, value)
                out["detector_offset_m"] = pair if pair else tuple(float(v) for v in rng.normal(0, sigma, 2))
            elif key == "layers":
                pair, sigma = pair_or_sigma(key, value)
                out["layer_offsets_m"] = (np.tile(pair, (n_layers, 1)) if pair
                                          else rng.normal(0, sigma, (n_layers, 2)))
            elif re.fullmatch(r"layer\d+", key):
                n = int(key[5:])
                if not 1 <= n <= n_layers:
                    raise UserError(f"--misalign {spec}: the design has layers 1 ... {n_layers}")
                pair, sigma = pair_or_sigma(key, value)
                out["layer_offsets_m"][n - 1] = pair if pair else rng.normal(0, sigma, 2)
            elif key == "rotation":
                out["detector_rotation_rad"] = parse_angle(value)
            elif key == "scale":
                try:
                    s = float(value)
                except ValueError:
                    s = math.nan
                if not (math.isfinite(s) and s > 0):
                    raise UserError(f"--misalign scale={value}: must be a positive number")
                out["scan_scale"] = s
            else:
                raise UserError(f"--misalign {spec!r}: unknown key {key!r} (detector, layers, layerN, rotation, scale)")
        except UserError as e:
            msg = str(e)
            raise UserError(msg if msg.startswith("--misalign") else f"--misalign {spec}: {msg}") from None
    return out


def _draw_budget(name, seed, design, mis):
    """One :class:`~diffractive.asbuilt.AsBuilt` drawn from budget ``name`` with ``seed``, and the budget.

    The generator is ``default_rng([seed, 2])``: a stream of its own (the samples, gains and
    noise use ``seed``, random ``--misalign`` values ``[seed, 1]``), so the drawn errors are
    not correlated with the detector gains or the noise.
    Refuses a draw with detector-plane errors when ``--misalign`` already set the detector
    plane (``mis``, :func:`parse_misalign`'s values): the two would have to be composed.
    """
    import numpy as np  # noqa: PLC0415

    from diffractive.budget import load_budget  # noqa: PLC0415

    budget = load_budget(name)
    ab = budget.draw(np.random.default_rng([seed, 2]), design.n_layers, design.fabrication.z_step_m)
    drawn = tuple(ab.detector_offset_xy_m) != (0.0, 0.0) or ab.detector_rotation_rad != 0
    given = tuple(mis["detector_offset_m"]) != (0.0, 0.0) or mis["detector_rotation_rad"] != 0
    if drawn and given:
        raise UserError(f"--budget {name} draws the detector plane's offset and rotation; drop --misalign "
                        "detector=/rotation= or use a budget without detector_offset_m / detector_rotation_deg")
    return ab, budget


def _outputs(out, fmt, dark):
    from pathlib import Path  # noqa: PLC0415

    out = Path(out)
    want = ".csv" if fmt == "csv" else ".npz"
    if out.suffix.lower() != want:
        raise UserError(f"--out {out}: --format {fmt} writes a {want} file")
    paths = {"data": out, "truth": out.with_name(out.name + ".truth.json")}
    if dark:
        paths["dark"] = out.with_name(out.stem + "-dark" + want)
    return paths


def _input_files(args) -> list:
    """The files this command reads: the design's design.json and phases.npz, and a --budget file."""
    from pathlib import Path  # noqa: PLC0415

    design = Path(args.design)
    folder = design.parent if design.name == "design.json" else design
    files = [folder / "design.json", folder / "phases.npz"]
    if args.budget is not None and Path(args.budget).exists():
        files.append(Path(args.budget))
    return files


def run(args) -> int:
    """Run ``d2nn measure-sim`` with the parsed ``args``; returns the exit code (0).

    The images come from :func:`training.datasets.design_split` (the split the design was
    trained and validated on).
    """
    import sys  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from diffractive.asbuilt import check_oversample  # noqa: PLC0415
    from diffractive.design import load_design  # noqa: PLC0415
    from diffractive.errors import FieldError  # noqa: PLC0415
    from diffractive._io import refuse_overwriting_inputs  # noqa: PLC0415
    from diffractive.measured.io import check_output_file, detector_csv_bytes, scan_npz_bytes, write_files  # noqa: PLC0415
    from diffractive.measured.synthetic import Imperfections, choose_samples, simulate_lab  # noqa: PLC0415
    from training.datasets import design_split  # noqa: PLC0415

    if args.layer_shift is not None:
        raise UserError("--layer-shift is gone: layer offsets are now exact for any sub-pixel value (the plate "
                        "is moved in the propagation, nothing is interpolated); drop the option")
    try:
        oversample = check_oversample(args.oversample)
    except FieldError as e:
        raise UserError(f"--oversample {e.problem}") from None
    for name in ("noise", "detector_gain_spread", "dark"):
        v = getattr(args, name)
        if not np.isfinite(v) or v < 0:
            raise UserError(f"--{name.replace('_', '-')} must be a non-negative number, got {v}")
    if args.samples < 1:
        raise UserError(f"--samples must be a positive integer, got {args.samples}")
    if args.fmt == "scan" and args.detector_gain_spread:
        raise UserError("--detector-gain-spread applies to --format csv (a scan is taken with one probe)")
    paths = _outputs(args.out, args.fmt, args.dark > 0)
    inputs = _input_files(args)
    for p in paths.values():  # all outputs checked before any work; written together at the end (or none)
        refuse_overwriting_inputs(p, inputs, option="--out")
        check_output_file(p, overwrite=args.force)
    design = load_design(args.design)
    rng = np.random.default_rng([args.seed, 1])
    mis = parse_misalign(args.misalign, design.n_layers, design.pitch_m, rng)
    as_built, budget = None, None
    if args.budget is not None:  # the drawn detector-plane errors become the measurement frame's
        as_built, budget = _draw_budget(args.budget, args.seed, design, mis)
        mis["detector_offset_m"] = as_built.detector_offset_xy_m
        mis["detector_rotation_rad"] = as_built.detector_rotation_rad
        as_built = dataclasses.replace(as_built, detector_offset_xy_m=(0.0, 0.0), detector_rotation_rad=0.0)
    scan_pitch = to_metres(args.scan_pitch, design.pitch_m) if args.scan_pitch is not None else None
    if scan_pitch is not None and scan_pitch <= 0:
        raise UserError(f"--scan-pitch must be positive, got {scan_pitch:g} m")
    if args.fmt == "csv" and (scan_pitch is not None or mis["scan_scale"] != 1):
        raise UserError("--scan-pitch and --misalign scale= apply to --format scan")
    try:
        images, labels = design_split(design, args.dataset, args.split)
    except ValueError as e:
        raise UserError(f"--dataset {args.dataset}: {e}") from None
    if args.samples > len(labels):
        raise UserError(f"--samples {args.samples}: {args.dataset}/{args.split} has only {len(labels)} images")
    idx = choose_samples(labels, args.samples, seed=args.seed)
    imp = Imperfections(noise=args.noise, gain_spread=args.detector_gain_spread, dark=args.dark,
                        detector_offset_m=mis["detector_offset_m"], detector_rotation_rad=mis["detector_rotation_rad"],
                        scan_scale=mis["scan_scale"], layer_offsets_m=mis["layer_offsets_m"], as_built=as_built)
    progress = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(idx), unit="img", desc="measure-sim", leave=False)
        progress = lambda n: bar.update(n - bar.n)  # noqa: E731
    fmt = "detectors" if args.fmt == "csv" else "scan"
    lab = simulate_lab(design, images[idx], labels[idx], imperfections=imp, fmt=fmt, inputs=idx,
                       scan_pitch_m=scan_pitch, seed=args.seed, progress=progress, oversample=oversample)
    truth = dict(lab.truth, design=str(args.design), dataset=args.dataset, split=args.split,
                 budget=None if budget is None else budget.to_json(), files={k: str(v) for k, v in paths.items()})
    note = (f"d2nn measure-sim {args.design}: {args.dataset}/{args.split}, seed {args.seed}, noise {args.noise}, "
            f"gain spread {args.detector_gain_spread}, dark {args.dark}"
            + (f", budget {budget.name}" if budget is not None else "")
            + (f", oversample {oversample}" if oversample != 1 else "") + f"; truth in {paths['truth'].name}")
    if fmt == "detectors":
        data = detector_csv_bytes(lab.powers, lab.labels, lab.sample_ids, inputs=idx, comments=[note])
        dark = detector_csv_bytes(lab.dark, sample_ids=[f"dark{i}" for i in range(len(lab.dark))],
                                  comments=["dark measurement for " + paths["data"].name]) if lab.dark is not None else None
    else:
        data = scan_npz_bytes(lab.intensity, lab.pitch_m, lab.labels, lab.origin_m, inputs=idx)
        dark = scan_npz_bytes(lab.dark, lab.pitch_m) if lab.dark is not None else None
    # everything is computed; now write all files, or none (diffractive.measured.io.write_files)
    files = {paths["data"]: data, paths["truth"]: (json.dumps(truth, indent=1, allow_nan=False) + "\n").encode()}
    if dark is not None:
        files[paths["dark"]] = dark
    write_files(files, overwrite=args.force)

    if args.json:
        print(json.dumps({"out": str(paths["data"]), "truth": str(paths["truth"]),
                          "dark": str(paths["dark"]) if "dark" in paths else None, "n": len(idx), **{
                              k: truth[k] for k in ("format", "gains", "detector_offset_m", "layer_offsets_m",
                                                    "detector_rotation_rad", "scan_scale", "oversample",
                                                    "as_built")},
                          "budget": None if budget is None else budget.name}))
        return 0
    what = "detector powers" if fmt == "detectors" else (
        f"scans of {lab.intensity.shape[1]} x {lab.intensity.shape[2]} pixels at {1e3 * lab.pitch_m:.4g} mm")
    print(f"wrote {paths['data']}: {len(idx)} samples of {args.dataset}/{args.split} ({what}), "
          f"{len(design.detectors)} detectors")
    print(f"  noise        {args.noise:g} x reference level {truth['reference_level']:.4g} (additive Gaussian)")
    if fmt == "detectors":
        g = np.asarray(truth["gains"])
        print(f"  gains        spread {args.detector_gain_spread:g}: {g.min():.3f} ... {g.max():.3f}")
    lo = np.asarray(truth["layer_offsets_m"]) * 1e3
    if np.any(lo):
        print("  layers       offsets (mm) " + ", ".join(f"{l + 1}: ({x:+.3f}, {y:+.3f})" for l, (x, y) in enumerate(lo)))
    if budget is not None:
        print(f"  as built     drawn from budget {budget.name!r} (seed {args.seed}): "
              + (", ".join(budget.kinds) or "no error kinds")
              + f"; absorption {'on' if budget.absorption else 'off'}, quantised {'yes' if budget.quantise else 'no'}"
              + " (all values in the truth file's \"as_built\")")
    if oversample != 1:
        print(f"  oversample   {oversample} x {oversample} simulation cells per printed pixel")
    dx, dy = truth["detector_offset_m"]
    if dx or dy or truth["detector_rotation_rad"] or truth["scan_scale"] != 1:
        print(f"  detector     offset ({1e3 * dx:+.3f}, {1e3 * dy:+.3f}) mm, rotation "
              f"{np.degrees(truth['detector_rotation_rad']):+.3f} deg, scale {truth['scan_scale']:g}")
    if "noiseless_predictions" in truth:
        acc = float(np.mean(np.asarray(truth["noiseless_predictions"]) == lab.labels))
        print(f"  noiseless    accuracy of the misaligned stack before noise: {100 * acc:.1f} %")
    if "dark" in paths:
        print(f"  dark         {paths['dark']} (pass it as --background)")
    print(f"  truth        {paths['truth']}")
    print(f"next: d2nn evaluate {args.design} --measured {paths['data']}"
          + (f" --background {paths['dark']}" if "dark" in paths else "") + " --report DIR")
    return 0
