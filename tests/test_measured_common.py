"""Shared fixtures for the tests of diffractive.measured, diffractive.labsim and d2nn evaluate / measure-sim.

(Helpers, imported by the other test_measured*.py and test_evaluate*.py files.)
A small design (64 x 64 pixels, 2 layers, 0.4 mm pitch, 10 mm gaps, random phases) and the
scikit-learn digits as a stand-in test split, so the tests need neither training.datasets
nor any downloaded data.
"""
from __future__ import annotations

import types

import numpy as np

from diffractive.design import make_design


def small_design(**kw):
    args = dict(layer_shape=(64, 64), n_layers=2, pitch_m=0.4e-3, spacing_m=10e-3, seed=0,
                provenance={"seed": 0, "dataset": {"name": "digits"}})
    args.update(kw)
    return make_design(**args)


def digits_split():
    """(images (300, 8, 8) float32 in [0, 1], labels int64): the first 300 sklearn digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:300] / 16.0).astype(np.float32), d.target[:300].astype(np.int64)


def fake_datasets_module():
    """A stand-in for training.datasets whose load_split returns digits_split() for any split."""
    images, labels = digits_split()

    def load_split(name, split, *, limit=None, seed=0, data_dir=None, val_fraction=0.1):
        if name not in ("digits", "mnist", "fashion-mnist"):
            raise ValueError(f"unknown dataset {name!r}")
        n = len(labels) if limit is None else min(limit, len(labels))
        return images[:n].copy(), labels[:n].copy()

    mod = types.ModuleType("training.datasets")
    mod.load_split = load_split
    return mod


def test_stand_in_split_is_the_sklearn_digits():
    images, labels = fake_datasets_module().load_split("digits", "test")
    assert images.shape == (300, 8, 8) and images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
    assert set(np.unique(labels)) == set(range(10))
