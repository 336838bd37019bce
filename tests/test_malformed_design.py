"""Malformed design folders and export folders: a clean one-line D2NNError naming the file, or
a documented acceptance -- never another exception, and nothing written.

Property-based (hypothesis): random valid designs round-trip through save/load; random damage
to a valid design folder (design.json and phases.npz: byte flips, truncation, insertions,
retyped/removed/extreme/unknown fields, gzip, other encodings, deep nesting, huge integers,
non-finite numbers, huge declared arrays, wrong names/shapes/dtypes, non-finite values) and to
a valid export folder (manifest.json fields and bytes; STL truncation, byte flips, non-finite
vertices, reversed triangles, ASCII damage) is either refused with a D2NNError whose one-line
message names the damaged file, or accepted -- and then what was read is right:

* an accepted design.json gives a design within diffractive.design.LIMITS whose simulation
  of one image gives finite detector powers;
* an accepted phases.npz (a float dtype other than float32 is accepted) holds the same layers;
* an accepted export re-reads the same printed heights (metres) as the undamaged one.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import math
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffractive import _read
from diffractive.design import LIMITS, Design, Detector, DesignError, load_design, save_design
from diffractive.errors import D2NNError, FabricationError
from diffractive.materials import Fabrication, Material
from diffractive.simulate import simulate
from fabrication.export import export_design
from fabrication.mesh import read_stl_triangles, write_stl
from fabrication.roundtrip import printed_from_stl


def _settings(n):
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ------------------------------------------------------------------ fixtures: one valid design and export
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("malformed")


@pytest.fixture(scope="module")
def designs(small_design, work):
    """{"phase": folder, "complex": folder}: two valid small designs (16 x 16, 2 layers, 10 classes)."""
    d = small_design(layer_shape=(16, 16))
    amp = np.random.default_rng(1).uniform(0, 1, d.phases.shape).astype(np.float32)
    return {"phase": save_design(d, work / "phase"),
            "complex": save_design(d.with_phases(d.phases, amp), work / "complex")}


@pytest.fixture(scope="module")
def export(designs, work):
    """(design, export folder, the heights in metres it re-reads to)."""
    design = load_design(designs["phase"])
    out = export_design(design, work / "export", verify=False).out_dir
    _, heights, _ = printed_from_stl(design, out)
    return design, out, heights


def _copy(folder: Path, work: Path) -> Path:
    dst = Path(tempfile.mkdtemp(dir=work)) / folder.name
    shutil.copytree(folder, dst)
    return dst


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _outcome(read, folder: Path, names, label=""):
    """``read()``: its result, or the D2NNError it raised (one line, naming one of ``names``);
    any other exception fails the test, and so does any change to ``folder``. Inside a hypothesis
    test the outcome is an event (``--hypothesis-show-statistics`` counts them)."""
    before = _snapshot(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = read()
    except D2NNError as e:
        msg = str(e)
        assert msg.isprintable(), msg   # one line: no newline, no control character
        assert any(str(n) in msg for n in names), f"the message names none of {names}: {msg}"
        result = e
    assert _snapshot(folder) == before, "reading wrote or changed a file"
    if currently_in_test_context():
        event(f"{label}{'refused' if isinstance(result, D2NNError) else 'accepted'}")
    return result


_IMAGE = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)


def _check_usable(design: Design):
    """An accepted design: values within LIMITS, and one image simulates to finite detector powers."""
    g = design.geometry
    for key, v in (("wavelength_m", g.wavelength_m), ("pitch_m", g.pitch_m), ("material.n", design.material.n),
                   ("fabrication.z_step_m", design.fabrication.z_step_m)):
        lo, hi = LIMITS[key]
        assert (lo is None or v >= lo) and v <= hi, (key, v)
    assert max(g.distances_m) <= LIMITS["distances_m"][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = simulate(design, _IMAGE)
    assert np.all(np.isfinite(r.powers)), r.powers


# ------------------------------------------------------------------ random valid designs round-trip
_BIG = 10 ** 30 - 1   # the largest integer of MAX_INT_DIGITS = 30 digits
_RECORD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-_BIG, _BIG) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3), max_leaves=8)

@st.composite
def valid_designs(draw):
    ny, nx = draw(st.integers(2, 20)), draw(st.integers(2, 20))
    n_layers = draw(st.integers(1, 3))
    pitch = draw(st.floats(1e-5, 1e-3))
    ext_y, ext_x = ny * pitch, nx * pitch
    k = draw(st.sampled_from([1, 2]))
    from diffractive.stack import StackGeometry
    geometry = StackGeometry((ny, nx), pitch, draw(st.floats(1e-5, 3e-3)),
                             tuple(draw(st.lists(st.floats(1e-4, 1.0), min_size=n_layers + 1, max_size=n_layers + 1))),
                             (k * ny, k * nx))
    from diffractive.encoding import InputSpec
    inp = InputSpec(draw(st.sampled_from(["amplitude", "phase"])), (ext_y / 2, ext_x / 2), draw(st.floats(0.1, 10)))
    size = (ext_x / 8, ext_y / 8)
    dets = (Detector(0, (-ext_x / 4, 0.0), size), Detector(1, (ext_x / 4, 0.0), size))
    if draw(st.booleans()):
        dets += (Detector(0, (0.0, ext_y / 4), size, -1),)
    shape = (n_layers, ny, nx)
    finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
    phases = draw(hnp.arrays(np.float32, shape, elements=finite32))
    amps = draw(st.none() | hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    record = st.dictionaries(st.text(max_size=5), _RECORD_VALUES, max_size=3)
    return Design(geometry=geometry, input=inp, detectors=dets,
                  material=Material(draw(st.text(min_size=1, max_size=8).filter(str.strip)), draw(st.floats(1.01, 4)),
                                    draw(st.floats(0, 1))),
                  fabrication=Fabrication(draw(st.floats(0, 5e-3)), draw(st.floats(1e-6, 1e-3))),
                  phases=phases, amplitudes=amps, provenance=draw(record), metrics=draw(record))


@_settings(25)
@given(design=valid_designs())
def test_random_valid_designs_round_trip(work, design):
    """save -> load gives the same design (design.json, float32 layers) for any valid design."""
    folder = save_design(design, Path(tempfile.mkdtemp(dir=work)) / "d")
    back = load_design(folder)
    assert back.to_json() == design.to_json()
    np.testing.assert_array_equal(back.phases, design.phases)
    if design.amplitudes is None:
        assert back.amplitudes is None
    else:
        np.testing.assert_array_equal(back.amplitudes, design.amplitudes)


@_settings(20)
@given(bad=st.sampled_from([10 ** 30, -(10 ** 30), 10 ** 200, math.nan, math.inf, -math.inf, b"x", {1, 2},
                            np.float32(1), np.int64(3), Path("p")]),
       depth=st.integers(0, 70), where=st.sampled_from(["provenance", "metrics"]))
def test_records_that_design_json_cannot_hold_are_refused_at_construction(small_design, work, bad, depth, where):
    """What save_design would write and load_design refuse never gets that far: nothing written."""
    value = bad
    for _ in range(depth):
        value = [value]
    folder = Path(tempfile.mkdtemp(dir=work)) / "d"
    with pytest.raises(DesignError, match=f"field '{where}.x"):
        save_design(small_design(layer_shape=(16, 16), n_classes=2, **{where: {"x": value}}) if where == "provenance"
                    else small_design(layer_shape=(16, 16), n_classes=2).with_record(metrics={"x": value}), folder)
    assert not folder.exists()
    deep = {"x": 1}
    for _ in range(62):   # 62 + the record + design.json's object = 64 levels: accepted, and read back
        deep = {"x": deep}
    d = small_design(layer_shape=(16, 16), n_classes=2).with_record(metrics=deep)
    assert load_design(save_design(d, folder)).to_json() == d.to_json()


# ------------------------------------------------------------------ design.json damage
def _paths(doc, prefix=()):
    """Every path (tuple of keys/indices) into a JSON document, the root excluded."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out += _paths(v, prefix + (k,))
    return out


