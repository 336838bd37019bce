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

**Re-design around what was printed** (issue 14): ``[robustness] as_built`` names a known
stack as built -- what ``d2nn diagnose`` fitted to the lab's measurements (its ``fit.json``).
Every step then trains through that stack (with a budget, through that stack with a fresh
draw on top: :meth:`~diffractive.asbuilt.AsBuilt.combined`), and ``freeze_layers``
(:func:`freeze_layers`) keeps the plates already printed as they are, so only the plates to
be re-printed change.
"""
from __future__ import annotations

import numpy as np

from diffractive.asbuilt import build
from diffractive.budget import ErrorBudget
from diffractive.errors import D2NNError

from .bridge import from_xp, stack_intensity, to_xp


#: Draws ``VALIDATION_STEP + i`` are the validation stacks (no training run takes 2**40 steps).
VALIDATION_STEP = 2 ** 40


class Vaccination:
    """Draws one as-built stack per training step and runs the model's layers through it.

    ``design``: the model's design (geometry, detectors, material, printer step);
    ``budget``: an :class:`~diffractive.budget.ErrorBudget`; ``oversample``: simulation cells
    per printed pixel; ``seed``: the draws' seed.
    """

    def __init__(self, design, budget: ErrorBudget | None, oversample: int = 1, seed: int = 0, workers=None,
                 known=None):
        self.design = design
        self.budget = None if budget is None or budget.is_empty else budget
        self.known = known  # an AsBuilt every stack starts from (None: the designed stack)
        if self.budget is None and self.known is None:
            raise D2NNError("Vaccination needs a budget with errors or a known as-built stack")
        self.oversample = int(oversample)
        self.seed = int(seed)
        self.workers = workers
        self._engine = None
        self.last = None  # the last stack drawn (for logs and tests)

    def stack(self, step: int):
        """The :class:`~diffractive.asbuilt.BuiltStack` of training step ``step``."""
        if self.budget is None:  # the known stack, the same every step: built once
            if self.last is None:
                self.last = build(self.design, self.known, oversample=self.oversample)
                self._engine = self.last.engine()
            return self.last
        rng = np.random.default_rng([self.seed, int(step)])
        ab = self.budget.draw(rng, self.design.n_layers, self.design.fabrication.z_step_m)
        if self.known is not None:
            ab = self.known.combined(ab)
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
        the trainer measures the validation accuracy as built, to pick the best epoch (one,
        the known stack, without a budget)."""
        return [self.stack(VALIDATION_STEP + i) for i in range(1 if self.budget is None else n)]

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


def freeze_layers(model, layers) -> None:
    """Keep the layers ``layers`` (1 = nearest the input) of ``model`` as they are: a gradient
    hook zeroes their rows of the phase (and amplitude) gradient. With a zero gradient from the
    first step, Adam's moments for those pixels stay zero and so does their update: the frozen
    phases come out bit for bit as they went in (tests/test_redesign.py)."""
    import torch  # noqa: PLC0415

    rows = torch.zeros(model.phase.shape[0], dtype=torch.bool)
    rows[[int(v) - 1 for v in layers]] = True
    params = [model.phase] + ([model.amp_logit] if getattr(model, "modulation", "phase") == "complex" else [])

    def hook(g):
        return g.masked_fill(rows.to(g.device)[:, None, None], 0.0)
    for p in params:
        p.register_hook(hook)


def vaccination_from_config(design, cfg):
    """The :class:`Vaccination` that ``[robustness]`` asks for, or ``None`` for plain training."""
    r = cfg.robustness
    budget = r.load_budget(cfg) if r.budget is not None else None
    known = r.load_as_built(cfg, design.n_layers)
    if (budget is None or budget.is_empty) and known is None:
        return None
    return Vaccination(design, budget, r.oversample, cfg.trainer.seed if r.seed is None else r.seed,
                       cfg.trainer.workers, known=known)


__all__ = ["Vaccination", "freeze_layers", "hold_block_constant", "smoothness_penalty", "vaccination_from_config"]
