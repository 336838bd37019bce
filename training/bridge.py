"""The torch autograd bridge to the xp physics core.

:class:`StackIntensity` is a ``torch.autograd.Function`` whose forward runs
:func:`diffractive.stack.forward` and whose backward runs the exact adjoint
:func:`diffractive.stack.backward` (propagation by ``conj(H)``). Torch only sees the layer
transmissions (L, ny, nx), the input fields and the output intensity (B, ny, nx); the
padded window-sized work arrays live in the core's reusable workspaces, so torch allocates
none of them.

Tensors cross without copies: ``Tensor.numpy()`` on the CPU, DLPack
(``cupy.from_dlpack`` / ``torch.from_dlpack``) on CUDA.
"""
from __future__ import annotations

import numpy as np
import torch

from diffractive.stack import StackGeometry, backward as stack_backward, forward as stack_forward


def to_xp(t: torch.Tensor):
    """Zero-copy view of a tensor as a NumPy (CPU) or CuPy (CUDA) array."""
    t = t.detach()
    if t.device.type == "cuda":
        import cupy  # noqa: PLC0415

        return cupy.from_dlpack(t.contiguous())
    return t.contiguous().numpy()


def from_xp(a, device) -> torch.Tensor:
    """Zero-copy tensor from a NumPy or CuPy array."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


class StackIntensity(torch.autograd.Function):
    """``(transmissions (L,ny,nx) complex, fields (B,ny,nx) complex) -> |output|^2 (B,ny,nx)``."""

    @staticmethod
    def forward(ctx, transmissions, fields, geometry: StackGeometry, workers=None, engine=None):
        t_xp, f_xp = to_xp(transmissions), to_xp(fields)
        res = stack_forward(geometry, t_xp, f_xp, keep_arrivals=True, workers=workers, engine=engine)
        out = res.output
        intensity = out.real ** 2 + out.imag ** 2
        ctx.saved = res
        ctx.geometry = geometry
        ctx.workers = workers
        ctx.engine = engine
        ctx.fields_need_grad = fields.requires_grad
        return from_xp(intensity, transmissions.device)

    @staticmethod
    def backward(ctx, grad_intensity):
        res = ctx.saved
        g_t, g_in = stack_backward(ctx.geometry, res, to_xp(grad_intensity.contiguous()),
                                   need_input_grad=ctx.fields_need_grad, workers=ctx.workers, engine=ctx.engine)
        ctx.saved = ctx.engine = None  # free the stored fields as soon as possible
        device = grad_intensity.device
        return (from_xp(g_t, device),
                from_xp(g_in, device) if g_in is not None else None, None, None, None)


def stack_intensity(transmissions, fields, geometry: StackGeometry, workers=None, engine=None):
    """Output-plane intensity of ``fields`` through layers ``transmissions`` (differentiable).

    Without a graph to build (``torch.no_grad()`` or no input requiring grad) the core runs
    without keeping the per-layer fields. ``engine``: a
    :class:`~diffractive.propagation.Engine` for ``geometry`` (default the shared one).
    """
    if torch.is_grad_enabled() and (transmissions.requires_grad or fields.requires_grad):
        return StackIntensity.apply(transmissions, fields, geometry, workers, engine)
    out = stack_forward(geometry, to_xp(transmissions), to_xp(fields), workers=workers, engine=engine).output
    return from_xp(out.real ** 2 + out.imag ** 2, transmissions.device)
