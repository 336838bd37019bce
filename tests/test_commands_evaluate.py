"""``d2nn measure-sim`` followed by ``d2nn evaluate``, end to end, on a small design.

The design is trained, its provenance says, on scikit-learn's digits, which the real
training.datasets serves offline (the small_design fixture, tests/conftest.py): no downloaded data.
"""
import json

import numpy as np
import pytest

from d2nn.cli import main
from diffractive.design import save_design
from diffractive.simulate import simulate


@pytest.fixture(scope="module")
def design_dir(tmp_path_factory, small_design):
    folder = tmp_path_factory.mktemp("design") / "small"
    save_design(small_design(), folder)
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def measure(capsys, design_dir, out, *extra, samples=30, fmt="csv"):
    code, stdout, err = run(capsys, "measure-sim", design_dir, "--dataset", "digits", "--samples", samples,
                            "--format", fmt, "--out", out, *extra)
    assert code == 0, err
    return stdout


@pytest.fixture
def simulated(design_dir, design_images):
    """``simulated(inputs)``: the simulation of the design in ``design_dir`` on the images
    ``inputs`` of its test split."""
    from diffractive.design import load_design

    def simulated(inputs):
        design = load_design(design_dir)
        images, _ = design_images(design, "test")
        return simulate(design, images[np.asarray(inputs)])

    return simulated


def test_noiseless_detector_powers_give_exactly_the_simulated_predictions(capsys, design_dir, tmp_path, simulated):
    out = tmp_path / "lab.csv"
    text = measure(capsys, design_dir, out)
    assert "wrote" in text and (tmp_path / "lab.csv.truth.json").exists()
    j = run_json(capsys, "evaluate", design_dir, "--measured", out)
    sim = simulated(j["inputs"])
    assert j["predictions"] == sim.predictions.tolist()
    assert j["simulation"]["predictions"] == sim.predictions.tolist()
    assert j["simulation"]["same_prediction"]["rate"] == 1.0 and j["simulation"]["disagreements"] == []
    assert j["accuracy"] == pytest.approx(np.mean(sim.predictions == np.array(j["labels"])))
    assert j["n"] == 30 and np.array(j["confusion"]).shape == (10, 10) and np.sum(j["confusion"]) == 30
    np.testing.assert_allclose(j["calibration"]["fitted_gains"]["gains"], 1.0, atol=1e-6)
    assert j["negative_values"]["count"] == 0
    lo, hi = j["accuracy_ci95"]
    assert lo <= j["accuracy"] <= hi


def test_noiseless_scans_give_exactly_the_simulated_predictions(capsys, design_dir, tmp_path, simulated):
    out = tmp_path / "scan.npz"
    measure(capsys, design_dir, out, fmt="scan", samples=20)
    j = run_json(capsys, "evaluate", design_dir, "--measured", out)
    sim = simulated(j["inputs"])
    assert j["predictions"] == sim.predictions.tolist()
    assert np.hypot(*j["registration"]["offset_m"]) < 0.01 * 0.4e-3
    pod = np.array(j["power_on_detectors"]["per_sample"])
    np.testing.assert_allclose(pod, sim.powers.sum(1) / sim.total_power, rtol=1e-4)


def test_scan_offset_is_recovered_through_the_commands(capsys, design_dir, tmp_path):
    out = tmp_path / "scan.npz"
    measure(capsys, design_dir, out, "--misalign", "detector=0.3mm,-0.5mm", "--scan-pitch", "0.5mm",
            "--noise", "0.02", fmt="scan", samples=20)
    j = run_json(capsys, "evaluate", design_dir, "--measured", out)
    reg = j["registration"]
    assert reg["method"] == "simulation"
    assert np.hypot(reg["offset_m"][0] - 0.3e-3, reg["offset_m"][1] + 0.5e-3) < 0.5 * 0.5e-3
    assert j["simulation"]["same_prediction"]["rate"] >= 0.8


