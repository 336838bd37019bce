"""The one parser for lengths, angles and frequencies given on the command line.

Every ``d2nn`` option (and ``--misalign`` item) that takes a length, an angle or a frequency
reads it here, so ``0.1mm``, ``50um``, ``1e-3m``, ``30mm``, ``0.5deg``, ``0.2rad`` and
``0.4THz`` mean the same everywhere.

* **Lengths**: a number followed by a unit, ``m``, ``cm``, ``mm``, ``um`` (or ``µm``) or
  ``nm``; where an option says so, also ``px`` (pixels of the design, converted with its
  pitch). Returned in metres.
* **Angles**: a number followed by ``deg``, ``rad`` or ``mrad``. Returned in radians.
* **Frequencies**: a number followed by ``Hz``, ``GHz`` or ``THz``. Returned in hertz. A
  list of them (:func:`parse_frequencies`): ``0.38THz,0.4THz`` or ``LOW:HIGH:COUNT``
  (``0.36THz:0.44THz:9``, equally spaced, both ends included).
* **Bare numbers are refused** (``give a unit, e.g. 0.1mm``), except zero, which means the
  same in every unit. Before, ``d2nn export`` read ``--z-step``/``--base`` as metres and
  ``--margin`` as millimetres while ``measure-sim`` read a bare rotation as degrees: a bare
  number could only be read by knowing each option's habit, so none is guessed.

Units are case-insensitive and may be separated from the number by spaces (``"0.1 mm"``).
``inf`` and ``nan`` are not lengths. Range checks (positive, non-negative) are left to the
library, whose messages name the parameter (``z_step_m``).

The ``parse_*`` functions raise :class:`d2nn.commands.UserError`; the argparse types
(:func:`length_m`, :func:`angle_rad`, :func:`length_m_or_px`) raise
``argparse.ArgumentTypeError``, which argparse reports as ``argument --z-step: ...``.
"""
from __future__ import annotations

import argparse
import math
import re

from . import UserError

#: units per metre (dividing by an exact power of ten keeps ``50um`` == 5e-05 exactly)
LENGTH_UNITS_PER_M = {"m": 1.0, "cm": 1e2, "mm": 1e3, "um": 1e6, "µm": 1e6, "μm": 1e6, "nm": 1e9}
#: units per radian
ANGLE_UNITS_PER_RAD = {"rad": 1.0, "mrad": 1e3, "deg": 180 / math.pi}
#: units per hertz
FREQUENCY_UNITS_PER_HZ = {"hz": 1.0, "ghz": 1e-9, "thz": 1e-12}
_LENGTH_NAMES = "m, cm, mm, um, nm"
_ANGLE_NAMES = "deg, rad, mrad"
_FREQUENCY_NAMES = "Hz, GHz, THz"

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
_QUANTITY = re.compile(rf"\s*({_NUMBER})\s*([^\d\s.+-]\S*)?\s*")


class Pixels(float):
    """A length in pixels of the design (``"1.5px"``), turned into metres by :func:`to_metres`."""

    def __repr__(self) -> str:
        return f"Pixels({float(self)!r})"


def to_metres(value, pitch_m: float) -> float:
    """``value`` in metres: a :class:`Pixels` is multiplied by ``pitch_m``, a float is returned as is."""
    return float(value) * pitch_m if isinstance(value, Pixels) else float(value)


