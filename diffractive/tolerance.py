"""Tolerance analysis: a design's accuracy as built, under an error budget and against each error.

Everything here is a Monte-Carlo estimate over draws of the as-built stack
(:mod:`diffractive.asbuilt`) from an error budget (:mod:`diffractive.budget`), each draw scored
on the same labelled images:

* :func:`accuracy_under` — the accuracy under a budget: mean over draws, a 95 % interval of
  that mean (normal approximation, ``mean +- 1.96 s / sqrt(M)``), the 5th percentile of the
  draws (what a lab should expect from a bad assembly) and every draw's accuracy;
* :func:`sweep` — one error kind at a time: accuracy against the size of that kind alone (the
  budget's printing model — absorption, quantisation — kept), and the **tolerance**: the size
  at which the mean accuracy has dropped by 1 and by 5 points from the as-printed accuracy
  (linear interpolation between sweep points; ``None`` if it never drops that far in the
  range swept);
* :func:`analyse` — both, what ``d2nn tolerance`` runs.

Draw ``j`` of a point uses ``numpy.random.default_rng([seed, point, j])``: results do not
depend on the number of worker threads, and adding draws keeps the earlier ones. Draws run in
parallel threads (``workers``), each on its own engine (whose FFT workspaces it reuses from
draw to draw), single-threaded inside. ``backend`` (``"numpy"``, ``"cupy"``, ``"auto"``; default
NumPy) is the array library the draws run on, as for :func:`diffractive.simulate.simulate`; on
CuPy use ``workers=1`` (the threads would only queue on the one device).
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .asbuilt import build_lines, check_oversample, simulate_built
from .backend import resolve_backend
from .budget import KINDS, ErrorBudget
from .convolution import cpu_workers
from .errors import D2NNError
from .spectrum import frequency_hz

#: Sweep sizes as multiples of the budget's size of each kind (0 is the as-printed point).
SWEEP_FACTORS = (0.25, 0.5, 1.0, 1.5, 2.0)


@dataclass
class Point:
    """Accuracy (fractions in [0, 1]) over ``len(accuracies)`` draws at one budget / size."""

    size: float
    accuracies: list

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def interval(self) -> tuple[float, float]:
        """95 % interval of the mean over draws (normal approximation; zero width for one draw)."""
        a = np.asarray(self.accuracies, dtype=np.float64)
        half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else 0.0
        return float(a.mean() - half), float(a.mean() + half)

    @property
    def p5(self) -> float:
        """5th percentile of the draws' accuracies."""
        return float(np.percentile(self.accuracies, 5))

    def to_json(self) -> dict:
        lo, hi = self.interval
        return {"size": self.size, "mean": self.mean, "ci95": [lo, hi], "p5": self.p5, "min": float(min(self.accuracies)),
                "draws": len(self.accuracies), "accuracies": [float(a) for a in self.accuracies]}


@dataclass
class Sweep:
    """Accuracy against the size of one error kind (``points[0]`` is size 0, the as-printed stack)."""

    kind: str
    points: list
    tolerance_1pt: float | None = None
    tolerance_5pt: float | None = None

    def to_json(self) -> dict:
        k = KINDS[self.kind]
        return {"kind": self.kind, "what": k.what, "unit": k.unit, "tolerance_1pt": self.tolerance_1pt,
                "tolerance_5pt": self.tolerance_5pt, "points": [p.to_json() for p in self.points]}


@dataclass
class ToleranceResult:
    """What :func:`analyse` measured; ``to_json()`` is the object ``d2nn tolerance --json`` prints."""

    design: str
    n_images: int
    oversample: int
    seed: int
    budget: ErrorBudget
    ideal_accuracy: float
    printed: Point
    expected: Point | None
    sweeps: list = field(default_factory=list)
    sweep_images: int = 0
    dataset: str = ""
    source: str = ""  # the design's spectrum in words ("0.38-0.42 THz, 5 lines"); every draw lights every line
    frequency_sweep: list | None = None  # rows of diffractive.simulate.frequency_sweep (d2nn tolerance --frequencies)
    design_frequency_thz: float | None = None

    def to_json(self) -> dict:
        return {"schema": "d2nn.tolerance/1", "design": self.design, "dataset": self.dataset, "source": self.source,
                "n_images": self.n_images, "oversample": self.oversample, "seed": self.seed,
                "budget": self.budget.to_json(), "ideal_accuracy": self.ideal_accuracy,
                "printed_accuracy": self.printed.mean,
                "expected": None if self.expected is None else self.expected.to_json(),
                "sweep_images": self.sweep_images, "sweeps": [s.to_json() for s in self.sweeps],
                "design_frequency_thz": self.design_frequency_thz, "frequency_sweep": self.frequency_sweep,
                "summary": self.summary()}

    def summary(self) -> dict:
        """The few numbers a person assembling the stack needs (``d2nn export`` writes them)."""
        out = {"budget": self.budget.name, "ideal_accuracy": self.ideal_accuracy,
               "printed_accuracy": self.printed.mean, "n_images": self.n_images, "oversample": self.oversample}
        if self.expected is not None:
            out.update({"expected_accuracy": self.expected.mean, "expected_ci95": list(self.expected.interval),
                        "p5_accuracy": self.expected.p5, "draws": len(self.expected.accuracies)})
        out["tolerances"] = {s.kind: {"unit": KINDS[s.kind].unit, "drop_1pt": s.tolerance_1pt,
                                      "drop_5pt": s.tolerance_5pt} for s in self.sweeps}
        if self.frequency_sweep:
            out["frequency_sweep"] = [{"frequency_thz": r["frequency_thz"], "accuracy": r["accuracy"]}
                                      for r in self.frequency_sweep]
        return out


