"""One printed layer: the active height map inside a frame with holes and marks.

Plate coordinates (mm, the STL's): the optical axis is at x = y = 0 and the active area
is centred on it, pixel (i, j) of the design at x = (j - (nx-1)/2)*pitch,
y = (i - (ny-1)/2)*pitch - the design grid's own convention - so the STL lies in the
simulation's (x, y) frame when the flat bottom (z = 0) faces the source and the relief
faces the detectors (+z). Seen from +z:

* the frame (``margin_mm`` wide) is flush with the highest possible pixel, so the plate
  can lie relief-down without touching the relief;
* four square through-holes, one centred in each frame corner, for alignment pins;
* a square notch cut from the (+x, +y) outer corner - the plate is not symmetric under
  any flip or rotation;
* "L<nn> ^" engraved in the top (+y) margin: the layer number and an arrow pointing to +y;
  it reads correctly from the +z side.

Everything is one height field (:mod:`fabrication.mesh`) - no boolean operations - so a
1000 x 1000 layer is meshed in seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import font
from .materials import FabricationError
from .mesh import HeightField


@dataclass
class PlateSpec:
    """Frame geometry (mm). ``None`` entries are derived from the margin."""

    margin_mm: float = 5.0
    hole_mm: float | None = None          # default 0.4 * margin
    notch_mm: float | None = None         # default 0.2 * margin
    text_cell_mm: float = 0.35            # smallest glyph cell; rounded up to whole pixels
    engrave_mm: float = 0.3               # depth of the engraved marks (at most a third of the frame)
    frame_height_mm: float | None = None  # default: flush with the highest possible pixel
    label: bool = True

    def validate(self):
        """Raise :class:`FabricationError` unless every length is a positive finite number
        (``hole_mm``, ``notch_mm``, ``frame_height_mm``: or None)."""
        for name in ("margin_mm", "text_cell_mm", "engrave_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise FabricationError(f"{name} must be a positive number, got {v!r}")
        for name in ("hole_mm", "notch_mm", "frame_height_mm"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise FabricationError(f"{name} must be a positive number or None, got {v!r}")


@dataclass
class PlateLayout:
    """Where everything is, for the mesh, the manifest, tests and the holder (all mm).

    ``shape`` (ny, nx) pixels of ``pitch_mm``; ``frame_level`` and ``engrave_level`` are
    heights in printer layers of ``z_step_mm``; rectangles are (x0, x1, y0, y1) in mm, in
    plate coordinates (optical axis at x = y = 0).
    """

    shape: tuple[int, int]
    pitch_mm: float
    z_step_mm: float
    margin_mm: float
    frame_level: int
    engrave_level: int
    active: tuple[float, float, float, float]          # x0, x1, y0, y1
    outer: tuple[float, float, float, float]
    holes: list = field(default_factory=list)          # (x0, x1, y0, y1) through-holes
    notch: tuple | None = None                         # (x0, x1, y0, y1) removed corner
    text: str = ""
    text_cells: list = field(default_factory=list)     # (x0, x1, y0, y1) engraved cells
    text_cell_mm: float = 0.0

    @property
    def size_mm(self) -> tuple[float, float]:
        """Outer (width along x, height along y) of the plate, mm."""
        x0, x1, y0, y1 = self.outer
        return x1 - x0, y1 - y0

    @property
    def thickness_mm(self) -> float:
        """Frame thickness (``frame_level * z_step_mm``), mm: the plate's total thickness."""
        return self.frame_level * self.z_step_mm

    def to_json(self) -> dict:
        """The manifest's ``plate`` entry: rectangles and thicknesses in mm (rounded to 1e-6 mm), the label."""
        r = lambda t: [round(float(v), 6) for v in t]  # noqa: E731
        return {"outer_mm": r(self.outer), "active_mm": r(self.active), "frame_thickness_mm": self.thickness_mm,
                "margin_mm": self.margin_mm, "holes_mm": [r(h) for h in self.holes],
                "notch_mm": r(self.notch) if self.notch else None, "label": self.text,
                "engrave_depth_mm": (self.frame_level - self.engrave_level) * self.z_step_mm}


def _rect(cx, cy, w, h):
    return (cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2)