def _split(text: str, what: str, units: dict, names: str, example: str) -> tuple[float, str | None]:
    """(number, unit) of ``text``; unit ``None`` only for a bare zero."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be given as text such as {example}, got {text!r}")
    m = _QUANTITY.fullmatch(text.lower())
    article = "an" if what[0] in "aeiou" else "a"
    if not m:
        raise UserError(f"{text!r} is not {article} {what}: give a number and a unit ({names}), e.g. {example}")
    value, unit = float(m.group(1)), m.group(2)
    if unit is None:
        if value == 0:
            return 0.0, None
        raise UserError(f"{text!r} has no unit: give a unit, e.g. {example} ({names})")
    if unit not in units:
        raise UserError(f"{text!r}: unknown {what} unit {unit!r} (use {names}), e.g. {example}")
    return value, unit


def parse_length(text: str, pitch_m: float | None = None) -> float:
    """A length in metres from ``text`` such as ``"0.1mm"``, ``"50um"`` or ``"1e-3m"``.

    With ``pitch_m`` (metres), ``px`` (design pixels) is accepted too. See the module
    docstring for what is refused.
    """
    value = parse_length_or_px(text) if pitch_m is not None else _length(text)
    return to_metres(value, pitch_m) if isinstance(value, Pixels) else value


def _length(text: str) -> float:
    value, unit = _split(text, "length", LENGTH_UNITS_PER_M, _LENGTH_NAMES, "0.1mm")
    return value if unit is None else value / LENGTH_UNITS_PER_M[unit]


def parse_length_or_px(text: str) -> float:
    """Like :func:`parse_length`, but a length in pixels comes back as :class:`Pixels` (no pitch needed yet)."""
    value, unit = _split(text, "length", {**LENGTH_UNITS_PER_M, "px": 1.0}, _LENGTH_NAMES + ", px", "0.1mm")
    if unit == "px":
        return Pixels(value)
    return value if unit is None else value / LENGTH_UNITS_PER_M[unit]


def parse_angle(text: str) -> float:
    """An angle in radians from ``text`` such as ``"0.5deg"``, ``"0.2rad"`` or ``"3mrad"``."""
    value, unit = _split(text, "angle", ANGLE_UNITS_PER_RAD, _ANGLE_NAMES, "0.5deg")
    return value if unit is None else value / ANGLE_UNITS_PER_RAD[unit]


def parse_frequency(text: str) -> float:
    """A frequency in hertz from ``text`` such as ``"0.4THz"`` or ``"400GHz"`` (positive)."""
    value, unit = _split(text, "frequency", FREQUENCY_UNITS_PER_HZ, _FREQUENCY_NAMES, "0.4THz")
    hz = value if unit is None else value / FREQUENCY_UNITS_PER_HZ[unit]
    if not hz > 0:
        raise UserError(f"{text!r}: a frequency must be positive")
    return hz


def parse_frequencies(text: str) -> list[float]:
    """Frequencies in hertz: a comma-separated list (``"0.38THz,0.4THz"``) or
    ``LOW:HIGH:COUNT`` (``"0.36THz:0.44THz:9"``, ``COUNT`` from 2 to 64, both ends included)."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("give frequencies such as 0.36THz:0.44THz:9 or 0.38THz,0.4THz")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UserError(f"{text!r}: a frequency range is LOW:HIGH:COUNT, e.g. 0.36THz:0.44THz:9")
        lo, hi = parse_frequency(parts[0]), parse_frequency(parts[1])
        try:
            count = int(parts[2])
        except ValueError:
            raise UserError(f"{text!r}: COUNT must be a whole number, got {parts[2]!r}") from None
        if not lo < hi or not 2 <= count <= 64:
            raise UserError(f"{text!r}: need LOW < HIGH and COUNT from 2 to 64")
        return [lo + (hi - lo) * i / (count - 1) for i in range(count)]
    out = [parse_frequency(t) for t in text.split(",")]
    if len(out) > 64:
        raise UserError(f"at most 64 frequencies, got {len(out)}")
    return out


def _argparse_type(parse, name):
    def convert(text):
        try:
            return parse(text)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse names the type in some messages
    convert.__doc__ = f"argparse type: {parse.__doc__}"
    return convert


#: argparse type: a length with a unit -> metres (``type=length_m``)
length_m = _argparse_type(parse_length, "length")
#: argparse type: a length with a unit or in ``px`` -> metres or :class:`Pixels`
length_m_or_px = _argparse_type(parse_length_or_px, "length")
#: argparse type: an angle with a unit -> radians (``type=angle_rad``)
angle_rad = _argparse_type(parse_angle, "angle")
#: argparse type: a frequency with a unit -> hertz
frequency_hz = _argparse_type(parse_frequency, "frequency")
#: argparse type: a list or range of frequencies -> list of hertz
frequencies_hz = _argparse_type(parse_frequencies, "frequencies")
