"""Reading measurement files: valid files round-trip, every bad input is refused with a message
naming the file and the row, column or field."""
import io
import json

import numpy as np
import pytest

from diffractive.measured.io import (MeasuredDataError, centred_origin, detector_csv_bytes, read_background,
                                     read_gains, read_measured, scan_npz_bytes)
from diffractive.measured.registration import check_scan_geometry

K, C = 10, 10


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def good_csv(n=3, k=K):
    head = "sample,label,input," + ",".join(f"det{j}" for j in range(k))
    rows = [f"s{i},{i % C},{i}," + ",".join(f"{0.1 * (j + 1) + i:.3f}" for j in range(k)) for i in range(n)]
    return "\n".join([head] + rows) + "\n"


def test_csv_round_trip_keeps_full_precision_and_order(tmp_path):
    rng = np.random.default_rng(0)
    P = rng.random((5, K)) * 1e-3
    P[2, 3] = -2.5e-6  # small negative readings are measurements: kept as they are
    data = detector_csv_bytes(P, labels=[3, 1, 4, 1, 5], sample_ids=list("abcde"), inputs=[10, 11, 12, 13, 14],
                              comments=["a comment line"])
    m = read_measured(write(tmp_path, "m.csv", data), K, C)
    np.testing.assert_array_equal(m.powers, P)
    assert m.labels.tolist() == [3, 1, 4, 1, 5] and m.sample_ids == list("abcde")
    assert m.inputs.tolist() == [10, 11, 12, 13, 14] and m.total is None and m.kind == "detectors"


def test_csv_other_columns_ignored_semicolons_and_column_order(tmp_path):
    text = "# lab run 7\nlabel;det1;note;sample;det0;total\n1;0.5;ok;x1;0.25;2\n0;0.1;;x2;0.75;3\n"
    m = read_measured(write(tmp_path, "m.csv", text), 2, 2)
    np.testing.assert_array_equal(m.powers, [[0.25, 0.5], [0.75, 0.1]])
    assert m.labels.tolist() == [1, 0] and m.total.tolist() == [2, 3] and m.inputs is None


BAD_CSV = [
    ("empty", "", "empty file"),
    ("blank", "\n\n  \n", "empty file"),
    ("header only", "sample,label," + ",".join(f"det{j}" for j in range(K)) + "\n", "no data rows"),
    ("missing det9", good_csv().replace(",det9", "").replace(",1.000\n", "\n").replace(",2.000\n", "\n")
     .replace(",3.000\n", "\n"), "missing detector column(s) det9"),
    ("extra det10", good_csv(k=K + 1), "extra detector column(s) det10"),
    ("no label column", good_csv().replace("sample,label,", "sample,lbl,"), "no 'label' column"),
    ("no sample column", good_csv().replace("sample,label,", "id,label,"), "no 'sample' column"),
    ("NaN", good_csv().replace("s1,1,1,1.100", "s1,1,1,nan"), "line 3 (sample 's1'): column 'det0' = 'nan' is not a finite"),
    ("inf", good_csv().replace("s2,2,2,2.100", "s2,2,2,-inf"), "line 4 (sample 's2'): column 'det0' = '-inf' is not a finite"),
    ("text", good_csv().replace("s1,1,1,1.100,1.200", "s1,1,1,1.100,n/a"), "column 'det1' = 'n/a' is not a number"),
    ("empty cell", good_csv().replace("s1,1,1,1.100,1.200", "s1,1,1,1.100,"), "column 'det1' is empty"),
    ("label too big", good_csv().replace("s1,1,1,", "s1,10,1,"), "column 'label' = 10 is out of range"),
    ("negative label", good_csv().replace("s1,1,1,", "s1,-1,1,"), "column 'label' = -1 is out of range"),
    ("fractional label", good_csv().replace("s1,1,1,", "s1,1.5,1,"), "column 'label' = '1.5' is not an integer"),
    ("negative input", good_csv().replace("s1,1,1,", "s1,1,-4,"), "column 'input' = -4 must be a non-negative"),
    ("short row", good_csv().replace(",1.100,", ","), "line 3 has 12 fields but the header has 13"),
    ("duplicate column", good_csv().replace("det3", "det2"), "column 'det2' appears twice"),
    ("binary", b"\xff\xfe\x00\x01garbage", "is not UTF-8 text (byte 0, line 1"),
]


@pytest.mark.parametrize("name,text,msg", BAD_CSV, ids=[b[0] for b in BAD_CSV])
def test_bad_csv_is_refused_with_a_message_naming_the_problem(tmp_path, name, text, msg):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(MeasuredDataError) as e:
        read_measured(p, K, C)
    assert str(p) in str(e.value) and msg in str(e.value)
    assert "\n" not in str(e.value)


