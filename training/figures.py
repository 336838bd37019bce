"""Figures written into a design folder: phase maps, mean output per class, confusion, curves.

Drawn in the project's one figure style (:mod:`diffractive._plot`: ``Figure`` objects on the
Agg canvas, no pyplot), so importing or using this module changes nothing for the rest of
the process (no ``matplotlib.use``). Each PNG is written atomically. Lengths on the axes are
in mm; images are drawn with row 0 at the top (y = -height / 2, rows along +y).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffractive._plot import draw_matrix, extent_mm, new_figure, save_png


def phase_maps(design, path: Path):
    """The phase of every layer, wrapped to [0, 2 pi), side by side with one colour bar.

    The panels share the y axis (only the leftmost carries y tick labels) and stand a third of
    a panel apart, so no tick label of a panel runs into its neighbour's."""
    L = design.n_layers
    fig = new_figure(3.3 * L + 0.8, 3.2)
    axes = fig.subplots(1, L, squeeze=False, sharey=True, gridspec_kw={"wspace": 0.3})[0]
    ext = extent_mm(design.grid.extent_yx_m)
    for l, ax in enumerate(axes):
        im = ax.imshow(np.mod(design.phases[l], 2 * np.pi), cmap="twilight", vmin=0, vmax=2 * np.pi, extent=ext)
        ax.set_title(f"layer {l + 1}")
        ax.set_xlabel("x (mm)")
    axes[0].set_ylabel("y (mm)")
    fig.colorbar(im, ax=list(axes), label="phase (rad)", shrink=0.8)
    save_png(fig, path)


def draw_detectors(ax, detectors, color="w"):
    """Outline each detector (mm axes; negative ones of differential pairs in red) and write
    its class above it."""
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    for d in detectors:
        (cx, cy), (w, h) = d.center_xy_m, d.size_xy_m
        ax.add_patch(Rectangle(((cx - w / 2) * 1e3, (cy - h / 2) * 1e3), w * 1e3, h * 1e3, fill=False,
                               ec=color if d.sign > 0 else "r", lw=0.8))
        ax.text(cx * 1e3, (cy - h / 2) * 1e3, str(d.class_index), color=color, fontsize=6, ha="center", va="bottom")


def class_outputs(design, mean_intensity, path: Path, class_names=None):
    """Mean output-plane intensity per class, shape (C, ny, nx), with detectors drawn."""
    C = mean_intensity.shape[0]
    cols = min(5, C)
    rows = (C + cols - 1) // cols
    fig = new_figure(2.6 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    ext = extent_mm(design.grid.extent_yx_m)
    for c in range(rows * cols):
        ax = axes[c // cols][c % cols]
        ax.axis("off")
        if c >= C:
            continue
        ax.imshow(mean_intensity[c], cmap="inferno", extent=ext)
        draw_detectors(ax, design.detectors)
        ax.set_title(class_names[c] if class_names else f"class {c}", fontsize=8)
    fig.suptitle("mean output-plane intensity per class (detectors outlined)")
    save_png(fig, path)


def confusion(matrix, path: Path, title="confusion matrix (rows: true, columns: predicted)"):
    """A confusion matrix (C, C) of counts, rows true classes, columns predicted ones."""
    fig = new_figure(5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    draw_matrix(ax, matrix, title, "predicted", "true")
    ax.title.set_fontsize(9)
    save_png(fig, path)


def learning_curves(history, path: Path):
    """Loss and accuracy per epoch, train and validation (``history``: the trainer's rows)."""
    ep = [h["epoch"] for h in history]
    fig = new_figure(9, 3.5)
    a, b = fig.subplots(1, 2)
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [100 * h["train_accuracy"] for h in history], label="train")
    b.plot(ep, [100 * h["val_accuracy"] for h in history], label="validation")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy (%)")
    b.legend()
    save_png(fig, path)
