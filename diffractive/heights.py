r"""Phase <-> height <-> transmission of a printed layer (NumPy, CuPy or torch arrays).

Convention (the one place it is written down; docs/fabrication.md repeats it)
---------------------------------------------------------------------------
Time dependence ``exp(-i*omega*t)``. A wave crossing a thickness ``h`` of material with
complex index ``n + i*kappa`` instead of air picks up, relative to air,

    t(h) = exp(i * 2*pi*(n - 1)*h / lambda) * exp(-2*pi*kappa*h / lambda),

i.e. a phase *delay* ``phi(h) = 2*pi*(n-1)*h/lambda`` (``exp(+i*phi)``, the sign that
:mod:`diffractive.layers` applies) and an amplitude loss ``exp(-2*pi*kappa*h/lambda)``.
Reflections at the faces are neglected (thin-element model). The inverse, used for
printing, is

    h = base + wrap(phi) / (2*pi) * lambda / (n - 1),     wrap(phi) = phi mod 2*pi in [0, 2*pi),

quantised to whole printer layers of ``z_step``: ``base`` is rounded to a whole number
of layers and the relief ``wrap(phi)/(2*pi) * lambda/(n-1)`` to the nearest layer, so every
height is an exact multiple of ``z_step`` (the maximum phase error of the quantisation is
``pi * z_step * (n-1) / lambda``). The base adds the same phase ``2*pi*(n-1)*base/lambda``
and the same absorption ``exp(-2*pi*kappa*base/lambda)`` to every pixel of a layer: a
global phase and a uniform loss, which change no classification but do change the power
that reaches the detectors.

Every function takes the array module from its input (``type(a).__module__``): NumPy,
CuPy or torch arrays in, the same kind out. Torch is never imported here unless a torch
tensor is passed in. The functions without quantisation are differentiable in torch.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from . import materials as _core
from ._validate import finite_real
from .errors import FabricationError, FieldError

TWO_PI = 2.0 * math.pi


# The material checks are the core's (diffractive.materials); here their FieldError is worded
# as a FabricationError, what every caller of the plate model (and fabrication) catches.
_WORDS = {"n": "refractive index n", "kappa": "extinction coefficient kappa"}


def _real(name, value) -> float:
    try:
        return finite_real(name, value)
    except (TypeError, ValueError) as e:
        raise FabricationError(str(e)) from None


def _worded(e: FieldError) -> str:
    return f"{_WORDS.get(e.field, 'material ' + e.field)} {e.problem}"


def check_index(n) -> float:
    """Return ``n`` as float if it is a finite refractive index > 1, else raise :class:`FabricationError`."""
    try:
        return _core.check_index(n)
    except FieldError as e:
        raise FabricationError(_worded(e)) from None


def check_kappa(kappa) -> float:
    """Return ``kappa`` as float if it is a finite extinction coefficient >= 0, else raise :class:`FabricationError`."""
    try:
        return _core.check_kappa(kappa)
    except FieldError as e:
        raise FabricationError(_worded(e)) from None


# --------------------------------------------------------------------------- array modules
def array_kind(a) -> str:
    """``"torch"``, ``"cupy"`` or ``"numpy"`` (anything else is treated as NumPy)."""
    mod = type(a).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("cupy"):
        return "cupy"
    return "numpy"


def _lib(a):
    kind = array_kind(a)
    if kind == "torch":
        return kind, sys.modules["torch"]
    if kind == "cupy":
        return kind, sys.modules["cupy"]
    return kind, np


def _float_input(a, name):
    """Return (array, kind, lib) with a floating dtype; NumPy for non-array input."""
    kind, lib = _lib(a)
    if kind == "numpy":
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            if np.iscomplexobj(a):
                raise FabricationError(f"{name} must be real, got a complex array")
            a = a.astype(np.float64)
    elif kind == "torch":
        if a.is_complex():
            raise FabricationError(f"{name} must be real, got a complex tensor")
        if not a.is_floating_point():
            a = a.to(lib.float64)
    else:
        if a.dtype.kind == "c":
            raise FabricationError(f"{name} must be real, got a complex array")
        if a.dtype.kind != "f":
            a = a.astype(np.float64)
    return a, kind, lib


def _check_finite(a, kind, lib, name):
    ok = lib.isfinite(a)
    if not bool(ok.all()):
        bad = int((~ok).sum())
        raise FabricationError(f"{name} contain {bad} non-finite value{'s' if bad != 1 else ''} (NaN or infinity)")


# --------------------------------------------------------------------------- scalar checks
def check_wavelength(wavelength_m) -> float:
    w = _real("wavelength_m", wavelength_m)
    if w <= 0:
        raise FabricationError(f"wavelength_m must be positive, got {w!r}")
    return w


def check_z_step(z_step_m) -> float:
    z = _real("z step (z_step_m)", z_step_m)
    if z <= 0:
        raise FabricationError(f"z step must be positive (the printer's layer thickness in metres), got {z!r}")
    return z


def check_base(base_m) -> float:
    b = _real("base thickness (base_m)", base_m)
    if b < 0:
        raise FabricationError(f"base thickness must be >= 0, got {b!r}")
    return b


def phase_period_m(wavelength_m, n) -> float:
    """Height of material that delays the wave by one full turn (2*pi): ``lambda / (n - 1)``."""
    return check_wavelength(wavelength_m) / (check_index(n) - 1.0)


def base_steps(base_m, z_step_m) -> int:
    """The base thickness in whole printer layers (rounded to the nearest layer)."""
    return int(round(check_base(base_m) / check_z_step(z_step_m)))


def relief_levels(wavelength_m, n, z_step_m) -> int:
    """Number of distinct relief heights per 2*pi (phase levels after quantisation)."""
    return max(1, int(round(phase_period_m(wavelength_m, n) / check_z_step(z_step_m))))


# --------------------------------------------------------------------------- phase -> height
def _wrapped_fraction(phase, kind, lib):
    """wrap(phi)/(2*pi) in [0, 1), computed in float64."""
    p = phase.to(lib.float64) if kind == "torch" else phase.astype(np.float64, copy=False)
    return lib.remainder(p, TWO_PI) / TWO_PI


def phase_to_steps(phase, wavelength_m, n, z_step_m, base_m=0.0):
    """Quantised height of each pixel in whole printer layers (int32 array, same library).

    ``height = steps * z_step_m``; see the module docstring for the convention.
    """
    phase, kind, lib = _float_input(phase, "phases")
    period = phase_period_m(wavelength_m, n)
    z = check_z_step(z_step_m)
    b = base_steps(base_m, z)
    _check_finite(phase, kind, lib, "phases")
    frac = _wrapped_fraction(phase, kind, lib)
    steps = (lib.round(frac * (period / z)) if kind == "torch" else lib.rint(frac * (period / z))) + b
    return steps.to(lib.int32) if kind == "torch" else steps.astype(np.int32)


def phase_to_height(phase, wavelength_m, n, *, base_m=0.0, z_step_m=None):
    """Printed height (metres) for each phase: ``base + wrap(phi)/(2*pi) * lambda/(n-1)``.

    With ``z_step_m`` the result is quantised to whole printer layers (base included);
    ``z_step_m=None`` gives the continuous (differentiable) height.
    """
    phase, kind, lib = _float_input(phase, "phases")
    period = phase_period_m(wavelength_m, n)
    base = check_base(base_m)
    if z_step_m is not None:
        z = check_z_step(z_step_m)
        steps = phase_to_steps(phase, wavelength_m, n, z, base)
        return (steps.to(phase.dtype) if kind == "torch" else steps.astype(phase.dtype)) * z
    _check_finite(phase, kind, lib, "phases")
    return base + lib.remainder(phase, TWO_PI) * (period / TWO_PI)


# --------------------------------------------------------------------------- height -> phase, transmission
def _check_heights(h, kind, lib):
    _check_finite(h, kind, lib, "heights")
    if bool((h < 0).any()):
        raise FabricationError("heights must be >= 0 (a thickness of material)")


def height_to_phase(height_m, wavelength_m, n):
    """Phase delay relative to air of a thickness ``height_m``: ``2*pi*(n-1)*h/lambda`` (not wrapped)."""
    h, kind, lib = _float_input(height_m, "heights")
    w = check_wavelength(wavelength_m)
    n = check_index(n)
    _check_heights(h, kind, lib)
    return h * (TWO_PI * (n - 1.0) / w)


def height_to_transmission(height_m, wavelength_m, n, kappa):
    """Complex transmission ``exp(i*2*pi*(n-1)*h/lambda) * exp(-2*pi*kappa*h/lambda)``.

    complex64 for float32 heights, complex128 for float64 (torch: the matching complex dtype).
    """
    h, kind, lib = _float_input(height_m, "heights")
    w = check_wavelength(wavelength_m)
    n = check_index(n)
    kappa = check_kappa(kappa)
    _check_heights(h, kind, lib)
    phase = h * (TWO_PI * (n - 1.0) / w)
    amplitude = lib.exp(h * (-TWO_PI * kappa / w))
    if kind == "torch":
        return lib.polar(amplitude, phase)
    return amplitude * lib.exp(1j * phase)


def phase_to_transmission(phase, wavelength_m, n, kappa, *, base_m=0.0, z_step_m=None):
    """The printed model in one call: phase -> (quantised) height -> complex transmission."""
    h = phase_to_height(phase, wavelength_m, n, base_m=base_m, z_step_m=z_step_m)
    return height_to_transmission(h, wavelength_m, n, kappa)
