"""``d2nn simulate``: simulated accuracy of a design on a dataset split."""
from __future__ import annotations

import json
import sys

from . import UserError
from .units import frequencies_hz


def register(sub):
    """Add the ``simulate`` subcommand to ``sub`` (the ``d2nn`` subparsers); its ``func`` is :func:`run`."""
    p = sub.add_parser("simulate", help="simulated accuracy of a design on a dataset",
                       description="Simulate a design on a dataset split and report its accuracy. With "
                                   "--from-stl the layers are re-read from exported STL files (heights, "
                                   "the material the export recorded and its absorption included) instead of "
                                   "the ideal phases, and simulated through the as-built model "
                                   "(diffractive.asbuilt). --oversample K resolves each printed pixel into "
                                   "K x K simulation cells (flat-topped pixels; powers in the same units).")
    p.add_argument("design", help="design folder (holding design.json and phases.npz)")
    p.add_argument("--dataset", required=True, help="fashion-mnist, mnist, digits")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples of the split")
    p.add_argument("--from-stl", metavar="DIR", default=None,
                   help="simulate the stack re-read from the STL files that 'd2nn export' wrote to DIR")
    p.add_argument("--oversample", type=int, default=1, metavar="K",
                   help="simulation cells per printed pixel along each axis (1 ... 8; default 1: the design grid)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda runs the CuPy core")
    p.add_argument("--frequencies", type=frequencies_hz, default=None, metavar="F",
                   help="a frequency sweep: accuracy with the source at each frequency alone (heights as printed, "
                        "the material's index at each frequency), e.g. 0.36THz:0.44THz:9 or 0.38THz,0.4THz")
    p.add_argument("--figure", default=None, metavar="PNG",
                   help="with --frequencies: draw accuracy against frequency into this PNG file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``d2nn simulate`` with the parsed ``args``; returns the exit code (0).

    The images come from :func:`training.datasets.design_split` (the split the design was
    trained and validated on).
    """
    import numpy as np  # noqa: PLC0415

    from diffractive.asbuilt import AsBuilt, check_oversample, simulate_built  # noqa: PLC0415
    from diffractive.design import load_design  # noqa: PLC0415
    from diffractive.errors import FieldError  # noqa: PLC0415
    from diffractive.simulate import simulate  # noqa: PLC0415
    from training.datasets import DatasetMissing, IdxFormatError, design_split  # noqa: PLC0415

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be a positive integer, got {args.limit}")
    try:
        oversample = check_oversample(args.oversample)
    except FieldError as e:
        raise UserError(f"--oversample {e.problem}") from None
    design = load_design(args.design)
    try:
        images, labels = design_split(design, args.dataset, args.split, limit=args.limit)
    except (DatasetMissing, IdxFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    printed, heights_m, as_built = design, None, None
    if args.from_stl:
        from fabrication.roundtrip import printed_from_stl  # noqa: PLC0415

        # the heights as printed, the material the export recorded, its absorption
        printed, heights_m, _ = printed_from_stl(design, args.from_stl)
        as_built = AsBuilt(absorption=True)
    backend = "cupy" if args.device == "cuda" else "numpy"
    progress = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(images), unit="img", desc="simulate", leave=False)
        progress = lambda n: bar.update(n - bar.n)  # noqa: E731
    if args.figure is not None and args.frequencies is None:
        raise UserError("--figure draws a frequency sweep: give --frequencies too")
    if args.figure is not None:
        from pathlib import Path  # noqa: PLC0415

        from diffractive._io import refuse_overwriting_inputs  # noqa: PLC0415

        folder = Path(args.design).parent if Path(args.design).name == "design.json" else Path(args.design)
        inputs = [folder / "design.json", folder / "phases.npz"] + ([Path(args.from_stl)] if args.from_stl else [])
        refuse_overwriting_inputs(Path(args.figure), inputs, option="--figure")
        if Path(args.figure).suffix.lower() != ".png":
            raise UserError(f"--figure {args.figure}: must name a .png file")
    if args.frequencies is not None:
        return _sweep(args, printed, images, labels, as_built, oversample, heights_m, backend)
    if heights_m is None and oversample == 1:  # the design as designed, on its grid
        result = simulate(design, images, batch_size=args.batch_size, backend=backend, progress=progress)
    else:
        result = simulate_built(printed, images, as_built, oversample=oversample, heights_m=heights_m,
                                batch_size=args.batch_size, backend=backend, progress=progress)
    correct = int(np.sum(result.predictions == labels))
    n = int(len(labels))
    out = {"design": str(args.design), "dataset": args.dataset, "split": args.split, "n": n,
           "correct": correct, "accuracy": correct / n if n else float("nan"),
           "source": "stl" if args.from_stl else "ideal", "oversample": oversample,
           "material": printed.material.to_json() if args.from_stl else None,
           "power_on_detectors": float(np.mean(result.powers.sum(1) / np.maximum(result.total_power, 1e-30)))}
    out["spectrum"] = None if design.is_monochromatic else _spectrum_record(design)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.design}: {args.dataset}/{args.split}, {n} images ({out['source']} layers"
              + (f", {oversample} x {oversample} cells per pixel" if oversample != 1 else "") + ")")
        if out["spectrum"] is not None:
            sp = out["spectrum"]
            print(f"  source {sp['describe']} (powers summed over the lines, weighted); worst-sampled line "
                  f"{sp['worst_line_thz']:.4g} THz keeps {100 * sp['worst_kept_fraction']:.1f} % of the grid's "
                  f"bandwidth")
        print(f"  accuracy {100 * out['accuracy']:.2f} % ({correct}/{n})")
        print(f"  mean fraction of output power on the detectors {out['power_on_detectors']:.3f}")
    return 0


def _spectrum_record(design, spectrum=None) -> dict:
    from diffractive.simulate import line_sampling  # noqa: PLC0415

    lines = design.lines if spectrum is None else spectrum
    samp = line_sampling(design, lines)
    worst = min(samp, key=lambda r: r["kept_fraction"])
    return {**lines.to_json(), "describe": lines.describe(), "dispersive": design.material.is_dispersive,
            "worst_line_thz": worst["frequency_thz"], "worst_kept_fraction": worst["kept_fraction"],
            "sampling": samp}


def _sweep(args, printed, images, labels, as_built, oversample, heights_m, backend) -> int:
    """``d2nn simulate --frequencies``: one monochromatic simulation per frequency."""
    from diffractive.simulate import frequency_sweep, line_sampling, plot_frequency_sweep  # noqa: PLC0415
    from diffractive.spectrum import Spectrum, frequency_hz  # noqa: PLC0415

    progress = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(args.frequencies), unit="freq", desc="sweep", leave=False)
        progress = lambda i: bar.update(i - bar.n)  # noqa: E731
    rows = frequency_sweep(printed, images, labels, args.frequencies, as_built=as_built, oversample=oversample,
                           heights_m=heights_m, batch_size=args.batch_size, backend=backend, progress=progress)
    samp = line_sampling(printed, Spectrum(tuple(r["wavelength_m"] for r in rows)))
    for r, s in zip(rows, samp):
        r["kept_fraction"] = s["kept_fraction"]
    f0 = frequency_hz(printed.wavelength_m) / 1e12
    out = {"design": str(args.design), "dataset": args.dataset, "split": args.split, "n": int(len(labels)),
           "source": "stl" if args.from_stl else "ideal", "design_frequency_thz": f0, "dispersive": printed.material.is_dispersive,
           "design_spectrum": None if printed.is_monochromatic else printed.lines.to_json(), "sweep": rows,
           "min_accuracy": min(r["accuracy"] for r in rows)}
    if args.figure is not None:
        plot_frequency_sweep({str(args.design): rows}, args.figure, design_frequency_thz=f0)
        out["figure"] = str(args.figure)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.design}: {args.dataset}/{args.split}, {len(labels)} images"
          + (f", layers re-read from {args.from_stl}" if args.from_stl else "") + ", source at one frequency at a time "
          f"(design frequency {f0:.4g} THz; material {'from its dispersion table' if out['dispersive'] else 'non-dispersive: one n and kappa at every frequency, an assumption'})")
    print("  frequency   accuracy   bandwidth kept")
    for r in rows:
        print(f"  {r['frequency_thz']:7.4f} THz  {100 * r['accuracy']:6.2f} %   {100 * r['kept_fraction']:5.1f} %")
    print(f"  lowest accuracy {100 * out['min_accuracy']:.2f} %")
    if args.figure is not None:
        print(f"  figure: {args.figure}")
    return 0
