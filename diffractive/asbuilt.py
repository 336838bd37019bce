r"""The stack as built: one model of how a printed, assembled stack deviates from its design.

A design says where every plate sits and what every pixel's phase is. The stack on the
bench differs: plates sit off-axis, rotated and at the wrong gap; the printer quantises
heights, prints them a few percent too thick and gets some pixels wrong; the resin's index
and the source's frequency are known to a percent; the object and the detector plane are
placed by hand. :class:`AsBuilt` is one such realisation (all zero: as designed) and
:func:`build` turns a design and a realisation into a :class:`BuiltStack` that the NumPy /
CuPy simulation (:func:`simulate_built`), synthetic lab data, tolerance analysis and the
differentiable torch path of robust training (``training/robust.py``) all run. Error
budgets (distributions of these errors) are :mod:`diffractive.budgets`.

Model
-----
* **Printed heights** (:mod:`diffractive.heights`, the same code ``d2nn export`` prints
  with): ``h = base + wrap(phi)/(2 pi) * lambda/(n - 1)``, quantised to the printer step if
  ``z_step_m`` is set, times ``1 + thickness_error``; a fraction ``defect_fraction`` of the
  printed pixels (drawn from ``defect_seed``) get a uniformly random height in
  ``[base, base + lambda/(n - 1))`` instead (the optical version of dropout). Designs with
  complex modulation keep their designed amplitudes.
* **Material and source**: the transmission ``exp(i 2 pi (n' - 1) h / lambda')`` with
  ``n' = n (1 + index_error)``, ``lambda' = lambda (1 + wavelength_error)``, and, with
  ``absorption``, the loss ``exp(-2 pi kappa' h / lambda')``, ``kappa' = kappa (1 +
  kappa_error)``. Without absorption and without errors the printed layer is the designed
  ``exp(i phi)`` up to a global phase (``2 pi (n - 1) base / lambda``), so the simulation
  equals :func:`diffractive.simulate.simulate` to rounding. The detuned wavelength also
  propagates between the plates.
* **Placement** of each layer, of the input object and of the detector plane: a plate
  displaced by ``d`` and rotated by ``theta`` (counter-clockwise in the x-y frame of
  :mod:`diffractive.grid`, about the optical axis) has transmission
  ``t'(r) = t(R(-theta) (r - d))``; the object may also be scaled (``r = s R p + d``).
  Uncovered cells are opaque, as outside every layer (the opaque-aperture model of
  :mod:`diffractive.stack`). Gaps: ``distances_m[i] + gap_errors_m[i]``.

Oversampling
------------
A printed pixel is a flat-topped cell. With ``oversample = k`` each printed pixel is k x k
simulation cells (pitch / k, window k times larger), and a placed plate is *point-sampled*
at the centre of each fine cell: the fine cell takes the value of the printed pixel under
its centre. A shift by a multiple of ``pitch / k`` is then an exact roll of the
piecewise-constant print; other shifts are rounded to the nearest ``pitch / k`` (an error
of at most ``pitch / (2 k)``), and rotations are resampled on the fine grid the same way.
Interpolating the complex transmission instead would average random phasors into an
absorption that the print does not have, so it is not offered. The input object is the
design's input field on the design grid (the mask a lab cuts has the design's pixels),
placed the same way; detector masks are area-weighted on the fine grid (exact for
axis-aligned detectors) and then placed. Detector powers are divided by ``k**2``, so they
are in the same units at every ``k``.

Spectrum: a stack is built for one source line (:func:`build`, ``wavelength_m``); a
broadband source is one stack per line (:func:`build_lines`) summed incoherently
(:mod:`diffractive.spectrum`). ``wavelength_error`` detunes every line; the index and
extinction at the detuned wavelength come from the material's dispersion table if it has one
(:meth:`~diffractive.materials.Material.at`), and ``index_error`` scales them.

Not modelled: plate tilt (a tilted thin plate is not a thin element on a plane; a
first-order model would need a multi-slice propagation that this code does not have),
and reflections between plates.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from . import heights as _heights
from .heights import _lib  # (kind, module) of a NumPy, CuPy or torch array
from ._validate import finite_real, non_negative_finite
from .backend import resolve_backend, to_numpy
from .detectors import class_scores, detector_masks
from .errors import D2NNError, FieldError, field_errors
from .grid import Grid
from .layers import transmission
from .stack import StackGeometry, forward, new_engine, shared_engine

#: The largest oversampling factor accepted (a Lin-size stack at k = 8 needs 3200 x 3200 FFTs).
MAX_OVERSAMPLE = 8


def check_oversample(oversample) -> int:
    """Return ``oversample`` as an int in [1, :data:`MAX_OVERSAMPLE`], else raise :class:`FieldError`."""
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) or not (
            1 <= oversample <= MAX_OVERSAMPLE):
        raise FieldError("oversample", f"must be a whole number from 1 to {MAX_OVERSAMPLE} (simulation cells per "
                                       f"printed pixel along each axis), got {oversample!r}")
    return int(oversample)


def _pairs(name, value, n):
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return ()
    a = np.asarray(value, dtype=np.float64)
    if a.shape != (n, 2) or not np.all(np.isfinite(a)):
        raise FieldError(name, f"must be {n} finite (x, y) pairs in metres, got {np.asarray(value).tolist()!r}")
    return tuple((float(x), float(y)) for x, y in a)


def _values(name, value, n):
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return ()
    a = np.asarray(value, dtype=np.float64)
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise FieldError(name, f"must be {n} finite numbers, got {np.asarray(value).tolist()!r}")
    return tuple(float(v) for v in a)


def _pair(name, value):
    with field_errors(name):
        try:
            x, y = value
        except (TypeError, ValueError):
            raise FieldError(name, f"must be a pair (x, y) in metres, got {value!r}") from None
        return finite_real(name, x), finite_real(name, y)


@dataclass(frozen=True)
class AsBuilt:
    """One realisation of a built stack's deviations from its design (metres, radians, fractions).

    Per layer: ``layer_offsets_xy_m`` (L pairs (dx, dy)), ``layer_rotations_rad`` (L);
    per gap: ``gap_errors_m`` (L + 1, added to ``distances_m``); empty tuples mean none.
    Printing: ``thickness_error`` (heights times ``1 + e``), ``z_step_m`` (quantisation,
    ``None``: continuous), ``defect_fraction`` in [0, 1) with ``defect_seed``. Material
    and source: ``index_error``, ``kappa_error``, ``wavelength_error`` (relative),
    ``absorption`` (apply the material's kappa at all). Input object:
    ``input_offset_xy_m``, ``input_scale_error`` (object scaled by ``1 + e``). Detector
    plane: ``detector_offset_xy_m``, ``detector_rotation_rad``. See the module docstring
    for the model. Lengths of the per-layer tuples are checked against the design in
    :func:`build`.
    """

    layer_offsets_xy_m: tuple = ()
    layer_rotations_rad: tuple = ()
    gap_errors_m: tuple = ()
    thickness_error: float = 0.0
    z_step_m: float | None = None
    defect_fraction: float = 0.0
    defect_seed: int = 0
    index_error: float = 0.0
    kappa_error: float = 0.0
    absorption: bool = False
    wavelength_error: float = 0.0
    input_offset_xy_m: tuple = (0.0, 0.0)
    input_scale_error: float = 0.0
    detector_offset_xy_m: tuple = (0.0, 0.0)
    detector_rotation_rad: float = 0.0

    def __post_init__(self):
        v = self.layer_offsets_xy_m
        object.__setattr__(self, "layer_offsets_xy_m", _pairs("layer_offsets_xy_m", v,
                                                              len(v) if hasattr(v, "__len__") else -1))
        for name in ("layer_rotations_rad", "gap_errors_m"):
            v = getattr(self, name)
            object.__setattr__(self, name, _values(name, v, len(v) if hasattr(v, "__len__") else -1))
        for name in ("thickness_error", "index_error", "kappa_error", "wavelength_error", "input_scale_error",
                     "detector_rotation_rad"):
            with field_errors(name):
                object.__setattr__(self, name, finite_real(name, getattr(self, name)))
        for name, lo in (("thickness_error", -1), ("index_error", -1), ("kappa_error", -1),
                         ("wavelength_error", -1), ("input_scale_error", -1)):
            if getattr(self, name) <= lo:
                raise FieldError(name, f"must be greater than {lo} (a relative error), got {getattr(self, name)!r}")
        if self.z_step_m is not None:
            with field_errors("z_step_m"):
                object.__setattr__(self, "z_step_m", _heights.check_z_step(self.z_step_m))
        with field_errors("defect_fraction"):
            f = non_negative_finite("defect_fraction", self.defect_fraction)
        if f >= 1:
            raise FieldError("defect_fraction", f"must be below 1, got {f!r}")
        object.__setattr__(self, "defect_fraction", f)
        if isinstance(self.defect_seed, bool) or not isinstance(self.defect_seed, (int, np.integer)):
            raise FieldError("defect_seed", f"must be an integer, got {self.defect_seed!r}")
        object.__setattr__(self, "defect_seed", int(self.defect_seed))
        if not isinstance(self.absorption, (bool, np.bool_)):
            raise FieldError("absorption", f"must be true or false, got {self.absorption!r}")
        object.__setattr__(self, "absorption", bool(self.absorption))
        object.__setattr__(self, "input_offset_xy_m", _pair("input_offset_xy_m", self.input_offset_xy_m))
        object.__setattr__(self, "detector_offset_xy_m", _pair("detector_offset_xy_m", self.detector_offset_xy_m))

    @property
    def is_ideal(self) -> bool:
        """True when nothing deviates from the design (the as-built stack is the designed one)."""
        return self == AsBuilt()

    def combined(self, other: "AsBuilt") -> "AsBuilt":
        """Both deviations at once: offsets, rotations and gap errors add, relative errors
        compound (``(1 + a)(1 + b) - 1``), absorption if either, ``other``'s printer step and
        defects where it has them (a budget's draw on top of a known mismatch)."""
        def add(a, b):
            if not a:
                return b
            if not b:
                return a
            return np.asarray(a) + np.asarray(b)

        def rel(a, b):
            return a + b + a * b  # (1 + a)(1 + b) - 1, exact when one is 0
        return AsBuilt(
            layer_offsets_xy_m=add(self.layer_offsets_xy_m, other.layer_offsets_xy_m),
            layer_rotations_rad=add(self.layer_rotations_rad, other.layer_rotations_rad),
            gap_errors_m=add(self.gap_errors_m, other.gap_errors_m),
            thickness_error=rel(self.thickness_error, other.thickness_error),
            z_step_m=other.z_step_m if other.z_step_m is not None else self.z_step_m,
            defect_fraction=other.defect_fraction or self.defect_fraction,
            defect_seed=other.defect_seed if other.defect_fraction else self.defect_seed,
            index_error=rel(self.index_error, other.index_error), kappa_error=rel(self.kappa_error, other.kappa_error),
            absorption=self.absorption or other.absorption,
            wavelength_error=rel(self.wavelength_error, other.wavelength_error),
            input_offset_xy_m=tuple(np.add(self.input_offset_xy_m, other.input_offset_xy_m)),
            input_scale_error=rel(self.input_scale_error, other.input_scale_error),
            detector_offset_xy_m=tuple(np.add(self.detector_offset_xy_m, other.detector_offset_xy_m)),
            detector_rotation_rad=self.detector_rotation_rad + other.detector_rotation_rad)

    def to_json(self) -> dict:
        """Every field, JSON-ready (a synthetic measurement's or a tolerance draw's record)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = [list(p) if isinstance(p, tuple) else p for p in v]
        return out

    @classmethod
    def from_json(cls, doc: dict) -> "AsBuilt":
        """Inverse of :meth:`to_json`; unknown keys raise :class:`FieldError` naming them."""
        if not isinstance(doc, dict):
            raise D2NNError(f"an as-built record must be a JSON object, got {type(doc).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise FieldError(unknown[0], f"is not an as-built field (known: {', '.join(sorted(names))})")
        return cls(**doc)


# --------------------------------------------------------------------------- placement
def placement(shape_yx, upsample: int = 1, offset_xy_px=(0.0, 0.0), rotation_rad: float = 0.0,
              scale: float = 1.0):
    """Where each cell of a placed, ``upsample``-times finer grid takes its value from.

    The source is a map of ``shape_yx = (ny, nx)`` pixels; the target grid covers the same
    area with ``(ny * upsample, nx * upsample)`` cells. The map is moved by
    ``offset_xy_px`` (source pixels, (x, y)), rotated by ``rotation_rad`` counter-clockwise
    about the grid centre and scaled by ``scale``: target point ``r = scale R p + d``. Each
    target cell takes the source pixel under its centre (point sampling of a
    piecewise-constant map; exact for offsets that are multiples of ``1 / upsample``).

    Returns ``None`` when the placement is the identity at ``upsample = 1``, else
    ``(index, valid)``: ``index`` (ny*k * nx*k,) int64 flat indices into the source,
    ``valid`` (same shape) bool, False where the cell's centre falls outside the source.
    """
    ny, nx = (int(v) for v in shape_yx)
    k = int(upsample)
    dx, dy = (float(v) for v in offset_xy_px)
    if k == 1 and dx == 0 and dy == 0 and rotation_rad == 0 and scale == 1:
        return None
    ay = (np.arange(ny * k) + 0.5) / k - ny / 2 - dy
    ax = (np.arange(nx * k) + 0.5) / k - nx / 2 - dx
    Y, X = np.meshgrid(ay, ax, indexing="ij")
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    u = (c * X + s * Y) / scale + nx / 2
    v = (-s * X + c * Y) / scale + ny / 2
    # a centre that lands exactly on a pixel edge (a half-pixel shift at k = 1) goes to the pixel
    # above and to the right, whatever the rounding of the arithmetic
    j = np.floor(u + 1e-9).astype(np.int64)
    i = np.floor(v + 1e-9).astype(np.int64)
    valid = (i >= 0) & (i < ny) & (j >= 0) & (j < nx)
    index = np.where(valid, i * nx + j, 0).ravel()
    return index, valid.ravel()


def apply_placement(src, placed, target_shape):
    """Values of ``src`` (..., ny, nx) at a :func:`placement`: (..., *target_shape).

    NumPy, CuPy or torch (differentiable: the gradient flows back to the source pixels).
    ``placed = None`` returns ``src`` unchanged.
    """
    if placed is None:
        return src
    index, valid = placed
    kind, lib = _lib(src)
    lead = tuple(src.shape[:-2])
    flat = src.reshape(lead + (-1,))
    if kind == "torch":
        idx = lib.as_tensor(index, device=src.device)
        mask = lib.as_tensor(valid, device=src.device)
        out = lib.where(mask, flat[..., idx], lib.zeros((), dtype=src.dtype, device=src.device))
    else:
        idx = lib.asarray(index)
        out = flat[..., idx] * lib.asarray(valid, dtype=np.float32).astype(src.real.dtype)
    return out.reshape(lead + tuple(target_shape))


# --------------------------------------------------------------------------- the built stack
@dataclass
class BuiltStack:
    """A design realised as built, on the oversampled grid (see the module docstring).

    Made by :func:`build`. ``geometry`` is the fine, as-built :class:`StackGeometry` (pitch
    ``pitch_m / k``, gaps with their errors, the detuned wavelength); ``masks`` (K, ny*k,
    nx*k) the placed detector masks; ``n``, ``kappa`` the material as printed (``kappa``
    is 0 without absorption).
    """

    design: object
    as_built: AsBuilt
    oversample: int
    geometry: StackGeometry
    layer_placements: list
    input_placement: object
    masks: object
    n: float
    kappa: float
    defect_mask: np.ndarray | None
    defect_heights_m: np.ndarray | None
    xp: object = np
    _engine: object = None
    _torch_masks: object = None

    @property
    def fine_shape(self) -> tuple[int, int]:
        return self.geometry.layer_shape

    def engine(self, dtype=np.complex64):
        """The propagation engine of the as-built geometry: the process-wide one of the design
        for an ideal stack at k = 1 (what :func:`diffractive.simulate.simulate` runs), else one
        made on first use and owned by this stack (drawn stacks would evict the shared cache)."""
        if self._engine is None or self._engine.dtype != np.dtype(dtype):
            if self.as_built.is_ideal and self.oversample == 1:
                self._engine = shared_engine(self.geometry, dtype, self.xp)
            else:
                self._engine = new_engine(self.geometry, dtype, self.xp)
        return self._engine

    # -- layers ---------------------------------------------------------------------
    def printed_heights(self, phases):
        """Printed heights (L, ny, nx), metres, of the design's phase maps (NumPy, CuPy or torch).

        The quantised heights of a torch tensor carry the gradient of the continuous ones
        (straight-through: rounding to printer steps has zero derivative almost everywhere).
        """
        d, ab = self.design, self.as_built
        lam, n0, base = d.wavelength_m, d.material.n, d.fabrication.base_m
        kind, lib = _lib(phases)
        if ab.z_step_m is None:
            return _heights.phase_to_height(phases, lam, n0, base_m=base)
        quantised = _heights.phase_to_height(phases.detach() if kind == "torch" else phases, lam, n0, base_m=base,
                                             z_step_m=ab.z_step_m)
        if kind != "torch":
            return quantised
        smooth = _heights.phase_to_height(phases, lam, n0, base_m=base)
        return smooth + (quantised - smooth).detach()

    @property
    def prints_as_designed(self) -> bool:
        """True when the printed layers are the designed ``exp(i phi)`` up to a global phase
        (no quantisation, absorption, thickness, index, wavelength or defect error; placement
        errors may be present). :meth:`transmissions` then returns exactly ``exp(i phi)``, so
        the ideal as-built stack is :func:`diffractive.simulate.simulate` bit for bit."""
        ab = self.as_built
        return (ab.z_step_m is None and not ab.absorption and ab.thickness_error == 0 and ab.defect_fraction == 0
                and ab.index_error == 0 and self.geometry.wavelength_m == self.design.wavelength_m)

    def transmissions(self, phases=None, amplitudes=None, heights_m=None):
        """Complex transmissions (L, ny*k, nx*k) of the printed, placed layers.

        From ``phases`` (L, ny, nx) radians (default the design's) through
        :meth:`printed_heights`, or from measured ``heights_m`` (L, ny, nx) metres (e.g. read
        back from STL files). NumPy, CuPy or torch in, the same out (torch: differentiable
        in ``phases`` and ``amplitudes``). ``amplitudes`` default to the design's.
        """
        d, ab = self.design, self.as_built
        if heights_m is None:
            phases = self.xp.asarray(d.phases, dtype=np.float32) if phases is None else phases
            if amplitudes is None and d.amplitudes is not None and _lib(phases)[0] != "torch":
                amplitudes = self.xp.asarray(d.amplitudes, dtype=np.float32)
            if self.prints_as_designed:
                kind, lib = _lib(phases)
                if kind == "torch":
                    t = lib.polar(lib.ones_like(phases), phases)
                    t = t if amplitudes is None else t * amplitudes
                else:
                    t = transmission(phases, amplitudes)
                return self._place(t, kind, lib)
            h = self.printed_heights(phases)
        else:
            h = heights_m
        kind, lib = _lib(h)
        if ab.thickness_error:
            h = h * (1.0 + ab.thickness_error)
        if self.defect_mask is not None:
            if kind == "torch":
                mask = lib.as_tensor(self.defect_mask, device=h.device)
                h = lib.where(mask, lib.as_tensor(self.defect_heights_m, dtype=h.dtype, device=h.device), h)
            else:
                h = lib.where(lib.asarray(self.defect_mask), lib.asarray(self.defect_heights_m, dtype=h.dtype), h)
        t = _heights.height_to_transmission(h, self.geometry.wavelength_m, self.n, self.kappa)
        if kind != "torch":
            t = t.astype(np.complex64 if h.dtype == np.float32 else np.complex128, copy=False)
        if amplitudes is not None:
            t = t * amplitudes
        return self._place(t, kind, lib)

    def _place(self, t, kind, lib):
        if self.oversample == 1 and all(p is None for p in self.layer_placements):
            return t
        return lib.stack([apply_placement(t[i], p, self.fine_shape) for i, p in enumerate(self.layer_placements)])

    # -- input and detectors ----------------------------------------------------------
    def input_fields(self, images):
        """Input fields (B, ny*k, nx*k) of images (B, h, w) in [0, 1] (NumPy or CuPy), placed."""
        xp = self.xp
        fields = self.design.input.fields(xp.asarray(images, dtype=np.float32), self.design.grid)
        return self.place_input(fields)

    def place_input(self, fields):
        """The design-grid input fields (B, ny, nx) moved, scaled and upsampled as built."""
        return apply_placement(fields, self.input_placement, self.fine_shape)

    def readout(self, intensity):
        """Detector powers (..., K) of fine-grid intensities (..., ny*k, nx*k), in design-grid units."""
        kind, lib = _lib(intensity)
        K = self.masks.shape[0]
        flat = intensity.reshape(tuple(intensity.shape[:-2]) + (-1,))
        masks = self.masks.reshape(K, -1)
        if kind == "torch":
            # made once per stack and device (a training step reads out every batch)
            key = (flat.dtype, flat.device)
            if self._torch_masks is None or self._torch_masks[0] != key:
                self._torch_masks = (key, lib.as_tensor(to_numpy(masks), dtype=flat.dtype, device=flat.device))
            return (flat @ self._torch_masks[1].T) / float(self.oversample ** 2)
        return (flat @ lib.asarray(masks, dtype=flat.dtype).T) / flat.dtype.type(self.oversample ** 2)

    def intensity(self, images, *, transmissions=None, workers=None):
        """Output-plane intensity (B, ny*k, nx*k) of ``images`` through the built stack."""
        t = self.transmissions() if transmissions is None else transmissions
        fields = self.input_fields(images)
        engine = self.engine(np.result_type(t.dtype, fields.dtype))
        out = forward(self.geometry, t, fields, workers=workers, engine=engine).output
        return out.real ** 2 + out.imag ** 2


def hop_shifts(as_built: AsBuilt, n_layers: int) -> tuple:
    """Each hop's lateral offset of its destination plane relative to its source plane,
    ``(L + 1)`` pairs (metres; ``()`` if none): the planes are the input object, the layers
    and the detector plane, displaced by ``input_offset_xy_m``, ``layer_offsets_xy_m`` and
    ``detector_offset_xy_m``."""
    ab = as_built
    d = np.zeros((n_layers + 2, 2))
    d[0] = ab.input_offset_xy_m
    if ab.layer_offsets_xy_m:
        d[1:-1] = ab.layer_offsets_xy_m
    d[-1] = ab.detector_offset_xy_m
    steps = np.diff(d, axis=0)
    return tuple((float(x), float(y)) for x, y in steps) if np.any(steps) else ()


def fine_geometry(design, oversample: int = 1, *, gap_errors_m=(), wavelength_error: float = 0.0,
                  hop_shifts_xy_m=(), wavelength_m: float | None = None) -> StackGeometry:
    """The as-built :class:`StackGeometry`: pitch / k, layer and window shapes times k, the
    gaps with their errors, the source line ``wavelength_m`` (default the design wavelength)
    detuned by ``wavelength_error``, the hops' lateral shifts (:func:`hop_shifts`). Raises
    :class:`D2NNError` if a gap closes."""
    k = check_oversample(oversample)
    g = design.geometry
    d = np.asarray(g.distances_m, dtype=np.float64)
    if len(gap_errors_m):
        if len(gap_errors_m) != len(d):
            raise FieldError("gap_errors_m", f"must hold {len(d)} values (one per gap), got {len(gap_errors_m)}")
        d = d + np.asarray(gap_errors_m, dtype=np.float64)
    if np.any(d <= 0):
        raise D2NNError(f"the as-built gaps {[round(v * 1e3, 4) for v in d]} mm must stay positive")
    lam = g.wavelength_m if wavelength_m is None else float(wavelength_m)
    return StackGeometry((g.layer_shape[0] * k, g.layer_shape[1] * k), g.pitch_m / k,
                         lam * (1.0 + wavelength_error) if wavelength_error else lam, tuple(float(v) for v in d),
                         (g.window_shape[0] * k, g.window_shape[1] * k), g.band_limit, hop_shifts_xy_m)


def material_at(design, wavelength_m: float) -> tuple[float, float]:
    """``(n, kappa)`` of the design's material at ``wavelength_m``: exactly the design's values
    at the design wavelength, else :meth:`~diffractive.materials.Material.at` (a
    :class:`D2NNError` with the numbers outside a dispersion table's range)."""
    if wavelength_m == design.wavelength_m:
        return design.material.n, design.material.kappa
    try:
        return design.material.at(wavelength_m)
    except FieldError as e:
        raise D2NNError(f"the source at {wavelength_m * 1e3:.6g} mm: {e.problem}") from None


def build(design, as_built: AsBuilt | None = None, *, oversample: int = 1, xp=np, engine=None,
          wavelength_m: float | None = None) -> BuiltStack:
    """Realise ``design`` with the deviations ``as_built`` on a grid oversampled ``oversample`` times,
    lit by the source line ``wavelength_m`` (default the design wavelength; one line of
    :attr:`~diffractive.design.Design.lines`), detuned by ``as_built.wavelength_error``.
    The material's index and extinction are taken at that wavelength
    (:meth:`~diffractive.materials.Material.at`); the printed heights stay those of the design
    wavelength.

    ``engine``: an engine on the same fine grid and window (e.g. the previous draw's) whose
    FFT workspaces the new stack reuses (:meth:`diffractive.propagation.Engine.retuned`);
    default a new one on first use.
    """
    ab = AsBuilt() if as_built is None else as_built
    if not isinstance(ab, AsBuilt):
        raise D2NNError(f"as_built must be an AsBuilt, got {type(ab).__name__}")
    k = check_oversample(oversample)
    L = design.n_layers
    if ab.layer_offsets_xy_m and len(ab.layer_offsets_xy_m) != L:
        raise FieldError("layer_offsets_xy_m", f"must hold {L} pairs (one per layer), got {len(ab.layer_offsets_xy_m)}")
    if ab.layer_rotations_rad and len(ab.layer_rotations_rad) != L:
        raise FieldError("layer_rotations_rad", f"must hold {L} angles (one per layer), got "
                                                f"{len(ab.layer_rotations_rad)}")
    # lateral offsets are translations of the planes' grids, folded into the hops (exact for any
    # offset); rotations, the object's scale and the oversampling are resamplings (placement)
    geometry = fine_geometry(design, k, gap_errors_m=ab.gap_errors_m, wavelength_error=ab.wavelength_error,
                             hop_shifts_xy_m=hop_shifts(ab, L), wavelength_m=wavelength_m)
    shape = design.layer_shape
    rotations = ab.layer_rotations_rad or (0.0,) * L
    layers = [placement(shape, k, (0.0, 0.0), rot) for rot in rotations]
    inp = placement(shape, k, (0.0, 0.0), 0.0, 1.0 + ab.input_scale_error)
    fine_grid = Grid(geometry.layer_shape, geometry.pitch_m)
    masks = detector_masks(design.detectors, fine_grid, np)
    masks = apply_placement(masks, placement(fine_grid.shape, 1, (0.0, 0.0), ab.detector_rotation_rad),
                            fine_grid.shape)
    n0, kappa0 = material_at(design, geometry.wavelength_m)
    n = n0 * (1.0 + ab.index_error)
    if n <= 1:
        raise D2NNError(f"index_error {ab.index_error} leaves a refractive index {n:.4g} <= 1")
    kappa = kappa0 * (1.0 + ab.kappa_error) if ab.absorption else 0.0
    defect_mask = defect_heights = None
    if ab.defect_fraction > 0:
        rng = np.random.default_rng(ab.defect_seed)
        defect_mask = rng.random((L,) + tuple(shape)) < ab.defect_fraction
        period = _heights.phase_period_m(design.wavelength_m, design.material.n)
        defect_heights = (design.fabrication.base_m + rng.random((L,) + tuple(shape)) * period).astype(np.float32)
        defect_mask, defect_heights = xp.asarray(defect_mask), xp.asarray(defect_heights)
    stack = BuiltStack(design, ab, k, geometry, layers, inp, xp.asarray(masks.astype(np.float32)), n, kappa,
                       defect_mask, defect_heights, xp)
    if engine is not None:
        if engine.field_shape != geometry.layer_shape or engine.window_shape != geometry.window_shape:
            raise D2NNError("the engine given to build() runs another grid than the as-built stack")
        stack._engine = engine.retuned(wavelength_m=geometry.wavelength_m, distances_m=geometry.distances_m,
                                       shifts_xy_m=geometry.hop_shifts_xy_m)
    return stack


@dataclass
class BuiltLines:
    """A design as built under a source spectrum: one :class:`BuiltStack` per line
    (``stacks``, the same deviations, each at its wavelength) and the readout matrix
    ``weights`` (lines, detectors) of :func:`diffractive.spectrum.readout_weights`: detector
    powers are ``sum_j weights[j] * stacks[j].readout(I_j)``."""

    stacks: list
    weights: np.ndarray
    spectrum: object
    line_weights: np.ndarray | None = None  # each stack's share of the total power (default the spectrum's)

    def __post_init__(self):
        if self.line_weights is None:
            self.line_weights = np.asarray(self.spectrum.weights, dtype=np.float64)

    def subset(self, indices, factors) -> "BuiltLines":
        """The lines ``indices`` only, their weights times ``factors``
        (:func:`diffractive.spectrum.sample_lines`)."""
        idx = [int(i) for i in indices]
        f = np.asarray(factors, dtype=np.float64)
        return BuiltLines([self.stacks[i] for i in idx], self.weights[idx] * f[:, None], self.spectrum,
                          self.line_weights[idx] * f)


def build_lines(design, as_built: AsBuilt | None = None, *, oversample: int = 1, xp=np, engine=None,
                spectrum=None) -> BuiltLines:
    """:func:`build` at every line of ``spectrum`` (default :attr:`~diffractive.design.Design.lines`).

    A spectrum other than the design's may be given (a frequency sweep lights the stack with
    one line at a time) unless a detector reads one line (``band``): those indices belong to
    the design's spectrum. The stacks share the FFT workspaces of ``engine`` or of the first
    stack (:meth:`~diffractive.propagation.Engine.retuned`), so they run one after the other.
    """
    from .spectrum import Spectrum, readout_weights  # noqa: PLC0415

    lines = design.lines if spectrum is None else spectrum
    if not isinstance(lines, Spectrum):
        raise D2NNError(f"spectrum must be a Spectrum, got {type(lines).__name__}")
    if spectrum is not None and spectrum != design.lines and any(d.band is not None for d in design.detectors):
        raise D2NNError("this design's detectors read single lines of its own spectrum (detector 'band'); it "
                        "cannot be lit with another spectrum")
    stacks = []
    for lam in lines.wavelengths_m:
        st = build(design, as_built, oversample=oversample, xp=xp, engine=engine, wavelength_m=lam)
        engine = st.engine()
        stacks.append(st)
    return BuiltLines(stacks, readout_weights(lines, design.detectors), lines)


def simulate_built(design, images, as_built: AsBuilt | None = None, *, oversample: int = 1, heights_m=None,
                   transmissions=None, batch_size: int = 64, backend=None, keep_intensity: bool = False, workers=None,
                   progress=None, stack=None, spectrum=None):
    """Simulate ``images`` (N, h, w) through ``design`` as built; a
    :class:`~diffractive.simulate.SimulationResult` (powers in design-grid units).

    The source is the design's spectrum (:attr:`~diffractive.design.Design.lines`) or
    ``spectrum``; with several lines the powers, total power and intensity are the weighted
    incoherent sums of :mod:`diffractive.spectrum`.
    ``heights_m`` (L, ny, nx): printed heights to use instead of the design's phases (read
    back from STL files); ``transmissions`` (L, ny*k, nx*k): the layers themselves (one
    line only: a transmission belongs to one wavelength).
    ``stack``: an already built :class:`BuiltStack` or :class:`BuiltLines` (then ``as_built``,
    ``oversample`` and ``spectrum`` are its, and so is the array library unless ``backend`` is
    given). ``progress(n_done)`` after each batch.
    :func:`diffractive.simulate.simulate` is this function for the ideal stack.
    """
    from .simulate import SimulationResult  # noqa: PLC0415

    # a given stack runs on its own library: heights_m / transmissions go to its device
    first = stack.stacks[0] if isinstance(stack, BuiltLines) else stack
    xp = first.xp if stack is not None and backend is None else resolve_backend(backend)
    if stack is None:
        lines = design.lines if spectrum is None else spectrum
        if lines.is_monochromatic_at(design.wavelength_m):
            stack = build(design, as_built, oversample=oversample, xp=xp)
        else:
            stack = build_lines(design, as_built, oversample=oversample, xp=xp, spectrum=lines)
    if isinstance(stack, BuiltLines) and len(stack.stacks) == 1 and np.all(stack.weights == 1.0):
        stack = stack.stacks[0]  # one line of weight 1: the monochromatic path, bit for bit
    if isinstance(stack, BuiltLines):
        if transmissions is not None:
            raise D2NNError("transmissions belong to one wavelength; a spectrum of several lines needs heights_m "
                            "or the design's phases")
        parts = [(st, st.transmissions(heights_m=None if heights_m is None else xp.asarray(heights_m, np.float32)))
                 for st in stack.stacks]
        W = stack.weights
        line_w = stack.line_weights
    else:
        if transmissions is not None:
            t = xp.asarray(transmissions, dtype=np.complex64)
        else:
            t = stack.transmissions(heights_m=None if heights_m is None else xp.asarray(heights_m, dtype=np.float32))
        parts, W, line_w = [(stack, t)], None, None
    powers, totals, intens = [], [], []
    n = len(images)
    k2 = float(parts[0][0].oversample ** 2)
    for a in range(0, n, batch_size):
        p_sum = tot = i_sum = None
        for j, (st, t) in enumerate(parts):
            inten = st.intensity(images[a:a + batch_size], transmissions=t, workers=workers)
            p = to_numpy(st.readout(inten))
            total = to_numpy(inten.sum(axis=(-2, -1))) / k2
            if W is None:
                p_sum, tot, i_sum = p, total, (to_numpy(inten) if keep_intensity else None)
                continue
            p = p.astype(np.float64) * W[j]
            p_sum = p if p_sum is None else p_sum + p
            tot = line_w[j] * total if tot is None else tot + line_w[j] * total
            if keep_intensity:
                i = line_w[j] * to_numpy(inten).astype(np.float64)
                i_sum = i if i_sum is None else i_sum + i
        powers.append(p_sum)
        totals.append(tot)
        if keep_intensity:
            intens.append(i_sum)
        if progress is not None:
            progress(min(n, a + batch_size))
    powers = np.concatenate(powers) if powers else np.zeros((0, len(design.detectors)))
    scores = class_scores(powers.astype(np.float64), design.detectors, design.n_classes)
    return SimulationResult(powers=powers, scores=scores, predictions=np.argmax(scores, axis=1),
                            total_power=np.concatenate(totals) if totals else np.zeros(0),
                            intensity=np.concatenate(intens) if keep_intensity else None)


def read_as_built(path, n_layers: int | None = None) -> AsBuilt:
    """The stack as built recorded in the JSON file ``path``: the ``"as_built"`` object of a
    ``d2nn diagnose`` ``fit.json`` or a ``d2nn measure-sim`` ``.truth.json``, or a bare
    :meth:`AsBuilt.to_json` object. ``n_layers``: the design's, checked against the per-layer
    and per-gap lists. Anything malformed raises :class:`~diffractive._read.InputFileError`
    naming the file and the field.

    (A measure-sim truth file keeps the scan frame's misalignment outside ``"as_built"``,
    where registration looks: it is a property of the measurement, not of the stack.)
    """
    from ._read import InputFileError, read_json  # noqa: PLC0415

    doc = read_json(path)
    if not isinstance(doc, dict):
        raise InputFileError(path, f"must hold a JSON object, got {type(doc).__name__}")
    rec, where = (doc["as_built"], "as_built.") if "as_built" in doc else (doc, "")
    if not isinstance(rec, dict):
        raise InputFileError(path, f"must be an object, got {type(rec).__name__}", where=f"field '{where[:-1]}'")
    try:
        ab = AsBuilt.from_json(rec)
    except FieldError as e:
        raise InputFileError(path, e.problem, where=f"field '{where}{e.field}'") from None
    except (TypeError, ValueError) as e:
        raise InputFileError(path, f"is not an as-built record ({e})", where=f"field '{where[:-1] or 'as_built'}'") \
            from None
    if n_layers is not None:
        for name, n in (("layer_offsets_xy_m", n_layers), ("layer_rotations_rad", n_layers),
                        ("gap_errors_m", n_layers + 1)):
            v = getattr(ab, name)
            if v and len(v) != n:
                raise InputFileError(path, f"holds {len(v)} entries; the design has {n_layers} layers, so it needs "
                                           f"{n} (or none)", where=f"field '{where}{name}'")
    return ab


__all__ = ["AsBuilt", "BuiltLines", "BuiltStack", "MAX_OVERSAMPLE", "apply_placement", "build", "build_lines",
           "check_oversample", "fine_geometry", "material_at", "placement", "read_as_built", "simulate_built"]
