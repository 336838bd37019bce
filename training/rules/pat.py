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

:class:`MismatchedPhysics` is torch-free and also serves to evaluate any design (e.g. one
trained by backprop) on the same mismatched physics (``benchmarks/rules.py``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from diffractive.errors import D2NNError
from diffractive.stack import StackGeometry, backward as stack_backward, forward as stack_forward

from ..bridge import from_xp, to_xp
from ..trainer import BackpropRule, TrainingError


def shift_map(t, dy, dx):
    """``t`` moved by ``(dy, dx)`` pixels (content at ``r`` goes to ``r + d``), bilinear for
    fractional shifts; uncovered pixels become 0 (opaque, as outside every layer)."""
    def whole(a, iy, ix):
        out = np.zeros_like(a)
        ny, nx = a.shape
        if abs(iy) >= ny or abs(ix) >= nx:
            return out
        out[max(iy, 0):ny + min(iy, 0), max(ix, 0):nx + min(ix, 0)] = a[max(-iy, 0):ny - max(iy, 0),
                                                                         max(-ix, 0):nx - max(ix, 0)]
        return out
    iy, ix = math.floor(dy), math.floor(dx)
    fy, fx = dy - iy, dx - ix
    out = np.zeros_like(t)
    for (sy, wy) in ((iy, 1 - fy), (iy + 1, fy)):
        for (sx, wx) in ((ix, 1 - fx), (ix + 1, fx)):
            if wy * wx:
                out += np.asarray(wy * wx, dtype=t.real.dtype) * whole(t, sy, sx)
    return out


class MismatchedPhysics:
    """The "physical" stack: the design with shifted layers, wrong gaps, quantised heights.

    ``shifts_px`` (L, 2) rows/columns, ``distances_m`` (L + 1) the true gaps, ``z_step_m``
    the printer's height step (phases are wrapped to [0, 2pi) and turned into heights
    ``h = phi * lambda / (2 pi (n - 1))`` as in fabrication), ``kappa`` > 0 adds the
    absorption ``exp(-2 pi kappa (base + h) / lambda)``.
    """

    def __init__(self, design, shifts_px=None, distances_m=None, z_step_m=None, n=None, kappa=0.0, base_m=0.0,
                 workers=None):
        L = design.n_layers
        self.design = design
        self.workers = workers
        self.shifts_px = np.zeros((L, 2)) if shifts_px is None else np.asarray(shifts_px, dtype=np.float64)
        d = list(design.distances_m) if distances_m is None else [float(v) for v in distances_m]
        self.geometry = StackGeometry(design.layer_shape, design.pitch_m, design.wavelength_m, tuple(d),
                                      design.window_shape)
        self.z_step_m = z_step_m
        self.n = float(design.material.n if n is None else n)
        self.kappa = float(kappa)
        self.base_m = float(base_m)

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
        return (not np.any(self.shifts_px) and tuple(self.geometry.distances_m) == tuple(self.design.distances_m)
                and self.z_step_m is None and self.kappa == 0)

    def transmissions(self, phases):
        """Complex transmissions (L, ny, nx) complex64 of the printed, assembled layers."""
        phases = np.asarray(phases, dtype=np.float32)
        lam = self.design.wavelength_m
        if self.z_step_m is not None or self.kappa:
            h = np.mod(phases.astype(np.float64), 2 * np.pi) * lam / (2 * np.pi * (self.n - 1))
            if self.z_step_m is not None:
                h = np.round(h / self.z_step_m) * self.z_step_m
            t = np.exp(1j * 2 * np.pi * (self.n - 1) * h / lam)
            if self.kappa:
                t = t * np.exp(-2 * np.pi * self.kappa * (self.base_m + h) / lam)
            t = t.astype(np.complex64)
        else:
            t = np.exp(1j * phases).astype(np.complex64)
        for l, (dy, dx) in enumerate(self.shifts_px):
            if dy or dx:
                t[l] = shift_map(t[l], float(dy), float(dx))
        return t

    def intensity(self, phases, fields):
        """Output-plane intensity (B, ny, nx) of input fields (B, ny, nx) through the physics."""
        out = stack_forward(self.geometry, self.transmissions(phases), fields, workers=self.workers).output
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

    def physical_intensity(self, images):
        """Differentiable (through the twin) output intensity of the physical system."""
        m = self.model
        return _PhysicsAwareIntensity.apply(m.phase, m.encode(images), self.physics, m.geometry, m.workers)

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
