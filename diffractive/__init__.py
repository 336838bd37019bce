"""d2nn physics core: grids, angular-spectrum propagation, layers, detectors, encodings,
stacks and the design file. Arrays are NumPy or CuPy; this package never imports torch."""
__version__ = "0.1.0"

from .backend import cupy_available, get_array_module, resolve_backend, to_numpy  # noqa: E402
from .grid import Grid  # noqa: E402
from .propagation import (  # noqa: E402
    AngularSpectrum, SamplingError, SamplingReport, SamplingWarning, band_limit_frequencies,
    propagate, sampling_report, transfer_function,
)

__all__ = [
    "__version__", "Grid", "AngularSpectrum", "SamplingError", "SamplingReport", "SamplingWarning",
    "band_limit_frequencies", "propagate", "sampling_report", "transfer_function",
    "cupy_available", "get_array_module", "resolve_backend", "to_numpy",
]
