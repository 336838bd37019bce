"""Malformed measurement files (issue 17): every corruption gives one clean line naming the file,
or a documented acceptance -- never another exception, never NaN in the printed statistics.

Property-based (hypothesis, few examples each, no deadline): random valid detector CSVs and scan
NPZ files round-trip through the readers; random corruptions of them (byte flips, truncation,
huge fields, huge/tiny/non-finite/subnormal numbers, duplicate or renamed detector columns,
gzip, non-UTF-8, broken .npz archives, bad dtypes) are refused with a
:class:`~diffractive.errors.D2NNError` whose message is one line naming the file, or are read
into values that satisfy the documented limits (docs/evaluate.md, "Limits"). The statistics
of accepted extreme inputs (all-zero rows, subnormal or 1e100 readings, integer scans) are
printed without NaN or infinity, with what cannot be computed said in words.
"""
import gzip
import io
import itertools
import json
import math
import os
import re
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from d2nn.cli import main
from diffractive.design import save_design
from diffractive.errors import D2NNError
from diffractive.measured.io import (MAX_CALIBRATED, MAX_FIELD_CHARS, MAX_INDEX, MAX_MAGNITUDE, MIN_GAIN,
                                     MeasuredDataError, centred_origin, detector_csv_bytes, read_background,
                                     read_gains, read_measured, scan_npz_bytes)

K, C = 10, 10  # the small design's detectors and classes
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("malformed")


@pytest.fixture(scope="module")
def design_dir(tmp_path_factory, small_design):
    folder = tmp_path_factory.mktemp("design") / "small"
    save_design(small_design(), folder)
    return folder


def put(work, data, suffix=".csv"):
    """``data`` (bytes or text) written to a new file in ``work``; its path."""
    p = work / f"f{next(_counter):05d}{suffix}"
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def clean_refusal(err, path):
    """``err`` is the one-line D2NNError the readers promise, naming ``path``."""
    assert isinstance(err, D2NNError), repr(err)
    msg = str(err)
    assert "\n" not in msg and str(path) in msg, msg
    assert len(msg) < 600, msg  # a 200,000-character field is not echoed back
    return msg


def read_or_refuse(fn, path, *args):
    """(value, None) or (None, message) -- any exception other than a D2NNError fails the test."""
    try:
        return fn(path, *args), None
    except D2NNError as e:
        return None, clean_refusal(e, path)


def check_powers(m):
    """The documented invariants of an accepted DetectorPowers."""
    assert m.powers.dtype == np.float64 and m.powers.shape == (m.n, K) and m.n >= 1
    assert np.all(np.isfinite(m.powers)) and np.all(np.abs(m.powers) <= MAX_MAGNITUDE)
    assert m.labels.shape == (m.n,) and np.all((m.labels >= 0) & (m.labels < C))
    assert len(m.sample_ids) == m.n and all(m.sample_ids)
    if m.inputs is not None:
        assert np.all((m.inputs >= 0) & (m.inputs <= MAX_INDEX))
    if m.total is not None:
        assert np.all(np.isfinite(m.total)) and np.all(np.abs(m.total) <= MAX_MAGNITUDE)


def check_scan(s):
    """The documented invariants of an accepted Scan."""
    assert s.intensity.dtype == np.float64 and s.intensity.ndim == 3
    assert np.all(np.isfinite(s.intensity)) and np.all(np.abs(s.intensity) <= MAX_MAGNITUDE)
    assert s.labels.shape == (s.n,) and np.all((s.labels >= 0) & (s.labels < C))
    assert math.isfinite(s.pitch_m) and s.pitch_m > 0 and all(math.isfinite(v) for v in s.origin_m)
    if s.inputs is not None:
        assert np.all((s.inputs >= 0) & (s.inputs <= MAX_INDEX))


# --------------------------------------------------------------------------- strategies
readings = st.floats(min_value=-MAX_MAGNITUDE, max_value=MAX_MAGNITUDE, allow_nan=False, allow_subnormal=True)
tiny = st.sampled_from([5e-324, -5e-324, 1e-320, 2.2250738585072014e-308, 1e-300, 0.0, -0.0])
extreme_readings = st.one_of(readings, tiny, st.sampled_from([MAX_MAGNITUDE, -MAX_MAGNITUDE, 1e99, 0.0]))
ids = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=1,
              max_size=12).map(str.strip).filter(bool)


