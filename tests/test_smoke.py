import subprocess
import sys

import numpy as np

import diffractive
from diffractive.design import load_design, make_design, save_design
from diffractive.simulate import simulate


def test_cli_version_and_help():
    out = subprocess.run([sys.executable, "-m", "d2nn", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and diffractive.__version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "d2nn", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: d2nn" in out.stdout


def test_design_round_trip_and_simulate(tmp_path):
    d = make_design(layer_shape=(32, 32), n_layers=2, spacing_m=5e-3, seed=3)
    save_design(d, tmp_path / "d")
    d2 = load_design(tmp_path / "d")
    np.testing.assert_array_equal(d2.phases, d.phases.astype(np.float32))
    r = simulate(d2, np.random.default_rng(0).random((4, 28, 28), dtype=np.float32))
    assert r.powers.shape == (4, 10) and r.predictions.shape == (4,)
