"""The training loop shared by every learning rule.

A :class:`Trainer` owns the data, the model, the schedule of epochs and steps,
validation, checkpoints and the design folder it writes; a *rule* (backprop here, the
alternatives in :mod:`training.rules`) owns how one batch updates the parameters.

Resumability: batches are drawn in an order fixed by ``(seed, epoch)``; a checkpoint
holds the parameters, the rule's state (optimiser, schedule, its random generators), the
epoch and the step within it, and the running sums of the epoch. It is written to a
temporary file and renamed, so a run killed at any moment (SIGKILL included) resumes
from its last complete checkpoint and continues exactly as an uninterrupted run would.
"""
from __future__ import annotations

import csv
import datetime
import io
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffractive
from diffractive._io import atomic_write, atomic_write_bytes, refuse_overwriting_inputs
from diffractive._read import InputFileError, check_regular_file
from diffractive.design import save_design, write_json_atomic
from diffractive.errors import D2NNError, OutputExists
from diffractive.measured.stats import confusion_matrix

from . import figures
from .config import MAX_LEARNING_RATE, Config
from .datasets import check_classes, split_provenance
from .model import D2NN, design_from_config, detector_loss
from .rules.common import lr_factor
from .robust import (band_sum, freeze_layers, hold_block_constant, smoothness_penalty, through_stack,
                     vaccination_from_config)
from .rules.distributed import SCHEMES, Comm, init_from_env, is_writer, per_process_workers


class TrainingError(D2NNError, RuntimeError):
    """Training cannot go on (diverged, bad state); the message says why."""


def _as_data(obj):
    """``obj`` with NumPy arrays and scalars turned into what ``torch.load(weights_only=True)``
    reads back: tensors (tagged, so :func:`_from_data` restores arrays) and Python numbers."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _as_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_as_data(v) for v in obj)
    return obj


def _from_data(obj):
    """Inverse of :func:`_as_data`."""
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"} and isinstance(obj["__ndarray__"], torch.Tensor):
            return obj["__ndarray__"].cpu().numpy()  # map_location may have put it on the GPU
        return {k: _from_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_data(v) for v in obj)
    return obj


def _sendable(error):
    """``error`` if it survives pickling (to be raised again on the other ranks, where the
    command line words it as on rank 0), else a :class:`TrainingError` with its message."""
    if error is None:
        return None
    import pickle  # noqa: PLC0415

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001  (an exception class whose arguments do not round-trip)
        return TrainingError(str(error))


def _on_cpu(obj):
    """``obj`` with every tensor moved to the CPU (what :meth:`Comm.broadcast` sends)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


class BackpropRule:
    """End-to-end gradients through the bridge, Adam, and a per-step LR schedule."""

    name = "backprop"

    def __init__(self, model: D2NN, cfg: Config, steps_per_epoch: int):
        self.model = model
        self.cfg = cfg
        t = cfg.trainer
        self.optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate)
        # the one schedule every rule follows (training.rules.common.lr_factor)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(t, steps_per_epoch))
        self.evaluations = 0  # single-image forward simulations so far, all ranks (rules that subclass count theirs)
        # data parallel across the ranks of a torchrun job (training.rules.distributed); world 1 otherwise
        self.comm = Comm(model.phase.device)
        # [robustness]: every step through a fresh as-built stack (None: the ideal stack), and
        # what helps robustness by construction (training/robust.py)
        self.vaccination = vaccination_from_config(model.design, cfg)
        self.smoothness = cfg.robustness.smoothness
        if cfg.robustness.feature_px > 1:
            hold_block_constant(model.phase, cfg.robustness.feature_px)
        if cfg.robustness.freeze_layers:
            freeze_layers(model, cfg.robustness.freeze_layers)

    def powers(self, images):
        """``(detector powers, intensity)`` of this step's forward pass: the ideal stack, or
        with ``[robustness]`` a stack drawn for this step (the scheduler counts the steps, so
        a resumed run draws the same stacks)."""
        if self.vaccination is not None:
            return self.vaccination.powers(self.model, images, self.scheduler.last_epoch)
        intensity = self.model(images)
        return self.model.readout(intensity), intensity

    def loss(self, images, labels):
        t = self.cfg.trainer
        vac = self.vaccination
        if vac is not None and vac.spectral and vac.objective == "each":
            # a tunable or drifting source: every line must classify alone (training/robust.py)
            loss = logits = None
            for w, p in vac.line_powers(self.model, images, self.scheduler.last_epoch):
                l_j, z_j = detector_loss(p, None, labels, self.model.score_matrix, t.loss, t.temperature)
                loss = w * l_j if loss is None else loss + w * l_j
                logits = w * z_j if logits is None else logits + w * z_j
        else:
            powers, intensity = self.powers(images)
            loss, logits = detector_loss(powers, intensity, labels, self.model.score_matrix, t.loss, t.temperature)
        if self.smoothness:
            loss = loss + self.smoothness * smoothness_penalty(self.model.phase)
        return loss, logits

    def step(self, images, labels):
        """One update; returns ``(loss, logits)`` measured before the update."""
        check_parameters(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.evaluations += len(images) * self.comm.world
        loss, logits = self.loss(images, labels)
        # across ranks ``images`` is this rank's equal shard of the global batch: the loss checked
        # and returned is the global batch's mean, and the gradient applied is the global batch's
        # (the shards' mean gradients averaged); NaN on one rank stops every rank
        value = self.comm.mean(loss)
        check_finite(value, self.cfg.trainer.max_loss)
        loss.backward()
        self.comm.average_gradients(self.model.parameters())
        for p in self.model.parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise TrainingError("the gradient holds NaN or infinite values; lower trainer.learning_rate")
        self.optimizer.step()
        self.scheduler.step()
        return value, logits.detach()

    @property
    def learning_rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "evaluations": self.evaluations}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.evaluations = int(state.get("evaluations", 0))


def check_finite(loss, max_loss):
    value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
    if not math.isfinite(value) or value > max_loss:
        raise TrainingError(f"the loss became {value!r} (limit trainer.max_loss = {max_loss:g}); the run stops "
                            "and the last good checkpoint is kept; lower trainer.learning_rate")


def check_parameters(model):
    """Raise :class:`TrainingError` if a parameter is NaN or infinite."""
    name = _nonfinite_parameter(model)
    if name is not None:
        raise TrainingError(f"the parameter '{name}' holds NaN or infinite values; the run stops and the "
                            "last good checkpoint is kept; lower trainer.learning_rate")


