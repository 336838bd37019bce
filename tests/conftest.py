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
