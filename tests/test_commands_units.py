"""d2nn/commands/units.py (the one parser of lengths and angles) and the --misalign items it serves."""
import argparse
import math

import numpy as np
import pytest

from d2nn.commands import UserError
from d2nn.commands.measure_sim import parse_misalign
from d2nn.commands.units import (Pixels, angle_rad, length_m, length_m_or_px, parse_angle, parse_length,
                                 parse_length_or_px, to_metres)
from diffractive.errors import D2NNError


@pytest.mark.parametrize("text,metres", [
    ("0.1mm", 1e-4), ("50um", 5e-5), ("1e-3m", 1e-3), ("30mm", 0.03), ("0.6mm", 6e-4), ("16um", 16e-6),
    ("2cm", 0.02), ("500nm", 5e-7), ("5µm", 5e-6), (".5mm", 5e-4), ("-0.3mm", -3e-4), ("+1mm", 1e-3),
    ("0.1 mm", 1e-4), (" 0.1MM ", 1e-4), ("0", 0.0), ("-0", 0.0), ("0.0", 0.0),
])
def test_lengths(text, metres):
    assert parse_length(text) == metres          # exact: units divide by an exact power of ten
    assert length_m(text) == metres


@pytest.mark.parametrize("text,radians", [
    ("0.5deg", math.radians(0.5)), ("0.2rad", 0.2), ("3mrad", 3e-3), ("-1deg", math.radians(-1)), ("0", 0.0),
])
def test_angles(text, radians):
    assert parse_angle(text) == pytest.approx(radians, rel=1e-15, abs=0)
    assert angle_rad(text) == pytest.approx(radians, rel=1e-15, abs=0)


@pytest.mark.parametrize("text,msg", [
    ("0.1", "'0.1' has no unit: give a unit, e.g. 0.1mm"),
    ("16e-6", "has no unit"),
    ("2 inches", "unknown length unit 'inches'"),
    ("0.5deg", "unknown length unit 'deg'"),
    ("1.5px", "unknown length unit 'px'"),        # no design pitch to convert pixels with
    ("inf", "is not a length"), ("nan", "is not a length"), ("", "is not a length"), ("mm", "is not a length"),
    ("1mm2", "unknown length unit"),
])
def test_bad_lengths_are_refused_with_a_reason(text, msg):
    with pytest.raises(UserError, match=msg):
        parse_length(text)
    with pytest.raises(argparse.ArgumentTypeError, match=msg):
        length_m(text)


@pytest.mark.parametrize("text,msg", [("0.5", "'0.5' has no unit: give a unit, e.g. 0.5deg"),
                                      ("1mm", "unknown angle unit 'mm'"), ("north", "is not an angle")])
def test_bad_angles_are_refused_with_a_reason(text, msg):
    with pytest.raises(UserError, match=msg):
        parse_angle(text)
    with pytest.raises(argparse.ArgumentTypeError, match=msg):
        angle_rad(text)


def test_pixels_need_the_design_pitch():
    assert parse_length("1.5px", 0.4e-3) == pytest.approx(6e-4)
    assert parse_length("0.2mm", 0.4e-3) == 2e-4
    v = parse_length_or_px("2px")
    assert isinstance(v, Pixels) and v == 2.0 and to_metres(v, 0.4e-3) == pytest.approx(8e-4)
    assert length_m_or_px("0.5mm") == 5e-4 and to_metres(length_m_or_px("0.5mm"), 0.4e-3) == 5e-4


def test_user_errors_are_library_errors():
    assert issubclass(UserError, D2NNError) and issubclass(UserError, ValueError)


def test_parsing_of_misalignments():
    p = 0.4e-3
    rng = np.random.default_rng(0)
    m = parse_misalign(["detector=0.3mm,-1px", "layer2=10um,0", "rotation=1deg", "scale=1.01"], 3, p, rng)
    assert m["detector_offset_m"] == pytest.approx((3e-4, -4e-4))
    np.testing.assert_allclose(m["layer_offsets_m"], [[0, 0], [1e-5, 0], [0, 0]])
    assert m["detector_rotation_rad"] == pytest.approx(math.radians(1)) and m["scan_scale"] == 1.01
    assert parse_misalign(["rotation=0.01rad"], 3, p, rng)["detector_rotation_rad"] == 0.01
    m = parse_misalign(["layers=50um"], 5, p, np.random.default_rng(1))
    assert m["layer_offsets_m"].shape == (5, 2) and 1e-6 < np.abs(m["layer_offsets_m"]).mean() < 2e-4
    for bad, msg in [("layer4=1mm,1mm", "the design has layers 1 ... 3"), ("tilt=3", "unknown key"),
                     ("detector", "expected KEY=VALUE"), ("detector=1mm,2mm,3mm", "give DX,DY"),
                     ("scale=-1", "positive"), ("scale=big", "positive"), ("layers=-1mm", "standard deviation"),
                     ("detector=0.3,0.1", "--misalign detector=0.3,0.1: '0.3' has no unit"),
                     ("rotation=1", "--misalign rotation=1: '1' has no unit: give a unit, e.g. 0.5deg")]:
        with pytest.raises(UserError, match=msg):
            parse_misalign([bad], 3, p, rng)


@pytest.mark.parametrize("text,hz", [("0.4THz", 4e11), ("400GHz", 4e11), ("4e11Hz", 4e11), ("0.38 thz", 3.8e11)])
def test_frequencies(text, hz):
    from d2nn.commands.units import frequency_hz, parse_frequency

    assert parse_frequency(text) == pytest.approx(hz, rel=1e-15)
    assert frequency_hz(text) == pytest.approx(hz, rel=1e-15)


def test_frequency_lists_and_ranges():
    from d2nn.commands.units import parse_frequencies

    assert parse_frequencies("0.36THz:0.44THz:5") == pytest.approx([3.6e11, 3.8e11, 4.0e11, 4.2e11, 4.4e11])
    assert parse_frequencies("0.38THz,400GHz") == pytest.approx([3.8e11, 4e11])
    for text, msg in (("0.4", "has no unit"), ("0THz", "positive"), ("1mm", "unknown frequency unit 'mm'"),
                      ("0.44THz:0.36THz:5", "LOW < HIGH"), ("0.36THz:0.44THz", "LOW:HIGH:COUNT"),
                      ("0.36THz:0.44THz:x", "whole number"), ("0.36THz:0.44THz:100", "COUNT from 2 to 64")):
        with pytest.raises(UserError, match=msg):
            parse_frequencies(text)
