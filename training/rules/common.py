"""Shared, torch-free pieces of the zeroth-order rules (ES, SPSA, GA).

* :class:`SimulatedMeasure` — the default ``measure(phases, images) -> detector powers``:
  the simulation (:func:`diffractive.stack.forward`) plus the detector readout. A lab
  replaces it by its instrument (see :func:`load_measure` and docs/rules.md).
* :func:`loss_and_logits` — the trainer's loss computed from detector powers alone.
* :class:`Superpixels` — optional block parametrisation (one parameter per b x b pixels).
* :class:`Adam`, :func:`lr_factor`, :func:`centered_ranks`, :func:`gaussian` — the small
  numerics every zeroth-order rule needs, deterministic for bit-exact replays.
"""
from __future__ import annotations

import dataclasses
import importlib
import math

import numpy as np

from diffractive.backend import get_array_module
from diffractive.detectors import detector_masks
from diffractive.errors import D2NNError
from diffractive.simulate import input_fields
from diffractive.stack import forward

from ..losses import LOSSES, mse_loss


class SimulatedMeasure:
    """``measure(phases, images) -> powers``, simulated.

    ``phases``: (L, ny, nx) radians (NumPy, or CuPy to simulate on the GPU); ``images``:
    (B, h, w) in [0, 1]. Returns detector powers (B, K) float64 in the design's relative
    units, in the order of ``design.detectors``. Each detector's power is summed over its
    own bounding box in a fixed order (no BLAS), so the same call gives the same bits in
    any process.

    The field arriving at the first layer depends on the images alone, so it is computed
    once per batch and kept while the same images are measured again (ES, SPSA
    and GA measure every member of a population on one batch): each call then runs the
    ``L`` hops after the first mask, not ``L + 1``, with the same operations in the same
    order as :func:`diffractive.stack.forward` of the whole stack, so the same bits.
    """

    def __init__(self, design, workers=None):
        self.design = design
        self.geometry = design.geometry
        self.workers = workers
        masks = detector_masks(design.detectors, design.grid)
        self.boxes = []
        for m in masks:
            rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            self.boxes.append((slice(r0, r1), slice(c0, c1), m[r0:r1, c0:c1].astype(np.float64)))
        # input plane -> first layer (no masks), and first layer -> output plane
        self._first_hop = dataclasses.replace(self.geometry, distances_m=self.geometry.distances_m[:1])
        self._after_first = dataclasses.replace(self.geometry, distances_m=self.geometry.distances_m[1:])
        self._images = None
        self._arrivals = None
        self.calls = 0

    def arrivals(self, images, xp=np):
        """Field (B, ny, nx) arriving at the first layer, cached for the last ``images``.

        The cache is keyed on the images' values (a copy is kept and compared, which costs
        far less than a hop), so a caller that refills one buffer in place is served right.
        """
        ixp = get_array_module(images)
        same = (self._images is not None and get_array_module(self._arrivals) is xp
                and get_array_module(self._images) is ixp and bool(ixp.array_equal(self._images, images)))
        if not same:
            fields = xp.asarray(input_fields(self.design, images, xp), dtype=np.complex64)
            no_masks = xp.empty((0,) + fields.shape[1:], dtype=np.complex64)
            self._arrivals = forward(self._first_hop, no_masks, fields, workers=self.workers).output
            self._images = images.copy()
        return self._arrivals

    def __call__(self, phases, images):
        xp = get_array_module(phases)
        t = xp.exp(1j * xp.asarray(phases, dtype=np.float32)).astype(np.complex64)
        out = forward(self._after_first, t[1:], self.arrivals(images, xp) * t[0], workers=self.workers).output
        intensity = out.real ** 2 + out.imag ** 2
        self.calls += 1
        return self.powers(intensity.get() if xp is not np else intensity)

    def powers(self, intensity):
        """Detector powers (B, K) float64 from output-plane intensity (B, ny, nx) (NumPy)."""
        powers = np.empty((len(intensity), len(self.boxes)), dtype=np.float64)
        for k, (rs, cs, w) in enumerate(self.boxes):
            powers[:, k] = (intensity[:, rs, cs].astype(np.float64) * w).sum(axis=(1, 2))
        return powers


def load_measure(spec: str, design, cfg):
    """The ``measure`` callable a rule option names.

    ``"simulated"``: :class:`SimulatedMeasure`. ``"package.module:factory"``: imports
    ``factory`` and returns ``factory(design, cfg)``, which must be a callable
    ``measure(phases, images) -> powers (B, K)``.
    """
    if spec == "simulated":
        return SimulatedMeasure(design, cfg.trainer.workers)
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise D2NNError(f"measure = {spec!r}: cannot import {name!r} from {module!r} ({e})") from None
    fn = factory(design, cfg)
    if not callable(fn):
        raise D2NNError(f"measure = {spec!r}: {name}(design, cfg) returned {type(fn).__name__}, not a callable")
    return fn


