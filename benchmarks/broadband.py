"""Broadband stacks (issue 15): what a spectrum costs per training step, and accuracy against frequency.

``step``: the time of one backprop step (forward + backward, batch 32) at the Lin geometry
(5 x 200 x 200) with the source at one line (the monochromatic step) and with a spectrum of
five lines of which 1, 2 or all 5 are used per step ([source] sample), interleaved, medians of
``--repeats``. The expected cost is about the number of lines sampled.

    python benchmarks/broadband.py step --repeats 7

``sweep``: test accuracy of each design with the source at one frequency at a time
(:func:`diffractive.simulate.frequency_sweep`, what ``d2nn simulate --frequencies`` runs), all
designs in one figure and one JSON file.

    python benchmarks/broadband.py sweep designs/fashion-lin5 designs/fashion-broadband \\
        --dataset fashion-mnist --frequencies 0.36THz:0.44THz:9 --json runs/broadband-sweep.json \\
        --figure docs/images/broadband_sweep.png
    python benchmarks/broadband.py plot runs/sweep-lin5.json runs/sweep-bb.json --figure docs/images/broadband_sweep.png
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step(a) -> int:
    """Median step time with 1 line (monochromatic) and 1, 2, 5 of 5 lines per step; prints a table."""
    from robustness import lin_config, print_ratios, time_steps

    band = {"band_hz": [3.8e11, 4.2e11], "count": 5, "objective": a.objective}
    variants = {"monochromatic": None, "5 lines, 1 per step": {**band, "sample": 1},
                "5 lines, 2 per step": {**band, "sample": 2}, "5 lines, all per step": band}
    configs = {n: lin_config("source", src, "lin2018-fashion-broadband.toml") for n, src in variants.items()}
    times = time_steps(configs, a.batch, a.repeats, a.workers, warmup=2)
    print_ratios(times, "monochromatic", f"Lin geometry, batch {a.batch}, objective {a.objective}, medians of "
                                         f"{a.repeats} interleaved steps")
    return 0


def sweep(a) -> int:
    """Accuracy against frequency of every design given; one JSON, one figure."""
    from d2nn.commands.units import parse_frequencies
    from diffractive.design import load_design
    from diffractive.simulate import frequency_sweep, plot_frequency_sweep
    from diffractive.spectrum import frequency_hz
    from training.datasets import design_split

    freqs = parse_frequencies(a.frequencies)
    curves, out = {}, {"dataset": a.dataset, "split": "test", "designs": {}}
    for path in a.designs:
        d = load_design(path)
        images, labels = design_split(d, a.dataset, "test", limit=a.limit)
        t = time.perf_counter()
        rows = frequency_sweep(d, images, labels, freqs, progress=lambda i: print(f"  {path}: {i}/{len(freqs)}",
                                                                                  file=sys.stderr))
        curves[Path(path).name] = rows
        out["designs"][str(path)] = {"rows": rows, "n": int(len(labels)), "seconds": round(time.perf_counter() - t, 1),
                                     "spectrum": None if d.is_monochromatic else d.lines.to_json()}
        print(f"{path} ({len(labels)} images):")
        for r in rows:
            print(f"  {r['frequency_thz']:.3f} THz  {100 * r['accuracy']:6.2f} %")
    f0 = frequency_hz(load_design(a.designs[0]).wavelength_m) / 1e12
    if a.figure:
        plot_frequency_sweep(curves, a.figure, design_frequency_thz=f0)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


def plot(a) -> int:
    """One figure from the JSON files of earlier ``sweep`` runs (every design in them)."""
    from diffractive.simulate import plot_frequency_sweep

    curves = {}
    for path in a.sweeps:
        for name, rec in json.loads(Path(path).read_text())["designs"].items():
            curves[Path(name).name] = rec["rows"]
    plot_frequency_sweep(curves, a.figure, design_frequency_thz=a.design_frequency_thz)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step")
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--objective", default="each", choices=["band", "each"])
    s.set_defaults(func=step)
    w = sub.add_parser("sweep")
    w.add_argument("designs", nargs="+")
    w.add_argument("--dataset", required=True)
    w.add_argument("--frequencies", default="0.36THz:0.44THz:9")
    w.add_argument("--limit", type=int, default=None)
    w.add_argument("--json", default=None)
    w.add_argument("--figure", default=None)
    w.set_defaults(func=sweep)
    q = sub.add_parser("plot")
    q.add_argument("sweeps", nargs="+", help="JSON files written by 'sweep --json'")
    q.add_argument("--figure", required=True)
    q.add_argument("--design-frequency-thz", type=float, default=299_792_458.0 / 0.75e-3 / 1e12)
    q.set_defaults(func=plot)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
