r"""Diagnose a printed stack from its measurements: fit the as-built errors, say what to fix.

A design's output is very sensitive to how its plates sit (half a pixel of lateral offset
takes the shipped Fashion design to chance), so what the lab measured carries that
information. :func:`diagnose` fits the parameters of the one as-built model
(:mod:`diffractive.asbuilt`) so that the simulated measurements of the same test objects
match the measured ones, and reports, for each parameter, the estimate, its uncertainty, and
whether the data determine it at all.

Model of a measurement
----------------------
* **Scans** (N, H, W): ``I_n(x) = s |U_n(x; theta)|^2 + noise``, one unknown scale ``s``
  (source power and units), ``U_n`` the output field of object ``n`` through the stack as
  built with parameters ``theta``, sampled at the scan points (band-limited interpolation,
  :func:`diffractive.measured.synthetic.sample_output`, unless the scan grid is the
  simulation grid). The scan frame's offset relative to the stack's axis is the detector
  plane's offset (``detector``): the plane's grid translated, exact for any offset.
* **Detector powers** (N, K): ``m_nk = g_k P_nk(theta) + noise``. Without ``gains`` each
  detector's gain is unknown and fitted in closed form for every ``theta`` (variable
  projection: ``g_k = sum_n m s / sum_n s^2``); with ``gains`` one scale. Per-detector gains
  absorb part of what misalignment does to the powers, so detector powers determine fewer
  parameters than scans: the report says which.

Fit
---
Least squares on the residuals ``measured - model``, normalised by the measurement's RMS,
by Levenberg-Marquardt with a forward-difference Jacobian in natural units (a pixel for
offsets, 0.1 mm for gaps, 0.1 deg for rotations, 1 % for the thickness scale). Every
evaluation is the full as-built simulation (lateral offsets and gaps are exact shifted hops,
so the loss is smooth in them; rotations are point-sampled on the design grid, a staircase
in the angle: their difference step, 0.1 deg, spans many pixel flips, so the secant follows
the trend, not the steps). The landscape is not convex -- a start a pixel away from the
truth can end in another basin -- so the fit is **multi-start**: the designed stack and
``starts - 1`` stacks drawn from the error budget are each fitted on a subset of the
samples (coarse stage), and the best is refined on all of them (fine stage). The loss of
every start is reported.

Uncertainty: the covariance ``s^2 (J^T J)^{-1}`` at the optimum, ``s^2`` the residual
variance per degree of freedom, so model error (pixel defects, unfitted errors) widens the
intervals rather than hiding in them. A parameter whose standard error exceeds the budget's
size of that kind (the spread it had before the measurement), or that lies along a
direction the data do not see (an eigenvalue of ``J^T J`` below 1e-9 of the largest), is
reported as **not determined**, without a number to act on. Two degeneracies are built into
the physics and named: moving every plane together changes nothing (the input object is
the reference: offsets are relative to it), and the printed heights' scale and the resin's
index both scale the phase ``2 pi (n - 1) h / lambda``, so ``thickness`` stands for both.

Not fitted: pixel defects (random, unknowable), the scanner's rotation and scale, and the
input object's scale. They act as noise and widen the intervals.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..asbuilt import AsBuilt, build, check_oversample
from ..budget import ErrorBudget
from ..detectors import class_scores
from ..errors import D2NNError
from ..grid import Grid
from ..stack import forward
from .calibration import apply_gains, subtract_background
from .synthetic import sample_output


@dataclass(frozen=True)
class FitKind:
    """A group of as-built parameters fitted together: its name (``--fit``), what it is, the
    :class:`AsBuilt` field it sets, the budget kind that gives its prior size, its natural
    unit (SI value of one fitted unit) and the unit it is reported in."""

    name: str
    what: str
    field: str
    budget_kind: str
    unit_si: float | None  # None: one pixel (the design's pitch)
    shown_unit: str
    shown_si: float


#: The parameter groups :func:`diagnose` can fit, in report order.
FIT_KINDS = {k.name: k for k in (
    FitKind("lateral", "lateral offset of each layer (x, y)", "layer_offsets_xy_m", "lateral_m", None, "mm", 1e-3),
    FitKind("rotation", "in-plane rotation of each layer", "layer_rotations_rad", "rotation_deg",
            math.radians(0.1), "deg", math.radians(1.0)),
    FitKind("axial", "error of each gap (input to layer 1, ..., last layer to output)", "gap_errors_m", "axial_m",
            1e-4, "mm", 1e-3),
    FitKind("detector", "offset of the detector plane / scan frame (x, y)", "detector_offset_xy_m",
            "detector_offset_m", None, "mm", 1e-3),
    FitKind("input", "offset of the input object (x, y)", "input_offset_xy_m", "input_offset_m", None, "mm", 1e-3),
    FitKind("thickness", "scale of the printed phase (thickness and resin index together)", "thickness_error",
            "thickness", 0.01, "%", 0.01),
    FitKind("wavelength", "detuning of the source wavelength", "wavelength_error", "wavelength", 0.001, "%", 0.01),
)}

#: What ``--fit`` fits by default: every error a holder leaves that the model represents
#: exactly and smoothly; ``input`` is the reference frame (moving it is moving everything else).
DEFAULT_FIT = ("lateral", "rotation", "axial", "detector", "thickness", "wavelength")

#: Forward-difference step, in natural units, per kind.
_STEP = {"rotation": 1.0}
_DEFAULT_STEP = 0.01


def parse_fit_kinds(text) -> tuple:
    """``"lateral,axial"`` -> ``("lateral", "axial")`` in :data:`FIT_KINDS` order; raises
    :class:`D2NNError` naming an unknown kind."""
    if text is None:
        return DEFAULT_FIT
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise D2NNError(f"--fit names no kind (kinds: {', '.join(FIT_KINDS)})")
    for n in names:
        if n not in FIT_KINDS:
            raise D2NNError(f"--fit: {n!r} is not a kind that can be fitted (kinds: {', '.join(FIT_KINDS)})")
    if "input" in names and "lateral" in names and "detector" in names:
        raise D2NNError("--fit: input, lateral and detector together are degenerate (moving every plane by the same "
                        "offset changes nothing): leave one out; the input object is the usual reference")
    return tuple(k for k in FIT_KINDS if k in names)


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Parameter:
    """One fitted number: its kind, a label (``layer 3 x``), the index inside its kind, the
    size of one natural unit in SI units, and the budget's size (SI) for this parameter."""

    kind: str
    label: str
    index: int
    unit_si: float
    prior_si: float