def _at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


WEIRD = st.one_of(
    st.none(), st.booleans(), st.integers(-10**29, 10**29),
    st.sampled_from([0, -1, 1, 2, 3, 16, 10**29, 0.0, -0.0, 5e-324, 1e-300, 1e-12, 1.7976931348623157e308,
                     -1.7976931348623157e308, 1e30, 0.5, 100.0, 100.5, 1.0, 1e-9, 1e-10, 11.0]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.lists(st.integers(-3, 40), max_size=4), st.lists(st.floats(-1e3, 1e3), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def field_damage(draw, doc):
    """(doc with one field replaced / removed / an unknown key added, what was done)."""
    doc = copy.deepcopy(doc)
    path = draw(st.sampled_from(_paths(doc)))
    op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "unknown"]))
    parent = _at(doc, path[:-1])
    if op == "replace":
        parent[path[-1]] = draw(WEIRD)
    elif op == "delete":
        del parent[path[-1]]
    else:
        target = _at(doc, path)
        assume(isinstance(target, dict))
        target[draw(st.text(min_size=1, max_size=6) | st.sampled_from(["a\nb", "\r", "x\ty\u2028"]))] = draw(WEIRD)
    return doc, (op, path)


@_settings(80)
@given(data=st.data(), kind=st.sampled_from(["phase", "complex"]))
def test_damaged_design_fields(designs, work, data, kind):
    folder = _copy(designs[kind], work)
    jpath = folder / "design.json"
    doc, what = data.draw(field_damage(json.loads(jpath.read_text())))
    jpath.write_text(json.dumps(doc))
    result = _outcome(lambda: load_design(folder), folder, ["design.json", "phases.npz"])
    if isinstance(result, Design):   # accepted: e.g. another valid value, or free-form provenance/metrics
        _check_usable(result)
    else:
        assert isinstance(result, DesignError)


