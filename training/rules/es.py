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

import numpy as np
import torch

from .common import Adam, centered_ranks, gaussian
from .zeroth_order import MeasuringRule


def es_gradient(loss_fn, theta, sigma, pairs, key, shaping="centered_rank", comm=None):
    """Antithetic ES estimate of the gradient of ``loss_fn`` at ``theta``.

    ``loss_fn(theta) -> float``; ``key`` (tuple of ints) seeds the perturbations
    (``eps_i = gaussian(key + (i,))``). With ``comm`` the pairs are shared out over
    processes. Returns ``(g, losses)`` with ``losses`` of shape (pairs, 2): (+, -).
    """
    losses = np.zeros((pairs, 2))
    for i in range(pairs):
        if comm is None or comm.mine(i):
            eps = gaussian(tuple(key) + (i,), theta.shape)
            losses[i] = loss_fn(theta + np.float32(sigma) * eps), loss_fn(theta - np.float32(sigma) * eps)
    if comm is not None:
        losses = comm.sum(losses.ravel()).reshape(pairs, 2)
    return _combine(losses, theta.shape, sigma, key, shaping), losses


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
        key = (self.seed, self.tag, self.step_count)
        # slots: 2n losses of the pairs, then the centre's loss and logits (member n)
        buf = np.zeros(2 * n + 1 + B * C)
        for j in range(n + 1):
            if not self.comm.mine(j):
                continue
            if j < n:
                eps = gaussian(key + (j,), theta.shape)
                buf[2 * j] = self.loss_of(theta + np.float32(o.sigma) * eps, x, y)[0]
                buf[2 * j + 1] = self.loss_of(theta - np.float32(o.sigma) * eps, x, y)[0]
            else:
                loss, logits = self.loss_of(theta, x, y)
                buf[2 * n] = loss
                buf[2 * n + 1:] = logits.ravel()
        buf = self.comm.sum(buf)
        self.evaluations += (2 * n + 1) * B
        loss, logits = float(buf[2 * n]), buf[2 * n + 1:].reshape(B, C)
        g = _combine(buf[:2 * n].reshape(n, 2), theta.shape, o.sigma, key, o.shaping)
        self._check(loss, g)
        self.adam.step(theta, g, self.learning_rate)
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
