"""How training cost grows with layer size and number of layers, beside the FFT roofline.

For each layer size N x N (default 100, 200, 400, 800) and number of layers L (default 1, 5,
10), in a fresh subprocess (so peak memory is per configuration), at 0.75 mm, 0.4 mm pitch,
30 mm gaps and the exact 2x window (2N x 2N):

* **step**: the median of ``--steps`` backprop training steps (training/model.D2NN, forward
  + backward + Adam, cross-entropy on 10 Lin-layout detectors), batch ``--batch``, after
  one warm-up step, on all the cores this process may use (one sample per worker thread);
* **FFTs alone**: the pruned FFT pairs the step cannot avoid, timed in the same process on
  the same threads: ``(L + 1)`` hops forward and ``L`` adjoint hops back (the gradient of
  layer 1 needs the field back at layer 1, not at the input) per sample, each hop one
  pruned forward + inverse transform pair of the 2N x 2N window (benchmarks/propagation.py's
  FFTOnly, single-threaded FFTW plans);
* **peak memory**: the subprocess's peak resident set, and the part above what it held
  after importing torch and d2nn (the cost of the configuration itself).

It prints ms per training sample, the step / FFT-alone ratio (1.0 would be the roofline of
this FFT library) and the memory, as a Markdown table ready for benchmarks/README.md.

    python3 benchmarks/scaling.py [--sizes 100,200,400,800] [--layers 1,5,10] [--batch 8] [--steps 3]

Run by hand; other load on the machine shows up in the absolute times, much less in the
ratios (both are measured in the same process, interleaved).
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

ROOT = Path(__file__).resolve().parents[1]


def worker(size: int, layers: int, batch: int, steps: int) -> dict:
    """Time ``steps`` training steps and the unavoidable FFTs of one configuration; see the module doc."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from propagation import FFTOnly  # noqa: PLC0415
    from train_step import training_step  # noqa: PLC0415

    from diffractive.backend import cpu_workers  # noqa: PLC0415
    from diffractive.convolution import run_chunks  # noqa: PLC0415
    from diffractive.design import make_design  # noqa: PLC0415
    from training.model import D2NN  # noqa: PLC0415

    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = cpu_workers()
    design = make_design(layer_shape=(size, size), n_layers=layers, spacing_m=30e-3,
                         window_shape=(2 * size, 2 * size), seed=0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((batch, 28, 28), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, 10, batch))
    model = D2NN(design, workers=workers)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        training_step(model, opt, images, labels)

    pairs = 2 * layers + 1
    fields = (rng.standard_normal((batch, size, size)) + 1j * rng.standard_normal((batch, size, size))
              ).astype(np.complex64)
    spaces = {}

    def ffts():
        def work(a, b):
            import threading  # noqa: PLC0415

            ws = spaces.get(threading.get_ident())
            if ws is None:
                ws = spaces[threading.get_ident()] = FFTOnly((size, size), (2 * size, 2 * size), np.complex64)
            for i in range(a, b):
                ws.load(fields[i])
                ws.pruned(pairs)
        run_chunks(work, batch, workers)

    step()
    ffts()  # warm-up: plans, transfer functions, first allocations
    t_step, t_fft = [], []
    for _ in range(steps):  # interleaved, so drifts in the machine's load hit both alike
        t0 = time.perf_counter()
        step()
        t_step.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ffts()
        t_fft.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = lambda v: float(np.median(v))  # noqa: E731
    return {"size": size, "layers": layers, "batch": batch, "workers": workers,
            "ms_per_sample": med(t_step) * 1e3 / batch, "fft_ms_per_sample": med(t_fft) * 1e3 / batch,
            "ratio": med(t_step) / med(t_fft), "peak_rss_mb": peak_mb, "config_mb": peak_mb - base_rss_mb}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,200,400,800", help="layer sizes N (N x N pixels), comma-separated")
    ap.add_argument("--layers", default="1,5,10", help="numbers of layers, comma-separated")
    ap.add_argument("--batch", type=int, default=8, help="training batch (default 8)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration; the median is reported")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.batch, args.steps)))
        return 0
    rows = []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"| layer | layers | ms / sample | FFTs alone (ms / sample) | step / FFTs | peak memory (MB) | "
          f"of which this configuration (MB) |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for layers in (int(s) for s in args.layers.split(",")):
            out = subprocess.run([sys.executable, __file__, "--worker", str(size), str(layers),
                                  "--batch", str(args.batch), "--steps", str(args.steps)],
                                 env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {size}² | {layers} | failed: {out.stderr.strip().splitlines()[-1]} | | | | |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"| {size}² | {layers} | {r['ms_per_sample']:.1f} | {r['fft_ms_per_sample']:.1f} | "
                  f"{r['ratio']:.2f}x | {r['peak_rss_mb']:.0f} | {r['config_mb']:.0f} |", flush=True)
    if rows:
        print(f"\nbatch {args.batch}, {rows[0]['workers']} worker thread(s), median of {args.steps} steps; "
              f"{os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