def _damage_bytes(draw, data: bytes) -> bytes:
    op = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete"]))
    i = draw(st.integers(0, len(data) - 1))
    if op == "flip":
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    if op == "truncate":
        return data[:i]
    if op == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    return data[:i] + data[i + draw(st.integers(1, 16)):]


@_settings(50)
@given(data=st.data(), kind=st.sampled_from(["phase", "complex"]))
def test_damaged_design_json_bytes(designs, work, data, kind):
    folder = _copy(designs[kind], work)
    jpath = folder / "design.json"
    jpath.write_bytes(_damage_bytes(data.draw, jpath.read_bytes()))
    result = _outcome(lambda: load_design(folder), folder, ["design.json", "phases.npz"])
    if isinstance(result, Design):   # e.g. a digit changed into another valid value, a space into a tab
        _check_usable(result)


_NUMERIC = st.sampled_from([("wavelength_m",), ("pitch_m",), ("distances_m", 1), ("n_layers",), ("layer_shape", 0),
                            ("input", "size_yx_m", 0), ("detectors", 1, "class_index"), ("material", "n"),
                            ("fabrication", "z_step_m"), ("n_classes",), ("metrics", "x"), ("provenance", "seed")])


@st.composite
def bad_encodings(draw, text: str):
    """design.json bytes that must be refused: (bytes, what the message must say)."""
    kind = draw(st.sampled_from(["gzip", "utf-16", "utf-32", "latin-1", "deep", "bigint", "nonfinite", "zip"]))
    if kind == "gzip":
        return gzip.compress(text.encode()), "gzip"
    if kind in ("utf-16", "utf-32"):
        return text.encode(kind), "not UTF-8"
    if kind == "latin-1":
        return text.replace('"VeroBlack', '"V\u00e9roBlack').encode("latin-1"), "not UTF-8"
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("design.json", text)
        return buf.getvalue(), "zip archive"
    doc = json.loads(text)
    path = draw(_NUMERIC)
    doc.setdefault("metrics", {})
    _at(doc, path[:-1])[path[-1]] = "__X__"
    if kind == "deep":
        depth = draw(st.integers(64, 6000))
        token = "[" * depth + "]" * depth
        must = "deeper than 64"
    elif kind == "bigint":
        digits = draw(st.integers(31, 6000))
        token = draw(st.sampled_from(["", "-"])) + "9" * digits
        must = f"field '{_dotted(path)}': holds an integer of {digits} digits"
    else:
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-2e400"]))
        must = f"field '{_dotted(path)}'"
    return json.dumps(doc).replace('"__X__"', token).encode(), must


