"""The sampling grid shared by every plane of a stack.

Convention (also in docs/design-format.md): the optical axis passes through the centre
of the grid; x runs along columns and y along rows, both increasing with the index;
pixel (i, j) has its centre at

    x = (j - (nx - 1) / 2) * pitch_m,    y = (i - (ny - 1) / 2) * pitch_m.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import positive_finite, shape2


@dataclass(frozen=True)
class Grid:
    """A square-pixel grid of ``shape = (ny, nx)`` pixels (rows, columns) of side ``pitch_m`` metres."""

    shape: tuple[int, int]
    pitch_m: float

    def __post_init__(self):
        object.__setattr__(self, "shape", shape2("shape", self.shape))
        object.__setattr__(self, "pitch_m", positive_finite("pitch_m", self.pitch_m))

    @property
    def ny(self) -> int:
        return self.shape[0]

    @property
    def nx(self) -> int:
        return self.shape[1]

    @property
    def extent_yx_m(self) -> tuple[float, float]:
        """Physical size ``(height along y, width along x)`` in metres: ``(ny, nx) * pitch_m``."""
        return self.ny * self.pitch_m, self.nx * self.pitch_m

    def x_m(self) -> np.ndarray:
        """Pixel-centre x coordinates (nx,), metres."""
        return (np.arange(self.nx) - (self.nx - 1) / 2) * self.pitch_m

    def y_m(self) -> np.ndarray:
        """Pixel-centre y coordinates (ny,), metres."""
        return (np.arange(self.ny) - (self.ny - 1) / 2) * self.pitch_m

    def meshgrid(self) -> tuple[np.ndarray, np.ndarray]:
        """``(X, Y)`` of shape (ny, nx), metres."""
        return np.meshgrid(self.x_m(), self.y_m(), indexing="xy")
