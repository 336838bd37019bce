"""The design (diffractive.design): a frozen typed object, schema d2nn.design/2 (and /1 read), atomic writes."""
import dataclasses
import json
import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from diffractive.design import (SCHEMA, SCHEMA_V1, Design, DesignError, FieldError, OldSchemaWarning, load_design,
                                make_design, save_design)
from diffractive.detectors import Detector
from diffractive.encoding import InputSpec
from diffractive.materials import LIN2018, Fabrication, Material
from diffractive.simulate import simulate
from diffractive.stack import StackGeometry

REPO = Path(__file__).resolve().parents[1]


def tiny_design(**kw):
    args = dict(layer_shape=(16, 16), n_layers=2, spacing_m=5e-3, seed=7)
    args.update(kw)
    return make_design(**args)


@pytest.fixture
def saved(tmp_path):
    folder = save_design(tiny_design(), tmp_path / "d")
    return folder


def test_round_trip_keeps_every_key(saved):
    d = tiny_design()
    doc = json.loads((saved / "design.json").read_text())
    assert doc["schema"] == SCHEMA == "d2nn.design/2"
    assert doc == json.loads(json.dumps(d.to_json()))
    d2 = load_design(saved / "design.json")
    assert d2.to_json() == doc
    assert Design.from_json(doc, d.phases).to_json() == doc  # JSON is only its serialisation
    np.testing.assert_array_equal(d2.phases, d.phases)
    assert d2.phases.shape == (2, 16, 16) and d2.amplitudes is None
    assert doc["distances_m"] == [5e-3] * 3 and doc["n_layers"] == 2
    assert doc["aperture"] == "opaque" and doc["modulation"] == "phase"
    assert doc["provenance"]["seed"] == 7
    assert set(doc["input"]) == {"encoding", "size_yx_m", "phase_scale"}
    assert set(doc["detectors"][0]) == {"class_index", "center_xy_m", "size_xy_m", "sign"}
    assert doc["material"] == {"name": LIN2018.material.name, "n": 1.7227, "kappa": 0.031}
    assert doc["fabrication"] == {"base_m": 0.5e-3, "z_step_m": 16e-6}


def test_round_trip_of_non_square_pairs_keeps_each_axis(tmp_path):
    # a tall input rectangle and a wide detector: a swapped pair would show here
    dets = [Detector(0, (-1.2e-3, 0.4e-3), (1.2e-3, 0.4e-3)), Detector(1, (1.0e-3, -0.8e-3), (0.8e-3, 0.4e-3))]
    d = make_design(layer_shape=(16, 12), n_layers=1, spacing_m=5e-3, input_size_yx_m=(4.0e-3, 2.4e-3),
                    detectors=dets, n_classes=2, encoding="phase", phase_scale=1.5)
    d2 = load_design(save_design(d, tmp_path / "r"))
    assert d2.input == InputSpec("phase", (4.0e-3, 2.4e-3), 1.5)
    assert d2.detectors == tuple(dets) and d2.layer_shape == (16, 12)
    assert d2.grid.extent_yx_m == pytest.approx((16 * 0.4e-3, 12 * 0.4e-3))


def test_complex_modulation_round_trip(tmp_path):
    d = tiny_design()
    d = d.with_phases(d.phases, amplitudes=np.full(d.phases.shape, 0.5, np.float32))
    save_design(d, tmp_path / "c")
    d2 = load_design(tmp_path / "c")
    assert json.loads((tmp_path / "c" / "design.json").read_text())["modulation"] == "complex"
    np.testing.assert_array_equal(d2.amplitudes, 0.5)
    assert d2.modulation == "complex"


def test_writing_refuses_to_overwrite_unless_asked(saved):
    before = (saved / "design.json").read_bytes()
    other = tiny_design(seed=8, provenance={"seed": 8})
    with pytest.raises(FileExistsError, match="overwrite"):
        save_design(other, saved)
    assert (saved / "design.json").read_bytes() == before
    save_design(other, saved, overwrite=True)
    assert load_design(saved).provenance["seed"] == 8
    assert sorted(os.listdir(saved)) == ["design.json", "phases.npz"]  # no temporary files left


