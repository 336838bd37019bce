"""Error-robust training: what it costs per step, and what helps robustness by construction.

``step``: the time of one training step (forward + backward, batch 32) through a freshly drawn
as-built stack (``[robustness]``, training/robust.py) against the plain step, at oversampling
k = 1 and 2, interleaved, medians of ``--repeats``; Lin geometry (5 x 200 x 200) by default.

    python benchmarks/robustness.py step --repeats 7

``construction``: train the quickstart network (designs/quickstart.toml: 3 x 80 x 80, MNIST)
plain, vaccinated against a budget, and vaccinated with a printed feature of 2 x 2 pixels or a
smoothness prior, then score each under the budget (d2nn tolerance's Monte Carlo).

    python benchmarks/robustness.py construction --budget holder --epochs 4 --draws 10 --samples 1000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lin_config(table: str = "robustness", value=None, config: str = "lin2018-fashion-holder.toml"):
    """The Lin-geometry config ``designs/<config>`` trained from scratch (no ``[model]``), its
    ``[table]`` replaced by ``value`` (dropped for ``None``)."""
    import tomllib

    from training.config import parse_config

    doc = tomllib.loads((ROOT / "designs" / config).read_text())
    doc["model"] = {}
    doc.pop(table, None)
    if value:
        doc[table] = value
    return parse_config(doc, str(ROOT / "designs" / "bench.toml"))


def time_steps(configs: dict, batch: int, repeats: int, workers=None, warmup: int = 1) -> dict:
    """``name -> [seconds]`` of backprop steps (batch ``batch`` of random images) for each config,
    interleaved, after ``warmup`` steps each (FFTW plans, first engines)."""
    import torch

    from training.model import D2NN, design_from_config
    from training.trainer import BackpropRule

    torch.manual_seed(0)
    rules = {name: BackpropRule(D2NN(design_from_config(cfg), workers=workers), cfg, 1000)
             for name, cfg in configs.items()}
    images = torch.rand(batch, 28, 28)
    labels = torch.randint(0, 10, (batch,))
    times = {n: [] for n in rules}
    for r in rules.values():
        for _ in range(warmup):
            r.step(images, labels)
    for _ in range(repeats):
        for n, r in rules.items():
            t = time.perf_counter()
            r.step(images, labels)
            times[n].append(time.perf_counter() - t)
    return times


def print_ratios(times: dict, base: str, title: str) -> None:
    """A Markdown table of median step times and their ratio to ``times[base]``."""
    ref = statistics.median(times[base])
    print(title)
    print(f"| step | ms | / {base} |\n|---|---|---|")
    for n, ts in times.items():
        m = statistics.median(ts)
        print(f"| {n} | {1e3 * m:.0f} | {m / ref:.2f}x |")


def step(a) -> int:
    """Median step time of plain and vaccinated training at k = 1, 2; prints a table of ratios."""
    variants = {"plain": None, "k=1": {"budget": a.budget, "oversample": 1}, "k=2": {"budget": a.budget, "oversample": 2}}
    times = time_steps({n: lin_config("robustness", rob) for n, rob in variants.items()}, a.batch, a.repeats,
                       a.workers)
    print_ratios(times, "plain", f"Lin geometry, batch {a.batch}, budget {a.budget}, medians of {a.repeats} "
                                 "interleaved steps")
    return 0


def construction(a) -> int:
    """Train the quickstart network four ways and score each under ``--budget``."""
    import tomllib

    from diffractive.budget import load_budget
    from diffractive.design import load_design
    from diffractive.tolerance import accuracy_under
    from training.config import parse_config
    from training.datasets import design_split
    from training.trainer import Trainer

    base = tomllib.loads((ROOT / "designs" / "quickstart.toml").read_text())
    base["trainer"]["epochs"] = a.epochs
    variants = [("plain", None), ("vaccinated", {"budget": a.budget}),
                ("vaccinated + 2x2 px features", {"budget": a.budget, "feature_px": 2}),
                (f"vaccinated + smoothness {a.smoothness:g}", {"budget": a.budget, "smoothness": a.smoothness})]
    budget = load_budget(a.budget)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, rob in variants:
            doc = {**base, **({"robustness": rob} if rob else {})}
            cfg = parse_config(doc, str(ROOT / "designs" / "quickstart.toml"))
            out = Path(tmp) / name.replace(" ", "_")
            t = time.perf_counter()
            Trainer(cfg, out, log=lambda *x: None).run()
            seconds = time.perf_counter() - t
            d = load_design(out)
            x, y = design_split(d, "mnist", "test", limit=a.samples)
            ideal = accuracy_under(d, x, y, budget.without_errors(), draws=1).mean
            built = accuracy_under(d, x, y, budget, draws=a.draws, seed=1)
            rows.append((name, ideal, built, seconds))
            print(f"{name}: printed {100 * ideal:.1f} %, under {a.budget} {100 * built.mean:.1f} % "
                  f"(5th pct {100 * built.p5:.1f} %), {seconds:.0f} s", flush=True)
    print(f"\nquickstart geometry, {a.epochs} epochs, {a.samples} test digits, {a.draws} draws of '{a.budget}'")
    print(f"| training | as printed | under {a.budget}: mean (95 % interval) | 5th percentile | train time |")
    print("|---|---|---|---|---|")
    for name, ideal, built, seconds in rows:
        lo, hi = built.interval
        print(f"| {name} | {100 * ideal:.1f} % | {100 * built.mean:.1f} % ({100 * lo:.1f}-{100 * hi:.1f}) | "
              f"{100 * built.p5:.1f} % | {seconds:.0f} s |")
    return 0


def main(argv=None) -> int:
    """Parse the command line and run ``step`` or ``construction``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step", help="step time of robust vs plain training")
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--budget", default="holder")
    s.add_argument("--workers", type=int, default=None)
    c = sub.add_parser("construction", help="plain / vaccinated / features / smoothness under a budget")
    c.add_argument("--budget", default="holder")
    c.add_argument("--epochs", type=int, default=4)
    c.add_argument("--draws", type=int, default=10)
    c.add_argument("--samples", type=int, default=1000)
    c.add_argument("--smoothness", type=float, default=0.1)
    a = p.parse_args(argv)
    return step(a) if a.what == "step" else construction(a)


if __name__ == "__main__":
    sys.exit(main())
