"""The ``--report`` folder of ``d2nn diagnose``: fit.json, diagnosis.md and three figures.

* ``fit.json`` -- :meth:`~.diagnose.Diagnosis.to_json` (its ``as_built`` is what
  ``d2nn train --as-built`` reads);
* ``patterns.png`` -- measured, fitted and ideal output (scans or detector powers) of up to
  four samples, each model scaled to the measurement by least squares;
* ``offsets.png`` -- the fitted lateral offset of every plane (layers, detector plane) as an
  arrow with its 2-sigma error box, undetermined ones greyed;
* ``loss.png`` -- the loss after each Levenberg-Marquardt step of every start and of the
  refinement.

Written into a temporary folder beside ``path`` and renamed into place
(:func:`diffractive.measured.report.write_report`'s scheme): never half-written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._plot import new_figure, save_png
from .report import staged_report_dir


def patterns_figure(dg, path) -> None:
    ex = dg.examples
    n = len(ex["indices"])
    rows = (("measured", "measured"), ("fitted", "fitted model"), ("ideal", "as designed"))
    if dg.kind == "scan":
        fig = new_figure(2.6 * n, 7.5)
        axes = fig.subplots(3, n, squeeze=False)
        for j in range(n):
            vmax = float(np.max(ex["measured"][j])) or 1.0
            for i, (key, title) in enumerate(rows):
                ax = axes[i, j]
                ax.imshow(ex[key][j], cmap="inferno", vmin=0, vmax=vmax, origin="lower")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(title)
            axes[0, j].set_title(f"sample {ex['indices'][j]}")
    else:
        fig = new_figure(3.2 * n, 3)
        axes = fig.subplots(1, n, squeeze=False)
        for j in range(n):
            ax = axes[0, j]
            K = ex["measured"].shape[1]
            w = 0.27
            for i, (key, title) in enumerate(rows):
                ax.bar(np.arange(K) + (i - 1) * w, ex[key][j], w, label=title)
            ax.set_title(f"sample {ex['indices'][j]}")
            ax.set_xlabel("detector")
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def offsets_figure(dg, path) -> None:
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    planes = []
    for e, p in zip(dg.estimates(), dg.params):
        if p.kind in ("lateral", "detector", "input"):
            planes.append((p.label.rsplit(" ", 1)[0], p.label[-1], e))
    names = list(dict.fromkeys(name for name, _, _ in planes))
    fig = new_figure(max(4, 1.3 * len(names) + 1), 3.6)
    ax = fig.subplots()
    if not names:
        ax.text(0.5, 0.5, "no lateral offsets fitted", ha="center", va="center", transform=ax.transAxes)
    for i, name in enumerate(names):
        xy = {ax_: e for nm, ax_, e in planes if nm == name}
        dx, dy = xy["x"]["value"], xy["y"]["value"]
        sx, sy = (xy[a]["sigma"] or 0.0 for a in "xy")
        ok = xy["x"]["determined"] and xy["y"]["determined"]
        colour = "C0" if ok else "0.7"
        ax.add_patch(Rectangle((i + dx - 2 * sx, dy - 2 * sy), 4 * sx, 4 * sy, color=colour, alpha=0.3))
        ax.annotate("", xy=(i + dx, dy), xytext=(i, 0), arrowprops={"arrowstyle": "->", "color": colour})
        ax.plot([i], [0], "k.", ms=4)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, fontsize=8)
    ax.set_ylabel("y offset (mm); x offset drawn along the axis")
    ax.axhline(0, color="0.8", lw=0.5)
    ax.set_title("fitted lateral offsets (mm), 2-sigma boxes; grey: not determined", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def loss_figure(dg, path) -> None:
    fig = new_figure(5, 3.4)
    ax = fig.subplots()
    for j, s in enumerate(dg.starts):
        ax.semilogy(s.losses, "-o", ms=3, label=f"start {j + 1} ({dg.samples_fitted['coarse']} samples)")
    ax.semilogy(dg.fine.losses, "k-s", ms=3, label=f"refinement ({dg.samples_fitted['fine']} samples)")
    ax.set_xlabel("Levenberg-Marquardt step")
    ax.set_ylabel("sum of squared residuals")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def markdown(dg) -> str:
    lines = [f"# Diagnosis of {dg.design_name} from {dg.measurement}", "", "```", dg.summary(), "```", "",
             "![patterns](patterns.png)", "", "![offsets](offsets.png)", "", "![loss](loss.png)", ""]
    return "\n".join(lines)


def write_report(dg, path, *, force=False) -> list:
    """Write the report of :class:`~.diagnose.Diagnosis` ``dg`` into folder ``path``; returns the file names."""
    with staged_report_dir(path, force) as tmp:
        (tmp / "fit.json").write_text(json.dumps(dg.to_json(), indent=1, allow_nan=False) + "\n")
        patterns_figure(dg, tmp / "patterns.png")
        offsets_figure(dg, tmp / "offsets.png")
        loss_figure(dg, tmp / "loss.png")
        (tmp / "diagnosis.md").write_text(markdown(dg))
    return sorted(p.name for p in Path(path).iterdir())


__all__ = ["write_report"]
