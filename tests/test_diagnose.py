"""``d2nn diagnose`` (issue 14): the fit against analytic least squares, recovery of a known
as-built stack from ``d2nn measure-sim`` data, honest "not determined", and bad input.

The synthetic truth comes from ``d2nn measure-sim`` (diffractive.measured.synthetic, which
samples the as-built output at the scanner's points independently of the fit's model path),
with a budget that draws lateral offsets, gap errors and a detector-plane offset only, so
the fitted model holds the truth and a noiseless fit must find it.
"""
import json
import math

import numpy as np
import pytest

from d2nn.cli import main
from diffractive.asbuilt import AsBuilt
from diffractive.design import make_design, save_design
from diffractive.measured.diagnose import _covariance, fit_warnings, levenberg_marquardt, parse_fit_kinds
from diffractive.errors import D2NNError

PITCH_M = 0.4e-3
BUDGET = """\
name = "test"
absorption = false
quantise = false
[lateral_m]
uniform = 0.2e-3
[axial_m]
uniform = 0.25e-3
[detector_offset_m]
uniform = 0.2e-3
"""


# --------------------------------------------------------------------------- the fit, analytically
def test_levenberg_marquardt_finds_the_minimum_of_rosenbrock():
    """|r|^2 with r = (10 (y - x^2), 1 - x) has its only minimum, 0, at (1, 1)."""
    def fun(t):
        return np.array([10 * (t[1] - t[0] ** 2), 1 - t[0]])
    tr = levenberg_marquardt(fun, [-1.2, 1.0], steps=np.full(2, 1e-7), bounds=np.full(2, 10.0), max_iter=200,
                             tol=1e-14, max_step=0.5)
    np.testing.assert_allclose(tr.theta, [1.0, 1.0], atol=1e-4)
    assert tr.losses[-1] < 1e-8 and all(b <= a for a, b in zip(tr.losses, tr.losses[1:]))


def test_a_capped_step_keeps_its_direction_along_a_valley():
    """r = (100 (x - 30 y), x - 6): a narrow straight valley x = 30 y with its minimum at
    (6, 0.2), 12 capped steps of 0.5 away. Capping each component separately steps off the
    valley floor (x moves 0.5, y its full 0.2) and crawls; scaling the whole step keeps it on
    the floor and arrives in a few steps more than 12."""
    def fun(t):
        return np.array([100 * (t[0] - 30 * t[1]), t[0] - 6])
    tr = levenberg_marquardt(fun, [0.0, 0.0], steps=np.full(2, 1e-7), bounds=np.full(2, 10.0), max_iter=16,
                             max_step=0.5)
    np.testing.assert_allclose(tr.theta, [6.0, 0.2], atol=1e-6)
    assert all(b <= a for a, b in zip(tr.losses, tr.losses[1:]))


def test_levenberg_marquardt_says_why_it_stopped():
    def fun(t):
        return np.array([10 * (t[1] - t[0] ** 2), 1 - t[0]])
    # Rosenbrock's valley takes more than 3 steps from (-1.2, 1): out of iterations, still descending
    short = levenberg_marquardt(fun, [-1.2, 1.0], steps=np.full(2, 1e-7), bounds=np.full(2, 10.0), max_iter=3,
                                max_step=0.5)
    assert short.stop == "iterations" and short.losses[-1] > 1e-3
    w = fit_warnings([1.0], {}, 10, refine_losses=short.losses)
    assert len(w) == 1 and "used all 3 iterations" in w[0]
    done = levenberg_marquardt(fun, [-1.2, 1.0], steps=np.full(2, 1e-7), bounds=np.full(2, 10.0), max_iter=200,
                               max_step=0.5)
    assert done.stop in ("converged", "no better step") and len(done.losses) < 201


def test_the_covariance_of_a_straight_line_is_the_textbook_one():
    """y = a + b x + noise: sigma^2 (X^T X)^-1 with sigma^2 = RSS / (n - 2); a third parameter
    that duplicates the intercept lies in an unseen direction: not determined, no number."""
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 50)
    y = 0.3 + 2.0 * x + rng.normal(0, 0.1, x.size)
    X = np.stack([np.ones_like(x), x], axis=1)
    tr = levenberg_marquardt(lambda t: y - X @ t, [0.0, 0.0], steps=np.full(2, 1e-3), bounds=np.full(2, 10.0),
                             max_iter=20, tol=1e-15)
    coef, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
    np.testing.assert_allclose(tr.theta, coef, atol=1e-6)
    sigma, unseen = _covariance(tr.jacobian, tr.residuals, 2)
    np.testing.assert_allclose(sigma, np.sqrt(np.diag(rss[0] / (x.size - 2) * np.linalg.inv(X.T @ X))), rtol=1e-5)
    assert not unseen.any()
    X3 = np.stack([np.ones_like(x), x, np.ones_like(x)], axis=1)
    sigma3, unseen3 = _covariance(-X3, y - X3 @ np.r_[coef, 0.0], 3)
    assert list(unseen3) == [True, False, True] and np.isinf(sigma3[[0, 2]]).all() and np.isfinite(sigma3[1])


