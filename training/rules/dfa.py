"""Direct feedback alignment on fields (after Nøkland 2016, applied to the optical stack).

Backprop's phase update of layer ``l`` is ``-2 Im(conj(A_l) * v_l)`` summed over the batch,
with ``A_l = dL/dv_l*`` the adjoint field after the layer (:mod:`training.rules.fields`).
DFA replaces ``A_l`` by ``B_l e``: ``e`` (B, K) is the output error — the gradient of the
loss with respect to the K detector powers — and ``B_l`` (K fields of the layer's shape)
is a fixed random complex Gaussian projection drawn once from ``feedback_seed``:

    update_l = -2 Im( sum_b conj(sum_k e_bk B_lk) * v_l,b )

No field travels backwards through the optics; every layer needs only its own output
field ``v_l`` and the broadcast error. The update goes to Adam (``trainer.learning_rate``,
schedule) like a gradient. :meth:`DFARule.alignment` measures, per layer, the angle
between the DFA update and the true gradient on a batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from diffractive.stack import forward as stack_forward

from ..bridge import to_xp
from ..model import detector_loss
from ..trainer import BackpropRule, TrainingError, check_finite
from .fields import after_masks, phase_gradient


def dfa_update(v, feedback):
    """``-2 Im(sum_b conj(feedback) * v)`` per layer; both (L, B, ny, nx)."""
    return phase_gradient(v, feedback)


def random_feedback(n_layers, n_outputs, shape, seed, scale=1.0):
    """Fixed complex Gaussian feedback fields ``B`` (L, K, ny, nx), E|B|^2 = scale^2."""
    rng = np.random.default_rng(seed)
    size = (n_layers, n_outputs) + tuple(shape)
    B = rng.standard_normal(size, dtype=np.float32) + 1j * rng.standard_normal(size, dtype=np.float32)
    return (B * np.float32(scale / math.sqrt(2))).astype(np.complex64)


class DFARule(BackpropRule):
    """Adam and the schedule come from :class:`~training.trainer.BackpropRule`; the update from DFA."""

    name = "dfa"

    def __init__(self, model, cfg, steps_per_epoch):
        super().__init__(model, cfg, steps_per_epoch)
        if model.phase.device.type != "cpu":
            raise TrainingError("rule 'dfa' runs on the CPU (its layer-local algebra is NumPy); train with device='cpu'")
        o = cfg.trainer.options
        self.B = random_feedback(model.phase.shape[0], model.masks.shape[0], model.phase.shape[1:],
                                 o.feedback_seed, o.feedback_scale)

    def _forward(self, images, labels):
        m = self.model
        fields = m.encode(images)
        t = m.transmissions().detach()
        saved = stack_forward(m.geometry, to_xp(t), to_xp(fields), keep_arrivals=True, workers=m.workers)
        intensity = torch.from_numpy(saved.output.real ** 2 + saved.output.imag ** 2).to(images.device)
        powers = m.readout(intensity).detach().requires_grad_()
        loss, logits = detector_loss(powers, intensity, labels, m.score_matrix, self.cfg.trainer.loss,
                                     self.cfg.trainer.temperature)
        loss.backward()
        self.evaluations += len(images)
        return saved, powers.grad.detach().cpu().numpy(), loss, logits

    def feedback(self, e):
        """``B_l e`` for every layer and sample: (L, B, ny, nx)."""
        return np.einsum("bk,lkyx->lbyx", e.astype(np.complex64), self.B)

    def update(self, images, labels):
        """``(update (L, ny, nx), loss, logits, saved, e)`` on a batch, parameters unchanged."""
        saved, e, loss, logits = self._forward(images, labels)
        return dfa_update(after_masks(saved), self.feedback(e)), loss, logits, saved, e

    def step(self, images, labels):
        upd, loss, logits, _, _ = self.update(images, labels)
        check_finite(loss, self.cfg.trainer.max_loss)
        if not np.all(np.isfinite(upd)):
            raise TrainingError("the DFA update holds NaN or infinite values; lower trainer.learning_rate")
        self.optimizer.zero_grad(set_to_none=True)
        self.model.phase.grad = torch.from_numpy(upd).to(self.model.phase.device)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), logits.detach()

    def alignment(self, images, labels):
        """Per layer: angle (degrees) between the DFA update and the true gradient on this batch."""
        upd = self.update(images, labels)[0]
        self.model.phase.grad = None
        loss, _ = self.loss(images, labels)
        grad = torch.autograd.grad(loss, self.model.phase)[0].cpu().numpy()
        out = []
        for l in range(len(upd)):
            c = float(np.sum(upd[l].astype(np.float64) * grad[l]) /
                      max(1e-300, np.linalg.norm(upd[l]) * np.linalg.norm(grad[l])))
            out.append(math.degrees(math.acos(max(-1.0, min(1.0, c)))))
        return out

def make(model, cfg, steps_per_epoch):
    return DFARule(model, cfg, steps_per_epoch)
