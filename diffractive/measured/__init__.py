"""Evaluating what the detectors measured on a printed stack (NumPy only).

:mod:`.io` reads and validates detector-power CSV files and raster scans (NPZ),
:mod:`.calibration` subtracts backgrounds and applies or fits per-detector gains,
:mod:`.registration` registers scans to the design and integrates detector regions,
:mod:`.stats` computes accuracy intervals, confusion matrices, margins and agreement, and
:mod:`.evaluate` ties them together (:func:`evaluate_measurement`). docs/evaluate.md
describes the file formats and the report.
"""
from .io import DetectorPowers, MeasuredDataError, Scan, read_background, read_gains, read_measured  # noqa: F401