def _dotted(path):
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return out


@_settings(40)
@given(data=st.data())
def test_design_json_bad_encodings_are_refused(designs, work, data):
    folder = _copy(designs["phase"], work)
    jpath = folder / "design.json"
    blob, must = data.draw(bad_encodings(jpath.read_text()))
    jpath.write_bytes(blob)
    result = _outcome(lambda: load_design(folder), folder, ["design.json"])
    assert isinstance(result, DesignError), "accepted"
    assert must in str(result), str(result)


# ------------------------------------------------------------------ phases.npz damage
@_settings(50)
@given(data=st.data(), kind=st.sampled_from(["phase", "complex"]))
def test_damaged_phases_npz_bytes(designs, work, data, kind):
    folder = _copy(designs[kind], work)
    npath = folder / "phases.npz"
    original = load_design(folder)
    npath.write_bytes(_damage_bytes(data.draw, npath.read_bytes()))
    result = _outcome(lambda: load_design(folder), folder, ["phases.npz"])
    if isinstance(result, Design):   # a byte the archive does not check (a timestamp, the zip comment)
        np.testing.assert_array_equal(result.phases, original.phases)


_BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, "datetime64[s]", "timedelta64[ms]",
               "U3", "S2", [("a", "<f4"), ("b", "<i2")]]


