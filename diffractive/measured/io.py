"""Reading (and writing) what the lab measured: detector-power CSV files and raster scans.

Formats (docs/evaluate.md has the full description):

* **Detector powers, CSV** — a header row, then one row per measured sample, columns
  ``sample`` (an id), ``label`` (true class, integer), ``det0`` ... ``det{K-1}`` (power on
  each detector, in the order of ``detectors`` in design.json, any linear unit). Optional:
  ``input`` (index of the test image in the dataset) and ``total`` (total power on the
  output plane, for the fraction landing on the detectors). Other columns are ignored;
  lines starting with ``#`` and blank lines are skipped; ``;`` or tab separators are
  recognised from the header line.
* **Raster scans, NPZ** — ``intensity`` (N, H, W), ``labels`` (N,), ``pitch_m`` (scan
  step, metres); optional ``origin_m`` (x, y of pixel [0, 0] relative to the optical axis,
  axes as in :mod:`diffractive.grid`: x along columns, y along rows) and ``inputs``.
* **Background** (dark measurement) — the same format; ``sample``/``label`` (CSV) and
  ``labels``/``pitch_m`` (NPZ) may be left out. All rows (frames) are averaged.
* **Gains** — JSON (``{"gains": [g0, ...]}`` or a bare list) or a CSV with columns
  ``det0`` ... ``det{K-1}`` and one row. Measured power = gain x true power.

Every reader validates and raises :class:`MeasuredDataError` with one line naming the
file and the row, column or field. Files are read through :mod:`diffractive._read` (the
one reading layer: regular-file, size, UTF-8, gzip/zip sniffing and ``.npz`` header
checks); its :class:`~diffractive._read.InputFileError` reaches callers as a
:class:`MeasuredDataError` with the same one-line message. Values that can be
measurements — small negative numbers among them — are kept; only what cannot be a
measurement is refused: NaN, infinity, text, and magnitudes beyond :data:`MAX_MAGNITUDE`
(no instrument reports 1e100 in any linear unit, and beyond it the squares and sums the
statistics take overflow float64). Limits: :data:`MAX_FIELD_CHARS` characters per CSV
field, integers (labels, input indices) of at most :data:`MAX_INDEX`, gains between
:data:`MIN_GAIN` and :data:`MAX_MAGNITUDE`.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes as _atomic_write_bytes
from .._read import InputFileError, check_regular_file, read_bytes, read_json, read_npz, read_text
from ..errors import D2NNError, OutputExists

#: largest magnitude accepted for a reading, a total, a background or a gain (and, after
#: calibration, :data:`MAX_CALIBRATED` for a calibrated power)
MAX_MAGNITUDE = 1e100
#: largest magnitude of a calibrated power (reading - background) / gain
MAX_CALIBRATED = 1e120
#: smallest gain accepted (a gain divides the readings)
MIN_GAIN = 1e-100
#: longest CSV field accepted, in characters (the header's too)
MAX_FIELD_CHARS = 10_000
#: largest integer accepted for a label or an input index (2**53: exact in float64)
MAX_INDEX = 2 ** 53


class MeasuredDataError(D2NNError):
    """A measurement, background or gains file cannot be used; the message names the place."""


@contextlib.contextmanager
def _file_errors():
    """Re-raise the reading layer's InputFileError as MeasuredDataError (same message)."""
    try:
        yield
    except InputFileError as e:
        raise MeasuredDataError(str(e)) from None