def _nonfinite_parameter(model):
    """The name of the first parameter of ``model`` holding NaN or infinity, or ``None``."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


# -- reading and checking checkpoints -------------------------------------------------
# A checkpoint (torch.save of a dict, read back with weights_only=True: tensors and plain
# containers, never code) holds "model" (the module's state_dict), "rule" (the rule's
# state_dict through _as_data), "state" (the loop's counters and sums, below) and "config"
# (Config.to_dict()). Everything in it is checked before it is used, so that a truncated,
# tampered or foreign file is refused in one line naming the file and the field.

#: What atomic_write leaves behind when a run is killed mid-write: ``.last.pt.XXXXXXXX.tmp``
#: (tempfile.mkstemp's random part). Only files of this pattern are ever removed.
_STALE_TEMPORARY = re.compile(r"^\.(?:last|best)\.pt\.[A-Za-z0-9_]{1,64}\.tmp$")
_ZIP_MAGIC = b"PK\x03\x04"   # torch.save has written zip archives since torch 1.6
STATE_KEYS = ("epoch", "step_in_epoch", "global_step", "history", "best_val_accuracy", "best_epoch", "sums",
              "train_seconds", "started")


def _nonfinite_field(obj, name):
    """The dotted name of the first NaN or infinite number in ``obj`` (tensors, arrays, floats,
    nested in dicts and lists), or ``None``."""
    todo = [(name, obj)]
    while todo:
        where, v = todo.pop()
        if isinstance(v, torch.Tensor):
            if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
                return where
        elif isinstance(v, np.ndarray):
            if v.dtype.kind in "fc" and not np.isfinite(v).all():
                return where
        elif isinstance(v, float):
            if not math.isfinite(v):
                return where
        elif isinstance(v, dict):
            todo.extend((f"{where}.{k}", x) for k, x in reversed(list(v.items())))
        elif isinstance(v, (list, tuple)):
            todo.extend((f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: Keys of an Adam parameter group that torch sets to their defaults when a checkpoint lacks
#: them (``Adam.__setstate__``): a checkpoint of an older torch may miss them. Others (lr,
#: betas, eps, weight_decay) it does not, and a group without them fails at the next step.
_TORCH_DEFAULTED = {"amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused",
                    "decoupled_weight_decay"}


def _structure_problem(template, value, name, growing=()):
    """How ``value`` (read from a checkpoint) fails to have the structure of ``template`` (this
    run's own state), as ``"field 'NAME' ..."``, or ``None``.

    Arrays and tensors must have the template's shape and kind of dtype; dicts must hold the
    template's keys (extra keys are allowed; missing keys are in a ``scheduler``, which keeps
    its own values, and in an optimiser's ``param_groups`` the flags of
    :data:`_TORCH_DEFAULTED`, which ``Adam.__setstate__`` fills in); lists of the template's length are compared
    item by item; scalars must have the template's type (an int may stand for a float), and
    a counter that is >= 0 in the template must be >= 0. Arrays named in ``growing`` (a
    rule's ``GROWING_STATE``, e.g. GA's parents, one more per generation up to a bound the
    rule checks itself) need the template's shape after their first axis only.
    """
    todo = [(name, template, value, False)]
    while todo:
        where, t, v, lenient = todo.pop()
        if isinstance(t, (torch.Tensor, np.ndarray)):
            if not isinstance(v, (torch.Tensor, np.ndarray)):
                return f"field '{where}' must be an array, got {type(v).__name__}"
            if where in growing and v.ndim == t.ndim and v.ndim and v.shape[0] >= 1:
                if tuple(v.shape[1:]) != tuple(t.shape[1:]):
                    return f"field '{where}' has items of shape {tuple(v.shape[1:])}; this run's are {tuple(t.shape[1:])}"
            elif tuple(v.shape) != tuple(t.shape):
                return f"field '{where}' has shape {tuple(v.shape)}; this run's has {tuple(t.shape)}"
            kinds = [x.dtype.kind if isinstance(x, np.ndarray) else
                     ("c" if x.is_complex() else "f" if x.is_floating_point() else "b" if x.dtype == torch.bool else "i")
                     for x in (t, v)]
            if kinds[0] != kinds[1] and not {kinds[0], kinds[1]} <= {"i", "u"}:
                return f"field '{where}' has dtype {v.dtype}; this run's has {t.dtype}"
        elif isinstance(t, dict):
            if not isinstance(v, dict):
                return f"field '{where}' must be a table, got {type(v).__name__}"
            lenient = lenient or where.endswith(".scheduler")  # torch's own state: it keeps its defaults
            for k, x in t.items():
                if k in v:
                    todo.append((f"{where}.{k}", x, v[k], lenient))
                elif not (lenient or (where.endswith("]") and ".param_groups[" in where and k in _TORCH_DEFAULTED)):
                    return f"field '{where}.{k}' is missing"
        elif isinstance(t, (list, tuple)):
            if not isinstance(v, (list, tuple)):
                return f"field '{where}' must be a list, got {type(v).__name__}"
            if len(v) == len(t):
                todo.extend((f"{where}[{i}]", x, y, lenient) for i, (x, y) in enumerate(zip(t, v)))
            elif where.endswith("param_groups"):
                return f"field '{where}' holds {len(v)} parameter groups; this run's optimiser has {len(t)}"
        elif isinstance(t, bool):
            if not isinstance(v, bool):
                return f"field '{where}' must be true or false, got {v!r}"[:300]
        elif _is_int(t):
            if not _is_int(v):
                return f"field '{where}' must be an integer, got {v!r}"[:300]
            if t >= 0 > v:
                return f"field '{where}' must not be negative, got {v!r}"
        elif isinstance(t, float):
            if not _is_number(v):
                return f"field '{where}' must be a number, got {v!r}"[:300]
        elif isinstance(t, str) and not isinstance(v, str):
            return f"field '{where}' must be a string, got {v!r}"[:300]
    return None


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001  (tensors compared with lists, ...)
        return False


def _torch_state_problem(rule, template, loaded, name="rule"):
    """What is wrong with the parts of a rule's loaded state that torch owns, or ``None``.

    ``template`` is the rule's own ``state_dict()`` (its structure already matched by
    :func:`_structure_problem`). For each torch optimiser the rule holds: the hyperparameters
    of its parameter groups must be this run's (``lr`` may be anything the schedule reaches,
    0 to :data:`~training.config.MAX_LEARNING_RATE`); the per-parameter state must name this
    run's parameters and, for Adam, hold ``step`` (a count >= 0) and the moments as float
    tensors of the parameter's shape -- ``Optimizer.load_state_dict`` checks none of this, and
    each would fail (or turn into NaN) only at the next step. For each LR scheduler: its
    ``base_lrs`` must be this run's learning rate.
    """
    for key, t in template.items():
        obj, v, where = getattr(rule, key, None), loaded.get(key), f"{name}.{key}"
        if isinstance(obj, torch.optim.Optimizer):
            for gi, (tg, vg) in enumerate(zip(t["param_groups"], v["param_groups"])):
                for k, tv in tg.items():
                    if k not in vg:
                        continue  # torch fills in its default
                    x, w = vg[k], f"{where}.param_groups[{gi}].{k}"
                    if k in ("lr", "initial_lr"):
                        if not _is_number(x) or not (0 <= x <= MAX_LEARNING_RATE):
                            return f"field '{w}' must be a learning rate from 0 to {MAX_LEARNING_RATE:.4g}, got {x!r}"[:300]
                    elif tv is None:
                        if x is not None and x is not False:
                            return f"field '{w}' must be None (as this run's optimiser), got {x!r}"[:300]
                    elif not _same(x, tv):
                        return f"field '{w}' = {x!r} is not this run's optimiser setting ({tv!r})"[:300]
            params = [p for g in obj.param_groups for p in g["params"]]
            state = v.get("state")
            if not isinstance(state, dict):
                return f"field '{where}.state' must be a table, got {type(state).__name__}"
            adam = isinstance(obj, torch.optim.Adam)
            for idx, entry in state.items():
                w = f"{where}.state.{idx}"
                if not _is_int(idx) or not 0 <= idx < len(params):
                    return f"field '{w}' names no parameter of this run's model"
                if not isinstance(entry, dict):
                    return f"field '{w}' must be a table, got {type(entry).__name__}"
                if not entry:
                    continue
                p = params[idx]
                for k in ("step", "exp_avg", "exp_avg_sq") if adam else ():
                    if k not in entry:
                        return f"field '{w}.{k}' is missing"
                for k, x in entry.items():
                    if k == "step":
                        n = float(x) if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_complex() else x
                        if not _is_number(n) or not math.isfinite(n) or n < 0 or n != int(n):
                            return f"field '{w}.step' must be a count >= 0, got {x!r}"[:300]
                    elif not (isinstance(x, torch.Tensor) and x.is_floating_point()
                              and tuple(x.shape) == tuple(p.shape)):
                        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else repr(x)
                        return f"field '{w}.{k}' must be a float tensor of its parameter's shape {tuple(p.shape)}, " \
                               f"got {got}"[:300]
        elif isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
            if "base_lrs" in v and not _same(v["base_lrs"], t["base_lrs"]):
                return f"field '{where}.base_lrs' = {v['base_lrs']!r} is not this run's learning rate {t['base_lrs']!r}"[:300]
    return None


def make_rule(model, cfg, steps_per_epoch):
    if cfg.trainer.rule == "backprop":
        return BackpropRule(model, cfg, steps_per_epoch)
    from . import rules  # noqa: PLC0415

    return rules.make_rule(model, cfg, steps_per_epoch)


class _Progress:
    """tqdm bar on a terminal; otherwise a line every ~10 % of an epoch (logs stay short)."""

    def __init__(self, total, desc, stream=sys.stderr, done=0):
        """``done`` images of the epoch were processed before a resume: shown, not timed."""
        self.total, self.desc, self.stream = total, desc, stream
        self.n = self.done = done
        self.t0 = time.perf_counter()
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, initial=done, desc=desc, unit="img", leave=False, file=stream)
        self.next_report = (done // (total / 10) + 1) * total / 10

    def update(self, n, **post):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(post, refresh=False)
        elif self.n >= self.next_report or self.n == self.total:
            rate = (self.n - self.done) / max(1e-9, time.perf_counter() - self.t0)
            eta = (self.total - self.n) / max(rate, 1e-9)
            extra = " ".join(f"{k}={v}" for k, v in post.items())
            print(f"{self.desc}: {self.n}/{self.total} img, {rate:.0f} img/s, ETA {eta:.0f} s {extra}",
                  file=self.stream, flush=True)
            self.next_report += self.total / 10

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Train the design a :class:`Config` describes and write it to ``out_dir``.

    ``out_dir`` becomes a design folder (design.json, phases.npz, metrics.json,
    metrics.csv, figures/); checkpoints live in ``out_dir/checkpoints/``.
    """

    def __init__(self, cfg: Config, out_dir, *, resume=False, force=False, device="cpu", log=print,
                 data=None, stop_after_steps=None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        # a torchrun job (WORLD_SIZE > 1 in the environment): join its process group first;
        # rank 0 alone reads, checks and writes out_dir (training.rules.distributed)
        init_from_env(device)
        self.comm = Comm(device)
        self.device = torch.device(device)
        self.log = log if is_writer() else (lambda *a, **k: None)
        self.stop_after_steps = stop_after_steps
        self.data_parallel = self._check_world(cfg)
        last = self.ckpt_dir / "last.pt"
        problem = None
        if is_writer():
            try:
                self._check_start(last)  # out_dir, its checkpoint folder, the learning rate
                if resume and not last.exists():
                    raise TrainingError(f"resume=True: no checkpoint at {last}")
                if not resume and self.out.exists() and any(self.out.iterdir()) and not force:
                    raise OutputExists(self.out, "is not empty",
                                       {"resume": "continue the run there", "force": "start over"})
            except D2NNError as e:
                problem = e
        if self.comm.world > 1:  # the other ranks stop with rank 0's error instead of waiting for it
            received = self.comm.broadcast(_sendable(problem))
            if problem is None and received is not None:
                raise received
        if problem is not None:
            raise problem
        d = cfg.data
        if data is None:
            from .datasets import dataset_info, load_split  # noqa: PLC0415

            tr = load_split(d.dataset, "train", limit=d.train_limit, seed=d.split_seed, val_fraction=d.val_fraction)
            va = load_split(d.dataset, "val", limit=d.val_limit, seed=d.split_seed, val_fraction=d.val_fraction)
            te = load_split(d.dataset, "test")
            self.dataset_info = dataset_info(d.dataset)
        else:  # tests pass arrays directly
            tr, va, te = data
            self.dataset_info = {"name": "in-memory arrays"}
        self.train_x, self.train_y = np.asarray(tr[0], np.float32), np.asarray(tr[1], np.int64)
        if d.shuffle_labels:
            self.train_y = np.random.default_rng([cfg.trainer.seed, 7]).permutation(self.train_y)
        self.val_x, self.val_y = np.asarray(va[0], np.float32), np.asarray(va[1], np.int64)
        self.test_x, self.test_y = np.asarray(te[0], np.float32), np.asarray(te[1], np.int64)
        torch.manual_seed(cfg.trainer.seed)
        self.design0 = design_from_config(cfg)
        for name, labels in (("train", self.train_y), ("val", self.val_y), ("test", self.test_y)):
            check_classes(labels, self.design0.n_classes, f"the {name} split of {d.dataset}")
        # several processes on one machine share its cores (training.rules.distributed.per_process_workers)
        workers = per_process_workers(cfg.trainer.workers)
        self.model = D2NN(self.design0, cfg.model.modulation, workers=workers).to(self.device)
        bs = cfg.trainer.batch_size
        self.steps_per_epoch = max(1, len(self.train_x) // bs)
        self.rule = make_rule(self.model, cfg, self.steps_per_epoch)
        if getattr(self.rule, "vaccination", None) is not None:
            self.rule.vaccination.workers = workers
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [], "best_val_accuracy": -1.0,
                      "best_epoch": None, "sums": [0.0, 0, 0], "train_seconds": 0.0,
                      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if resume and is_writer():
            self._load(last)
        if is_writer():
            self._remove_stale_temporaries()
        if self.comm.world > 1:
            self._share_state()

    def _check_world(self, cfg) -> bool:
        """Whether this run is data parallel; refuses, on every rank alike, a rule that has no
        scheme across processes and a global batch that does not split into equal shards."""
        world = self.comm.world
        if world == 1:
            return False
        scheme = SCHEMES.get(cfg.trainer.rule)
        if scheme is None:
            runs = ", ".join(f"{r} ({s})" for r, s in SCHEMES.items())
            raise TrainingError(f"trainer.rule = {cfg.trainer.rule!r} does not run across processes (those that do: "
                                f"{runs}); run it as one process, without torchrun")
        bs = cfg.trainer.batch_size
        if scheme == "data" and bs % world:
            raise TrainingError(f"trainer.batch_size = {bs} (the global batch) does not split evenly over the {world} "
                                f"processes of this torchrun job; choose a multiple of {world}")
        return scheme == "data"

    def _share_state(self):
        """Every rank continues from rank 0's parameters, rule state and loop state: rank 0
        alone reads the checkpoint (so out_dir need be on rank 0's filesystem only), and the
        ranks start equal even if something in their set-up were not."""
        mine = None
        if is_writer():
            mine = _on_cpu({"model": self.model.state_dict(), "rule": self.rule.state_dict(), "state": self.state})
        ck = self.comm.broadcast(mine)
        if not is_writer():
            self.model.load_state_dict(ck["model"])
            self.rule.load_state_dict(ck["rule"])
            self.state = ck["state"]

    # -- start-up -----------------------------------------------------------------------
    def _check_start(self, last):
        """Refuse, before anything is read or written, what this run cannot start with.

        The learning rate above :data:`training.config.MAX_LEARNING_RATE` (a config built in
        code skips the file's checks); an ``out_dir`` that is one of this run's inputs (the
        config file, the ``init_from`` design) or holds one; an ``out_dir`` that is a file or
        lies below one or in a folder that cannot be written; a checkpoint folder, ``last.pt``
        or ``best.pt`` that is not what this run writes there (a folder named last.pt, a FIFO).
        """
        cfg = self.cfg
        lr = cfg.trainer.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr <= MAX_LEARNING_RATE):
            raise TrainingError(f"trainer.learning_rate = {lr!r} is outside (0, {MAX_LEARNING_RATE:.4g}]: phases are "
                                "radians and the optimiser moves each by about learning_rate per step, so a larger "
                                "step only scrambles them (training.config.MAX_LEARNING_RATE)")
        inputs = [] if cfg.source.startswith("<") else [cfg.source]
        if cfg.model.init_from is not None:
            inputs.append(cfg.resolve_path(cfg.model.init_from))
        if cfg.robustness.as_built is not None:
            inputs.append(cfg.resolve_path(cfg.robustness.as_built))
        refuse_overwriting_inputs(self.out, inputs, option="out_dir")
        if os.path.lexists(self.out) and not self.out.exists():
            raise TrainingError(f"out_dir {self.out} is a dangling symbolic link; name a folder to write the design into")
        if self.out.exists() and not self.out.is_dir():
            raise TrainingError(f"out_dir {self.out} is a file, not a folder; name a folder to write the design into")
        above = self.out
        while not os.path.lexists(above) and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise TrainingError(f"out_dir {self.out} cannot be made: {above} is not a folder")
        if not os.access(above, os.W_OK | os.X_OK):
            raise TrainingError(f"out_dir {self.out} cannot be written: {above} is not writable")
        if os.path.lexists(self.ckpt_dir) and not self.ckpt_dir.is_dir():
            raise TrainingError(f"{self.ckpt_dir} is not a folder; it is where this run keeps its checkpoints "
                                "(move it away)")
        for path in (last, self.ckpt_dir / "best.pt"):
            if os.path.lexists(path):
                try:
                    check_regular_file(path)
                except InputFileError as e:
                    raise TrainingError(f"{e}; it should be a checkpoint of this run (move it away)") from None

    def _remove_stale_temporaries(self):
        """Remove what a run killed mid-write left in the checkpoint folder: files named as
        :func:`diffractive._io.atomic_write` names the temporaries of ``last.pt`` and ``best.pt``
        (``.last.pt.XXXXXXXX.tmp``, :data:`_STALE_TEMPORARY`), and nothing else. Called at
        start-up, when no write of this run can be in flight."""
        try:
            entries = list(os.scandir(self.ckpt_dir))
        except (FileNotFoundError, NotADirectoryError):
            return
        removed = 0
        for entry in entries:
            if _STALE_TEMPORARY.match(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        if removed:
            self.log(f"removed {removed} temporary file(s) left in {self.ckpt_dir} by an interrupted checkpoint write")

    # -- checkpoints ------------------------------------------------------------------
    _saved_step = None  # global_step of the last.pt this run wrote or resumed from (None: none yet)

    def _diverged(self, step, what):
        """The message of a run stopped at ``step`` because ``what`` (a NaN, an overflow) happened."""
        last = self.ckpt_dir / "last.pt"
        kept = (f"{last} holds the last finite state (after step {self._saved_step})" if self._saved_step is not None
                else "no checkpoint of this run had been written yet")
        epoch = (max(step, 1) - 1) // self.steps_per_epoch + 1
        return (f"training diverged at step {step} (epoch {epoch}): {what}; the run stops and "
                f"{kept}; lower trainer.learning_rate (now {self.cfg.trainer.learning_rate:g}) and start again")

    def _step(self, xb, yb):
        """``self.rule.step(xb, yb)``; a divergence inside it (a non-finite loss, gradient or update,
        an optimiser step that overflows) stops the run with :meth:`_diverged`'s message."""
        step = self.state["global_step"] + 1
        try:
            return self.rule.step(xb, yb)
        except TrainingError as e:  # the rules raise it for NaN or infinite values only
            what = re.split(r"; (?:the run stops|lower trainer\.learning_rate)", str(e))[0]
            raise TrainingError(self._diverged(step, what)) from None
        except RuntimeError as e:
            if "overflow" not in str(e):
                raise
            raise TrainingError(self._diverged(step, f"the optimiser's step overflowed "
                                                     f"({str(e).splitlines()[0][:200]})")) from None

    def _checkpoint(self, name="last.pt"):
        # finiteness first (on every rank: their parameters are equal), so that a checkpoint of a
        # state that is not finite is never written and last.pt always holds the last good one
        bad = _nonfinite_parameter(self.model)
        if bad is not None:
            raise TrainingError(self._diverged(self.state["global_step"],
                                               f"the parameter '{bad}' holds NaN or infinite values"))
        if not is_writer():
            return
        checkpoint = {"model": self.model.state_dict(), "rule": _as_data(self.rule.state_dict()),
                      "state": _as_data(self.state), "config": self.cfg.to_dict()}
        bad = _nonfinite_field(checkpoint["rule"], "rule")
        if bad is not None:
            raise TrainingError(self._diverged(self.state["global_step"],
                                               f"the rule's state '{bad}' holds NaN or infinite values"))
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        # temporary file, fsync, rename; removed again if the write fails (a SIGKILL leaves at
        # most a stray temporary beside the last complete checkpoint, never a torn one; the
        # next start removes it, _remove_stale_temporaries)
        atomic_write(self.ckpt_dir / name, lambda f: torch.save(checkpoint, f))
        if name == "last.pt":
            self._saved_step = self.state["global_step"]

    def _read_checkpoint(self, path):
        """The checkpoint at ``path``, refused with :class:`TrainingError` (one line naming the
        file and the field) unless it is a regular file holding a d2nn checkpoint written with
        this config, whose model has this run's parameters and buffers, all finite."""
        path = Path(path)

        def bad(problem):
            return TrainingError(f"{path}: {problem}")

        try:
            check_regular_file(path)  # before anything opens it: torch.load would block on a FIFO forever
        except InputFileError as e:
            raise TrainingError(f"{e} (expected a d2nn checkpoint)") from None
        try:
            with open(path, "rb") as f:
                head = f.read(len(_ZIP_MAGIC))
        except OSError as e:
            raise bad(f"cannot be read ({e.strerror or e})") from None
        if not head:
            raise bad("is empty, not a d2nn checkpoint")
        if head != _ZIP_MAGIC:  # refused before torch's legacy unpickler sees it
            raise bad("is not a d2nn checkpoint (not an archive written by torch.save)")
        try:  # checkpoints are data, never code: tensors and plain containers only
            ck = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, EOFError, ...)
            why = str(e).splitlines()[0][:200] if str(e) else ""
            raise bad(f"is not a readable d2nn checkpoint ({type(e).__name__}: {why})") from None
        if not isinstance(ck, dict):
            raise bad(f"holds a {type(ck).__name__}, not a d2nn checkpoint (a table of model, rule, state and config)")
        for key in ("model", "rule", "state", "config"):
            if key not in ck:
                raise bad(f"field '{key}' is missing (a d2nn checkpoint holds model, rule, state and config)")
        try:
            same = bool(ck["config"] == self.cfg.to_dict())
        except Exception:  # noqa: BLE001  (a tampered config holding tensors cannot even be compared)
            same = False
        if not same:
            raise TrainingError(f"{path} was written with a different config; resume with the same config file "
                                "or start a new run")
        want = self.model.state_dict()
        problem = _structure_problem(dict(want), ck["model"], "model")
        if problem is None:
            extra = sorted(str(k) for k in ck["model"] if k not in want)
            problem = f"field 'model.{extra[0]}' is not part of this run's model" if extra else None
        if problem is None and (nonfinite := _nonfinite_field(dict(ck["model"]), "model")) is not None:
            problem = f"field '{nonfinite}' holds NaN or infinite values"
        if problem is not None:
            raise bad(problem)
        return ck

    def _state_problem(self, st):
        """What is wrong with the loop state ``st`` read from a checkpoint, or ``None``."""
        if not isinstance(st, dict):
            return f"field 'state' must be a table, got {type(st).__name__}"
        for key in STATE_KEYS:
            if key not in st:
                return f"field 'state.{key}' is missing"
        epochs, per_epoch = self.cfg.trainer.epochs, self.steps_per_epoch
        for key, top in (("epoch", epochs), ("step_in_epoch", per_epoch), ("global_step", epochs * per_epoch)):
            v = st[key]
            if not _is_int(v) or not (0 <= v <= top):
                return f"field 'state.{key}' must be an integer from 0 to {top}, got {v!r}"[:300]
        e, s, g = st["epoch"], st["step_in_epoch"], st["global_step"]
        if g != e * per_epoch + s or (e == epochs and s):
            return (f"field 'state.global_step' = {g} does not fit epoch {e + 1}, step {s} of this run's {per_epoch} "
                    "steps per epoch (a checkpoint of a run over other data?)")
        history = st["history"]
        if not isinstance(history, list) or len(history) != e:
            return f"field 'state.history' must hold one row per finished epoch ({e}), got {history!r}"[:300]
        for i, row in enumerate(history):
            if not (isinstance(row, dict) and row.get("epoch") == i + 1
                    and all(isinstance(k, str) and (v is None or _is_number(v)) for k, v in row.items())):
                return f"field 'state.history[{i}]' is not the row of epoch {i + 1}: {row!r}"[:300]
        best, best_epoch = st["best_val_accuracy"], st["best_epoch"]
        if not _is_number(best) or not (-1 <= best <= 1):
            return f"field 'state.best_val_accuracy' must be an accuracy (or -1: none yet), got {best!r}"[:300]
        if best_epoch is not None and (not _is_int(best_epoch) or not (1 <= best_epoch <= e)):
            return f"field 'state.best_epoch' must be a finished epoch (1 to {e}) or None, got {best_epoch!r}"[:300]
        sums = st["sums"]
        if not (isinstance(sums, (list, tuple)) and len(sums) == 3 and all(_is_number(v) and math.isfinite(v)
                                                                           for v in sums)
                and 0 <= sums[1] <= sums[2]):
            return f"field 'state.sums' must be [loss sum, correct, seen] (finite, 0 <= correct <= seen), got {sums!r}"[:300]
        t = st["train_seconds"]
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            return f"field 'state.train_seconds' must be a finite number >= 0, got {t!r}"[:300]
        if not isinstance(st["started"], str):
            return f"field 'state.started' must be a date string, got {st['started']!r}"[:300]
        return None

    def _load(self, path):
        """Resume from the checkpoint ``path``: every field is checked before any is used
        (:meth:`_read_checkpoint`, :meth:`_state_problem`, the rule's state against this run's
        own), so a refused checkpoint changes nothing."""
        ck = self._read_checkpoint(path)
        rule_state, state = _from_data(ck["rule"]), _from_data(ck["state"])
        growing = {f"rule.{k}" for k in getattr(self.rule, "GROWING_STATE", ())}
        problem = _structure_problem(self.rule.state_dict(), rule_state, "rule", growing)
        if problem is None and (nonfinite := _nonfinite_field(rule_state, "rule")) is not None:
            problem = f"field '{nonfinite}' holds NaN or infinite values"
        problem = problem or _torch_state_problem(self.rule, self.rule.state_dict(), rule_state)
        problem = problem or self._state_problem(state)
        if problem is not None:
            raise TrainingError(f"{path}: {problem}")
        best = self.ckpt_dir / "best.pt"
        if os.path.lexists(best):  # a damaged best.pt is found now, not after the last epoch
            self._read_checkpoint(best)
        model_before = {k: v.clone() for k, v in self.model.state_dict().items()}
        try:
            self.model.load_state_dict(ck["model"])
            self.rule.load_state_dict(rule_state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            problem = (f"field 'rule' does not fit rule {self.cfg.trainer.rule!r} "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
        if problem is not None:
            self.model.load_state_dict(model_before)
            raise TrainingError(f"{path}: {problem}")
        self.state = state
        self._saved_step = state["global_step"]
        self.log(f"resumed from {path}: epoch {self.state['epoch'] + 1}, step {self.state['step_in_epoch']}")

    def _check_parameters(self):
        bad = _nonfinite_parameter(self.model)
        if bad is not None:
            raise TrainingError(self._diverged(self.state["global_step"],
                                               f"the parameter '{bad}' holds NaN or infinite values"))

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_as_built(self, x, y, batch_size=128, shard=False, model=None):
        """Mean accuracy over ``[robustness] val_draws`` fixed as-built stacks, or ``None``
        without robust training (and for rules that validate on their own physics, PAT).
        ``shard``: in a torchrun job each rank classifies its part of ``x`` and the correct
        counts are added over the ranks (the same counts as one process). ``model``: another
        set of layers than the one trained (default ``self.model``)."""
        model = self.model if model is None else model
        vac = getattr(self.rule, "vaccination", None)
        if vac is None or getattr(self.rule, "evaluation_forward", None) is not None or not len(y):
            return None
        if vac.budget is None and vac.known is None:  # a spectrum alone: evaluate() already measures it
            return None
        lo, hi = self.comm.span(len(y)) if shard else (0, len(y))
        corrects = []
        for stack in vac.validation_stacks(self.cfg.robustness.val_draws):
            correct = 0
            for a in range(lo, hi, batch_size):
                b = min(a + batch_size, hi)
                xb = torch.from_numpy(x[a:b]).to(self.device)
                powers, _ = vac.powers_through(model, xb, stack)
                correct += int((model.scores(powers).argmax(1).cpu().numpy() == y[a:b]).sum())
            corrects.append(correct)
        corrects = self.comm.sum(np.array(corrects, dtype=np.float64)) if shard else np.array(corrects, np.float64)
        return float(np.mean(corrects / len(y)))

    @torch.no_grad()
    def evaluate(self, x, y, batch_size=128, keep_mean_intensity=False, shard=False):
        """Loss, accuracy, predictions and (optionally) mean output intensity per class.

        ``shard``: in a torchrun job each rank evaluates its part of ``x`` and the loss sums
        and correct counts are added over the ranks (validation, N times faster); the
        predictions are then this rank's part only, and ``keep_mean_intensity`` is refused.
        A design lit by a spectrum is evaluated under it (band-summed powers) and, with
        integrating detectors, at each line alone (``line_accuracies``).
        """
        if shard and self.comm.world > 1:
            if keep_mean_intensity:
                raise TrainingError("evaluate: keep_mean_intensity needs the whole split (shard=False)")
            lo, hi = self.comm.span(len(y))
            part = self.evaluate(x[lo:hi], y[lo:hi], batch_size)
            n = hi - lo
            correct = float(np.sum(part["predictions"] == y[lo:hi]))
            loss_sum, correct, total = self.comm.sum([part["loss"] * n, correct, n])
            out = {"loss": loss_sum / max(1.0, total), "accuracy": correct / total if total else float("nan"),
                   "predictions": part["predictions"]}
            if "line_correct" in part:
                lines = self.comm.sum(np.asarray(part["line_correct"], dtype=np.float64))
                out["line_accuracies"] = [float(c / total) if total else float("nan") for c in lines]
            return out
        losses, preds = [], []
        C = self.model.design.n_classes
        mean_int = np.zeros((C,) + self.model.design.layer_shape) if keep_mean_intensity else None
        # a rule may evaluate on other optics than the model's (physics-aware training: the "physical" stack)
        forward = getattr(self.rule, "evaluation_forward", None) or self.model
        # a broadband design is evaluated under its whole spectrum (band-summed powers)
        vac = getattr(self.rule, "vaccination", None)
        spectral = vac.ideal_lines() if vac is not None and vac.spectral else None
        # with integrating detectors each line also classifies alone: count its hits (objective "each")
        per_line = spectral is not None and len(spectral.stacks) > 1 and \
            all(d.band is None for d in self.model.design.detectors)
        line_correct = np.zeros(len(spectral.stacks) if per_line else 0)
        for a in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[a:a + batch_size]).to(self.device)
            yb = torch.from_numpy(y[a:a + batch_size]).to(self.device)
            if per_line:
                parts = [through_stack(self.model, xb, st, self.cfg.trainer.workers) for st in spectral.stacks]
                for j, (p, _) in enumerate(parts):
                    line_correct[j] += int(((p @ self.model.score_matrix).argmax(1) == yb).sum())
                powers, inten = band_sum(spectral, parts)
            elif spectral is not None:
                powers, inten = through_stack(self.model, xb, spectral, self.cfg.trainer.workers)
            else:
                inten = forward(xb)
                powers = self.model.readout(inten)
            loss, logits = detector_loss(powers, inten, yb, self.model.score_matrix,
                                         self.cfg.trainer.loss, self.cfg.trainer.temperature)
            losses.append(float(loss) * len(xb))
            preds.append(logits.argmax(1).cpu().numpy())
            if keep_mean_intensity:
                inten = inten.cpu().numpy()
                for c in range(C):
                    sel = y[a:a + batch_size] == c
                    if sel.any():
                        mean_int[c] += inten[sel].sum(0)
        preds = np.concatenate(preds) if preds else np.zeros(0, np.int64)
        out = {"loss": sum(losses) / max(1, len(x)), "accuracy": float(np.mean(preds == y)) if len(y) else float("nan"),
               "predictions": preds}
        if per_line:
            out["line_correct"] = line_correct
            out["line_accuracies"] = [float(c / len(y)) if len(y) else float("nan") for c in line_correct]
        if keep_mean_intensity:
            counts = np.bincount(y, minlength=C).reshape(-1, 1, 1)
            out["mean_intensity"] = mean_int / np.maximum(counts, 1)
        return out

    # -- the loop ---------------------------------------------------------------------
    def run(self):
        cfg, st = self.cfg, self.state
        bs, epochs = cfg.trainer.batch_size, cfg.trainer.epochs
        if not is_writer():  # other ranks of a torchrun job (training.rules.distributed) stay quiet
            self.log = lambda *a, **k: None
        n = len(self.train_x)
        if n < bs:
            raise TrainingError(f"the training split has {n} images, fewer than trainer.batch_size = {bs}")
        self.log(f"training {cfg.name}: {cfg.trainer.rule}, {epochs} epochs x {self.steps_per_epoch} steps of {bs}, "
                 f"{n} train / {len(self.val_x)} validation images, grid {self.design0.layer_shape}, "
                 f"{self.design0.n_layers} layers, device {self.device}")
        steps_done_here = 0
        while st["epoch"] < epochs:
            epoch = st["epoch"]
            order = np.random.default_rng([cfg.trainer.seed, epoch]).permutation(n)
            prog = _Progress(self.steps_per_epoch * bs, f"epoch {epoch + 1}/{epochs}", done=st["step_in_epoch"] * bs,
                             **({} if is_writer() else {"stream": io.StringIO()}))
            t_epoch = time.perf_counter()
            while st["step_in_epoch"] < self.steps_per_epoch:
                s = st["step_in_epoch"]
                idx = order[s * bs:(s + 1) * bs]
                # data parallel: this rank's contiguous shard of the global batch (the same global
                # order as one process); the rule returns the global batch's mean loss
                mine = self.comm.shard(idx) if self.data_parallel else idx
                xb = torch.from_numpy(self.train_x[mine]).to(self.device)
                yb = torch.from_numpy(self.train_y[mine]).to(self.device)
                self._check_parameters()
                loss, logits = self._step(xb, yb)  # the rule's step; a divergence stops the run (see _step)
                correct = int((logits.argmax(1) == yb).sum())
                if self.data_parallel:
                    correct = int(self.comm.sum([correct])[0])
                st["sums"][0] += loss * len(idx)
                st["sums"][1] += correct
                st["sums"][2] += len(idx)
                st["step_in_epoch"] += 1
                st["global_step"] += 1
                steps_done_here += 1
                prog.update(len(idx), loss=f"{loss:.4f}", acc=f"{st['sums'][1] / st['sums'][2]:.3f}")
                if st["step_in_epoch"] % cfg.trainer.checkpoint_every == 0:
                    st["train_seconds"] += time.perf_counter() - t_epoch
                    t_epoch = time.perf_counter()
                    self._checkpoint()
                if self.stop_after_steps is not None and steps_done_here >= self.stop_after_steps:
                    prog.close()
                    return None  # simulated interruption (tests)
            prog.close()
            st["train_seconds"] += time.perf_counter() - t_epoch
            # each rank validates its part of the split; sums and counts are added (shard=True)
            val = self.evaluate(self.val_x, self.val_y, shard=True)
            row = {"epoch": epoch + 1, "train_loss": st["sums"][0] / st["sums"][2],
                   "train_accuracy": st["sums"][1] / st["sums"][2], "val_loss": val["loss"],
                   "val_accuracy": val["accuracy"], "learning_rate": getattr(self.rule, "learning_rate", None),
                   "train_seconds": st["train_seconds"]}
            # robust training picks its best epoch by the validation accuracy as built (the ideal
            # one prefers the epochs closest to a non-robust start)
            chosen = val["accuracy"]
            lowest = None
            if "line_accuracies" in val:  # a spectrum: each line alone; objective "each" picks by the worst one
                lowest = min(val["line_accuracies"])
                row["val_accuracy_lowest_line"] = lowest
                if cfg.source_spectrum.objective == "each":
                    chosen = lowest
            built = self.evaluate_as_built(self.val_x, self.val_y, shard=True)
            if built is not None:
                row["val_accuracy_as_built"] = chosen = built
            st["history"].append(row)
            self.log(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {100 * row['train_accuracy']:.2f} %"
                     f" | validation loss {val['loss']:.4f} acc {100 * val['accuracy']:.2f} %"
                     + ("" if lowest is None else f", lowest line alone {100 * lowest:.2f} %")
                     + ("" if built is None else f", as built {100 * built:.2f} %"))
            st["epoch"] += 1
            st["step_in_epoch"] = 0
            st["sums"] = [0.0, 0, 0]
            if chosen > st["best_val_accuracy"]:
                st["best_val_accuracy"] = chosen
                st["best_epoch"] = epoch + 1
                self._checkpoint("best.pt")
            self._checkpoint()
        return self.finish()

    def _redesign_gain(self) -> dict:
        """Test accuracy through the known as-built stack (``[robustness] as_built``, with the
        budget's draws on top if any) of the design trained from and of the one trained: what
        re-printing the unfrozen layers buys, in simulation."""
        start = D2NN(self.design0, self.cfg.model.modulation, workers=self.model.workers).to(self.device)
        before = self.evaluate_as_built(self.test_x, self.test_y, model=start)
        after = self.evaluate_as_built(self.test_x, self.test_y)
        r = self.cfg.robustness
        frozen = list(r.freeze_layers)
        reprint = [i + 1 for i in range(self.design0.n_layers) if i + 1 not in frozen]
        self.log(f"re-design: test accuracy through the stack as built {100 * before:.2f} % -> {100 * after:.2f} % "
                 f"({100 * (after - before):+.2f} points) by re-printing layer(s) {', '.join(map(str, reprint))}")
        return {"as_built": r.as_built, "frozen_layers": frozen, "reprinted_layers": reprint,
                "test_accuracy_as_built_before": before, "test_accuracy_as_built_after": after,
                "test_n": int(len(self.test_y))}

    def _line_accuracies(self, test) -> dict:
        """Test accuracy with the source at each line of the design's spectrum alone (a
        broadband design must still classify when its source drifts to one line), beside the
        band-summed accuracy; detectors that read one line have no per-line accuracy."""
        d, sp = self.model.design, self.cfg.source_spectrum
        out = {**d.lines.to_json(), "objective": sp.objective, "sample": sp.sample,
               "test_accuracy_band": test["accuracy"]}
        if "line_accuracies" not in test:
            return out
        per = list(test["line_accuracies"])
        out["test_accuracy_per_line"] = per
        out["test_accuracy_lowest_line"] = min(per)
        self.log("test accuracy per line: " + ", ".join(
            f"{f / 1e12:.4g} THz {100 * a:.2f} %" for f, a in zip(d.lines.frequencies_hz, per)))
        return out

    def finish(self):
        """Load the best checkpoint (by validation accuracy), test it once, write the design folder."""
        if not is_writer():
            return None
        best = self.ckpt_dir / "best.pt"
        if os.path.lexists(best):  # read and checked as a resume reads last.pt
            self.model.load_state_dict(self._read_checkpoint(best)["model"])
        test = self.evaluate(self.test_x, self.test_y, keep_mean_intensity=True)
        conf = confusion_matrix(self.test_y, test["predictions"], self.model.design.n_classes)
        chance = 1 / self.model.design.n_classes
        if len(self.test_y) >= 100 and test["accuracy"] < 1.5 * chance and not self.cfg.data.shuffle_labels:
            self.log(f"warning: the test accuracy {100 * test['accuracy']:.1f} % is at chance ({100 * chance:.0f} %): "
                     f"the design did not learn; try a lower trainer.learning_rate (now "
                     f"{self.cfg.trainer.learning_rate:g})")
        st = self.state
        metrics = {"test_accuracy": test["accuracy"], "test_n": int(len(self.test_y)),
                   "best_val_accuracy": st["best_val_accuracy"], "best_epoch": st["best_epoch"],
                   "epochs": len(st["history"]), "train_seconds": st["train_seconds"],
                   "confusion": conf.tolist(), "history": st["history"]}
        if self.cfg.robustness.as_built is not None:
            metrics["redesign"] = self._redesign_gain()
        if not self.model.design.is_monochromatic:
            metrics["spectrum"] = self._line_accuracies(test)
        provenance = {
            "config": self.cfg.to_dict(), "config_file": self.cfg.source, "dataset": self.dataset_info,
            "seed": self.cfg.trainer.seed, **split_provenance(self.cfg.data.split_seed, self.cfg.data.val_fraction),
            "code_version": diffractive.__version__,
            "python": platform.python_version(), "torch": torch.__version__, "started": st["started"],
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(self.device), "rule": self.cfg.trainer.rule}
        if "init_from" in self.design0.provenance:
            provenance["init_from"] = self.design0.provenance["init_from"]
        design = self.model.to_design().with_record(
            provenance=provenance, metrics={"test_accuracy": test["accuracy"], "test_n": int(len(self.test_y)),
                                            "best_val_accuracy": st["best_val_accuracy"], "best_epoch": st["best_epoch"]})
        save_design(design, self.out, overwrite=True)
        write_json_atomic(self.out / "metrics.json", metrics)
        buf = io.StringIO()
        if st["history"]:
            w = csv.DictWriter(buf, fieldnames=list(st["history"][0]))
            w.writeheader()
            w.writerows(st["history"])
        atomic_write_bytes(self.out / "metrics.csv", buf.getvalue().encode())
        fig_dir = self.out / "figures"
        fig_dir.mkdir(exist_ok=True)
        figures.phase_maps(design, fig_dir / "phase_maps.png")
        figures.class_outputs(design, test["mean_intensity"], fig_dir / "class_outputs.png")
        figures.confusion(conf, fig_dir / "confusion.png")
        if st["history"]:
            figures.learning_curves(st["history"], fig_dir / "learning_curves.png")
        self.log(f"test accuracy {100 * test['accuracy']:.2f} % on {len(self.test_y)} images "
                 f"(model of epoch {st['best_epoch']}, best validation "
                 f"{'as built ' if st['history'] and 'val_accuracy_as_built' in st['history'][-1] else ''}"
                 f"{100 * st['best_val_accuracy']:.2f} %)")
        self.log(f"design written to {self.out}/ (figures in {fig_dir}/)")
        return metrics