def _header_only(shape, descr="<f4"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 256


@st.composite
def npz_contents(draw, phases, amplitudes):
    """(the bytes of a replacement phases.npz, True if it must be accepted)."""
    kind = draw(st.sampled_from(["rename", "extra", "drop_amp", "add_amp", "shape", "huge", "dtype", "float",
                                 "nonfinite", "amp_range", "zero_d", "npy", "empty", "random", "pickle",
                                 "text_member"]))
    arrays = {"phases": phases} if amplitudes is None else {"phases": phases, "amplitudes": amplitudes}
    members = None   # name -> raw member bytes, for what savez cannot write
    ok = False
    target = draw(st.sampled_from(sorted(arrays)))
    if kind == "rename":
        arrays[draw(st.sampled_from(["phase", "Phases", "phases.npy", "x"]))] = arrays.pop("phases")
    elif kind == "extra":
        arrays[draw(st.sampled_from(["heights", "amplitude", "meta"]))] = np.zeros(3)
    elif kind == "drop_amp":
        assume(amplitudes is not None)
        del arrays["amplitudes"]
    elif kind == "add_amp":
        assume(amplitudes is None)
        arrays["amplitudes"] = np.ones_like(phases)
    elif kind == "shape":
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, max_side=20))
        assume(shape != phases.shape)
        arrays[target] = np.zeros(shape, dtype=np.float32)
    elif kind == "huge":
        huge = draw(st.sampled_from([(2, 100000, 100000), (2, 16, 10**12), (10**6, 16, 16), (2**62,)]))
        members = {f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}
        members[f"{target}.npy"] = _header_only(huge)
    elif kind == "dtype":
        dt = np.dtype(draw(st.sampled_from(_BAD_DTYPES)))
        arrays[target] = np.zeros(phases.shape, dtype=dt)
    elif kind == "float":   # documented acceptance: any float dtype
        arrays[target] = arrays[target].astype(draw(st.sampled_from([np.float16, np.float64])))
        ok = True
    elif kind == "nonfinite":
        a = arrays[target].copy()
        a[tuple(draw(st.integers(0, n - 1)) for n in a.shape)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        arrays[target] = a
    elif kind == "amp_range":
        assume(amplitudes is not None)
        a = amplitudes.copy()
        a[0, 0, 0] = draw(st.sampled_from([-0.5, 1.5, -1e-3, 1e30]))
        arrays["amplitudes"] = a
    elif kind == "zero_d":
        arrays[target] = np.float32(1.0)
    elif kind == "npy":
        return _npy_bytes(phases), False
    elif kind == "empty":
        return b"", False
    elif kind == "random":
        return draw(st.binary(max_size=200)), False
    elif kind == "pickle":
        members = {f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}
        members[f"{target}.npy"] = _npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "text_member":
        members = {f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}
        members[f"{target}.npy"] = b"just some text, not an npy header"
    if members is None:
        buf = io.BytesIO()
        (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)
        return buf.getvalue(), ok
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return buf.getvalue(), ok


def _npy_bytes(a, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=allow_pickle)
    return buf.getvalue()


@_settings(70)
@given(data=st.data(), kind=st.sampled_from(["phase", "complex"]))
def test_replaced_phases_npz(designs, work, data, kind):
    folder = _copy(designs[kind], work)
    original = load_design(folder)
    blob, ok = data.draw(npz_contents(original.phases, original.amplitudes))
    (folder / "phases.npz").write_bytes(blob)
    result = _outcome(lambda: load_design(folder), folder, ["phases.npz"])
    if ok:
        assert isinstance(result, Design), str(result)
        np.testing.assert_allclose(result.phases, original.phases, rtol=1e-3)
        _check_usable(result)
    else:
        assert isinstance(result, DesignError), "accepted"


# ------------------------------------------------------------------ not a readable regular file
@contextlib.contextmanager
def _unreadable(path: Path, how: str, monkeypatch):
    """``path`` made unreadable: permission denied (through the access check every reader makes, so
    it works as root too), a folder, a FIFO (would hang a plain open) or a dangling link."""
    if how == "denied":
        real = os.access
        monkeypatch.setattr(_read.os, "access", lambda p, m, **kw: False if os.fspath(p) == os.fspath(path)
                            else real(p, m))
    else:
        path.unlink()
        {"folder": path.mkdir, "fifo": lambda: os.mkfifo(path),
         "dangling": lambda: path.symlink_to(path.parent / "nowhere")}[how]()
    try:
        yield
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("how,words", [("denied", "permission denied"), ("folder", "is a folder"),
                                       ("fifo", "not a regular file"), ("dangling", "dangling symbolic link")])
@pytest.mark.parametrize("name", ["design.json", "phases.npz", "manifest.json", "layer_01.stl", "tolerance.json"])
def test_unreadable_inputs(designs, export, work, monkeypatch, name, how, words):
    design, out, _ = export
    if name in ("design.json", "phases.npz"):
        folder = _copy(designs["phase"], work)
        read = lambda: load_design(folder)  # noqa: E731
    elif name == "tolerance.json":
        from diffractive.tolerance import read_summary
        folder = Path(tempfile.mkdtemp(dir=work))
        (folder / name).write_text("{}")
        read = lambda: read_summary(folder / name)  # noqa: E731
    else:
        folder = _copy(out, work)
        read = lambda: printed_from_stl(design, folder)  # noqa: E731
    with _unreadable(folder / name, how, monkeypatch):
        with pytest.raises(D2NNError) as e:
            read()
    msg = str(e.value)
    assert f"{folder / name}: " in msg and words in msg and "\n" not in msg, msg


# ------------------------------------------------------------------ export folders
def _expect_same_heights(result, heights):
    if isinstance(result, tuple):   # accepted: it must read what was printed
        np.testing.assert_allclose(result[1], heights, rtol=1e-9, atol=1e-12)
    else:
        assert isinstance(result, FabricationError), type(result)


_MANIFEST_FIELDS = [("z_step_mm",), ("design", "layer_shape"), ("design", "layer_shape", 1), ("design", "n_layers"),
                    ("design", "pitch_mm"), ("plate", "active_mm"), ("plate", "active_mm", 0),
                    ("plate", "active_mm", 3),
                    ("plate",), ("layers",), ("layers", 0), ("layers", 1, "file"), ("layers", 0, "layer"),
                    ("layers", 1, "sha256"), ("material",), ("material", "n"), ("material", "kappa"), ("schema",),
                    ("units",), ("design",)]


@_settings(70)
@given(data=st.data())
def test_damaged_manifest_fields(export, work, data):
    design, out, heights = export
    folder = _copy(out, work)
    mpath = folder / "manifest.json"
    doc = json.loads(mpath.read_text())
    if data.draw(st.booleans()):
        path = data.draw(st.sampled_from(_MANIFEST_FIELDS))
        parent = _at(doc, path[:-1])
        if data.draw(st.integers(0, 4)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(WEIRD | st.sampled_from(["holder.stl", "layer_02.stl", "../phase/design.json",
                                                                  "/etc/passwd", "layer_01.stl"]))
    else:
        doc, _ = data.draw(field_damage(doc))
    mpath.write_text(json.dumps(doc))
    names = ["manifest.json"] + [p.name for p in folder.iterdir()] + ["layer_"]
    _expect_same_heights(_outcome(lambda: printed_from_stl(design, folder), folder, names), heights)


@_settings(40)
@given(data=st.data())
def test_damaged_manifest_bytes(export, work, data):
    design, out, heights = export
    folder = _copy(out, work)
    mpath = folder / "manifest.json"
    text = mpath.read_text()
    if data.draw(st.booleans()):
        blob = _damage_bytes(data.draw, text.encode())
    else:
        blob = data.draw(st.sampled_from([gzip.compress(text.encode()), text.encode("utf-16"),
                                          text.replace('"mm"', '"\u00b5m"', 1).encode("latin-1"),
                                          text.replace('"units"', '"deep": ' + "[" * 3000 + "]" * 3000 + ', "units"'),
                                          text.replace('"schema"', '"n": ' + "7" * 4400 + ', "schema"'),
                                          text.replace('"z_step_mm": ', '"z_step_mm": NaN, "x": ', 1)]))
        blob = blob if isinstance(blob, bytes) else blob.encode()
    mpath.write_bytes(blob)
    names = ["manifest.json"] + [p.name for p in folder.iterdir()]
    _expect_same_heights(_outcome(lambda: printed_from_stl(design, folder), folder, names), heights)


def _ascii_stl(tri) -> str:
    lines = ["solid d2nn"]
    for t in np.asarray(tri, dtype=np.float64):
        n = np.cross(t[1] - t[0], t[2] - t[0])
        lines += [f"  facet normal {n[0]:.9g} {n[1]:.9g} {n[2]:.9g}", "    outer loop"]
        lines += [f"      vertex {v[0]:.9g} {v[1]:.9g} {v[2]:.9g}" for v in t]
        lines += ["    endloop", "  endfacet"]
    return "\n".join(lines + ["endsolid d2nn", ""])


def _write_triangles(path, tri):
    tri = np.asarray(tri, dtype=np.float32)
    with np.errstate(all="ignore"):   # normals of triangles with a 3e38 mm vertex overflow float32
        write_stl(path, tri.reshape(-1, 3), np.arange(3 * len(tri)).reshape(-1, 3), header="edited")


@_settings(90)
@given(data=st.data())
def test_damaged_stl(export, work, data):
    design, out, heights = export
    folder = _copy(out, work)
    path = folder / data.draw(st.sampled_from(["layer_01.stl", "layer_02.stl"]))
    blob = path.read_bytes()
    tri = read_stl_triangles(path)
    kind = data.draw(st.sampled_from(["bytes", "bytes", "bytes", "truncate", "nonfinite", "far", "reverse_all",
                                      "reverse_some", "ascii", "ascii_damage", "ascii_truncate", "empty", "gzip",
                                      "append", "holder", "no_triangles"]))
    must_refuse = kind not in ("bytes", "ascii", "far", "append")
    if kind == "bytes":
        path.write_bytes(_damage_bytes(data.draw, blob))
    elif kind == "truncate":
        path.write_bytes(blob[:data.draw(st.integers(0, len(blob) - 1))])
    elif kind in ("nonfinite", "far"):
        t = tri.copy()
        idx = (data.draw(st.integers(0, len(t) - 1)), data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)))
        t[idx] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]) if kind == "nonfinite"
                           else st.sampled_from([1e30, -1e30, 3e38, -7.0, 1e6]))
        _write_triangles(path, t)
    elif kind == "reverse_all":
        _write_triangles(path, tri[:, ::-1])
    elif kind == "reverse_some":
        t = tri.copy()
        some = data.draw(st.lists(st.integers(0, len(t) - 1), min_size=1, max_size=20, unique=True))
        t[some] = t[some][:, ::-1]
        _write_triangles(path, t)
    elif kind in ("ascii", "ascii_damage", "ascii_truncate"):
        text = _ascii_stl(tri)   # documented acceptance: ASCII STL
        if kind == "ascii_damage":
            lines = text.split("\n")
            i = data.draw(st.integers(1, len(lines) - 3))
            w = lines[i].split()
            w[data.draw(st.integers(0, len(w) - 1))] = data.draw(st.sampled_from(["x", "1.2.3", "--1", "", "vertex",
                                                                                    "1e", "nan(", "0x1p3"]))
            lines[i] = " ".join(w)
            text = "\n".join(lines)
            must_refuse = False   # e.g. "vertex" replaced by itself; then the heights must be right
        elif kind == "ascii_truncate":
            text = text[:data.draw(st.integers(0, len(text) - 20))]
        path.write_text(text)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "gzip":
        path.write_bytes(gzip.compress(blob))
    elif kind == "append":   # trailing bytes: no longer the declared size; refused as damaged
        path.write_bytes(blob + data.draw(st.binary(min_size=1, max_size=60)))
        must_refuse = True
    elif kind == "holder":
        shutil.copy(folder / "holder.stl", path)
    elif kind == "no_triangles":
        path.write_bytes(b"d2nn".ljust(80, b" ") + np.uint32(0).tobytes())
    result = _outcome(lambda: printed_from_stl(design, folder), folder, [path.name], label=f"{kind}: ")
    _expect_same_heights(result, heights)
    if must_refuse:
        assert isinstance(result, FabricationError), f"{kind}: accepted"