def test_a_budget_draw_is_the_as_built_stack_and_its_detector_offset_is_registered(capsys, design_dir, tmp_path):
    """--budget draws one AsBuilt (recorded in the truth file); the draw's detector-plane offset
    becomes the scan frame's, which 'd2nn evaluate' then recovers; --oversample is recorded."""
    from diffractive.asbuilt import AsBuilt, simulate_built
    from diffractive.budget import load_budget
    from diffractive.design import load_design

    out = tmp_path / "scan.npz"
    j = run_json(capsys, "measure-sim", design_dir, "--dataset", "digits", "--samples", 12, "--format", "scan",
                 "--out", out, "--budget", "hand", "--seed", 3, "--oversample", 2)
    truth = json.loads((tmp_path / "scan.npz.truth.json").read_text())
    design = load_design(design_dir)
    drawn = load_budget("hand").draw(np.random.default_rng([3, 2]), design.n_layers, design.fabrication.z_step_m)
    ab = AsBuilt.from_json(truth["as_built"])
    assert ab == AsBuilt(**{**drawn.__dict__, "detector_offset_xy_m": (0.0, 0.0), "detector_rotation_rad": 0.0})
    assert truth["detector_offset_m"] == list(drawn.detector_offset_xy_m) and truth["oversample"] == 2
    assert j["budget"] == "hand" and j["oversample"] == 2 and truth["budget"]["name"] == "hand"
    assert ab.layer_offsets_xy_m and ab.gap_errors_m and ab.absorption and ab.z_step_m is not None
    # the budget's stack, oversampled, is the one measured
    csv = tmp_path / "lab.csv"
    run_json(capsys, "measure-sim", design_dir, "--dataset", "digits", "--samples", 12, "--format", "csv",
             "--out", csv, "--budget", "hand", "--seed", 3, "--oversample", 2, "--misalign", "rotation=0")
    lab = json.loads((tmp_path / "lab.csv.truth.json").read_text())
    from training.datasets import design_split

    images, _ = design_split(design, "digits", "test")
    ref = simulate_built(design, images[np.asarray(lab["inputs"])], ab, oversample=2)
    assert lab["noiseless_predictions"] == ref.predictions.tolist()
    # a budget file with a detector-plane offset only: 'd2nn evaluate' registers the drawn offset
    (tmp_path / "det.toml").write_text("absorption = false\nquantise = false\n[detector_offset_m]\nuniform = 0.8e-3\n")
    det = tmp_path / "det.npz"
    run_json(capsys, "measure-sim", design_dir, "--dataset", "digits", "--samples", 12, "--format", "scan",
             "--out", det, "--budget", tmp_path / "det.toml", "--seed", 5)
    truth = json.loads((tmp_path / "det.npz.truth.json").read_text())
    dx, dy = truth["detector_offset_m"]
    assert AsBuilt.from_json(truth["as_built"]).is_ideal and np.hypot(dx, dy) > 0.1e-3
    reg = run_json(capsys, "evaluate", design_dir, "--measured", det)["registration"]
    assert np.hypot(reg["offset_m"][0] - dx, reg["offset_m"][1] - dy) < 0.25 * design.pitch_m


def test_fitted_gains_recover_the_true_gains_and_a_gains_file_applies_them(capsys, design_dir, tmp_path):
    out = tmp_path / "lab.csv"
    text = measure(capsys, design_dir, out, "--detector-gain-spread", "0.1", "--noise", "0.002", "--dark", "0.05",
                   samples=40)
    dark = tmp_path / "lab-dark.csv"
    assert dark.exists() and str(dark) in text
    truth = json.loads((tmp_path / "lab.csv.truth.json").read_text())
    j = run_json(capsys, "evaluate", design_dir, "--measured", out, "--background", dark)
    fitted = np.array(j["calibration"]["fitted_gains"]["gains"])
    true = np.array(truth["gains"])
    np.testing.assert_allclose(fitted, true / true.mean(), rtol=0.02)
    # the truth file doubles as a calibration file: residual gains are then ~1
    j2 = run_json(capsys, "evaluate", design_dir, "--measured", out, "--background", dark, "--gains",
                  tmp_path / "lab.csv.truth.json")
    np.testing.assert_allclose(j2["calibration"]["fitted_gains"]["gains"], 1.0, atol=0.02)
    assert j2["simulation"]["correlation"]["min"] > 0.99
    # without the background the dark offset biases the fit: the background matters
    j3 = run_json(capsys, "evaluate", design_dir, "--measured", out)
    assert np.abs(np.array(j3["calibration"]["fitted_gains"]["gains"]) - true / true.mean()).max() > 0.02


