"""Error-robust training: every batch through a freshly drawn as-built stack.

Mengu et al., "Misalignment resilient diffractive optical networks", Nanophotonics 9, 4207
(2020), train through random lateral, axial and rotational errors drawn anew for each batch
and call it *vaccination*. Here the errors come from an error budget
(:mod:`diffractive.budget`, the same files ``d2nn tolerance`` uses) and the stack they describe
is the physics core's as-built model (:func:`diffractive.asbuilt.build`): the printed heights,
the material and source errors, the placement of each layer, the object and the detector plane
on the oversampled grid. Only the last step differs from simulation: the layer transmissions
come from the model's torch parameters (:meth:`diffractive.asbuilt.BuiltStack.transmissions`
takes torch tensors, and its placement is a differentiable gather), and the propagation is the
autograd bridge with the as-built geometry (:class:`training.bridge.StackIntensity`).

Draws are reproducible and resumable: batch ``s`` of a run draws from
``numpy.random.default_rng([seed, s])``, independent of what came before. Between draws
only the transfer functions change; the FFT workspaces are kept
(:meth:`diffractive.propagation.Engine.retuned`).

With an empty budget (:data:`diffractive.budget.EMPTY`: no error kinds, no absorption, no
quantisation) nothing here runs and training is the ordinary training, bit for bit.
"""
from __future__ import annotations

import numpy as np

from diffractive.asbuilt import build
from diffractive.budget import ErrorBudget

from .bridge import from_xp, stack_intensity, to_xp


class Vaccination:
    """Draws one as-built stack per training step and runs the model's layers through it.

    ``design``: the model's design (geometry, detectors, material, printer step);
    ``budget``: an :class:`~diffractive.budget.ErrorBudget`; ``oversample``: simulation cells
    per printed pixel; ``seed``: the draws' seed.
    """

    def __init__(self, design, budget: ErrorBudget, oversample: int = 1, seed: int = 0, workers=None):
        self.design = design
        self.budget = budget
        self.oversample = int(oversample)
        self.seed = int(seed)
        self.workers = workers
        self._engine = None
        self.last = None  # the last stack drawn (for logs and tests)

    def stack(self, step: int):
        """The :class:`~diffractive.asbuilt.BuiltStack` of training step ``step``."""
        rng = np.random.default_rng([self.seed, int(step)])
        ab = self.budget.draw(rng, self.design.n_layers, self.design.fabrication.z_step_m)
        stack = build(self.design, ab, oversample=self.oversample, engine=self._engine)
        self._engine = stack.engine()
        self.last = stack
        return stack

    def powers(self, model, images, step: int):
        """``(powers (B, K), intensity (B, ny*k, nx*k))`` of ``images`` through this step's stack,
        differentiable in the model's parameters."""
        stack = self.stack(step)
        t = stack.transmissions(phases=model.phase, amplitudes=model.amplitudes())
        fields = from_xp(stack.input_fields(to_xp(images.float())), images.device)
        intensity = stack_intensity(t, fields, stack.geometry, self.workers, engine=stack.engine())
        return stack.readout(intensity), intensity


def vaccination_from_config(design, cfg):
    """The :class:`Vaccination` that ``[robustness]`` asks for, or ``None`` for plain training."""
    r = cfg.robustness
    if r.budget is None:
        return None
    budget = r.load_budget(cfg)
    if budget.is_empty:
        return None
    return Vaccination(design, budget, r.oversample, cfg.trainer.seed if r.seed is None else r.seed,
                       cfg.trainer.workers)


__all__ = ["Vaccination", "vaccination_from_config"]
