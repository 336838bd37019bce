"""Re-design around what was printed (issue 14): ``[robustness] as_built`` / ``freeze_layers``,
``d2nn train --as-built FIT.json --freeze-layers N,...``."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from d2nn.cli import main  # noqa: E402
from diffractive.asbuilt import AsBuilt, read_as_built, simulate_built  # noqa: E402
from diffractive._read import InputFileError  # noqa: E402
from diffractive.design import save_design  # noqa: E402
from training.config import ConfigError, parse_config  # noqa: E402
from training.model import D2NN, design_from_config  # noqa: E402
from training.robust import vaccination_from_config  # noqa: E402
from training.trainer import Trainer  # noqa: E402

#: a stack as built: layer 2 a pixel and a half off, the last gap 0.3 mm long
KNOWN = AsBuilt(layer_offsets_xy_m=[(0.0, 0.0), (0.6e-3, -0.2e-3)], gap_errors_m=[0.0, 0.0, 0.3e-3])


def _doc(robustness=None, epochs=1, init_from=None):
    doc = {"name": "redesign", "geometry": {"layer_shape": [32, 32], "n_layers": 2, "distance_m": 8e-3},
           "input": {"size_yx_m": [9.6e-3, 9.6e-3]}, "detectors": {"size_m": 1.6e-3, "spacing_m": 3.2e-3},
           "data": {"dataset": "digits"},
           "trainer": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.1, "workers": 1, "seed": 3}}
    if robustness is not None:
        doc["robustness"] = robustness
    if init_from is not None:
        doc["model"] = {"init_from": str(init_from)}
    return doc


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16).astype(np.float32), d.target.astype(np.int64)
    return (x[:480], y[:480]), (x[480:680], y[480:680]), (x[1000:1400], y[1000:1400])


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    """The printed design (random phases) and the fit.json of its stack as built."""
    root = tmp_path_factory.mktemp("printed")
    cfg = parse_config(_doc(), "tests/redesign.toml")
    save_design(design_from_config(cfg), root / "printed")
    (root / "fit.json").write_text(json.dumps({"schema": "d2nn.diagnosis/1", "as_built": KNOWN.to_json()}))
    return root


def test_training_runs_through_the_known_stack(printed):
    """Every step's forward pass is the as-built simulation of the fitted stack (no budget: the same stack)."""
    cfg = parse_config(_doc({"as_built": str(printed / "fit.json")}), "tests/redesign.toml")
    d = design_from_config(cfg)
    vac = vaccination_from_config(d, cfg)
    assert vac.stack(0) is vac.stack(7) and vac.last.as_built == KNOWN
    x = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        powers, _ = vac.powers(D2NN(d), torch.from_numpy(x), 3)
    ref = simulate_built(d, x, KNOWN).powers
    np.testing.assert_allclose(powers.numpy(), ref, rtol=1e-5, atol=1e-7 * ref.max())
    assert len(vac.validation_stacks(5)) == 1


def test_frozen_layers_come_out_bit_for_bit_and_the_gain_is_reported(printed, digits, tmp_path):
    cfg = parse_config(_doc({"as_built": str(printed / "fit.json"), "freeze_layers": [1]}, epochs=2,
                            init_from=printed / "printed"), "tests/redesign.toml")
    t = Trainer(cfg, tmp_path / "out", data=digits, log=lambda *a: None)
    t.run()
    before = np.load(printed / "printed" / "phases.npz")["phases"]
    after = np.load(tmp_path / "out" / "phases.npz")["phases"]
    assert np.array_equal(after[0], before[0])
    assert np.abs(np.angle(np.exp(1j * (after[1] - before[1])))).max() > 0.05  # layer 2 did train
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["redesign"]
    assert m["frozen_layers"] == [1] and m["reprinted_layers"] == [2] and m["test_n"] == 400
    # the reported numbers are the as-built accuracies of the two designs, recomputed here
    (_, _), (_, _), (xt, yt) = digits
    for key, phases in (("test_accuracy_as_built_before", before), ("test_accuracy_as_built_after", after)):
        d = design_from_config(cfg).with_phases(phases)
        p = simulate_built(d, xt, KNOWN).powers
        from diffractive.detectors import class_scores

        acc = float(np.mean(np.argmax(class_scores(p, d.detectors, d.n_classes), axis=1) == yt))
        assert abs(acc - m[key]) <= 1 / len(yt) + 1e-12, (key, acc, m[key])