def _parameters(design, kinds, budget: ErrorBudget | None) -> list:
    L = design.n_layers
    out = []
    for name in kinds:
        k = FIT_KINDS[name]
        unit = design.pitch_m if k.unit_si is None else k.unit_si
        prior = budget.size(k.budget_kind) if budget is not None else 0.0
        if k.budget_kind.endswith("_deg"):
            prior = math.radians(prior)
        if name == "lateral":
            labels = [f"layer {i + 1} {ax}" for i in range(L) for ax in "xy"]
        elif name == "rotation":
            labels = [f"layer {i + 1}" for i in range(L)]
        elif name == "axial":
            labels = [_gap_name(i, L) for i in range(L + 1)]
        elif name in ("detector", "input"):
            labels = [f"{name} {ax}" for ax in "xy"]
        else:
            labels = [name]
        out += [Parameter(name, lab, i, unit, prior) for i, lab in enumerate(labels)]
    return out


def _gap_name(i, L) -> str:
    a = "input" if i == 0 else f"layer {i}"
    b = "output" if i == L else f"layer {i + 1}"
    return f"gap {i + 1} ({a} -> {b})"


def as_built_of(theta_si, params, base: AsBuilt, n_layers: int) -> AsBuilt:
    """The :class:`AsBuilt` with ``base``'s printing model and the fitted values ``theta_si`` (SI)."""
    L = n_layers
    vals = {"lateral": np.zeros(2 * L), "rotation": np.zeros(L), "axial": np.zeros(L + 1), "detector": np.zeros(2),
            "input": np.zeros(2), "thickness": np.zeros(1), "wavelength": np.zeros(1)}
    present = set()
    for p, v in zip(params, theta_si):
        vals[p.kind][p.index] = v
        present.add(p.kind)
    changes = {}
    if "lateral" in present:
        changes["layer_offsets_xy_m"] = vals["lateral"].reshape(L, 2)
    if "rotation" in present:
        changes["layer_rotations_rad"] = vals["rotation"]
    if "axial" in present:
        changes["gap_errors_m"] = vals["axial"]
    if "detector" in present:
        changes["detector_offset_xy_m"] = tuple(vals["detector"])
    if "input" in present:
        changes["input_offset_xy_m"] = tuple(vals["input"])
    if "thickness" in present:
        changes["thickness_error"] = float(vals["thickness"][0])
    if "wavelength" in present:
        changes["wavelength_error"] = float(vals["wavelength"][0])
    return dataclasses.replace(base, **changes)


def theta_of(as_built: AsBuilt, params) -> np.ndarray:
    """The fitted parameters' SI values in ``as_built`` (the inverse of :func:`as_built_of`)."""
    ab = as_built
    L = len(ab.layer_offsets_xy_m) or len(ab.layer_rotations_rad) or max(len(ab.gap_errors_m) - 1, 0)
    src = {"lateral": np.asarray(ab.layer_offsets_xy_m, dtype=float).ravel(),
           "rotation": np.asarray(ab.layer_rotations_rad, dtype=float),
           "axial": np.asarray(ab.gap_errors_m, dtype=float), "detector": np.asarray(ab.detector_offset_xy_m),
           "input": np.asarray(ab.input_offset_xy_m), "thickness": np.asarray([ab.thickness_error]),
           "wavelength": np.asarray([ab.wavelength_error])}
    del L
    return np.asarray([src[p.kind][p.index] if len(src[p.kind]) > p.index else 0.0 for p in params])


