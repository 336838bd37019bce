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
file and the row, column or field. Values that can be measurements — small negative
numbers among them — are kept; only what cannot be a measurement (NaN, infinity, text)
is refused.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes as _atomic_write_bytes
from ..errors import D2NNError


class MeasuredDataError(D2NNError):
    """A measurement, background or gains file cannot be used; the message names the place."""


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
_DET_RE = re.compile(r"^det(\d+)$")


def _fmt_list(names, limit=6):
    names = list(names)
    if len(names) > limit:
        return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"
    return ", ".join(names)


def _det_range(k):
    return "det0" if k == 1 else f"det0 ... det{k - 1}"


def _kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "scan"
    if suffix in (".csv", ".txt", ".tsv"):
        return "detectors"
    with open(path, "rb") as f:
        head = f.read(4)
    return "scan" if head.startswith(b"PK") else "detectors"


def _check_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MeasuredDataError(f"{path}: no such file")
    if path.is_dir():
        raise MeasuredDataError(f"{path}: is a folder, not a measurement file")
    return path


def _parse_int(text, what):
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        v = float(t)
    except ValueError:
        raise MeasuredDataError(f"{what} = {text!r} is not an integer") from None
    if not math.isfinite(v) or v != int(v):
        raise MeasuredDataError(f"{what} = {text!r} is not an integer")
    return int(v)


# --------------------------------------------------------------------------- CSV
def _parse_finite(text, what) -> float:
    """A finite float from a CSV cell, or :class:`MeasuredDataError` naming ``what``."""
    text = text.strip()
    if not text:
        raise MeasuredDataError(f"{what} is empty")
    try:
        v = float(text)
    except ValueError:
        raise MeasuredDataError(f"{what} = {text!r} is not a number") from None
    if not math.isfinite(v):
        raise MeasuredDataError(f"{what} = {text!r} is not a finite number")
    return v


def _csv_rows(path: Path):
    """(header, [(line_number, fields)]) of a CSV file; comments and blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise MeasuredDataError(f"{path}: not a text (UTF-8) CSV file ({e.reason} at byte {e.start})") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise MeasuredDataError(f"{path}: empty file (expected a header row such as sample,label,det0,det1,...)")
    header_line = lines[0][1]
    delim = ","
    if "," not in header_line:
        delim = ";" if ";" in header_line else ("\t" if "\t" in header_line else ",")
    rows = []
    for lineno, ln in lines:
        rows.append((lineno, next(csv.reader([ln], delimiter=delim))))
    header = [h.strip() for h in rows[0][1]]
    return header, rows[1:]


def _read_power_csv(path: Path, n_detectors: int, n_classes: int | None, *, need_labels=True):
    header, rows = _csv_rows(path)
    lower = [h.lower() for h in header]
    seen = set()
    for h in lower:
        if h in seen and h:
            raise MeasuredDataError(f"{path}: column '{h}' appears twice in the header")
        seen.add(h)
    dets = {int(m.group(1)): i for i, h in enumerate(lower) if (m := _DET_RE.match(h))}
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
        where = f"{path}: line {lineno} (sample {sid!r})"
        if "sample" in col and not sid:
            raise MeasuredDataError(f"{path}: line {lineno}: column 'sample' is empty")
        ids.append(sid)
        for k, c in enumerate(det_cols):
            powers[r, k] = _parse_finite(fields[c], f"{where}: column 'det{k}'")
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
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise MeasuredDataError(f"{path}: is a single .npy array, not an .npz archive with 'intensity', "
                                        "'labels' and 'pitch_m'")
            return {k: z[k] for k in z.files}
    except MeasuredDataError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise MeasuredDataError(f"{path}: cannot be read as .npz ({e})") from None
    except Exception as e:  # zipfile.BadZipFile and friends
        raise MeasuredDataError(f"{path}: cannot be read as .npz ({type(e).__name__}: {e})") from None


def _real_array(path, name, a):
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise MeasuredDataError(f"{path}: field '{name}' must hold real numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def _first_bad(a):
    idx = np.argwhere(~np.isfinite(a))[0]
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
    inten = _real_array(path, "intensity", inten)
    if not np.all(np.isfinite(inten)):
        kind, at = _first_bad(inten)
        raise MeasuredDataError(f"{path}: field 'intensity' has {kind} at {at} (scan {at[1:].split(',')[0]})")
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
    if path.stat().st_size == 0:
        raise MeasuredDataError(f"{path}: empty file")
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
    if path.stat().st_size == 0:
        raise MeasuredDataError(f"{path}: empty file")
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
    if path.stat().st_size == 0:
        raise MeasuredDataError(f"{path}: empty file")
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MeasuredDataError(f"{path}: not valid JSON ({e})") from None
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
    return gains


# --------------------------------------------------------------------------- writers
def atomic_write_bytes(path, data: bytes, *, overwrite=False):
    """Write ``data`` to ``path`` through a temporary file and a rename (refuses to overwrite unless asked)."""
    return _atomic_write_bytes(path, data, overwrite=overwrite)


def detector_csv_bytes(powers, labels=None, sample_ids=None, inputs=None, total=None, comments=()) -> bytes:
    """CSV text of detector powers in the format :func:`read_measured` reads (full float precision), as UTF-8 bytes.

    ``powers`` (N, K); optional ``labels`` (N,), ``sample_ids`` (N strings, default
    ``s0000`` ...), ``inputs`` (N,) dataset indices, ``total`` (N,); ``comments`` become
    ``#`` lines above the header.
    """
    powers = np.asarray(powers, dtype=np.float64)
    n, k = powers.shape
    buf = io.StringIO()
    for c in comments:
        buf.write(f"# {c}\n")
    w = csv.writer(buf, lineterminator="\n")
    head = ["sample"] + (["label"] if labels is not None else []) + (["input"] if inputs is not None else [])
    head += [f"det{j}" for j in range(k)] + (["total"] if total is not None else [])
    w.writerow(head)
    for i in range(n):
        row = [sample_ids[i] if sample_ids is not None else f"s{i:04d}"]
        if labels is not None:
            row.append(int(labels[i]))
        if inputs is not None:
            row.append(int(inputs[i]))
        row += [repr(float(v)) for v in powers[i]]
        if total is not None:
            row.append(repr(float(total[i])))
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
