"""The evaluation of one measurement against its design (and, when the inputs are known,
against the simulation of the same inputs): calibration, registration, statistics.

:func:`evaluate_measurement` does the work and returns an :class:`Evaluation`, which
renders itself as a terminal summary (:meth:`Evaluation.summary`) or a JSON-ready dict
(:meth:`Evaluation.to_json`). Reading files is :mod:`.io`; figures and the report are
:mod:`.report`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._validate import one_of
from ..detectors import class_scores
from ..errors import D2NNError
from .calibration import GainFit, apply_gains, fit_gains, subtract_background
from .io import MAX_CALIBRATED, MeasuredDataError
from .registration import (Registration, check_scan_geometry, integrate_scan, register_to_detectors,
                           register_to_simulation)
from .stats import (confusion_matrix, describe, margins, pooled_correlation, power_distribution, row_correlation,
                    wilson_interval)

REGISTER_MODES = ("auto", "offset", "full", "detectors", "none")
CLOSE_MARGIN = 0.05
MIN_FITTED_GAIN = 1e-6  # fitted gains (mean 1) below this are not divided by: a dead detector, not a gain


@dataclass
class Evaluation:
    """Everything :func:`evaluate_measurement` found; arrays are in file order.

    For N samples, K detectors and C classes: ``labels``, ``predictions`` (N,) int;
    ``powers`` (N, K) calibrated detector powers; ``scores`` (N, C); ``confusion`` (C, C)
    counts (rows true, columns predicted); ``margins`` (N,) fractions of the detected power;
    ``distribution`` (C, K) fractions per true class; ``power_on_detectors`` (N,) fraction of
    the output power on the detectors (None when not measured); ``coverage`` (K,) fraction of
    each registered detector inside the scan (scans only); ``sim_*`` the same quantities
    simulated for the same inputs, ``correlations`` (N,) of measured and simulated powers.
    ``scan_pitch`` (metres) and ``scan_shape`` (H, W) describe scans.
    """

    design: str
    source: str
    kind: str
    n_classes: int
    n_detectors: int
    labels: np.ndarray
    sample_ids: list
    inputs: np.ndarray | None
    powers: np.ndarray
    scores: np.ndarray
    predictions: np.ndarray
    confusion: np.ndarray
    margins: np.ndarray
    distribution: np.ndarray
    power_on_detectors: np.ndarray | None
    negatives: dict
    calibration: dict
    registration: Registration | None = None
    coverage: np.ndarray | None = None
    gain_fit: GainFit | None = None
    simulation: dict | None = None
    sim_powers: np.ndarray | None = None
    sim_predictions: np.ndarray | None = None
    sim_power_on_detectors: np.ndarray | None = None
    correlations: np.ndarray | None = None
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    detector_classes: list = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of samples N."""
        return int(len(self.labels))

    @property
    def correct(self) -> int:
        """Number of samples whose predicted class is the label."""
        return int(np.sum(self.predictions == self.labels))

    @property
    def accuracy(self) -> float:
        """Fraction of samples classified correctly (NaN without samples)."""
        return self.correct / self.n if self.n else float("nan")

    @property
    def accuracy_ci95(self) -> tuple:
        """95 % Wilson interval (lo, hi) of the accuracy, as fractions."""
        return wilson_interval(self.correct, self.n)

    def per_class_accuracy(self) -> list:
        """Accuracy (fraction) of each true class, C entries; None for a class without samples."""
        out = []
        for c in range(self.n_classes):
            sel = self.labels == c
            out.append(float(np.mean(self.predictions[sel] == c)) if sel.any() else None)
        return out

    def disagreements(self) -> list:
        """One dict per sample where the measured and simulated predictions differ (empty without a simulation)."""
        if self.sim_predictions is None:
            return []
        rows = []
        for i in np.flatnonzero(self.predictions != self.sim_predictions):
            rows.append({"index": int(i), "sample": self.sample_ids[i],
                         "input": None if self.inputs is None else int(self.inputs[i]), "label": int(self.labels[i]),
                         "measured": int(self.predictions[i]), "simulated": int(self.sim_predictions[i]),
                         "correlation": _num(self.correlations[i]) if self.correlations is not None else None,
                         "margin": float(self.margins[i])})
        return rows

    # ------------------------------------------------------------------ output
    def to_json(self) -> dict:
        """Everything as a JSON-ready dict (arrays as lists, NaN as None; lengths in metres)."""
        lo, hi = self.accuracy_ci95
        m = self.margins
        out = {
            "design": self.design, "measured": self.source, "kind": self.kind,
            "n": self.n, "n_classes": self.n_classes, "n_detectors": self.n_detectors,
            "correct": self.correct, "accuracy": _num(self.accuracy), "accuracy_ci95": [lo, hi],
            "confusion": self.confusion.tolist(), "per_class_accuracy": self.per_class_accuracy(),
            "predictions": [int(v) for v in self.predictions], "labels": [int(v) for v in self.labels],
            "samples": list(self.sample_ids),
            "inputs": None if self.inputs is None else [int(v) for v in self.inputs],
            "powers": _nested(self.powers),
            "power_distribution": _nested(self.distribution),
            "margin": dict(describe(m), close=int(np.sum((m >= 0) & (m < CLOSE_MARGIN))), threshold=CLOSE_MARGIN,
                           per_sample=[float(v) for v in m]),
            "power_on_detectors": None if self.power_on_detectors is None else dict(
                describe(self.power_on_detectors), per_sample=[_num(v) for v in self.power_on_detectors]),
            "negative_values": self.negatives,
            "calibration": _nested(self.calibration),
            "registration": None if self.registration is None else self.registration.to_json(),
            "detector_coverage": None if self.coverage is None else [float(v) for v in self.coverage],
            "simulation": None,
            "warnings": list(self.warnings), "notes": list(self.notes),
        }
        if self.simulation is not None:
            sim = dict(self.simulation)
            sim["predictions"] = [int(v) for v in self.sim_predictions]
            sim["disagreements"] = self.disagreements()
            sim["correlation_per_sample"] = [_num(v) for v in self.correlations]
            if self.sim_power_on_detectors is not None:
                sim["power_on_detectors"] = describe(self.sim_power_on_detectors)
            out["simulation"] = _nested(sim)
        return out

    def summary(self, max_disagreements: int = 10) -> str:
        """Terminal summary (lengths in mm, rates in %), listing at most ``max_disagreements`` disagreements."""
        L = []
        kind = "detector powers" if self.kind == "detectors" else f"raster scans {self.extra_shape()}"
        L.append(f"{self.source}: {self.n} samples ({kind}); design {self.design}, "
                 f"{self.n_detectors} detectors, {self.n_classes} classes")
        lo, hi = self.accuracy_ci95
        L.append(f"  accuracy     {100 * self.accuracy:.1f} % ({self.correct}/{self.n}), "
                 f"95 % CI {100 * lo:.1f} - {100 * hi:.1f} % (Wilson)")
        cal = self.calibration
        parts = []
        if cal.get("background"):
            parts.append(f"background subtracted ({cal['background']})")
        if cal.get("gains_source"):
            parts.append(f"gains applied from {cal['gains_source']}")
        if self.gain_fit is not None and self.gain_fit.problem:
            parts.append(f"gains could not be fitted against the simulation: {self.gain_fit.problem}")
        elif self.gain_fit is not None:
            g = self.gain_fit.gains[np.isfinite(self.gain_fit.gains)]
            what = "applied" if cal.get("fitted_gains_applied") else "not applied"
            se = self.gain_fit.stderr[np.isfinite(self.gain_fit.stderr)]
            err = f" (median error {np.median(se):.3f})" if se.size else ""
            if g.size:
                acc = cal.get("accuracy_with_fitted_gains")
                extra = f"; accuracy with them {100 * acc:.1f} %" if acc is not None and not cal.get("fitted_gains_applied") else ""
                resid = "residual " if cal.get("gains_source") else ""
                parts.append(f"{resid}gains fitted against the simulation: {g.min():.3f} ... {g.max():.3f}"
                             f"{err}, {what}{extra}")
        L.append("  calibration  " + ("; ".join(parts) if parts else "none (raw readings, gains 1)"))
        if self.registration is not None:
            r = self.registration
            if r.method == "none":
                L.append("  registration none: detectors integrated at their nominal positions"
                         + (" (scan origin from the file)" if "origin" in r.note else ""))
            else:
                s = (f"  registration offset ({1e3 * r.offset_m[0]:+.3f}, {1e3 * r.offset_m[1]:+.3f}) mm "
                     f"= ({r.offset_m[0] / self.scan_pitch:+.2f}, {r.offset_m[1] / self.scan_pitch:+.2f}) scan pixels")
                if r.rotation_rad or r.scale != 1:
                    s += f", rotation {math.degrees(r.rotation_rad):+.3f} deg, scale {r.scale:.4f}"
                s += f"; {r.method} match score {r.score:.3f}"
                L.append(s)
        neg = self.negatives
        if neg["count"]:
            L.append(f"  negatives    {neg['count']} of {neg['of']} {neg['what']} are negative (kept in the statistics); "
                     f"most negative {neg['most_negative']:.3g} = {100 * neg['most_negative_relative']:.2f} % of that "
                     "sample's largest reading")
        m = self.margins
        L.append(f"  margin       median {np.median(m):.3f}, min {m.min():.3f} (fraction of detected power; "
                 f"{int(np.sum((m >= 0) & (m < CLOSE_MARGIN)))} correct samples below {CLOSE_MARGIN})")
        if self.power_on_detectors is not None:
            pod = self.power_on_detectors
            ok = np.isfinite(pod)
            if ok.any():
                s = f"  on detectors {100 * np.mean(pod[ok]):.1f} % of the output power (mean)"
            else:
                s = "  on detectors not computable (the total output power is 0, or too small to divide by, in every sample)"
            if self.sim_power_on_detectors is not None:
                s += f"; simulated {100 * np.mean(self.sim_power_on_detectors):.1f} %"
            if ok.any() and not ok.all():
                s += (f"; not computable for {int(np.sum(~ok))} sample(s) whose total power is 0 (or too small "
                      "to divide by): "
                      f"{_ids(self.sample_ids, np.flatnonzero(~ok))}")
            L.append(s)
        elif self.sim_power_on_detectors is not None:
            L.append(f"  on detectors not measured (needs a scan or a 'total' column); simulated "
                     f"{100 * np.mean(self.sim_power_on_detectors):.1f} %")
        if self.simulation is not None:
            s = self.simulation
            same = s["same_prediction"]
            L.append(f"  simulation   {s['dataset']}/{s['split']}: accuracy {100 * s['accuracy']:.1f} % on the same "
                     f"inputs; same prediction {100 * same['rate']:.1f} % ({same['count']}/{self.n}, 95 % CI "
                     f"{100 * same['ci95'][0]:.1f} - {100 * same['ci95'][1]:.1f} %)")
            c = s["correlation"]
            bad = np.flatnonzero(~np.isfinite(self.correlations))
            why = ("not computable where a sample's measured or simulated detector powers are all equal (all 0, say): "
                   + _ids(self.sample_ids, bad)) if bad.size else ""
            if c["median"] is not None:
                pooled = f"; pooled {c['pooled']:.3f}" if c["pooled"] is not None else ""
                L.append(f"               detector-vector correlation median {c['median']:.3f}, min {c['min']:.3f}"
                         f"{pooled}" + (f"; {why}" if why else ""))
            else:
                L.append(f"               detector-vector correlation {why or 'not computable'}")
            dis = self.disagreements()
            if dis:
                L.append(f"  disagree     {len(dis)} samples (measured vs simulated class):")
                for d in dis[:max_disagreements]:
                    corr = f", r = {d['correlation']:.2f}" if d["correlation"] is not None else ""
                    inp = f", input {d['input']}" if d["input"] is not None else ""
                    L.append(f"               {d['sample']}{inp}, label {d['label']}: measured {d['measured']}, "
                             f"simulated {d['simulated']}{corr}")
                if len(dis) > max_disagreements:
                    L.append(f"               ... {len(dis) - max_disagreements} more (all listed in the JSON and the report)")
        for w in self.warnings:
            L.append(f"  warning      {w}")
        for note in self.notes:
            L.append(f"  note         {note}")
        if self.n_classes <= 12:
            L.append("  confusion (rows: true class, columns: predicted)")
            width = max(3, len(str(int(self.confusion.max()))) + 1)
            L.append("      " + "".join(f"{c:>{width}d}" for c in range(self.n_classes)))
            for c in range(self.n_classes):
                L.append(f"    {c:>2d}" + "".join(f"{v:>{width}d}" for v in self.confusion[c]))
        return "\n".join(L)

    # scan bookkeeping for the summary
    scan_pitch: float = float("nan")
    scan_shape: tuple = ()

    def extra_shape(self) -> str:
        """``"H x W at P mm"`` for scans, ``""`` for detector powers."""
        if not self.scan_shape:
            return ""
        return f"{self.scan_shape[0]} x {self.scan_shape[1]} at {1e3 * self.scan_pitch:.4g} mm"


