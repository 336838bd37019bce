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
quantisation) and a monochromatic source nothing here runs and training is the ordinary
training, bit for bit. A source spectrum (``[source]``) runs here too, with or without a
budget: one stack per line (:class:`Vaccination`).

**Re-design around what was printed** (issue 14): ``[robustness] as_built`` names a known
stack as built -- what ``d2nn diagnose`` fitted to the lab's measurements (its ``fit.json``).
Every step then trains through that stack (with a budget, through that stack with a fresh
draw on top: :meth:`~diffractive.asbuilt.AsBuilt.combined`), and ``freeze_layers``
(:func:`freeze_layers`) keeps the plates already printed as they are, so only the plates to
be re-printed change.
"""
from __future__ import annotations

import numpy as np

from diffractive.asbuilt import BuiltLines, build, build_lines
from diffractive.budget import ErrorBudget
from diffractive.errors import D2NNError
from diffractive.spectrum import SPEED_OF_LIGHT_M_S, readout_weights, sample_lines

from .bridge import from_xp, stack_intensity, to_xp


#: Draws ``VALIDATION_STEP + i`` are the validation stacks (no training run takes 2**40 steps).
VALIDATION_STEP = 2 ** 40


class Vaccination:
    """Draws one as-built stack per training step and runs the model's layers through it.

    ``design``: the model's design (geometry, detectors, material, printer step, source
    spectrum); ``budget``: an :class:`~diffractive.budget.ErrorBudget`; ``oversample``:
    simulation cells per printed pixel; ``seed``: the draws' seed; ``known``: an
    :class:`~diffractive.asbuilt.AsBuilt` every stack starts from.

    A design lit by a spectrum (:mod:`diffractive.spectrum`) runs one stack per line, each
    through the autograd bridge; ``sample`` lines per step (default all) drawn from
    ``numpy.random.default_rng([seed, step, 1])`` with the ``J / sample`` weight factor of
    :func:`~diffractive.spectrum.sample_lines`; ``objective`` says what the loss sees:
    ``"band"`` the band-summed powers (a pulsed or broadband source and integrating
    detectors, Luo et al., Light Sci. Appl. 8, 112 (2019)), ``"each"`` the weighted mean of
    each line's loss (a tunable or drifting CW source: the stack must classify at every line
    alone). A monochromatic design with no budget and no known stack needs none of this.
    """

    def __init__(self, design, budget: ErrorBudget | None, oversample: int = 1, seed: int = 0, workers=None,
                 known=None, sample: int | None = None, objective: str = "band", jitter: bool = False):
        self.design = design
        self.budget = None if budget is None or budget.is_empty else budget
        self.known = known  # an AsBuilt every stack starts from (None: the designed stack)
        self.spectral = not design.is_monochromatic
        if self.budget is None and self.known is None and not self.spectral:
            raise D2NNError("Vaccination needs a budget with errors, a known as-built stack or a spectrum")
        if objective not in ("band", "each"):
            raise D2NNError(f"objective must be 'band' or 'each', got {objective!r}")
        if objective == "each" and any(d.band is not None for d in design.detectors):
            raise D2NNError("objective 'each' trains every line to classify alone; detectors that read one line "
                            "(band) need objective 'band'")
        if sample is not None and sample < len(design.lines) and any(d.band is not None for d in design.detectors):
            raise D2NNError("detectors that read one line (band) need every line in every step: leave 'sample' "
                            "unset")
        self.sample = sample
        self.objective = objective
        self.jitter = bool(jitter)
        if self.jitter and (len(design.lines) < 2 or any(d.band is not None for d in design.detectors)):
            raise D2NNError("jitter moves each line within its share of the band: it needs two or more lines and "
                            "detectors that integrate over the band")
        self.oversample = int(oversample)
        self.seed = int(seed)
        self.workers = workers
        self._engine = None
        self._fixed = None  # the lines of the known or designed stack (no budget: the same every step)
        self._ideal = None
        self.last = None  # the last stack drawn (for logs and tests)

    def _build(self, ab, oversample):
        lines = build_lines(self.design, ab, oversample=oversample, engine=self._engine)
        self._engine = lines.stacks[-1].engine()
        return lines

    def lines(self, step: int, only=None, wavelengths_m=None):
        """The :class:`~diffractive.asbuilt.BuiltLines` of training step ``step``: every line of
        the stack drawn for it (one line for a monochromatic design). ``only``: ``(indices,
        factors)`` of :func:`~diffractive.spectrum.sample_lines` -- a drawn stack is then built
        at those lines alone (each line costs its transfer functions)."""
        if self.budget is None and wavelengths_m is None:  # the known (or designed) stack: built once
            if self._fixed is None:
                self._fixed = self._build(self.known, self.oversample)
            self.last = self._fixed.stacks[0]
            return self._fixed if only is None else self._fixed.subset(*only)
        if self.budget is None:
            ab = self.known
        else:
            rng = np.random.default_rng([self.seed, int(step)])
            ab = self.budget.draw(rng, self.design.n_layers, self.design.fabrication.z_step_m)
            if self.known is not None:
                ab = self.known.combined(ab)
        if only is None and wavelengths_m is not None:
            only = (np.arange(len(self.design.lines)), np.ones(len(self.design.lines)))
        if only is None:
            lines = self._build(ab, self.oversample)
        else:
            idx, factors = only
            stacks = []
            for n, j in enumerate(idx):
                lam = self.design.lines.wavelengths_m[int(j)] if wavelengths_m is None else wavelengths_m[n]
                st = build(self.design, ab, oversample=self.oversample, engine=self._engine, wavelength_m=lam)
                self._engine = st.engine()
                stacks.append(st)
            W = readout_weights(self.design.lines, self.design.detectors)
            f = np.asarray(factors, dtype=np.float64)
            lines = BuiltLines(stacks, W[np.asarray(idx, dtype=int)] * f[:, None], self.design.lines,
                               np.asarray(self.design.lines.weights)[np.asarray(idx, dtype=int)] * f)
        self.last = lines.stacks[0]
        return lines

    def stack(self, step: int):
        """The first line's :class:`~diffractive.asbuilt.BuiltStack` of training step ``step``
        (the stack itself for a monochromatic design)."""
        return self.lines(step).stacks[0]

    def ideal_lines(self):
        """The designed stack at every line, on the design grid: what the ideal (test)
        accuracy of a broadband design is measured through."""
        if self._ideal is None:
            self._ideal = build_lines(self.design, None, oversample=1)
        return self._ideal

    def step_lines(self, step: int):
        """The lines training step ``step`` runs: its drawn stack at this step's sample of lines
        (all of them without ``sample``), weights times the sampling factor."""
        J = len(self.design.lines)
        only = None
        if self.sample is not None and self.sample < J:
            only = sample_lines(self.design.lines, self.sample, np.random.default_rng([self.seed, int(step), 1]))
        if not self.jitter:
            return self.lines(step, only)
        idx = np.arange(J) if only is None else only[0]
        f = jittered_frequencies(self.design.lines, idx, np.random.default_rng([self.seed, int(step), 2]))
        return self.lines(step, only, wavelengths_m=[SPEED_OF_LIGHT_M_S / v for v in f])

    def powers(self, model, images, step: int):
        """``(powers (B, K), intensity (B, ny*k, nx*k))`` of ``images`` through this step's stack,
        differentiable in the model's parameters (band-summed over the step's lines)."""
        return self.powers_through(model, images, self.step_lines(step))

    def line_powers(self, model, images, step: int):
        """``[(weight, powers (B, K))]``, one per line of this step (objective ``"each"``):
        the line's weight (with the sampling factor) and its detector powers alone."""
        lines = self.step_lines(step)
        out = []
        for j, st in enumerate(lines.stacks):
            p, _ = self._through(model, images, st)
            out.append((float(lines.line_weights[j]), p))
        return out

    def validation_stacks(self, n: int) -> list:
        """``n`` fixed stacks (the same every epoch and every run with this seed) on which
        the trainer measures the validation accuracy as built, to pick the best epoch (one,
        the known or designed stack, without a budget). Each is a
        :class:`~diffractive.asbuilt.BuiltLines` (every line)."""
        return [self.lines(VALIDATION_STEP + i) for i in range(1 if self.budget is None else n)]

    def _through(self, model, images, stack):
        return through_stack(model, images, stack, self.workers)

    def powers_through(self, model, images, stack):
        """As :meth:`powers`, through a given :class:`~diffractive.asbuilt.BuiltStack` or
        :class:`~diffractive.asbuilt.BuiltLines` (:func:`through_stack`)."""
        return through_stack(model, images, stack, self.workers)


