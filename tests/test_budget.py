"""Error budgets (diffractive/budget.py): the shipped files, their draws and malformed files."""
import math

import numpy as np
import pytest

from diffractive.asbuilt import AsBuilt
from diffractive.budget import EMPTY, KINDS, budget_names, load_budget, parse_budget
from diffractive.errors import D2NNError


def test_shipped_budgets_hold_the_numbers_of_their_notes():
    assert {"holder", "hand"} <= set(budget_names())
    holder, hand = load_budget("holder"), load_budget("hand")
    assert holder.size("lateral_m") == 0.2e-3 and hand.size("lateral_m") == 0.4e-3
    assert holder.size("axial_m") == 0.25e-3 and hand.size("axial_m") == 0.5e-3
    assert holder.size("rotation_deg") == 0.3 and hand.size("rotation_deg") == 0.5
    for b in (holder, hand):
        assert b.size("detector_offset_m") == 0.2e-3 and b.size("thickness") == 0.02
        assert b.size("index") == 0.01 and b.size("wavelength") == 0.0025 and b.size("defects") == 0.001
        assert b.absorption and b.quantise
        assert all(b.errors[k].source for k in b.kinds)  # every number says where it comes from


def test_uniform_draws_stay_in_range_and_cover_it():
    b = load_budget("holder")
    draws = [b.draw(np.random.default_rng(s), 5, 16e-6) for s in range(200)]
    lateral = np.array([d.layer_offsets_xy_m for d in draws])
    assert lateral.shape == (200, 5, 2)
    assert np.abs(lateral).max() <= 0.2e-3 and np.abs(lateral).max() > 0.19e-3
    assert abs(lateral.mean()) < 0.02e-3 and math.isclose(lateral.std(), 0.2e-3 / math.sqrt(3), rel_tol=0.05)
    rot = np.degrees(np.array([d.layer_rotations_rad for d in draws]))
    assert np.abs(rot).max() <= 0.3
    assert all(d.z_step_m == 16e-6 and d.absorption and d.defect_fraction == 0.001 for d in draws)
    assert len({d.defect_seed for d in draws}) == 200


def test_normal_draws_have_their_sigma():
    b = parse_budget({"axial_m": {"normal": 0.5e-3}, "absorption": False, "quantise": False})
    gaps = np.array([b.draw(np.random.default_rng(s), 3).gap_errors_m for s in range(400)])
    assert math.isclose(gaps.std(), 0.5e-3, rel_tol=0.05)


def test_a_kind_added_to_a_budget_keeps_the_other_draws():
    a = parse_budget({"lateral_m": {"uniform": 1e-4}})
    b = parse_budget({"lateral_m": {"uniform": 1e-4}, "axial_m": {"uniform": 1e-4}})
    da, db = a.draw(np.random.default_rng(3), 4), b.draw(np.random.default_rng(3), 4)
    assert da.layer_offsets_xy_m == db.layer_offsets_xy_m and da.gap_errors_m == () and db.gap_errors_m != ()


def test_only_and_empty():
    b = load_budget("holder")
    one = b.only("axial_m", 1e-3)
    assert one.kinds == ["axial_m"] and one.absorption and one.quantise
    d = one.draw(np.random.default_rng(0), 2, 16e-6)
    assert d.layer_offsets_xy_m == () and np.abs(d.gap_errors_m).max() <= 1e-3
    assert EMPTY.is_empty and not b.without_errors().is_empty
    assert EMPTY.draw(np.random.default_rng(0), 3) == AsBuilt()
    assert b.only("lateral_m", 0).kinds == []


@pytest.mark.parametrize("text,match", [
    ("lateral_m = 1", "must be a table"),
    ("[lateral]\nuniform = 1e-4", "unknown key 'lateral'"),
    ("[lateral_m]\nuniform = 1e-4\nnormal = 1e-4", "exactly one of"),
    ("[lateral_m]\nuniform = -1e-4", "lateral_m.uniform"),
    ("[lateral_m]\nwidth = 1e-4", "unknown key 'width'"),
    ("[defects]\nfraction = 1.5", "below 1"),
    ("[lateral_m]\nuniform = 1e308", "below 0.1 m"),
    ("[rotation_deg]\nnormal = 400", "below 180 deg"),
    ("[lateral_m]\nuniform = '0.2mm'", "must be a real number"),
    ("[lateral_m]\nunif", "not valid TOML"),
    ("absorption = 'yes'", "absorption must be true or false"),
    ("[axial_m\nuniform = 1", "not valid TOML"),
])
def test_malformed_budget_files_fail_in_one_line_naming_file_and_key(tmp_path, text, match):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(D2NNError, match=match) as e:
        load_budget(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert path.read_text() == text  # never touched


def test_unknown_budget_names_list_the_shipped_ones():
    with pytest.raises(D2NNError, match="holder"):
        load_budget("no-such-budget")


def test_every_kind_maps_onto_the_as_built_model():
    doc = {k: ({"fraction": 0.01} if k == "defects" else {"uniform": 0.5 * v.default_size}) for k, v in KINDS.items()}
    d = parse_budget(doc).draw(np.random.default_rng(1), 2, None)
    for name in ("layer_offsets_xy_m", "layer_rotations_rad", "gap_errors_m"):
        assert getattr(d, name) != ()
    for name in ("thickness_error", "index_error", "kappa_error", "wavelength_error", "input_scale_error",
                 "detector_rotation_rad", "defect_fraction"):
        assert getattr(d, name) != 0
    assert d.input_offset_xy_m != (0.0, 0.0) and d.detector_offset_xy_m != (0.0, 0.0)
