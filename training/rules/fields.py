"""Layer-local field algebra shared by DFA and the HSIC bottleneck (torch-free, xp core).

Notation (as in :mod:`diffractive.stack`): ``u_l`` is the field arriving at layer ``l``
(before its mask), ``v_l = t_l * u_l`` the field just after it, and for a real loss ``L``
the *adjoint field* ``A_l = dL/dv_l*``. For ``t_l = exp(i phi_l)``

    dL/dphi_l = -2 Im( sum over the batch of conj(A_l) * v_l )          (:func:`phase_gradient`)

Backprop obtains ``A_l`` by propagating ``dL/du_out* = dL/dI * u_out`` back through every
hop (``conj(H)``) and mask (``conj(t)``) — :func:`adjoint_fields`. DFA replaces ``A_l`` by a
fixed random projection of the output error; the HSIC rule takes ``A_l`` one hop back from
the next plane only.
"""
from __future__ import annotations

import numpy as np

from diffractive.propagation import propagate


def after_masks(saved):
    """``v_l = t_l * u_l`` (L, B, ny, nx) from a ``forward(..., keep_arrivals=True)`` result."""
    return saved.arrivals * saved.transmissions[:, None]


def phase_gradient(v, A):
    """``-2 Im(sum_b conj(A) * v)``: (..., B, ny, nx) fields -> (..., ny, nx) float32."""
    return (-2 * np.imag(np.conj(A) * v).sum(axis=-3)).astype(np.float32)


def hop_adjoint(geometry, field, hop, workers=None):
    """Adjoint of hop ``hop`` (0: input -> layer 1, ..., L: last layer -> output) on ``field``."""
    return propagate(field, wavelength_m=geometry.wavelength_m, pitch_m=geometry.pitch_m,
                     distance_m=geometry.distances_m[hop], window_shape=geometry.window_shape,
                     band_limit=geometry.band_limit, adjoint=True, check="ignore", workers=workers)


def adjoint_fields(geometry, saved, grad_intensity, workers=None):
    """The exact ``A_l = dL/dv_l*`` (L, B, ny, nx) for ``dL/dI`` (B, ny, nx) at the output plane."""
    out, t = saved.output, saved.transmissions
    L = geometry.n_layers
    A = np.empty((L,) + out.shape, dtype=out.dtype)
    a = hop_adjoint(geometry, (grad_intensity * out).astype(out.dtype), L, workers)
    for l in range(L - 1, -1, -1):
        A[l] = a
        if l:
            a = hop_adjoint(geometry, np.conj(t[l]) * a, l, workers)
    return A
