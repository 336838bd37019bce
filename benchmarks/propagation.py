"""Whole-stack propagation against its FFTs alone, at the Lin et al. (2018) geometry.

Geometry: wavelength 0.75 mm (0.4 THz), 0.4 mm pitch, 5 random phase layers of 200 x 200
pixels, 30 mm gaps: 6 hops from the input plane to the output plane, each in a padded
window (default 400 x 400, ``--window``). A batch (default 32) of complex64 fields.

In one run, on the same input arrays and with the same threading (``--workers`` threads,
each taking a contiguous share of the batch and transforming one sample at a time on
single-threaded FFTW plans, as diffractive.stack does), it times

* ``stack``:  ``diffractive.stack.forward`` (load, 6 x [FFTs + multiply by H], 5 layer
  multiplications, crops, output copy: everything a forward pass costs);
* ``full``:   the FFTs alone, a full 2-D forward + inverse FFT of the padded window per hop
  (pyFFTW plans, in place, no normalisation);
* ``pruned``: the FFTs alone, the pruned 1-D transforms that the Workspace runs per hop
  (forward: columns over the nx data columns, then all rows; inverse: all rows, then the nx
  columns that are read back).

It prints the median of ``--repeats`` timed runs (the three timed round-robin) after
``--warmup`` untimed ones of each, samples/s and the ratios. Target (issue 2): stack <= 1.25 x its FFTs alone, where "its FFTs" are the
pruned transforms it actually runs; stack / full compares with plain 2-D FFTs.

    python benchmarks/propagation.py [--batch 32] [--window 400] [--repeats 7] [--workers N]

Run by hand (not by pytest); other load on the machine shows up in the numbers. To see the
effect of the allocator, run it again with
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4``; for the planner (both the
stack and the FFT-only loops follow it), with ``D2NN_FFTW_PLANNER=estimate``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffractive.backend import cpu_workers  # noqa: E402
from diffractive.convolution import HAVE_PYFFTW, fft_backend_name, fftw_planner, run_chunks  # noqa: E402
from diffractive.layers import transmission  # noqa: E402
from diffractive.stack import StackGeometry, forward, shared_engine  # noqa: E402

WAVELENGTH, PITCH, LAYER, GAP, N_LAYERS = 0.75e-3, 0.4e-3, (200, 200), 30e-3, 5
# the planner the stack's workspaces use ($D2NN_FFTW_PLANNER, diffractive.convolution)
FLAGS = ("FFTW_" + fftw_planner().upper(), "FFTW_DESTROY_INPUT")
# The FFT-only loops never multiply by H (whose 1/(NY*NX) keeps values bounded), so each
# unnormalised forward + inverse pair scales the data by NY*NX: 6 hops of a 1024^2 window
# are a factor 1e36. Starting from 1e-18 keeps complex64 finite and far from denormals.
FFT_ONLY_SCALE = 1e-18


class FFTOnly:
    """One thread's padded (1, NY, NX) buffer and its FFTW plans (single-threaded)."""

    def __init__(self, field_shape, window_shape, dtype):
        import pyfftw

        ny, nx = field_shape
        self.ny, self.nx = ny, nx
        self.buf = pyfftw.empty_aligned((1,) + tuple(window_shape), dtype=dtype)
        self.buf[...] = 0
        b, cols = self.buf, self.buf[:, :, :nx]
        kw = dict(flags=FLAGS, threads=1)
        self.full_fwd = pyfftw.FFTW(b, b, axes=(1, 2), direction="FFTW_FORWARD", **kw)
        self.full_inv = pyfftw.FFTW(b, b, axes=(1, 2), direction="FFTW_BACKWARD", normalise_idft=False, **kw)
        self.fwd_cols = pyfftw.FFTW(cols, cols, axes=(1,), direction="FFTW_FORWARD", **kw)
        self.fwd_rows = pyfftw.FFTW(b, b, axes=(2,), direction="FFTW_FORWARD", **kw)
        self.inv_rows = pyfftw.FFTW(b, b, axes=(2,), direction="FFTW_BACKWARD", normalise_idft=False, **kw)
        self.inv_cols = pyfftw.FFTW(cols, cols, axes=(1,), direction="FFTW_BACKWARD", normalise_idft=False, **kw)

    def load(self, field):
        """Fresh data for each sample (as the stack loads it: corner + zeroed margin)."""
        self.buf[0, : self.ny, self.nx:] = 0
        self.buf[0, self.ny:, :] = 0
        np.multiply(field, FFT_ONLY_SCALE, out=self.buf[0, : self.ny, : self.nx])

    def full(self, hops):
        """``hops`` full 2-D forward + inverse FFTs of the (1, NY, NX) buffer, in place, unnormalised."""
        for _ in range(hops):
            self.full_fwd.execute()
            self.full_inv.execute()

    def pruned(self, hops):
        """``hops`` pruned transform pairs as the Workspace runs them (nx data columns, all rows), in place."""
        for _ in range(hops):
            self.fwd_cols.execute()
            self.fwd_rows.execute()
            self.inv_rows.execute()
            self.inv_cols.execute()


