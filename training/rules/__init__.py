"""Learning rules other than end-to-end backprop (docs/rules.md).

========  =========================================================  ======================
rule      module                                                     reaches the optics by
========  =========================================================  ======================
``es``    :mod:`training.rules.es` — evolution strategies             ``measure()`` only
``spsa``  :mod:`training.rules.spsa` — SPSA                           ``measure()`` only
``ga``    :mod:`training.rules.ga` — genetic algorithm, seed genomes  ``measure()`` only
``dfa``   :mod:`training.rules.dfa` — direct feedback alignment       fields at each layer
``hsic``  :mod:`training.rules.hsic` — HSIC bottleneck, layer-local   intensities at each plane
``pat``   :mod:`training.rules.pat` — physics-aware training          "physical" forward,
                                                                     digital-twin backward
========  =========================================================  ======================

Every rule object offers ``step(images, labels) -> (loss, logits)`` (updating
``model.phase`` in place), ``state_dict()`` / ``load_state_dict()`` for exact resume and
``learning_rate``; ``evaluations`` counts single-image forward simulations (or
measurements) spent so far. :class:`training.trainer.Trainer` owns everything else.

This package's ``__init__`` and :mod:`training.rules.options` import no torch (the config
imports them); the rule modules do.
"""
from __future__ import annotations

from diffractive.errors import D2NNError

# the one registry of rule names (training.config validates against it)
from .options import RULES


def make_rule(model, cfg, steps_per_epoch):
    """The rule object ``cfg.trainer.rule`` names, bound to ``model``."""
    import importlib  # noqa: PLC0415

    name = cfg.trainer.rule
    if name not in RULES or name == "backprop":
        raise D2NNError(f"unknown learning rule {name!r}; rules: {', '.join(RULES)}")
    module = importlib.import_module(f"{__name__}.{name}")   # rule <name> lives in training/rules/<name>.py
    return module.make(model, cfg, steps_per_epoch)