def test_fit_kinds_are_checked():
    assert parse_fit_kinds("axial, lateral") == ("lateral", "axial")
    with pytest.raises(D2NNError, match="'tilt' is not a kind"):
        parse_fit_kinds("lateral,tilt")
    with pytest.raises(D2NNError, match="degenerate"):
        parse_fit_kinds("input,lateral,detector")


def test_a_lonely_best_start_and_an_accuracy_mismatch_are_warned_about():
    assert fit_warnings([100.0, 100.5, 400.0], {"fitted": 0.80, "measured": 0.81}, 200) == []
    w = fit_warnings([100.0, 300.0, 400.0], {"fitted": 0.80, "measured": 0.81}, 200)
    assert len(w) == 1 and "only 1 of 3 starts" in w[0] and "3.00x higher" in w[0]
    # 74 % against 80 % on 200 objects is 2.1 standard errors: no warning; on 2000 it is 6.7
    assert fit_warnings([1.0], {"fitted": 0.74, "measured": 0.80}, 200) == []
    w = fit_warnings([1.0], {"fitted": 0.74, "measured": 0.80}, 2000)
    assert len(w) == 1 and "does not behave like the printed one" in w[0]
    assert fit_warnings([1.0], {}, 10, explained=0.8) == []
    w = fit_warnings([1.0], {}, 10, explained=0.3)
    assert len(w) == 1 and "explains 30 % of the measured power" in w[0]


# --------------------------------------------------------------------------- end to end
def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A small two-layer design (48 x 48, 4 mm gaps: the field stays inside the grid) and
    noiseless scans of 100 digits through a stack drawn from BUDGET (seed 1)."""
    root = tmp_path_factory.mktemp("diagnose")
    design = root / "design"
    save_design(make_design(layer_shape=(48, 48), n_layers=2, pitch_m=PITCH_M, spacing_m=4e-3, seed=0,
                            input_size_yx_m=(6e-3, 6e-3), detector_size_m=1.2e-3, detector_spacing_m=2.4e-3,
                            provenance={"seed": 0, "dataset": {"name": "digits"}}), design)
    (root / "budget.toml").write_text(BUDGET)
    assert main(["measure-sim", str(design), "--dataset", "digits", "--samples", "100", "--budget",
                 str(root / "budget.toml"), "--seed", "1", "--format", "scan", "--out", str(root / "scan.npz"),
                 "--json"]) == 0
    assert main(["measure-sim", str(design), "--dataset", "digits", "--samples", "20", "--format", "csv",
                 "--out", str(root / "powers.csv"), "--json"]) == 0
    return root


@pytest.fixture(scope="module")
def fitted(lab):
    """``d2nn diagnose`` of the scans, with a report (run once for the tests below)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["diagnose", str(lab / "design"), "--measured", str(lab / "scan.npz"), "--dataset", "digits",
                     "--budget", str(lab / "budget.toml"), "--fit", "lateral,axial,detector", "--starts", "2",
                     "--report", str(lab / "report"), "--json", "--quiet"])
    assert code == 0
    return json.loads(out.getvalue())


def test_a_noiseless_fit_recovers_the_stack_as_built(lab, fitted):
    """Issue 14's target: offsets within 1/10 pixel, gaps within 0.05 mm, from 100 scans."""
    truth = json.loads((lab / "scan.npz.truth.json").read_text())
    ab = AsBuilt.from_json(truth["as_built"])
    est = {e["label"]: e for e in fitted["estimates"]}
    true = {}
    for i, (x, y) in enumerate(ab.layer_offsets_xy_m):
        true[f"layer {i + 1} x"], true[f"layer {i + 1} y"] = x, y
    true["detector x"], true["detector y"] = truth["detector_offset_m"]
    for label, value in true.items():
        assert abs(est[label]["value_si"] - value) < PITCH_M / 10, (label, est[label]["value_si"], value)
        assert est[label]["determined"]
    gaps = [e for e in fitted["estimates"] if e["kind"] == "axial"]
    assert len(gaps) == 3
    for e, g in zip(gaps, ab.gap_errors_m):
        assert abs(e["value_si"] - g) < 0.05e-3, (e["label"], e["value_si"], g)
    # the truth was large enough to matter: the fit did not just stay at the designed stack
    assert max(abs(v) for v in true.values()) > PITCH_M / 4
    # and the fitted model reproduces the scans: RMS residual below 1 % of the scans' RMS
    assert fitted["fine"]["losses"][-1] < 1e-4 * 100 * 48 * 48
    assert fitted["explained"] > 0.9999 and not any("explains" in w or "classifies" in w for w in fitted["warnings"])


