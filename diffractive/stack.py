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

The arithmetic runs in :class:`diffractive.propagation.Engine` (``forward`` and ``backward``),
the one engine that also serves single hops: a stack is an engine of ``L + 1`` hops. On
NumPy each worker thread pushes one sample at a time through all hops; the buffers then
stay in cache. On CuPy the whole batch goes through at once. :func:`forward` and
:func:`backward` use the process-wide engine for the geometry (:func:`shared_engine`,
freed by :func:`diffractive.clear_caches`) unless given one (:func:`new_engine`).
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field

import numpy as np

from ._validate import positive_finite, shape2
from .backend import get_array_module
from .errors import D2NNError, FieldError, field_errors
from .grid import Grid
from .propagation import Engine, check_hop_shifts, check_sampling, default_window, sampling_report
from .propagation import shared_engine as _shared_engine  # stack.shared_engine takes a geometry


@dataclass(frozen=True)
class StackGeometry:
    """Where the planes of a stack are and how they are sampled (SI units)."""

    layer_shape: tuple[int, int]
    pitch_m: float
    wavelength_m: float
    distances_m: tuple[float, ...]
    window_shape: tuple[int, int] | None = None
    band_limit: bool = True
    hop_shifts_xy_m: tuple = ()

    def __post_init__(self):
        # each check names its field (FieldError, a ValueError), so a design file's reader can say which
        with field_errors("layer_shape"):
            object.__setattr__(self, "layer_shape", shape2("layer_shape", self.layer_shape))
        with field_errors("pitch_m"):
            object.__setattr__(self, "pitch_m", positive_finite("pitch_m", self.pitch_m))
        with field_errors("wavelength_m"):
            object.__setattr__(self, "wavelength_m", positive_finite("wavelength_m", self.wavelength_m))
        if isinstance(self.distances_m, (str, bytes)) or not hasattr(self.distances_m, "__iter__"):
            raise FieldError("distances_m", f"must be a list of distances, got {self.distances_m!r}")
        d = []
        for i, v in enumerate(self.distances_m):
            with field_errors(f"distances_m[{i}]"):
                d.append(positive_finite(f"distances_m[{i}]", v))
        if len(d) < 1:
            raise FieldError("distances_m", "must hold at least one distance")
        object.__setattr__(self, "distances_m", tuple(d))
        with field_errors("window_shape"):
            w = default_window(self.layer_shape) if self.window_shape is None else shape2("window_shape", self.window_shape)
        if w[0] < self.layer_shape[0] or w[1] < self.layer_shape[1]:
            raise FieldError("window_shape", f"{list(w)} must be at least layer_shape {list(self.layer_shape)}")
        object.__setattr__(self, "window_shape", w)
        with field_errors("hop_shifts_xy_m"):
            object.__setattr__(self, "hop_shifts_xy_m", check_hop_shifts(self.hop_shifts_xy_m, len(d)))

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


def shared_engine(geometry: StackGeometry, dtype=np.complex64, xp=np) -> Engine:
    """The process-wide cached :class:`~diffractive.propagation.Engine` for ``geometry``
    (``n_layers + 1`` hops; transfer functions computed once, kept until
    :func:`diffractive.clear_caches`). ``dtype``: complex64 or complex128."""
    g = geometry
    if g.hop_shifts_xy_m:
        return new_engine(geometry, dtype, xp)  # as-built stacks (shifted hops) are drawn anew: not cached
    return _shared_engine(g.layer_shape, wavelength_m=g.wavelength_m, pitch_m=g.pitch_m, distances_m=g.distances_m,
                          window_shape=g.window_shape, band_limit=g.band_limit, dtype=dtype, xp=xp)


def new_engine(geometry: StackGeometry, dtype=np.complex64, xp=np) -> Engine:
    """A new :class:`~diffractive.propagation.Engine` for ``geometry``, owned by the caller
    (not cached: its memory goes when the caller drops it). Pass it as ``engine=``."""
    g = geometry
    return Engine(g.layer_shape, wavelength_m=g.wavelength_m, pitch_m=g.pitch_m, distances_m=g.distances_m,
                  window_shape=g.window_shape, band_limit=g.band_limit, dtype=dtype, xp=xp, check="ignore",
                  shifts_xy_m=g.hop_shifts_xy_m)


def _engine_for(geometry: StackGeometry, engine: Engine | None, dtype, xp) -> Engine:
    if engine is None:
        return shared_engine(geometry, dtype, xp)
    g = geometry
    if engine.key != (g.layer_shape, g.wavelength_m, g.pitch_m, g.distances_m, g.window_shape, g.band_limit,
                      g.hop_shifts_xy_m):
        raise D2NNError("engine was made for another geometry than the one given")
    if engine.dtype != np.dtype(dtype) or engine.xp is not xp:
        raise D2NNError(f"engine runs {engine.dtype} on {engine.xp.__name__}, the arrays are {np.dtype(dtype)} "
                         f"on {xp.__name__}")
    return engine


@dataclass
class ForwardResult:
    """Output of :func:`forward`.

    output : (B, ny, nx) complex field on the output plane
    arrivals : (L, B, ny, nx) field arriving at each layer (before its mask), if kept
    transmissions : (L, ny, nx) the layers' transmissions as used (engine dtype)
    """

    output: object
    arrivals: object | None = None
    transmissions: object | None = dc_field(default=None, repr=False)


def forward(geometry: StackGeometry, transmissions, fields, *, keep_arrivals=False, workers=None,
            engine: Engine | None = None) -> ForwardResult:
    """Propagate input fields (B, ny, nx) through the stack to the output plane.

    ``transmissions`` (L, ny, nx) are the layers' complex transmissions
    (:func:`diffractive.layers.transmission`); the computation runs in the precision of
    ``result_type(fields, transmissions, complex64)``. ``keep_arrivals`` stores what
    :func:`backward` needs. ``workers``: CPU threads (default all cores). ``engine``: one
    from :func:`new_engine` for this geometry and precision (default the shared one).
    """
    xp = get_array_module(fields, transmissions)
    dtype = np.result_type(fields.dtype, transmissions.dtype, np.complex64)
    transmissions = xp.asarray(transmissions, dtype=dtype)
    fields = xp.asarray(fields, dtype=dtype)
    eng = _engine_for(geometry, engine, dtype, xp)
    out, arrivals = eng.forward(transmissions, fields, keep_arrivals=keep_arrivals, workers=workers)
    return ForwardResult(out, arrivals, transmissions)


def backward(geometry: StackGeometry, saved: ForwardResult, grad_intensity=None, *, grad_output=None,
             need_input_grad=False, workers=None, engine: Engine | None = None):
    """Adjoint pass: gradient of a real loss with respect to each layer's transmission.

    Give either ``grad_intensity`` = dL/dI (B, ny, nx) for ``I = |output|^2`` or
    ``grad_output`` = 2 dL/du* (B, ny, nx) complex. Returns ``(g_t, g_in)``: ``g_t``
    (L, ny, nx) complex, summed over the batch (see module docstring), and the gradient
    with respect to the input fields (B, ny, nx) if ``need_input_grad`` else ``None``.
    ``engine`` as for :func:`forward`.
    """
    if saved.arrivals is None:
        raise D2NNError("backward needs forward(..., keep_arrivals=True)")
    out = saved.output
    xp = get_array_module(out)
    eng = _engine_for(geometry, engine, out.dtype, xp)
    return eng.backward(out, saved.arrivals, saved.transmissions, grad_intensity, grad_output=grad_output,
                        need_input_grad=need_input_grad, workers=workers)
