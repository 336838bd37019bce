"""``d2nn evaluate``: what the detectors measured on a printed stack, calibrated, registered and scored."""
from __future__ import annotations

import json

from . import UserError

HELP = "evaluate a lab measurement (detector powers or scans) of a printed design"
DESCRIPTION = """\
Read what the lab measured on a printed stack -- a CSV of detector powers (columns sample, label,
det0 ... det{K-1}, optional input and total) or an NPZ of raster scans of the output plane
(intensity, labels, pitch_m, optional origin_m and inputs) -- subtract the background, apply or
fit per-detector gains, register scans to the design, and report the accuracy with a 95 %
Wilson interval, the confusion matrix, margins, the power landing on the detectors and, when
the inputs are known, the agreement with the simulation of the same inputs. docs/evaluate.md
describes the formats."""


def register(sub):
    """Add the ``evaluate`` subcommand to ``sub`` (the ``d2nn`` subparsers); its ``func`` is :func:`run`."""
    from diffractive.measured.evaluate import REGISTER_MODES  # noqa: PLC0415

    p = sub.add_parser("evaluate", help=HELP, description=DESCRIPTION)
    p.add_argument("design", help="design folder (holding design.json and phases.npz)")
    p.add_argument("--measured", required=True, metavar="FILE", help="detector powers (.csv) or scans (.npz)")
    p.add_argument("--background", metavar="FILE", help="dark measurement in the same format; its rows (frames) "
                                                         "are averaged and subtracted")
    p.add_argument("--gains", metavar="FILE", help="per-detector gains to apply: JSON {\"gains\": [...]} (as written "
                                                   "by --report or measure-sim) or a one-row CSV det0,...")
    p.add_argument("--dataset", help="dataset of the 'input' indices (fashion-mnist, mnist, digits); default: the "
                                     "dataset the design was trained on, when the file gives inputs")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="split the input indices refer to (default: test)")
    p.add_argument("--register", default="auto", choices=REGISTER_MODES,
                   help="scan registration: offset (against the simulation of the inputs), full (offset, rotation "
                        "and scale), detectors (offset maximising the power on the detectors, no inputs needed), "
                        "none; auto = offset when the inputs are known, else none")
    p.add_argument("--apply-fitted-gains", action="store_true",
                   help="apply the gains fitted against the simulation before scoring (optimistic: fitted on the "
                        "same samples)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--report", metavar="DIR", help="write figures, report.md, index.html and evaluation.json to DIR")
    p.add_argument("--force", action="store_true", help="replace an existing, non-empty --report folder")
    p.set_defaults(func=run)


def _dataset_name(args, design):
    if args.dataset:
        return args.dataset, "--dataset"
    ds = design.provenance.get("dataset")
    name = ds.get("name") if isinstance(ds, dict) else ds
    if isinstance(name, str) and name in ("fashion-mnist", "mnist", "digits"):
        return name, "the design's provenance"
    return None, None


def _input_files(args) -> list:
    """The files this command reads: the design's design.json and phases.npz, --measured, --background, --gains."""
    from pathlib import Path  # noqa: PLC0415

    design = Path(args.design)
    folder = design.parent if design.name == "design.json" else design
    return [folder / "design.json", folder / "phases.npz", args.measured, args.background, args.gains]


def measured_split(args, design, measured, dataset):
    """(images, labels) of ``dataset``/``args.split`` as ``design`` was trained on it, checked
    against the measured file's input indices (one line naming the file, field and sample)."""
    import numpy as np  # noqa: PLC0415

    from training.datasets import design_split  # noqa: PLC0415

    try:
        images, labels = design_split(design, dataset, args.split)
    except ValueError as e:
        raise UserError(f"--dataset {dataset}: {e}") from None
    bad = measured.inputs >= len(images)
    if bad.any():
        i = int(np.argmax(bad))
        field = "column 'input'" if measured.kind == "detectors" else "field 'inputs'"
        raise UserError(f"{args.measured}: {field} of sample {measured.sample_ids[i]!r} = {int(measured.inputs[i])} "
                        f"is out of range: {dataset}/{args.split} has {len(images)} images")
    return images, labels


