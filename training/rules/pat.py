"""Physics-aware training (Wright et al., Nature 601, 549 (2022)).

The forward pass runs through the "physical" system — here a simulator with deliberate
mismatch (:class:`MismatchedPhysics`: lateral layer shifts, errors in the gaps, height
quantisation of the printer, material absorption) — and the loss is computed on *its*
output. The backward pass runs through the ideal digital twin (the model): the twin's
vector-Jacobian product at the current phases, applied to the loss gradient taken at the
physical output,

    dL/dphi  ~=  J_twin(phi)^T  dL/dI |_(I = I_physical).

The optimiser, schedule and checkpoints are backprop's. The trainer's validation and
test accuracies are measured on the physical system (``evaluation_forward``), which is what
a lab training with its hardware in the loop would report. With no mismatch configured the
physics *is* the twin and the rule is exactly backprop.

The physics is the stack as built of :mod:`diffractive.asbuilt` (the model that
``d2nn measure-sim``, ``d2nn simulate --from-stl``, the tolerance analysis and robust
training run): the shifts are lateral layer offsets, exact for any sub-pixel value (they
move the plate in the propagation, :attr:`StackGeometry.hop_shifts_xy_m`; nothing is
interpolated), the heights are printed as :mod:`diffractive.heights` prints them (base and
relief on whole printer steps, absorption of the whole printed height). The twin is the
ideal geometry (``model.geometry``): the shifts are not in its transmissions, so its
backward pass never sees them.

:class:`MismatchedPhysics` is torch-free and also serves to evaluate any design (e.g. one
trained by backprop) on the same mismatched physics (``benchmarks/rules.py``).
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from diffractive.asbuilt import AsBuilt, build
from diffractive.errors import D2NNError
from diffractive.stack import backward as stack_backward, forward as stack_forward

from ..bridge import from_xp, to_xp
from ..trainer import BackpropRule, TrainingError


class MismatchedPhysics:
    """The "physical" stack: the design with shifted layers, wrong gaps, quantised heights.

    ``shifts_px`` (L, 2) rows/columns (content at ``r`` goes to ``r + d``; any real value),
    ``distances_m`` (L + 1) the true gaps, ``z_step_m`` the printer's height step (phases
    are printed as :func:`diffractive.heights.phase_to_height` prints them, on the design's
    ``fabrication.base_m`` unless ``base_m`` is given), ``n`` the material's index (default
    the design's), ``kappa`` > 0 adds the material's absorption ``exp(-2 pi kappa h /
    lambda)`` of the printed height ``h`` (base included). Built once as
    :func:`diffractive.asbuilt.build` of the :class:`~diffractive.asbuilt.AsBuilt`
    (``as_built``) at ``oversample = 1``; ``stack`` is the :class:`BuiltStack`, ``geometry``
    its as-built geometry (the shifted hops and true gaps).
    """

    def __init__(self, design, shifts_px=None, distances_m=None, z_step_m=None, n=None, kappa=0.0, base_m=None,
                 workers=None):
        L = design.n_layers
        self.design = design
        self.workers = workers
        self.shifts_px = np.zeros((L, 2)) if shifts_px is None else np.asarray(shifts_px, dtype=np.float64)
        if self.shifts_px.shape != (L, 2) or not np.all(np.isfinite(self.shifts_px)):
            raise D2NNError(f"shifts_px must be {L} finite (rows, columns) pairs, got shape {self.shifts_px.shape}")
        d = np.asarray(design.distances_m if distances_m is None else distances_m, dtype=np.float64)
        if d.shape != (L + 1,):
            raise D2NNError(f"distances_m must hold n_layers + 1 = {L + 1} gaps, got {d.size}")
        self.z_step_m = z_step_m
        self.n = float(design.material.n if n is None else n)
        self.kappa = float(kappa)
        self.base_m = float(design.fabrication.base_m if base_m is None else base_m)
        material = dataclasses.replace(design.material, n=self.n, kappa=self.kappa or design.material.kappa)
        fabrication = dataclasses.replace(design.fabrication, base_m=self.base_m)
        self.printed_design = (design if material == design.material and fabrication == design.fabrication
                               else dataclasses.replace(design, material=material, fabrication=fabrication))
        p = design.pitch_m
        gaps = d - np.asarray(design.distances_m, dtype=np.float64)
        offsets = np.stack([self.shifts_px[:, 1] * p, self.shifts_px[:, 0] * p], axis=1)  # (dx, dy) = (cols, rows)
        self.as_built = AsBuilt(layer_offsets_xy_m=offsets if np.any(offsets) else (),
                                gap_errors_m=gaps if np.any(gaps) else (), z_step_m=z_step_m,
                                absorption=self.kappa > 0)
        self.stack = build(self.printed_design, self.as_built, oversample=1)
        self.geometry = self.stack.geometry

    @classmethod
    def from_config(cls, design, cfg):
        """The physics ``[trainer.pat]`` describes (random parts drawn from ``mismatch_seed``)."""
        o = cfg.trainer.options
        L = design.n_layers
        rng = np.random.default_rng(o.mismatch_seed)
        shifts = (np.asarray(o.shift_px, dtype=np.float64) if o.shift_px is not None
                  else rng.normal(0.0, o.shift_std_px, (L, 2)) if o.shift_std_px > 0 else np.zeros((L, 2)))
        dist = np.asarray(design.distances_m, dtype=np.float64)
        if o.distance_error_m is not None:
            dist = dist + np.asarray(o.distance_error_m, dtype=np.float64)
        elif o.distance_std_m > 0:
            dist = dist + rng.normal(0.0, o.distance_std_m, L + 1)
        if np.any(dist <= 0):
            raise D2NNError(f"[trainer.pat]: the mismatched gaps {dist.tolist()} m must stay positive")
        return cls(design, shifts, dist.tolist(), o.z_step_m, cfg.material.n,
                   cfg.material.kappa if o.absorption else 0.0, cfg.fabrication.base_m, cfg.trainer.workers)

    @property
    def is_ideal(self):
        """True when the physics is the twin: nothing shifted, no gap error, the layers printed as designed."""
        return self.as_built.is_ideal

    def transmissions(self, phases):
        """Complex transmissions (L, ny, nx) complex64 of the printed layers (the stack's,
        :meth:`BuiltStack.transmissions`; the layer offsets are in :attr:`geometry`)."""
        phases = np.asarray(phases, dtype=np.float32)
        return self.stack.transmissions(phases=phases).astype(np.complex64, copy=False)

    def perturbed(self, extra, engine=None) -> "MismatchedPhysics":
        """This physics with the deviations ``extra`` (an :class:`~diffractive.asbuilt.AsBuilt`,
        e.g. a budget's draw for one batch of robust training) on top; shares the FFT workspaces
        of ``engine`` if given."""
        out = copy.copy(self)
        out.as_built = self.as_built.combined(extra)
        out.stack = build(self.printed_design, out.as_built, oversample=1, engine=engine)
        out.geometry = out.stack.geometry
        return out

    def intensity(self, phases, fields):
        """Output-plane intensity (B, ny, nx) of input fields (B, ny, nx) through the physics."""
        t = self.transmissions(phases)
        fields = self.stack.place_input(fields)
        engine = self.stack.engine(np.result_type(t.dtype, np.asarray(fields).dtype))
        out = stack_forward(self.geometry, t, fields, workers=self.workers, engine=engine).output
        return out.real ** 2 + out.imag ** 2


class _PhysicsAwareIntensity(torch.autograd.Function):
    """``phase -> I_physical`` in the forward pass, the twin's vector-Jacobian product backward."""

    @staticmethod
    def forward(ctx, phase, fields, physics, twin_geometry, workers):
        phase_np = to_xp(phase)
        fields_np = to_xp(fields)
        t = np.exp(1j * phase_np).astype(np.complex64)
        ctx.twin = stack_forward(twin_geometry, t, fields_np, keep_arrivals=True, workers=workers)
        ctx.geometry, ctx.workers, ctx.t = twin_geometry, workers, t
        return from_xp(physics.intensity(phase_np, fields_np).astype(np.float32), phase.device)

    @staticmethod
    def backward(ctx, grad_intensity):
        g_t, _ = stack_backward(ctx.geometry, ctx.twin, to_xp(grad_intensity.contiguous()), workers=ctx.workers)
        ctx.twin = None
        dphi = np.imag(np.conj(ctx.t) * g_t).astype(np.float32)
        return from_xp(dphi, grad_intensity.device), None, None, None, None


class PATRule(BackpropRule):
    """Backprop's optimiser and schedule; forward through the physics, backward through the twin."""

    name = "pat"

    def __init__(self, model, cfg, steps_per_epoch):
        super().__init__(model, cfg, steps_per_epoch)
        if model.phase.device.type != "cpu":
            raise TrainingError("rule 'pat' runs on the CPU (the mismatched physics is NumPy); train with device='cpu'")
        self.physics = MismatchedPhysics.from_config(model.design, cfg)
        if self.vaccination is not None and self.vaccination.oversample != 1:
            raise TrainingError("rule 'pat' with [robustness] needs oversample = 1 (its twin runs on the design grid)")

    def physical_intensity(self, images):
        """Differentiable (through the twin) output intensity of the physical system; with
        ``[robustness]``, of the physical system with this step's draw from the budget on top."""
        m = self.model
        physics = self.physics
        if self.vaccination is not None:
            v = self.vaccination
            rng = np.random.default_rng([v.seed, self.scheduler.last_epoch])
            extra = v.budget.draw(rng, m.design.n_layers, m.design.fabrication.z_step_m)
            physics = self.physics.perturbed(extra, engine=getattr(self, "_engine", None))
            self._engine = physics.stack.engine()
        return _PhysicsAwareIntensity.apply(m.phase, m.encode(images), physics, m.geometry, m.workers)

    def loss(self, images, labels):
        from ..model import detector_loss  # noqa: PLC0415

        intensity = self.physical_intensity(images)
        powers = self.model.readout(intensity)
        return detector_loss(powers, intensity, labels, self.model.score_matrix, self.cfg.trainer.loss,
                             self.cfg.trainer.temperature)

    @torch.no_grad()
    def evaluation_forward(self, images):
        """Output intensity of the *physical* system (the trainer validates and tests on it)."""
        m = self.model
        return torch.from_numpy(self.physics.intensity(to_xp(m.phase), to_xp(m.encode(images))).astype(np.float32))


def make(model, cfg, steps_per_epoch):
    return PATRule(model, cfg, steps_per_epoch)
