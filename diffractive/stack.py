"""A stack of thin layers separated by free space: forward simulation and its adjoint.

Geometry: the input plane, ``L`` layers and the output plane all sample the same grid
(``layer_shape``, ``pitch_m``). ``distances_m[0]`` runs from the input plane to layer 1,
``distances_m[l]`` from layer ``l`` to ``l+1`` and ``distances_m[L]`` from the last layer
to the output plane. **Aperture model: opaque.** Outside each layer's active area the
field is blocked (the printed frame carries an absorber): after every hop the field is
cropped to the grid. Each hop is therefore a linear convolution from the grid to the grid
(:mod:`diffractive.convolution`).

The forward pass keeps the field arriving at each layer (before its mask) so that the
adjoint pass can return the exact gradient of a real loss with respect to each layer's
complex transmission ``t_l``:

    g_t[l] = sum over the batch of conj(u_l) * a_l,

where ``u_l`` is the field arriving at layer ``l`` and ``a_l = 2 dL/dv_l*`` is the adjoint
field just after it (obtained by propagating ``2 dL/dI * u_out`` backwards with
``conj(H)`` and multiplying by ``conj(t)`` at each layer). For ``t = A exp(i*phi)`` this
gives ``dL/dphi = Im(conj(t) * g_t)`` (equivalently ``-Im(conj(a) v)`` with ``v = t*u``, i.e.
``-2 Im(conj(dL/dv*) v)``)
and ``dL/dA = Re(conj(g_t) * exp(i*phi))``. ``g_t`` uses PyTorch's convention for
gradients of complex tensors, so the torch bridge passes it through unchanged.

On NumPy each worker thread pushes one sample at a time through all hops; the buffers
then stay in cache. On CuPy the whole batch goes through at once.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field as dc_field

import numpy as np

from ._validate import positive_finite, shape2
from .backend import get_array_module
from .convolution import WorkspacePool, run_chunks
from .grid import Grid
from .propagation import check_sampling, default_window, sampling_report, transfer_function


@dataclass(frozen=True)
class StackGeometry:
    """Where the planes of a stack are and how they are sampled (SI units)."""

    layer_shape: tuple[int, int]
    pitch_m: float
    wavelength_m: float
    distances_m: tuple[float, ...]
    window_shape: tuple[int, int] | None = None
    band_limit: bool = True

    def __post_init__(self):
        object.__setattr__(self, "layer_shape", shape2("layer_shape", self.layer_shape))
        object.__setattr__(self, "pitch_m", positive_finite("pitch_m", self.pitch_m))
        object.__setattr__(self, "wavelength_m", positive_finite("wavelength_m", self.wavelength_m))
        d = tuple(positive_finite(f"distances_m[{i}]", v) for i, v in enumerate(self.distances_m))
        if len(d) < 1:
            raise ValueError("distances_m must hold at least one distance")
        object.__setattr__(self, "distances_m", d)
        w = default_window(self.layer_shape) if self.window_shape is None else shape2("window_shape", self.window_shape)
        if w[0] < self.layer_shape[0] or w[1] < self.layer_shape[1]:
            raise ValueError(f"window_shape {list(w)} must be at least layer_shape {list(self.layer_shape)}")
        object.__setattr__(self, "window_shape", w)

    @property
    def n_layers(self) -> int:
        return len(self.distances_m) - 1

    @property
    def grid(self) -> Grid:
        return Grid(self.layer_shape, self.pitch_m)

    def sampling_reports(self):
        """One :class:`~diffractive.propagation.SamplingReport` per hop."""
        return [sampling_report(self.layer_shape, self.window_shape, self.pitch_m, self.wavelength_m, z,
                                self.band_limit) for z in self.distances_m]

    def check(self, check="warn"):
        """Warn or raise about lost bandwidth, hop by hop."""
        for i, r in enumerate(self.sampling_reports()):
            check_sampling(r, check, context=f"hop {i} ({self.distances_m[i] * 1e3:.4g} mm)")


@functools.lru_cache(maxsize=8)
def _engine_cached(geometry: StackGeometry, dtype: str, xp):
    return _Engine(geometry, np.dtype(dtype), xp)


class _Engine:
    """Transfer functions and workspaces for one geometry, dtype and array library."""

    def __init__(self, geometry: StackGeometry, dtype, xp):
        g = geometry
        self.geometry = g
        self.xp = xp
        self.dtype = dtype
        self.H = [transfer_function(g.layer_shape, g.window_shape, g.pitch_m, g.wavelength_m, z,
                                    band_limit=g.band_limit, dtype=dtype, xp=xp) for z in g.distances_m]
        self.H_adj = [xp.conj(h) for h in self.H]
        self.pool = WorkspacePool(g.layer_shape, g.window_shape, dtype, xp)


def engine(geometry: StackGeometry, dtype=np.complex64, xp=np) -> _Engine:
    """The cached engine for ``geometry`` (transfer functions are computed once)."""
    return _engine_cached(geometry, np.dtype(dtype).str, xp)


@dataclass
class ForwardResult:
    """Output of :func:`forward`.

    output : (B, ny, nx) complex field on the output plane
    arrivals : (L, B, ny, nx) field arriving at each layer (before its mask), if kept
    """

    output: object
    arrivals: object | None = None
    transmissions: object | None = dc_field(default=None, repr=False)


def _check_inputs(geometry, transmissions, fields, xp):
    from ._validate import finite_array  # noqa: PLC0415

    L, (ny, nx) = geometry.n_layers, geometry.layer_shape
    if transmissions.shape != (L, ny, nx):
        raise ValueError(f"transmissions must have shape {(L, ny, nx)} (layers, ny, nx), got {transmissions.shape}")
    if fields.ndim != 3 or fields.shape[1:] != (ny, nx):
        raise ValueError(f"input fields must have shape (batch, {ny}, {nx}), got {fields.shape}")
    finite_array("transmissions", transmissions, xp)
    finite_array("input fields", fields, xp)


def forward(geometry: StackGeometry, transmissions, fields, *, keep_arrivals=False, workers=None) -> ForwardResult:
    """Propagate input fields (B, ny, nx) through the stack to the output plane.

    ``transmissions`` (L, ny, nx) are the layers' complex transmissions
    (:func:`diffractive.layers.transmission`). ``keep_arrivals`` stores what
    :func:`backward` needs.
    """
    xp = get_array_module(fields, transmissions)
    dtype = np.result_type(fields.dtype, transmissions.dtype, np.complex64)
    transmissions = xp.asarray(transmissions, dtype=dtype)
    fields = xp.asarray(fields, dtype=dtype)
    _check_inputs(geometry, transmissions, fields, xp)
    eng = engine(geometry, dtype, xp)
    B, L = fields.shape[0], geometry.n_layers
    out = xp.empty(fields.shape, dtype=dtype)
    arrivals = xp.empty((L,) + fields.shape, dtype=dtype) if keep_arrivals else None

    def run(ws, a, b, sl):
        ws.load(fields[sl])
        for l in range(L):
            ws.hop(eng.H[l])
            if keep_arrivals:
                arrivals[l, sl] = ws.result()
            ws.modulate(transmissions[l])
        ws.hop(eng.H[L])
        out[sl] = ws.result()

    if xp is np:
        def work(a, b):
            ws = eng.pool.per_thread()
            for i in range(a, b):
                run(ws, i, i + 1, slice(i, i + 1))
        run_chunks(work, B, workers)
    else:
        run(eng.pool.batched(B), 0, B, slice(0, B))
    return ForwardResult(out, arrivals, transmissions)


def backward(geometry: StackGeometry, saved: ForwardResult, grad_intensity=None, *, grad_output=None,
             need_input_grad=False, workers=None):
    """Adjoint pass: gradient of a real loss with respect to each layer's transmission.

    Give either ``grad_intensity`` = dL/dI (B, ny, nx) for ``I = |output|^2`` or
    ``grad_output`` = 2 dL/du* (B, ny, nx) complex. Returns ``(g_t, g_in)``: ``g_t``
    (L, ny, nx) complex, summed over the batch (see module docstring), and the gradient
    with respect to the input fields (B, ny, nx) if ``need_input_grad`` else ``None``.
    """
    out, arrivals, t = saved.output, saved.arrivals, saved.transmissions
    if arrivals is None:
        raise ValueError("backward needs forward(..., keep_arrivals=True)")
    xp = get_array_module(out)
    dtype = out.dtype
    eng = engine(geometry, dtype, xp)
    B, L = out.shape[0], geometry.n_layers
    t_conj = xp.conj(t)
    g_in = xp.empty(out.shape, dtype=dtype) if need_input_grad else None
    if (grad_intensity is None) == (grad_output is None):
        raise ValueError("give exactly one of grad_intensity and grad_output")

    def run(ws, sl, acc, tmp=None):
        if grad_output is not None:
            ws.load(grad_output[sl])
        else:
            ws.load(out[sl], 2 * grad_intensity[sl].astype(out.real.dtype, copy=False))
        ws.hop(eng.H_adj[L])
        for l in range(L - 1, -1, -1):
            a = ws.result()
            if tmp is None:
                acc[l] += (xp.conj(arrivals[l, sl]) * a).sum(axis=0)
            else:  # one sample: accumulate without temporaries
                xp.conjugate(arrivals[l, sl.start], out=tmp)
                xp.multiply(tmp, a[0], out=tmp)
                acc[l] += tmp
            if l == 0 and not need_input_grad:
                break
            ws.modulate(t_conj[l])
            ws.hop(eng.H_adj[l])
        if need_input_grad:
            g_in[sl] = ws.result()

    if xp is np:
        def work(a, b):
            ws = eng.pool.per_thread()
            acc = np.zeros(t.shape, dtype=dtype)
            tmp = np.empty(t.shape[1:], dtype=dtype)
            for i in range(a, b):
                run(ws, slice(i, i + 1), acc, tmp)
            return acc
        g_t = sum(run_chunks(work, B, workers))
    else:
        g_t = xp.zeros(t.shape, dtype=dtype)
        run(eng.pool.batched(B), slice(0, B), g_t)
    return g_t, g_in
