"""The trainable diffractive network: a torch module over the xp physics core.

:class:`D2NN` holds the layer phases (and, for complex modulation, amplitude logits) as
torch parameters and everything else (geometry, detector masks, encoding) from a
:class:`~diffractive.design.Design`. Its forward pass is the bridge
(:func:`training.bridge.stack_intensity`); readout and losses are small torch ops on the
intensity.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from diffractive.backend import get_array_module
from diffractive.design import Design, load_design, make_design
from diffractive.detectors import detector_masks, score_matrix
from diffractive.errors import D2NNError
from diffractive.materials import Fabrication
from diffractive.simulate import input_fields

from .bridge import from_xp, stack_intensity, to_xp
from .config import ConfigError
from .losses import LOSSES, mse_loss


def design_from_config(cfg, phases=None) -> Design:
    """The initial :class:`Design` a config describes.

    Phases are ``phases`` if given, else those of the design folder ``[model] init_from``
    (fine-tuning a trained design; its geometry must equal the config's), else random
    (``init = "uniform"``, from ``trainer.seed``) or zero.
    """
    g, inp, det = cfg.geometry, cfg.input, cfg.detectors
    n_classes = 10
    start = None
    if phases is None and cfg.model.init_from is not None:
        where = f"{cfg.source} [model] init_from = {cfg.model.init_from!r}"
        try:
            start = load_design(cfg.resolve_path(cfg.model.init_from))
        except D2NNError as e:  # DesignError, or the reading layer's InputFileError
            raise ConfigError(f"{cfg.source} [model] init_from: {e}") from None
        phases = start.phases
        want = (g.n_layers,) + tuple(g.layer_shape)
        if tuple(np.shape(phases)) != want:  # said in the config's terms, before make_design sees the phases
            got = np.shape(phases)
            raise ConfigError(f"{where}: that design has {got[0]} layers of {got[1]} x {got[2]} pixels, the config "
                              f"asks for {want[0]} of {want[1]} x {want[2]} ([geometry] n_layers, layer_shape); "
                              "fine-tuning needs the same geometry")
    elif phases is None and cfg.model.init == "zeros":
        phases = np.zeros((g.n_layers,) + tuple(g.layer_shape), dtype=np.float32)
    try:
        design = make_design(
            wavelength_m=g.wavelength_m, pitch_m=g.pitch_m, layer_shape=tuple(g.layer_shape), n_layers=g.n_layers,
            spacing_m=g.distance_m, distances_m=g.distances_m,
            window_shape=None if g.window_shape is None else tuple(g.window_shape),
            encoding=inp.encoding, input_size_yx_m=inp.size_yx_m, phase_scale=inp.phase_scale, detectors=det.layout,
            detector_size_m=det.size_m, detector_spacing_m=det.spacing_m, n_classes=n_classes,
            material=cfg.material.material(cfg),
            fabrication=Fabrication(cfg.fabrication.base_m, cfg.fabrication.z_step_m),
            phases=phases, seed=cfg.trainer.seed, spectrum=cfg.source_spectrum.spectrum(cfg.source))
    except D2NNError as e:  # a combination of values no design can have (detectors off the plane, ...)
        raise ConfigError(f"{cfg.source} [{_table_of(e)}]: the design this config describes is invalid: "
                          f"{e}") from None
    if start is not None:
        _check_same_geometry(design, start, f"{cfg.source} [model] init_from = {cfg.model.init_from!r}")
        design = dataclasses.replace(
            design, amplitudes=start.amplitudes if cfg.model.modulation == "complex" else None,
            provenance={**design.provenance, "init_from": {"path": cfg.model.init_from,
                                                           "provenance": start.provenance, "metrics": start.metrics}})
    return design


#: design field (its first name) -> the config table that sets it, for messages
_TABLE_OF_FIELD = {"input": "input", "size_yx_m": "input", "phase_scale": "input", "encoding": "input",
                   "detectors": "detectors", "material": "material", "n": "material", "kappa": "material",
                   "fabrication": "fabrication", "base_m": "fabrication", "z_step_m": "fabrication"}


def _table_of(e) -> str:
    """The config table a design-building error is about (``geometry`` unless it names another)."""
    field_name = getattr(e, "field", "") or ""
    head = field_name.replace("[", ".").split(".")[0]
    return _TABLE_OF_FIELD.get(head, "geometry")


def _check_same_geometry(design: Design, start: Design, where: str):
    """Refuse to fine-tune from a design whose optics (its StackGeometry) differ from the config's."""
    want, got = design.geometry, start.geometry
    for f in dataclasses.fields(want):
        a, b = getattr(want, f.name), getattr(got, f.name)
        same = (np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-9, atol=0)) if f.name.endswith("_m") \
            else a == b
        if not same:
            raise ConfigError(f"{where}: that design has {f.name} = {b}, the config asks for {a}; "
                              "fine-tuning needs the same geometry")


