"""``d2nn diagnose``: fit how a printed stack deviates from its design from what the lab measured."""
from __future__ import annotations

import json
import sys

from . import UserError

HELP = "fit the as-built errors of a printed stack from its measurements and say what to fix"
DESCRIPTION = """\
Read what the lab measured on a printed stack (the files of 'd2nn evaluate': detector powers or raster
scans, with the dataset indices of the objects), simulate the same objects through the stack as built
(diffractive/asbuilt.py) and fit its errors -- per-layer lateral offsets and rotations, gaps, the detector
plane's offset, the printed phase scale, the source wavelength -- by multi-start Levenberg-Marquardt.
Reports each estimate with its standard error (or that the data do not determine it), the accuracy of
the fitted model beside the measured one, the accuracy if each error kind alone were corrected, and a
correction plan in millimetres. docs/diagnose.md describes the model and the fit."""


def register(sub):
    """Add the ``diagnose`` subcommand to ``sub`` (the ``d2nn`` subparsers); its ``func`` is :func:`run`."""
    from diffractive.measured.diagnose import DEFAULT_FIT, FIT_KINDS, MIN_EXPLAINED  # noqa: PLC0415

    p = sub.add_parser("diagnose", help=HELP, description=DESCRIPTION)
    p.add_argument("design", help="design folder (holding design.json and phases.npz)")
    p.add_argument("--measured", required=True, metavar="FILE", help="detector powers (.csv) or scans (.npz), with "
                                                                     "the inputs (an 'input' column / 'inputs' field)")
    p.add_argument("--background", metavar="FILE", help="dark measurement in the same format (subtracted)")
    p.add_argument("--gains", metavar="FILE", help="per-detector gains (as for evaluate); without it each "
                                                   "detector's gain is fitted along with the stack")
    p.add_argument("--dataset", help="dataset of the input indices (default: the design's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    p.add_argument("--fit", default=",".join(DEFAULT_FIT), metavar="KINDS",
                   help=f"comma-separated parameter kinds to fit, of {', '.join(FIT_KINDS)} "
                        f"(default {','.join(DEFAULT_FIT)})")
    p.add_argument("--budget", default="holder",
                   help="error budget (holder, hand or a TOML file): its printing model (absorption, printer step) is "
                        "taken as known, its sizes set the random starts and when a parameter counts as not "
                        "determined (default holder)")
    p.add_argument("--starts", type=int, default=4, help="fits from the designed stack and starts-1 budget draws "
                                                         "(default 4)")
    p.add_argument("--coarse-samples", type=int, default=32,
                   help="samples each start is fitted on before the best is refined on all (default 32)")
    p.add_argument("--coarse-on", choices=["auto", "scans", "powers"], default="auto",
                   help="what the starts of a scan are fitted to: the scans themselves, the detector powers read "
                        "out of them (a smoother landscape, fewer wrong basins), or auto (default): the scans, and "
                        "the powers as well when the scans' best start explains less than "
                        f"{100 * MIN_EXPLAINED:.0f} %% of them "
                        "(docs/diagnose.md). Refinement always uses the scans")
    p.add_argument("--max-samples", type=int, default=None, help="refine on at most this many samples (default all)")
    p.add_argument("--iterations", type=int, default=20, help="Levenberg-Marquardt steps of each start and of the refinement "
                                                              "(default 20)")
    p.add_argument("--oversample", type=int, default=1, help="simulation cells per printed pixel (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starts and sample subsets (default 0)")
    p.add_argument("--report", metavar="DIR", help="write fit.json, diagnosis.md and figures to DIR "
                                                   "(fit.json is what 'd2nn train --as-built' reads)")
    p.add_argument("--force", action="store_true", help="replace an existing, non-empty --report folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def _input_files(args) -> list:
    from pathlib import Path  # noqa: PLC0415

    design = Path(args.design)
    folder = design.parent if design.name == "design.json" else design
    files = [folder / "design.json", folder / "phases.npz", args.measured, args.background, args.gains]
    if Path(args.budget).exists():
        files.append(args.budget)
    return files


def _progress(quiet):
    if quiet:
        return None

    def line(stage, it, total, loss):
        print(f"diagnose: {stage}: step {it}/{total}, loss {loss:.5g}", file=sys.stderr, flush=True)
    return line


def run(args) -> int:
    """Run ``d2nn diagnose`` with the parsed ``args``; returns the exit code (0)."""

    from diffractive._io import refuse_overwriting_inputs  # noqa: PLC0415
    from diffractive.budget import load_budget  # noqa: PLC0415
    from diffractive.design import load_design  # noqa: PLC0415
    from diffractive.measured.diagnose import diagnose, parse_fit_kinds  # noqa: PLC0415
    from diffractive.measured.diagnose_report import write_report  # noqa: PLC0415
    from diffractive.measured.io import read_background, read_gains, read_measured  # noqa: PLC0415
    from diffractive.measured.report import check_report_dir  # noqa: PLC0415

    from .evaluate import _dataset_name, measured_split  # noqa: PLC0415

    for flag, value, lo in (("--starts", args.starts, 1), ("--coarse-samples", args.coarse_samples, 1),
                            ("--iterations", args.iterations, 1), ("--max-samples", args.max_samples or 1, 1)):
        if value < lo:
            raise UserError(f"{flag} must be at least {lo}, got {value}")
    try:
        kinds = parse_fit_kinds(args.fit)
    except Exception as e:  # D2NNError, worded with the flag already
        raise UserError(str(e)) from None
    if args.report:  # before anything is read or fitted
        refuse_overwriting_inputs(args.report, _input_files(args), option="--report")
        check_report_dir(args.report, args.force)
    design = load_design(args.design)
    budget = load_budget(args.budget)
    K, C = len(design.detectors), design.n_classes
    measured = read_measured(args.measured, K, C)
    background = read_background(args.background, measured) if args.background else None
    gains = read_gains(args.gains, K) if args.gains else None
    if measured.inputs is None:
        field = "column 'input'" if measured.kind == "detectors" else "field 'inputs'"
        raise UserError(f"{args.measured}: no {field}: diagnosing simulates the measured objects, so it needs their "
                        "dataset indices")
    if measured.kind == "scan" and gains is not None:
        raise UserError("--gains applies to detector powers; a scan has one probe")
    dataset, _ = _dataset_name(args, design)
    if dataset is None:
        raise UserError("no dataset known for the input indices: pass --dataset")
    images, _ = measured_split(args, design, measured, dataset)
    measured_accuracy = None
    if measured.kind == "scan":  # what 'd2nn evaluate' reports for the same file (registered scans)
        from diffractive.measured.evaluate import evaluate_measurement  # noqa: PLC0415
        from diffractive.simulate import simulate  # noqa: PLC0415

        sim = simulate(design, images[measured.inputs], keep_intensity=True)
        ev = evaluate_measurement(design, measured, background=background, simulation=sim, register="auto")
        measured_accuracy = ev.accuracy
    dg = diagnose(design, measured, images[measured.inputs], budget=budget, kinds=kinds, background=background,
                  gains=gains, starts=args.starts, coarse_samples=args.coarse_samples, fine_samples=args.max_samples,
                  max_iter=args.iterations, oversample=args.oversample, seed=args.seed, design_name=str(args.design),
                  progress=_progress(args.quiet), measured_accuracy=measured_accuracy, coarse_on=args.coarse_on)
    files = write_report(dg, args.report, force=args.force) if args.report else None
    if args.json:
        out = dg.to_json()
        if files:
            out["report"] = {"dir": str(args.report), "files": files}
        print(json.dumps(out, allow_nan=False))
    else:
        print(dg.summary())
        if files:
            print(f"  report       {args.report}/diagnosis.md, fit.json ('d2nn train --as-built {args.report}/fit.json')")
    return 0