def _show(text, limit=40) -> str:
    """``repr(text)``, shortened to about ``limit`` characters (messages stay one short line)."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text):,} characters)"


@dataclass
class DetectorPowers:
    """Detector readings of N samples: ``powers`` (N, K) float64 in file order.

    ``labels`` (N,) int64 true classes; ``sample_ids`` N strings; ``inputs`` (N,) int64
    dataset indices or None; ``total`` (N,) total output-plane power or None (same linear
    unit as ``powers``); ``source`` the file.
    """

    powers: np.ndarray
    labels: np.ndarray
    sample_ids: list
    source: str
    inputs: np.ndarray | None = None
    total: np.ndarray | None = None
    kind: str = field(default="detectors", init=False)

    @property
    def n(self) -> int:
        """Number of samples N."""
        return int(self.powers.shape[0])

    def with_powers(self, powers):
        """A copy with ``powers`` (N, K) replaced (as float64)."""
        return replace(self, powers=np.asarray(powers, dtype=np.float64))


@dataclass
class Scan:
    """Raster scans of the output plane: ``intensity`` (N, H, W) float64, scan step ``pitch_m``.

    Pixel (i, j) of a scan sits at ``x = origin_m[0] + j * pitch_m``,
    ``y = origin_m[1] + i * pitch_m`` in the scanner's frame (metres, relative to the
    nominal optical axis). Without ``origin_m`` in the file the scan is taken to be
    centred on the axis (``origin_given`` is then False). ``labels`` (N,) int64 true
    classes (empty for a background); ``inputs`` (N,) int64 dataset indices or None.
    """

    intensity: np.ndarray
    labels: np.ndarray
    pitch_m: float
    origin_m: tuple
    source: str
    inputs: np.ndarray | None = None
    origin_given: bool = True
    sample_ids: list = None
    kind: str = field(default="scan", init=False)

    def __post_init__(self):
        if self.sample_ids is None:
            self.sample_ids = [f"scan{i}" for i in range(self.intensity.shape[0])]

    @property
    def n(self) -> int:
        """Number of scans N."""
        return int(self.intensity.shape[0])

    @property
    def shape(self) -> tuple:
        """(H, W) pixels of one scan."""
        return tuple(self.intensity.shape[1:])

    def x_m(self) -> np.ndarray:
        """x of each scan column (W,), metres, in the scanner's frame."""
        return self.origin_m[0] + np.arange(self.shape[1]) * self.pitch_m

    def y_m(self) -> np.ndarray:
        """y of each scan row (H,), metres, in the scanner's frame."""
        return self.origin_m[1] + np.arange(self.shape[0]) * self.pitch_m

    def with_intensity(self, intensity):
        """A copy with ``intensity`` (N, H, W) replaced (as float64)."""
        return replace(self, intensity=np.asarray(intensity, dtype=np.float64))


def centred_origin(shape, pitch_m) -> tuple:
    """``origin_m``: (x, y) in metres of pixel [0, 0] of a scan of ``shape`` (H, W) at step
    ``pitch_m`` (metres) centred on the optical axis."""
    return (-(shape[1] - 1) / 2 * pitch_m, -(shape[0] - 1) / 2 * pitch_m)


# --------------------------------------------------------------------------- helpers
_DET_RE = re.compile(r"^det([0-9]{1,9})$", re.ASCII)  # ASCII digits only: 'det٢' is not detector 2


def _fmt_list(names, limit=6):
    names = [n if len(str(n)) <= 40 else str(n)[:40] + "..." for n in names]
    if len(names) > limit:
        return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"
    return ", ".join(names)


def _det_range(k):
    return "det0" if k == 1 else f"det0 ... det{k - 1}"


