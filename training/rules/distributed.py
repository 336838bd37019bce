"""Population evaluation across processes with ``torch.distributed``.

ES and GA split the members of a population over the processes of a ``torchrun`` job:
member ``j`` is evaluated by rank ``j % world_size``. The processes exchange nothing but
the fitness values (and the centre's logits), one ``all_reduce`` of a small float64 vector
per step: every slot is written by exactly one rank and zero elsewhere, so the sum is
exact. Perturbations are never sent — every rank regenerates them from their seeds — and
every rank then applies the same deterministic update, so all ranks hold the same
parameters, bit for bit the parameters of a one-process run with the same seeds.

Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`init_from_env`
opens the process group: gloo for CPU training, NCCL when the model lives on a GPU.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def init_from_env(device="cpu") -> bool:
    """Join the ``torchrun`` process group if the environment describes one; True if joined."""
    if not dist.is_available() or dist.is_initialized():
        return dist.is_available() and dist.is_initialized()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def is_writer() -> bool:
    """True in a single process, or on rank 0 of a process group (the one that writes files)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class Comm:
    """Rank, world size and an exact sum of float64 vectors over the processes."""

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