def test_the_correction_plan_undoes_each_offset(fitted):
    """"move layer N by -dx": the plan's numbers are the negated estimates, in mm."""
    plan = "\n".join(fitted["corrections"])
    est = {e["label"]: e for e in fitted["estimates"]}
    for i in (1, 2):
        x = est[f"layer {i} x"]["value_si"]
        if abs(x) > 25e-6:  # above ACTIONABLE and shown to 0.01 mm
            assert f"{-x * 1e3:+.2f} mm in x" in plan, plan


def test_the_report_holds_the_fit_and_its_figures(lab, fitted):
    rep = lab / "report"
    assert sorted(p.name for p in rep.iterdir()) == ["diagnosis.md", "fit.json", "loss.png", "offsets.png",
                                                     "patterns.png"]
    doc = json.loads((rep / "fit.json").read_text())
    assert doc["schema"] == "d2nn.diagnosis/1" and len(doc["starts"]) == 2
    ab = AsBuilt.from_json(doc["as_built"])
    assert np.allclose(np.asarray(ab.layer_offsets_xy_m).ravel(),
                       [e["value_si"] for e in doc["estimates"] if e["kind"] == "lateral"])
    md = (rep / "diagnosis.md").read_text()
    assert "layer 2 x" in md and "correction" in md.lower()


def test_a_rotation_the_grid_cannot_resolve_is_not_determined(lab, capsys):
    """At one cell per pixel a plate's rotation is point-sampled: 0.1 deg moves the corner of a
    48-pixel plate by 0.06 pixel, no sample changes, so the data cannot see it. The report says
    so instead of giving a number, and the plan does not ask to rotate anything."""
    code, out, err = run(capsys, "diagnose", lab / "design", "--measured", lab / "scan.npz", "--dataset", "digits",
                         "--budget", lab / "budget.toml", "--fit", "lateral,rotation", "--starts", "1",
                         "--iterations", "3", "--coarse-samples", "16", "--max-samples", "16", "--quiet")
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if ln.strip().startswith("layer ") and "x" not in ln and " y " not in ln]
    assert len(rows) == 2 and all("not determined (the data do not see it)" in r for r in rows), out
    assert "rotate" not in out.split("correction plan")[1]


# --------------------------------------------------------------------------- bad input
def write_gains(path, gains):
    """A gains file as ``d2nn evaluate --gains`` reads it: one row, a column per detector."""
    path.write_text(",".join(f"det{k}" for k in range(len(gains))) + "\n" + ",".join(map(str, gains)) + "\n")


def refused(capsys, lab, *extra, report=True):
    rep = lab / "refused-report"
    argv = ["diagnose", lab / "design", "--dataset", "digits", *extra] + (["--report", rep] if report else [])
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.startswith("d2nn diagnose: error: "), err
    assert not rep.exists()
    return err


def test_bad_input_is_one_line_and_writes_nothing(lab, capsys, tmp_path):
    scan = lab / "scan.npz"
    assert "'tilt' is not a kind" in refused(capsys, lab, "--measured", scan, "--fit", "tilt")
    assert "degenerate" in refused(capsys, lab, "--measured", scan, "--fit", "input,lateral,detector")
    assert "--starts must be at least 1" in refused(capsys, lab, "--measured", scan, "--starts", "0")
    # detector powers without their inputs
    lines = (lab / "powers.csv").read_text().splitlines()
    header = [ln for ln in lines if not ln.startswith("#")][0].split(",")
    col = header.index("input")
    rows = [ln.split(",") for ln in lines if not ln.startswith("#")]
    no_input = tmp_path / "no-input.csv"
    no_input.write_text("\n".join(",".join(r[:col] + r[col + 1:]) for r in rows) + "\n")
    err = refused(capsys, lab, "--measured", no_input)
    assert "no-input.csv" in err and "'input'" in err
    # an index beyond the split
    rows[1][col] = "99999"
    far = tmp_path / "far.csv"
    far.write_text("\n".join(",".join(r) for r in rows) + "\n")
    err = refused(capsys, lab, "--measured", far)
    assert "far.csv" in err and "'input'" in err and "99999" in err and "out of range" in err
    # a malformed measurement, as evaluate reads it
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    assert "broken.npz" in refused(capsys, lab, "--measured", broken)
    # a scan with per-detector gains
    gains = tmp_path / "gains.csv"
    write_gains(gains, [1.0] * 10)
    assert "--gains" in refused(capsys, lab, "--measured", scan, "--gains", gains)