def test_report_is_written_with_figures_and_never_overwritten_silently(capsys, design_dir, tmp_path):
    out = tmp_path / "scan.npz"
    measure(capsys, design_dir, out, "--noise", "0.01", fmt="scan", samples=12)
    rep = tmp_path / "report"
    code, text, err = run(capsys, "evaluate", design_dir, "--measured", out, "--report", rep)
    assert code == 0, err
    names = {p.name for p in rep.iterdir()}
    assert {"confusion.png", "powers.png", "scan.png", "distribution.png", "margins.png", "report.md",
            "index.html", "evaluation.json", "gains.json"} <= names
    md = (rep / "report.md").read_text()
    for png in ("confusion.png", "powers.png", "scan.png"):
        assert f"]({png})" in md and f"src='{png}'" in (rep / "index.html").read_text()
    assert (rep / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((rep / "evaluation.json").read_text())["n"] == 12
    assert "report" in text and "accuracy" in text
    code, _, err = run(capsys, "evaluate", design_dir, "--measured", out, "--report", rep)
    assert code == 2 and "not empty" in err and "--force" in err
    code, _, err = run(capsys, "evaluate", design_dir, "--measured", out, "--report", rep, "--force")
    assert code == 0, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]  # no temporary leftovers


def bad_csv(tmp_path, design_dir, capsys, edit):
    out = tmp_path / "lab.csv"
    measure(capsys, design_dir, out, samples=10)
    lines = out.read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join(edit(lines)) + "\n")
    return tmp_path / "bad.csv"


@pytest.mark.parametrize("case,edit,msg", [
    ("missing column", lambda L: [",".join(r.split(",")[:-1]) if not r.startswith("#") else r for r in L],
     "missing detector column(s) det9"),
    ("extra column", lambda L: [r + (",det10" if r.startswith("sample") else ",0.1") if not r.startswith("#") else r
                                for r in L], "extra detector column(s) det10"),
    ("NaN", lambda L: L[:3] + [",".join(L[3].split(",")[:5] + ["nan"] + L[3].split(",")[6:])] + L[4:],
     "line 4 (sample 's0001'): column 'det2' = 'nan' is not a finite number"),
    ("text", lambda L: L[:2] + [L[2].replace("s0000,0,", "s0000,zero,")] + L[3:],
     "line 3 (sample 's0000'): column 'label' = 'zero' is not an integer"),
    ("label out of range", lambda L: L[:2] + [L[2].replace("s0000,0,", "s0000,12,")] + L[3:],
     "column 'label' = 12 is out of range"),
    ("empty", lambda L: [], "empty file"),
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(capsys, design_dir, tmp_path, case, edit, msg):
    bad = bad_csv(tmp_path, design_dir, capsys, edit)
    rep = tmp_path / "rep"
    code, out, err = run(capsys, "evaluate", design_dir, "--measured", bad, "--report", rep, "--json")
    assert code == 2 and out == ""
    assert msg in err and str(bad) in err and err.count("\n") == 1
    assert not rep.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".rep")]


def test_scan_with_wrong_pitch_and_design_with_other_detectors_are_refused(capsys, design_dir, tmp_path,
                                                                            small_design):
    out = tmp_path / "scan.npz"
    measure(capsys, design_dir, out, fmt="scan", samples=4)
    with np.load(out) as z:
        arrays = dict(z)
    arrays["pitch_m"] = np.float64(0.4)  # millimetres by mistake
    np.savez(tmp_path / "mm.npz", **arrays)
    code, _, err = run(capsys, "evaluate", design_dir, "--measured", tmp_path / "mm.npz")
    assert code == 2 and "field 'pitch_m' = 0.4 m is coarser than the smallest detector" in err
    csv_out = tmp_path / "lab.csv"
    measure(capsys, design_dir, csv_out, samples=4)
    other = tmp_path / "diff"
    save_design(small_design(detectors="differential"), other)
    code, _, err = run(capsys, "evaluate", other, "--measured", csv_out)
    assert code == 2 and "missing detector column(s) det10" in err and "the design has 20 detectors" in err


def test_input_index_out_of_range_is_refused(capsys, design_dir, tmp_path):
    out = tmp_path / "lab.csv"
    measure(capsys, design_dir, out, samples=4)
    fixed = []
    for ln in out.read_text().splitlines():
        parts = ln.split(",")
        if parts[0] == "s0002":
            parts[2] = "9999"  # the input column
        fixed.append(",".join(parts))
    out.write_text("\n".join(fixed) + "\n")
    code, _, err = run(capsys, "evaluate", design_dir, "--measured", out)
    assert code == 2 and "column 'input' of sample 's0002' = 9999 is out of range" in err and "300 images" in err


