"""Benchmark: STL export time and peak memory per layer size.

Targets (issue 4): one 200 x 200 layer in < 1 s, one 1000 x 1000 layer in < 10 s, memory
linear in the pixel count. Each size exports a one-layer random-phase design (Lin et al.
geometry: 0.4 mm pitch, VeroBlackPlus, 16 um z step, 0.5 mm base) with ``export_design``
- heights, plate mesh, holder, STL files with SHA-256, manifest - into a temporary
directory. Random phases are the worst case for the mesh (almost every pixel differs from
its neighbours). Time is the best of ``--repeat`` runs without tracing; peak memory is
measured in a separate run with tracemalloc (NumPy reports its buffers to it).

    python3 benchmarks/export.py                 # 200, 1000 timed; 100..800 for memory
    python3 benchmarks/export.py --sizes 200 --memory-sizes 100 200
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffractive.design import make_design  # noqa: E402
from fabrication.export import export_design, plan_export  # noqa: E402
from fabrication.mesh import height_field_mesh  # noqa: E402
from fabrication.plate import plate_height_field  # noqa: E402
from fabrication.validate import edge_check  # noqa: E402

TARGET_S = {200: 1.0, 1000: 10.0}


def one_layer(n):
    """A one-layer design of n x n random phases (0.4 mm pitch, FFT window n x n, seed 0)."""
    return make_design(layer_shape=(n, n), n_layers=1, seed=0, window_shape=(n, n))


def run_export(design, verify="auto"):
    """Export ``design`` into a temporary folder; returns (seconds, manifest dict)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = export_design(design, Path(tmp) / "out", verify=verify)
        dt = time.perf_counter() - t0
    return dt, res.manifest


def main(argv=None):
    """Time the export of each ``--sizes`` layer and trace the memory of each ``--memory-sizes``
    one; print the results (and write them to ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000], help="layer sizes to time")
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    results = {"timing": [], "memory": []}
    print("export of one random-phase layer (export_design: mesh + STL + SHA-256 + holder + manifest)")
    print(f"{'size':>6} {'faces':>11} {'best s':>8} {'target s':>9} {'ratio':>6} {'verify s':>9} {'STL MB':>8}")
    for n in args.sizes:
        d = one_layer(n)
        times = []
        for _ in range(args.repeat):
            dt, man = run_export(d)
            times.append(dt)
            gc.collect()
        faces = man["layers"][0]["faces"]
        # the full closed/winding check (run by export for meshes up to 5 M faces), timed on its own
        plan = plan_export(d)
        mesh = height_field_mesh(plate_height_field(plan.levels[0], plan.layouts[0]))
        t0 = time.perf_counter()
        assert edge_check(mesh.faces, len(mesh.vertices)).ok
        tv = time.perf_counter() - t0
        del mesh, plan
        best = min(times)
        target = TARGET_S.get(n)
        ratio = f"{best / target:.2f}" if target else "-"
        mb = (84 + 50 * faces) / 1e6
        print(f"{n:>6} {faces:>11,} {best:>8.2f} {target if target else '-':>9} {ratio:>6} {tv:>9.2f} {mb:>8.1f}",
              flush=True)
        results["timing"].append({"size": n, "faces": faces, "seconds": times, "best_s": best, "target_s": target,
                                  "verify_s": tv, "stl_mb": mb, "verified_in_export": man["layers"][0]["verified"]})
    print("\npeak traced memory of export_design (tracemalloc)")
    print(f"{'size':>6} {'pixels':>9} {'peak MB':>9} {'bytes/pixel':>12}")
    for n in args.memory_sizes:
        d = one_layer(n)
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        run_export(d, verify=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{n:>6} {n * n:>9,} {peak / 1e6:>9.1f} {peak / (n * n):>12.0f}", flush=True)
        results["memory"].append({"size": n, "pixels": n * n, "peak_bytes": peak})
    if len(results["memory"]) >= 2:
        a, b = results["memory"][-2], results["memory"][-1]
        print(f"growth {a['size']}->{b['size']}: pixels x{b['pixels'] / a['pixels']:.1f}, "
              f"peak x{b['peak_bytes'] / a['peak_bytes']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