def loss_and_logits(powers, labels, score_matrix, kind="cross_entropy", temperature=0.1):
    """Mean loss and class logits (B, C) from detector powers (B, K), in float64.

    The trainer's losses (:mod:`training.losses`), in NumPy: ``cross_entropy`` on the scores
    normalised by the power on the detectors, ``mse`` by :func:`training.losses.mse_loss`,
    the very function the backprop trainer calls on its tensors.
    """
    p = np.asarray(powers, dtype=np.float64)
    S = np.asarray(score_matrix, dtype=np.float64)
    labels = np.asarray(labels)
    total = np.maximum(p.sum(axis=1, keepdims=True), 1e-20)
    scores = np.einsum("bk,kc->bc", p, S)
    if kind == "cross_entropy":
        logits = scores / (temperature * total)
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        return float(np.mean(lse - logits[np.arange(len(labels)), labels])), logits
    if kind == "mse":
        return float(mse_loss(p, labels, S)), scores
    raise D2NNError(f"unknown loss {kind!r}; losses: {', '.join(LOSSES)}")


class Superpixels:
    """Phases (L, ny, nx) from parameters (L, ceil(ny/b), ceil(nx/b)): each parameter fills
    a ``b x b`` block. ``theta(phase)`` reads the parameters back exactly from an expanded
    map (its top-left pixel of each block)."""

    def __init__(self, phase_shape, block=1):
        self.shape = tuple(phase_shape)
        self.block = int(block)
        L, ny, nx = self.shape
        b = self.block
        self.theta_shape = (L, -(-ny // b), -(-nx // b))

    @property
    def size(self):
        return int(np.prod(self.theta_shape))

    def theta(self, phase):
        b = self.block
        return np.array(phase[:, ::b, ::b], dtype=np.float32, order="C", copy=True)

    def expand(self, theta):
        b = self.block
        if b == 1:
            return theta
        _, ny, nx = self.shape
        return np.repeat(np.repeat(theta, b, axis=1), b, axis=2)[:, :ny, :nx]

    def block_sums(self, values):
        """Sum of ``values`` (L, ny, nx) over each block, shape ``theta_shape``: the adjoint
        of :meth:`expand`, so the gradient with respect to the parameters is
        ``block_sums(gradient with respect to the phases)``."""
        b = self.block
        L, ny, nx = self.shape
        _, ty, tx = self.theta_shape
        padded = np.zeros((L, ty * b, tx * b), dtype=np.asarray(values).dtype)
        padded[:, :ny, :nx] = values
        return padded.reshape(L, ty, b, tx, b).sum(axis=(2, 4))


class Adam:
    """Adam (Kingma & Ba) on a NumPy float32 array, minimising; state is plain arrays."""

    def __init__(self, shape, beta1=0.9, beta2=0.999, eps=1e-8):
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self.t = 0

    def step(self, theta, grad, lr):
        """Update ``theta`` in place with the gradient estimate ``grad``."""
        self.t += 1
        g = np.asarray(grad, dtype=np.float32)
        self.m *= np.float32(self.beta1)
        self.m += np.float32(1 - self.beta1) * g
        self.v *= np.float32(self.beta2)
        self.v += np.float32(1 - self.beta2) * g * g
        c1 = 1 - self.beta1 ** self.t
        c2 = 1 - self.beta2 ** self.t
        step = np.float32(lr / c1) * self.m / (np.sqrt(self.v / np.float32(c2)) + np.float32(self.eps))
        theta -= step
        return theta

    def state_dict(self):
        return {"m": self.m.copy(), "v": self.v.copy(), "t": self.t}

    def load_state_dict(self, s):
        self.m[...] = s["m"]
        self.v[...] = s["v"]
        self.t = int(s["t"])


def lr_factor(trainer_cfg, steps_per_epoch):
    """The learning-rate multiplier per optimisation step, as the backprop trainer's schedule."""
    t = trainer_cfg
    total = max(1, t.epochs * steps_per_epoch)
    if t.schedule == "cosine":
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    if t.schedule == "step":
        return lambda s: t.step_gamma ** (s // (t.step_every * steps_per_epoch))
    return lambda s: 1.0


def gaussian(key, size):
    """Standard normal float32 vector determined by ``key`` (a tuple of non-negative ints)."""
    return np.random.default_rng(list(key)).standard_normal(size, dtype=np.float32)


def centered_ranks(x):
    """Salimans et al.'s fitness shaping: ranks of ``x`` mapped linearly onto [-0.5, 0.5].

    Tied values share their average rank (so equal losses give no update); the result
    depends on the values only, not on their order or on the process that computed them.
    """
    shape = np.shape(x)
    x = np.asarray(x, dtype=np.float64).ravel()
    n = len(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ranks = np.empty(n, dtype=np.float64)
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and xs[stop] == xs[start]:
            stop += 1
        ranks[order[start:stop]] = 0.5 * (start + stop - 1)
        start = stop
    if n > 1:
        ranks /= n - 1
    return (ranks - 0.5).reshape(shape)


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / max(1e-300, np.linalg.norm(a) * np.linalg.norm(b)))
