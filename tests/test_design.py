"""The design folder (diffractive.design): schema d2nn.design/1, validation, atomic writes."""
import json
import os

import numpy as np
import pytest

from diffractive.design import SCHEMA, DesignError, load_design, make_design, save_design


def small_design(**kw):
    args = dict(layer_shape=(16, 16), n_layers=2, spacing_m=5e-3, seed=7)
    args.update(kw)
    return make_design(**args)


@pytest.fixture
def saved(tmp_path):
    folder = save_design(small_design(), tmp_path / "d")
    return folder


def test_round_trip_keeps_every_key(saved):
    d = small_design()
    doc = json.loads((saved / "design.json").read_text())
    assert doc["schema"] == SCHEMA == "d2nn.design/1"
    assert doc == json.loads(json.dumps(d.to_json()))
    d2 = load_design(saved / "design.json")
    assert d2.to_json() == doc
    np.testing.assert_array_equal(d2.phases, d.phases)
    assert d2.phases.shape == (2, 16, 16) and d2.amplitudes is None
    assert doc["distances_m"] == [5e-3] * 3 and doc["n_layers"] == 2
    assert doc["aperture"] == "opaque" and doc["modulation"] == "phase"
    assert doc["provenance"]["seed"] == 7


def test_complex_modulation_round_trip(tmp_path):
    d = small_design()
    d = d.with_phases(d.phases, amplitudes=np.full(d.phases.shape, 0.5, np.float32))
    save_design(d, tmp_path / "c")
    d2 = load_design(tmp_path / "c")
    assert json.loads((tmp_path / "c" / "design.json").read_text())["modulation"] == "complex"
    np.testing.assert_array_equal(d2.amplitudes, 0.5)


def test_writing_refuses_to_overwrite_unless_asked(saved):
    before = (saved / "design.json").read_bytes()
    other = small_design(seed=8, provenance={"seed": 8})
    with pytest.raises(FileExistsError, match="overwrite"):
        save_design(other, saved)
    assert (saved / "design.json").read_bytes() == before
    save_design(other, saved, overwrite=True)
    assert load_design(saved).provenance["seed"] == 8
    assert sorted(os.listdir(saved)) == ["design.json", "phases.npz"]  # no temporary files left


def test_nothing_is_written_for_an_invalid_design(tmp_path):
    d = small_design()
    bad = d.with_phases(np.zeros((3, 16, 16)))  # 3 layers of phases for a 2-layer design
    with pytest.raises(DesignError, match="phases"):
        save_design(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    d.material = {"name": "resin", "n": 0.5, "kappa": 0.0}
    with pytest.raises(DesignError, match="material.n"):
        save_design(d, tmp_path / "bad2")
    assert not (tmp_path / "bad2").exists()


def _set(path, value):
    def mutate(doc):
        *head, last = path
        obj = doc
        for k in head:
            obj = obj[k]
        if value is _DELETE:
            del obj[last]
        else:
            obj[last] = value
    return mutate


_DELETE = object()

CORRUPTIONS = [
    # (what to change, the field name the error must mention)
    (("schema",), _DELETE, "schema"),
    (("schema",), "d2nn.design/0", "schema"),
    (("wavelength_m",), _DELETE, "wavelength_m"),
    (("wavelength_m",), -0.75e-3, "wavelength_m"),
    (("wavelength_m",), "0.75 mm", "wavelength_m"),
    (("wavelength_m",), float("nan"), "wavelength_m"),
    (("pitch_m",), _DELETE, "pitch_m"),
    (("pitch_m",), 0, "pitch_m"),
    (("layer_shape",), [16], "layer_shape"),
    (("layer_shape",), [16, 0], "layer_shape"),
    (("layer_shape",), [16.0, 16.0], "layer_shape"),
    (("n_layers",), _DELETE, "n_layers"),
    (("n_layers",), 0, "n_layers"),
    (("distances_m",), [5e-3, 5e-3], "distances_m"),
    (("distances_m", 1), -5e-3, "distances_m[1]"),
    (("distances_m", 2), None, "distances_m[2]"),
    (("window_shape",), _DELETE, "window_shape"),
    (("window_shape",), [8, 32], "window_shape"),
    (("aperture",), "open", "aperture"),
    (("modulation",), "amplitude", "modulation"),
    (("input",), _DELETE, "input"),
    (("input", "encoding"), "intensity", "input.encoding"),
    (("input", "size_m"), _DELETE, "input.size_m"),
    (("input", "size_m"), [1.0, 1.0], "input.size_m"),
    (("input", "phase_scale"), "pi", "input.phase_scale"),
    (("detectors",), [], "detectors"),
    (("detectors", 0, "class"), _DELETE, "detectors[0].class"),
    (("detectors", 3, "sign"), 2, "detectors[3].sign"),
    (("detectors", 0, "size_m"), [0.0, 1e-3], "detectors[0].size_m"),
    (("detectors", 0, "center_m"), [1.0, 0.0], "detectors[0].center_m"),
    (("n_classes",), 1, "n_classes"),
    (("material",), _DELETE, "material"),
    (("material", "n"), _DELETE, "material.n"),
    (("material", "n"), 0.9, "material.n"),
    (("material", "kappa"), -0.1, "material.kappa"),
    (("material", "name"), "", "material.name"),
    (("fabrication", "base_m"), _DELETE, "fabrication.base_m"),
    (("fabrication", "z_step_m"), 0, "fabrication.z_step_m"),
    (("provenance",), ["seed", 7], "provenance"),
    (("metrics",), 0.9, "metrics"),
]


@pytest.mark.parametrize("path,value,name", CORRUPTIONS, ids=[f"{'.'.join(map(str, c[0]))}-{i}"
                                                              for i, c in enumerate(CORRUPTIONS)])
def test_corrupt_design_json_names_the_field(saved, path, value, name):
    jpath = saved / "design.json"
    doc = json.loads(jpath.read_text())
    _set(path, value)(doc)
    jpath.write_text(json.dumps(doc))
    with pytest.raises(DesignError) as e:
        load_design(saved)
    msg = str(e.value)
    assert f"'{name}'" in msg, msg
    assert "design.json" in msg


def test_broken_folders_name_the_file(saved, tmp_path):
    with pytest.raises(DesignError, match="no such design folder"):
        load_design(tmp_path / "nowhere")
    (saved / "design.json").write_text("{ not json")
    with pytest.raises(DesignError, match="design.json.*not valid JSON"):
        load_design(saved)
    folder = save_design(small_design(), tmp_path / "e")
    np.savez(folder / "phases.npz", phases=np.zeros((2, 16, 15)))
    with pytest.raises(DesignError, match=r"phases have shape \(2, 16, 15\)"):
        load_design(folder)
    np.savez(folder / "phases.npz", other=np.zeros((2, 16, 16)))
    with pytest.raises(DesignError, match="phases.npz.*'phases'"):
        load_design(folder)
    (folder / "phases.npz").unlink()
    with pytest.raises(DesignError, match="phases.npz.*missing"):
        load_design(folder)
    folder = save_design(small_design(), tmp_path / "f")
    (folder / "design.json").unlink()
    with pytest.raises(DesignError, match="design.json.*missing"):
        load_design(folder)


def test_design_geometry_follows_the_file(saved):
    d = load_design(saved)
    g = d.geometry
    assert g.layer_shape == (16, 16) and g.n_layers == 2 and g.distances_m == (5e-3,) * 3
    assert g.window_shape == d.window_shape == (32, 32)
    assert d.grid.extent_m == pytest.approx((16 * 0.4e-3, 16 * 0.4e-3))
