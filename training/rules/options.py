"""Options of the alternative learning rules: one dataclass per rule, torch-free.

:mod:`training.config` validates the TOML sub-table ``[trainer.<rule>]`` against these
dataclasses (unknown keys, wrong types and non-positive values of the keys listed in
:data:`POSITIVE` are refused with the file, table and key named). docs/rules.md describes
every option. This module imports nothing but the standard library, so the config stays
importable without torch.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

# every zeroth-order rule reaches the optics only through a measure() callable:
# "simulated" (diffractive.stack.forward + detector readout) or "package.module:factory",
# factory(design, cfg) -> measure(phases, images) -> powers.  See docs/rules.md.


class _Options:
    """Base: ``validate(cfg)`` returns a one-sentence problem or ``None`` (config calls it)."""

    rule = ""
    phase_only = True

    def validate(self, cfg=None) -> typing.Optional[str]:
        problem = validate_options(self.rule, self)
        if problem is None and cfg is not None:
            if self.phase_only and cfg.model.modulation != "phase":
                problem = (f"rule {self.rule!r} trains phase-only layers; set [model] modulation = \"phase\" "
                           f"(got {cfg.model.modulation!r})")
            elif self.rule == "pat":
                L = cfg.geometry.n_layers
                if self.shift_px is not None and len(self.shift_px) != L:
                    problem = f"'shift_px' must hold n_layers = {L} [dy, dx] pairs, got {len(self.shift_px)}"
                elif self.distance_error_m is not None and len(self.distance_error_m) != L + 1:
                    problem = (f"'distance_error_m' must hold n_layers + 1 = {L + 1} values, "
                               f"got {len(self.distance_error_m)}")
        return problem


@dataclass
class ESOptions(_Options):
    """Evolution strategies (Salimans et al. 2017)."""

    rule = "es"

    pairs: int = 16                    # antithetic pairs per step (population = 2 * pairs)
    sigma: float = 0.1                 # perturbation std, radians (in superpixel space)
    shaping: str = "centered_rank"     # fitness shaping: "centered_rank" or "none" (raw losses)
    block: int = 1                     # superpixel size: one parameter per block x block pixels
    beta1: float = 0.9                 # Adam
    beta2: float = 0.999
    eps: float = 1e-8
    measure: str = "simulated"


@dataclass
class SPSAOptions(_Options):
    """Simultaneous perturbation stochastic approximation (Spall 1992)."""

    rule = "spsa"

    c: float = 0.1                     # perturbation size at step 0, radians
    gamma: float = 0.101               # c_k = c / (k + 1)^gamma
    alpha: float = 0.602               # sgd gains a_k = learning_rate / (k + 1 + stability)^alpha
    stability: float = 0.0             # Spall's A (sgd only)
    averages: int = 1                  # independent +/- pairs averaged per step
    optimizer: str = "adam"            # "adam" (trainer.learning_rate, schedule) or "sgd" (Spall gains)
    block: int = 1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    measure: str = "simulated"


@dataclass
class GAOptions(_Options):
    """Genetic algorithm with seed-encoded genomes (Such et al. 2017)."""

    rule = "ga"

    population: int = 32               # individuals per generation (the elite included)
    parents: int = 8                   # truncation: the best `parents` breed
    sigma: float = 0.1                 # mutation std, radians
    block: int = 1
    measure: str = "simulated"


@dataclass
class DFAOptions(_Options):
    """Direct feedback alignment on fields."""

    rule = "dfa"

    feedback_scale: float = 1.0        # std of the fixed random complex feedback fields B_l
    feedback_seed: int = 12345


@dataclass
class HSICOptions(_Options):
    """HSIC bottleneck (Ma, Lewis & Kleijn 2019), layer-local."""

    rule = "hsic"

    beta: float = 20.0                 # objective nHSIC(Z, X) - beta * nHSIC(Z, Y)
    pool: int = 4                      # Z_l = intensity at plane l+1, average-pooled pool x pool
    sigma: float = 1.0                 # Gaussian kernel width, times the median pairwise distance
    last_layer: str = "loss"           # "loss": last layer trained on the detector loss (one hop); "hsic"
    hidden_layers: str = "hsic"        # "hsic", or "frozen" (ablation: only the last layer learns)


@dataclass
class PATOptions(_Options):
    """Physics-aware training (Wright et al. 2022) against a deliberately mismatched "physics"."""

    rule = "pat"

    shift_px: typing.Optional[list] = None        # per layer [dy, dx] lateral shift, pixels (fractional: exact)
    shift_std_px: float = 0.0                     # or: random shifts, N(0, std) per layer and axis
    distance_error_m: typing.Optional[list] = None  # per gap (n_layers + 1) additive errors, metres
    distance_std_m: float = 0.0                   # or: random gap errors N(0, std)
    z_step_m: typing.Optional[float] = None       # height quantisation step of the "printer" (None: none)
    absorption: bool = False                      # exp(-2 pi kappa h / lambda) of the printed height h, base included
    mismatch_seed: int = 1


class BackpropOptions:
    """End-to-end backprop (training.trainer.BackpropRule) takes no [trainer.backprop] table."""


# THE rule registry: rule name -> its options class. Filled here and nowhere else;
# training.config validates against it (as RULE_OPTIONS) and training.rules.make_rule builds
# the rule of the module training.rules.<name> (backprop: training.trainer.BackpropRule).
RULES = {"backprop": BackpropOptions, "es": ESOptions, "spsa": SPSAOptions, "ga": GAOptions, "dfa": DFAOptions,
         "hsic": HSICOptions, "pat": PATOptions}

# option values restricted to a set (checked by validate_options)
CHOICES = {("es", "shaping"): ("centered_rank", "none"), ("spsa", "optimizer"): ("adam", "sgd"),
           ("hsic", "last_layer"): ("loss", "hsic"),
           ("hsic", "hidden_layers"): ("hsic", "frozen")}
POSITIVE = {"pairs", "sigma", "block", "c", "averages", "population", "parents", "feedback_scale", "pool",
            "beta", "eps", "z_step_m"}
NON_NEGATIVE = {"gamma", "alpha", "stability", "shift_std_px", "distance_std_m"}
UNIT_OPEN = {"beta1", "beta2"}   # in [0, 1)


def validate_options(rule: str, opts) -> typing.Optional[str]:
    """A one-sentence problem with ``opts`` of ``rule`` (naming the key), or ``None``."""
    for (r, key), allowed in CHOICES.items():
        if r == rule and getattr(opts, key) not in allowed:
            return f"'{key}' must be one of {list(allowed)}, got {getattr(opts, key)!r}"
    for key in POSITIVE:
        v = getattr(opts, key, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
            return f"'{key}' must be positive, got {v!r}"
    for key in NON_NEGATIVE:
        v = getattr(opts, key, None)
        if isinstance(v, (int, float)) and v < 0:
            return f"'{key}' must be non-negative, got {v!r}"
    for key in UNIT_OPEN:
        v = getattr(opts, key, None)
        if v is not None and not (0 <= v < 1):
            return f"'{key}' must lie in [0, 1), got {v!r}"
    if rule == "ga" and opts.parents > opts.population:
        return f"'parents' ({opts.parents}) must not exceed 'population' ({opts.population})"
    if rule == "pat":
        if opts.shift_px is not None and not all(
                isinstance(s, list) and len(s) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in s) for s in opts.shift_px):
            return "'shift_px' must be a list of [dy, dx] pairs, one per layer"
        if opts.distance_error_m is not None and not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in opts.distance_error_m):
            return "'distance_error_m' must be a list of numbers, one per gap"
    if getattr(opts, "measure", "simulated") != "simulated" and ":" not in opts.measure:
        return f"'measure' must be \"simulated\" or \"package.module:factory\", got {opts.measure!r}"
    return None