def _kind_of(path: Path) -> str:
    """``"scan"`` (NPZ) or ``"detectors"`` (CSV text): by the suffix, else by the first bytes
    (read through the reading layer; such a file is read whole, up to its text-size limit)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "scan"
    if suffix in (".csv", ".txt", ".tsv"):
        return "detectors"
    with _file_errors():
        head = read_bytes(path)[:4]
    return "scan" if head.startswith(b"PK") else "detectors"


def _check_file(path) -> Path:
    """``path`` if it is a readable, non-empty regular file (symlinks followed), else MeasuredDataError."""
    with _file_errors():
        path = check_regular_file(path)
    if path.stat().st_size == 0:
        raise MeasuredDataError(f"{path}: empty file")
    return path


#: a number in a CSV cell: ASCII digits only (Python's float() would also take '1_000', '١٢' or 'infinity')
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _parse_int(text, what):
    t = text.strip()
    if len(t) > 40:
        raise MeasuredDataError(f"{what} = {_show(t)} is not an integer of at most {MAX_INDEX:,} "
                                f"({len(t):,} characters)")
    if _INTEGER.fullmatch(t):
        v = int(t)
    else:
        f = float(t) if _NUMBER.fullmatch(t) else math.nan
        if not math.isfinite(f) or f != int(f):
            raise MeasuredDataError(f"{what} = {_show(text)} is not an integer")
        v = int(f)
    if abs(v) > MAX_INDEX:
        raise MeasuredDataError(f"{what} = {_show(t)} is too large (an integer of at most {MAX_INDEX:,} is accepted)")
    return v


# --------------------------------------------------------------------------- CSV
def _parse_finite(text, what) -> float:
    """A finite float from a CSV cell, or :class:`MeasuredDataError` naming ``what``."""
    text = text.strip()
    if not text:
        raise MeasuredDataError(f"{what} is empty")
    if not _NUMBER.fullmatch(text):
        if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise MeasuredDataError(f"{what} = {_show(text)} is not a finite number")
        raise MeasuredDataError(f"{what} = {_show(text)} is not a number")
    v = float(text)
    if abs(v) > MAX_MAGNITUDE:
        raise MeasuredDataError(f"{what} = {_show(text)} is beyond the {MAX_MAGNITUDE:g} in magnitude a reading "
                                "can have (the statistics would overflow); check the units")
    return v


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # only these end a line (str.splitlines also breaks at \x1c, \x85, ...)


def _split_fields(path, lineno, ln, delim, header):
    """The fields of CSV line ``ln`` (number ``lineno``); a field longer than
    :data:`MAX_FIELD_CHARS` is refused naming its column (``header``, None for the header line)."""
    def refuse_long(col, size):
        name = f"column {_show(header[col].strip())}" if header is not None and col < len(header) else f"field {col + 1}"
        raise MeasuredDataError(f"{path}: line {lineno}: {name} holds {size:,} characters (at most "
                                f"{MAX_FIELD_CHARS:,} are accepted in a field)")

    if len(ln) > MAX_FIELD_CHARS:  # find a long field without the csv module (whose limit raises its own error)
        for col, part in enumerate(ln.split(delim)):
            if len(part) > MAX_FIELD_CHARS:
                refuse_long(col, len(part))
    try:
        fields = next(csv.reader([ln], delimiter=delim))
    except csv.Error as e:
        raise MeasuredDataError(f"{path}: line {lineno} is not valid CSV ({e})") from None
    for col, f in enumerate(fields):
        if len(f) > MAX_FIELD_CHARS:
            refuse_long(col, len(f))
    return fields


def _csv_rows(path: Path):
    """(header, [(line_number, fields)]) of a CSV file; comments and blank lines skipped."""
    with _file_errors():
        text = read_text(path)
    lines = [(i + 1, ln) for i, ln in enumerate(_LINE_BREAK.split(text)) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise MeasuredDataError(f"{path}: empty file (expected a header row such as sample,label,det0,det1,...)")
    header_line = lines[0][1]
    delim = ","
    if "," not in header_line:
        delim = ";" if ";" in header_line else ("\t" if "\t" in header_line else ",")
    header = [h.strip() for h in _split_fields(path, lines[0][0], header_line, delim, None)]
    rows = [(lineno, _split_fields(path, lineno, ln, delim, header)) for lineno, ln in lines[1:]]
    return header, rows


def _read_power_csv(path: Path, n_detectors: int, n_classes: int | None, *, need_labels=True):
    header, rows = _csv_rows(path)
    lower = [h.lower() for h in header]
    seen = {}
    for i, h in enumerate(lower):
        if h in seen and h:
            first = header[seen[h]]
            if first == header[i]:
                raise MeasuredDataError(f"{path}: column {_show(h)} appears twice in the header")
            raise MeasuredDataError(f"{path}: columns {_show(first)} and {_show(header[i])} are the same column "
                                    "(names are case-insensitive); keep one")
        seen[h] = i
    dets = {}
    for i, h in enumerate(lower):
        if m := _DET_RE.match(h):
            k = int(m.group(1))
            if k in dets:
                raise MeasuredDataError(f"{path}: columns {header[dets[k]]!r} and {header[i]!r} both name detector "
                                        f"{k}; keep one")
            dets[k] = i
    missing = [f"det{k}" for k in range(n_detectors) if k not in dets]
    extra = sorted(k for k in dets if k >= n_detectors)
    if missing:
        more = f"; it has extra column(s) {_fmt_list(f'det{k}' for k in extra)}" if extra else ""
        raise MeasuredDataError(f"{path}: missing detector column(s) {_fmt_list(missing)}: the design has "
                                f"{n_detectors} detectors ({_det_range(n_detectors)}){more}")
    if extra:
        raise MeasuredDataError(f"{path}: extra detector column(s) {_fmt_list(f'det{k}' for k in extra)}: the design "
                                f"has {n_detectors} detectors ({_det_range(n_detectors)}); is this the right design?")
    col = {h: i for i, h in enumerate(lower)}
    for req in (("sample", "label") if need_labels else ()):
        if req not in col:
            raise MeasuredDataError(f"{path}: no '{req}' column in the header (columns: {_fmt_list(header, 12)})")
    if not rows:
        raise MeasuredDataError(f"{path}: no data rows after the header")
    det_cols = [dets[k] for k in range(n_detectors)]
    powers = np.empty((len(rows), n_detectors))
    labels, ids, inputs, totals = [], [], [], []
    for r, (lineno, fields) in enumerate(rows):
        if len(fields) != len(header):
            raise MeasuredDataError(f"{path}: line {lineno} has {len(fields)} fields but the header has {len(header)}")
        sid = fields[col["sample"]].strip() if "sample" in col else str(r)
        where = f"{path}: line {lineno} (sample {_show(sid)})"
        if "sample" in col and not sid:
            raise MeasuredDataError(f"{path}: line {lineno}: column 'sample' is empty")
        ids.append(sid)
        for k, c in enumerate(det_cols):
            powers[r, k] = _parse_finite(fields[c], f"{where}: column {_show(header[c])}")
        if "label" in col:
            lab = _parse_int(fields[col["label"]], f"{where}: column 'label'")
            if lab < 0 or (n_classes is not None and lab >= n_classes):
                raise MeasuredDataError(f"{where}: column 'label' = {lab} is out of range: the design has "
                                        f"{n_classes} classes (0 ... {n_classes - 1})")
            labels.append(lab)
        if "input" in col:
            inp = _parse_int(fields[col["input"]], f"{where}: column 'input'")
            if inp < 0:
                raise MeasuredDataError(f"{where}: column 'input' = {inp} must be a non-negative dataset index")
            inputs.append(inp)
        if "total" in col:
            totals.append(_parse_finite(fields[col["total"]], f"{where}: column 'total'"))
    return DetectorPowers(powers=powers, labels=np.asarray(labels, dtype=np.int64), sample_ids=ids, source=str(path),
                          inputs=np.asarray(inputs, dtype=np.int64) if "input" in col else None,
                          total=np.asarray(totals) if "total" in col else None)


# --------------------------------------------------------------------------- NPZ
def _npz_arrays(path: Path) -> dict:
    """The arrays of the ``.npz`` at ``path``, read by :func:`diffractive._read.read_npz` (headers checked
    before anything is allocated; never pickles). Text arrays are loaded too, so that the field
    checks below can name a field that holds text; object arrays are refused there."""
    with _file_errors():
        return read_npz(path, kinds="fiucbUS")


def _real_array(path, name, a):
    """``a`` as float64, if it holds real numbers (float or integer), all finite and at most
    :data:`MAX_MAGNITUDE` in magnitude; else MeasuredDataError naming ``name`` and the first bad element."""
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise MeasuredDataError(f"{path}: field '{name}' must hold real numbers, got dtype {a.dtype}")
    if a.ndim == 0:  # a scalar (pitch_m): its caller checks its value
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        kind, at = _first_bad(a)
        raise MeasuredDataError(f"{path}: field '{name}' has {kind} at {at}")
    big = np.abs(a) > MAX_MAGNITUDE if a.dtype.kind == "f" else np.zeros(a.shape, bool)
    if big.any():
        at = np.unravel_index(int(np.argmax(big)), a.shape) if a.ndim else ()
        where = "[" + ", ".join(str(int(i)) for i in at) + "]"
        raise MeasuredDataError(f"{path}: field '{name}'{where} = {float(a[at]):g} is beyond the {MAX_MAGNITUDE:g} "
                                "in magnitude a measurement can have (the statistics would overflow); check the units")
    return a.astype(np.float64)


def _first_bad(a):
    idx = np.argwhere(~np.isfinite(a))[0] if a.ndim else np.zeros(0, int)
    v = a[tuple(idx)]
    kind = "NaN" if np.isnan(v) else ("+inf" if v > 0 else "-inf")
    return kind, "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _scalar(path, arrays, name, *, positive=True):
    a = np.asarray(arrays[name])
    if a.size != 1:
        raise MeasuredDataError(f"{path}: field '{name}' must be a single number, got shape {a.shape}")
    a = _real_array(path, name, a.reshape(()))
    v = float(a)
    if not math.isfinite(v) or (positive and v <= 0):
        raise MeasuredDataError(f"{path}: field '{name}' = {v!r} must be a positive finite number (metres)")
    return v


def _index_array(path, name, a, n, *, lo=0, hi=None, what="index"):
    a = np.asarray(a)
    if a.shape != (n,):
        raise MeasuredDataError(f"{path}: field '{name}' has shape {a.shape}, expected ({n},) (one per scan)")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            i = int(np.argmax(bad))
            raise MeasuredDataError(f"{path}: field '{name}'[{i}] = {float(a[i])!r} is not an integer")
    elif not np.issubdtype(a.dtype, np.integer):
        raise MeasuredDataError(f"{path}: field '{name}' must hold integers, got dtype {a.dtype}")
    big = np.abs(a.astype(np.float64)) > MAX_INDEX  # before the cast, which would wrap uint64 and big floats
    if big.any():
        i = int(np.argmax(big))
        raise MeasuredDataError(f"{path}: field '{name}'[{i}] = {a[i]} is out of range ({what} of at most "
                                f"{MAX_INDEX:,})")
    a = a.astype(np.int64)
    bad = (a < lo) | ((a >= hi) if hi is not None else False)
    if np.any(bad):
        i = int(np.argmax(bad))
        rng = f"{lo} ... {hi - 1}" if hi is not None else f">= {lo}"
        raise MeasuredDataError(f"{path}: field '{name}'[{i}] = {int(a[i])} is out of range ({what} {rng})")
    return a


def _read_scan_npz(path: Path, n_classes: int | None, *, need_labels=True):
    arrays = _npz_arrays(path)
    if "intensity" not in arrays:
        raise MeasuredDataError(f"{path}: has no field 'intensity' (fields: {_fmt_list(arrays, 12) or 'none'})")
    inten = np.asarray(arrays["intensity"])
    if need_labels and inten.ndim == 2:
        raise MeasuredDataError(f"{path}: field 'intensity' has shape {inten.shape}; expected (N, H, W) "
                                "(add a leading axis for a single scan)")
    if not need_labels and inten.ndim == 2:
        inten = inten[None]
    if inten.ndim != 3:
        raise MeasuredDataError(f"{path}: field 'intensity' has shape {inten.shape}; expected (N, H, W)")
    if min(inten.shape) < 1 or inten.shape[1] < 2 or inten.shape[2] < 2:
        raise MeasuredDataError(f"{path}: field 'intensity' has shape {inten.shape}; need N >= 1 scans of at least "
                                "2 x 2 pixels")
    if np.iscomplexobj(inten):
        raise MeasuredDataError(f"{path}: field 'intensity' is complex; a scan records real power per pixel")
    if np.issubdtype(inten.dtype, np.floating) and not np.all(np.isfinite(inten)):
        kind, at = _first_bad(inten)
        raise MeasuredDataError(f"{path}: field 'intensity' has {kind} at {at} (scan {at[1:].split(',')[0]})")
    inten = _real_array(path, "intensity", inten)
    n = inten.shape[0]
    labels = None
    if "labels" in arrays:
        labels = _index_array(path, "labels", arrays["labels"], n, hi=n_classes, what="classes")
    elif need_labels:
        raise MeasuredDataError(f"{path}: has no field 'labels' (the true class of each scan)")
    if "pitch_m" in arrays:
        pitch = _scalar(path, arrays, "pitch_m")
    elif need_labels:
        raise MeasuredDataError(f"{path}: has no field 'pitch_m' (the scan step in metres)")
    else:
        pitch = None
    origin_given = "origin_m" in arrays
    if origin_given:
        o = np.asarray(arrays["origin_m"])
        if o.shape != (2,):
            raise MeasuredDataError(f"{path}: field 'origin_m' has shape {o.shape}, expected (2,) = (x, y) in metres")
        o = _real_array(path, "origin_m", o)
        if not np.all(np.isfinite(o)):
            raise MeasuredDataError(f"{path}: field 'origin_m' = {o.tolist()} must be finite")
        origin = (float(o[0]), float(o[1]))
    else:
        origin = centred_origin(inten.shape[1:], pitch) if pitch else (0.0, 0.0)
    inputs = _index_array(path, "inputs", arrays["inputs"], n, what="dataset index") if "inputs" in arrays else None
    return Scan(intensity=inten, labels=labels if labels is not None else np.zeros(0, np.int64), pitch_m=pitch,
                origin_m=origin, source=str(path), inputs=inputs, origin_given=origin_given)


# --------------------------------------------------------------------------- public readers
def read_measured(path, n_detectors: int, n_classes: int):
    """Read a measurement file (CSV of detector powers or NPZ of scans), validated.

    Returns :class:`DetectorPowers` or :class:`Scan`. ``n_detectors`` and ``n_classes``
    come from the design; a file disagreeing with them is refused.
    """
    path = _check_file(path)
    if _kind_of(path) == "scan":
        return _read_scan_npz(path, n_classes)
    return _read_power_csv(path, n_detectors, n_classes)


def read_background(path, measured):
    """Read a dark measurement matching ``measured``; returns the level to subtract.

    For detector powers: a vector (K,), the mean of the file's rows. For scans: an image
    (H, W), the mean of the file's frames (a single (H, W) frame is accepted), which must
    have the scan's shape (and ``pitch_m``, if the file gives one).
    """
    path = _check_file(path)
    kind = _kind_of(path)
    if kind != measured.kind:
        want = "a CSV of detector powers" if measured.kind == "detectors" else "an NPZ scan"
        raise MeasuredDataError(f"{path}: the background must be in the same format as the measurement ({want})")
    if kind == "detectors":
        bg = _read_power_csv(path, measured.powers.shape[1], None, need_labels=False)
        return bg.powers.mean(axis=0)
    bg = _read_scan_npz(path, None, need_labels=False)
    if bg.shape != measured.shape:
        raise MeasuredDataError(f"{path}: background frames are {bg.shape[0]} x {bg.shape[1]} pixels but the scans "
                                f"in {measured.source} are {measured.shape[0]} x {measured.shape[1]}")
    if bg.pitch_m is not None and not math.isclose(bg.pitch_m, measured.pitch_m, rel_tol=1e-6):
        raise MeasuredDataError(f"{path}: field 'pitch_m' = {bg.pitch_m:g} m differs from the scans' "
                                f"{measured.pitch_m:g} m")
    return bg.intensity.mean(axis=0)


def read_gains(path, n_detectors: int) -> np.ndarray:
    """Per-detector gains (K,) from JSON (``{"gains": [...]}`` or a list) or a one-row CSV."""
    path = _check_file(path)
    if path.suffix.lower() == ".json":
        with _file_errors():
            doc = read_json(path)
        g = doc.get("gains") if isinstance(doc, dict) else doc
        if g is None:
            raise MeasuredDataError(f"{path}: has no field 'gains'")
        if not isinstance(g, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in g):
            raise MeasuredDataError(f"{path}: field 'gains' must be a list of numbers")
        if len(g) != n_detectors:
            raise MeasuredDataError(f"{path}: field 'gains' has {len(g)} values but the design has {n_detectors} "
                                    "detectors")
        gains = np.asarray(g, dtype=np.float64)
    else:
        rows = _read_power_csv(path, n_detectors, None, need_labels=False)
        if rows.n != 1:
            raise MeasuredDataError(f"{path}: a gains CSV holds one row of det0 ... det{n_detectors - 1}, "
                                    f"found {rows.n}")
        gains = rows.powers[0]
    bad = ~np.isfinite(gains) | (gains <= 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise MeasuredDataError(f"{path}: gain of det{k} = {float(gains[k])!r} must be a positive finite number")
    bad = (gains < MIN_GAIN) | (gains > MAX_MAGNITUDE)
    if bad.any():
        k = int(np.argmax(bad))
        raise MeasuredDataError(f"{path}: gain of det{k} = {float(gains[k]):g} is outside {MIN_GAIN:g} ... "
                                f"{MAX_MAGNITUDE:g} (the calibrated powers would overflow or underflow)")
    return gains


# --------------------------------------------------------------------------- writers
def atomic_write_bytes(path, data: bytes, *, overwrite=False):
    """Write ``data`` to ``path`` through a temporary file and a rename (refuses to overwrite unless asked)."""
    return _atomic_write_bytes(path, data, overwrite=overwrite)


def check_output_file(path, *, overwrite=False) -> Path:
    """Refuse to write a file at ``path`` where that cannot be done safely; called before any work.

    Refused: anything at ``path`` -- a file, or a symbolic link even if it dangles (writing
    would replace it) -- unless ``overwrite``; a folder, or a link to one, and anything that
    is not a regular file, always; a missing parent folder. Raises
    :class:`~diffractive.errors.OutputExists` or :class:`FileNotFoundError`.
    """
    path = Path(path)
    if os.path.isdir(path):
        raise OutputExists(path, "is a folder", {})
    if os.path.lexists(path):
        if os.path.exists(path) and not os.path.isfile(path):
            raise OutputExists(path, "exists and is not a regular file", {})
        if not overwrite:
            what = "is a dangling symbolic link" if not os.path.exists(path) else "exists"
            raise OutputExists(path, what, {"overwrite": "replace it"})
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder (for {path.name})")
    return path


def write_files(files: dict, *, overwrite=False) -> list:
    """Write several files all or nothing: ``files`` maps a path to its bytes.

    Every path is checked first (:func:`check_output_file`; two paths naming one file are
    refused); then each file is written to a temporary file beside it and flushed to disk;
    only then are they renamed into place. If anything fails or is interrupted, the files
    already renamed are put back as they were (a replaced file is kept as a hard link until
    the end) and every temporary file is removed, so either all files are written or none
    is changed. Returns the paths.
    """
    items = [(check_output_file(p, overwrite=overwrite), data) for p, data in files.items()]
    seen = {}
    for p, _ in items:
        key = p.resolve()
        if key in seen:
            raise D2NNError(f"{seen[key]} and {p} are the same file")
        seen[key] = p
    mask = os.umask(0)
    os.umask(mask)
    staged, done = [], []
    try:
        for p, data in items:
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
            staged.append((p, Path(tmp)))
            os.fchmod(fd, 0o666 & ~mask)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        try:
            for p, tmp in staged:
                entry = {"path": p, "backup": None, "linked": False, "replaced": False}
                if os.path.lexists(p):
                    backup = p.with_name(f".{p.name}.{os.getpid()}.{len(done)}.old")
                    try:  # a second name for the old file: the path never goes missing
                        os.link(p, backup, follow_symlinks=False)
                        entry["linked"] = True
                    except OSError:
                        os.replace(p, backup)
                    entry["backup"] = backup
                done.append(entry)
                os.replace(tmp, p)
                entry["replaced"] = True
        except BaseException:
            for e in reversed(done):
                with contextlib.suppress(OSError):
                    if e["backup"] is None:
                        if e["replaced"]:
                            os.unlink(e["path"])
                    elif e["linked"] and not e["replaced"]:
                        os.unlink(e["backup"])  # the old file is still at its path
                    else:
                        os.replace(e["backup"], e["path"])
            raise
        for e in done:
            if e["backup"] is not None:
                with contextlib.suppress(OSError):
                    os.unlink(e["backup"])
    finally:
        for _, tmp in staged:
            with contextlib.suppress(OSError):
                if os.path.lexists(tmp):
                    os.unlink(tmp)
    return [p for p, _ in items]


def detector_csv_bytes(powers, labels=None, sample_ids=None, inputs=None, total=None, comments=()) -> bytes:
    """CSV text of detector powers in the format :func:`read_measured` reads (full float precision), as UTF-8 bytes.

    ``powers`` (N, K); optional ``labels`` (N,), ``sample_ids`` (N strings, default
    ``s0000`` ...), ``inputs`` (N,) dataset indices, ``total`` (N,); ``comments`` become
    ``#`` lines above the header. A sample id must be text the reader gives back: not
    empty, no line break, no surrounding blanks (else :class:`MeasuredDataError`); one
    that starts with ``#`` is quoted, so that its row is not read as a comment.
    """
    powers = np.asarray(powers, dtype=np.float64)
    n, k = powers.shape
    buf = io.StringIO()
    for c in comments:
        buf.write("# " + re.sub(r"[\r\n]+", " ", str(c)) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    head = ["sample"] + (["label"] if labels is not None else []) + (["input"] if inputs is not None else [])
    head += [f"det{j}" for j in range(k)] + (["total"] if total is not None else [])
    w.writerow(head)
    for i in range(n):
        sid = str(sample_ids[i]) if sample_ids is not None else f"s{i:04d}"
        if not sid or sid != sid.strip() or "\n" in sid or "\r" in sid:
            raise MeasuredDataError(f"sample id {_show(sid)} cannot be written to a CSV that reads back the same "
                                    "(empty, a line break, or blanks around it)")
        row = [sid]
        if labels is not None:
            row.append(int(labels[i]))
        if inputs is not None:
            row.append(int(inputs[i]))
        row += [repr(float(v)) for v in powers[i]]
        if total is not None:
            row.append(repr(float(total[i])))
        if sid.startswith("#"):
            line = io.StringIO()
            csv.writer(line, lineterminator="\n").writerow(row)
            text = line.getvalue()
            buf.write(text if text.startswith('"') else '"' + sid.replace('"', '""') + '"' + text[len(sid):])
        else:
            w.writerow(row)
    return buf.getvalue().encode()


def scan_npz_bytes(intensity, pitch_m, labels=None, origin_m=None, inputs=None) -> bytes:
    """NPZ bytes of scans in the format :func:`read_measured` reads.

    ``intensity`` (N, H, W); ``pitch_m`` the scan step in metres; optional ``labels`` (N,),
    ``origin_m`` (x, y) in metres, ``inputs`` (N,) dataset indices.
    """
    arrays = {"intensity": np.asarray(intensity, dtype=np.float64), "pitch_m": np.float64(pitch_m)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if origin_m is not None:
        arrays["origin_m"] = np.asarray(origin_m, dtype=np.float64)
    if inputs is not None:
        arrays["inputs"] = np.asarray(inputs, dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
