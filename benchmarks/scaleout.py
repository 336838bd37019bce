"""ES and GA across processes: wall time of 1 process against ``torchrun`` with N processes.

Trains a config (default ``designs/rules-es.toml``) for a fixed number of steps three ways,
each in a fresh process tree, and compares the training time the trainer measured and
the final phases:

* ``1 process, 1 thread``   — ``python -m d2nn train`` with ``[trainer] workers = 1``;
* ``1 process, N threads``  — the same with ``workers = N`` (threads share one population
  member's batch; what a single process gets from N cores);
* ``N processes, 1 thread`` — ``torchrun --standalone --nproc_per_node=N`` (population
  members shared out, only seeds and losses exchanged; gloo).

All three must end on the same phases bit for bit (checked, reported). Speed-ups are
ratios of the trainer's ``train_seconds`` (data loading and process start excluded) in
this one run.

    python benchmarks/scaleout.py [--config designs/rules-es.toml] [--steps 60] [--procs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write_config(src: Path, dst: Path, workers: int, steps: int):
    doc = tomllib.loads(src.read_text())
    tr = doc.setdefault("trainer", {})
    batch = int(tr.get("batch_size", 32))
    tr["workers"] = workers
    tr["epochs"] = 1
    tr["checkpoint_every"] = 10 ** 6
    doc.setdefault("data", {})["train_limit"] = steps * batch
    doc["data"]["val_limit"] = min(int(doc["data"].get("val_limit", 500)), 256)
    text = _toml_text(doc)
    if tomllib.loads(text) != doc:  # the writer below covers what configs hold; check, not trust
        sys.exit(f"{src}: cannot rewrite this config as TOML faithfully (unsupported value types)")
    dst.write_text(text)


def _toml_text(doc: dict, prefix: str = "") -> str:
    """TOML for a document of tables, strings, numbers, booleans and lists of those.

    Scalars are written with ``json.dumps``, whose strings, numbers, booleans and arrays are
    valid TOML; anything else (None, NaN, dates) fails the round-trip check of the caller.
    """
    scalars = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [(f"{prefix}{k}", v) for k, v in doc.items() if isinstance(v, dict)]
    text = "\n".join(scalars) + ("\n" if scalars else "")
    for name, body in tables:
        text += f"[{name}]\n" + _toml_text(body, f"{name}.")
    return text


def _run(cmd, out: Path, env):
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{done.stderr[-3000:]}")
    import numpy as np

    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "phases.npz") as z:
        phases = z["phases"].copy()
    return metrics["train_seconds"], phases


def main(argv=None):
    """Train ``--config`` for ``--steps`` steps three ways (1 process 1 thread, 1 process N threads,
    N processes); print the table. Returns 0 when all three end on the same phases, else 1."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "designs" / "rules-es.toml"))
    p.add_argument("--steps", type=int, default=60, help="training steps (one epoch of steps * batch images)")
    p.add_argument("--procs", type=int, default=2)
    a = p.parse_args(argv)
    import numpy as np

    if shutil.which("torchrun") is None:
        sys.exit("torchrun is not on PATH (it comes with torch)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = [("1 process, 1 thread", 1, [sys.executable, "-m", "d2nn", "train"]),
                (f"1 process, {a.procs} threads", a.procs, [sys.executable, "-m", "d2nn", "train"]),
                (f"{a.procs} processes, 1 thread", 1,
                 ["torchrun", "--standalone", f"--nproc_per_node={a.procs}", "-m", "d2nn", "train"])]
        for label, workers, launcher in runs:
            cfg = tmp / f"w{workers}.toml"
            _write_config(Path(a.config), cfg, workers, a.steps)
            out = tmp / label.replace(" ", "_").replace(",", "")
            seconds, phases = _run(launcher + [str(cfg), "--out", str(out), "--force"], out, env)
            rows.append((label, seconds, phases))
            print(f"{label}: {seconds:.1f} s", flush=True)
    base_s, base_phases = rows[0][1], rows[0][2]
    print(f"\n{Path(a.config).name}, {a.steps} steps, {os.cpu_count()} CPUs\n")
    print("| launch | train time (s) | speed-up vs 1 process, 1 thread | same phases as 1 process |")
    print("|---|---|---|---|")
    for label, seconds, phases in rows:
        same = "yes (bit for bit)" if np.array_equal(phases, base_phases) else "NO"
        print(f"| {label} | {seconds:.1f} | {base_s / seconds:.2f}x | {same} |")
    return 0 if all(np.array_equal(r[2], base_phases) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