@pytest.mark.parametrize("far", [1e30, -1e30, 3e38, 1e19])
def test_far_top_vertices_do_not_wrap_around(export, work, far):
    """A vertex of top faces moved far along x (past int64 in pixels): refused naming the file, or
    the same heights -- never an index wrapped around (the pixel range is clipped before the cast)."""
    design, out, heights = export
    folder = _copy(out, work)
    path = folder / "layer_01.stl"
    tri = read_stl_triangles(path)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    tops = np.flatnonzero(n[:, 2] > 0)
    t = tri.copy()
    t[tops[::7], 0, 0] = far
    _write_triangles(path, t)
    _expect_same_heights(_outcome(lambda: printed_from_stl(design, folder), folder, [path.name]), heights)


_PHYSICAL = {("wavelength_m",): "wavelength_m", ("pitch_m",): "pitch_m", ("distances_m", 0): "distances_m[0]",
             ("distances_m", 2): "distances_m[2]", ("material", "n"): "material.n",
             ("material", "kappa"): "material.kappa", ("fabrication", "base_m"): "fabrication.base_m",
             ("fabrication", "z_step_m"): "fabrication.z_step_m", ("layer_shape", 1): "layer_shape",
             ("window_shape", 0): "window_shape", ("input", "phase_scale"): "input.phase_scale",
             ("detectors", 0, "size_xy_m", 0): "detectors[0].size_xy_m",
             ("material", "wavelength_m"): "material.wavelength_m"}