def jittered_frequencies(spectrum, indices, rng) -> np.ndarray:
    """Each line ``indices[i]`` moved to a uniformly random frequency within its share of the
    band: from halfway to the line below to halfway to the line above, the end lines' shares
    stopping at the band's ends (so the band is covered exactly, its two ends by half shares).
    Trained this way, a stack sees every frequency of the band, not only the lines: a deep
    stack's response changes within a few GHz (benchmarks/README.md, "Broadband")."""
    f = np.asarray(spectrum.frequencies_hz, dtype=np.float64)
    order = np.argsort(f)
    fs = f[order]
    mid = 0.5 * (fs[1:] + fs[:-1])
    lo_s = np.concatenate([[fs[0]], mid])
    hi_s = np.concatenate([mid, [fs[-1]]])
    lo, hi = np.empty_like(f), np.empty_like(f)
    lo[order], hi[order] = lo_s, hi_s
    idx = np.asarray(indices, dtype=int)
    u = rng.random(len(idx))
    return lo[idx] + u * (hi[idx] - lo[idx])


def band_sum(lines, parts):
    """``(powers, intensity)`` summed over the lines of a :class:`~diffractive.asbuilt.BuiltLines`
    from each line's own ``parts[j] = (powers_j, intensity_j)``: ``sum_j W[j] * P_j`` and
    ``sum_j w_j I_j``."""
    import torch  # noqa: PLC0415

    powers = intensity = None
    for j, (p, i) in enumerate(parts):
        p = p * torch.as_tensor(lines.weights[j], dtype=p.dtype, device=p.device)
        i = i * float(lines.line_weights[j])
        powers, intensity = (p, i) if powers is None else (powers + p, intensity + i)
    return powers, intensity


