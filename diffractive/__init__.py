"""d2nn physics core: grids, angular-spectrum propagation, layers, detectors, encodings,
stacks and the design file. Arrays are NumPy or CuPy; this package never imports torch."""
__version__ = "0.1.0"

from .errors import D2NNError, DesignError, InputTypeError  # noqa: E402
from .backend import cupy_available, get_array_module, resolve_backend, to_numpy  # noqa: E402
from .grid import Grid  # noqa: E402
from .propagation import (  # noqa: E402
    Engine, SamplingError, SamplingReport, SamplingWarning, band_limit_frequencies, clear_caches,
    propagate, sampling_report, shared_engine, transfer_function,
)

__all__ = [
    "__version__", "D2NNError", "DesignError", "InputTypeError", "Grid", "Engine", "SamplingError", "SamplingReport", "SamplingWarning",
    "band_limit_frequencies", "clear_caches", "propagate", "shared_engine", "sampling_report", "transfer_function",
    "cupy_available", "get_array_module", "resolve_backend", "to_numpy",
]