def _ids(sample_ids, idx, limit=5) -> str:
    """The sample ids at indices ``idx``, at most ``limit`` of them named (long ids shortened)."""
    names = [str(sample_ids[i]) if len(str(sample_ids[i])) <= 24 else str(sample_ids[i])[:24] + "..."
             for i in list(idx)[:limit]]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(names) + more


def _check_calibrated(measured, raw, powers, background, gains) -> None:
    """Refuse calibrated ``powers`` (N, K) that are not finite or beyond :data:`~.io.MAX_CALIBRATED` in
    magnitude, naming the sample, the detector and the values (reading, background, gain) that made them."""
    bad = ~np.isfinite(powers) | (np.abs(powers) > MAX_CALIBRATED)
    if not bad.any():
        return
    i, k = (int(v) for v in np.unravel_index(int(np.argmax(bad)), bad.shape))
    if measured.kind == "detectors":
        what = f"reading {measured.powers[i, k]:g}"
        if background is not None:
            what = f"({what} - background {float(np.asarray(background)[k]):g})"
    else:
        what = "integrated scan power " + ("(background subtracted) " if background is not None else "") + f"{raw[i, k]:g}"
    if gains is not None:
        what += f" / gain {float(np.asarray(gains)[k]):g}"
    raise MeasuredDataError(f"{measured.source}: sample {_ids(measured.sample_ids, [i])}, det{k}: calibrated power "
                            f"{what} = {float(powers[i, k]):g} is beyond the {MAX_CALIBRATED:g} in magnitude the "
                            "statistics can handle; check the units of the measurement, background and gains")


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _nested(obj):
    """JSON-ready copy: arrays to lists, NaN/inf to None, numpy scalars to Python."""
    if isinstance(obj, dict):
        return {k: _nested(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nested(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _nested(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    return obj


def _negatives(values, per_sample_max, what) -> dict:
    neg = values < 0
    count = int(neg.sum())
    out = {"count": count, "of": int(values.size), "what": what, "samples": int(np.any(neg.reshape(len(values), -1), axis=1).sum()),
           "most_negative": 0.0, "most_negative_relative": 0.0}
    if count:
        flat = values.reshape(len(values), -1)
        rel = flat / np.where(per_sample_max > 0, per_sample_max, 1.0)[:, None]
        i = np.unravel_index(int(np.argmin(np.where(flat < 0, rel, np.inf))), flat.shape)
        out["most_negative"] = float(flat[i])
        out["most_negative_relative"] = float(rel[i])
    return out


def evaluate_measurement(design, measured, *, design_name: str = "design", background=None,
                         background_source: str | None = None, gains=None, gains_source: str | None = None,
                         simulation=None, sim_info: dict | None = None, register: str = "auto",
                         apply_fitted_gains: bool = False) -> Evaluation:
    """Calibrate, register and score ``measured`` (:class:`~.io.DetectorPowers` or :class:`~.io.Scan`).

    ``background``: level to subtract (K,) or (H, W) (:func:`~.io.read_background`).
    ``gains``: per-detector gains (K,) to apply. ``simulation``: the
    :class:`~diffractive.simulate.SimulationResult` of the measured inputs in file order
    (with ``intensity`` for scans registered against it), ``sim_info`` describes it
    (``dataset``, ``split``). ``register``: one of :data:`REGISTER_MODES` — ``auto`` is
    ``offset`` when the simulated intensities are there and ``none`` otherwise.
    ``apply_fitted_gains``: use the gains fitted against the simulation for the statistics.
    """
    if register not in REGISTER_MODES:
        one_of("register", register, REGISTER_MODES)
    K, C = len(design.detectors), design.n_classes
    warnings, notes = [], []
    calibration = {"background": background_source, "gains_source": gains_source,
                   "gains_applied": None if gains is None else np.asarray(gains, dtype=np.float64)}
    if simulation is not None and len(simulation.predictions) != measured.n:
        raise D2NNError(f"simulation has {len(simulation.predictions)} samples, the measurement {measured.n}")
    if len(set(measured.sample_ids)) != measured.n:
        warnings.append("some sample ids appear more than once (each row is still counted)")

    reg = coverage = None
    totals = None
    extra = {}
    if measured.kind == "scan":
        check_scan_geometry(measured, design.detectors)
        scan = measured.with_intensity(subtract_background(measured.intensity, background))
        peak = scan.intensity.reshape(scan.n, -1).max(axis=1)
        negatives = _negatives(scan.intensity, peak, "scan pixels")
        mode = register
        have_ref = simulation is not None and simulation.intensity is not None
        if mode == "auto":
            mode = "offset" if have_ref else "none"
            if not have_ref:
                notes.append("scans not registered: no inputs to simulate (give 'inputs' and a dataset), so the "
                             "detectors are integrated where the scan coordinates put them; registering by "
                             "'detectors' estimates the offset from the power on the detectors instead")
        flat = scan.intensity.reshape(scan.n, -1)
        if mode in ("offset", "full", "detectors") and np.all(flat.max(axis=1) == flat.min(axis=1)):
            warnings.append("scans not registered: every scan is constant (all 0, say), so there is nothing to match; "
                            "the detectors are integrated at their nominal positions")
            mode = "none"
        if mode in ("offset", "full"):
            if not have_ref:
                raise D2NNError(f"registering by '{mode}' needs the simulated output of the measured inputs "
                                "(simulation= with intensity)")
            reg = register_to_simulation(scan, simulation.intensity, design.pitch_m, mode=mode)
            if reg.score < 0.5:
                warnings.append(f"the scans match the simulated patterns poorly (correlation {reg.score:.2f} at the best "
                                "registration): check the design, the inputs and the scan orientation")
        elif mode == "detectors":
            reg = register_to_detectors(scan, design.detectors, design.pitch_m)
        else:
            reg = Registration(method="none", note="origin from the file" if scan.origin_given else "scan centred")
        raw, totals, coverage = integrate_scan(scan, design.detectors, reg, design.pitch_m)
        low = np.flatnonzero(coverage < 0.99)
        if low.size:
            warnings.append("registered detector(s) " + ", ".join(f"det{k} ({100 * coverage[k]:.0f} %)" for k in low)
                            + " lie partly outside the scan: their power is underestimated")
        extra = {"scan_pitch": scan.pitch_m, "scan_shape": scan.shape}
    else:
        raw = subtract_background(measured.powers, background)
        negatives = _negatives(raw, np.abs(raw).max(axis=1), "detector readings")
        if measured.total is not None:
            totals = measured.total
    if register not in ("auto", "none") and measured.kind != "scan":
        notes.append(f"registration '{register}' ignored: registration applies to scans")

    with np.errstate(over="ignore", invalid="ignore"):
        powers = apply_gains(raw, gains)
    _check_calibrated(measured, raw, powers, background, gains)
    dead = np.flatnonzero(np.abs(powers).sum(axis=1) == 0)
    if dead.size:
        warnings.append(f"{dead.size} sample(s) have no detected power (every detector reads 0 after calibration): "
                        f"{_ids(measured.sample_ids, dead)}; their scores tie, so their margin is 0 and they count as "
                        "the first class of the tie" + ("; their correlation with the simulation cannot be computed"
                                                         if simulation is not None else ""))
    gain_fit = None
    if simulation is not None:
        if measured.n >= 2:
            gain_fit = fit_gains(powers, simulation.powers)
            calibration["fitted_gains"] = gain_fit.to_json()
            usable = np.isfinite(gain_fit.gains) & (gain_fit.gains > MIN_FITTED_GAIN)
            if np.any(np.isfinite(gain_fit.gains) & ~usable):
                notes.append("fitted gain(s) of " + ", ".join(f"det{k} ({gain_fit.gains[k]:.3g})" for k in
                                                               np.flatnonzero(np.isfinite(gain_fit.gains) & ~usable))
                             + f" are below {MIN_FITTED_GAIN:g} of the mean (a dead detector?): taken as 1 where the "
                               "fitted gains are applied")
            fitted = np.where(usable, gain_fit.gains, 1.0)
            alt = np.argmax(class_scores(powers / fitted, design.detectors, C), axis=1)
            calibration["accuracy_with_fitted_gains"] = float(np.mean(alt == measured.labels))
            calibration["fitted_gains_applied"] = bool(apply_fitted_gains)
            if apply_fitted_gains:
                powers = powers / fitted
                notes.append("the gains were fitted on these same samples and applied: the accuracy is optimistic")
        else:
            notes.append("one sample only: gains not fitted")
    elif apply_fitted_gains:
        raise D2NNError("apply_fitted_gains=True needs the simulated powers of the measured inputs (simulation=)")

    scores = class_scores(powers, design.detectors, C)
    pred = np.argmax(scores, axis=1)
    labels = measured.labels
    pod = None
    if totals is not None:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            pod = np.where(totals != 0, apply_gains(raw, gains).sum(axis=1) / totals, np.nan)
        pod = np.where(np.isfinite(pod), pod, np.nan)  # a total of 0, or too small to divide by: not computable
    missing = [c for c in range(C) if not np.any(labels == c)]
    if missing and len(missing) < C:
        notes.append(f"no samples of class(es) {', '.join(map(str, missing))}")

    ev = Evaluation(design=design_name, source=measured.source, kind=measured.kind, n_classes=C, n_detectors=K,
                    labels=labels, sample_ids=list(measured.sample_ids), inputs=measured.inputs, powers=powers,
                    scores=scores, predictions=pred, confusion=confusion_matrix(labels, pred, C),
                    margins=margins(scores, labels, powers), distribution=power_distribution(powers, labels, C),
                    power_on_detectors=pod, negatives=negatives, calibration=calibration, registration=reg,
                    coverage=coverage, gain_fit=gain_fit, warnings=warnings, notes=notes,
                    detector_classes=[d.class_index for d in design.detectors], **extra)
    if simulation is not None:
        sp = np.asarray(simulation.predictions)
        same = int(np.sum(sp == pred))
        corr = row_correlation(powers, simulation.powers)
        info = dict(sim_info or {})
        info.update({
            "accuracy": float(np.mean(sp == labels)), "n": int(len(sp)),
            "same_prediction": {"count": same, "rate": same / len(sp), "ci95": list(wilson_interval(same, len(sp)))},
            "correlation": dict(describe(corr), pooled=_num(pooled_correlation(powers, simulation.powers))),
        })
        ev.simulation = info
        ev.sim_powers = np.asarray(simulation.powers, dtype=np.float64)
        ev.sim_predictions = sp
        ev.correlations = corr
        tot = np.asarray(simulation.total_power, dtype=np.float64)
        ev.sim_power_on_detectors = ev.sim_powers.sum(axis=1) / np.where(tot > 0, tot, 1.0)
    return ev
