"""Figures written into a design folder: phase maps, mean output per class, confusion, curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, path: Path):
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)


def phase_maps(design, path: Path):
    plt = _plt()
    L = design.n_layers
    fig, axes = plt.subplots(1, L, figsize=(3 * L, 3.2), squeeze=False)
    ext = [v * 1e3 for v in (-design.grid.extent_yx_m[1] / 2, design.grid.extent_yx_m[1] / 2,
                             design.grid.extent_yx_m[0] / 2, -design.grid.extent_yx_m[0] / 2)]
    for l, ax in enumerate(axes[0]):
        im = ax.imshow(np.mod(design.phases[l], 2 * np.pi), cmap="twilight", vmin=0, vmax=2 * np.pi, extent=ext)
        ax.set_title(f"layer {l + 1}")
        ax.set_xlabel("x (mm)")
    axes[0][0].set_ylabel("y (mm)")
    fig.colorbar(im, ax=axes[0].tolist(), label="phase (rad)", shrink=0.8)
    _save(fig, path)
    plt.close(fig)


def draw_detectors(ax, detectors, color="w"):
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    for d in detectors:
        (cx, cy), (w, h) = d.center_xy_m, d.size_xy_m
        ax.add_patch(Rectangle(((cx - w / 2) * 1e3, (cy - h / 2) * 1e3), w * 1e3, h * 1e3, fill=False,
                               ec=color if d.sign > 0 else "r", lw=0.8))
        ax.text(cx * 1e3, (cy - h / 2) * 1e3, str(d.class_index), color=color, fontsize=6, ha="center", va="bottom")


def class_outputs(design, mean_intensity, path: Path, class_names=None):
    """Mean output-plane intensity per class, shape (C, ny, nx), with detectors drawn."""
    plt = _plt()
    C = mean_intensity.shape[0]
    cols = min(5, C)
    rows = (C + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    ext = [v * 1e3 for v in (-design.grid.extent_yx_m[1] / 2, design.grid.extent_yx_m[1] / 2,
                             design.grid.extent_yx_m[0] / 2, -design.grid.extent_yx_m[0] / 2)]
    for c in range(rows * cols):
        ax = axes[c // cols][c % cols]
        ax.axis("off")
        if c >= C:
            continue
        ax.imshow(mean_intensity[c], cmap="inferno", extent=ext)
        draw_detectors(ax, design.detectors)
        ax.set_title(class_names[c] if class_names else f"class {c}", fontsize=8)
    fig.suptitle("mean output-plane intensity per class (detectors outlined)")
    _save(fig, path)
    plt.close(fig)


def confusion(matrix, path: Path, title="confusion matrix (rows: true, columns: predicted)"):
    plt = _plt()
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                    color="w" if matrix[i, j] > matrix.max() / 2 else "k")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    _save(fig, path)
    plt.close(fig)


def learning_curves(history, path: Path):
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
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
    _save(fig, path)
    plt.close(fig)
