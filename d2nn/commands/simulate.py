"""``d2nn simulate``: simulated accuracy of a design on a dataset split."""
from __future__ import annotations

import json
import sys

from . import UserError


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
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.design}: {args.dataset}/{args.split}, {n} images ({out['source']} layers"
              + (f", {oversample} x {oversample} cells per pixel" if oversample != 1 else "") + ")")
        print(f"  accuracy {100 * out['accuracy']:.2f} % ({correct}/{n})")
        print(f"  mean fraction of output power on the detectors {out['power_on_detectors']:.3f}")
    return 0
