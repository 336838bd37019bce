"""HSIC bottleneck (Ma, Lewis & Kleijn, AAAI 2020, arXiv:1908.01580), layer-local.

Layer ``l`` (0-based) is judged by the intensity it produces one hop downstream, at the
next layer (or, for the last layer, at the output plane) — the intensity right after a
phase mask equals the one arriving at it, so it cannot depend on that mask. ``Z_l`` is that
intensity average-pooled ``pool x pool`` and normalised to unit sum per image. Layer ``l``
minimises

    nHSIC(Z_l, X) - beta * nHSIC(Z_l, Y)

with X the input images and Y the one-hot labels, and receives *only the gradient of its own
objective with respect to its own phases*: the adjoint field is taken one hop back from the
plane where ``Z_l`` lives (:mod:`training.rules.fields`); no error crosses another layer.

``nHSIC(A, B) = <HKH, HLH>_F / (||HKH||_F ||HLH||_F)`` with ``H = I - 11^T/m`` (the normalised
HSIC, also known as centred kernel alignment), a Gaussian kernel on X and Z of width
``sigma`` times the median pairwise distance in the batch (held fixed when differentiating)
and the linear kernel ``YY^T`` on the labels. ``nHSIC(Z, Z) = 1``.

As in the paper, the classifier on top is trained on the task loss: with ``last_layer =
"loss"`` (default) the last layer minimises the detector loss, with its gradient taken one
hop back from the output plane (still layer-local); ``"hsic"`` gives it the HSIC objective too. ``hidden_layers = "frozen"`` is the ablation that
trains nothing but the last layer (on the loss), to tell what the HSIC layers add.
"""
from __future__ import annotations

import numpy as np
import torch

from diffractive.stack import forward as stack_forward

from ..bridge import to_xp
from ..model import detector_loss
from ..trainer import BackpropRule, TrainingError, check_finite
from .fields import hop_adjoint, phase_gradient


def centred(K):
    return K - K.mean(dim=0, keepdim=True) - K.mean(dim=1, keepdim=True) + K.mean()


def gaussian_kernel(Z, sigma=1.0):
    """Gaussian kernel of the rows of ``Z`` (m, d); width ``sigma`` x median pairwise distance."""
    sq = (Z * Z).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2 * (Z @ Z.T)).clamp_min(0)
    m = Z.shape[0]
    off = d2.detach()[~torch.eye(m, dtype=torch.bool, device=Z.device)]
    s2 = (sigma ** 2) * off.median().clamp_min(1e-30) if m > 1 else torch.ones((), dtype=Z.dtype)
    return torch.exp(-d2 / (2 * s2))


def label_kernel(labels, n_classes):
    Y = torch.nn.functional.one_hot(labels, n_classes).to(torch.float64)
    return Y @ Y.T


def nhsic(K, L):
    """Normalised HSIC of two kernel matrices (m, m)."""
    Kc, Lc = centred(K), centred(L)
    return (Kc * Lc).sum() / torch.sqrt((Kc * Kc).sum() * (Lc * Lc).sum()).clamp_min(1e-300)


def pool_intensity(I, pool):
    """(B, ny, nx) -> (B, d): average pooling, normalised to unit sum per image."""
    Z = torch.nn.functional.avg_pool2d(I[:, None], pool, ceil_mode=True)[:, 0].reshape(I.shape[0], -1)
    return Z / Z.sum(dim=1, keepdim=True).clamp_min(1e-30)