# --------------------------------------------------------------------------- the forward model
class MeasurementModel:
    """The simulated measurement of the measured objects through a stack as built.

    ``images`` (N, h, w) the objects, ``kind`` "scan" (``scan_points``: the design-frame x, y
    (H, W) metres of the scan pixels) or "detectors"; ``base`` the printing model (an
    :class:`AsBuilt` with quantisation / absorption as the budget prints). Each call builds
    the stack (reusing the FFT workspaces of the previous one) and simulates every object.
    """

    def __init__(self, design, images, kind: str, *, base: AsBuilt, scan_points=None, oversample: int = 1,
                 batch_size: int = 32, workers=None):
        self.design = design
        self.images = np.asarray(images, dtype=np.float32)
        self.kind = kind
        self.base = base
        self.scan_points = scan_points
        self.k = check_oversample(oversample)
        self.batch_size = int(batch_size)
        self.workers = workers
        self._engine = None
        self.evaluations = 0
        fine_shape = (design.layer_shape[0] * self.k, design.layer_shape[1] * self.k)
        self._identity_scan = False
        if kind == "scan":
            fine = Grid(fine_shape, design.pitch_m / self.k)
            X, Y = scan_points
            self._identity_scan = (X.shape == fine.shape and np.allclose(X[0], fine.x_m(), atol=1e-9 * fine.pitch_m)
                                   and np.allclose(Y[:, 0], fine.y_m(), atol=1e-9 * fine.pitch_m))

    def __call__(self, as_built: AsBuilt, subset=None, as_powers: bool = False) -> np.ndarray:
        """Scans (n, H, W) or detector powers (n, K), float64, of the objects (``subset``: indices);
        ``as_powers``: a scan model's detector powers (its scan grid must be the simulation grid)."""
        stack = build(self.design, as_built, oversample=self.k, engine=self._engine)
        self._engine = stack.engine()
        t = stack.transmissions()
        images = self.images if subset is None else self.images[subset]
        out = []
        for a in range(0, len(images), self.batch_size):
            fields = stack.input_fields(images[a:a + self.batch_size])
            u = forward(stack.geometry, t, fields, workers=self.workers, engine=self._engine).output
            if self.kind == "scan" and not as_powers:
                if not self._identity_scan:
                    u = sample_output(u, stack.geometry.pitch_m, *self.scan_points)
                out.append((u.real ** 2 + u.imag ** 2).astype(np.float64))
            else:
                out.append(np.asarray(stack.readout(u.real ** 2 + u.imag ** 2), dtype=np.float64))
        self.evaluations += 1
        return np.concatenate(out)


def _blur(a, sigma_px):
    """Scans (n, H, W) low-passed by a Gaussian of ``sigma_px`` scan pixels (FFT, periodic)."""
    if not sigma_px:
        return a
    H, W = a.shape[-2:]
    fy, fx = np.fft.fftfreq(H)[:, None], np.fft.rfftfreq(W)[None, :]
    g = np.exp(-2 * (np.pi * sigma_px) ** 2 * (fy ** 2 + fx ** 2))
    return np.fft.irfft2(np.fft.rfft2(a) * g, s=(H, W))


def _residual_fn(model, measured, subset, fit_gains: bool, blur_px: float = 0.0):
    """``as_built -> residuals`` with the scale (or each detector's gain) projected out in closed
    form; scans compared after a Gaussian blur of ``blur_px`` pixels (0: none)."""
    m = measured if subset is None else measured[subset]
    m = _blur(m, blur_px)
    norm = float(np.sqrt(np.mean(m ** 2))) or 1.0
    m = m / norm

    def residuals(ab):
        s = _blur(model(ab, subset), blur_px) / norm
        if fit_gains:  # per detector (last axis)
            g = (m * s).sum(axis=0) / np.maximum((s * s).sum(axis=0), 1e-300)
        else:
            g = float((m * s).sum() / max(float((s * s).sum()), 1e-300))
        return (m - g * s).ravel()
    return residuals


# --------------------------------------------------------------------------- Levenberg-Marquardt
@dataclass
class FitTrace:
    """One start's fit: where it started and ended (natural units), its loss after each accepted
    step, the number of simulations it took."""

    start: np.ndarray
    theta: np.ndarray
    losses: list
    evaluations: int
    jacobian: np.ndarray | None = None
    residuals: np.ndarray | None = None
    #: why it stopped: ``"converged"`` (small gain and small step), ``"no better step"``
    #: (no damping found a lower loss: a minimum, at the Jacobian's precision) or
    #: ``"iterations"`` (``max_iter`` used up while still descending)
    stop: str = "iterations"
    #: what the start was fitted to: ``"scans"``, ``"powers"`` (the detector powers read out of
    #: the scans) or ``"powers, then scans"``; and the fraction of that data's power it explains
    fitted_to: str = ""
    explained: float | None = None


#: What the starts of a scan fit can be fitted to (:func:`diagnose`'s ``coarse_on``).
COARSE_ON = ("auto", "scans", "powers")


