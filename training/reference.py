"""A plain, eager torch.fft implementation of the same stack (the reference).

It exists to check the bridge's gradients against torch's own autograd and to measure
what the bridge gains (``benchmarks/train_step.py``). It uses the same transfer functions
(:func:`diffractive.propagation.transfer_function`), padding and opaque-aperture cropping
as :mod:`diffractive.stack`, but lets torch allocate and differentiate everything.
"""
from __future__ import annotations

import numpy as np
import torch

from diffractive.propagation import transfer_function
from diffractive.stack import StackGeometry


class TorchFFTStack(torch.nn.Module):
    """``forward(transmissions, fields) -> intensity`` with torch.fft.fft2 on the padded window."""

    def __init__(self, geometry: StackGeometry, dtype=torch.complex64):
        super().__init__()
        self.geometry = geometry
        np_dtype = np.complex64 if dtype == torch.complex64 else np.complex128
        H = [transfer_function(geometry.layer_shape, geometry.window_shape, geometry.pitch_m, geometry.wavelength_m,
                               z, band_limit=geometry.band_limit, dtype=np_dtype, normalise=False)
             for z in geometry.distances_m]
        self.register_buffer("H", torch.from_numpy(np.stack(H)))

    def hop(self, u, H):
        ny, nx = self.geometry.layer_shape
        NY, NX = self.geometry.window_shape
        padded = torch.nn.functional.pad(u, (0, NX - nx, 0, NY - ny))
        return torch.fft.ifft2(torch.fft.fft2(padded) * H)[..., :ny, :nx]

    def forward(self, transmissions, fields):
        u = fields
        for l in range(self.geometry.n_layers):
            u = self.hop(u, self.H[l]) * transmissions[l]
        u = self.hop(u, self.H[-1])
        return u.real ** 2 + u.imag ** 2