def plate_layout(shape, pitch_mm, z_step_mm, frame_level, layer_number=None, spec: PlateSpec | None = None,
                 warnings=None) -> PlateLayout:
    """Frame, holes, notch and label positions for one layer.

    ``shape`` (ny, nx) pixels of ``pitch_mm``; ``z_step_mm`` the printer layer (mm);
    ``frame_level`` the frame height in printer layers; ``layer_number`` (1-based) is
    engraved when given (and ``spec.label``); a label that does not fit is dropped with a message appended to
    ``warnings`` (a list). Returns a :class:`PlateLayout` (mm).
    """
    spec = spec or PlateSpec()
    spec.validate()
    ny, nx = shape
    m = float(spec.margin_mm)
    W, H = nx * pitch_mm, ny * pitch_mm
    active = (-W / 2, W / 2, -H / 2, H / 2)
    outer = (-W / 2 - m, W / 2 + m, -H / 2 - m, H / 2 + m)
    hole = 0.4 * m if spec.hole_mm is None else float(spec.hole_mm)
    notch = 0.2 * m if spec.notch_mm is None else float(spec.notch_mm)
    if hole / 2 + notch + 0.05 * m > m / 2:
        raise FabricationError(f"holes ({hole:g} mm) and notch ({notch:g} mm) do not fit in a {m:g} mm frame margin")
    cx, cy = W / 2 + m / 2, H / 2 + m / 2
    holes = [_rect(sx * cx, sy * cy, hole, hole) for sy in (-1, 1) for sx in (-1, 1)]
    notch_r = (outer[1] - notch, outer[1], outer[3] - notch, outer[3])
    depth = max(1, int(round(min(spec.engrave_mm, frame_level * z_step_mm / 3) / z_step_mm)))
    engrave_level = frame_level - depth
    if engrave_level < 1:
        raise FabricationError("the frame is too thin for engraved marks")
    lay = PlateLayout(shape=(ny, nx), pitch_mm=pitch_mm, z_step_mm=z_step_mm, margin_mm=m, frame_level=frame_level,
                      engrave_level=engrave_level, active=active, outer=outer, holes=holes, notch=notch_r)
    if spec.label and layer_number is not None:
        k = max(1, math.ceil(spec.text_cell_mm / pitch_mm - 1e-9))   # glyph cell in whole pixel columns
        g = k * pitch_mm
        for text in (f"L{layer_number:02d} ^", f"L{layer_number:02d}", f"{layer_number}"):
            cols = font.text_width_cells(text)
            if (cols + 2) * k <= nx and font.GLYPH_H * g + 0.2 * m <= m:
                break
        else:
            text = ""
            if warnings is not None:
                warnings.append(f"layer {layer_number}: no room for the engraved label "
                                f"(margin {m:g} mm, glyph cell {g:.3g} mm); the notch still marks the orientation")
        if text:
            x0 = active[0] + k * pitch_mm            # one glyph cell in from the active edge, on pixel lines
            y0 = active[3] + (m - font.GLYPH_H * g) / 2
            lay.text, lay.text_cell_mm = text, g
            lay.text_cells = [(x0 + c * g, x0 + (c + 1) * g, y0 + r * g, y0 + (r + 1) * g)
                              for c, r in font.glyph_cells(text)]
    return lay


def _breaks(values, tol=1e-7):
    v = np.sort(np.asarray(values, dtype=np.float64))
    keep = np.concatenate([[True], np.diff(v) > tol])
    return v[keep]


def _index(breaks, value):
    i = int(np.argmin(np.abs(breaks - value)))
    if abs(breaks[i] - value) > 1e-6:
        raise AssertionError(f"{value} is not a grid line")
    return i


def plate_height_field(levels, layout: PlateLayout) -> HeightField:
    """The layer's :class:`HeightField`: ``levels`` (ny, nx) in the active area, the frame around.

    ``levels`` are integer heights in printer layers, each between 1 and ``layout.frame_level``.
    """
    levels = np.asarray(levels)
    ny, nx = layout.shape
    if levels.shape != (ny, nx):
        raise FabricationError(f"height map has shape {levels.shape}, expected {(ny, nx)}")
    if np.any(levels <= 0):
        raise FabricationError(f"{int(np.sum(levels <= 0))} pixels have no material (height 0); "
                               "use a base of at least one printer layer")
    if np.any(levels > layout.frame_level):
        raise FabricationError("the frame is lower than the highest pixel")
    ax0, ax1, ay0, ay1 = layout.active
    p = layout.pitch_mm
    xs = [layout.outer[0], layout.outer[1]] + list(ax0 + p * np.arange(nx + 1))
    ys = [layout.outer[2], layout.outer[3]] + list(ay0 + p * np.arange(ny + 1))
    rects = list(layout.holes) + ([layout.notch] if layout.notch else []) + list(layout.text_cells)
    for x0, x1, y0, y1 in rects:
        xs += [x0, x1]
        ys += [y0, y1]
    xb, yb = _breaks(xs), _breaks(ys)
    # the active pixel lines must survive deduplication exactly once each
    i0, i1 = _index(xb, ax0), _index(xb, ax1)
    j0, j1 = _index(yb, ay0), _index(yb, ay1)
    if i1 - i0 != nx or j1 - j0 != ny:
        raise AssertionError("frame features fall on the active area's grid lines")
    L = np.full((len(yb) - 1, len(xb) - 1), layout.frame_level, dtype=np.int32)
    L[j0:j1, i0:i1] = levels

    def cells(r):
        x0, x1, y0, y1 = r
        return slice(_index(xb, x0), _index(xb, x1)), slice(_index(yb, y0), _index(yb, y1))

    for r in layout.holes + ([layout.notch] if layout.notch else []):
        sx, sy = cells(r)
        L[sy, sx] = 0
    for r in layout.text_cells:
        sx, sy = cells(r)
        L[sy, sx] = layout.engrave_level
    return HeightField(xb, yb, L, layout.z_step_mm, fan_bottom=(j0, j1, i0, i1))


def expected_volume_mm3(levels, layout: PlateLayout) -> float:
    """Volume of the plate in mm^3 from the layout alone (not from the mesh): frame + pixels - cuts.

    ``levels`` (ny, nx): pixel heights in printer layers.
    """
    x0, x1, y0, y1 = layout.outer
    ax0, ax1, ay0, ay1 = layout.active
    z = layout.z_step_mm
    area = lambda r: (r[1] - r[0]) * (r[3] - r[2])  # noqa: E731
    frame_area = (x1 - x0) * (y1 - y0) - (ax1 - ax0) * (ay1 - ay0)
    v = frame_area * layout.frame_level * z
    v += float(np.sum(np.asarray(levels, dtype=np.float64))) * layout.pitch_mm ** 2 * z
    for r in layout.holes + ([layout.notch] if layout.notch else []):
        v -= area(r) * layout.frame_level * z
    v -= sum(area(r) for r in layout.text_cells) * (layout.frame_level - layout.engrave_level) * z
    return v