#: Where ``d2nn export`` looks for a design's tolerance analysis when not told
#: (``d2nn tolerance DESIGN --report DESIGN/tolerance`` writes it there).
DESIGN_REPORT = "tolerance/tolerance.json"


def read_summary(path) -> dict:
    """The ``summary`` of a ``tolerance.json`` written by :func:`diffractive.tolerance_report.write_report`.

    Raises :class:`D2NNError` naming the file for anything that is not such a file (read
    through :func:`diffractive._read.read_json`: a missing, unreadable, non-UTF-8 or
    malformed file is an :class:`~diffractive._read.InputFileError`).
    """
    from pathlib import Path  # noqa: PLC0415

    from ._read import read_json  # noqa: PLC0415

    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("schema") != "d2nn.tolerance/1":
        raise D2NNError(f"{path}: not a tolerance analysis (schema must be 'd2nn.tolerance/1')")
    summary = doc.get("summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("budget"), str):
        raise D2NNError(f"{path}: field 'summary' is missing or malformed")
    for key in ("ideal_accuracy", "printed_accuracy", "expected_accuracy", "p5_accuracy"):
        v = summary.get(key, 0.0 if key in ("expected_accuracy", "p5_accuracy") else None)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise D2NNError(f"{path}: field 'summary.{key}' must be an accuracy in [0, 1], got {v!r}")
    if not isinstance(summary.get("tolerances", {}), dict):
        raise D2NNError(f"{path}: field 'summary.tolerances' must be an object")
    return summary


def tolerance_at(sizes, means, reference: float, drop: float):
    """Smallest size at which ``means`` (by increasing ``sizes``) falls to ``reference - drop``,
    linearly interpolated between neighbouring points; ``None`` if it never does."""
    target = reference - drop
    prev_s, prev_m = 0.0, reference
    for s, m in zip(sizes, means):
        if m <= target:
            if prev_m == m:
                return float(s)
            return float(prev_s + (prev_m - target) / (prev_m - m) * (s - prev_s))
        prev_s, prev_m = s, m
    return None


class _Runner:
    """Scores draws of as-built stacks on fixed images, in parallel threads."""

    def __init__(self, design, images, labels, oversample, seed, workers, batch_size=64, backend=None, spectrum=None):
        self.design = design
        self.spectrum = spectrum  # None: the design's own
        self.xp = resolve_backend(backend)
        self.images = np.asarray(images, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.images) != len(self.labels) or len(self.images) == 0:
            raise D2NNError(f"need as many labels as images (and at least one), got {len(self.images)} images "
                            f"and {len(self.labels)} labels")
        self.oversample = check_oversample(oversample)
        self.seed = int(seed)
        self.workers = cpu_workers() if workers is None else max(1, int(workers))
        self.batch_size = batch_size
        self._local = threading.local()

    def score(self, budget: ErrorBudget, point: int, draw: int, n_images=None) -> float:
        d = self.design
        ab = budget.draw(np.random.default_rng([self.seed, point, draw]), d.n_layers, d.fabrication.z_step_m)
        engine = getattr(self._local, "engine", None)
        # one stack per source line (one for a monochromatic design), sharing this thread's workspaces
        stack = build_lines(d, ab, oversample=self.oversample, xp=self.xp, engine=engine, spectrum=self.spectrum)
        n = len(self.images) if n_images is None else n_images
        res = simulate_built(d, self.images[:n], stack=stack, batch_size=self.batch_size, workers=1)
        self._local.engine = stack.stacks[-1].engine()
        return float(np.mean(res.predictions == self.labels[:n]))

    def run(self, jobs, progress=None):
        """``jobs``: list of ``(budget, point, draw, n_images)``; returns accuracies in order."""
        done = [0]
        lock = threading.Lock()

        def one(job):
            acc = self.score(*job)
            if progress is not None:
                with lock:
                    done[0] += 1
                    progress(done[0], len(jobs))
            return acc
        if self.workers == 1 or len(jobs) == 1:
            return [one(j) for j in jobs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(one, jobs))


def accuracy_under(design, images, labels, budget: ErrorBudget, *, draws: int = 20, oversample: int = 1, seed: int = 0,
                   workers=None, progress=None, backend=None) -> Point:
    """Accuracy of ``design`` on ``images`` (N, h, w) / ``labels`` (N,) over ``draws`` stacks
    drawn from ``budget`` (see the module docstring). ``progress(done, total)`` per draw."""
    runner = _Runner(design, images, labels, oversample, seed, workers, backend=backend)
    return Point(0.0, runner.run([(budget, 0, j, None) for j in range(_draws(draws))], progress))


def _draws(draws) -> int:
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise D2NNError(f"draws must be a whole number >= 1, got {draws!r}")
    return int(draws)


def sweep_sizes(budget: ErrorBudget, kind: str, factors=SWEEP_FACTORS) -> list[float]:
    """The sizes a sweep of ``kind`` visits: ``factors`` times the budget's size (or the
    kind's default size when the budget does not hold it)."""
    base = budget.size(kind) or KINDS[kind].default_size
    return [float(f * base) for f in factors]


def analyse(design, images, labels, budget: ErrorBudget, *, draws: int = 20, oversample: int = 1, seed: int = 0,
            kinds=None, factors=SWEEP_FACTORS, sweep_draws: int = 5, sweep_images: int | None = None, workers=None,
            progress=None, name: str = "", dataset: str = "", backend=None) -> ToleranceResult:
    """The whole tolerance analysis of ``design`` on ``images`` / ``labels``.

    ``draws`` stacks for the whole ``budget``; for each of ``kinds`` (default the budget's own
    kinds; ``[]`` for none) a sweep over :func:`sweep_sizes` with ``sweep_draws`` draws each on
    the first ``sweep_images`` images (default all). ``progress(done, total)`` over all draws.
    ``backend``: the array library (see the module docstring).
    """
    from .simulate import simulate  # noqa: PLC0415

    runner = _Runner(design, images, labels, oversample, seed, workers, backend=backend)
    draws, sweep_draws = _draws(draws), _draws(sweep_draws)
    kinds = budget.kinds if kinds is None else list(kinds)
    for k in kinds:
        if k not in KINDS:
            raise D2NNError(f"unknown error kind {k!r} (kinds: {', '.join(KINDS)})")
    n_sweep = len(runner.images) if sweep_images is None else max(1, min(int(sweep_images), len(runner.images)))
    jobs = [(budget.without_errors(), 0, 0, None)]  # the printed stack has no random part: one draw
    if not budget.kinds:
        expected_jobs = []
    else:
        expected_jobs = [(budget, 1, j, None) for j in range(draws)]
    sweep_jobs = []
    for i, kind in enumerate(kinds):
        for j, size in enumerate(sweep_sizes(budget, kind, factors)):
            for r in range(sweep_draws):
                sweep_jobs.append((budget.only(kind, size), 2 + i * len(factors) + j, r, n_sweep))
    printed_small = [(budget.without_errors(), 0, 0, n_sweep)] if n_sweep < len(runner.images) else []
    acc = runner.run(jobs + expected_jobs + printed_small + sweep_jobs, progress)
    printed = Point(0.0, acc[:1])
    expected = Point(0.0, acc[1:1 + len(expected_jobs)]) if expected_jobs else None
    rest = acc[1 + len(expected_jobs):]
    ref_sweep = rest.pop(0) if printed_small else printed.mean
    sweeps = []
    for i, kind in enumerate(kinds):
        sizes = sweep_sizes(budget, kind, factors)
        points = [Point(0.0, [ref_sweep])]
        for size in sizes:
            points.append(Point(size, rest[:sweep_draws]))
            rest = rest[sweep_draws:]
        means = [p.mean for p in points[1:]]
        sweeps.append(Sweep(kind, points, tolerance_at(sizes, means, ref_sweep, 0.01),
                            tolerance_at(sizes, means, ref_sweep, 0.05)))
    ideal = float(np.mean(simulate(design, runner.images, backend=backend).predictions == runner.labels))
    return ToleranceResult(name, len(runner.images), runner.oversample, runner.seed, budget, ideal, printed, expected,
                           sweeps, n_sweep if kinds else 0, dataset, design.lines.describe(),
                           design_frequency_thz=frequency_hz(design.wavelength_m) / 1e12)


__all__ = ["DESIGN_REPORT", "read_summary", "Point", "SWEEP_FACTORS", "Sweep", "ToleranceResult", "accuracy_under", "analyse", "sweep_sizes",
           "tolerance_at"]