def levenberg_marquardt(fun, theta0, *, steps, bounds, max_iter: int = 15, tol: float = 1e-5, max_step: float = 1.0,
                        step_tol: float = 1e-3, progress=None) -> FitTrace:
    """Minimise ``|fun(theta)|^2`` from ``theta0`` (natural units), forward-difference Jacobian
    with ``steps`` per parameter, ``theta`` clipped to ``[-bounds, bounds]``. A step that would
    move any parameter more than ``max_step`` natural units is shortened as a whole (the basins
    are about a pixel wide, or narrower: a long Gauss-Newton step along a weakly determined
    direction would leave the basin). Shortened, not clipped per parameter: clipping turns a
    step along a narrow valley -- the stack's common shear and first gap -- off its floor, and
    the fit then crawls (tests/test_diagnose.py)."""
    theta = np.asarray(theta0, dtype=np.float64).copy()
    r = fun(theta)
    cost = float(r @ r)
    losses = [cost]
    evals = 1
    lam = 1e-2
    J = None
    stop = "iterations"
    for it in range(max_iter):
        J = np.empty((r.size, theta.size))
        for j in range(theta.size):
            h = steps[j] if theta[j] + steps[j] <= bounds[j] else -steps[j]
            t2 = theta.copy()
            t2[j] += h
            J[:, j] = (fun(t2) - r) / h
            evals += 1
        A = J.T @ J
        g = J.T @ r
        diag = np.maximum(np.diag(A), 1e-12 * max(float(np.max(np.diag(A))), 1e-300))
        improved = False
        for _ in range(8):
            try:
                delta = -np.linalg.solve(A + lam * np.diag(diag), g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            big = float(np.max(np.abs(delta)))
            if big > max_step:
                delta *= max_step / big
            t_new = np.clip(theta + delta, -bounds, bounds)
            r_new = fun(t_new)
            evals += 1
            c_new = float(r_new @ r_new)
            if c_new < cost:
                improved = True
                rel = (cost - c_new) / max(cost, 1e-300)
                moved = float(np.max(np.abs(t_new - theta)))
                theta, r, cost = t_new, r_new, c_new
                lam = max(lam / 10, 1e-7)
                break
            lam *= 4
        losses.append(cost)
        if progress is not None:
            progress(it + 1, cost)
        # a small relative gain alone is no convergence: with noisy data the loss sits on its noise
        # floor while a shallow valley (the plates' common shear) is still being walked down
        if not improved:
            stop = "no better step"
            break
        if rel < tol and moved < step_tol:
            stop = "converged"
            break
    return FitTrace(start=np.asarray(theta0, dtype=np.float64), theta=theta, losses=losses, evaluations=evals,
                    jacobian=J, residuals=r, stop=stop)


# --------------------------------------------------------------------------- the diagnosis
@dataclass
class Diagnosis:
    """What :func:`diagnose` found (see :meth:`to_json` for the fields)."""

    design_name: str
    measurement: str
    kind: str
    n: int
    params: list
    theta_si: np.ndarray
    sigma_si: np.ndarray
    determined: np.ndarray
    as_built: AsBuilt
    starts: list
    fine: FitTrace
    accuracy: dict
    corrections: list
    fixes: list
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    explained: float | None = None
    seconds: float = 0.0
    samples_fitted: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)

    def estimates(self) -> list:
        """One dict per parameter: kind, label, value and standard error (SI and as shown), determined."""
        out = []
        for p, v, s, d in zip(self.params, self.theta_si, self.sigma_si, self.determined):
            k = FIT_KINDS[p.kind]
            out.append({"kind": p.kind, "label": p.label, "value_si": float(v),
                        "sigma_si": float(s) if np.isfinite(s) else None, "determined": bool(d),
                        "unit": k.shown_unit, "value": float(v / k.shown_si),
                        "sigma": float(s / k.shown_si) if np.isfinite(s) else None,
                        "budget_si": float(p.prior_si)})
        return out

    def to_json(self) -> dict:
        """The diagnosis as one JSON-ready object; ``as_built`` (the determined estimates, the
        rest as designed) is what ``d2nn train --as-built`` reads."""
        return {"schema": "d2nn.diagnosis/1", "design": self.design_name, "measured": self.measurement,
                "kind": self.kind, "samples": self.n, "samples_fitted": self.samples_fitted,
                "estimates": self.estimates(), "as_built": self.as_built.to_json(),
                "starts": [{"start": s.start.tolist(), "loss": s.losses[-1], "steps": len(s.losses) - 1,
                            "simulations": s.evaluations, "stop": s.stop, "fitted_to": s.fitted_to,
                            "explained": s.explained} for s in self.starts],
                "fine": {"losses": self.fine.losses, "simulations": self.fine.evaluations, "stop": self.fine.stop},
                "accuracy": self.accuracy, "corrections": self.corrections, "fixes": self.fixes,
                "notes": self.notes, "warnings": self.warnings, "explained": self.explained,
                "seconds": round(self.seconds, 1)}

    def summary(self) -> str:
        """Plain text for the terminal."""
        a = self.accuracy
        lines = [f"{self.measurement}: {self.n} {'scans' if self.kind == 'scan' else 'samples (detector powers)'}; "
                 f"design {self.design_name}; fitted {', '.join(sorted({p.kind for p in self.params}, key=list(FIT_KINDS).index))}"]
        lines.append(f"  fit          {len(self.starts)} start(s), losses " +
                     ", ".join(f"{s.losses[-1]:.4g}" for s in self.starts) +
                     f"; best refined on {self.samples_fitted.get('fine', self.n)} samples: loss {self.fine.losses[0]:.4g} "
                     f"-> {self.fine.losses[-1]:.4g} ({len(self.fine.losses) - 1} steps, stopped: {self.fine.stop}, "
                     f"{100 * (self.explained or 0):.0f} % of the measured power explained); {self.seconds:.0f} s")
        lines.append("  accuracy     " + ", ".join(f"{name} {_pct(a.get(key))}" for key, name in (
            ("measured", "measured"), ("fitted", "fitted model"), ("as_printed", "as printed (no assembly error)"),
            ("ideal", "ideal")) if key in a))
        lines.append("  estimates    (value +- standard error; '-' = not determined by these data)")
        for e in self.estimates():
            if e["determined"]:
                lines.append(f"    {e['label']:<32} {e['value']:+9.3f} +- {e['sigma']:.2g} {e['unit']}")
            else:
                why = (" (the data do not see it)" if e["sigma"] is None else
                       f" (standard error {e['sigma']:.2g} {e['unit']}, more than the budget allows)")
                lines.append(f"    {e['label']:<32}         -  not determined{why}")
        if self.fixes:
            lines.append("  fixes        accuracy of the fitted model with one error kind corrected:")
            for f in self.fixes:
                lines.append(f"    {f['kind']:<12} {_pct(f['accuracy'])} ({f['gain_points']:+.1f} points)")
        if self.corrections:
            lines.append("  correction plan (most accuracy first):")
            lines += [f"    {c}" for c in self.corrections]
        else:
            lines.append("  correction plan: nothing the data determine is large enough to act on")
        lines += [f"  note         {n}" for n in self.notes]
        lines += [f"  WARNING      {w}" for w in self.warnings]
        return "\n".join(lines)