def test_design_with_a_different_number_of_detectors_is_refused(tmp_path, small_design):
    p = write(tmp_path, "m.csv", good_csv())
    diff = small_design(detectors="differential")  # 20 detectors for 10 classes
    with pytest.raises(MeasuredDataError, match=r"missing detector column\(s\) det10, .*the design has 20 detectors"):
        read_measured(p, len(diff.detectors), diff.n_classes)
    four = small_design(n_classes=4)
    with pytest.raises(MeasuredDataError, match=r"extra detector column\(s\) det4, .*the design has 4 detectors"):
        read_measured(p, len(four.detectors), four.n_classes)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MeasuredDataError, match="no such file"):
        read_measured(tmp_path / "nope.csv", K, C)
    with pytest.raises(MeasuredDataError, match="is a folder"):
        read_measured(tmp_path, K, C)


# --------------------------------------------------------------------------- scans
def npz(tmp_path, name="s.npz", **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write(tmp_path, name, buf.getvalue())


def scan_arrays(n=2, shape=(64, 64)):
    return dict(intensity=np.random.default_rng(0).random((n,) + shape), labels=np.arange(n), pitch_m=0.4e-3,
                origin_m=np.array(centred_origin(shape, 0.4e-3)), inputs=np.arange(n) + 5)


def test_scan_round_trip_and_default_origin(tmp_path):
    a = scan_arrays()
    p = write(tmp_path, "s.npz", scan_npz_bytes(a["intensity"], a["pitch_m"], a["labels"], a["origin_m"], a["inputs"]))
    s = read_measured(p, K, C)
    np.testing.assert_array_equal(s.intensity, a["intensity"])
    assert s.kind == "scan" and s.pitch_m == 0.4e-3 and s.inputs.tolist() == [5, 6] and s.origin_given
    np.testing.assert_allclose(s.x_m(), (np.arange(64) - 31.5) * 0.4e-3)
    del a["origin_m"]
    s2 = read_measured(npz(tmp_path, "s2.npz", **a), K, C)
    assert not s2.origin_given and s2.origin_m == pytest.approx(centred_origin((64, 64), 0.4e-3))


def _bad_scans():
    a = scan_arrays
    cases = []

    def case(name, msg, **changes):
        arr = a()
        for k, v in changes.items():
            if v is None:
                del arr[k]
            else:
                arr[k] = v
        cases.append((name, arr, msg))

    nan = a()["intensity"].copy()
    nan[1, 3, 4] = np.nan
    inf = a()["intensity"].copy()
    inf[0, 0, 7] = np.inf
    case("no intensity", "has no field 'intensity'", intensity=None)
    case("2-d intensity", "expected (N, H, W)", intensity=np.ones((64, 64)))
    case("NaN", "field 'intensity' has NaN at [1, 3, 4] (scan 1)", intensity=nan)
    case("inf", "field 'intensity' has +inf at [0, 0, 7]", intensity=inf)
    case("complex", "is complex", intensity=np.ones((2, 64, 64), complex))
    case("text", "must hold real numbers", intensity=np.full((2, 64, 64), "a"))
    case("no labels", "has no field 'labels'", labels=None)
    case("label out of range", "field 'labels'[1] = 12 is out of range", labels=np.array([0, 12]))
    case("labels wrong length", "field 'labels' has shape (3,), expected (2,)", labels=np.arange(3))
    case("no pitch", "has no field 'pitch_m'", pitch_m=None)
    case("zero pitch", "field 'pitch_m' = 0.0 must be a positive", pitch_m=0.0)
    case("nan pitch", "field 'pitch_m' = nan must be a positive", pitch_m=np.nan)
    case("pitch array", "field 'pitch_m' must be a single number", pitch_m=np.ones(2))
    case("origin shape", "field 'origin_m' has shape (3,)", origin_m=np.zeros(3))
    case("inputs negative", "field 'inputs'[0] = -1 is out of range", inputs=np.array([-1, 2]))
    case("inputs float", "field 'inputs'[1] = 2.5 is not an integer", inputs=np.array([1, 2.5]))
    return cases


BAD_SCANS = _bad_scans()


@pytest.mark.parametrize("name,arrays,msg", BAD_SCANS, ids=[b[0] for b in BAD_SCANS])
def test_bad_scan_is_refused_with_a_message_naming_the_field(tmp_path, name, arrays, msg):
    p = npz(tmp_path, **arrays)
    with pytest.raises(MeasuredDataError) as e:
        read_measured(p, K, C)
    assert str(p) in str(e.value) and msg in str(e.value)


def test_not_an_npz(tmp_path):
    p = write(tmp_path, "s.npz", b"PK\x03\x04 this is no zip archive")
    with pytest.raises(MeasuredDataError, match="is not a readable .npz archive"):
        read_measured(p, K, C)


@pytest.mark.parametrize("shape,pitch,msg", [
    ((64, 64), 0.4, "coarser than the smallest detector"),          # pitch in mm by mistake
    ((64, 64), 0.4e-6, "does not hold the design's detectors"),     # pitch in um by mistake
    ((20, 20), 0.4e-3, "does not hold the design's detectors"),     # 8 mm scan, detectors span 12.8 mm
    ((64, 20), 0.4e-3, "x -4 ... 4 mm"),                           # too narrow
])
def test_scan_shape_disagreeing_with_pitch_is_refused(tmp_path, shape, pitch, msg, small_design):
    d = small_design()
    p = npz(tmp_path, intensity=np.ones((1,) + shape), labels=[0], pitch_m=pitch)
    s = read_measured(p, K, C)
    with pytest.raises(MeasuredDataError) as e:
        check_scan_geometry(s, d.detectors)
    assert str(p) in str(e.value) and msg in str(e.value) and "pitch_m" in str(e.value)


def test_scan_off_centre_origin_must_still_cover_detectors(tmp_path, small_design):
    d = small_design()
    shape = (64, 64)
    o = np.array(centred_origin(shape, 0.4e-3)) + [8e-3, 0]
    s = read_measured(npz(tmp_path, intensity=np.ones((1,) + shape), labels=[0], pitch_m=0.4e-3, origin_m=o), K, C)
    with pytest.raises(MeasuredDataError, match="at its origin_m"):
        check_scan_geometry(s, d.detectors)


# --------------------------------------------------------------------------- background and gains
def test_background_csv_is_averaged_and_needs_no_labels(tmp_path):
    m = read_measured(write(tmp_path, "m.csv", good_csv()), K, C)
    bg = write(tmp_path, "dark.csv", "sample," + ",".join(f"det{j}" for j in range(K)) + "\n"
               + "d0," + ",".join(["0.1"] * K) + "\n" + "d1," + ",".join(["-0.1"] * (K - 1) + ["0.3"]) + "\n")
    level = read_background(bg, m)
    np.testing.assert_allclose(level, [0.0] * (K - 1) + [0.2], atol=1e-15)


def test_background_must_match_format_and_shape(tmp_path):
    m = read_measured(write(tmp_path, "m.csv", good_csv()), K, C)
    s = read_measured(npz(tmp_path, **scan_arrays()), K, C)
    with pytest.raises(MeasuredDataError, match="same format as the measurement"):
        read_background(npz(tmp_path, "bg.npz", intensity=np.zeros((64, 64))), m)
    with pytest.raises(MeasuredDataError, match="background frames are 32 x 64 pixels but the scans"):
        read_background(npz(tmp_path, "bg2.npz", intensity=np.zeros((3, 32, 64))), s)
    with pytest.raises(MeasuredDataError, match="'pitch_m' = 0.0005 m differs"):
        read_background(npz(tmp_path, "bg3.npz", intensity=np.zeros((64, 64)), pitch_m=0.5e-3), s)
    np.testing.assert_array_equal(read_background(npz(tmp_path, "bg4.npz", intensity=np.ones((2, 64, 64))), s), 1)
    with pytest.raises(MeasuredDataError, match="missing detector column"):
        read_background(write(tmp_path, "bg.csv", "sample,det0\na,1\n"), m)


def test_gains_files(tmp_path):
    g = list(np.linspace(0.9, 1.1, K))
    np.testing.assert_allclose(read_gains(write(tmp_path, "g.json", json.dumps({"gains": g})), K), g)
    np.testing.assert_allclose(read_gains(write(tmp_path, "g2.json", json.dumps(g)), K), g)
    csv_text = ",".join(f"det{j}" for j in range(K)) + "\n" + ",".join(map(str, g)) + "\n"
    np.testing.assert_allclose(read_gains(write(tmp_path, "g.csv", csv_text), K), g)
    with pytest.raises(MeasuredDataError, match="has 10 values but the design has 20 detectors"):
        read_gains(tmp_path / "g.json", 20)
    with pytest.raises(MeasuredDataError, match=r"gain of det2 = -1.0 must be a positive"):
        read_gains(write(tmp_path, "g3.json", json.dumps({"gains": g[:2] + [-1.0] + g[3:]})), K)
    with pytest.raises(MeasuredDataError, match="not valid JSON"):
        read_gains(write(tmp_path, "g4.json", "{gains: 1"), K)
    with pytest.raises(MeasuredDataError, match="has no field 'gains'"):
        read_gains(write(tmp_path, "g5.json", "{}"), K)