@st.composite
def csv_tables(draw, n_max=6):
    """(powers (N, K), labels, ids, inputs or None, total or None) of a valid measurement."""
    n = draw(st.integers(1, n_max))
    powers = np.array(draw(st.lists(st.lists(extreme_readings, min_size=K, max_size=K), min_size=n, max_size=n)))
    labels = draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n))
    sample_ids = draw(st.lists(ids, min_size=n, max_size=n))
    inputs = draw(st.none() | st.lists(st.integers(0, 299), min_size=n, max_size=n))
    total = draw(st.none() | st.lists(readings, min_size=n, max_size=n))
    return powers, labels, sample_ids, inputs, total


@st.composite
def formatted_csv(draw):
    """Text of a valid measurement in a random but documented layout, and what it holds.

    Column order, case of the names, separator (',', ';', tab), extra columns, comment and
    blank lines, CRLF line ends, a UTF-8 BOM, zero-padded detector names (det03).
    """
    n = draw(st.integers(1, 5))
    powers = np.array(draw(st.lists(st.lists(extreme_readings, min_size=K, max_size=K), min_size=n, max_size=n)))
    labels = draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n))
    sep = draw(st.sampled_from([",", ";", "\t"]))
    names = ["sample", "label"] + [draw(st.sampled_from([f"det{k}", f"DET{k}", f"Det{k:02d}"])) for k in range(K)]
    extra = draw(st.lists(st.sampled_from(["note", "operator", "T_celsius"]), unique=True, max_size=2))
    order = draw(st.permutations(list(range(len(names) + len(extra)))))
    header = (names + extra)
    rows = []
    for i in range(n):
        cells = [f"s{i}", str(labels[i])] + [repr(float(v)) for v in powers[i]] + ["x"] * len(extra)
        rows.append(sep.join(cells[j] for j in order))
    lines = [sep.join(header[j] for j in order)] + rows
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["# comment", "", "   ", "#"])))
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = eol.join(lines) + eol
    bom = draw(st.booleans())
    return ("\ufeff" if bom else "") + text, powers, labels


# --------------------------------------------------------------------------- CSV: valid files round-trip
@FEW
@given(table=csv_tables())
def test_written_csv_round_trips_exactly(work, table):
    powers, labels, sample_ids, inputs, total = table
    data = detector_csv_bytes(powers, labels, sample_ids, inputs=inputs, total=total, comments=["run\n7"])
    m = read_measured(put(work, data), K, C)
    check_powers(m)
    np.testing.assert_array_equal(m.powers, powers)
    assert m.labels.tolist() == labels and m.sample_ids == sample_ids
    assert (m.inputs is None) == (inputs is None) and (inputs is None or m.inputs.tolist() == inputs)
    assert (m.total is None) == (total is None) and (total is None or m.total.tolist() == total)


@FEW
@given(doc=formatted_csv())
def test_any_documented_csv_layout_reads_the_same_values(work, doc):
    text, powers, labels = doc
    m = read_measured(put(work, text), K, C)
    check_powers(m)
    np.testing.assert_array_equal(m.powers, powers)
    assert m.labels.tolist() == labels


# --------------------------------------------------------------------------- CSV: corruptions
BAD_NUMBERS = ["1e400", "-1e400", "1e300", "-1e300", "1.7976931348623157e308", "1.0000001e100", "nan", "NaN",
               "-nan", "inf", "-Infinity", "1_000", "0x10", "\u0661\u0662", "1e", "--1", "1;5", "", " ",
               "9" * 400, "1" + "0" * 5000]


def _edit_cell(lines, row, col, value):
    """The CSV lines with cell (row, col) replaced (row 0 is the header)."""
    cells = lines[row].split(",")
    cells[col] = value
    return lines[:row] + [",".join(cells)] + lines[row + 1:]


