"""The report of an evaluation: PNG figures, ``report.md``, ``index.html`` and ``evaluation.json``.

:func:`write_report` renders everything into a temporary folder next to the target and
renames it into place, so the target folder either appears complete or not at all.
Figures use matplotlib's object API (``matplotlib.figure.Figure`` with the Agg canvas), in
the style the design-folder figures share (:mod:`diffractive._plot`), so no pyplot state or
display backend is involved.
"""
from __future__ import annotations

import contextlib
import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._plot import draw_matrix as _matrix, new_figure as _figure, save_png as _save
from ..errors import OutputExists


def confusion_figure(ev, path):
    """PNG at ``path``: the measured confusion matrix of :class:`~.evaluate.Evaluation` ``ev``
    (and the simulated one beside it, when there is a simulation)."""
    panels = [(ev.confusion, f"measured: {100 * ev.accuracy:.1f} %")]
    if ev.sim_predictions is not None:
        from .stats import confusion_matrix  # noqa: PLC0415

        panels.append((confusion_matrix(ev.labels, ev.sim_predictions, ev.n_classes),
                       f"simulated, same inputs: {100 * ev.simulation['accuracy']:.1f} %"))
    fig = _figure(4.2 * len(panels), 4.0)
    for i, (m, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _matrix(ax, m, title, "predicted class", "true class")
    _save(fig, path)


def powers_figure(ev, path):
    """Measured vs simulated detector powers (each sample normalised to its total)."""
    fig = _figure(9.5, 4.2)
    ax = fig.add_subplot(1, 2, 1)
    meas = ev.powers / np.where(np.abs(ev.powers).sum(1, keepdims=True) > 0, np.abs(ev.powers).sum(1, keepdims=True), 1)
    sim = ev.sim_powers / np.where(ev.sim_powers.sum(1, keepdims=True) > 0, ev.sim_powers.sum(1, keepdims=True), 1)
    own = np.asarray(ev.detector_classes)[None, :] == ev.labels[:, None]
    ax.scatter(sim[~own], meas[~own], s=8, alpha=0.5, label="other detectors")
    ax.scatter(sim[own], meas[own], s=10, alpha=0.8, color="C1", label="true-class detector")
    top = max(float(np.nanmax(sim)), float(np.nanmax(meas)), 1e-12)
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    c = ev.simulation["correlation"]
    ax.set_title(f"per-sample power fractions (pooled r = {c['pooled']:.3f})" if c.get("pooled") is not None
                 else "per-sample power fractions")
    ax.set_xlabel("simulated fraction of detected power")
    ax.set_ylabel("measured fraction")
    ax.legend(fontsize=7)
    ax2 = fig.add_subplot(1, 2, 2)
    K = ev.powers.shape[1]
    mm, ss = meas.mean(0), sim.mean(0)
    x = np.arange(K)
    ax2.bar(x - 0.2, ss, 0.4, label="simulated")
    ax2.bar(x + 0.2, mm, 0.4, label="measured")
    ax2.set_xticks(x)
    ax2.set_xlabel("detector")
    ax2.set_ylabel("mean fraction of detected power")
    ax2.set_title("mean over all samples")
    ax2.legend(fontsize=7)
    _save(fig, path)


def distribution_figure(ev, path):
    """PNG at ``path``: the (C, K) power distribution per true class, measured (and simulated)."""
    panels = [(ev.distribution, "measured")]
    if ev.sim_powers is not None:
        from .stats import power_distribution  # noqa: PLC0415

        panels.append((power_distribution(ev.sim_powers, ev.labels, ev.n_classes), "simulated"))
    fig = _figure(4.6 * len(panels), 4.0)
    for i, (m, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _matrix(ax, m, f"{title}: power per detector", "detector", "true class", fmt="f", cmap="viridis")
    _save(fig, path)


def margin_figure(ev, path):
    """PNG at ``path``: histogram of the per-sample margins (fractions of the detected power)."""
    fig = _figure(5, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    m = ev.margins
    ax.hist(m, bins=max(5, min(40, len(m) // 2)), color="C0")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("margin (true-class score - best other, / detected power)")
    ax.set_ylabel("samples")
    ax.set_title(f"classification margin (median {np.median(m):.3f})")
    _save(fig, path)


def scan_figure(ev, scan, detectors, path, max_panels=10):
    """PNG at ``path``: scans (one per class where possible, at most ``max_panels``) with the
    registered detector regions drawn; axes in mm."""
    from matplotlib.patches import Polygon  # noqa: PLC0415

    picks = []
    for c in range(ev.n_classes):
        idx = np.flatnonzero(ev.labels == c)
        if idx.size:
            picks.append(int(idx[0]))
    for i in range(ev.n):
        if len(picks) >= max_panels:
            break
        if i not in picks:
            picks.append(i)
    picks = sorted(picks[:max_panels])
    cols = min(5, len(picks))
    rows = int(math.ceil(len(picks) / cols))
    fig = _figure(3.0 * cols, 3.1 * rows)
    x, y = scan.x_m() * 1e3, scan.y_m() * 1e3
    p = scan.pitch_m * 1e3
    ext = [x[0] - p / 2, x[-1] + p / 2, y[-1] + p / 2, y[0] - p / 2]
    reg = ev.registration
    for a, i in enumerate(picks):
        ax = fig.add_subplot(rows, cols, a + 1)
        ax.imshow(scan.intensity[i], extent=ext, cmap="inferno")
        for k, d in enumerate(detectors):
            (cx, cy), (w, h) = d.center_xy_m, d.size_xy_m
            corners = [reg.to_scan(cx + sx * w / 2, cy + sy * h / 2) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
            color = "lime" if d.class_index == ev.labels[i] else ("cyan" if d.class_index == ev.predictions[i] else "w")
            ax.add_patch(Polygon(np.array(corners) * 1e3, closed=True, fill=False, ec=color,
                                 lw=1.2 if color != "w" else 0.6, ls="-" if d.sign > 0 else "--"))
        ax.set_title(f"{ev.sample_ids[i]}: label {ev.labels[i]}, pred {ev.predictions[i]}", fontsize=8)
        ax.tick_params(labelsize=6)
        if a % cols == 0:
            ax.set_ylabel("y (mm)", fontsize=7)
        ax.set_xlabel("x (mm)", fontsize=7)
    fig.suptitle("scans with registered detectors (green: true class, cyan: predicted)", fontsize=9)
    _save(fig, path)


# --------------------------------------------------------------------------- documents
def _fmt(v, spec) -> str:
    """``v`` formatted with ``spec``, or ``not computable`` for a value that does not exist (None)."""
    return "not computable" if v is None else format(v, spec)


def _md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def markdown(ev, figures) -> str:
    """``report.md`` text for ``ev``; ``figures`` lists (file name, caption) of the PNGs."""
    j = ev.to_json()
    lo, hi = j["accuracy_ci95"]
    L = [f"# Evaluation of `{ev.source}`", "",
         f"Design `{ev.design}`: {ev.n_detectors} detectors, {ev.n_classes} classes. "
         f"{ev.n} samples ({'detector powers' if ev.kind == 'detectors' else 'raster scans'}).", "",
         "## Summary", "", "```", ev.summary(max_disagreements=50), "```", ""]
    rows = [("accuracy", f"{100 * ev.accuracy:.1f} % ({ev.correct}/{ev.n})"),
            ("95 % interval (Wilson)", f"{100 * lo:.1f} - {100 * hi:.1f} %"),
            ("median margin", f"{np.median(ev.margins):.3f}")]
    if ev.simulation is not None:
        s = ev.simulation
        rows += [("simulated accuracy, same inputs", f"{100 * s['accuracy']:.1f} %"),
                 ("same prediction as simulation", f"{100 * s['same_prediction']['rate']:.1f} %")]
    L += _md_table(["quantity", "value"], rows) + [""]
    if ev.gain_fit is not None:
        g = j["calibration"]["fitted_gains"]
        L += ["## Fitted gains", "",
              f"Least squares against the simulation, relative to their mean; scale {_fmt(g['scale'], '.4g')} "
              f"measured units per simulated unit; rms relative residual {_fmt(g['rms_relative_residual'], '.3g')}. "
              + ("Applied." if j["calibration"].get("fitted_gains_applied") else
                 "Not applied (see gains.json)." if _usable_gains(g["gains"]) else
                 "Not applied; no gains.json written (no positive gains could be fitted)."), ""]
        L += _md_table(["detector", "gain", "std. error"],
                       [(f"det{k}", "-" if v is None else f"{v:.4f}", "-" if e is None else f"{e:.4f}")
                        for k, (v, e) in enumerate(zip(g["gains"], g["stderr"]))]) + [""]
    dis = ev.disagreements()
    if dis:
        L += ["## Samples where hardware and simulation disagree", ""]
        L += _md_table(["sample", "input", "label", "measured", "simulated", "correlation", "margin"],
                       [(d["sample"], d["input"], d["label"], d["measured"], d["simulated"],
                         "-" if d["correlation"] is None else f"{d['correlation']:.3f}", f"{d['margin']:.3f}")
                        for d in dis]) + [""]
    L += ["## Figures", ""]
    for name, caption in figures:
        L += [f"### {caption}", "", f"![{caption}]({name})", ""]
    L += ["All numbers: `evaluation.json`.", ""]
    return "\n".join(L)


def html_page(ev, figures) -> str:
    """``index.html`` text for ``ev``; ``figures`` lists (file name, caption) of the PNGs."""
    j = ev.to_json()
    lo, hi = j["accuracy_ci95"]
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>Evaluation of {e(ev.source)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;}pre{background:#f4f4f4;"
             "padding:1em;overflow-x:auto;}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 8px}img{max-width:100%}</style></head><body>",
             f"<h1>Evaluation of <code>{e(ev.source)}</code></h1>",
             f"<p>Design <code>{e(ev.design)}</code>: accuracy <b>{100 * ev.accuracy:.1f} %</b> "
             f"({ev.correct}/{ev.n}), 95 % interval {100 * lo:.1f} - {100 * hi:.1f} % (Wilson).</p>",
             f"<pre>{e(ev.summary(max_disagreements=50))}</pre>"]
    for name, caption in figures:
        parts.append(f"<h2>{e(caption)}</h2><p><a href='{e(name)}'><img src='{e(name)}' alt='{e(caption)}'></a></p>")
    parts.append("<p>All numbers: <a href='evaluation.json'>evaluation.json</a>; "
                 "the same report as <a href='report.md'>Markdown</a>.</p></body></html>")
    return "\n".join(parts)


def check_report_dir(path, force=False) -> Path:
    """Refuse an existing non-empty folder unless ``force`` (called before any work).

    Also refused: a file (or a link to one) at ``path``, always; a dangling symbolic link,
    unless ``force``. Whether the folder holds an input of the command is the caller's
    check (:func:`diffractive._io.refuse_overwriting_inputs`).
    """
    path = Path(path)
    if os.path.lexists(path) and not path.exists():
        if not force:
            raise OutputExists(path, "is a dangling symbolic link", {"force": "replace it"})
    elif path.exists():
        if not path.is_dir():
            raise OutputExists(path, "exists and is not a folder", {})
        if any(path.iterdir()) and not force:
            raise OutputExists(path, "exists and is not empty", {"force": "replace it"})
    if not path.parent.exists():
        raise FileNotFoundError(f"{path.parent}: no such folder (for the report folder {path})")
    return path


@contextlib.contextmanager
def staged_report_dir(path, force=False):
    """A temporary folder beside the report folder ``path`` (checked by :func:`check_report_dir`)
    to write the report into; on success it replaces ``path`` whole (:func:`_swap_into_place`),
    on any failure it is removed: a report appears whole or not at all."""
    path = check_report_dir(path, force)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_report(ev, path, *, scan=None, detectors=None, force=False) -> list:
    """Write figures, ``report.md``, ``index.html``, ``evaluation.json`` (and ``gains.json``
    when gains were fitted) into folder ``path``, atomically. Returns the file names.

    ``scan`` (the :class:`~.io.Scan` that was evaluated) and ``detectors`` (the design's) add
    the scan figure; ``force`` replaces a non-empty folder.
    """
    with staged_report_dir(path, force) as tmp:
        figures = []
        confusion_figure(ev, tmp / "confusion.png")
        figures.append(("confusion.png", "Confusion matrix"))
        if ev.sim_powers is not None:
            powers_figure(ev, tmp / "powers.png")
            figures.append(("powers.png", "Measured vs simulated detector powers"))
        distribution_figure(ev, tmp / "distribution.png")
        figures.append(("distribution.png", "Distribution of power over the detectors, per true class"))
        margin_figure(ev, tmp / "margins.png")
        figures.append(("margins.png", "Classification margins"))
        if scan is not None and ev.registration is not None and detectors is not None:
            scan_figure(ev, scan, detectors, tmp / "scan.png")
            figures.append(("scan.png", "Scans with the registered detectors"))
        (tmp / "evaluation.json").write_text(json.dumps(ev.to_json(), indent=1, allow_nan=False) + "\n")
        g = ev.calibration.get("fitted_gains") if ev.gain_fit is not None else None
        if g is not None and _usable_gains(g["gains"]):
            (tmp / "gains.json").write_text(json.dumps({"gains": [1.0 if v is None else v for v in g["gains"]],
                                                        "stderr": g["stderr"], "scale": g["scale"],
                                                        "fitted_on": ev.source}, indent=1, allow_nan=False) + "\n")
        (tmp / "report.md").write_text(markdown(ev, figures))
        (tmp / "index.html").write_text(html_page(ev, figures))
    return sorted(p.name for p in Path(path).iterdir())


def _usable_gains(gains) -> bool:
    """True when fitted ``gains`` (None where not fitted) can be a calibration file: some fitted, all positive."""
    fitted = [v for v in gains if v is not None]
    return bool(fitted) and all(v > 0 for v in fitted)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished folder ``tmp`` to ``path``; what was at ``path`` is removed only once
    the new folder is in place (and put back if the rename fails)."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        os.rmdir(path)
        os.replace(tmp, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    os.replace(path, old / "x")  # a symbolic link is moved itself; what it points to is never touched
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old / "x", path)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)
