"""Shared fixtures for the tests of diffractive.measured, diffractive.labsim and d2nn evaluate / measure-sim.

(Helpers, imported by the other test_measured*.py and test_evaluate*.py files.)
A small design (64 x 64 pixels, 2 layers, 0.4 mm pitch, 10 mm gaps, random phases) trained,
its provenance says, on scikit-learn's digits, which training.datasets serves offline: the
commands under test read the real splits (no stand-in loader that could ignore the split
seed or val_fraction, as one did and so hid a bug), and need no downloaded data.
"""
from __future__ import annotations

import numpy as np

from diffractive.design import make_design


def small_design(**kw):
    args = dict(layer_shape=(64, 64), n_layers=2, pitch_m=0.4e-3, spacing_m=10e-3, seed=0,
                provenance={"seed": 0, "dataset": {"name": "digits"}})
    args.update(kw)
    return make_design(**args)


def digits_split():
    """(images (300, 8, 8) float32 in [0, 1], labels int64): the first 300 sklearn digits,
    a plain image source for tests that call the library directly (no split involved)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:300] / 16.0).astype(np.float32), d.target[:300].astype(np.int64)


def design_images(design, split="test"):
    """(images, labels) of the digits split ``split`` exactly as the commands read it for
    ``design`` (training.datasets.design_split: its split seed and val_fraction)."""
    from training.datasets import design_split

    return design_split(design, "digits", split)


def test_digits_split_is_the_first_300_sklearn_digits():
    images, labels = digits_split()
    assert images.shape == (300, 8, 8) and images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
    assert set(np.unique(labels)) == set(range(10))


def test_design_images_honour_the_designs_split():
    """The helper is the real split: another val_fraction or split seed in the provenance
    gives another train split (the stand-in it replaces returned the same images for all)."""
    from training.datasets import load_split

    x, y = design_images(small_design(provenance={"split_seed": 2, "val_fraction": 0.3}), "train")
    xr, yr = load_split("digits", "train", seed=2, val_fraction=0.3)
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)
    assert len(y) != len(design_images(small_design(), "train")[1])
    np.testing.assert_array_equal(design_images(small_design())[1], load_split("digits", "test")[1])
