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


#: Draws ``VALIDATION_STEP + i`` are the validation stacks (no training run takes 2**40 steps).
VALIDATION_STEP = 2 ** 40


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
        return self.powers_through(model, images, self.stack(step))

    def validation_stacks(self, n: int) -> list:
        """``n`` fixed stacks (the same every epoch and every run with this seed) on which
        the trainer measures the validation accuracy as built, to pick the best epoch."""
        return [self.stack(VALIDATION_STEP + i) for i in range(n)]

    def powers_through(self, model, images, stack):
        """As :meth:`powers`, through a given :class:`~diffractive.asbuilt.BuiltStack`."""
        t = stack.transmissions(phases=model.phase, amplitudes=model.amplitudes())
        fields = from_xp(stack.input_fields(to_xp(images.float())), images.device)
        intensity = stack_intensity(t, fields, stack.geometry, self.workers, engine=stack.engine())
        return stack.readout(intensity), intensity


def hold_block_constant(phase, block: int):
    """Make the parameter ``phase`` (L, ny, nx) constant over ``block x block`` pixels and keep it so.

    A printed feature larger than the simulation pixel: a lateral error is then a smaller
    fraction of a feature. The phases are set to their block's top-left value, and a gradient
    hook replaces each pixel's gradient by its block's sum, so every pixel of a block receives
    the same update from Adam (whose per-pixel states then stay equal): exact block-constant
    training, not a projection (as benchmarks/superpixels.py measured for its capacity cost).
    """
    import torch  # noqa: PLC0415

    from .rules.common import Superpixels  # noqa: PLC0415

    sp = Superpixels(tuple(phase.shape), int(block))
    with torch.no_grad():
        phase.copy_(torch.from_numpy(np.ascontiguousarray(sp.expand(sp.theta(phase.detach().cpu().numpy())))))
    phase.register_hook(lambda g: torch.from_numpy(
        np.ascontiguousarray(sp.expand(sp.block_sums(g.detach().cpu().numpy())))).to(g.device))
    return sp


def smoothness_penalty(phase):
    """Mean squared difference of neighbouring phasors, ``|exp(i phi_a) - exp(i phi_b)|^2`` in [0, 4],
    over horizontal and vertical neighbours of every layer (blind to 2 pi wraps, which print as
    the same plate). A smooth plate changes little when it moves by a fraction of a pixel."""
    import torch  # noqa: PLC0415

    c, s = torch.cos(phase), torch.sin(phase)
    dx = (c[:, :, 1:] - c[:, :, :-1]) ** 2 + (s[:, :, 1:] - s[:, :, :-1]) ** 2
    dy = (c[:, 1:, :] - c[:, :-1, :]) ** 2 + (s[:, 1:, :] - s[:, :-1, :]) ** 2
    return 0.5 * (dx.mean() + dy.mean())


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


__all__ = ["Vaccination", "hold_block_constant", "smoothness_penalty", "vaccination_from_config"]