@st.composite
def corrupted_csv(draw):
    """(bytes, kind, detail): a valid CSV with one corruption applied."""
    powers, labels, sample_ids, inputs, total = draw(csv_tables(n_max=4))
    sample_ids = [f"s{i}" for i in range(len(labels))]  # plain ids: the corruptions address cells by commas
    inputs = inputs if inputs is not None else list(range(len(labels)))
    text = detector_csv_bytes(powers, labels, sample_ids, inputs=inputs).decode()
    lines = text.splitlines()  # header: sample,label,input,det0..det9
    n = len(lines) - 1
    kind = draw(st.sampled_from(["flip", "truncate", "huge field", "bad number", "bad label", "bad input",
                                 "duplicate det", "renamed det", "gzip", "latin-1", "utf-16", "nul", "binary"]))
    row = draw(st.integers(1, n))
    det_col = 3 + draw(st.integers(0, K - 1))
    detail = None
    if kind == "flip":
        data = bytearray(text.encode())
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data), kind, None
    if kind == "truncate":
        data = text.encode()
        return data[:draw(st.integers(0, len(data) - 1))], kind, None
    if kind == "huge field":
        size = draw(st.sampled_from([MAX_FIELD_CHARS + 1, 200_000, 300_001]))
        col = draw(st.sampled_from([0, 1, 2, det_col]))
        where = draw(st.sampled_from(["data", "header"]))
        lines = _edit_cell(lines, row if where == "data" else 0, col, "7" * size if col else "x" * size)
        detail = size
    elif kind == "bad number":
        detail = draw(st.sampled_from(BAD_NUMBERS))
        lines = _edit_cell(lines, row, det_col, detail)
    elif kind == "bad label":
        detail = draw(st.sampled_from(["10", "-1", "1.5", "99999999999999999999", "1e400", "nan", "\u0663", "3_0"]))
        lines = _edit_cell(lines, row, 1, detail)
    elif kind == "bad input":
        detail = draw(st.sampled_from(["99999999999999999999", "-3", "1e400", "2.5", "9" * 60, "inf", str(2 ** 63)]))
        lines = _edit_cell(lines, row, 2, detail)
    elif kind == "duplicate det":
        k = det_col - 3
        detail = draw(st.sampled_from([f"det{k:02d}", f"det{k:03d}", f"DET{k}", f" det{k} "]))
        lines = [ln + "," + (detail if i == 0 else "0.5") for i, ln in enumerate(lines)]
    elif kind == "renamed det":
        k = det_col - 3
        detail = draw(st.sampled_from([f"det {k}", f"det_{k}", f"d{k}", f"det\u0660{k}", f"det{k}x", f"det-{k}",
                                       f"det{'9' * 12}"]))
        lines = _edit_cell(lines, 0, det_col, detail)
    text = "\n".join(lines) + "\n"
    if kind == "gzip":
        return gzip.compress(text.encode()), kind, None
    if kind == "latin-1":
        return text.replace("s0", "s\u00e90").encode("latin-1"), kind, None
    if kind == "utf-16":
        return text.encode("utf-16"), kind, None
    if kind == "nul":
        return text.replace(",", ",\x00", 1).encode(), kind, None
    if kind == "binary":
        return np.random.default_rng(row).bytes(64 * row), kind, None
    return text.encode(), kind, detail


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corrupted_csv())
def test_corrupted_csv_is_refused_in_one_line_or_read_within_the_limits(work, case):
    data, kind, detail = case
    path = put(work, data)
    m, msg = read_or_refuse(read_measured, path, K, C)
    if m is not None:
        check_powers(m)
    # the corruptions that must be refused, and what the message says
    must = {"huge field": "characters", "gzip": "gzip", "latin-1": "UTF-8", "utf-16": "UTF-8",
            "duplicate det": "det", "renamed det": "det", "bad label": "label"}
    if kind in must:
        assert msg is not None and must[kind] in msg, (kind, detail, msg)
    if kind == "huge field":
        assert f"{detail:,} characters" in msg and "line" in msg
    if kind == "duplicate det":
        assert any(w in msg for w in ("both name detector", "are the same column", "appears twice")), msg
    if kind == "bad number":
        ok = _accepted_number(detail)
        assert (msg is None) == ok, (detail, msg)
        if msg is not None:
            assert "column 'det" in msg and "line" in msg
    if kind == "bad input":
        assert msg is not None and "column 'input'" in msg, (detail, msg)


def _accepted_number(text):
    """True when ``text`` is a reading the documentation accepts (an ASCII decimal, at most 1e100)."""
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", text.strip()):
        return False
    return abs(float(text)) <= MAX_MAGNITUDE


