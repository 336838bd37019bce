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
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffractive
from diffractive._io import atomic_write, atomic_write_bytes
from diffractive.design import save_design, write_json_atomic
from diffractive.errors import D2NNError, OutputExists
from diffractive.measured.stats import confusion_matrix

from . import figures
from .config import Config
from .datasets import check_classes, split_provenance
from .model import D2NN, design_from_config, detector_loss
from .rules.common import lr_factor
from .robust import hold_block_constant, smoothness_penalty, vaccination_from_config
from .rules.distributed import is_writer


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
            return obj["__ndarray__"].numpy()
        return {k: _from_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_data(v) for v in obj)
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
        self.evaluations = 0  # single-image forward simulations so far (rules that subclass count theirs)
        # [robustness]: every step through a fresh as-built stack (None: the ideal stack), and
        # what helps robustness by construction (training/robust.py)
        self.vaccination = vaccination_from_config(model.design, cfg)
        self.smoothness = cfg.robustness.smoothness
        if cfg.robustness.feature_px > 1:
            hold_block_constant(model.phase, cfg.robustness.feature_px)

    def powers(self, images):
        """``(detector powers, intensity)`` of this step's forward pass: the ideal stack, or
        with ``[robustness]`` a stack drawn for this step (the scheduler counts the steps, so
        a resumed run draws the same stacks)."""
        if self.vaccination is not None:
            return self.vaccination.powers(self.model, images, self.scheduler.last_epoch)
        intensity = self.model(images)
        return self.model.readout(intensity), intensity

    def loss(self, images, labels):
        powers, intensity = self.powers(images)
        loss, logits = detector_loss(powers, intensity, labels, self.model.score_matrix, self.cfg.trainer.loss,
                                     self.cfg.trainer.temperature)
        if self.smoothness:
            loss = loss + self.smoothness * smoothness_penalty(self.model.phase)
        return loss, logits

    def step(self, images, labels):
        """One update; returns ``(loss, logits)`` measured before the update."""
        check_parameters(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.evaluations += len(images)
        loss, logits = self.loss(images, labels)
        check_finite(loss, self.cfg.trainer.max_loss)
        loss.backward()
        for p in self.model.parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise TrainingError("the gradient holds NaN or infinite values; lower trainer.learning_rate")
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), logits.detach()

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
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingError(f"the parameter '{name}' holds NaN or infinite values; the run stops and the "
                                "last good checkpoint is kept; lower trainer.learning_rate")


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
        self.device = torch.device(device)
        self.log = log
        self.stop_after_steps = stop_after_steps
        last = self.ckpt_dir / "last.pt"
        if resume and not last.exists():
            raise TrainingError(f"resume=True: no checkpoint at {last}")
        if not resume and self.out.exists() and any(self.out.iterdir()) and not force:
            raise OutputExists(self.out, "is not empty", {"resume": "continue the run there", "force": "start over"})
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
        self.model = D2NN(self.design0, cfg.model.modulation, workers=cfg.trainer.workers).to(self.device)
        bs = cfg.trainer.batch_size
        self.steps_per_epoch = max(1, len(self.train_x) // bs)
        self.rule = make_rule(self.model, cfg, self.steps_per_epoch)
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [], "best_val_accuracy": -1.0,
                      "best_epoch": None, "sums": [0.0, 0, 0], "train_seconds": 0.0,
                      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if resume:
            self._load(last)

    # -- checkpoints ------------------------------------------------------------------
    def _checkpoint(self, name="last.pt"):
        if not is_writer():
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = {"model": self.model.state_dict(), "rule": _as_data(self.rule.state_dict()),
                      "state": _as_data(self.state), "config": self.cfg.to_dict()}
        # temporary file, fsync, rename; removed again if the write fails (a SIGKILL leaves at
        # most a stray temporary beside the last complete checkpoint, never a torn one)
        atomic_write(self.ckpt_dir / name, lambda f: torch.save(checkpoint, f))

    def _load(self, path):
        # checkpoints are data, never code: tensors and plain containers only
        try:
            ck = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, EOFError, ...)
            raise TrainingError(f"{path}: not a readable d2nn checkpoint ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]})") from None
        ck["rule"], ck["state"] = _from_data(ck["rule"]), _from_data(ck["state"])
        if ck["config"] != self.cfg.to_dict():
            raise TrainingError(f"{path} was written with a different config; resume with the same config file "
                                "or start a new run")
        self.model.load_state_dict(ck["model"])
        self.rule.load_state_dict(ck["rule"])
        self.state = ck["state"]
        self.log(f"resumed from {path}: epoch {self.state['epoch'] + 1}, step {self.state['step_in_epoch']}")

    def _check_parameters(self):
        check_parameters(self.model)

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_as_built(self, x, y, batch_size=128):
        """Mean accuracy over ``[robustness] val_draws`` fixed as-built stacks, or ``None``
        without robust training (and for rules that validate on their own physics, PAT)."""
        vac = getattr(self.rule, "vaccination", None)
        if vac is None or getattr(self.rule, "evaluation_forward", None) is not None or not len(y):
            return None
        accs = []
        for stack in vac.validation_stacks(self.cfg.robustness.val_draws):
            correct = 0
            for a in range(0, len(x), batch_size):
                xb = torch.from_numpy(x[a:a + batch_size]).to(self.device)
                powers, _ = vac.powers_through(self.model, xb, stack)
                correct += int((self.model.scores(powers).argmax(1).cpu().numpy() == y[a:a + batch_size]).sum())
            accs.append(correct / len(y))
        return float(np.mean(accs))

    @torch.no_grad()
    def evaluate(self, x, y, batch_size=128, keep_mean_intensity=False):
        """Loss, accuracy, predictions and (optionally) mean output intensity per class."""
        losses, preds = [], []
        C = self.model.design.n_classes
        mean_int = np.zeros((C,) + self.model.design.layer_shape) if keep_mean_intensity else None
        # a rule may evaluate on other optics than the model's (physics-aware training: the "physical" stack)
        forward = getattr(self.rule, "evaluation_forward", None) or self.model
        for a in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[a:a + batch_size]).to(self.device)
            yb = torch.from_numpy(y[a:a + batch_size]).to(self.device)
            inten = forward(xb)
            loss, logits = detector_loss(self.model.readout(inten), inten, yb, self.model.score_matrix,
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
                xb = torch.from_numpy(self.train_x[idx]).to(self.device)
                yb = torch.from_numpy(self.train_y[idx]).to(self.device)
                self._check_parameters()
                loss, logits = self.rule.step(xb, yb)
                st["sums"][0] += loss * len(idx)
                st["sums"][1] += int((logits.argmax(1) == yb).sum())
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
            val = self.evaluate(self.val_x, self.val_y)
            row = {"epoch": epoch + 1, "train_loss": st["sums"][0] / st["sums"][2],
                   "train_accuracy": st["sums"][1] / st["sums"][2], "val_loss": val["loss"],
                   "val_accuracy": val["accuracy"], "learning_rate": getattr(self.rule, "learning_rate", None),
                   "train_seconds": st["train_seconds"]}
            # robust training picks its best epoch by the validation accuracy as built (the ideal
            # one prefers the epochs closest to a non-robust start)
            chosen = val["accuracy"]
            built = self.evaluate_as_built(self.val_x, self.val_y)
            if built is not None:
                row["val_accuracy_as_built"] = chosen = built
            st["history"].append(row)
            self.log(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {100 * row['train_accuracy']:.2f} %"
                     f" | validation loss {val['loss']:.4f} acc {100 * val['accuracy']:.2f} %"
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

    def finish(self):
        """Load the best checkpoint (by validation accuracy), test it once, write the design folder."""
        if not is_writer():
            return None
        best = self.ckpt_dir / "best.pt"
        if best.exists():
            self.model.load_state_dict(torch.load(best, map_location=self.device, weights_only=True)["model"])
        test = self.evaluate(self.test_x, self.test_y, keep_mean_intensity=True)
        conf = confusion_matrix(self.test_y, test["predictions"], self.model.design.n_classes)
        st = self.state
        metrics = {"test_accuracy": test["accuracy"], "test_n": int(len(self.test_y)),
                   "best_val_accuracy": st["best_val_accuracy"], "best_epoch": st["best_epoch"],
                   "epochs": len(st["history"]), "train_seconds": st["train_seconds"],
                   "confusion": conf.tolist(), "history": st["history"]}
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
