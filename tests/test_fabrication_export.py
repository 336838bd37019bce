"""d2nn export: files, manifest, verified meshes, exact STL round trip, atomicity, CLI errors."""
import dataclasses
import json
import os

import numpy as np
import pytest

from d2nn.cli import main
from diffractive.design import DesignError, make_design, save_design
from fabrication import export as export_mod
from fabrication.export import export_design
from fabrication.heights import height_to_transmission, phase_to_steps
from fabrication.materials import FabricationError, Material
from fabrication.mesh import sha256_file
from fabrication.roundtrip import heights_from_export, printed_from_stl, transmissions_from_stl
from fabrication.validate import PrinterSpec, printability, stl_report

SHAPE = (12, 10)


@pytest.fixture(scope="module")
def design():
    return make_design(layer_shape=SHAPE, n_layers=3, spacing_m=8e-3, seed=5)


@pytest.fixture(scope="module")
def exported(design, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "stl"
    res = export_design(design, out)
    return out, res


def test_files_and_manifest(design, exported):
    out, res = exported
    names = sorted(os.listdir(out))
    assert names == ["holder.stl", "layer_01.stl", "layer_02.stl", "layer_03.stl", "manifest.json"]
    man = json.loads((out / "manifest.json").read_text())
    assert man == res.manifest
    assert man["units"] == "mm" and man["schema"] == "d2nn.export/1"
    assert man["material"]["name"] == design.material.name and man["material"]["n"] == design.material.n
    assert man["z_step_mm"] == pytest.approx(design.fabrication.z_step_m * 1e3)
    z = man["z_step_mm"]
    levels = phase_to_steps(design.phases, design.wavelength_m, design.material.n, design.fabrication.z_step_m,
                            design.fabrication.base_m)
    for e, lv in zip(man["layers"], levels):
        assert e["sha256"] == sha256_file(out / e["file"])
        assert e["min_height_mm"] == pytest.approx(lv.min() * z) and e["max_height_mm"] == pytest.approx(lv.max() * z)
        assert e["faces"] > 0 and e["volume_mm3"] > 0 and e["verified"] is True
    assert man["holder"]["sha256"] == sha256_file(out / "holder.stl")
    np.testing.assert_allclose(man["holder"]["layer_planes_x_mm"], [8, 16, 24])
    assert man["holder"]["output_plane_x_mm"] == pytest.approx(32)


def test_each_layer_is_a_verified_solid(design, exported):
    out, res = exported
    man = res.manifest
    x0, x1, y0, y1 = man["plate"]["outer_mm"]
    for e in man["layers"]:
        rep = stl_report(out / e["file"])
        assert rep["watertight"] and rep["winding_consistent"] and rep["bodies"] == 1
        assert rep["faces"] == e["faces"] and rep["duplicate_faces"] == 0 and rep["degenerate_faces"] == 0
        assert rep["volume_mm3"] == pytest.approx(e["height_field_volume_mm3"], rel=1e-3)
        np.testing.assert_allclose(rep["bounds_mm"], [[x0, y0, 0], [x1, y1, man["plate"]["frame_thickness_mm"]]],
                                   atol=1e-5)
    # layer + frame: the active area is the design's, the frame adds the margin on every side
    ny, nx = SHAPE
    p = design.pitch_m * 1e3
    m = man["plate"]["margin_mm"]
    assert (x1 - x0, y1 - y0) == pytest.approx((nx * p + 2 * m, ny * p + 2 * m))
    rep = stl_report(out / "holder.stl")
    assert rep["watertight"] and rep["winding_consistent"] and rep["bodies"] == 1


def test_stl_round_trip_is_exact_and_includes_absorption(design, exported):
    out, _ = exported
    n, kappa, z, base = (design.material.n, design.material.kappa, design.fabrication.z_step_m,
                         design.fabrication.base_m)
    levels, _ = heights_from_export(design, out)
    expected = phase_to_steps(design.phases, design.wavelength_m, n, z, base)
    np.testing.assert_array_equal(levels, expected)
    t = transmissions_from_stl(design, out)
    assert t.dtype == np.complex64 and t.shape == (3,) + SHAPE
    h = expected * z
    np.testing.assert_allclose(np.abs(t), np.exp(-2 * np.pi * kappa * h / design.wavelength_m), rtol=1e-6)
    base_phase = 2 * np.pi * (n - 1) * round(base / z) * z / design.wavelength_m
    err = np.angle(t * np.exp(-1j * (base_phase + design.phases)))
    assert np.abs(err).max() <= np.pi * z * (n - 1) / design.wavelength_m + 1e-5
    # another material re-reads the same heights
    t2 = transmissions_from_stl(design, out, material=Material("clear", 1.5, 0.0))
    np.testing.assert_allclose(t2, height_to_transmission(h, design.wavelength_m, 1.5, 0.0), atol=1e-6)
    # and the simulation runs on the printed stack
    from diffractive.simulate import simulate

    r = simulate(design, np.random.default_rng(0).random((2, 8, 8), dtype=np.float32), transmissions=t)
    assert r.powers.shape == (2, len(design.detectors))


def test_manifest_mismatch_is_reported(exported):
    out, _ = exported
    other = make_design(layer_shape=(12, 11), n_layers=3, spacing_m=8e-3)
    with pytest.raises(FabricationError, match="layers of"):
        transmissions_from_stl(other, out)


def test_printed_from_stl_is_the_as_built_stack_of_the_read_heights(design, exported):
    from diffractive.asbuilt import AsBuilt, build

    out, _ = exported
    printed, h, man = printed_from_stl(design, out)
    levels, _ = heights_from_export(design, out)
    np.testing.assert_allclose(h, levels * man["z_step_mm"] * 1e-3, rtol=1e-12)
    assert printed.material.n == man["material"]["n"] and printed.material.kappa == man["material"]["kappa"]
    t = build(printed, AsBuilt(absorption=True)).transmissions(heights_m=h)
    np.testing.assert_allclose(t, transmissions_from_stl(design, out), atol=1e-6)
    other, _, _ = printed_from_stl(design, out, material=Material("clear", 1.5, 0.0))
    assert (other.material.n, other.material.kappa) == (1.5, 0.0)


def test_cli_simulate_from_stl_keeps_the_export_material_and_oversamples(small_design, tmp_path, capsys):
    """``d2nn simulate --from-stl``: the stack re-read from an export made with another material
    than the design's is simulated with the export's material (its heights were computed for it),
    through the as-built model; its accuracy is the ideal stack's to within the quantisation."""
    from diffractive.asbuilt import AsBuilt, simulate_built
    from diffractive.design import load_design
    from training.datasets import design_split

    save_design(small_design(), tmp_path / "d")
    mat = tmp_path / "m.toml"
    mat.write_text('name = "Resin X"\nn = 1.6\nkappa = 0.002\n')
    assert main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--material-file", str(mat),
                 "--quiet"]) == 0
    capsys.readouterr()

    def sim(*extra):
        assert main(["simulate", str(tmp_path / "d"), "--dataset", "digits", "--limit", "60", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    ideal, stl = sim(), sim("--from-stl", str(tmp_path / "o"))
    assert stl["source"] == "stl" and stl["material"]["name"] == "Resin X" and stl["oversample"] == 1
    assert abs(stl["accuracy"] - ideal["accuracy"]) <= 0.05
    assert (stl["material"]["n"], stl["material"]["kappa"]) == (1.6, 0.002)
    design = load_design(tmp_path / "d")
    images, labels = design_split(design, "digits", "test", limit=60)
    printed, h, _ = printed_from_stl(design, tmp_path / "o")
    ref = simulate_built(printed, images, AsBuilt(absorption=True), heights_m=h)
    assert stl["correct"] == int(np.sum(ref.predictions == labels))
    # with the design's own material the printed heights would be read as the wrong phases
    wrong = simulate_built(design, images, AsBuilt(absorption=True), heights_m=h)
    assert np.abs(wrong.powers - ref.powers).max() > 0.05 * ref.powers.max()
    # --oversample applies with and without --from-stl
    fine, fine_stl = sim("--oversample", "2"), sim("--from-stl", str(tmp_path / "o"), "--oversample", "2")
    assert fine["oversample"] == 2 and fine_stl["oversample"] == 2 and fine["source"] == "ideal"
    ref2 = simulate_built(printed, images, AsBuilt(absorption=True), heights_m=h, oversample=2)
    assert fine_stl["correct"] == int(np.sum(ref2.predictions == labels))
    assert abs(fine["accuracy"] - ideal["accuracy"]) <= 0.1
    assert main(["simulate", str(tmp_path / "d"), "--dataset", "digits", "--oversample", "0"]) == 2
    assert "--oversample must be" in capsys.readouterr().err


def test_refuses_non_empty_dir_and_force_replaces(design, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "layer_09.stl").write_text("stale")
    with pytest.raises(FileExistsError, match="not empty"):
        export_design(design, out)
    assert sorted(os.listdir(out)) == ["layer_09.stl", "notes.txt"]
    export_design(design, out, force=True)
    assert sorted(os.listdir(out)) == ["holder.stl", "layer_01.stl", "layer_02.stl", "layer_03.stl",
                                       "manifest.json", "notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["o"]          # no staging directory left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    export_design(design, empty)                           # an empty directory is fine
    assert (empty / "manifest.json").is_file()


def test_failure_leaves_nothing_half_written(design, tmp_path, monkeypatch):
    real = export_mod.write_stl
    calls = []

    def flaky(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"half")
            raise OSError("disk full")
        return real(path, *a, **k)

    monkeypatch.setattr(export_mod, "write_stl", flaky)
    with pytest.raises(OSError, match="disk full"):
        export_design(design, tmp_path / "new")
    assert os.listdir(tmp_path) == []                       # neither the target nor a staging folder
    # a failed --force export leaves the previous export untouched
    monkeypatch.setattr(export_mod, "write_stl", real)
    res = export_design(design, tmp_path / "old")
    before = {p: (tmp_path / "old" / p).read_bytes() for p in os.listdir(tmp_path / "old")}
    calls.clear()
    monkeypatch.setattr(export_mod, "write_stl", flaky)
    with pytest.raises(OSError):
        export_design(design, tmp_path / "old", force=True, base_m=1e-3)
    assert {p: (tmp_path / "old" / p).read_bytes() for p in os.listdir(tmp_path / "old")} == before
    assert sorted(os.listdir(tmp_path)) == ["old"]
    assert res.manifest["layers"][0]["sha256"] == sha256_file(tmp_path / "old" / "layer_01.stl")


@pytest.mark.parametrize("kwargs,match", [
    (dict(material=None, z_step_m=0.0), "z step must be positive"),
    (dict(z_step_m=-1e-6), "z step must be positive"),
    (dict(base_m=-1e-3), "base thickness must be >= 0"),
    (dict(base_m=0.0), "use a base of at least one z step"),
])
def test_bad_settings_write_nothing(design, tmp_path, kwargs, match):
    with pytest.raises(FabricationError, match=match):
        export_design(design, tmp_path / "x", **kwargs)
    assert os.listdir(tmp_path) == []


def test_non_finite_phases_write_nothing(design, tmp_path):
    ph = design.phases.copy()
    ph[1, 2, 3] = np.nan
    with pytest.raises(DesignError, match="finite"):  # a Design cannot hold them, so no export starts
        export_design(dataclasses.replace(design, phases=ph), tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_layers_too_close_for_the_holder(tmp_path):
    d = make_design(layer_shape=SHAPE, n_layers=2, spacing_m=1.5e-3)
    with pytest.raises(FabricationError, match="does not fit"):
        export_design(d, tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_printability_warnings_carry_numbers():
    lv = np.array([[31, 96], [96, 31]])
    rep = printability(lv, 0.1e-3, 16e-6, 0.75e-3, 1.7227, 0.031, printer=PrinterSpec(xy_resolution_m=42e-6))
    text = " | ".join(rep.warnings)
    assert "smallest lateral feature 0.100 mm" in text and "2.4 printer dots" in text
    assert "tallest step between neighbouring pixels is 1.040 mm, 10.4 x the 0.100 mm pitch" in text
    assert rep.numbers["total_thickness_mm"] == pytest.approx(1.536)
    thin = printability(np.array([[5]]), 0.4e-3, 16e-6, 0.75e-3, 1.7227, 0.031)
    assert any("thinnest point of a layer is 0.080 mm" in w for w in thin.warnings)


# ------------------------------------------------------------------ the command
def test_cli_export(design, tmp_path, capsys):
    save_design(design, tmp_path / "d")
    mat = tmp_path / "m.toml"
    mat.write_text('name = "Resin X"\nn = 1.6\nkappa = 0.02\n')
    assert main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--material-file", str(mat),
                 "--z-step", "20um", "--base", "0.6mm"]) == 0
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["material"]["name"] == "Resin X" and man["z_step_mm"] == pytest.approx(0.02)
    assert man["base_mm"] == pytest.approx(0.6)
    err = capsys.readouterr().err
    assert "layer 3/3" in err                                  # progress
    assert main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--force", "--quiet",
                 "--n", "1.9", "--kappa", "0"]) == 0
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert (man["material"]["n"], man["material"]["kappa"]) == (1.9, 0.0)


@pytest.mark.parametrize("args,match", [
    (["--n", "1.0"], "refractive index n must be greater than 1"),
    (["--kappa", "-0.1"], "kappa must be >= 0"),
    (["--z-step", "0"], "z step must be positive"),
    (["--base=-1mm"], "base thickness must be >= 0"),
    (["--base", "0.6"], "'0.6' has no unit: give a unit, e.g. 0.1mm"),
    (["--z-step", "16 furlongs"], "unknown length unit"),
    (["--material", "unobtainium"], "unknown material"),
])
def test_cli_bad_input_is_one_line(design, tmp_path, capsys, args, match):
    save_design(design, tmp_path / "d")
    assert main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--quiet"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("d2nn export: error:") and match in err[0]
    assert not (tmp_path / "o").exists()


def test_build_area_check():
    from fabrication.validate import fits_build_area

    pr = PrinterSpec()
    assert fits_build_area((208, 100.4), pr) and fits_build_area((100.4, 208), pr)
    assert not fits_build_area((300, 10), pr) and not fits_build_area((200, 200), pr)
