import numpy as np
import pytest

from diffractive.backend import cupy_available


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _xp_params():
    return [pytest.param("numpy", id="numpy"),
            pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu,
                         pytest.mark.skipif(not cupy_available(), reason="CuPy with a CUDA GPU is not available")])]


@pytest.fixture(params=_xp_params())
def xp(request):
    """Array module under test: NumPy always, CuPy when a GPU is present (skipped otherwise)."""
    if request.param == "numpy":
        return np
    import cupy

    return cupy


# ----------------------------------------------------------------------------- shared designs and data
# Factories, not values: each call site builds what it needs (``small_design(detectors="differential")``).
# Session-scoped, so module-scoped fixtures can use them too; the functions hold no state.

@pytest.fixture(scope="session")
def small_design():
    """``small_design(**kw)``: a small design (64 x 64 pixels, 2 layers, 0.4 mm pitch, 10 mm gaps,
    random phases, seed 0) trained, its provenance says, on scikit-learn's digits, which
    training.datasets serves offline: the commands under test read the real splits (no stand-in
    loader that could ignore the split seed or val_fraction, as one did and so hid a bug), and
    need no downloaded data.  Keyword arguments override those given to make_design."""
    from diffractive.design import make_design

    def small_design(**kw):
        args = dict(layer_shape=(64, 64), n_layers=2, pitch_m=0.4e-3, spacing_m=10e-3, seed=0,
                    provenance={"seed": 0, "dataset": {"name": "digits"}})
        args.update(kw)
        return make_design(**args)

    return small_design


@pytest.fixture(scope="session")
def digits_split():
    """``digits_split()``: (images (300, 8, 8) float32 in [0, 1], labels int64), the first 300
    sklearn digits, a plain image source for tests that call the library directly (no split involved)."""

    def digits_split():
        """(images (300, 8, 8) float32 in [0, 1], labels int64): the first 300 sklearn digits,
        a plain image source for tests that call the library directly (no split involved)."""
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images[:300] / 16.0).astype(np.float32), d.target[:300].astype(np.int64)

    return digits_split


@pytest.fixture(scope="session")
def design_images():
    """``design_images(design, split="test")``: (images, labels) of the digits split ``split``
    exactly as the commands read it for ``design`` (training.datasets.design_split)."""

    def design_images(design, split="test"):
        """(images, labels) of the digits split ``split`` exactly as the commands read it for
        ``design`` (training.datasets.design_split: its split seed and val_fraction)."""
        from training.datasets import design_split

        return design_split(design, "digits", split)

    return design_images


# ----------------------------------------------------------------------------- training.rules configs
TINY_GEOMETRY = {"layer_shape": [24, 24], "n_layers": 2, "distance_m": 6e-3, "pitch_m": 0.4e-3}


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(rule="backprop", options=None, **trainer)``: a parsed training config for a
    tiny problem (24 x 24 grid, 2 layers, 6 mm gaps, 2 epochs of batches of 32), learning rule
    ``rule`` with ``[trainer.<rule>]`` options ``options``; keyword arguments override the
    trainer's settings.  A fresh config at every call (tests may change one)."""
    from training.config import parse_config

    def tiny_config(rule="backprop", options=None, **trainer):
        doc = {"name": f"tiny-{rule}", "geometry": dict(TINY_GEOMETRY), "input": {"size_yx_m": [6.4e-3, 6.4e-3]},
               "detectors": {"size_m": 1.2e-3, "spacing_m": 2.4e-3},
               "trainer": {"rule": rule, "epochs": 2, "batch_size": 32, "learning_rate": 0.05, "workers": 1,
                           "checkpoint_every": 5, **trainer}}
        if options is not None:
            doc["trainer"][rule] = options
        return parse_config(doc)

    return tiny_config


def _roll(a, dx, dy):
    """``a`` (..., ny, nx) moved by whole cells (content at r goes to r + d), uncovered cells 0:
    an independent way to move a plate, the reference of the as-built model's offsets."""
    out = np.zeros_like(a)
    ny, nx = a.shape[-2:]
    out[..., max(dy, 0):ny + min(dy, 0), max(dx, 0):nx + min(dx, 0)] = \
        a[..., max(-dy, 0):ny - max(dy, 0), max(-dx, 0):nx - max(dx, 0)]
    return out


@pytest.fixture(scope="session")
def roll():
    """``roll(a, dx, dy)``: ``a`` (..., ny, nx) moved by whole cells, uncovered cells 0."""
    return _roll