def _pct(v) -> str:
    return "not computed" if v is None else f"{100 * v:.1f} %"


def _covariance(J, r, n_params):
    m = r.size
    dof = max(m - n_params, 1)
    s2 = float(r @ r) / dof
    A = J.T @ J
    w, V = np.linalg.eigh(A)
    keep = w > 1e-9 * max(float(w.max()), 1e-300)
    cov = (V[:, keep] / w[keep]) @ V[:, keep].T * s2
    sigma = np.sqrt(np.maximum(np.diag(cov), 0.0))
    # a parameter with a large share in an unseen direction is not determined
    unseen = ((V[:, ~keep] ** 2).sum(axis=1) if np.any(~keep) else np.zeros(n_params)) > 0.1
    sigma[unseen] = np.inf  # its spread is not bounded by the data, whatever the seen directions say
    return sigma, unseen


def _accuracy(scores_or_powers, design, labels, *, powers=True):
    scores = class_scores(np.asarray(scores_or_powers, dtype=np.float64), design.detectors, design.n_classes) \
        if powers else scores_or_powers
    return float(np.mean(np.argmax(scores, axis=1) == labels)) if len(labels) else None


def diagnose(design, measured, images, *, budget: ErrorBudget | None, kinds=DEFAULT_FIT, background=None,
             gains=None, starts: int = 4, coarse_samples: int = 32, fine_samples: int | None = None,
             max_iter: int = 20, max_step: float = 0.5, oversample: int = 1, seed: int = 0, workers=None, design_name: str = "design",
             progress=None, measured_accuracy: float | None = None, coarse_on: str = "auto") -> Diagnosis:
    """Fit the as-built errors of ``design`` to ``measured`` (a :class:`~.io.Scan` or
    :class:`~.io.DetectorPowers` with ``inputs``), ``images`` (N, h, w) the measured objects.

    ``budget``: its printing model (absorption, quantisation) is taken as known; its sizes set
    the random starts and the "not determined" threshold. ``kinds``: :data:`FIT_KINDS` names.
    ``background``, ``gains``: as for ``d2nn evaluate``. ``starts``: the designed stack plus
    ``starts - 1`` budget draws, each fitted on ``coarse_samples`` samples; the best is refined
    on ``fine_samples`` (default all). ``coarse_on``: ``"scans"`` fits the starts to the scans,
    ``"powers"`` (scans on the simulation grid) to the detector powers read out of them: a
    smoother landscape, which found the right basin where scans did not (docs/diagnose.md);
    ``"auto"`` fits the scans, and when their best start explains less than
    :data:`MIN_EXPLAINED` of them also fits the starts to the powers, brings the best of those
    to the scans on the same samples, and refines whichever of all explains more.
    ``progress(stage, done, total, loss)``.
    """
    t0 = time.perf_counter()
    if not design.is_monochromatic:
        raise D2NNError(f"{design_name} is lit by a spectrum ({design.lines.describe()}); diagnosis fits a "
                        "monochromatic model and does not support broadband designs yet")
    if measured.inputs is None:
        raise D2NNError(f"{measured.source}: diagnosing needs the inputs of the measured samples (an 'input' column "
                        "or an 'inputs' field): the fit simulates the same objects")
    if starts < 1:
        raise D2NNError(f"starts must be at least 1, got {starts}")
    kinds = parse_fit_kinds(",".join(kinds)) if not isinstance(kinds, str) else parse_fit_kinds(kinds)
    L = design.n_layers
    labels = np.asarray(measured.labels)
    notes = []
    base = AsBuilt(absorption=bool(budget.absorption) if budget is not None else False,
                   z_step_m=design.fabrication.z_step_m if budget is not None and budget.quantise else None)
    if measured.kind == "scan":
        data = subtract_background(measured.intensity, background)
        X, Y = np.meshgrid(measured.x_m(), measured.y_m())
        model = MeasurementModel(design, images, "scan", base=base, scan_points=(X, Y), oversample=oversample,
                                 workers=workers)
        fit_gains = False
    else:
        data = apply_gains(subtract_background(measured.powers, background), gains)
        model = MeasurementModel(design, images, "detectors", base=base, oversample=oversample, workers=workers)
        fit_gains = gains is None
        notes.append("detector gains " + ("fitted for every trial stack (variable projection): they absorb part of "
                                          "what misalignment does to the powers" if fit_gains else
                                          "applied from the gains file; one overall scale fitted"))
    params = _parameters(design, kinds, budget)
    unit = np.array([p.unit_si for p in params])
    prior = np.array([p.prior_si for p in params])
    steps = np.array([_STEP.get(p.kind, _DEFAULT_STEP) for p in params])
    # no estimate beyond four budget sizes (or 4 natural units if the budget has no such error)
    bounds = np.maximum(4 * prior / unit, 4.0)

    n = measured.n
    rng = np.random.default_rng(seed)
    coarse = np.sort(rng.choice(n, size=min(n, coarse_samples), replace=False)) if coarse_samples < n else None
    fine_idx = None
    if fine_samples is not None and fine_samples < n:
        fine_idx = np.sort(rng.choice(n, size=fine_samples, replace=False))

    def fun_for(subset):
        res = _residual_fn(model, data, subset, fit_gains)
        return lambda th: res(as_built_of(th * unit, params, base, L))

    # coarse_on="powers", scans on the simulation grid: the starts are fitted to the detector
    # powers read out of them (same probe: one scale). Ten numbers per object give a smoother
    # landscape than the whole scan; "auto" fits the scans first and turns to the powers only
    # when the best start explains too little of the scans (benchmarks/README.md, "Diagnosis":
    # on fashion-holder-stage1 the scans stalled in a wrong basin in 5 of 10 draws, the powers
    # found the right one in each of those tried).
    if coarse_on not in COARSE_ON:
        raise D2NNError(f"coarse_on must be one of {', '.join(COARSE_ON)}, got {coarse_on!r}")
    powers_possible = measured.kind == "scan" and model._identity_scan and model.k == 1
    f_scans = fun_for(coarse)
    f_powers = None
    if powers_possible and coarse_on in ("powers", "auto"):
        data_powers = np.asarray(build(design, base).readout(data), dtype=np.float64)
        res_p = _residual_fn(lambda ab, subset: model(ab, subset, as_powers=True), data_powers, coarse, False)
        f_powers = lambda th: res_p(as_built_of(th * unit, params, base, L))  # noqa: E731

    # -- coarse stage: multi-start
    start_points = [np.zeros(len(params))]
    for j in range(1, starts):
        if budget is None:
            start_points.append(rng.uniform(-1, 1, len(params)))
        else:
            ab = budget.draw(np.random.default_rng([seed, 1, j]), L)
            start_points.append(np.clip(theta_of(ab, params) / unit, -bounds, bounds))

    def fit_starts(f, fitted_to):
        out = []
        for j, th0 in enumerate(start_points):
            tr = levenberg_marquardt(f, th0, steps=steps, bounds=bounds, max_iter=max_iter, max_step=max_step,
                                     progress=None if progress is None else
                                     (lambda it, c, j=j: progress(f"start {j + 1}/{len(start_points)} ({fitted_to})",
                                                                  it, max_iter, c)))
            tr.fitted_to, tr.explained = fitted_to, 1.0 - tr.losses[-1] / max(tr.residuals.size, 1)
            tr.jacobian = tr.residuals = None
            out.append(tr)
        return out

    if coarse_on == "powers" and f_powers is not None:
        traces = fit_starts(f_powers, "powers")
        notes.append("the starts were fitted to the detector powers read out of the scans, the best refined on "
                     "the scans")
    else:
        traces = fit_starts(f_scans, "scans")
        best = min(traces, key=lambda tr: tr.losses[-1])
        if coarse_on == "auto" and f_powers is not None and best.explained < MIN_EXPLAINED:
            # the best start of the scans looks like a wrong basin: fit the starts to the powers,
            # bring their best to the scans on the same samples, and let the losses decide
            by_powers = min(fit_starts(f_powers, "powers"), key=lambda tr: tr.losses[-1])
            tr = levenberg_marquardt(f_scans, by_powers.theta, steps=steps, bounds=bounds, max_iter=max_iter,
                                     max_step=max_step,
                                     progress=None if progress is None else
                                     (lambda it, c: progress("best start of the powers, on the scans", it, max_iter,
                                                             c)))
            tr.start = by_powers.start
            tr.fitted_to, tr.explained = "powers, then scans", 1.0 - tr.losses[-1] / max(tr.residuals.size, 1)
            tr.jacobian = tr.residuals = None
            traces.append(tr)
            winner = min(traces, key=lambda t: t.losses[-1])
            notes.append(f"the best start fitted to the scans explained {100 * best.explained:.0f} % of them (below "
                         f"{100 * MIN_EXPLAINED:.0f} %), so the starts were also fitted to the detector powers read "
                         f"out of the scans; their best, brought to the scans, explains {100 * tr.explained:.0f} % and "
                         + ("was refined" if winner is tr else "lost to the scans' best"))
    best = min(traces, key=lambda tr: tr.losses[-1])
    theta_start = best.theta
    # -- fine stage: the best start on all (or fine_samples) samples
    fine = levenberg_marquardt(fun_for(fine_idx), theta_start, steps=steps, bounds=bounds, max_iter=max_iter,
                               max_step=max_step,
                               progress=None if progress is None else
                               (lambda it, c: progress("refine", it, max_iter, c)))
    theta = fine.theta
    sigma_nat, unseen = _covariance(fine.jacobian, fine.residuals, len(params))
    theta_si, sigma_si = theta * unit, sigma_nat * unit
    threshold = np.where(prior > 0, prior, unit)
    determined = (sigma_si <= threshold) & ~unseen & np.isfinite(sigma_si)
    # what the data do not determine stays as designed: no number to act on, nor to re-design against
    fitted = as_built_of(np.where(determined, theta_si, 0.0), params, base, L)

    # -- accuracies: measured, fitted model, with each kind corrected, as printed, ideal
    from ..simulate import simulate  # noqa: PLC0415
    from ..asbuilt import simulate_built  # noqa: PLC0415

    def acc_of(ab):
        return _accuracy(simulate_built(design, images, ab, oversample=oversample, workers=workers).powers, design,
                         labels)
    accuracy = {"ideal": _accuracy(simulate(design, images).powers, design, labels),
                "as_printed": acc_of(base), "fitted": acc_of(fitted)}
    if measured_accuracy is not None:
        accuracy["measured"] = measured_accuracy
    elif measured.kind == "detectors":
        accuracy["measured"] = _accuracy(data, design, labels)
    fixes = []
    for kind in kinds:
        keep = [i for i, p in enumerate(params) if p.kind != kind]
        th = np.zeros(len(params))
        th[keep] = theta_si[keep]
        a = acc_of(as_built_of(th, params, base, L))
        fixes.append({"kind": kind, "accuracy": a, "gain_points": 100 * (a - accuracy["fitted"])})
    fixes.sort(key=lambda f: -f["gain_points"])
    corrections = _correction_plan(params, theta_si, sigma_si, determined, [f["kind"] for f in fixes], design)
    if "thickness" in kinds:
        notes.append("'thickness' is the scale of the printed phase: a resin index error scales it the same way "
                     "(2 pi (n - 1) h / lambda), so the two cannot be told apart from measurements")
    notes.append("offsets are relative to the input object (moving every plane together changes nothing)")
    show = np.arange(min(n, 4))
    scale = lambda sim, meas: float((meas * sim).sum() / max(float((sim * sim).sum()), 1e-300))  # noqa: E731
    ex_meas, ex_fit, ex_ideal = data[show], model(fitted, show), model(base, show)
    examples = {"indices": show.tolist(), "measured": ex_meas, "fitted": scale(ex_fit, ex_meas) * ex_fit,
                "ideal": scale(ex_ideal, ex_meas) * ex_ideal}
    undetermined = [p.label for p, d in zip(params, determined) if not d]
    if undetermined:
        notes.append(f"{len(undetermined)} of {len(params)} parameters are not determined by these data: "
                     + ", ".join(undetermined[:8]) + (" ..." if len(undetermined) > 8 else ""))
    explained = 1.0 - fine.losses[-1] / max(fine.residuals.size, 1)  # residuals are normalised by the RMS
    warnings = fit_warnings([tr.losses[-1] for tr in traces], accuracy, n, explained,
                            refine_losses=fine.losses if fine.stop == "iterations" else None)
    return Diagnosis(design_name=design_name, measurement=str(measured.source), kind=measured.kind, n=n,
                     params=params, theta_si=theta_si, sigma_si=sigma_si, determined=determined, as_built=fitted,
                     starts=traces, fine=fine, accuracy=accuracy, corrections=corrections, fixes=fixes, notes=notes,
                     warnings=warnings, explained=explained,
                     seconds=time.perf_counter() - t0, examples=examples,
                     samples_fitted={"coarse": n if coarse is None else len(coarse),
                                     "fine": n if fine_idx is None else len(fine_idx)})


