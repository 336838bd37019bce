"""Detector regions, readout and class scores (diffractive.detectors)."""
import numpy as np
import pytest

from diffractive import Grid
from diffractive.detectors import (Detector, class_scores, detector_masks, differential_layout, lin_layout, readout,
                                   score_matrix)

P = 0.4e-3


@pytest.mark.parametrize("center,size", [((0.0, 0.0), (4 * P, 4 * P)),        # on pixel boundaries
                                         ((0.3 * P, -1.7 * P), (3.5 * P, 2.2 * P)),  # anywhere
                                         ((5.25 * P, 2.5 * P), (0.6 * P, 0.6 * P))])  # inside one pixel or two
def test_area_weighted_mask_sums_to_the_detector_area(center, size):
    grid = Grid((20, 24), P)
    m = detector_masks([Detector(0, center, size)], grid, dtype=np.float64)[0]
    assert m.min() >= 0 and m.max() <= 1
    assert m.sum() == pytest.approx(size[0] * size[1] / P**2, rel=1e-12)
    # its centroid is the detector's centre in the grid's coordinates, to the pixel-centre
    # weighting of partly covered pixels
    X, Y = grid.meshgrid()
    assert (m * X).sum() / m.sum() == pytest.approx(center[0], abs=P / 4)
    assert (m * Y).sum() / m.sum() == pytest.approx(center[1], abs=P / 4)
    # nonzero exactly on the pixels that overlap the rectangle
    overlap = ((np.abs(X - center[0]) < (size[0] + P) / 2 - 1e-12) & (np.abs(Y - center[1]) < (size[1] + P) / 2 - 1e-12))
    np.testing.assert_array_equal(m > 0, overlap)


def test_x_runs_along_columns_and_y_along_rows():
    grid = Grid((10, 12), P)
    m = detector_masks([Detector(0, (3 * P, -2 * P), (P, P))], grid, dtype=np.float64)[0]
    # x = (j - 5.5) P = 3 P -> columns 8, 9 half each; y = (i - 4.5) P = -2 P -> rows 2, 3 half each
    rows, cols = np.nonzero(m)
    assert set(cols) == {8, 9} and set(rows) == {2, 3}
    np.testing.assert_allclose(m[2:4, 8:10], 0.25)


def test_lin_layout_and_readout_of_a_uniform_plane():
    grid = Grid((200, 200), P)
    dets = lin_layout(grid)
    assert len(dets) == 10 and [d.class_index for d in dets] == list(range(10))
    masks = detector_masks(dets, grid, dtype=np.float64)
    assert masks.sum(axis=0).max() <= 1 + 1e-12          # no two detectors overlap
    size = dets[0].size_xy_m[0]
    powers = readout(np.ones((3,) + grid.shape), masks)
    assert powers.shape == (3, 10)
    np.testing.assert_allclose(powers, (size / P) ** 2, rtol=1e-12)
    # 3-4-3 rows, centred on the axis
    ys = sorted({round(d.center_xy_m[1], 9) for d in dets})
    assert len(ys) == 3 and ys[0] == pytest.approx(-ys[2]) and ys[1] == pytest.approx(0)
    assert np.mean([d.center_xy_m[0] for d in dets]) == pytest.approx(0, abs=1e-12)


def test_readout_sees_only_the_lit_detector():
    grid = Grid((60, 60), P)
    dets = lin_layout(grid)
    masks = detector_masks(dets, grid, dtype=np.float64)
    inten = np.zeros(grid.shape)
    inten[masks[7] > 0] = 2.0
    p = readout(inten, masks)
    assert np.argmax(p) == 7 and np.count_nonzero(p) == 1
    assert p[7] == pytest.approx(2.0 * masks[7].sum())


@pytest.mark.parametrize("shape,n_classes", [((200, 200), 10), ((64, 80), 7), ((28, 28), 3)])
def test_default_differential_layout_fits_the_plane(shape, n_classes):
    # (the defaults once put the outer pairs outside the plane on every grid)
    grid = Grid(shape, P)
    masks = detector_masks(differential_layout(grid, n_classes), grid, dtype=np.float64)
    assert masks.shape[0] == 2 * n_classes and masks.sum(axis=0).max() <= 1 + 1e-12


def test_differential_pairs_give_p_plus_minus_p_minus():
    grid = Grid((160, 160), P)
    dets = differential_layout(grid, n_classes=10)
    assert len(dets) == 20
    assert [d.sign for d in dets[:4]] == [1, -1, 1, -1]
    assert [d.class_index for d in dets[:4]] == [0, 0, 1, 1]
    masks = detector_masks(dets, grid, dtype=np.float64)
    assert masks.sum(axis=0).max() <= 1 + 1e-12
    area = masks[0].sum()
    # light the positive detector of class 3 at 1.0 and its negative one at 2.5, class 6's positive at 0.5
    inten = np.zeros(grid.shape)
    inten[masks[6] > 0] = 1.0
    inten[masks[7] > 0] = 2.5
    inten[masks[12] > 0] = 0.5
    scores = class_scores(readout(inten, masks), dets)
    expected = np.zeros(10)
    expected[3] = (1.0 - 2.5) * area
    expected[6] = 0.5 * area
    np.testing.assert_allclose(scores, expected, atol=1e-9)
    assert np.argmax(scores) == 6
    S = score_matrix(dets)
    assert S.shape == (20, 10) and S[6, 3] == 1 and S[7, 3] == -1 and np.abs(S).sum() == 20


def test_bad_detectors_are_refused():
    grid = Grid((20, 20), P)
    with pytest.raises(ValueError, match="outside the output plane"):
        detector_masks([Detector(0, (9 * P, 0.0), (3 * P, P))], grid)
    with pytest.raises(ValueError, match="sign"):
        Detector(0, (0.0, 0.0), (P, P), sign=0)
    with pytest.raises(ValueError, match="size_xy_m"):
        Detector(0, (0.0, 0.0), (P, -P))
    with pytest.raises(ValueError, match="center_xy_m"):
        Detector(0, (np.nan, 0.0), (P, P))
    with pytest.raises(ValueError, match="class"):
        Detector(-1, (0.0, 0.0), (P, P))
    with pytest.raises(ValueError, match=r"classes \[1\] have no positive detector"):
        score_matrix([Detector(0, (0.0, 0.0), (P, P)), Detector(1, (2 * P, 0.0), (P, P), -1)])