class D2NN(torch.nn.Module):
    """Layers of a design as torch parameters.

    ``forward(images)`` takes images (B, h, w) in [0, 1] and returns the output-plane
    intensity (B, ny, nx); :meth:`readout` turns it into detector powers (B, K) and
    :meth:`scores` into class scores (B, C).
    """

    def __init__(self, design: Design, modulation: str = "phase", workers=None):
        super().__init__()
        self.design = design
        self.geometry = design.geometry
        self.workers = workers
        self.phase = torch.nn.Parameter(torch.tensor(np.asarray(design.phases, dtype=np.float32)))
        self.modulation = modulation
        if modulation == "complex":
            amp = np.full(design.phases.shape, 0.9, dtype=np.float32) if design.amplitudes is None else design.amplitudes
            amp = np.clip(amp, 1e-4, 1 - 1e-4)
            self.amp_logit = torch.nn.Parameter(torch.tensor(np.log(amp / (1 - amp)), dtype=torch.float32))
        elif modulation != "phase":
            raise D2NNError(f"modulation must be 'phase' or 'complex', got {modulation!r}")
        masks = detector_masks(design.detectors, design.grid).reshape(len(design.detectors), -1)
        self.register_buffer("masks", torch.tensor(masks, dtype=torch.float32))
        self.register_buffer("score_matrix", torch.tensor(score_matrix(design.detectors, design.n_classes),
                                                          dtype=torch.float32))

    def amplitudes(self):
        return torch.sigmoid(self.amp_logit) if self.modulation == "complex" else None

    def transmissions(self):
        t = torch.polar(torch.ones_like(self.phase), self.phase)
        amp = self.amplitudes()
        return t if amp is None else t * amp

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Input fields (B, ny, nx) complex64 for images (B, h, w), on the images' device."""
        xp_images = to_xp(images.float())
        xp = get_array_module(xp_images)
        return from_xp(input_fields(self.design, xp_images, xp), images.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return stack_intensity(self.transmissions(), self.encode(images), self.geometry, self.workers)

    def readout(self, intensity: torch.Tensor) -> torch.Tensor:
        return intensity.reshape(intensity.shape[0], -1) @ self.masks.T

    def scores(self, powers: torch.Tensor) -> torch.Tensor:
        return powers @ self.score_matrix

    def to_design(self) -> Design:
        """A copy of the design with the current (wrapped) phases and amplitudes."""
        phases = torch.remainder(self.phase.detach(), 2 * np.pi).cpu().numpy().astype(np.float32)
        amp = self.amplitudes()
        amp = None if amp is None else amp.detach().cpu().numpy().astype(np.float32)
        return self.design.with_phases(phases, amp)


def detector_loss(powers, intensity, labels, score_matrix, kind="cross_entropy", temperature=0.1):
    """``(loss, logits)`` of detector powers (B, K) for integer ``labels`` (B,), differentiable.

    The losses are those of :mod:`training.losses` (both see the detector powers only):
    ``cross_entropy`` on ``scores / (temperature * sum(powers))``, i.e. on class scores
    normalised by the power reaching the detectors (scale-free, so the input's brightness does
    not change the loss); ``mse`` (:func:`training.losses.mse_loss`) on each detector's share
    of the power on the detectors against a one-hot target. ``intensity`` (B, ny, nx) is not
    used by either; it stays in the signature for the callers that pass it.
    """
    if kind == "cross_entropy":
        total_det = powers.sum(dim=1, keepdim=True).clamp_min(1e-20)
        logits = (powers @ score_matrix) / (temperature * total_det)
        return torch.nn.functional.cross_entropy(logits, labels), logits
    if kind == "mse":
        return mse_loss(powers, labels, score_matrix), powers @ score_matrix
    raise D2NNError(f"unknown loss {kind!r}; losses: {', '.join(LOSSES)}")
