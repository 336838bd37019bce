"""Height-field meshes and plates: closed, consistently wound, right volume and size, exact STL heights."""
import numpy as np
import pytest
import trimesh

from fabrication.materials import FabricationError
from fabrication.mesh import HeightField, height_field_mesh, read_stl_triangles, write_stl
from fabrication.plate import PlateSpec, expected_volume_mm3, plate_height_field, plate_layout
from fabrication.roundtrip import heights_from_stl
from fabrication.validate import edge_check, stl_report


def _load(path):
    """As a slicer sees it: float32 triangles, vertices merged by coordinates."""
    return trimesh.load(str(path), file_type="stl", force="mesh", process=True)


CASES = {
    "single": np.array([[3]]),
    "steps": np.array([[1, 2], [3, 4]]),
    "saddle_a": np.array([[3, 1], [1, 3]]),
    "saddle_b": np.array([[1, 3], [3, 1]]),
    "saddle_unequal": np.array([[5, 2], [1, 4]]),
    "few_levels": np.random.default_rng(0).integers(1, 4, (9, 11)),
    "many_levels": np.random.default_rng(1).integers(1, 66, (13, 10)),
    "flat": np.full((4, 6), 7),
}


@pytest.mark.parametrize("fan", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_height_field_is_closed_and_exact(tmp_path, name, fan):
    levels = CASES[name]
    ny, nx = levels.shape
    # non-uniform columns/rows, as in a plate with a frame
    x = np.concatenate([[0.0], 0.3 + 0.4 * np.arange(nx)])
    y = np.concatenate([[0.0], 0.25 + 0.4 * np.arange(ny)])
    hf = HeightField(x, y, levels, 0.016, fan_bottom=(0, ny, 0, nx) if fan else None)
    m = height_field_mesh(hf)
    chk = edge_check(m.faces, len(m.vertices))
    assert chk.ok, chk
    assert np.unique(m.faces).size == len(m.vertices)         # every vertex used (shared, none stray)
    path = tmp_path / "hf.stl"
    _, vol = write_stl(path, m.vertices, m.faces)
    tm = _load(path)
    assert tm.is_watertight and tm.is_winding_consistent and tm.body_count == 1
    assert len(tm.faces) == m.n_faces                          # merging by coordinates loses nothing
    # volume = integral of the height map (computed here, not by the library)
    expected = float(np.sum(np.outer(np.diff(y), np.diff(x)) * levels)) * 0.016
    assert tm.volume == pytest.approx(expected, rel=1e-3)
    assert vol == pytest.approx(expected, rel=1e-3)
    np.testing.assert_allclose(tm.bounds, [[0, 0, 0], [x[-1], y[-1], levels.max() * 0.016]], atol=1e-6)
    sorted_faces = np.sort(tm.faces, axis=1)
    assert len(np.unique(sorted_faces, axis=0)) == len(sorted_faces)   # no duplicate faces
    assert np.all(tm.area_faces > 0)                                    # no degenerate faces


def test_saddles_counted():
    m = height_field_mesh(HeightField([0, 1, 2], [0, 1, 2], np.array([[3, 1], [1, 3]]), 0.1))
    assert m.n_saddles == 1
    m = height_field_mesh(HeightField([0, 1, 2], [0, 1, 2], np.array([[3, 1], [2, 3]]), 0.1))
    assert m.n_saddles == 1
    m = height_field_mesh(HeightField([0, 1, 2], [0, 1, 2], np.array([[3, 1], [3, 3]]), 0.1))
    assert m.n_saddles == 0


def test_edge_check_detects_broken_meshes():
    tet = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    assert edge_check(tet).ok
    assert not edge_check(tet[:3]).closed                              # a hole
    flipped = tet.copy()
    flipped[0] = flipped[0, ::-1]
    assert not edge_check(flipped).consistent                          # one face wound the wrong way
    assert edge_check(np.vstack([tet, tet[:1]])).duplicate_faces == 1
    assert edge_check(np.vstack([tet, [[0, 0, 1]]])).degenerate_faces == 1


def _plate(shape=(14, 17), pitch=0.4, layer=7, seed=3, **spec):
    levels = np.random.default_rng(seed).integers(31, 97, shape).astype(np.int32)
    lay = plate_layout(shape, pitch, 0.016, 96, layer_number=layer, spec=PlateSpec(**spec))
    return levels, lay


@pytest.mark.parametrize("shape,pitch", [((14, 17), 0.4), ((40, 36), 0.1), ((3, 2), 0.4)])
def test_plate_solid_volume_bounds_and_heights(tmp_path, shape, pitch):
    levels, lay = _plate(shape, pitch)
    hf = plate_height_field(levels, lay)
    m = height_field_mesh(hf)
    assert edge_check(m.faces, len(m.vertices)).ok
    path = tmp_path / "layer.stl"
    write_stl(path, m.vertices, m.faces)
    rep = stl_report(path)
    assert rep["watertight"] and rep["winding_consistent"] and rep["bodies"] == 1
    assert rep["duplicate_faces"] == 0 and rep["degenerate_faces"] == 0
    # volume from the layout alone: frame slab + pixel columns - holes - notch - engraving
    ny, nx = shape
    m_ = lay.margin_mm
    W, H = nx * pitch, ny * pitch
    z = 0.016
    hole, notch = 0.4 * m_, 0.2 * m_
    frame = ((W + 2 * m_) * (H + 2 * m_) - W * H - 4 * hole**2 - notch**2) * 96 * z
    engraved = len(lay.text_cells) * lay.text_cell_mm**2 * (96 - lay.engrave_level) * z
    expected = frame + levels.sum() * pitch**2 * z - engraved
    assert rep["volume_mm3"] == pytest.approx(expected, rel=1e-3)
    assert expected == pytest.approx(expected_volume_mm3(levels, lay), rel=1e-12)
    # bounding box = active area + frame, flat bottom at z = 0, top = frame
    np.testing.assert_allclose(rep["bounds_mm"], [[-W / 2 - m_, -H / 2 - m_, 0], [W / 2 + m_, H / 2 + m_, 96 * z]],
                               atol=1e-5)
    # STL -> height map recovers the quantised heights exactly
    np.testing.assert_array_equal(heights_from_stl(path, shape, pitch, z), levels)
    # flat bottom: every downward face lies at z = 0
    tri = read_stl_triangles(path)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    down = n[:, 2] < -0.99 * np.linalg.norm(n, axis=1)
    assert down.sum() > 0 and np.all(tri[down][:, :, 2] == 0)


def test_plate_marks():
    levels, lay = _plate((50, 60), 0.4, layer=12)
    assert lay.text == "L12 ^" and len(lay.text_cells) > 20
    assert len(lay.holes) == 4 and lay.notch[1] == lay.outer[1] and lay.notch[3] == lay.outer[3]
    # marks stay in the frame, clear of the active area
    ax0, ax1, ay0, ay1 = lay.active
    for x0, x1, y0, y1 in lay.holes + [lay.notch] + lay.text_cells:
        assert x1 <= ax0 or x0 >= ax1 or y1 <= ay0 or y0 >= ay1
    # tiny plate: no room for the label, still a valid solid
    warnings = []
    lay2 = plate_layout((2, 2), 0.4, 0.016, 96, layer_number=3, warnings=warnings)
    assert lay2.text == "" and "no room" in warnings[0]


def test_plate_rejects_bad_heights():
    levels, lay = _plate()
    bad = levels.copy()
    bad[2, 3] = 0
    with pytest.raises(FabricationError, match="1 pixels have no material"):
        plate_height_field(bad, lay)
    bad[2, 3] = 200
    with pytest.raises(FabricationError, match="frame is lower than the highest pixel"):
        plate_height_field(bad, lay)
    with pytest.raises(FabricationError, match="shape"):
        plate_height_field(levels[:-1], lay)
    with pytest.raises(FabricationError, match="do not fit"):
        plate_layout((4, 4), 0.4, 0.016, 96, spec=PlateSpec(margin_mm=5, hole_mm=4))


def test_heights_from_stl_errors(tmp_path):
    levels, lay = _plate((6, 5))
    hf = plate_height_field(levels, lay)
    m = height_field_mesh(hf)
    path = tmp_path / "l.stl"
    write_stl(path, m.vertices, m.faces)
    with pytest.raises(FabricationError, match="not a whole number"):
        heights_from_stl(path, (6, 5), 0.4, 0.015)
    with pytest.raises(FabricationError, match="have no top face"):
        heights_from_stl(path, (6, 5), 4.0, 0.016)          # pixel centres off the plate
