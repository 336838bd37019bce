"""Putting images on the input plane (diffractive.encoding)."""
import numpy as np
import pytest

from diffractive import Grid
from diffractive.encoding import encode, input_pixels, place_images, resample_matrix


@pytest.mark.parametrize("n_src,n_dst", [(28, 100), (28, 28), (28, 13), (8, 200), (7, 3), (100, 28), (1, 5)])
def test_resampling_preserves_a_constant_image(n_src, n_dst):
    R = resample_matrix(n_src, n_dst)
    assert R.shape == (n_dst, n_src) and R.min() >= 0
    np.testing.assert_allclose(R @ np.full(n_src, 3.0), 3.0, rtol=1e-12)


def test_shrinking_is_box_averaging_and_enlarging_keeps_pixel_centres():
    np.testing.assert_allclose(resample_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(resample_matrix(5, 5), np.eye(5))
    # Enlarging a ramp sampled at source pixel centres j gives the ramp at the destination
    # centres (i + 0.5) * n_src / n_dst - 0.5, away from the clamped ends.
    n_src, n_dst = 10, 37
    out = resample_matrix(n_src, n_dst) @ np.arange(n_src, dtype=float)
    pos = (np.arange(n_dst) + 0.5) * n_src / n_dst - 0.5
    inside = (pos >= 0) & (pos <= n_src - 1)
    np.testing.assert_allclose(out[inside], pos[inside], atol=1e-12)


@pytest.mark.parametrize("grid_shape,size_px", [((64, 64), 32), ((63, 65), 21), ((40, 50), 20)])
def test_placement_is_centred_and_keeps_orientation(grid_shape, size_px):
    p = 0.4e-3
    grid = Grid(grid_shape, p)
    placed = place_images(np.ones((28, 28)), grid, (size_px * p, size_px * p))[0]
    assert placed.sum() == pytest.approx(size_px**2)
    X, Y = grid.meshgrid()
    # centroid on the optical axis (exactly when the grid and the image have the same parity)
    assert abs((placed * X).sum() / placed.sum()) <= p / 2 + 1e-12
    assert abs((placed * Y).sum() / placed.sum()) <= p / 2 + 1e-12
    if all((n - size_px) % 2 == 0 for n in grid_shape):
        np.testing.assert_allclose(placed, placed[::-1, ::-1], atol=1e-12)
    # image row 0 / column 0 (top-left) lands at the most negative y and x of the rectangle
    img = np.zeros((28, 28))
    img[0, 0] = 1
    placed = place_images(img, grid, (size_px * p, size_px * p))[0]
    i, j = np.unravel_index(np.argmax(placed), placed.shape)
    assert i == (grid_shape[0] - size_px) // 2 and j == (grid_shape[1] - size_px) // 2


def test_amplitude_and_phase_encodings():
    p = 0.4e-3
    grid = Grid((40, 40), p)
    rng = np.random.default_rng(0)
    images = rng.random((3, 10, 10))
    amp = encode(images, grid, (20 * p, 20 * p), "amplitude")
    assert amp.shape == (3, 40, 40) and np.iscomplexobj(amp)
    np.testing.assert_allclose(amp.imag, 0)
    np.testing.assert_allclose(amp.real, place_images(images, grid, (20 * p, 20 * p)), atol=1e-6)
    ph = encode(images, grid, (20 * p, 20 * p), "phase", phase_scale=np.pi / 2)
    placed = place_images(images, grid, (20 * p, 20 * p))
    inside = np.zeros((40, 40), bool)
    inside[10:30, 10:30] = True
    np.testing.assert_allclose(np.abs(ph[:, inside]), 1, atol=1e-6)      # transparent inside
    np.testing.assert_array_equal(ph[:, ~inside], 0)                     # input aperture outside
    np.testing.assert_allclose(np.angle(ph[:, inside]), np.pi / 2 * placed[:, inside], atol=1e-5)


def test_bad_images_and_sizes_are_refused():
    grid = Grid((40, 40), 0.4e-3)
    with pytest.raises(ValueError, match="encoding"):
        encode(np.ones((1, 8, 8)), grid, (8e-3, 8e-3), "intensity")
    with pytest.raises(ValueError, match="input.size_yx_m"):
        input_pixels(grid, (20e-3, 8e-3))
    with pytest.raises(ValueError, match="input.size_yx_m"):
        input_pixels(grid, (-1e-3, 8e-3))
    with pytest.raises(ValueError, match="images"):
        place_images(np.ones((2, 2, 8, 8)), grid, (8e-3, 8e-3))
    bad = np.ones((1, 8, 8))
    bad[0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="images"):
        place_images(bad, grid, (8e-3, 8e-3))