@_settings(60)
@given(path=st.sampled_from(sorted(_PHYSICAL)), value=st.one_of(
    st.sampled_from([1.7976931348623157e308, 1e300, 1e30, 1e6, 101.0, 100.0, 11.0, 10.0, 1.0, 1.5, 0.02, 5e-324, 1e-300,
                     1e-10, 1e-9, 2e-8, 16384, 16385, 10**6, 10**29]),
    st.floats(min_value=5e-324, allow_infinity=False), st.integers(1, 10**29)))
def test_extreme_physical_values(designs, work, path, value):
    """Finite, positive, absurd: refused naming the field and the bound (diffractive.design.LIMITS),
    or, when within the bounds, a design whose simulation is finite."""
    folder = _copy(designs["phase"], work)
    jpath = folder / "design.json"
    doc = json.loads(jpath.read_text())
    _at(doc, path[:-1])[path[-1]] = value
    jpath.write_text(json.dumps(doc))
    result = _outcome(lambda: load_design(folder), folder, ["design.json", "phases.npz"])
    if isinstance(result, Design):
        _check_usable(result)
    else:
        assert "field '" in str(result) or "phases.npz" in str(result), str(result)
    key = "distances_m" if path[0] == "distances_m" else _PHYSICAL[path]
    if key in LIMITS:
        lo, hi = LIMITS[key]
        if value > hi or (lo is not None and value < lo):
            assert isinstance(result, DesignError) and f"field '{_PHYSICAL[path]}' is " in str(result), "accepted"