def test_small_negative_readings_are_kept_counted_and_reported(capsys, design_dir, tmp_path):
    out = tmp_path / "lab.csv"
    measure(capsys, design_dir, out, "--noise", "0.3", samples=20)
    j = run_json(capsys, "evaluate", design_dir, "--measured", out)
    powers = np.array(j["powers"])
    assert j["negative_values"]["count"] == int((powers < 0).sum()) > 0
    assert j["n"] == 20  # nothing dropped
    code, text, _ = run(capsys, "evaluate", design_dir, "--measured", out)
    assert code == 0 and f"{j['negative_values']['count']} of 200 detector readings are negative (kept" in text


def test_without_inputs_there_is_no_simulation_comparison(capsys, design_dir, tmp_path):
    out = tmp_path / "lab.csv"
    measure(capsys, design_dir, out, samples=10)
    lines = [",".join(p for i, p in enumerate(ln.split(",")) if i != 2) if not ln.startswith("#") else ln
             for ln in out.read_text().splitlines()]
    (tmp_path / "noinput.csv").write_text("\n".join(lines) + "\n")
    j = run_json(capsys, "evaluate", design_dir, "--measured", tmp_path / "noinput.csv", "--dataset", "digits")
    assert j["simulation"] is None and j["inputs"] is None and "calibration" in j
    assert any("names no inputs" in n for n in j["notes"])
    code, _, err = run(capsys, "evaluate", design_dir, "--measured", tmp_path / "noinput.csv", "--apply-fitted-gains")
    assert code == 2 and "--apply-fitted-gains needs the inputs" in err
    # scans without inputs: integrated where the scan coordinates put the detectors, unless asked otherwise
    measure(capsys, design_dir, tmp_path / "scan.npz", fmt="scan", samples=4)
    with np.load(tmp_path / "scan.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "inputs"}
    np.savez(tmp_path / "noinput.npz", **arrays)
    j = run_json(capsys, "evaluate", design_dir, "--measured", tmp_path / "noinput.npz")
    assert j["registration"]["method"] == "none" and any("not registered" in n for n in j["notes"])
    assert j["samples"] == ["scan0", "scan1", "scan2", "scan3"]
    j = run_json(capsys, "evaluate", design_dir, "--measured", tmp_path / "noinput.npz", "--register", "detectors")
    assert j["registration"]["method"] == "detectors"
    code, _, err = run(capsys, "evaluate", design_dir, "--measured", tmp_path / "noinput.npz", "--register", "offset")
    assert code == 2 and "registering by 'offset' needs the simulated output" in err


def test_measure_sim_refusals(capsys, design_dir, tmp_path):
    out = tmp_path / "lab.csv"
    measure(capsys, design_dir, out, samples=3)
    code, _, err = run(capsys, "measure-sim", design_dir, "--dataset", "digits", "--samples", 3, "--format", "csv",
                       "--out", out)
    assert code == 2 and "exists" in err and "--force" in err
    for extra, msg in [(["--format", "scan", "--out", tmp_path / "s.npz", "--detector-gain-spread", "0.1"],
                        "--detector-gain-spread applies to --format csv"),
                       (["--format", "csv", "--out", tmp_path / "x.npz"], "writes a .csv file"),
                       (["--format", "csv", "--out", tmp_path / "y.csv", "--misalign", "tilt=1"], "unknown key 'tilt'"),
                       (["--format", "csv", "--out", tmp_path / "y.csv", "--noise", "-1"], "--noise must be"),
                       (["--format", "csv", "--out", tmp_path / "y.csv", "--scan-pitch", "1mm"], "apply to --format scan"),
                       (["--format", "csv", "--out", tmp_path / "y.csv", "--layer-shift", "linear"],
                        "--layer-shift is gone"),
                       (["--format", "csv", "--out", tmp_path / "y.csv", "--oversample", "9"], "--oversample must be"),
                       (["--format", "csv", "--out", tmp_path / "y.csv", "--budget", "nosuch"], "budget 'nosuch'"),
                       (["--format", "csv", "--out", tmp_path / "y.csv", "--budget", "hand", "--misalign",
                         "detector=0.1mm,0mm"], "draws the detector plane")]:
        code, _, err = run(capsys, "measure-sim", design_dir, "--dataset", "digits", "--samples", 3, *extra)
        assert code == 2 and msg in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.csv", "lab.csv.truth.json"]