def test_bad_redesign_settings_name_the_config_and_field(printed, tmp_path):
    fit = str(printed / "fit.json")
    with pytest.raises(ConfigError, match="needs the printed design: set \\[model\\] init_from"):
        parse_config(_doc({"freeze_layers": [1]}), "c.toml")
    with pytest.raises(ConfigError, match="names layer 3; the design has layers 1 to 2"):
        parse_config(_doc({"freeze_layers": [3]}, init_from=printed / "printed"), "c.toml")
    with pytest.raises(ConfigError, match="freezes all 2 layers"):
        parse_config(_doc({"freeze_layers": [1, 2]}, init_from=printed / "printed"), "c.toml")
    with pytest.raises(ConfigError, match="names a layer twice"):
        parse_config(_doc({"freeze_layers": [1, 1]}, init_from=printed / "printed"), "c.toml")
    doc = _doc({"as_built": fit})
    doc["trainer"]["rule"] = "spsa"
    with pytest.raises(ConfigError, match="'as_built' is supported by trainer.rule = 'backprop' only"):
        parse_config(doc, "c.toml")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"as_built": {**KNOWN.to_json(), "gap_errors_m": [0.0, 1e-4]}}))
    with pytest.raises(ConfigError, match="bad.json: field 'as_built.gap_errors_m': holds 2 entries"):
        parse_config(_doc({"as_built": str(bad)}), "c.toml")
    bad.write_text(json.dumps({"as_built": {**KNOWN.to_json(), "tilt": 1}}))
    with pytest.raises(ConfigError, match="bad.json: field 'as_built.tilt'"):
        parse_config(_doc({"as_built": str(bad)}), "c.toml")
    bad.write_text('{"as_built": ')
    with pytest.raises(ConfigError, match="bad.json: is not valid JSON"):
        parse_config(_doc({"as_built": str(bad)}), "c.toml")


def test_read_as_built_takes_fit_truth_and_bare_records(tmp_path):
    for doc in ({"as_built": KNOWN.to_json()}, {"schema": "d2nn.labsim/1", "as_built": KNOWN.to_json()},
                KNOWN.to_json()):
        (tmp_path / "a.json").write_text(json.dumps(doc))
        assert read_as_built(tmp_path / "a.json", 2) == KNOWN
    (tmp_path / "a.json").write_text(json.dumps({"as_built": {"layer_offsets_xy_m": "abc"}}))
    with pytest.raises(InputFileError, match="a.json: field 'as_built"):
        read_as_built(tmp_path / "a.json")


def test_the_train_command_takes_as_built_and_freeze_layers(printed, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""name = "redesign"
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
train_limit = 64
val_limit = 32
[trainer]
epochs = 1
batch_size = 16
workers = 1
[model]
init_from = "{printed / 'printed'}"
""")
    code = main(["train", str(cfg), "--out", str(tmp_path / "o"), "--as-built", str(printed / "fit.json"),
                 "--freeze-layers", "2"])
    cap = capsys.readouterr()
    err = cap.out + cap.err
    assert code == 0, err
    assert "re-design: test accuracy through the stack as built" in err and "re-printing layer(s) 1" in err
    before = np.load(printed / "printed" / "phases.npz")["phases"]
    assert np.array_equal(np.load(tmp_path / "o" / "phases.npz")["phases"][1], before[1])
    for flags, words in ((["--freeze-layers", "a"], "--freeze-layers must be layer numbers"),
                         (["--freeze-layers", "1,2"], "freezes all 2 layers"),
                         (["--as-built", str(tmp_path / "none.json")], "none.json")):
        code = main(["train", str(cfg), "--out", str(tmp_path / "o2"), *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, err
        assert not (tmp_path / "o2").exists()
