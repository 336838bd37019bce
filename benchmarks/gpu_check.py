"""One-shot GPU check: a CUDA training step against the CPU, and GPU throughput at the Lin geometry.

Run by ``benchmarks/gpu_check.sh`` (which installs what the GPU machine lacks and runs the
``gpu`` tests first); it can also run alone. Three parts, each printed as it finishes:

1. **Gradient agreement.** One training step (forward through the stack, cross-entropy on
   the detector powers, backward) of the same design, phases and batch on the CPU and on
   CUDA. The phase gradients must agree to ``--tol`` (default 1e-4) in relative 2-norm,
   ``|g_cuda - g_cpu| / |g_cpu|``; both run in complex64, so the difference is the
   rounding of two FFT libraries (cuFFT, FFTW), ~1e-6 expected. Exit status 1 if not.
2. **Training samples/s** at the Lin geometry (0.75 mm, 0.4 mm pitch, 5 phase-only
   layers of 200 x 200, 30 mm gaps, 400 x 400 window) for each ``--batches`` size: the
   median of ``--steps`` timed steps (forward + backward + Adam) after two warm-ups, with
   ``torch.cuda.synchronize()`` around each step.
3. **simulate images/s**: :func:`diffractive.simulate.simulate` on CuPy (``backend="cupy"``),
   no gradients, batch 256.

Images are random (28 x 28 in [0, 1]): the throughput does not depend on them, and the
GPU machine need not hold a dataset. ``--device cpu`` runs parts 2 and 3 on the CPU
(NumPy) so the script itself can be checked on a machine without a GPU.

    python3 benchmarks/gpu_check.py [--device cuda] [--batches 32,128,512] [--steps 20] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffractive.design import make_design
from training.model import D2NN, detector_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import training_step  # noqa: E402

LIN = dict(layer_shape=(200, 200), n_layers=5, spacing_m=30e-3, window_shape=(400, 400))


def _design(seed=0):
    rng = np.random.default_rng(seed)
    d = make_design(**LIN)
    return d.with_phases(rng.uniform(0, 2 * np.pi, d.phases.shape).astype(np.float32))


def _batch(n, seed=1):
    rng = np.random.default_rng(seed)
    return (torch.from_numpy(rng.random((n, 28, 28), dtype=np.float32)),
            torch.from_numpy(rng.integers(0, 10, n)))


def phase_gradient(design, images, labels, device) -> np.ndarray:
    """d(cross-entropy)/d(phases) (L, ny, nx) of one batch on ``device``, as a float64 host array."""
    model = D2NN(design).to(device)
    inten = model(images.to(device))
    loss, _ = detector_loss(model.readout(inten), inten, labels.to(device), model.score_matrix)
    loss.backward()
    return model.phase.grad.detach().cpu().double().numpy()


def gradient_agreement(device, tol, batch=32) -> dict:
    design = _design()
    images, labels = _batch(batch)
    g_cpu = phase_gradient(design, images, labels, "cpu")
    g_dev = phase_gradient(design, images, labels, device)
    rel = float(np.linalg.norm(g_dev - g_cpu) / np.linalg.norm(g_cpu))
    return {"batch": batch, "relative_difference": rel, "tolerance": tol, "ok": rel <= tol}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def training_rate(device, batch, steps) -> dict:
    """Median training samples/s (forward + backward + Adam) at the Lin geometry."""
    model = D2NN(_design()).to(device)
    images, labels = _batch(batch)
    images, labels = images.to(device), labels.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        training_step(model, opt, images, labels)

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    out = {"batch": batch, "samples_per_s": batch / t, "step_s": t}
    if torch.device(device).type == "cuda":
        out["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    return out


def simulate_rate(device, n_images=2048, batch=256) -> dict:
    """images/s of :func:`diffractive.simulate.simulate` (no gradients) on CuPy or NumPy."""
    from diffractive.simulate import simulate  # noqa: PLC0415

    backend = "cupy" if torch.device(device).type == "cuda" else "numpy"
    design = _design()
    images = np.random.default_rng(2).random((n_images, 28, 28), dtype=np.float32)
    simulate(design, images[:batch], batch_size=batch, backend=backend)  # plans, transfer functions
    if backend == "cupy":
        import cupy  # noqa: PLC0415

        cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    simulate(design, images, batch_size=batch, backend=backend)
    if backend == "cupy":
        cupy.cuda.Device().synchronize()
    t = time.perf_counter() - t0
    return {"backend": backend, "batch": batch, "images": n_images, "images_per_s": n_images / t}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the script)")
    ap.add_argument("--batches", default="32,128,512", help="training batch sizes (comma-separated)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per batch size")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative gradient tolerance CUDA vs CPU")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    results = {"device": args.device, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    print(f"gpu_check: torch {torch.__version__}, device {results['gpu'] or args.device}", flush=True)
    if args.device != "cpu":
        g = gradient_agreement(args.device, args.tol)
        results["gradient"] = g
        print(f"1. gradient CUDA vs CPU (batch {g['batch']}): relative difference {g['relative_difference']:.2e} "
              f"(tolerance {g['tolerance']:.0e}) -> {'OK' if g['ok'] else 'FAIL'}", flush=True)
    results["training"] = []
    for b in (int(s) for s in args.batches.split(",")):
        r = training_rate(args.device, b, args.steps)
        results["training"].append(r)
        mem = f", peak GPU memory {r['peak_gpu_memory_mb']:.0f} MB" if "peak_gpu_memory_mb" in r else ""
        print(f"2. training, Lin geometry, batch {b}: {r['samples_per_s']:.0f} samples/s "
              f"(median step {r['step_s'] * 1e3:.1f} ms of {args.steps}){mem}", flush=True)
    s = simulate_rate(args.device)
    results["simulate"] = s
    print(f"3. simulate ({s['backend']}, batch {s['batch']}): {s['images_per_s']:.0f} images/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if results.get("gradient", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