def through_stack(model, images, stack, workers=None):
    """``(powers (B, K), intensity)`` of ``images`` through the model's layers in ``stack``,
    differentiable in the model's parameters.

    ``stack``: a :class:`~diffractive.asbuilt.BuiltStack` (one line), or a
    :class:`~diffractive.asbuilt.BuiltLines`: powers ``sum_j W[j] * P_j`` and intensity
    ``sum_j w_j I_j`` over its lines (:mod:`diffractive.spectrum`); one line of weight 1 is
    the single stack's path exactly.
    """
    if isinstance(stack, BuiltLines):
        if len(stack.stacks) == 1 and np.all(stack.weights == 1.0) and stack.line_weights[0] == 1.0:
            return through_stack(model, images, stack.stacks[0], workers)
        return band_sum(stack, [through_stack(model, images, st, workers) for st in stack.stacks])
    import torch  # noqa: PLC0415

    t = stack.transmissions(phases=model.phase, amplitudes=model.amplitudes())
    fields = from_xp(stack.input_fields(to_xp(images.float())), images.device)
    dtype = np.complex128 if t.dtype == torch.complex128 else np.complex64  # float64 phases: a float64 check
    intensity = stack_intensity(t, fields, stack.geometry, workers, engine=stack.engine(dtype))
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
    r, sp = cfg.robustness, cfg.source_spectrum
    budget = r.load_budget(cfg) if r.budget is not None else None
    known = r.load_as_built(cfg, design.n_layers)
    if (budget is None or budget.is_empty) and known is None and design.is_monochromatic:
        return None
    return Vaccination(design, budget, r.oversample, cfg.trainer.seed if r.seed is None else r.seed,
                       cfg.trainer.workers, known=known, sample=sp.sample, objective=sp.objective, jitter=sp.jitter)


__all__ = ["Vaccination", "band_sum", "through_stack", "freeze_layers", "hold_block_constant", "smoothness_penalty", "vaccination_from_config"]
