"""ES and GA across processes (torch.distributed, gloo): 2 processes = 1 process, bit for bit."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
CASES = {"es": {"pairs": 3, "block": 2}, "ga": {"population": 5, "parents": 2, "sigma": 0.2},
         # raw losses: the update depends on every bit of every measured loss
         "es-raw": {"pairs": 3, "block": 2, "shaping": "none"}}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(cfg, steps=4):
    """A few steps of the rule of config ``cfg`` on fixed batches; returns the phases and evaluation count."""
    from sklearn.datasets import load_digits

    from training.model import D2NN, design_from_config
    from training.rules import make_rule

    d = load_digits()
    x, y = (d.images[:64] / 16).astype(np.float32), d.target[:64].astype(np.int64)
    model = D2NN(design_from_config(cfg))
    r = make_rule(model, cfg, 10)
    for s in range(steps):
        b = slice(16 * (s % 4), 16 * (s % 4) + 16)
        r.step(torch.from_numpy(x[b]), torch.from_numpy(y[b]))
    return model.phase.detach().numpy().copy(), r.evaluations, r.comm.world


def _worker(rank, world, port, rule, cfg, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        phase, evaluations, w = _train(cfg)
        assert w == world
        np.save(os.path.join(out_dir, f"{rule}-w{world}-rank{rank}.npy"), phase)
        np.save(os.path.join(out_dir, f"{rule}-w{world}-evals{rank}.npy"), np.array(evaluations))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rule", ["es", "ga"])
def test_two_processes_give_the_parameters_of_one_process(rule, tmp_path, tiny_config):
    cfg = tiny_config(rule, CASES[rule])   # the spawned processes get the config as an argument
    single, evals, world = _train(cfg)
    assert world == 1
    mp.start_processes(_worker, args=(2, _free_port(), rule, cfg, str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        assert np.array_equal(np.load(tmp_path / f"{rule}-w2-rank{rank}.npy"), single), f"rank {rank} differs"
        assert int(np.load(tmp_path / f"{rule}-w2-evals{rank}.npy")) == evals


def test_raw_losses_match_across_processes_under_the_estimate_planner(tmp_path, monkeypatch, tiny_config):
    """Centred ranks (above) absorb last-bit differences between FFTW plans; raw losses do not.

    With D2NN_FFTW_PLANNER=estimate every process plans alike, so a fresh one-process run and
    a two-process run end on the same bits (under the default "measure" they may not).
    """
    monkeypatch.setenv("D2NN_FFTW_PLANNER", "estimate")   # inherited by the spawned processes
    cfg = tiny_config("es", CASES["es-raw"])
    for world in (1, 2):
        mp.start_processes(_worker, args=(world, _free_port(), "es-raw", cfg, str(tmp_path)), nprocs=world,
                           start_method="spawn")
    single = np.load(tmp_path / "es-raw-w1-rank0.npy")
    for rank in range(2):
        assert np.array_equal(np.load(tmp_path / f"es-raw-w2-rank{rank}.npy"), single), f"rank {rank} differs"


TOML = """
name = "dist-es"
[geometry]
layer_shape = [24, 24]
n_layers = 2
distance_m = 6e-3
[input]
size_yx_m = [6.4e-3, 6.4e-3]
[detectors]
size_m = 1.2e-3
spacing_m = 2.4e-3
[data]
dataset = "digits"
train_limit = 160
val_limit = 64
[trainer]
rule = "es"
epochs = 2
batch_size = 16
learning_rate = 0.1
checkpoint_every = 4
workers = 1
[trainer.es]
pairs = 3
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_d2nn_train_matches_one_process(tmp_path):
    cfg = tmp_path / "es.toml"
    cfg.write_text(TOML)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    one = subprocess.run([sys.executable, "-m", "d2nn", "train", str(cfg), "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "-m", "d2nn", "train", str(cfg),
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    a = np.load(tmp_path / "one" / "phases.npz")["phases"]
    b = np.load(tmp_path / "two" / "phases.npz")["phases"]
    assert np.array_equal(a, b)
    assert two.stdout.count("test accuracy") == 1  # only rank 0 reports and writes