#: Below this fraction of the measurement's power explained, diagnose warns (benchmarks/README.md,
#: "Diagnosis": with 2 % noise, fits in the right basin explained 0.78-0.85 of the scans' power
#: on 32 samples, fits in a wrong one 0.25-0.41). Noisier data explain less even at the truth.
MIN_EXPLAINED = 0.6


def fit_warnings(start_losses, accuracy: dict, n: int, explained: float | None = None,
                 refine_losses=None) -> list:
    """Signs that the fit found a wrong basin, in words (empty: none seen).

    * Only one start reached the lowest loss (within 1 %): the landscape has several basins
      and, on the designs measured (benchmarks/README.md), most starts end in a wrong one, so
      a single winner may be one too.
    * The fitted model's accuracy on the measured objects differs from the measured accuracy
      by more than three binomial standard errors: the fitted stack does not behave like the
      measured one.

    * The fitted model explains less than :data:`MIN_EXPLAINED` of the measurement's power
      (``explained = 1 - |residual|^2 / |measured|^2``, the scale or gains fitted).
    * The refinement (its losses ``refine_losses``) used all its iterations while still
      descending: the standard errors are the curvature where it stopped, not at the
      minimum, and on the shipped designs the last part of the descent is the plates' common
      shear, a direction where estimates can still move by hundreds of micrometres while
      the loss changes by a fraction of a percent (benchmarks/README.md, "Diagnosis").

    The standard errors of the estimates assume the fit found the right basin; these
    warnings are the check that it did not obviously miss it. Neither proves success.
    """
    out = []
    losses = sorted(float(v) for v in start_losses)
    if len(losses) > 1:
        near = sum(v <= 1.01 * losses[0] for v in losses)
        if near == 1:
            out.append(f"only 1 of {len(losses)} starts reached the lowest loss (the next is "
                       f"{losses[1] / max(losses[0], 1e-300):.2f}x higher): the fit may sit in a wrong basin; rerun "
                       "with more --starts and another --seed and compare before acting on the plan")
    if explained is not None and explained < MIN_EXPLAINED:
        out.append(f"the fitted model explains {100 * explained:.0f} % of the measured power (fits in the right "
                   f"basin explained 78-85 % of 2 %-noise scans in benchmarks/README.md): a wrong basin, very noisy "
                   "data, or an error the model does not hold")
    if refine_losses is not None and len(refine_losses) > 2:
        last = (refine_losses[-2] - refine_losses[-1]) / max(refine_losses[-2], 1e-300)
        out.append(f"the refinement used all {len(refine_losses) - 1} iterations and was still descending (last "
                   f"step {100 * last:.2g} % lower loss): the standard errors describe where it stopped; rerun with "
                   "more --iterations before trusting estimates along a weakly determined direction")
    fa, ma = accuracy.get("fitted"), accuracy.get("measured")
    if fa is not None and ma is not None and n > 0:
        se = math.sqrt(max(ma * (1 - ma), 0.25 / n) / n)
        if abs(fa - ma) > 3 * se:
            out.append(f"the fitted model classifies {100 * fa:.1f} % of the measured objects correctly, the "
                       f"measurement {100 * ma:.1f} %: the fitted stack does not behave like the printed one (a "
                       "wrong basin, or an error the model does not hold); do not act on the plan")
    return out