# ------------------------------------------------------------------ the command line: one line, nothing written
@pytest.mark.parametrize("damage", ["json_gzip", "npz_truncated", "distance_max", "stl_reversed", "manifest_zstep"])
def test_command_line_reports_one_line_and_writes_nothing(designs, export, work, capsys, damage):
    from d2nn.cli import main

    design_folder = _copy(designs["phase"], work)
    _, out, _ = export
    stl = _copy(out, work)
    if damage == "json_gzip":
        p = design_folder / "design.json"
        p.write_bytes(gzip.compress(p.read_bytes()))
    elif damage == "npz_truncated":
        p = design_folder / "phases.npz"
        p.write_bytes(p.read_bytes()[:200])
    elif damage == "distance_max":
        p = design_folder / "design.json"
        doc = json.loads(p.read_text())
        doc["distances_m"][1] = 1.7976931348623157e308
        p.write_text(json.dumps(doc))
    elif damage == "stl_reversed":
        p = stl / "layer_02.stl"
        _write_triangles(p, read_stl_triangles(p)[:, ::-1])
    else:
        p = stl / "manifest.json"
        doc = json.loads(p.read_text())
        doc["z_step_mm"] = False
        p.write_text(json.dumps(doc))
    before = _snapshot(design_folder), _snapshot(stl)
    target = work / f"cli-{damage}"
    args = ["export", str(design_folder), "--out", str(target), "--quiet"] if damage in ("json_gzip", "npz_truncated",
                                                                                          "distance_max") else \
        ["simulate", str(design_folder), "--dataset", "digits", "--limit", "4", "--from-stl", str(stl)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # an edited STL no longer has the manifest's SHA-256
        code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and p.name in err and err.startswith(f"d2nn {args[0]}: error: "), err
    assert not target.exists() and not list(work.glob(f".cli-{damage}*"))
    assert (_snapshot(design_folder), _snapshot(stl)) == before


def test_two_layers_naming_one_mesh_are_refused(export, work):
    """Found by test_damaged_manifest_fields: layer 2's entry naming layer_01.stl read layer 1's
    mesh as layer 2 and was accepted."""
    design, out, _ = export
    folder = _copy(out, work)
    doc = json.loads((folder / "manifest.json").read_text())
    doc["layers"][1]["file"] = doc["layers"][0]["file"]
    (folder / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(D2NNError, match=r"layers\[1\]\.file.*names 'layer_01\.stl', the file of layers\[0\] too"):
        printed_from_stl(design, folder)