def interleaved_times(fns, warmup, repeats):
    """Warm each callable up, then time them round-robin (so slow drifts in the machine's
    load hit all of them alike); returns {name: (median, min, max)} in seconds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(v), min(v), max(v)) for name, v in times.items()}


def main(argv=None):
    """Time ``stack.forward`` and the FFT-only loops on the same batch and print the medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="fields per batch (default 32)")
    ap.add_argument("--window", type=int, default=400, help="padded FFT window, square (default 400 = 2x)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs; the median is reported (default 7)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--workers", type=int, default=None,
                    help=f"threads (default: all cores this process may use, here {cpu_workers()})")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not HAVE_PYFFTW:
        ap.error("pyFFTW is not installed: the FFT-only baseline needs it (pip install pyFFTW)")
    if args.window < LAYER[0]:
        ap.error(f"--window must be at least the layer size {LAYER[0]}")
    workers = cpu_workers() if args.workers is None else max(1, args.workers)
    dtype = np.complex64
    hops = N_LAYERS + 1

    geometry = StackGeometry(LAYER, PITCH, WAVELENGTH, (GAP,) * hops, window_shape=(args.window, args.window))
    geometry.check("warn")  # a window below ~400 loses bandwidth: say so, but still time it
    rng = np.random.default_rng(args.seed)
    t = transmission(rng.uniform(0, 2 * np.pi, (N_LAYERS,) + LAYER).astype(np.float32))
    fields = (rng.standard_normal((args.batch,) + LAYER) + 1j * rng.standard_normal((args.batch,) + LAYER)
              ).astype(dtype)
    t0 = time.perf_counter()
    shared_engine(geometry, dtype)  # transfer functions are made once per geometry; not part of the timing
    setup_s = time.perf_counter() - t0

    def stack():
        forward(geometry, t, fields, workers=workers)

    fft_state = {}

    def fft_only(kind):
        def work(a, b):
            ws = fft_state.get(id_thread())
            if ws is None:
                ws = fft_state[id_thread()] = FFTOnly(LAYER, geometry.window_shape, dtype)
            for i in range(a, b):
                ws.load(fields[i])
                getattr(ws, kind)(hops)
        return lambda: run_chunks(work, args.batch, workers)

    res = interleaved_times({"stack": stack, "full": fft_only("full"), "pruned": fft_only("pruned")},
                            args.warmup, args.repeats)

    N = geometry.window_shape
    print(f"Lin geometry: {LAYER[0]}x{LAYER[1]} layers x {N_LAYERS}, {hops} hops of {GAP * 1e3:g} mm, window "
          f"{N[0]}x{N[1]}, batch {args.batch}, complex64")
    print(f"FFT: {fft_backend_name()}, flags {'+'.join(FLAGS)}, {workers} worker thread(s) x single-threaded plans; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}, "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '(none)')}")
    print(f"transfer functions (once): {setup_s:.2f} s; FFTW plans are made in the warm-up; "
          f"median of {args.repeats} runs, interleaved, after {args.warmup} warm-up each")
    print(f"{'':<22}{'batch (ms)':>11}{'min':>9}{'max':>9}{'per hop/sample (ms)':>21}{'samples/s':>11}")
    for name, (med, lo, hi) in res.items():
        label = {"stack": "stack.forward",
                 "full": "FFTs alone, full 2-D", "pruned": "FFTs alone, pruned"}[name]
        print(f"{label:<22}{med * 1e3:>11.1f}{lo * 1e3:>9.1f}{hi * 1e3:>9.1f}"
              f"{med * 1e3 / (hops * args.batch):>21.3f}{args.batch / med:>11.1f}")
    stack_t = res["stack"][0]
    r_pruned = stack_t / res["pruned"][0]
    print(f"stack / pruned FFTs alone: {r_pruned:.2f}x   (target <= 1.25x: "
          f"{'met' if r_pruned <= 1.25 else 'NOT met'})")
    r_full = stack_t / res["full"][0]
    print(f"stack / full 2-D FFTs alone: {r_full:.2f}x   (target <= 1.25x: {'met' if r_full <= 1.25 else 'NOT met'})")
    print(f"pruned / full FFTs alone: {res['pruned'][0] / res['full'][0]:.2f}x")


def id_thread():
    """The calling thread's identifier (keys each thread's :class:`FFTOnly` buffer)."""
    import threading

    return threading.get_ident()


if __name__ == "__main__":
    main()