def test_an_existing_report_is_kept_without_force(lab, capsys, fitted):
    before = (lab / "report" / "fit.json").read_bytes()
    code, out, err = run(capsys, "diagnose", lab / "design", "--measured", lab / "scan.npz", "--dataset", "digits",
                         "--report", lab / "report")
    assert code == 2 and "--force" in err and err.count("\n") == 1
    assert (lab / "report" / "fit.json").read_bytes() == before


def test_detector_powers_with_known_gains_locate_a_shifted_plate(tmp_path, capsys):
    """Detector powers only: one plate of a single-layer stack moved by 0.6 pixel in x,
    20 noiseless samples, the true gains given: the fit finds the shift within 1/10 pixel."""
    design = tmp_path / "design"
    save_design(make_design(layer_shape=(48, 48), n_layers=1, pitch_m=PITCH_M, spacing_m=4e-3, seed=2,
                            input_size_yx_m=(6e-3, 6e-3), detector_size_m=1.2e-3, detector_spacing_m=2.4e-3,
                            provenance={"seed": 0, "dataset": {"name": "digits"}}), design)
    assert main(["measure-sim", str(design), "--dataset", "digits", "--samples", "40", "--format", "csv",
                 "--misalign", "layer1=0.24mm,0", "--out", str(tmp_path / "p.csv"), "--json"]) == 0
    capsys.readouterr()
    truth = json.loads((tmp_path / "p.csv.truth.json").read_text())
    gains = tmp_path / "gains.csv"
    write_gains(gains, truth["gains"])
    code, out, err = run(capsys, "diagnose", design, "--measured", tmp_path / "p.csv", "--gains", gains,
                         "--dataset", "digits", "--fit", "lateral", "--budget", "holder", "--starts", "2", "--json",
                         "--quiet")
    assert code == 0, err
    est = {e["label"]: e["value_si"] for e in json.loads(out)["estimates"]}
    assert abs(est["layer 1 x"] - 0.24e-3) < PITCH_M / 10 and abs(est["layer 1 y"]) < PITCH_M / 10, est
    assert math.isfinite(est["layer 1 x"])


def test_auto_turns_to_the_detector_powers_when_the_scans_fit_explains_little(lab, capsys):
    """With noise as large as the signal no stack explains 60 % of the scans, so ``auto``
    (the default) must also fit the starts to the detector powers read out of them and bring
    their best to the scans as one more start; ``scans`` must not."""
    noisy = lab / "noisy.npz"
    assert main(["measure-sim", str(lab / "design"), "--dataset", "digits", "--samples", "30", "--budget",
                 str(lab / "budget.toml"), "--seed", "1", "--noise", "1.5", "--format", "scan", "--out", str(noisy),
                 "--json"]) == 0
    capsys.readouterr()
    common = ["diagnose", lab / "design", "--measured", noisy, "--dataset", "digits", "--budget",
              lab / "budget.toml", "--fit", "lateral", "--starts", "2", "--iterations", "4", "--json", "--quiet"]
    code, out, _ = run(capsys, *common)
    assert code == 0
    fit = json.loads(out)
    assert [s["fitted_to"] for s in fit["starts"]] == ["scans", "scans", "powers, then scans"]
    assert all(s["explained"] < 0.6 for s in fit["starts"][:2])
    assert any("also fitted to the detector powers" in n for n in fit["notes"])
    # every start's loss is a scan loss on the same samples (all 30: fewer than --coarse-samples),
    # so the refinement begins exactly at the lowest of them
    assert fit["fine"]["losses"][0] == pytest.approx(min(s["loss"] for s in fit["starts"]), rel=1e-9)
    code, out, _ = run(capsys, *common, "--coarse-on", "scans")
    fit = json.loads(out)
    assert code == 0 and [s["fitted_to"] for s in fit["starts"]] == ["scans", "scans"]
    assert not any("detector powers" in n for n in fit["notes"])
