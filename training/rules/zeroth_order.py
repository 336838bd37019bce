"""The torch-facing base of the rules that only measure (ES, SPSA, GA).

A :class:`MeasuringRule` keeps the trained parameters ``theta`` (superpixels, see
:class:`~training.rules.common.Superpixels`) in ``model.phase`` (expanded, so a
checkpoint's ``model.phase`` determines ``theta`` exactly), reaches the optics only through
``self.measure(phases, images) -> powers`` and computes the trainer's loss from the
detector powers it returns. ``self.measure`` may be replaced by any callable with that
signature (a lab's instrument) at any time, or named in the config (``measure =
"package.module:factory"``).
"""
from __future__ import annotations

import numpy as np
import torch

from .common import Superpixels, load_measure, loss_and_logits, lr_factor
from .distributed import Comm, init_from_env

TAGS = {"es": 1, "spsa": 2, "ga": 3}   # keeps the random streams of the rules apart


class MeasuringRule:
    name = ""

    def __init__(self, model, cfg, steps_per_epoch, distributed=False):
        self.model, self.cfg = model, cfg
        self.opts = cfg.trainer.options
        self.device = model.phase.device
        if distributed:
            init_from_env(self.device)
        self.comm = Comm(self.device)
        self.sp = Superpixels(tuple(model.phase.shape), self.opts.block)
        with torch.no_grad():  # make the phases an exact expansion of the parameters
            self._write(self.sp.theta(model.phase.detach().cpu().numpy()))
        self.measure = load_measure(self.opts.measure, model.design, cfg)
        self.score_matrix = model.score_matrix.detach().cpu().numpy()
        self.factor = lr_factor(cfg.trainer, steps_per_epoch)
        self.step_count = 0
        self.evaluations = 0          # single-image measurements, summed over all processes
        self.seed = int(cfg.trainer.seed)
        self.tag = TAGS[self.name]

    # -- parameters --------------------------------------------------------------------
    def theta(self) -> np.ndarray:
        return self.sp.theta(self.model.phase.detach().cpu().numpy())

    def _write(self, theta):
        with torch.no_grad():
            self.model.phase.copy_(torch.from_numpy(np.asarray(self.sp.expand(theta), dtype=np.float32)))

    # -- measuring ---------------------------------------------------------------------
    def _phases_for_measure(self, theta):
        phases = self.sp.expand(theta)
        if self.device.type == "cuda" and getattr(self.measure, "geometry", None) is not None:
            import cupy  # noqa: PLC0415

            phases = cupy.asarray(phases)
        return phases

    def loss_of(self, theta, images, labels):
        """``(loss, logits)`` of parameters ``theta`` on a batch, through ``self.measure``."""
        powers = self.measure(self._phases_for_measure(theta), images)
        return loss_and_logits(powers, labels, self.score_matrix, self.cfg.trainer.loss, self.cfg.trainer.temperature)

    @property
    def learning_rate(self):
        return self.cfg.trainer.learning_rate * self.factor(self.step_count)

    @staticmethod
    def _batch(images, labels):
        return (np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32),
                labels.detach().cpu().numpy().astype(np.int64))

    def _check(self, loss, update=None):
        from ..trainer import TrainingError, check_finite  # noqa: PLC0415

        check_finite(loss, self.cfg.trainer.max_loss)
        if update is not None and not np.all(np.isfinite(update)):
            raise TrainingError(f"the {self.name} update holds NaN or infinite values (a measurement returned "
                                "NaN?); the run stops and the last good checkpoint is kept")

    def _base_state(self):
        return {"step": self.step_count, "evaluations": self.evaluations}

    def _load_base_state(self, s):
        self.step_count = int(s["step"])
        self.evaluations = int(s["evaluations"])
