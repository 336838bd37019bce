"""Genetic algorithm with seed-encoded genomes (Such et al. 2017, arXiv:1712.06567).

A genome is the initial parameters ``theta_0`` (from ``trainer.seed``, as every design's
initial phases) plus a list of mutation seeds; the parameters are

    theta = (((theta_0 + sigma * eps(s_1)) + sigma * eps(s_2)) + ...)     (float32)

with ``eps(s)`` the standard normal vector of seed ``s`` (:func:`mutation`), so
:func:`replay` rebuilds any individual bit for bit from its seeds.

One generation per batch: the population is the elite (the best individual of the last
generation, unchanged) and ``population - 1`` children, each a copy of a parent drawn
uniformly from the ``parents`` best of the last generation (truncation selection) plus one
mutation. Every member is measured on the batch; the best ``parents`` become the next
parents and the best of all the new elite, which ``model.phase`` holds. The loss and
logits reported for a step are the old elite's on the batch (the model before the update).
A generation costs ``population * batch`` single-image measurements.

Across processes (``torchrun``) member ``j`` is measured by rank ``j % world``; only the
losses travel, every rank rebuilds the new parents from their seeds.
"""
from __future__ import annotations

import numpy as np
import torch

from .common import gaussian
from .zeroth_order import MeasuringRule

SEED_RANGE = 2 ** 31 - 1


def mutation(seed, shape):
    """The mutation direction of seed ``seed``: standard normal float32."""
    return gaussian((3, int(seed)), shape)


def mutate(theta, seed, sigma):
    """``theta + sigma * eps(seed)`` in float32 (the one operation replay repeats)."""
    return theta + np.float32(sigma) * mutation(seed, theta.shape)


def replay(theta0, seeds, sigma):
    """Parameters of the genome ``(theta0, seeds)``: the mutations applied in order."""
    theta = np.asarray(theta0, dtype=np.float32).copy()
    for s in seeds:
        theta = mutate(theta, s, sigma)
    return theta


class GARule(MeasuringRule):
    name = "ga"

    def __init__(self, model, cfg, steps_per_epoch):
        super().__init__(model, cfg, steps_per_epoch, distributed=True)
        self.theta0 = self.theta()
        self.parents = [self.theta0.copy()]      # parameters of the parents, best first
        self.genomes = [[]]                      # their mutation seeds

    @property
    def learning_rate(self):
        return self.opts.sigma

    def _children(self, generation):
        """(parent index, mutation seed) of members 1 .. population-1 of a generation."""
        rng = np.random.default_rng([self.seed, self.tag, generation])
        n = self.opts.population - 1
        return rng.integers(0, len(self.parents), size=n), rng.integers(1, SEED_RANGE, size=n)

    def step(self, images, labels):
        x, y = self._batch(images, labels)
        o = self.opts
        N, B, C = o.population, len(x), self.score_matrix.shape[1]
        pidx, seeds = self._children(self.step_count)
        buf = np.zeros(N + B * C)
        for j in range(N):
            if not self.comm.mine(j):
                continue
            theta = self.parents[0] if j == 0 else mutate(self.parents[pidx[j - 1]], seeds[j - 1], o.sigma)
            loss, logits = self.loss_of(theta, x, y)
            buf[j] = loss
            if j == 0:
                buf[N:] = logits.ravel()
        buf = self.comm.sum(buf)
        self.evaluations += N * B
        losses = buf[:N]
        loss, logits = float(losses[0]), buf[N:].reshape(B, C)
        self._check(loss)
        order = np.argsort(losses, kind="stable")[:o.parents]
        parents, genomes = [], []
        for j in order:
            if j == 0:
                parents.append(self.parents[0])
                genomes.append(list(self.genomes[0]))
            else:
                p, s = int(pidx[j - 1]), int(seeds[j - 1])
                parents.append(mutate(self.parents[p], s, o.sigma))
                genomes.append(self.genomes[p] + [s])
        self.parents, self.genomes = parents, genomes
        self._write(self.parents[0])
        self.step_count += 1
        return loss, torch.from_numpy(logits).to(self.device)

    @property
    def elite_genome(self):
        return list(self.genomes[0])

    def state_dict(self):
        return {**self._base_state(), "theta0": self.theta0.copy(), "parents": np.stack(self.parents),
                "genomes": [list(g) for g in self.genomes]}

    GROWING_STATE = ("parents",)  # one parent at the start, up to ``parents`` after a generation

    def load_state_dict(self, s):
        if not 1 <= len(s["parents"]) <= self.opts.parents:
            from diffractive.errors import D2NNError  # noqa: PLC0415

            raise D2NNError(f"checkpoint field 'rule.parents' holds {len(s['parents'])} parents; "
                                f"this run keeps 1 to {self.opts.parents}")
        self._load_base_state(s)
        self.theta0 = np.asarray(s["theta0"], dtype=np.float32).copy()
        self.parents = [np.asarray(p, dtype=np.float32).copy() for p in s["parents"]]
        self.genomes = [list(g) for g in s["genomes"]]


def make(model, cfg, steps_per_epoch):
    return GARule(model, cfg, steps_per_epoch)