def test_each_reported_csv_failure_is_one_clean_line(work):
    """The failures reported in issue 17, one by one."""
    head = "sample,label,input," + ",".join(f"det{k}" for k in range(K))

    def row(**cells):
        c = {"sample": "s0", "label": "1", "input": "3", **{f"det{k}": "0.5" for k in range(K)}, **cells}
        return ",".join(c[h] for h in head.split(","))

    cases = [
        (head + "\n" + row(input="99999999999999999999"), "column 'input' = '99999999999999999999' is too large"),
        (head + "\n" + row(det3="x" * 200_000), "line 2: column 'det3' holds 200,000 characters"),
        (head + "\n" + row(det4="1e300"), "column 'det4' = '1e300' is beyond the 1e+100"),
        (head + "\n" + row(det4="-1e300"), "column 'det4' = '-1e300' is beyond"),
        (head + ",det02\n" + row() + ",0.1", "columns 'det2' and 'det02' both name detector 2"),
        (head.replace("det1,", "det\u0661,") + "\n" + row(), "missing detector column(s) det1"),
    ]
    for text, expected in cases:
        p = put(work, text)
        with pytest.raises(MeasuredDataError) as e:
            read_measured(p, K, C)
        assert expected in clean_refusal(e.value, p), str(e.value)[:300]
    p = put(work, gzip.compress((head + "\n" + row() + "\n").encode()))
    with pytest.raises(MeasuredDataError, match="gzip-compressed"):
        read_measured(p, K, C)
    p = put(work, (head + "\n" + row(sample="caf\u00e9") + "\n").encode("cp1252"))
    with pytest.raises(MeasuredDataError, match="is not UTF-8 text"):
        read_measured(p, K, C)


def test_unreadable_file_is_one_line(work, monkeypatch):
    p = put(work, "sample,label\n")
    os.chmod(p, 0)
    try:
        if os.geteuid() == 0:  # root reads mode-000 files: make the access check fail as it would for a user
            real = os.access
            monkeypatch.setattr(os, "access", lambda q, mode, *a, **kw: False if str(q) == str(p) else real(q, mode))
        for fn, args in ((read_measured, (K, C)), (read_gains, (K,))):
            with pytest.raises(MeasuredDataError, match="permission denied") as e:
                fn(p, *args)
            clean_refusal(e.value, p)
    finally:
        os.chmod(p, 0o644)


# --------------------------------------------------------------------------- gains
GAIN_DOCS = ["{\"gains\": [%s]}", "[%s]", "{\"gains\": [%s], \"stderr\": null}"]
gain_cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: repr(v) if math.isfinite(v) else
                                                       {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[str(v)]),
    st.sampled_from(["1" + "0" * 400, "1e-300", "1e400", "true", "\"1\"", "null", "1e-400", "[1]", "5e-324",
                     str(10 ** 29), "1e100", "1e-100", "0", "-1"]))


@FEW
@given(cells=st.lists(gain_cells, min_size=K - 1, max_size=K + 1), layout=st.sampled_from(GAIN_DOCS))
def test_gains_files_are_refused_in_one_line_or_within_the_limits(work, cells, layout):
    path = put(work, layout % ", ".join(cells), suffix=".json")
    g, msg = read_or_refuse(read_gains, path, K)
    if g is not None:
        assert g.shape == (K,) and np.all((g >= MIN_GAIN) & (g <= MAX_MAGNITUDE))


def test_extreme_gains_are_refused_naming_the_detector(work):
    for text, expected in [("[" + ", ".join(["1"] * (K - 1) + ["1" + "0" * 400]) + "]", "integer of 401 digits"),
                           ("[" + ", ".join(["1"] * (K - 1) + ["1e-300"]) + "]", "gain of det9 = 1e-300 is outside"),
                           ("[" + ", ".join(["1"] * (K - 1) + ["1e400"]) + "]", "overflows a float"),
                           ("[" + ", ".join(["1e101"] + ["1"] * (K - 1)) + "]", "gain of det0 = 1e+101 is outside")]:
        p = put(work, text, suffix=".json")
        with pytest.raises(MeasuredDataError) as e:
            read_gains(p, K)
        assert expected in clean_refusal(e.value, p), str(e.value)


# --------------------------------------------------------------------------- scans
SCAN_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.uint16, np.uint8]