class HSICRule(BackpropRule):
    """Adam and the schedule come from :class:`~training.trainer.BackpropRule`."""

    name = "hsic"

    def __init__(self, model, cfg, steps_per_epoch):
        super().__init__(model, cfg, steps_per_epoch)
        if model.phase.device.type != "cpu":
            raise TrainingError("rule 'hsic' runs on the CPU (its layer-local algebra is NumPy); train with device='cpu'")
        self.last_nhsic = None

    def planes(self, images):
        """Forward once: ``(saved, [w_l])`` with ``w_l`` the field one hop after layer ``l``."""
        m = self.model
        saved = stack_forward(m.geometry, to_xp(m.transmissions().detach()), to_xp(m.encode(images)),
                              keep_arrivals=True, workers=m.workers)
        L = m.geometry.n_layers
        return saved, [saved.arrivals[l + 1] if l + 1 < L else saved.output for l in range(L)]

    def layer_nhsic(self, images, labels):
        """Per layer ``(nHSIC(Z_l, X), nHSIC(Z_l, Y))`` on a batch (no update)."""
        o = self.cfg.trainer.options
        _, planes = self.planes(images)
        X = gaussian_kernel(images.reshape(len(images), -1).to(torch.float64).cpu(), o.sigma)
        Ly = label_kernel(labels.cpu(), self.model.design.n_classes)
        out = []
        for w in planes:
            K = gaussian_kernel(pool_intensity(torch.from_numpy((w.real ** 2 + w.imag ** 2).astype(np.float64)),
                                               o.pool), o.sigma)
            out.append((float(nhsic(K, X)), float(nhsic(K, Ly))))
        return out

    def gradients(self, images, labels):
        """``(grad (L, ny, nx), loss, logits, per-layer (nHSIC X, nHSIC Y))``; parameters unchanged."""
        m, o, tc = self.model, self.cfg.trainer.options, self.cfg.trainer
        L = m.geometry.n_layers
        saved, planes = self.planes(images)
        self.evaluations += len(images)
        X = gaussian_kernel(images.reshape(len(images), -1).to(torch.float64).cpu(), o.sigma)
        Ly = label_kernel(labels.cpu(), m.design.n_classes)
        # the detector loss (reported; the last layer's objective with last_layer = "loss")
        out = saved.output
        I_out = torch.from_numpy(out.real ** 2 + out.imag ** 2).requires_grad_()
        loss, logits = detector_loss(m.readout(I_out), I_out, labels.cpu(), m.score_matrix.cpu(), tc.loss,
                                     tc.temperature)
        dI_loss = torch.autograd.grad(loss, I_out)[0].numpy()
        grads = np.zeros(tuple(m.phase.shape), np.float32)
        stats = []
        for l, w in enumerate(planes):
            I = torch.from_numpy((w.real ** 2 + w.imag ** 2).astype(np.float64)).requires_grad_()
            K = gaussian_kernel(pool_intensity(I, o.pool), o.sigma)
            hx, hy = nhsic(K, X), nhsic(K, Ly)
            stats.append((float(hx.detach()), float(hy.detach())))
            if l == L - 1 and o.last_layer == "loss":
                dI = dI_loss
            elif o.hidden_layers == "frozen":  # ablation: only the last layer learns
                continue
            else:
                dI = torch.autograd.grad(hx - o.beta * hy, I)[0].numpy()
            # one hop back to just after layer l: A_l = P^H (dObj/dI * w)
            A = hop_adjoint(m.geometry, (dI * w).astype(w.dtype), l + 1, m.workers)
            grads[l] = phase_gradient(saved.arrivals[l] * saved.transmissions[l], A)
        self.last_nhsic = stats
        return grads, loss, logits.detach(), stats

    def step(self, images, labels):
        grads, loss, logits, _ = self.gradients(images, labels)
        check_finite(loss, self.cfg.trainer.max_loss)
        if not np.all(np.isfinite(grads)):
            raise TrainingError("the HSIC gradient holds NaN or infinite values; lower trainer.learning_rate")
        self.optimizer.zero_grad(set_to_none=True)
        self.model.phase.grad = torch.from_numpy(grads).to(self.model.phase.device)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), logits.to(images.device)

def make(model, cfg, steps_per_epoch):
    return HSICRule(model, cfg, steps_per_epoch)
