"""Zero-padded (linear) FFT convolution of a grid-sized field with a transfer function.

This is the one place where FFTs are executed. A :class:`Workspace` owns a padded buffer of
shape ``(b, NY, NX)`` (the simulation window) and performs one *hop*: the field, written
into the top-left ``(ny, nx)`` corner with zeros around it, is transformed, multiplied by a
transfer function ``H`` and transformed back; the result is read from the same corner.
Reading and writing the same corner gives the linear convolution as long as the window is
at least ``n + s`` wide, where ``s`` is the largest lateral shift the band-limited ``H``
carries (see :func:`diffractive.propagation.band_limit_frequencies`).

The transforms are *pruned*: the forward transform runs along columns only over the ``nx``
columns that hold data, and the inverse along columns only over the ``nx`` columns that are
read back (rows are transformed in full). That skips about a quarter of the 1-D transforms
of a full 2-D FFT pair with 2x padding, and it puts the strided (column) transforms on the
smaller set.

Backends:

* NumPy with pyFFTW: FFTW plans made once per workspace on its own aligned buffer, run in
  place without normalisation (the ``1/(NY*NX)`` factor is folded into ``H`` by the caller).
  Each worker thread has its own single-threaded workspace and processes one sample at a
  time, so the buffer stays in cache (measured faster than multithreaded plans on a batch,
  see benchmarks/README.md).
* NumPy without pyFFTW: ``scipy.fft`` (pocketfft), same arithmetic, slower.
* CuPy: ``cupy.fft`` on the whole batch at once.
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import D2NNError
from .backend import cpu_workers

try:  # pyFFTW is the fast CPU path; scipy.fft is the fallback with the same results.
    import pyfftw

    HAVE_PYFFTW = True
except Exception:  # pragma: no cover - exercised only where pyFFTW is missing
    pyfftw = None
    HAVE_PYFFTW = False

PLANNER_ENV = "D2NN_FFTW_PLANNER"
PLANNERS = ("measure", "estimate")


def fftw_planner() -> str:
    """The FFTW planner new workspaces use: ``$D2NN_FFTW_PLANNER``, default ``"measure"``.

    ``measure`` times candidate algorithms and keeps the fastest (FFTW_MEASURE). The choice
    can differ between processes, and different algorithms round differently, so the same
    simulation run in two processes may differ in the last bit of single precision.
    ``estimate`` (FFTW_ESTIMATE) picks by heuristics: the same plan, hence the same bits, in
    every process on a machine, at some cost in speed (benchmarks/README.md). Read when a
    workspace is made, so set it before the first simulation of a process: engines already
    cached keep their plans until :func:`diffractive.clear_caches`.
    """
    value = os.environ.get(PLANNER_ENV, "measure").strip().lower()
    if value not in PLANNERS:
        raise D2NNError(f"{PLANNER_ENV}={os.environ[PLANNER_ENV]!r}: must be one of {list(PLANNERS)}")
    return value


def clear_fft_caches() -> None:
    """Forget the FFT libraries' process-wide state (part of :func:`diffractive.clear_caches`).

    FFTW keeps the *wisdom* of every plan it has measured and reuses it for later plans,
    also for ``estimate`` ones, so a new ``$D2NN_FFTW_PLANNER`` setting needs it forgotten.
    If CuPy is loaded (it is never imported here), its cuFFT plan cache is cleared and
    the unused blocks of its memory pool go back to the device.
    """
    if HAVE_PYFFTW:
        pyfftw.forget_wisdom()
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            cupy.fft.config.get_plan_cache().clear()
            cupy.get_default_memory_pool().free_all_blocks()
        except Exception:  # pragma: no cover - CuPy without a usable device: nothing is held
            pass


def fft_backend_name(xp=np) -> str:
    """Human-readable name of the FFT implementation used for ``xp`` arrays."""
    if xp is not np:
        return "cupy.fft (cuFFT)"
    return "pyFFTW (FFTW3)" if HAVE_PYFFTW else "scipy.fft (pocketfft)"


class Workspace:
    """Padded buffers and planned transforms for hops of a fixed geometry.

    Two buffers of shape ``(b, NY, NX)``: ``inbuf`` receives the field in its top-left
    ``(ny, nx)`` corner; its columns ``nx:`` are never written, so they stay zero, and only
    the rows ``ny:`` of the first ``nx`` columns (dirtied by the in-place column
    transform) are re-zeroed per hop. The row transform runs out of place into ``buf``,
    where the product with ``H`` and the inverse transforms happen; the result is read
    from ``buf``'s corner. This keeps per-hop zeroing to a quarter of the window with
    2x padding.

    Parameters
    ----------
    field_shape : (ny, nx)
        Shape of the fields that enter and leave a hop.
    window_shape : (NY, NX)
        Padded FFT window, ``NY >= ny`` and ``NX >= nx``.
    dtype : complex dtype
    batch : int
        Leading batch size ``b`` of the buffers (1 for the per-sample CPU path).
    xp : numpy or cupy

    ``planner`` records the FFTW planner its plans were made with (``None`` without FFTW).
    """

    def __init__(self, field_shape, window_shape, dtype, batch=1, xp=np, use_pyfftw=None):
        self.ny, self.nx = field_shape
        self.NY, self.NX = window_shape
        if self.NY < self.ny or self.NX < self.nx:
            raise D2NNError(f"window_shape {tuple(window_shape)} is smaller than the field {tuple(field_shape)}")
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.batch = batch
        shape = (batch, self.NY, self.NX)
        self._fftw = xp is np and (HAVE_PYFFTW if use_pyfftw is None else use_pyfftw)
        if self._fftw:
            self.inbuf = pyfftw.empty_aligned(shape, dtype=self.dtype)
            self.buf = pyfftw.empty_aligned(shape, dtype=self.dtype)
            a, b, nx = self.inbuf, self.buf, self.nx
            a_cols, b_cols = a[:, :, :nx], b[:, :, :nx]
            self.planner = fftw_planner()
            planner = "FFTW_" + self.planner.upper()
            kw = dict(flags=(planner, "FFTW_DESTROY_INPUT"), threads=1)
            self._fwd_cols = pyfftw.FFTW(a_cols, a_cols, axes=(1,), direction="FFTW_FORWARD", **kw)
            # out of place and input-preserving (FFTW's default for c2c): inbuf's zero columns survive
            self._fwd_rows = pyfftw.FFTW(a, b, axes=(2,), direction="FFTW_FORWARD", flags=(planner,),
                                         threads=1)
            self._inv_rows = pyfftw.FFTW(b, b, axes=(2,), direction="FFTW_BACKWARD", normalise_idft=False, **kw)
            self._inv_cols = pyfftw.FFTW(b_cols, b_cols, axes=(1,), direction="FFTW_BACKWARD", normalise_idft=False,
                                         **kw)
        else:
            self.planner = None  # no FFTW plans
            self.inbuf = xp.zeros(shape, dtype=self.dtype)
            self.buf = xp.zeros(shape, dtype=self.dtype)
        self.inbuf[...] = 0  # planning with FFTW_MEASURE overwrites the arrays it times on
        self.buf[...] = 0

    # -- filling ---------------------------------------------------------------------
    def load(self, field, multiplier=None):
        """Write ``field`` (or ``field * multiplier``) into the input corner, zeros elsewhere.

        ``field`` has shape ``(b, ny, nx)`` or ``(ny, nx)``; ``multiplier`` broadcasts.
        """
        corner = self.inbuf[:, : self.ny, : self.nx]
        if multiplier is None:
            corner[...] = field
        else:
            self.xp.multiply(field, multiplier, out=corner)
        self.inbuf[:, self.ny:, : self.nx] = 0

    def modulate(self, multiplier):
        """Load the last result times ``multiplier`` as the next hop's input."""
        self.load(self.result(), multiplier)

    def result(self):
        """View of the hop's result, shape ``(b, ny, nx)`` (overwritten by the next hop)."""
        return self.buf[:, : self.ny, : self.nx]

    # -- one hop ---------------------------------------------------------------------
    def hop(self, transfer):
        """Convolve the loaded field with ``transfer`` (shape (NY, NX), FFT order).

        ``transfer`` must already contain the ``1/(NY*NX)`` normalisation of the
        inverse transform.
        """
        a, b, nx = self.inbuf, self.buf, self.nx
        if self._fftw:
            # execute() skips the argument handling of FFTW.__call__ (measurable per hop)
            self._fwd_cols.execute()
            self._fwd_rows.execute()
            np.multiply(b, transfer, out=b)
            self._inv_rows.execute()
            self._inv_cols.execute()
            return
        if self.xp is np:
            import scipy.fft as sfft  # noqa: PLC0415

            a[:, :, :nx] = sfft.fft(a[:, :, :nx], axis=1, overwrite_x=True)
            b[...] = sfft.fft(a, axis=2)
            b *= transfer
            b[...] = sfft.ifft(b, axis=2, overwrite_x=True, norm="forward")
            b[:, :, :nx] = sfft.ifft(b[:, :, :nx], axis=1, overwrite_x=True, norm="forward")
            return
        fft = self.xp.fft
        a[:, :, :nx] = fft.fft(a[:, :, :nx], axis=1)
        b[...] = fft.fft(a, axis=2)
        b *= transfer
        b[...] = fft.ifft(b, axis=2, norm="forward")
        b[:, :, :nx] = fft.ifft(b[:, :, :nx], axis=1, norm="forward")