#: Below these the plan says nothing: a lab cannot place a plate better (assumption).
ACTIONABLE = {"lateral": 20e-6, "detector": 20e-6, "input": 20e-6, "axial": 20e-6,
              "rotation": math.radians(0.05), "thickness": 0.002, "wavelength": 0.0005}


def _correction_plan(params, theta_si, sigma_si, determined, order, design) -> list:
    """Lines in a lab's units, for the parameters the data determine (|estimate| > 2 sigma and
    above :data:`ACTIONABLE`), kinds in ``order``."""
    L = design.n_layers
    out = []
    by = {}
    for p, v, s, d in zip(params, theta_si, sigma_si, determined):
        if d and abs(v) > 2 * s and abs(v) > ACTIONABLE[p.kind]:
            by.setdefault(p.kind, []).append((p, v))
    for kind in order:
        items = by.get(kind, [])
        if kind in ("lateral", "detector", "input"):
            groups = {}
            for p, v in items:
                key = p.label.rsplit(" ", 1)[0]
                groups.setdefault(key, {})[p.label[-1]] = v
            for key, xy in groups.items():
                what = key if kind == "lateral" else ("the detector plane (or scanner)" if kind == "detector"
                                                      else "the input object")
                moves = " and ".join(f"{-v * 1e3:+.2f} mm in {ax}" for ax, v in sorted(xy.items()))
                out.append(f"move {what} by {moves}")
        elif kind == "axial":
            for p, v in items:
                out.append(f"{p.label} is {abs(v) * 1e3:.2f} mm too {'long' if v > 0 else 'short'}: "
                           f"{'shorten' if v > 0 else 'lengthen'} it by {abs(v) * 1e3:.2f} mm")
        elif kind == "rotation":
            for p, v in items:
                out.append(f"rotate {p.label} by {-math.degrees(v):+.2f} deg (counter-clockwise positive, seen "
                           "from the source)")
        elif kind == "thickness":
            for _, v in items:
                out.append(f"the plates' phase is {100 * v:+.1f} % off (thickness or resin index): reprint with "
                           f"heights scaled by {1 / (1 + v):.4f}, or remeasure the resin's index")
        elif kind == "wavelength":
            for _, v in items:
                lam = design.wavelength_m
                out.append(f"the source runs at {lam * (1 + v) * 1e3:.4f} mm instead of {lam * 1e3:.4f} mm: retune it")
    del L
    return out


__all__ = ["DEFAULT_FIT", "Diagnosis", "FIT_KINDS", "MeasurementModel", "as_built_of", "diagnose", "fit_warnings",
           "levenberg_marquardt", "parse_fit_kinds", "theta_of"]
