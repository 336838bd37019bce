"""Evolution strategies (Salimans, Ho, Chen, Sidor & Sutskever 2017, arXiv:1703.03864).

Per step, on one batch: ``pairs`` antithetic perturbations ``theta +/- sigma * eps_i``
(``eps_i ~ N(0, I)`` generated from the seed ``(trainer.seed, 1, step, i)``) are measured,
their losses shaped into centred ranks (or used raw), and

    g = sum_i (w_i+ - w_i-) eps_i / (2 * pairs * sigma)

is handed to Adam as the gradient of the loss (for ``shaping = "none"``, ``g`` estimates
the gradient of the Gaussian-smoothed loss). The centre ``theta`` is measured too, for
the loss and logits the trainer reports. One step costs ``(2 * pairs + 1) * batch``
single-image measurements.

Across processes (``torchrun``) pair ``i`` is measured by rank ``i % world`` and only the
losses travel (:mod:`training.rules.distributed`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from .common import Adam, centered_ranks, gaussian
from .zeroth_order import MeasuringRule


class ESEstimate(NamedTuple):
    """What :func:`es_gradient` returns (``[0]`` is the gradient)."""

    gradient: np.ndarray             # float32, theta's shape
    losses: np.ndarray               # (pairs, 2) float64: the losses of theta + and - sigma * eps_i
    centre: Optional[np.ndarray]     # the ``centre_size`` values of ``centre(theta)``, or None


def es_gradient(loss_fn, theta, sigma, pairs, key, shaping="centered_rank", comm=None, centre=None,
                centre_size=0) -> ESEstimate:
    """Antithetic ES estimate of the gradient of ``loss_fn`` at ``theta``: the estimator of
    :class:`ESRule` (its ``step`` calls this).

    ``loss_fn(theta) -> float``; ``key`` (tuple of ints) seeds the perturbations
    (``eps_i = gaussian(key + (i,))``). ``centre(theta)``, if given, returns ``centre_size``
    float64 values (the rule: the centre's loss and logits); it is population member
    ``pairs``. With ``comm`` (:class:`~training.rules.distributed.Comm`) member ``j`` is
    evaluated by the process ``comm.mine(j)`` names, and the losses and centre values travel in
    one exact sum. Returns an :class:`ESEstimate` ``(gradient, losses, centre)``.
    """
    with_centre = centre is not None
    buf = np.zeros(2 * pairs + (centre_size if with_centre else 0))
    for j in range(pairs + with_centre):
        if comm is not None and not comm.mine(j):
            continue
        if j < pairs:
            eps = gaussian(tuple(key) + (j,), theta.shape)
            buf[2 * j] = loss_fn(theta + np.float32(sigma) * eps)
            buf[2 * j + 1] = loss_fn(theta - np.float32(sigma) * eps)
        else:
            buf[2 * pairs:] = centre(theta)
    if comm is not None:
        buf = comm.sum(buf)
    losses = buf[:2 * pairs].reshape(pairs, 2)
    return ESEstimate(_combine(losses, theta.shape, sigma, key, shaping), losses,
                      buf[2 * pairs:] if with_centre else None)


def _combine(losses, shape, sigma, key, shaping):
    w = centered_ranks(losses) if shaping == "centered_rank" else np.asarray(losses, np.float64)
    coef = (w[:, 0] - w[:, 1]) / (2 * len(losses) * sigma)
    g = np.zeros(shape, np.float32)
    for i, c in enumerate(coef):
        g += np.float32(c) * gaussian(tuple(key) + (i,), shape)
    return g


class ESRule(MeasuringRule):
    name = "es"

    def __init__(self, model, cfg, steps_per_epoch):
        super().__init__(model, cfg, steps_per_epoch, distributed=True)
        o = self.opts
        self.adam = Adam(self.sp.theta_shape, o.beta1, o.beta2, o.eps)

    def step(self, images, labels):
        x, y = self._batch(images, labels)
        theta = self.theta()
        o = self.opts
        n, B, C = o.pairs, len(x), self.score_matrix.shape[1]

        def centre(th):  # the centre's loss and logits, for what the trainer reports
            loss, logits = self.loss_of(th, x, y)
            return np.concatenate([[loss], np.ravel(logits)])

        est = es_gradient(lambda th: self.loss_of(th, x, y)[0], theta, o.sigma, n,
                          (self.seed, self.tag, self.step_count), o.shaping, comm=self.comm,
                          centre=centre, centre_size=1 + B * C)
        self.evaluations += (2 * n + 1) * B
        loss, logits = float(est.centre[0]), est.centre[1:].reshape(B, C)
        self._check(loss, est.gradient)
        self.adam.step(theta, est.gradient, self.learning_rate)
        self._write(theta)
        self.step_count += 1
        return loss, torch.from_numpy(logits).to(self.device)

    def state_dict(self):
        return {**self._base_state(), "adam": self.adam.state_dict()}

    def load_state_dict(self, s):
        self._load_base_state(s)
        self.adam.load_state_dict(s["adam"])


def make(model, cfg, steps_per_epoch):
    return ESRule(model, cfg, steps_per_epoch)
