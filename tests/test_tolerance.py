"""Tolerance analysis (diffractive/tolerance.py), its report and ``d2nn tolerance`` / ``d2nn export``."""
import json
import math

import numpy as np
import pytest

from diffractive.budget import load_budget, parse_budget
from diffractive.design import make_design, save_design
from diffractive.errors import D2NNError
from diffractive.tolerance import Point, accuracy_under, analyse, read_summary, tolerance_at
from diffractive.tolerance_report import write_report


def test_tolerance_is_interpolated_where_the_mean_crosses_the_drop():
    sizes, means = [1.0, 2.0, 3.0], [0.90, 0.86, 0.70]
    assert tolerance_at(sizes, means, 0.90, 0.01) == pytest.approx(1.25)   # 0.90 -> 0.86 crosses 0.89 at 1.25
    assert tolerance_at(sizes, means, 0.90, 0.05) == pytest.approx(2.0625)  # 0.86 -> 0.70 crosses 0.85
    assert tolerance_at(sizes, means, 0.90, 0.30) is None
    assert tolerance_at([1.0], [0.5], 0.9, 0.01) == pytest.approx(1 * 0.01 / 0.4)


def test_point_statistics():
    p = Point(0.0, [0.8, 0.9, 1.0, 0.7])
    assert p.mean == pytest.approx(0.85)
    lo, hi = p.interval
    assert hi - p.mean == pytest.approx(1.96 * np.std([0.8, 0.9, 1.0, 0.7], ddof=1) / 2)
    assert p.p5 == pytest.approx(np.percentile([0.8, 0.9, 1.0, 0.7], 5)) and lo < p.mean < hi


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small design that classifies digits well: trained once for these tests."""
    from training.config import parse_config
    from training.trainer import Trainer

    cfg = parse_config({"name": "tol", "geometry": {"layer_shape": [32, 32], "n_layers": 2, "distance_m": 8e-3},
                        "input": {"size_yx_m": [9.6e-3, 9.6e-3]}, "detectors": {"size_m": 1.6e-3, "spacing_m": 3.2e-3},
                        "data": {"dataset": "digits"},
                        "trainer": {"epochs": 3, "batch_size": 16, "learning_rate": 0.1, "workers": 1}})
    out = tmp_path_factory.mktemp("tol") / "design"
    Trainer(cfg, out, log=lambda *a: None).run()
    from diffractive.design import load_design
    from training.datasets import design_split

    d = load_design(out)
    x, y = design_split(d, "digits", "test")
    return out, d, x[:120], y[:120]


def test_larger_errors_cost_accuracy_and_draws_do_not_depend_on_threads(trained):
    _, d, x, y = trained
    small = parse_budget({"lateral_m": {"uniform": 0.05e-3}, "absorption": False, "quantise": False})
    large = parse_budget({"lateral_m": {"uniform": 1.2e-3}, "absorption": False, "quantise": False})
    a = accuracy_under(d, x, y, small, draws=4, workers=1)
    b = accuracy_under(d, x, y, large, draws=4, workers=2)
    assert a.mean > b.mean + 0.1
    assert accuracy_under(d, x, y, large, draws=4, workers=1).accuracies == b.accuracies


def test_analyse_sweeps_each_kind_and_finds_its_tolerance(trained):
    _, d, x, y = trained
    budget = parse_budget({"name": "t", "lateral_m": {"uniform": 0.4e-3}, "thickness": {"uniform": 0.02},
                           "absorption": False, "quantise": False})
    r = analyse(d, x, y, budget, draws=3, sweep_draws=2, factors=(0.5, 1.0, 3.0), workers=2)
    ideal = float(np.mean(__import__("diffractive.simulate", fromlist=["simulate"]).simulate(d, x).predictions == y))
    assert r.ideal_accuracy == pytest.approx(ideal)
    assert r.printed.mean == pytest.approx(ideal, abs=0.01)  # no absorption, no quantisation: the design itself
    assert [s.kind for s in r.sweeps] == ["lateral_m", "thickness"]
    lat = r.sweeps[0]
    assert [p.size for p in lat.points] == pytest.approx([0, 0.2e-3, 0.4e-3, 1.2e-3])
    assert lat.points[-1].mean < lat.points[0].mean - 0.05 and lat.tolerance_5pt is not None
    assert lat.tolerance_1pt <= lat.tolerance_5pt <= 1.2e-3
    assert len(r.expected.accuracies) == 3
    doc = r.to_json()
    assert doc["schema"] == "d2nn.tolerance/1" and doc["summary"]["tolerances"]["lateral_m"]["unit"] == "m"


def test_report_and_export_carry_the_summary(trained, tmp_path):
    folder, d, x, y = trained
    budget = parse_budget({"name": "t", "axial_m": {"uniform": 0.5e-3}, "absorption": False, "quantise": False})
    r = analyse(d, x[:40], y[:40], budget, draws=2, sweep_draws=1, factors=(1.0,), workers=1)
    out = write_report(r, tmp_path / "rep")
    assert {p.name for p in out.iterdir()} == {"tolerance.json", "tolerance.md", "tolerance.html", "tolerance.png"}
    summary = read_summary(out / "tolerance.json")
    assert summary["budget"] == "t" and summary["draws"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}')
    with pytest.raises(D2NNError, match="bad.json"):
        read_summary(bad)
    for text, match in (('{"schema": "d2nn.tolerance/1", "summary": {"budget": "x", "ideal_accuracy": "high", '
                         '"printed_accuracy": 0.9}}', "summary.ideal_accuracy"), ("", "not valid JSON"),
                        ('{"schema": "d2nn.tolerance/1", "summary": {"budget": "x"', "not valid JSON")):
        bad.write_text(text)
        with pytest.raises(D2NNError, match=match):
            read_summary(bad)
    from fabrication.export import export_design

    res = export_design(d, tmp_path / "stl", tolerance=summary, verify=False)
    man = json.loads((tmp_path / "stl" / "manifest.json").read_text())
    assert man["tolerance"]["expected_accuracy"] == pytest.approx(summary["expected_accuracy"])
    assert res.manifest["tolerance"]["budget"] == "t"


def test_the_command_runs_and_refuses_bad_input(trained, tmp_path, capsys):
    from d2nn.cli import main

    folder, *_ = trained
    rep = tmp_path / "rep"
    code = main(["tolerance", str(folder), "--dataset", "digits", "--samples", "30", "--draws", "2",
                 "--sweep-draws", "1", "--sweep-samples", "20", "--kinds", "lateral_m", "--report", str(rep),
                 "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_images"] == 30 and [s["kind"] for s in doc["sweeps"]] == ["lateral_m"]
    assert (rep / "tolerance.png").is_file()
    assert main(["tolerance", str(folder), "--dataset", "digits", "--kinds", "tilt"]) == 2
    assert "unknown error kind 'tilt'" in capsys.readouterr().err
    assert main(["tolerance", str(folder), "--dataset", "digits", "--report", str(rep)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["tolerance", str(folder), "--dataset", "digits", "--budget", str(tmp_path / "none.toml")]) == 2
    assert "neither a shipped budget" in capsys.readouterr().err
    from diffractive.backend import cupy_available

    if not cupy_available():  # the GPU run itself is tests/test_gpu.py's
        assert main(["tolerance", str(folder), "--dataset", "digits", "--samples", "5", "--device", "cuda",
                     "--report", str(tmp_path / "gpu-rep")]) == 2
        err = capsys.readouterr().err
        assert "--device cuda needs CuPy" in err and err.count("\n") == 1 and not (tmp_path / "gpu-rep").exists()


def test_export_reads_the_designs_own_tolerance_report(trained, tmp_path, capsys):
    import shutil

    from d2nn.cli import main

    folder, d, x, y = trained
    design = tmp_path / "design"
    shutil.copytree(folder, design, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["export", str(design), "--out", str(tmp_path / "plain"), "--quiet", "--verify", "no"]) == 0
    man = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert man["tolerance"]["computed"] is False and "d2nn tolerance" in man["tolerance"]["how"]
    assert "no tolerance analysis found" in capsys.readouterr().out
    assert main(["tolerance", str(design), "--dataset", "digits", "--samples", "20", "--draws", "2", "--kinds", "none",
                 "--budget", "hand", "--report", str(design / "tolerance"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(design), "--out", str(tmp_path / "stl"), "--quiet", "--verify", "no"]) == 0
    man = json.loads((tmp_path / "stl" / "manifest.json").read_text())
    assert man["tolerance"]["budget"] == "hand" and man["tolerance"]["draws"] == 2
    assert "as built under budget 'hand'" in capsys.readouterr().out
    (design / "tolerance" / "tolerance.json").write_text("{not json")
    assert main(["export", str(design), "--out", str(tmp_path / "bad"), "--quiet", "--verify", "no"]) == 2
    assert "tolerance.json: is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_shipped_tolerance_reports_are_readable_and_match_their_designs():
    from pathlib import Path

    from diffractive.design import load_design

    root = Path(__file__).resolve().parents[1] / "designs"
    reports = sorted(root.glob("*/tolerance*/tolerance.json"))
    assert {p.parent.parent.name for p in reports} >= {"fashion-lin5", "fashion-holder", "fashion-hand", "mnist-lin5",
                                                       "mnist-holder"}
    for path in reports:
        summary = read_summary(path)
        assert summary["draws"] >= 20 and summary["n_images"] >= 1667
        doc = json.loads(path.read_text())
        design = load_design(path.parent.parent)
        # a report names the folder it was computed on; a stage kept after its successor took
        # the name (fashion-holder-stage1 was designs/fashion-holder) names the design it trained as
        assert Path(doc["design"]).name in (path.parent.parent.name, design.provenance["config"]["name"])
    # the budget each robust design was made for is the one d2nn export copies
    assert read_summary(root / "fashion-holder" / "tolerance" / "tolerance.json")["budget"] == "holder"
    assert read_summary(root / "fashion-hand" / "tolerance" / "tolerance.json")["budget"] == "hand"