@st.composite
def scans(draw, hw=(2, 6)):
    """Arrays of a valid scan file: intensity of a random numeric dtype, labels, pitch, origin, inputs."""
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(*hw)), draw(st.integers(*hw))
    dtype = np.dtype(draw(st.sampled_from(SCAN_DTYPES)))
    if dtype.kind == "f":
        lim = min(float(np.finfo(dtype).max), MAX_MAGNITUDE)
        vals = st.one_of(st.floats(-lim, lim, width=dtype.itemsize * 8, allow_subnormal=True), tiny)
    else:
        info = np.iinfo(dtype)
        vals = st.integers(int(info.min), int(info.max))
    inten = np.array(draw(st.lists(vals, min_size=n * h * w, max_size=n * h * w)), dtype=dtype).reshape(n, h, w)
    arrays = {"intensity": inten, "labels": np.array(draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n))),
              "pitch_m": draw(st.sampled_from([0.4e-3, 0.25e-3, 1e-3]))}
    if draw(st.booleans()):
        arrays["origin_m"] = np.array(centred_origin((h, w), arrays["pitch_m"])) + draw(st.floats(-1e-3, 1e-3))
    if draw(st.booleans()):
        arrays["inputs"] = np.array(draw(st.lists(st.integers(0, 299), min_size=n, max_size=n)))
    return arrays


def npz_bytes(arrays, compressed=False):
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


@FEW
@given(arrays=scans(), compressed=st.booleans())
def test_valid_scans_of_any_numeric_dtype_round_trip(work, arrays, compressed):
    with np.errstate(over="ignore"):
        s = read_measured(put(work, npz_bytes(arrays, compressed), ".npz"), K, C)
    check_scan(s)
    np.testing.assert_array_equal(s.intensity, arrays["intensity"].astype(np.float64))
    assert s.labels.tolist() == arrays["labels"].tolist() and s.pitch_m == arrays["pitch_m"]
    assert s.origin_given == ("origin_m" in arrays)


