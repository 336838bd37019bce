"""Training throughput at the Lin geometry: the bridge vs a plain eager torch.fft network.

One run measures, each in its own subprocess (so peak memory is per implementation):

* ``bridge``: training/model.D2NN (xp core through the autograd bridge, pyFFTW, one
  sample per worker thread, pruned transforms) + cross-entropy + Adam;
* ``torch``:  training/reference.TorchFFTStack (torch.fft.fft2 on the padded window,
  torch autograd) + the same loss + Adam;

under the default allocator and with tcmalloc preloaded (libtcmalloc-minimal4), and
prints samples/s, peak resident memory and the ratios. Geometry: 0.75 mm, 0.4 mm pitch,
5 phase-only layers of 200 x 200, 30 mm gaps (6 hops), batch 32, complex64.

    python benchmarks/train_step.py [--window 400] [--steps 10] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def training_step(model, opt, images, labels, intensity=None):
    """One backprop step: ``intensity()`` (default ``model(images)``), cross-entropy on the
    detector powers, backward, ``opt.step()``. Shared by the training benchmarks."""
    from training.model import detector_loss  # noqa: PLC0415

    opt.zero_grad(set_to_none=True)
    inten = model(images) if intensity is None else intensity()
    loss, _ = detector_loss(model.readout(inten), inten, labels, model.score_matrix)
    loss.backward()
    opt.step()


def worker(impl: str, window: int, steps: int, batch: int) -> dict:
    """Time ``steps`` training steps of ``impl`` ("bridge" or "torch") at the Lin geometry with a
    ``window`` x ``window`` FFT window; returns samples/s, the median step (s) and peak RSS (MB)."""
    import numpy as np
    import torch

    from diffractive.design import make_design
    from training.model import D2NN
    from training.reference import TorchFFTStack

    design = make_design(layer_shape=(200, 200), n_layers=5, spacing_m=30e-3, window_shape=(window, window))
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((batch, 28, 28), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, 10, batch))
    model = D2NN(design)
    if impl == "bridge":
        def intensity():
            return model(images)
    else:
        ref = TorchFFTStack(design.geometry)
        fields = model.encode(images)  # same input fields, made once

        def intensity():
            return ref(model.transmissions(), fields)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        training_step(model, opt, images, labels, intensity)

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    return {"impl": impl, "samples_per_s": batch / t, "step_s": t,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads()}


def main():
    """Run :func:`worker` for both implementations in subprocesses (per allocator) and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=400, help="padded FFT window (default 400 = exact 2x)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--worker", choices=["bridge", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.window, args.steps, args.batch)))
        return
    root = Path(__file__).resolve().parents[1]
    results = {}
    allocators = [("default", None)] + ([("tcmalloc", TCMALLOC)] if os.path.exists(TCMALLOC) else [])
    if len(allocators) == 1:
        print(f"note: {TCMALLOC} not found (apt-get install libtcmalloc-minimal4); default allocator only")
    for alloc, preload in allocators:
        for impl in ("bridge", "torch"):
            env = dict(os.environ, PYTHONPATH=str(root))
            if preload:
                env["LD_PRELOAD"] = preload
            out = subprocess.run([sys.executable, __file__, "--worker", impl, "--window", str(args.window),
                                  "--steps", str(args.steps), "--batch", str(args.batch)],
                                 env=env, capture_output=True, text=True, check=True)
            results[(alloc, impl)] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"Lin geometry, 200x200 x 5 layers, window {args.window}, batch {args.batch}, complex64, "
          f"{os.cpu_count()} CPUs, median of {args.steps} steps")
    print(f"{'allocator':<10} {'implementation':<16} {'samples/s':>10} {'peak RSS (MB)':>14}")
    for (alloc, impl), r in results.items():
        print(f"{alloc:<10} {impl:<16} {r['samples_per_s']:>10.1f} {r['peak_rss_mb']:>14.0f}")
    base = results[("default", "torch")]["samples_per_s"]
    for alloc, _ in allocators:
        b = results[(alloc, "bridge")]["samples_per_s"]
        print(f"bridge / plain torch (default allocator) under {alloc}: {b / base:.2f}x")


if __name__ == "__main__":
    main()
