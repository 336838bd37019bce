"""What each ``[trainer] loss`` means, defined once for every learning rule.

Both losses see the detector powers only, never the rest of the output plane: that is all a
lab measures, so the rules that train through measurements (ES, SPSA, GA) and the backprop
trainer optimise the same objective.

``cross_entropy``
    Softmax cross-entropy on the class scores (signed sums of each class's detector powers,
    ``powers @ score_matrix``) divided by ``temperature * (total power on the detectors)``.
``mse`` (after Lin et al. 2018)
    Mean over samples and detectors of ``(share_k - target_k)**2``: ``share_k`` is detector
    ``k``'s share of the power on the detectors (:func:`detector_shares`), ``target_k`` is 1
    on the true class's positive detectors and 0 elsewhere. The logits reported with it are
    the raw class scores.

:func:`mse_loss` is array-generic: it takes NumPy arrays (the measuring rules, in float64)
or torch tensors (the backprop trainer, differentiable) with the same expression, so the two
cannot drift. This module imports no torch.
"""
from __future__ import annotations

LOSSES = ("cross_entropy", "mse")


def detector_shares(powers):
    """Each detector's share of the power on the detectors: ``powers / sum_k powers`` (B, K).

    ``powers``: (B, K) non-negative, a NumPy array or a torch tensor (the result is the same
    kind); a sample with no power on any detector divides by 1e-20 instead of 0."""
    return powers / powers.sum(axis=1, keepdims=True).clip(min=1e-20)


def mse_target(score_matrix, labels):
    """One-hot targets (B, K): 1.0 on the positive detectors of each sample's class.

    ``score_matrix``: (K, C) (+1 / -1 / 0, :func:`diffractive.detectors.score_matrix`);
    ``labels``: int (B,). Same array kind and float dtype as ``score_matrix``."""
    return (score_matrix[:, labels].T > 0) * 1.0


def mse_loss(powers, labels, score_matrix):
    """The ``mse`` loss (a scalar of the input's kind) of detector powers (B, K) for ``labels`` (B,)."""
    return ((detector_shares(powers) - mse_target(score_matrix, labels)) ** 2).mean()
