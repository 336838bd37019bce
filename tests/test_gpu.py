"""CUDA training and CuPy simulation against the CPU (marked ``gpu``; skipped cleanly without a GPU).

Run on a GPU machine by ``benchmarks/gpu_check.sh`` (``pytest -m gpu``). The CPU result is
the reference: the same design, phases and batch must give the same intensities, phase
gradients and simulated accuracy to complex64 rounding.
"""
import numpy as np
import pytest

from diffractive.backend import cupy_available

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (cupy_available() and torch.cuda.is_available()),
                                 reason="CuPy and CUDA torch with a GPU are not available")]


def _step(model, images, labels, device):
    from training.model import detector_loss

    model = model.to(device)
    model.zero_grad(set_to_none=True)
    inten = model(images.to(device))
    loss, _ = detector_loss(model.readout(inten), inten, labels.to(device), model.score_matrix)
    loss.backward()
    return inten.detach().cpu().double().numpy(), model.phase.grad.detach().cpu().double().numpy()


def test_cuda_training_step_matches_cpu(small_design, rng):
    from training.model import D2NN

    design = small_design()
    images = torch.from_numpy(rng.random((6, 8, 8), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, 10, 6))
    i_cpu, g_cpu = _step(D2NN(design), images, labels, "cpu")
    i_gpu, g_gpu = _step(D2NN(design), images, labels, "cuda")
    assert np.linalg.norm(i_gpu - i_cpu) <= 1e-4 * np.linalg.norm(i_cpu)
    assert np.linalg.norm(g_gpu - g_cpu) <= 1e-4 * np.linalg.norm(g_cpu)
    assert np.linalg.norm(g_cpu) > 0


def test_cuda_trainer_runs_and_matches_cpu(tiny_config, tmp_path):
    from diffractive.design import load_design
    from training.trainer import Trainer

    results = {}
    for device in ("cpu", "cuda"):
        cfg = tiny_config(epochs=1)
        Trainer(cfg, tmp_path / device, device=device, log=lambda *a, **k: None).run()
        results[device] = load_design(tmp_path / device).phases.astype(np.float64)
    # one epoch of Adam from the same start: the paths diverge only by rounding
    assert np.max(np.abs(np.angle(np.exp(1j * (results["cuda"] - results["cpu"]))))) < 1e-2


def test_simulate_cupy_matches_numpy(small_design, digits_split):
    from diffractive.simulate import simulate

    design = small_design()
    images, _ = digits_split()
    a = simulate(design, images[:40], backend="numpy", keep_intensity=True)
    b = simulate(design, images[:40], backend="cupy", keep_intensity=True)
    ia, ib = np.asarray(a.intensity, dtype=np.float64), np.asarray(b.intensity, dtype=np.float64)
    assert np.linalg.norm(ib - ia) <= 1e-4 * np.linalg.norm(ia)
    assert np.array_equal(a.predictions, b.predictions)


def test_tolerance_on_cuda_matches_cpu(small_design, tmp_path, capsys):
    """``d2nn tolerance --device cuda``: the same draws, the same accuracies as on the CPU."""
    import json

    from d2nn.cli import main
    from diffractive.design import save_design

    save_design(small_design(), tmp_path / "d")
    docs = []
    for device in ("cpu", "cuda"):
        assert main(["tolerance", str(tmp_path / "d"), "--dataset", "digits", "--samples", "40", "--draws", "3",
                     "--sweep-draws", "1", "--sweep-samples", "20", "--kinds", "lateral_m", "--device", device,
                     "--json", "--quiet"]) == 0
        docs.append(json.loads(capsys.readouterr().out))
    a, b = docs
    assert a["n_images"] == b["n_images"] == 40
    assert abs(a["ideal_accuracy"] - b["ideal_accuracy"]) <= 1 / 40
    # each draw's accuracy within one image (complex64 rounding may flip a near tie)
    assert np.allclose(a["expected"]["accuracies"], b["expected"]["accuracies"], atol=1 / 40 + 1e-12)
    assert a["expected"]["draws"] == 3