def _npy_with_header(shape, dtype="<f8", payload=b"\0" * 64):
    """.npy bytes whose header declares ``shape`` of ``dtype``, followed by only ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload  # (the header writer writes the magic string too)


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@st.composite
def corrupted_scans(draw):
    """(bytes, kind): a valid scan file with one corruption applied."""
    arrays = draw(scans(hw=(3, 5)))
    arrays["intensity"] = arrays["intensity"].astype(np.float64)
    kind = draw(st.sampled_from(["flip", "truncate", "crc", "huge header", "bad dtype", "bad value", "bad label",
                                 "bad index", "renamed", "npy", "gzip", "empty zip", "text"]))
    if kind == "bad dtype":
        field = draw(st.sampled_from(["intensity", "labels", "pitch_m", "inputs"]))
        n = len(arrays["labels"])
        shape = arrays["intensity"].shape if field == "intensity" else (n,) if field in ("labels", "inputs") else ()
        arrays[field] = draw(st.sampled_from([
            np.zeros(shape, complex), np.full(shape, "a"), np.zeros(shape, bool), np.zeros(shape, "datetime64[s]"),
            np.zeros(shape, [("a", "<f8")]), np.zeros(shape, "V8"), np.array(shape and [None] * math.prod(shape) or None,
                                                                            dtype=object).reshape(shape)]))
        return npz_bytes(arrays) if arrays[field].dtype != object else _pickled_npz(arrays), kind
    if kind == "bad value":
        v = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 1.0000001e100, 1e308]))
        idx = tuple(draw(st.integers(0, s - 1)) for s in arrays["intensity"].shape)
        arrays["intensity"][idx] = v
        field = draw(st.sampled_from(["intensity", "pitch_m", "origin_m"]))
        if field == "pitch_m":
            arrays["pitch_m"] = np.float64(v)
        elif field == "origin_m":
            arrays["origin_m"] = np.array([v, 0.0])
        return npz_bytes(arrays), kind
    if kind == "bad label":
        arrays["labels"] = arrays["labels"] + draw(st.sampled_from([C, -C, 0.5, 2.0 ** 63, 1e300]))
        return npz_bytes(arrays), kind
    if kind == "bad index":
        value, dtype = draw(st.sampled_from([(2 ** 64 - 1, np.uint64), (2 ** 60, np.uint64), (-1, np.int64),
                                             (2 ** 63 - 1, np.int64), (1e30, np.float64), (-0.5, np.float64)]))
        arrays["inputs"] = np.full(len(arrays["labels"]), value, dtype=dtype)
        return npz_bytes(arrays), kind
    if kind == "renamed":
        old = draw(st.sampled_from(["intensity", "labels", "pitch_m"]))
        arrays[draw(st.sampled_from(["Intensity", "label", "pitch", "pitch_mm"]))] = arrays.pop(old)
        return npz_bytes(arrays), kind
    if kind == "huge header":
        member = draw(st.sampled_from(["intensity", "labels"]))
        shape = draw(st.sampled_from([(100_000, 100_000, 100_000), (2 ** 31, 2 ** 31), (10 ** 6, 10 ** 6, 8)]))
        members = {f"{k}.npy": _npy_of(v) for k, v in arrays.items()}
        members[f"{member}.npy"] = _npy_with_header(shape)
        return _zip(members), kind
    if kind == "npy":
        buf = io.BytesIO()
        np.save(buf, arrays["intensity"])
        return buf.getvalue(), kind
    if kind == "gzip":
        return gzip.compress(npz_bytes(arrays)), kind
    if kind == "empty zip":
        return _zip({}), kind
    if kind == "text":
        return b"sample,label,det0\n", kind
    data = bytearray(npz_bytes(arrays, compressed=kind != "crc" and draw(st.booleans())))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "crc":  # a byte of the stored intensity data changed: the archive's CRC no longer matches
        arrays_bytes = _npy_of(arrays["intensity"])
        at = bytes(data).find(arrays_bytes[-16:])
        assume(at > 0)
        data[at + 3] ^= 0x55
    return bytes(data), kind


def _npy_of(a):
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _pickled_npz(arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object arrays are pickled into the archive: never loaded
    return buf.getvalue()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corrupted_scans())
def test_corrupted_scan_is_refused_in_one_line_or_read_within_the_limits(work, case):
    data, kind = case
    path = put(work, data, ".npz")
    s, msg = read_or_refuse(read_measured, path, K, C)
    if s is not None:
        check_scan(s)
    if kind in ("crc", "huge header", "bad dtype", "bad value", "bad label", "bad index", "renamed", "npy", "gzip",
                "empty zip", "text"):
        assert msg is not None, kind
    if kind == "huge header":
        assert "GiB" in msg, msg
    if kind == "crc":
        assert "not a readable .npz archive" in msg and "intensity" in msg, msg
    if kind == "npy":
        assert "bare .npy" in msg, msg


def test_background_corruptions_are_refused_in_one_line(work):
    good = put(work, detector_csv_bytes(np.ones((2, K)), [0, 1], ["a", "b"]))
    m = read_measured(good, K, C)
    for text, expected in [("sample," + ",".join(f"det{k}" for k in range(K)) + "\nd0," + ",".join(["1e300"] * K),
                            "is beyond"),
                           ("det0;det1\n1;2\n", "missing detector column"),
                           (gzip.compress(b"det0\n1\n"), "gzip")]:
        p = put(work, text)
        with pytest.raises(MeasuredDataError) as e:
            read_background(p, m)
        assert expected in clean_refusal(e.value, p)


# --------------------------------------------------------------------------- statistics through the command
NAN_WORDS = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)


def _no_constants(name):
    raise AssertionError(f"the JSON holds {name}")


def evaluate(capsys, design_dir, *argv):
    """(code, summary or '', json doc or None, stderr) of 'd2nn evaluate' on ``argv``, run twice
    (summary, then --json); asserts the promises about both: exit 0 or a one-line error 2."""
    code = main(["evaluate", str(design_dir), *map(str, argv)])
    out = capsys.readouterr()
    if code != 0:
        assert code == 2 and out.out == "" and out.err.count("\n") == 1, out
        assert out.err.startswith("d2nn evaluate: error: ")
        return code, "", None, out.err
    assert not NAN_WORDS.search(out.out), out.out
    summary = out.out
    assert main(["evaluate", str(design_dir), *map(str, argv), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=_no_constants)
    return code, summary, doc, ""


@st.composite
def extreme_measurements(draw):
    """A valid measurement with extreme values: all-zero rows, subnormal or 1e100 readings, negatives,
    constant rows; optionally a background and a gains file (within the documented limits)."""
    n = draw(st.integers(2, 6))
    rows = []
    for _ in range(n):
        shape = draw(st.sampled_from(["random", "zero", "subnormal", "huge", "constant", "negative"]))
        if shape == "zero":
            rows.append([0.0] * K)
        elif shape == "subnormal":
            rows.append([draw(st.sampled_from([5e-324, 1e-320, 0.0, 3e-310])) for _ in range(K)])
        elif shape == "huge":
            rows.append([draw(st.sampled_from([MAX_MAGNITUDE, -MAX_MAGNITUDE, 9e99, 0.0])) for _ in range(K)])
        elif shape == "constant":
            rows.append([draw(st.sampled_from([1.0, 1e-300, 1e99]))] * K)
        elif shape == "negative":
            rows.append([-abs(v) for v in draw(st.lists(readings, min_size=K, max_size=K))])
        else:
            rows.append(draw(st.lists(extreme_readings, min_size=K, max_size=K)))
    labels = draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n))
    inputs = draw(st.none() | st.just(list(range(n))))
    total = draw(st.none() | st.lists(st.sampled_from([0.0, 1.0, 5e-324, 1e100, -1.0]), min_size=n, max_size=n))
    bg = draw(st.none() | st.lists(st.sampled_from([0.0, 1e-3, -MAX_MAGNITUDE, 5e-324]), min_size=K, max_size=K))
    gains = draw(st.none() | st.lists(st.sampled_from([1.0, MIN_GAIN, 1e-30, MAX_MAGNITUDE, 0.5]), min_size=K,
                                      max_size=K))
    return np.array(rows), labels, inputs, total, bg, gains


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(case=extreme_measurements())
def test_statistics_of_extreme_measurements_never_print_nan(capsys, design_dir, work, case):
    powers, labels, inputs, total, bg, gains = case
    path = put(work, detector_csv_bytes(powers, labels, inputs=inputs, total=total))
    argv = ["--measured", path]
    if bg is not None:
        argv += ["--background", put(work, detector_csv_bytes(np.array([bg]), sample_ids=["dark"]))]
    if gains is not None:
        argv += ["--gains", put(work, json.dumps({"gains": gains}), ".json")]
    code, summary, doc, err = evaluate(capsys, design_dir, *argv)
    calibrated = (powers - (np.array(bg) if bg is not None else 0.0)) / (np.array(gains) if gains is not None else 1.0)
    if code == 2:  # the only refusal possible here: a calibrated power beyond the limit, named with its values
        assert "calibrated power" in err and str(path) in err and "det" in err, err
        assert not np.all(np.abs(calibrated) <= MAX_CALIBRATED)
        return
    assert np.all(np.abs(calibrated) <= MAX_CALIBRATED * (1 + 1e-12))
    dead = np.abs(calibrated).sum(axis=1) == 0
    if dead.any():
        assert "have no detected power" in summary and "have no detected power" in " ".join(doc["warnings"])
    if total is not None and any(t == 0 for t in total):
        assert "not computable" in summary
    if doc["simulation"] is not None and any(v is None for v in doc["simulation"]["correlation_per_sample"]):
        assert "correlation" in summary and "not computable" in summary
    assert doc["n"] == len(labels) and len(doc["margin"]["per_sample"]) == len(labels)


@pytest.mark.parametrize("case", ["all zero", "subnormal", "integer", "uint8 saturated", "1e100"])
def test_accepted_extreme_scans_give_statistics_in_words(capsys, design_dir, work, case):
    """Scans the documentation accepts (integer types, subnormal values, all zeros, 1e100) are
    evaluated without NaN; what cannot be computed is said in words."""
    rng = np.random.default_rng(3)
    base = rng.random((3, 64, 64))
    inten = {"all zero": np.zeros((3, 64, 64)), "subnormal": base * 1e-321, "integer": (base * 1000).astype(np.int64),
             "uint8 saturated": np.full((3, 64, 64), 255, np.uint8), "1e100": base * MAX_MAGNITUDE}[case]
    data = scan_npz_bytes(inten, 0.4e-3, labels=[0, 1, 2])
    if inten.dtype != np.float64:  # keep the integer dtype in the file
        data = npz_bytes({"intensity": inten, "labels": np.arange(3), "pitch_m": np.float64(0.4e-3)})
    path = put(work, data, ".npz")
    code, summary, doc, err = evaluate(capsys, design_dir, "--measured", path)
    assert code == 0, err
    assert doc["n"] == 3 and doc["registration"]["method"] == "none"
    if case == "all zero":
        assert "3 sample(s) have no detected power" in summary
        assert "on detectors not computable" in summary and doc["power_on_detectors"]["mean"] is None
    else:
        assert "no detected power" not in summary and doc["power_on_detectors"]["mean"] > 0


def test_subnormal_scans_register_like_normal_ones(capsys, design_dir, work):
    """Registration against the simulation is scale-free: a scan scaled to subnormal values (1e-310)
    registers to the same offset as the scan itself (squares of such values underflow to 0)."""
    code = main(["measure-sim", str(design_dir), "--dataset", "digits", "--samples", "3", "--format", "scan",
                 "--out", str(work / "reg.npz"), "--misalign", "detector=0.2mm,0mm", "--json"])
    assert code == 0
    capsys.readouterr()
    with np.load(work / "reg.npz") as z:
        arrays = dict(z)
    arrays["intensity"] = arrays["intensity"] / arrays["intensity"].max() * 1e-310
    small = put(work, npz_bytes(arrays), ".npz")
    assert main(["evaluate", str(design_dir), "--measured", str(work / "reg.npz"), "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    _, summary, doc, _ = evaluate(capsys, design_dir, "--measured", small)
    assert doc["registration"]["offset_m"] == pytest.approx(ref["registration"]["offset_m"], abs=1e-6)
    assert doc["predictions"] == ref["predictions"] and doc["simulation"]["correlation"]["min"] > 0.99
    assert "matches poorly" not in summary


def test_command_refuses_each_reported_failure_in_one_line(capsys, design_dir, work):
    head = "sample,label,input," + ",".join(f"det{k}" for k in range(K))
    good = head + "\n" + "\n".join(f"s{i},{i},{i}," + ",".join(["0.5"] * K) for i in range(3)) + "\n"
    ok = put(work, good)
    big_gain = put(work, "[" + ", ".join(["1"] * (K - 1) + ["1" + "0" * 400]) + "]", ".json")
    tiny_gain = put(work, "[" + ", ".join(["1"] * (K - 1) + ["1e-300"]) + "]", ".json")
    trunc = put(work, npz_bytes({"intensity": np.ones((2, 64, 64)), "labels": np.arange(2),
                                 "pitch_m": np.float64(4e-4)})[:-40], ".npz")
    for argv, named, expected in [
        (["--measured", put(work, good.replace("s1,1,1,", "s1,1,99999999999999999999,"))], None, "is too large"),
        (["--measured", put(work, good.replace("s1,1,1,0.5", "s1,1,1," + "5" * 200_000))], None, "200,000 characters"),
        (["--measured", put(work, good.replace("s1,1,1,0.5", "s1,1,1,-1e300"))], None, "is beyond"),
        (["--measured", put(work, "\n".join(ln + (",det02" if i == 0 else ",0.1")
                                            for i, ln in enumerate(good.splitlines())) + "\n")], None,
         "columns 'det2' and 'det02' both name detector 2"),
        (["--measured", ok, "--gains", big_gain], big_gain, "integer of 401 digits"),
        (["--measured", ok, "--gains", tiny_gain], tiny_gain, "gain of det9 = 1e-300 is outside"),
        (["--measured", put(work, gzip.compress(good.encode()))], None, "gzip"),
        (["--measured", trunc], None, "not a readable .npz archive"),
    ]:
        code, _, _, err = evaluate(capsys, design_dir, *argv)
        assert code == 2 and expected in err and str(named or argv[1]) in err, err


def test_a_measurement_without_signal_gets_a_report_in_words(capsys, design_dir, work):
    """All-zero readings with known inputs: nothing to fit or register. The report is written, says
    so in words, holds no NaN, and writes no gains.json (which would be a calibration of nothing)."""
    csv_path = put(work, detector_csv_bytes(np.zeros((4, K)), [0, 1, 2, 3], inputs=[0, 1, 2, 3], total=[0, 1, 0, 2]))
    scan_path = put(work, scan_npz_bytes(np.zeros((3, 64, 64)), 0.4e-3, [0, 1, 2], inputs=[0, 1, 2]), ".npz")
    for path in (csv_path, scan_path):
        rep = work / f"rep-{path.stem}"
        code, summary, doc, err = evaluate(capsys, design_dir, "--measured", path)
        assert code == 0, err
        assert "gains could not be fitted against the simulation: the measured powers are zero" in summary
        assert "correlation not computable" in summary and "have no detected power" in summary
        assert doc["calibration"]["fitted_gains"]["scale"] is None
        if path == csv_path:
            continue  # one report (of the scans: every figure) is enough
        assert main(["evaluate", str(design_dir), "--measured", str(path), "--report", str(rep)]) == 0
        capsys.readouterr()
        assert not (rep / "gains.json").exists() and (rep / "report.md").is_file()
        json.loads((rep / "evaluation.json").read_text(), parse_constant=_no_constants)
        assert not NAN_WORDS.search((rep / "report.md").read_text())
        assert "no gains.json written" in (rep / "report.md").read_text()
        assert doc["registration"]["method"] == "none" and "every scan is constant" in summary
