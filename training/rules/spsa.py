"""Simultaneous perturbation stochastic approximation (Spall, IEEE TAC 37, 1992).

Per step ``k``: a Rademacher direction ``delta`` (+/-1 per parameter, seeded by
``(trainer.seed, 2, k, j)``), two measurements ``L(theta +/- c_k delta)`` with
``c_k = c / (k + 1)^gamma``, and the estimate ``g = (L+ - L-) / (2 c_k) * delta``
(``1/delta = delta``), averaged over ``averages`` directions. ``E[g]`` is the gradient up to
``O(c_k^2)``. Adam (``trainer.learning_rate`` and schedule) or Spall's gains
``a_k = learning_rate / (k + 1 + stability)^alpha`` apply it. The centre is measured as
well, for the reported loss and logits: a step costs ``(2 * averages + 1) * batch``
single-image measurements.
"""
from __future__ import annotations

import numpy as np
import torch

from .common import Adam
from .zeroth_order import MeasuringRule


def rademacher(key, shape):
    return (np.random.default_rng(list(key)).integers(0, 2, size=shape, dtype=np.int8) * 2 - 1).astype(np.float32)


def spsa_gradient(loss_fn, theta, c, key, averages=1):
    """SPSA estimate of the gradient of ``loss_fn`` at ``theta`` (float32 array)."""
    g = np.zeros(theta.shape, np.float64)
    for j in range(averages):
        d = rademacher(tuple(key) + (j,), theta.shape)
        lp, lm = loss_fn(theta + np.float32(c) * d), loss_fn(theta - np.float32(c) * d)
        g += (lp - lm) / (2 * c) * d
    return (g / averages).astype(np.float32)


class SPSARule(MeasuringRule):
    name = "spsa"

    def __init__(self, model, cfg, steps_per_epoch):
        super().__init__(model, cfg, steps_per_epoch)
        o = self.opts
        self.adam = Adam(self.sp.theta_shape, o.beta1, o.beta2, o.eps) if o.optimizer == "adam" else None

    @property
    def learning_rate(self):
        o, k = self.opts, self.step_count
        if o.optimizer == "sgd":
            return self.cfg.trainer.learning_rate / (k + 1 + o.stability) ** o.alpha
        return super().learning_rate

    def step(self, images, labels):
        x, y = self._batch(images, labels)
        theta = self.theta()
        o, k = self.opts, self.step_count
        loss, logits = self.loss_of(theta, x, y)
        self._check(loss)
        c_k = o.c / (k + 1) ** o.gamma
        g = spsa_gradient(lambda th: self.loss_of(th, x, y)[0], theta, c_k, (self.seed, self.tag, k), o.averages)
        self.evaluations += (2 * o.averages + 1) * len(x)
        self._check(loss, g)
        if self.adam is not None:
            self.adam.step(theta, g, self.learning_rate)
        else:
            theta -= np.float32(self.learning_rate) * g
        self._write(theta)
        self.step_count += 1
        return loss, torch.from_numpy(logits).to(self.device)

    def state_dict(self):
        return {**self._base_state(), "adam": None if self.adam is None else self.adam.state_dict()}

    def load_state_dict(self, s):
        self._load_base_state(s)
        if self.adam is not None:
            self.adam.load_state_dict(s["adam"])


def make(model, cfg, steps_per_epoch):
    return SPSARule(model, cfg, steps_per_epoch)
