"""``d2nn tolerance``: a design's accuracy as built, under an error budget and against each error alone."""
from __future__ import annotations

import json
import sys

from . import UserError
from .units import frequencies_hz


def register(sub):
    """Add the ``tolerance`` subcommand to ``sub`` (the ``d2nn`` subparsers); its ``func`` is :func:`run`."""
    p = sub.add_parser(
        "tolerance", help="accuracy of a design as built: under an error budget, and per error kind",
        description="Monte-Carlo tolerance analysis of a design (diffractive/tolerance.py): the expected "
                    "accuracy (mean, 95 % interval, 5th percentile over draws) when every error of the budget "
                    "is present at once, and one sweep per error kind (accuracy against its size alone) with "
                    "the size at which accuracy drops 1 and 5 points. Budgets: diffractive/budgets/*.toml "
                    "(holder, hand) or your own TOML file (docs/asbuilt.md).")
    p.add_argument("design", help="design folder (holding design.json and phases.npz)")
    p.add_argument("--dataset", required=True, help="fashion-mnist, mnist, digits")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    p.add_argument("--samples", type=int, default=2000, help="images scored per draw (default 2000)")
    p.add_argument("--draws", type=int, default=20, help="stacks drawn from the whole budget (default 20)")
    p.add_argument("--budget", default="holder", help="a shipped budget (holder, hand) or a budget TOML file "
                                                     "(default holder)")
    p.add_argument("--oversample", type=int, default=1,
                   help="simulation cells per printed pixel along each axis (default 1; lateral offsets are "
                        "exact at any k, rotations are resampled on the finer grid)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated error kinds to sweep (default: the budget's; 'none' for no sweeps)")
    p.add_argument("--sweep-draws", type=int, default=5, help="draws per sweep point (default 5)")
    p.add_argument("--sweep-samples", type=int, default=500, help="images per sweep draw (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    p.add_argument("--workers", type=int, default=None, help="parallel draws (default: all cores; 1 with --device cuda)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: every draw on the CuPy core (needs CuPy and a GPU)")
    p.add_argument("--frequencies", type=frequencies_hz, default=None, metavar="F",
                   help="also sweep the source frequency (each frequency alone, the budget's printing model, "
                        "no assembly error), e.g. 0.36THz:0.44THz:9; the report adds frequency.png")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="write tolerance.json, tolerance.md, tolerance.html and tolerance.png into DIR (new)")
    p.add_argument("--force", action="store_true", help="allow --report into a folder that holds files")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def _progress(quiet: bool):
    if quiet:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(unit="draw", desc="tolerance", leave=False)

        def tick(done, total):
            bar.total = total
            bar.update(done - bar.n)
        return tick
    last = [0.0]

    def line(done, total):
        if done == total or done / total >= last[0] + 0.1:
            last[0] = done / total
            print(f"tolerance: {done}/{total} draws", file=sys.stderr, flush=True)
    return line


#: the files diffractive.tolerance_report.write_report writes (tolerance.png only with sweeps)
REPORT_FILES = ("tolerance.json", "tolerance.md", "tolerance.html", "tolerance.png", "frequency.png")


def _input_files(args) -> list:
    """The files this command reads: the design's design.json and phases.npz, and a --budget file."""
    from pathlib import Path  # noqa: PLC0415

    design = Path(args.design)
    folder = design.parent if design.name == "design.json" else design
    files = [folder / "design.json", folder / "phases.npz"]
    if Path(args.budget).exists():
        files.append(Path(args.budget))
    return files


def _write_report_safely(result, out, write_report) -> None:
    """The report built in a temporary folder beside ``out``, then moved into place: a new
    ``out`` appears whole (one rename); into an existing folder (--force) each file is
    renamed in, replacing only the report's own files, so a failure never leaves a
    half-written file and never clears the folder."""
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        write_report(result, tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if not os.path.lexists(out):
            os.replace(tmp, out)
            return
        for name in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, name), out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    import os  # noqa: PLC0415

    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(args) -> int:
    """Run ``d2nn tolerance`` with the parsed ``args``; returns the exit code (0)."""
    from pathlib import Path  # noqa: PLC0415

    import os  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from diffractive._io import refuse_overwriting_inputs  # noqa: PLC0415
    from diffractive.budget import KINDS, load_budget  # noqa: PLC0415
    from diffractive.design import load_design  # noqa: PLC0415
    from diffractive.tolerance import analyse  # noqa: PLC0415
    from diffractive.tolerance_report import markdown, write_report  # noqa: PLC0415
    from training.datasets import DatasetMissing, IdxFormatError, design_split  # noqa: PLC0415

    for flag, value in (("--samples", args.samples), ("--draws", args.draws), ("--sweep-draws", args.sweep_draws),
                        ("--sweep-samples", args.sweep_samples)):
        if value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    if args.report is not None:
        out = Path(args.report)
        refuse_overwriting_inputs(out, _input_files(args), option="--report")
        if os.path.lexists(out) and not out.exists():
            raise UserError(f"--report {out} is a dangling symbolic link; remove it or name another folder")
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
            raise UserError(f"--report {out} exists and is not an empty folder (pass --force to write into it)")
        for name in REPORT_FILES:
            if (out / name).is_dir() or ((out / name).exists() and not (out / name).is_file()):
                raise UserError(f"--report {out}: {out / name} exists and is not a file")
    design = load_design(args.design)
    budget = load_budget(args.budget)
    kinds = None
    if args.kinds is not None:
        kinds = [] if args.kinds.strip() == "none" else [k.strip() for k in args.kinds.split(",") if k.strip()]
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise UserError(f"--kinds: unknown error kind {bad[0]!r} (kinds: {', '.join(KINDS)})")
    try:
        images, labels = design_split(design, args.dataset, args.split, limit=args.samples)
    except (DatasetMissing, IdxFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    backend, workers = "numpy", args.workers
    if args.device == "cuda":
        from diffractive.backend import cupy_available  # noqa: PLC0415

        if not cupy_available():
            raise UserError("--device cuda needs CuPy with a GPU (pip install 'd2nn[gpu]'); use --device cpu")
        backend = "cupy"
        workers = 1 if workers is None else workers  # threads would only queue on the one device
    result = analyse(design, images, labels, budget, draws=args.draws, oversample=args.oversample, seed=args.seed,
                     kinds=kinds, sweep_draws=args.sweep_draws, sweep_images=args.sweep_samples, workers=workers,
                     progress=_progress(args.quiet), name=str(args.design), dataset=f"{args.dataset}/{args.split}",
                     backend=backend)
    if args.frequencies is not None:
        from diffractive.simulate import frequency_sweep  # noqa: PLC0415

        n = min(len(images), args.sweep_samples)
        ab = budget.without_errors().draw(np.random.default_rng(args.seed), design.n_layers,
                                          design.fabrication.z_step_m)
        result.frequency_sweep = frequency_sweep(design, images[:n], labels[:n], args.frequencies, as_built=ab,
                                                 oversample=args.oversample, backend=backend)
    if args.report is not None:
        _write_report_safely(result, Path(args.report), write_report)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(markdown(result), end="")
        if args.report is not None:
            print(f"report written to {args.report}/")
    return 0
