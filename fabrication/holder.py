"""The holder: a slotted base that stands the plates at the design's distances.

Holder coordinates (mm, as printed): the floor lies on z = 0, the optical axis runs
along +x at height ``axis_height_mm``, the input plane is x = 0 and the detector
(output) plane x = sum(distances). Plate ``l`` stands upright in a slot whose upstream
wall is at the layer's plane: the plate's flat face (its z = 0) lies on the plane
``x_l = distances[0] + ... + distances[l-1]`` and its relief faces the detectors. The
plate's +y (the engraved arrow) points up (+z) and its +x is the holder's +y, so seen from
the detector side every plate looks as in its STL's top view.

Two side rails and the floor carry the slots; grooves across the rails and the floor
mark the input plane ("IN") and the detector plane ("OUT"), and each slot is numbered
on the floor just downstream of it. Built from boxes with manifold3d booleans (a few
hundred small boxes - fast), so the result is a closed manifold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import font
from .materials import FabricationError


@dataclass
class HolderSpec:
    """Holder geometry; lengths in mm (as printed), ``rail_height_frac`` a fraction of the plate height."""

    clearance_mm: float = 0.2       # per side, between plate and slot walls
    floor_mm: float = 4.0           # floor thickness
    rail_width_mm: float = 5.0
    rail_height_frac: float = 0.35  # rail height above the floor / plate height
    groove_mm: float | None = None  # how deep the plate edges sit in floor and rails (default min(1.5, margin/4))
    pad_mm: float = 14.0            # floor beyond the input and output planes
    mark_width_mm: float = 0.8
    mark_depth_mm: float = 0.6
    text_cell_mm: float = 0.6


@dataclass
class HolderResult:
    """The holder mesh: ``vertices`` (V, 3) float64 in mm, ``faces`` (F, 3) int64 vertex indices
    (closed, outward-wound), ``info`` (planes, slot width, outer size, all mm, and the frame in
    words) and ``warnings`` (strings)."""

    vertices: np.ndarray
    faces: np.ndarray
    info: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def _box(x0, x1, y0, y1, z0, z1):
    from manifold3d import Manifold  # noqa: PLC0415

    return Manifold.cube((x1 - x0, y1 - y0, z1 - z0)).translate((x0, y0, z0))


def _text_boxes(text, x_origin, y_origin, z0, z1, g):
    """Boxes of engraved text lying on the floor, read from above with +x pointing "up".

    Glyph column u runs along -y, glyph row v along +x; ``(x_origin, y_origin)`` is the
    glyph block's bottom-left as read. Cells are enlarged by 2 % so diagonal neighbours overlap.
    """
    e = 0.01 * g
    boxes = []
    for u, v in font.glyph_cells(text):
        x0, y1 = x_origin + v * g, y_origin - u * g
        boxes.append(_box(x0 - e, x0 + g + e, y1 - g - e, y1 + e, z0, z1))
    return boxes


def build_holder(plate_size_mm, plate_thickness_mm, distances_mm, margin_mm, spec: HolderSpec | None = None) -> HolderResult:
    """Holder for plates of outer size ``plate_size_mm`` = (width along plate x, height along plate y).

    ``plate_thickness_mm``: the plates' thickness (frame height); ``distances_mm`` (L+1,):
    the design's gaps in mm, input plane -> layer 1, ..., layer L -> detector plane;
    ``margin_mm``: the plates' frame width (how deep their edges may sit in the grooves).
    Returns a :class:`HolderResult`; raises :class:`FabricationError` when a plate does not
    fit between its plane and the next.
    """
    from manifold3d import Manifold, OpType  # noqa: PLC0415

    s = spec or HolderSpec()
    Wp, Hp = (float(v) for v in plate_size_mm)
    T = float(plate_thickness_mm)
    d = [float(v) for v in distances_mm]
    if len(d) < 2 or any(v <= 0 for v in d):
        raise FabricationError("the holder needs at least one layer and positive distances")
    planes = np.cumsum(d)          # layer planes ..., then the output plane
    layer_x, x_out = planes[:-1], float(planes[-1])
    c, g = s.clearance_mm, (min(1.5, margin_mm / 4) if s.groove_mm is None else s.groove_mm)
    if g >= margin_mm:
        raise FabricationError(f"groove depth {g:g} mm must be smaller than the frame margin {margin_mm:g} mm")
    warnings = []
    min_wall = 1.0
    for i in range(len(layer_x)):
        nxt = layer_x[i + 1] if i + 1 < len(layer_x) else x_out
        room = nxt - layer_x[i]
        need = T + 2 * c + (min_wall if i + 1 < len(layer_x) else 0.0)
        if room < need:
            what = f"layer {i + 2}" if i + 1 < len(layer_x) else "the detector plane"
            raise FabricationError(f"layer {i + 1} ({T:.3f} mm thick plate + {c:g} mm clearance) does not fit "
                                   f"before {what}: only {room:.3f} mm between their planes")
    rail_h = s.rail_height_frac * Hp
    half = Wp / 2 + c + s.rail_width_mm
    x0, x1 = -s.pad_mm, x_out + s.pad_mm
    top = s.floor_mm + rail_h
    body = Manifold.batch_boolean([
        _box(x0, x1, -half, half, 0.0, s.floor_mm),
        _box(x0, x1, Wp / 2 - g, half, 0.0, top),
        _box(x0, x1, -half, -(Wp / 2 - g), 0.0, top)], OpType.Add)
    cuts = []
    for xl in layer_x:   # plate slots through the rails, g deep into the floor
        cuts.append(_box(xl - c, xl + T + c, -(Wp / 2 + c), Wp / 2 + c, s.floor_mm - g, top + 1.0))
    w, dm = s.mark_width_mm, s.mark_depth_mm
    inner = Wp / 2 - g
    for xm in (0.0, x_out):  # plane marks: across both rail tops and the floor between the rails
        cuts.append(_box(xm - w / 2, xm + w / 2, -half - 1, half + 1, top - dm, top + 1.0))
        cuts.append(_box(xm - w / 2, xm + w / 2, -inner - 0.01, inner + 0.01, s.floor_mm - dm, s.floor_mm + 1.0))
    tc = s.text_cell_mm
    z0, z1 = s.floor_mm - dm, s.floor_mm + 1.0
    text_h = font.GLYPH_H * tc
    for label, xc in (("IN", -s.pad_mm / 2), ("OUT", x_out + s.pad_mm / 2)):
        width = font.text_width_cells(label) * tc
        if text_h + 2 * w < s.pad_mm and width < 2 * inner:
            cuts += _text_boxes(label, xc - text_h / 2, width / 2, z0, z1, tc)
        else:
            warnings.append(f"holder: no room to engrave '{label}' (pad {s.pad_mm:g} mm)")
    for i, xl in enumerate(layer_x):   # slot numbers, on the floor just downstream of each slot
        label = str(i + 1)
        nxt = layer_x[i + 1] - c if i + 1 < len(layer_x) else x_out - w / 2
        start = xl + T + c + 1.0
        if start + text_h + 0.5 <= nxt:
            width = font.text_width_cells(label) * tc
            cuts += _text_boxes(label, start, inner - 2.0, z0, z1, tc) if width + 2 < inner else []
        else:
            warnings.append(f"holder: no room to number slot {i + 1}")
    holder = body - Manifold.batch_boolean(cuts, OpType.Add)
    mesh = holder.to_mesh()
    V = np.asarray(mesh.vert_properties, dtype=np.float64)[:, :3]
    F = np.asarray(mesh.tri_verts, dtype=np.int64)
    info = {"input_plane_x_mm": 0.0, "output_plane_x_mm": x_out, "layer_planes_x_mm": [float(v) for v in layer_x],
            "axis_height_mm": s.floor_mm - g + Hp / 2, "slot_width_mm": T + 2 * c, "groove_depth_mm": g,
            "length_mm": x1 - x0, "width_mm": 2 * half, "height_mm": top,
            "frame": "x: optical axis (input plane x = 0), z: up; plates stand in the slots, flat face on the "
                     "layer plane, relief towards the detector, engraved arrow up"}
    return HolderResult(V, F, info, warnings)