class WorkspacePool:
    """One workspace per worker thread for a fixed geometry, reused across calls."""

    def __init__(self, field_shape, window_shape, dtype, xp=np):
        self.field_shape = tuple(field_shape)
        self.window_shape = tuple(window_shape)
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self._local = threading.local()
        self._batched = {}

    def per_thread(self) -> Workspace:
        """The calling thread's single-sample workspace (created on first use)."""
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = Workspace(self.field_shape, self.window_shape, self.dtype, 1, self.xp)
            self._local.ws = ws
        return ws

    def batched(self, batch: int) -> Workspace:
        """A workspace holding a whole batch (used for CuPy arrays)."""
        ws = self._batched.get(batch)
        if ws is None:
            self._batched.clear()  # keep one: GPU memory is not free
            ws = self._batched[batch] = Workspace(self.field_shape, self.window_shape, self.dtype, batch, self.xp)
        return ws


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
_EXECUTOR_LOCK = threading.Lock()


def run_chunks(fn, n_items: int, workers: int | None = None):
    """Call ``fn(start, stop)`` on contiguous chunks of ``range(n_items)`` in worker threads.

    Returns the list of results in chunk order. With one worker (or one item) ``fn`` runs
    in the calling thread. FFTW and NumPy release the GIL, so threads scale on cores.
    """
    workers = cpu_workers() if workers is None else max(1, int(workers))
    workers = min(workers, n_items) if n_items else 1
    if workers <= 1:
        return [fn(0, n_items)]
    bounds = np.linspace(0, n_items, workers + 1).round().astype(int)
    with _EXECUTOR_LOCK:
        ex = _EXECUTORS.get(workers)
        if ex is None:
            ex = _EXECUTORS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="d2nn-fft")
    futures = [ex.submit(fn, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return [f.result() for f in futures]