def test_an_invalid_design_cannot_be_built_so_nothing_is_written(tmp_path):
    d = tiny_design()
    with pytest.raises(DesignError, match="phases"):
        d.with_phases(np.zeros((3, 16, 16)))  # 3 layers of phases for a 2-layer design
    with pytest.raises(FieldError, match="'n' must be greater than 1"):
        dataclasses.replace(d, material=Material("resin", 0.5, 0.0))
    with pytest.raises(TypeError, match="Design"):
        save_design(d.to_json(), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_design_is_frozen():
    d = tiny_design()
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.material = Material("resin", 1.5, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.input.phase_scale = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.geometry.distances_m = (1e-3,) * 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.detectors[0].sign = -1
    with pytest.raises(TypeError, match="read-only"):
        d.provenance["seed"] = 3
    with pytest.raises(ValueError, match="read-only"):
        d.phases[0, 0, 0] = 1.0
    assert isinstance(d.detectors, tuple)


def test_derived_designs_and_their_records():
    phases = np.zeros((2, 16, 16), np.float32)
    d = tiny_design(phases=phases)
    phases[0, 0, 0] = 5.0  # the design holds its own copy
    assert d.phases[0, 0, 0] == 0.0
    d2 = d.with_record(metrics={"test_accuracy": 0.5})
    assert d2.metrics == {"test_accuracy": 0.5} and d2.provenance == d.provenance and d.metrics == {}
    d3 = dataclasses.replace(d, fabrication=Fabrication(base_m=0.0, z_step_m=8e-6))
    assert d3.fabrication.z_step_m == 8e-6 and d.fabrication == LIN2018.fabrication
    d4 = pickle.loads(pickle.dumps(d2))
    assert d4.to_json() == d2.to_json()
    np.testing.assert_array_equal(d4.phases, d.phases)


def test_make_design_distances_and_defaults():
    d = tiny_design(distances_m=[1e-3, 2e-3, 3e-3])
    assert d.distances_m == (1e-3, 2e-3, 3e-3)
    with pytest.raises(FieldError, match="distances_m"):
        tiny_design(distances_m=[1e-3, 2e-3])
    lin = make_design(n_layers=1, layer_shape=(20, 20))
    assert (lin.wavelength_m, lin.pitch_m) == (LIN2018.wavelength_m, LIN2018.pitch_m)
    assert lin.material.n == LIN2018.material.n and lin.input.phase_scale == math.pi


# each part validates itself where its values enter and names the field
PART_ERRORS = [
    (lambda: InputSpec("intensity", (1e-3, 1e-3)), "encoding"),
    (lambda: InputSpec("amplitude", (1e-3,)), "size_yx_m"),
    (lambda: InputSpec("amplitude", (1e-3, -1e-3)), "size_yx_m"),
    (lambda: InputSpec("phase", (1e-3, 1e-3), phase_scale=0.0), "phase_scale"),
    (lambda: Detector(-1, (0.0, 0.0), (1e-3, 1e-3)), "class_index"),
    (lambda: Detector(0, (np.nan, 0.0), (1e-3, 1e-3)), "center_xy_m"),
    (lambda: Detector(0, (0.0, 0.0), (1e-3, 0.0)), "size_xy_m"),
    (lambda: Detector(0, (0.0, 0.0), (1e-3, 1e-3), sign=0), "sign"),
    (lambda: Material("", 1.5, 0.0), "name"),
    (lambda: Material("x", 1.0, 0.0), "n"),
    (lambda: Material("x", 1.5, -0.1), "kappa"),
    (lambda: Material("x", 1.5, 0.0, wavelength_m=0.0), "wavelength_m"),
    (lambda: Fabrication(-1e-3, 16e-6), "base_m"),
    (lambda: Fabrication(0.5e-3, 0.0), "z_step_m"),
    (lambda: StackGeometry((16, 16), -1.0, 0.75e-3, (5e-3,)), "pitch_m"),
    (lambda: StackGeometry((16, 16), 0.4e-3, "0.75 mm", (5e-3,)), "wavelength_m"),
    (lambda: StackGeometry((16, 0), 0.4e-3, 0.75e-3, (5e-3,)), "layer_shape"),
    (lambda: StackGeometry((16, 16), 0.4e-3, 0.75e-3, (5e-3, -1.0)), "distances_m[1]"),
    (lambda: StackGeometry((16, 16), 0.4e-3, 0.75e-3, (5e-3,), (8, 32)), "window_shape"),
    (lambda: tiny_design(input_size_yx_m=(1.0, 1e-3)), "input.size_yx_m"),
    (lambda: tiny_design(detectors=[Detector(0, (3e-3, 0.0), (1e-3, 1e-3)), Detector(1, (0.0, 0.0), (1e-3, 1e-3))],
                          n_classes=2), "detectors[0].center_xy_m"),
    (lambda: dataclasses.replace(tiny_design(), n_classes=11), "detectors"),  # no detector for class 10
    (lambda: dataclasses.replace(tiny_design(), aperture="open"), "aperture"),
    (lambda: dataclasses.replace(tiny_design(), n_classes=1), "n_classes"),
]


@pytest.mark.parametrize("build,name", PART_ERRORS, ids=[f"{c[1]}-{i}" for i, c in enumerate(PART_ERRORS)])
def test_each_part_names_its_bad_field(build, name):
    with pytest.raises(FieldError) as e:
        build()
    assert e.value.field == name and f"field '{name}'" in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)


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
    (("input", "size_yx_m"), _DELETE, "input.size_yx_m"),
    (("input", "size_yx_m"), [1.0, 1.0], "input.size_yx_m"),
    (("input", "size_yx_m"), "3 mm", "input.size_yx_m"),
    (("input", "size_m"), [1e-3, 1e-3], "input.size_m"),   # a /1 key in a /2 file
    (("input", "phase_scale"), "pi", "input.phase_scale"),
    (("detectors",), [], "detectors"),
    (("detectors", 0, "class_index"), _DELETE, "detectors[0].class_index"),
    (("detectors", 0, "class_index"), 1.5, "detectors[0].class_index"),
    (("detectors", 3, "sign"), 2, "detectors[3].sign"),
    (("detectors", 0, "size_xy_m"), [0.0, 1e-3], "detectors[0].size_xy_m"),
    (("detectors", 0, "center_xy_m"), [1.0, 0.0], "detectors[0].center_xy_m"),
    (("detectors", 0, "center_xy_m"), [0.0], "detectors[0].center_xy_m"),
    (("detectors", 0), "class 0", "detectors[0]"),
    (("n_classes",), 1, "n_classes"),
    (("material",), _DELETE, "material"),
    (("material", "n"), _DELETE, "material.n"),
    (("material", "n"), 0.9, "material.n"),
    (("material", "kappa"), -0.1, "material.kappa"),
    (("material", "name"), "", "material.name"),
    (("fabrication", "base_m"), _DELETE, "fabrication.base_m"),
    (("fabrication", "z_step_m"), 0, "fabrication.z_step_m"),
    (("fabrication", "base_m"), -1e-3, "fabrication.base_m"),
    (("material", "colour"), "black", "material.colour"),
    (("colour",), "black", "colour"),
    (("input", "phase_scale"), -1.0, "input.phase_scale"),
    (("layer_shape",), "16", "layer_shape"),
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
    folder = save_design(tiny_design(), tmp_path / "e")
    np.savez(folder / "phases.npz", phases=np.zeros((2, 16, 15)))
    with pytest.raises(DesignError, match=r"phases.npz: phases: has shape \(2, 16, 15\), expected \(2, 16, 16\)"):
        load_design(folder)
    np.savez(folder / "phases.npz", other=np.zeros((2, 16, 16)))
    with pytest.raises(DesignError, match="phases.npz.*'phases'"):
        load_design(folder)
    (folder / "phases.npz").unlink()
    with pytest.raises(DesignError, match="phases.npz.*missing"):
        load_design(folder)
    folder = save_design(tiny_design(), tmp_path / "f")
    (folder / "design.json").unlink()
    with pytest.raises(DesignError, match="design.json.*missing"):
        load_design(folder)


def test_design_geometry_follows_the_file(saved):
    d = load_design(saved)
    g = d.geometry
    assert g.layer_shape == (16, 16) and g.n_layers == 2 and g.distances_m == (5e-3,) * 3
    assert g.window_shape == d.window_shape == (32, 32)
    assert d.grid.extent_yx_m == pytest.approx((16 * 0.4e-3, 16 * 0.4e-3))


# ------------------------------------------------------------------ schema 1
def _as_v1(doc):
    """The /1 document of a /2 one, written the way /1 spelled it."""
    v1 = json.loads(json.dumps(doc))
    v1["schema"] = SCHEMA_V1
    inp = v1["input"]
    inp["size_m"] = inp.pop("size_yx_m")
    if inp["encoding"] == "amplitude":
        del inp["phase_scale"]  # /1 wrote it only for phase encoding
    for det in v1["detectors"]:
        det["class"] = det.pop("class_index")
        det["center_m"] = det.pop("center_xy_m")
        det["size_m"] = det.pop("size_xy_m")
    return v1


def test_schema_1_is_read_converted_and_says_so(tmp_path):
    dets = [Detector(0, (-1.2e-3, 0.4e-3), (1.2e-3, 0.4e-3)), Detector(1, (1.0e-3, -0.8e-3), (0.8e-3, 0.4e-3))]
    d = make_design(layer_shape=(16, 12), n_layers=1, spacing_m=5e-3, input_size_yx_m=(4.0e-3, 2.4e-3),
                    detectors=dets, n_classes=2, seed=3)
    folder = save_design(d, tmp_path / "v1")
    v1 = _as_v1(d.to_json())
    v1["unknown_top_level"] = 1                # /1 ignored such keys
    v1["material"]["measured_by"] = "lab"      # /1 kept these; /2 has no place for them
    (folder / "design.json").write_text(json.dumps(v1))
    with pytest.warns(OldSchemaWarning, match=r"read as schema d2nn.design/1; re-save to upgrade") as rec:
        old = load_design(folder)
    assert "material.measured_by" in str(rec[0].message) and "design.json" in str(rec[0].message)
    assert old.input.size_yx_m == (4.0e-3, 2.4e-3)                     # [h, w] stays [h, w]
    assert old.detectors == tuple(dets)                               # [x, y] and [w, h] stay so
    assert old.input.phase_scale == math.pi
    assert old.to_json() == d.to_json()
    images = np.random.default_rng(0).uniform(0, 1, (3, 28, 28))
    np.testing.assert_array_equal(simulate(old, images).powers, simulate(d, images).powers)
    save_design(old, folder, overwrite=True)                          # re-saving upgrades
    assert json.loads((folder / "design.json").read_text())["schema"] == SCHEMA
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_design(folder)


def test_schema_1_errors_still_name_the_field(saved):
    v1 = _as_v1(json.loads((saved / "design.json").read_text()))
    v1["detectors"][3]["sign"] = 2
    (saved / "design.json").write_text(json.dumps(v1))
    with pytest.warns(OldSchemaWarning), pytest.raises(DesignError, match=r"design.json: field 'detectors\[3\].sign'"):
        load_design(saved)


def test_shipped_designs_are_schema_2():
    folders = sorted(p.parent for p in (REPO / "designs").glob("*/design.json"))
    assert folders
    for folder in folders:
        assert json.loads((folder / "design.json").read_text())["schema"] == SCHEMA, folder
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            d = load_design(folder)
        assert d.n_classes == 10 and d.material.n == LIN2018.material.n, folder
