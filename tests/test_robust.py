"""Error-robust training ([robustness], training/robust.py)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffractive.asbuilt import simulate_built  # noqa: E402
from diffractive.budget import load_budget  # noqa: E402
from diffractive.tolerance import accuracy_under  # noqa: E402
from training.config import ConfigError, parse_config  # noqa: E402
from training.robust import Vaccination  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def _config(robustness=None, epochs=2, **trainer):
    doc = {"name": "robust", "geometry": {"layer_shape": [32, 32], "n_layers": 2, "distance_m": 8e-3},
           "input": {"size_yx_m": [9.6e-3, 9.6e-3]}, "detectors": {"size_m": 1.6e-3, "spacing_m": 3.2e-3},
           "data": {"dataset": "digits"},
           "trainer": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.1, "workers": 1, "seed": 3, **trainer}}
    if robustness is not None:
        doc["robustness"] = robustness
    return parse_config(doc, "tests/robust.toml")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16).astype(np.float32), d.target.astype(np.int64)
    return (x[:480], y[:480]), (x[480:680], y[480:680]), (x[1000:1400], y[1000:1400])


def _train(cfg, out, digits):
    t = Trainer(cfg, out, data=digits, log=lambda *a: None)
    t.run()
    return t.model.to_design()


def test_an_empty_budget_is_plain_training_bit_for_bit(tmp_path, digits):
    empty = tmp_path / "empty.toml"
    empty.write_text('name = "empty"\nabsorption = false\nquantise = false\n')
    plain = _train(_config(epochs=1), tmp_path / "plain", digits)
    same = _train(_config({"budget": str(empty)}, epochs=1), tmp_path / "same", digits)
    np.testing.assert_array_equal(same.phases, plain.phases)
    # and a budget that is not empty does change the training (so the comparison above can fail)
    other = _train(_config({"budget": "holder"}, epochs=1), tmp_path / "other", digits)
    assert not np.array_equal(other.phases, plain.phases)


def test_draws_depend_on_the_step_only_so_a_resumed_run_draws_the_same_stacks():
    cfg = _config({"budget": "hand"})
    from training.model import design_from_config

    d = design_from_config(cfg)
    a, b = Vaccination(d, load_budget("hand"), 1, 7), Vaccination(d, load_budget("hand"), 1, 7)
    a.stack(1)
    assert a.stack(5).as_built == b.stack(5).as_built
    assert a.stack(5).as_built != a.stack(6).as_built


def test_the_vaccinated_forward_pass_is_the_as_built_simulation():
    cfg = _config({"budget": "hand"})
    from training.model import D2NN, design_from_config

    d = design_from_config(cfg)
    m = D2NN(d)
    v = Vaccination(d, load_budget("hand"), 2, 0)
    x = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    with torch.no_grad():
        powers, intensity = v.powers(m, torch.from_numpy(x), 4)
    ref = simulate_built(d, x, stack=v.last)
    assert intensity.shape == (5, 64, 64)
    np.testing.assert_allclose(powers.numpy(), ref.powers, rtol=1e-5, atol=1e-7 * ref.powers.max())


def test_bad_robustness_tables_name_the_config():
    with pytest.raises(ConfigError, match=r"tests/robust.toml \[robustness\] budget: .*neither a shipped budget"):
        _config({"budget": "no-such"})
    with pytest.raises(ConfigError, match=r"\[robustness\]: 'oversample'"):
        _config({"budget": "holder", "oversample": 0})
    with pytest.raises(ConfigError, match="unknown key 'budgets'"):
        _config({"budgets": "holder"})


def test_vaccination_buys_accuracy_as_built(tmp_path, digits):
    """Trained through lateral errors of +-0.4 mm (one pixel), a design keeps more of its
    accuracy under those errors than the same training without them (measured when written:
    36 % plain, 54 % vaccinated, 400 digits, 6 draws)."""
    lateral = tmp_path / "lateral.toml"
    lateral.write_text('name = "lat"\nabsorption = false\nquantise = false\n[lateral_m]\nuniform = 0.4e-3\n')
    plain = _train(_config(epochs=3), tmp_path / "plain", digits)
    robust = _train(_config({"budget": str(lateral)}, epochs=3), tmp_path / "robust", digits)
    x, y = digits[2]
    budget = load_budget(lateral)
    a_plain = accuracy_under(plain, x, y, budget, draws=6, seed=9).mean
    a_robust = accuracy_under(robust, x, y, budget, draws=6, seed=9).mean
    assert a_robust > a_plain + 0.08, (a_plain, a_robust)
    # the robust run picked its best epoch by the validation accuracy as built
    import json

    metrics = json.loads((tmp_path / "robust" / "metrics.json").read_text())
    built = [row["val_accuracy_as_built"] for row in metrics["history"]]
    assert metrics["best_val_accuracy"] == max(built) and metrics["best_epoch"] == 1 + int(np.argmax(built))
    assert "val_accuracy_as_built" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())["history"][0]


def test_smoothness_penalty_is_the_mean_squared_phasor_difference():
    from training.robust import smoothness_penalty

    phase = torch.zeros((1, 3, 3), dtype=torch.float64)
    phase[0, :, 2] = np.pi  # one vertical edge of pi: |1 - (-1)|^2 = 4 on 3 of the 6 horizontal pairs
    assert float(smoothness_penalty(phase)) == pytest.approx(0.5 * (4 * 3 / 6 + 0))
    assert float(smoothness_penalty(phase + 2 * np.pi)) == pytest.approx(float(smoothness_penalty(phase)))


def test_printed_features_stay_block_constant_and_smoothness_smooths(tmp_path, digits):
    from training.robust import smoothness_penalty

    blocky = _train(_config({"feature_px": 2}, epochs=1), tmp_path / "b", digits)
    p = blocky.phases
    np.testing.assert_array_equal(p, np.repeat(np.repeat(p[:, ::2, ::2], 2, axis=1), 2, axis=2))
    rough = _train(_config(epochs=1), tmp_path / "r", digits)
    smooth = _train(_config({"smoothness": 1.0}, epochs=1), tmp_path / "s", digits)
    pen = [float(smoothness_penalty(torch.tensor(np.array(d.phases)))) for d in (rough, smooth)]
    assert pen[1] < 0.85 * pen[0], pen  # 1.98 -> 1.49 when written (random start: 2)
    with pytest.raises(ConfigError, match="feature_px"):
        _config({"feature_px": 0})


def test_physics_aware_training_takes_a_budget_on_top_of_its_mismatch(tmp_path, digits):
    """rule = "pat" with [robustness]: each step's physics is the configured mismatch plus a
    fresh draw; the twin still computes the gradient. Without a budget PAT is unchanged."""
    from diffractive.asbuilt import AsBuilt

    a = AsBuilt(layer_offsets_xy_m=[(1e-4, 0.0), (0.0, 2e-4)], gap_errors_m=(1e-4, 0, 0), index_error=0.01)
    b = AsBuilt(layer_offsets_xy_m=[(1e-4, 1e-4), (0.0, 0.0)], gap_errors_m=(0, -1e-4, 0), index_error=0.02,
                z_step_m=16e-6)
    c = a.combined(b)
    assert c.layer_offsets_xy_m == ((2e-4, 1e-4), (0.0, 2e-4)) and c.gap_errors_m == (1e-4, -1e-4, 0.0)
    assert c.index_error == pytest.approx(1.01 * 1.02 - 1) and c.z_step_m == 16e-6
    assert AsBuilt().combined(a) == a
    plain = _train(_config(epochs=1, rule="pat"), tmp_path / "pat", digits)
    robust = _train(_config({"budget": "hand"}, epochs=1, rule="pat"), tmp_path / "pat-robust", digits)
    assert not np.array_equal(plain.phases, robust.phases)
    with pytest.raises(Exception, match="oversample = 1"):
        Trainer(_config({"budget": "hand", "oversample": 2}, rule="pat"), tmp_path / "x", data=digits)