def run(args) -> int:
    """Run ``d2nn evaluate`` with the parsed ``args``; returns the exit code (0).

    When the file names inputs and a dataset is known, they are simulated on
    :func:`training.datasets.design_split` (the split the design was trained and validated on).
    """
    import numpy as np  # noqa: PLC0415

    from diffractive._io import refuse_overwriting_inputs  # noqa: PLC0415
    from diffractive.design import load_design  # noqa: PLC0415
    from diffractive.measured.evaluate import evaluate_measurement  # noqa: PLC0415
    from diffractive.measured.io import read_background, read_gains, read_measured  # noqa: PLC0415
    from diffractive.measured.report import check_report_dir, write_report  # noqa: PLC0415

    if args.report:  # before anything is read: the report folder may be replaced, so it holds no input
        refuse_overwriting_inputs(args.report, _input_files(args), option="--report")
        check_report_dir(args.report, args.force)
    design = load_design(args.design)
    K, C = len(design.detectors), design.n_classes
    measured = read_measured(args.measured, K, C)
    background = read_background(args.background, measured) if args.background else None
    gains = read_gains(args.gains, K) if args.gains else None

    simulation, sim_info, pre_notes, pre_warnings = None, None, [], []
    dataset, origin = _dataset_name(args, design)
    if measured.inputs is not None and dataset:
        from diffractive.simulate import simulate  # noqa: PLC0415

        images, ds_labels = measured_split(args, design, measured, dataset)
        differ = int(np.sum(ds_labels[measured.inputs] != measured.labels))
        if differ:
            pre_warnings.append(f"{differ} of {measured.n} labels differ from the labels {dataset}/{args.split} gives "
                                "the same inputs (the file's labels are used): is the dataset or split right?")
        simulation = simulate(design, images[measured.inputs], keep_intensity=measured.kind == "scan")
        sim_info = {"dataset": dataset, "split": args.split, "dataset_from": origin, "layers": "ideal (design phases)"}
    elif measured.inputs is not None:
        pre_notes.append("the file gives inputs but no dataset is known (--dataset): no comparison with the simulation")
    elif args.dataset:
        pre_notes.append(f"--dataset {args.dataset} given, but {args.measured} names no inputs ('input' column / "
                         "'inputs' field): no comparison with the simulation")
    # the conditions evaluate_measurement refuses, worded in this command's flags
    if args.apply_fitted_gains and simulation is None:
        raise UserError("--apply-fitted-gains needs the inputs (an 'input' column or 'inputs' field) and --dataset")
    if args.register in ("offset", "full") and measured.kind == "scan" and simulation is None:
        raise UserError(f"--register {args.register}: registering by '{args.register}' needs the simulated output of "
                        "the measured inputs (an 'inputs' field in the scan file and --dataset)")
    ev = evaluate_measurement(design, measured, design_name=str(args.design), background=background,
                              background_source=args.background, gains=gains, gains_source=args.gains,
                              simulation=simulation, sim_info=sim_info, register=args.register,
                              apply_fitted_gains=args.apply_fitted_gains)
    ev.warnings[:0] = pre_warnings
    ev.notes[:0] = pre_notes
    files = None
    if args.report:
        files = write_report(ev, args.report, scan=measured if measured.kind == "scan" else None,
                             detectors=design.detectors, force=args.force)
    if args.json:
        out = ev.to_json()
        if args.report:
            out["report"] = {"dir": str(args.report), "files": files}
        print(json.dumps(out, allow_nan=False))
    else:
        print(ev.summary())
        if args.report:
            print(f"  report       {args.report}/index.html (and report.md): {', '.join(f for f in files if f.endswith('.png'))}")
    return 0
