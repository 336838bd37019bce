"""The one figure style of the project: matplotlib's object API, no pyplot.

Figures are ``matplotlib.figure.Figure`` objects drawn by the Agg canvas, so nothing here
touches pyplot's global state or selects a backend for the process (an application that
uses pyplot itself keeps its own backend), and importing this module loads no matplotlib:
matplotlib is loaded when the first figure is made. Used by the design-folder figures
(:mod:`training.figures`) and the evaluation report (:mod:`diffractive.measured.report`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._io import atomic_write

DPI = 110        # every PNG the project writes


def new_figure(width_in: float, height_in: float):
    """An empty ``Figure`` of ``width_in`` x ``height_in`` inches with an Agg canvas attached."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path) -> Path:
    """Write ``fig`` to ``path`` as PNG (``DPI``, tight bounding box), atomically: a reader
    never sees a half-written figure and a failed write leaves nothing behind."""
    return atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))


def extent_mm(extent_yx_m) -> list:
    """``imshow`` extent ``[left, right, bottom, top]`` in mm of a centred plane of size
    ``extent_yx_m`` = (height, width) metres, row 0 at the top at y = -height / 2 (rows run
    along +y, as the grid's do)."""
    h, w = (float(v) * 1e3 for v in extent_yx_m)
    return [-w / 2, w / 2, h / 2, -h / 2]


def draw_matrix(ax, m, title, xlabel, ylabel, fmt="d", cmap="Blues"):
    """A matrix (R, C) as an image with every cell written in it (up to 400 cells; zeros
    left blank for counts, ``fmt = "d"``; ``fmt = "f"``: two decimals). Returns the image."""
    m = np.asarray(m, dtype=float)
    im = ax.imshow(np.nan_to_num(m), cmap=cmap, vmin=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    if m.shape[0] * m.shape[1] <= 400:
        hi = np.nanmax(m) if np.isfinite(m).any() else 1
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if not np.isfinite(m[i, j]) or (fmt == "d" and m[i, j] == 0):
                    continue
                txt = f"{int(m[i, j])}" if fmt == "d" else f"{m[i, j]:.2f}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 0.6 * hi else "black")
    return im
