"""Tolerance reports: curves (PNG), a table (Markdown and HTML) and the JSON of a tolerance analysis.

:func:`write_report` writes, into a new folder, ``tolerance.json`` (:meth:`ToleranceResult.to_json`),
``tolerance.md`` / ``tolerance.html`` (the budget's expected accuracy, then one row per error
kind: its tolerance for a 1- and a 5-point drop and the accuracy at the budget's size) and
``tolerance.png`` (one panel per error kind: mean accuracy against the size of that error with
its 95 % interval, the ideal and the as-printed accuracy marked). :func:`curves_figure` draws
several designs' curves into one figure (the README's comparison of a design and its robust
version).
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ._io import atomic_write_bytes
from ._plot import new_figure, save_png
from .budget import KINDS

#: how each unit is shown: (multiplier, label)
_SHOW = {"m": (1e3, "mm"), "deg": (1.0, "deg"), "": (100.0, "%")}


def _size_text(kind: str, size) -> str:
    if size is None:
        return "beyond the sweep"
    mult, label = _SHOW[KINDS[kind].unit]
    return f"{size * mult:.3g} {label}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def table_rows(result) -> list[list[str]]:
    """The table as rows of strings (first row: header)."""
    rows = [["error kind", "what", "budget", "drop 1 pt at", "drop 5 pt at", "accuracy at budget size"]]
    for s in result.sweeps:
        size = result.budget.size(s.kind)
        at_budget = next((p for p in s.points if size and math.isclose(p.size, size)), None)
        rows.append([s.kind, KINDS[s.kind].what, _size_text(s.kind, size) if size else "-",
                     _size_text(s.kind, s.tolerance_1pt), _size_text(s.kind, s.tolerance_5pt),
                     "-" if at_budget is None else f"{_pct(at_budget.mean)} ({len(at_budget.accuracies)} draws)"])
    return rows


def _headline(result) -> list[str]:
    lines = [f"design: {result.design or '(unnamed)'}; dataset: {result.dataset or '?'}; {result.n_images} images; "
             f"oversampling k = {result.oversample}; seed {result.seed}"
             + (f"; source {result.source} (the wavelength error detunes every line)" if "lines" in result.source
                else ""),
             f"ideal accuracy (design as simulated): {_pct(result.ideal_accuracy)}",
             f"as printed, no assembly errors (budget '{result.budget.name}' printing model): "
             f"{_pct(result.printed.mean)}"]
    if result.expected is not None:
        lo, hi = result.expected.interval
        lines.append(f"expected under budget '{result.budget.name}': {_pct(result.expected.mean)} "
                     f"(95 % interval {_pct(lo)} - {_pct(hi)}), 5th percentile {_pct(result.expected.p5)}, "
                     f"worst {_pct(min(result.expected.accuracies))}, {len(result.expected.accuracies)} draws")
    if result.sweeps:
        lines.append(f"sweeps: one error kind at a time on {result.sweep_images} images, "
                     f"{len(result.sweeps[0].points[1].accuracies)} draws per point")
    return lines


def _frequency_rows(result) -> list[list[str]]:
    rows = [["source frequency", "accuracy (as printed, no assembly error)"]]
    for r in result.frequency_sweep or []:
        rows.append([f"{r['frequency_thz']:.4g} THz", f"{_pct(r['accuracy'])} ({r['n']} images)"])
    return rows


def markdown(result) -> str:
    """The report as Markdown."""
    out = ["# Tolerance analysis", ""] + [f"- {line}" for line in _headline(result)] + [""]
    for rows, figure, alt in ((table_rows(result), "tolerance.png", "tolerance curves"),
                              (_frequency_rows(result), "frequency.png", "accuracy against source frequency")):
        if len(rows) > 1:
            out.append("| " + " | ".join(rows[0]) + " |")
            out.append("|" + "---|" * len(rows[0]))
            out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
            out.append("")
            out.append(f"![{alt}]({figure})")
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def html_page(result) -> str:
    """The report as a self-contained HTML page (the figure next to it as tolerance.png)."""
    rows = table_rows(result)
    body = "".join(f"<li>{html.escape(line)}</li>" for line in _headline(result))
    table = ""
    if len(rows) > 1:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
        table = f"<table><tr>{head}</tr>{cells}</table><img src='tolerance.png' alt='tolerance curves'>"
    freq = _frequency_rows(result)
    if len(freq) > 1:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in freq[0])
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in freq[1:])
        table += f"<table><tr>{head}</tr>{cells}</table><img src='frequency.png' alt='accuracy against frequency'>"
    return ("<!doctype html><meta charset='utf-8'><title>Tolerance analysis</title>"
            "<style>body{font-family:sans-serif;max-width:70em}td,th{padding:2px 8px;border-bottom:1px solid #ccc}"
            f"img{{max-width:100%}}</style><h1>Tolerance analysis</h1><ul>{body}</ul>{table}\n")


def curves_figure(results, labels=None):
    """One panel per error kind swept in any of ``results`` (each a :class:`ToleranceResult` or
    its ``to_json()`` / a parsed tolerance.json); a line per result (mean accuracy with its 95 %
    interval), dotted at its ideal accuracy, the budget's size dashed. Returns the Figure."""
    docs = [r if isinstance(r, dict) else r.to_json() for r in results]
    labels = labels or [d.get("design") or f"design {i + 1}" for i, d in enumerate(docs)]
    kinds = [k for k in KINDS if any(s["kind"] == k for d in docs for s in d["sweeps"])]
    cols = min(4, max(1, len(kinds)))
    rows = max(1, math.ceil(len(kinds) / cols))
    fig = new_figure(3.4 * cols, 2.8 * rows)
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(rows, cols, i + 1)
        mult, unit = _SHOW[KINDS[kind].unit]
        for d, label, color in zip(docs, labels, colors * 4):
            s = next((s for s in d["sweeps"] if s["kind"] == kind), None)
            if s is None:
                continue
            x = [p["size"] * mult for p in s["points"]]
            ax.plot(x, [100 * p["mean"] for p in s["points"]], "o-", color=color, ms=3, label=label)
            ax.fill_between(x, [100 * p["ci95"][0] for p in s["points"]], [100 * p["ci95"][1] for p in s["points"]],
                            color=color, alpha=0.2, lw=0)
            ax.axhline(100 * d["ideal_accuracy"], color=color, ls=":", lw=1)
            size = d["budget"].get(kind, {})
            size = size.get("uniform", size.get("normal", size.get("fraction")))
            if size:
                ax.axvline(size * mult, color="grey", ls="--", lw=0.8)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel(f"size ({unit})", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 100)
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("accuracy against each error alone (dotted: ideal; dashed: the budget's size)", fontsize=9)
    fig.tight_layout()
    return fig


def write_report(result, folder) -> Path:
    """Write the report files into ``folder`` (created; must not exist or be empty)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "tolerance.json", (json.dumps(result.to_json(), indent=1) + "\n").encode())
    atomic_write_bytes(folder / "tolerance.md", markdown(result).encode())
    atomic_write_bytes(folder / "tolerance.html", html_page(result).encode())
    if result.sweeps:
        save_png(curves_figure([result]), folder / "tolerance.png")
    if result.frequency_sweep:
        from .simulate import plot_frequency_sweep  # noqa: PLC0415

        plot_frequency_sweep({result.design or "design": result.frequency_sweep}, folder / "frequency.png",
                             design_frequency_thz=result.design_frequency_thz)
    return folder


__all__ = ["curves_figure", "html_page", "markdown", "table_rows", "write_report"]
