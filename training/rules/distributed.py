"""Training across processes with ``torch.distributed`` (a ``torchrun`` job).

Two schemes, chosen by the rule (:data:`SCHEMES`):

*data parallel* (``backprop``, ``pat``): every rank takes its contiguous shard of each
global batch (``trainer.batch_size`` is the global batch; each of the N ranks takes
``batch_size / N`` of it, so results do not depend on N), computes the gradient of its
shard's mean loss, and one ``all_reduce`` (float64) averages the gradients: with equal
shards the average is the gradient of the global batch's mean loss, the one a single
process computes, up to the order of the float sums. Every rank then applies the same Adam
step to the same averaged gradient, so the ranks' parameters stay bit for bit equal. An
explicit all-reduce and not ``DistributedDataParallel``: the model has one or two parameter
tensors whose gradient the bridge returns in one piece at the end of the backward pass, so
DDP's bucketing and overlap have nothing to overlap, and DDP's forward hooks would not see
the forward paths that do not go through ``model.forward`` (robust training's as-built
stacks, physics-aware training's mismatched physics).

*population* (``es``, ``ga``): the members of a population are split over the processes,
member ``j`` evaluated by rank ``j % world_size``. The processes exchange nothing but the
fitness values (and the centre's logits), one ``all_reduce`` of a small float64 vector per
step: every slot is written by exactly one rank and zero elsewhere, so the sum is exact.
Perturbations are never sent — every rank regenerates them from their seeds — and every
rank then applies the same deterministic update, so all ranks hold the same parameters, bit
for bit the parameters of a one-process run with the same seeds.

Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`init_from_env`
opens the process group: gloo for CPU training, NCCL when the model lives on a GPU.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

# how each rule runs across processes; a rule not named here runs in one process only
SCHEMES = {"backprop": "data", "pat": "data", "es": "population", "ga": "population"}


def init_from_env(device="cpu") -> bool:
    """Join the ``torchrun`` process group if the environment describes one; True if joined."""
    if not dist.is_available() or dist.is_initialized():
        return dist.is_available() and dist.is_initialized()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        # one GPU per process: torch's and CuPy's (the physics core's) current device
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        try:
            import cupy  # noqa: PLC0415

            cupy.cuda.Device(local).use()
        except ImportError:  # pragma: no cover - the CLI refuses --device cuda without CuPy
            pass
    dist.init_process_group(backend)
    return True


def is_writer() -> bool:
    """True in a single process, or on rank 0 of a process group (the one that writes files)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def per_process_workers(workers):
    """CPU threads for this process's model (the physics core): ``workers`` if set, else
    this process's share of the machine's cores when ``torchrun`` starts several processes
    on it (``LOCAL_WORLD_SIZE``), so that they do not oversubscribe the cores; ``None`` (the
    cores this process may use, the one-process default) otherwise, and also when the
    process has been pinned to fewer cores than the machine has (its affinity is its share).
    The thread count changes only the order of the per-thread sums of a batch's gradient
    (float rounding, as the number of processes does), and the config does not record it,
    so a run resumes with another number of processes under the same config."""
    if workers is not None:
        return workers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local <= 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    from diffractive.backend import cpu_workers  # noqa: PLC0415

    mine, machine = cpu_workers(), os.cpu_count() or 1
    if mine < machine:
        return None
    return max(1, machine // local)


class Comm:
    """Rank, world size and the few collectives training needs (sums in float64)."""

    def __init__(self, device="cpu"):
        active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if active else 0
        self.world = dist.get_world_size() if active else 1
        self.device = torch.device(device) if active and dist.get_backend() == "nccl" else torch.device("cpu")

    def mine(self, j: int) -> bool:
        """Whether population member ``j`` is evaluated by this process."""
        return j % self.world == self.rank

    def sum(self, values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=np.float64)
        if self.world == 1:
            return values
        t = torch.from_numpy(values.copy()).to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    # -- data parallel -----------------------------------------------------------------
    def shard(self, idx):
        """This rank's contiguous ``len(idx) / world`` of a global batch ``idx`` (the caller
        has checked that the batch divides evenly: equal shards make the average of the
        shards' mean gradients the mean gradient of the batch)."""
        b = len(idx) // self.world
        return idx[self.rank * b:(self.rank + 1) * b]

    def span(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's part of ``n`` items (evaluation: parts differ by
        at most one item; counts and sums are added over the ranks, so sizes need not match)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def mean(self, value) -> float:
        """The mean over the ranks of a scalar (float64): the global batch's mean loss from the
        shards' means. NaN or infinite on any rank makes it NaN or infinite on every rank, so
        a divergence stops all of them at the same step."""
        value = float(value.detach()) if hasattr(value, "detach") else float(value)
        if self.world == 1:
            return value
        return float(self.sum(np.array([value]))[0] / self.world)

    def average_gradients(self, parameters) -> None:
        """Replace every parameter's gradient by its mean over the ranks: one all-reduce of
        all gradients, summed in float64 (exact for two ranks) and rounded once."""
        if self.world == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.detach().reshape(-1).to(self.device, torch.float64) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        a = 0
        for g in grads:
            g.copy_(flat[a:a + g.numel()].view(g.shape).to(g.device, g.dtype))
            a += g.numel()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable object; tensors should be on the CPU)."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]
