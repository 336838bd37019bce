"""diffractive._read, the one reading layer: each limit and sniffing rule, and random valid
JSON / npz documents read back unchanged.

Every refusal is an InputFileError (a D2NNError) whose message is one line naming the file.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffractive import _read
from diffractive._read import (MAX_INT_DIGITS, MAX_JSON_DEPTH, InputFileError, check_regular_file, decode_text,
                               finite_array, parse_json, parse_toml, printable, read_bytes, read_json, read_npz,
                               read_text)
from diffractive.errors import D2NNError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _refused(fn, path, *args, match=None, **kw) -> InputFileError:
    """Call ``fn``; it must raise an InputFileError, one line, naming ``path`` (and matching ``match``)."""
    with pytest.raises(InputFileError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert isinstance(e.value, D2NNError)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    if match is not None:
        assert match in msg, msg
    return e.value


# ------------------------------------------------------------------ regular files
def test_check_regular_file(tmp_path, monkeypatch):
    ok = tmp_path / "ok.json"
    ok.write_text("{}")
    assert check_regular_file(ok) == ok
    _refused(check_regular_file, tmp_path / "none", tmp_path / "none", match="no such file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    _refused(check_regular_file, tmp_path / "dangling", tmp_path / "dangling", match="dangling symbolic link")
    _refused(check_regular_file, tmp_path, tmp_path, match="is a folder")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _refused(check_regular_file, fifo, fifo, match="not a regular file")  # would hang open()
    _refused(read_text, fifo, fifo, match="not a regular file")
    # unreadable: root reads mode-000 files, so deny through the access check the reader uses
    real = os.access
    monkeypatch.setattr(_read.os, "access",
                        lambda p, mode, **kw: False if os.fspath(p) == os.fspath(ok) else real(p, mode))
    for fn in (check_regular_file, read_bytes, read_text, read_json, read_npz):
        _refused(fn, ok, ok, match="permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 files")
def test_mode_000_is_refused(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    p.chmod(0)
    _refused(read_json, p, p, match="permission denied")


def test_size_limit(tmp_path):
    p = tmp_path / "big.json"
    p.write_text("[" + "0," * 50 + "0]")
    assert read_json(p) == [0] * 51
    _refused(read_bytes, p, p, max_bytes=100, match="more than the 100")
    _refused(read_json, p, p, max_bytes=100, match="more than the 100")


# ------------------------------------------------------------------ text sniffing
@pytest.mark.parametrize("data,match", [
    (gzip.compress(b'{"a": 1}'), "gzip-compressed"),
    (b"PK\x03\x04rest", "zip archive"),
    (b"\x93NUMPY\x01\x00", ".npy file"),
    (b'{"a": "caf\xe9"}\n', "not UTF-8 text (byte 10, line 1"),
    (b'{\n"a":\n "\xff"}', "line 3"),
    ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
])
def test_decode_text_names_what_it_is(tmp_path, data, match):
    p = tmp_path / "t.json"
    p.write_bytes(data)
    _refused(read_json, p, p, match=match)
    _refused(decode_text, p, p, data, match=match)


def test_bom_is_accepted(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')
    assert read_json(p) == {"a": 1}


# ------------------------------------------------------------------ JSON limits
def test_invalid_json_names_line_and_column():
    e = _refused(parse_json, "f.json", "f.json", '{\n  "a": 1,\n  "b": }')
    assert "line 3, column 8" in str(e)
    _refused(parse_json, "f.json", "f.json", "", match="not valid JSON")


def test_depth_limit_exact_and_deep():
    at = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert _depth_of(parse_json("f", at)) == MAX_JSON_DEPTH
    over = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    _refused(parse_json, "f", "f", over, match=f"deeper than {MAX_JSON_DEPTH}")
    objs = '{"a": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)
    _refused(parse_json, "f", "f", objs, match="deeper than")
    # far past Python's recursion limit: no RecursionError escapes
    _refused(parse_json, "f", "f", "[" * 5000 + "]" * 5000, match="deeper than")
    _refused(parse_json, "f", "f", '{"x": ' + "[" * 100000, match="f:")


def _depth_of(obj):
    d = 0
    while isinstance(obj, list):
        d += 1
        obj = obj[0] if obj else None
    return d


def test_integer_digit_limit_names_the_field():
    big = int("9" * MAX_INT_DIGITS)
    assert parse_json("f", f'{{"n": {big}, "m": -{big}}}') == {"n": big, "m": -big}
    e = _refused(parse_json, "f", "f", '{"a": [1, {"n": ' + "9" * (MAX_INT_DIGITS + 1) + "}]}")
    assert e.where == "field 'a[1].n'" and f"{MAX_INT_DIGITS + 1} digits" in str(e)
    e = _refused(parse_json, "f", "f", "9" * 5000)          # Python's own parser would raise ValueError
    assert e.where is None and "5000 digits" in str(e)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_numbers_are_refused_naming_the_field(token):
    e = _refused(parse_json, "f", "f", f'{{"ok": 1.5, "detectors": [{{"size": [1, {token}]}}]}}')
    assert e.where == "field 'detectors[0].size[1]'", str(e)
    assert parse_json("f", '{"x": 1e308, "y": -2.5e-320}') == {"x": 1e308, "y": -2.5e-320}


def test_field_names_in_messages_stay_one_line():
    e = _refused(parse_json, "f", "f", '{"a\\nb": {"": [NaN]}}')
    assert str(e).isprintable() and e.where == "field 'a\\nb[\"\"][0]'", str(e)
    assert printable("plain é") == "plain é" and printable("a\nb\x00") == "a\\nb\\x00"


def test_toml_limits():
    assert parse_toml("c.toml", "a = 1\n[b]\nc = 'x'\n") == {"a": 1, "b": {"c": "x"}}
    _refused(parse_toml, "c.toml", "c.toml", "a = " + "9" * 31, match="more than 30 digits")
    _refused(parse_toml, "c.toml", "c.toml", "a = = 1", match="not valid TOML")
    _refused(parse_toml, "c.toml", "c.toml", "a = " + "[" * 70 + "]" * 70, match="deeper than")


# ------------------------------------------------------------------ npz
def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_npz_reads_back(tmp_path):
    p = _npz(tmp_path / "a.npz", phases=np.arange(6, dtype=np.float32).reshape(2, 3), n=np.int64(3))
    out = read_npz(p)
    assert set(out) == {"phases", "n"} and out["phases"].dtype == np.float32
    np.testing.assert_array_equal(out["phases"], np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("make,match,where", [
    (lambda p, b: p.write_bytes(b""), "is empty", None),
    (lambda p, b: p.write_bytes(b"hello, not a zip"), "not a zip file", None),
    (lambda p, b: np.save(open(p, "wb"), np.zeros(3)), "bare .npy", None),
    (lambda p, b: p.write_bytes(gzip.compress(b)), "not a zip file", None),
    (lambda p, b: p.write_bytes(b[: len(b) // 2]), "not a readable .npz", None),
    (lambda p, b: p.write_bytes(b[:-30]), "not a readable .npz", None),
])
def test_npz_broken_files(tmp_path, make, match, where):
    p = tmp_path / "x.npz"
    make(p, _npz_bytes(phases=np.linspace(0, 1, 400).reshape(20, 20)))
    e = _refused(read_npz, p, p, match=match)
    assert e.where == where


def test_npz_crc_and_deflate_damage(tmp_path):
    p = tmp_path / "s.npz"
    _npz(p, phases=np.linspace(0, 1, 400))               # stored: a flipped data byte fails the CRC
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x55
    p.write_bytes(bytes(b))
    _refused(read_npz, p, p, match="CRC")
    raw = bytearray(_npz_bytes(phases=np.random.default_rng(0).normal(size=400)))
    for k in range(60, len(raw) - 100, 97):              # deflated: zlib errors or CRC, never a zlib.error
        b = bytearray(raw)
        b[k] ^= 0xFF
        p.write_bytes(bytes(b))
        try:
            out = read_npz(p)
        except InputFileError as e:
            assert str(e).startswith(str(p))
        else:
            np.testing.assert_array_equal(out["phases"], np.load(io.BytesIO(bytes(raw)))["phases"])


def _npz_with_header(path, header: dict, payload=b"\0" * 64, name="phases.npy"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, buf.getvalue() + payload)
    return path


def test_npz_huge_declared_array_is_refused_from_its_header(tmp_path):
    p = _npz_with_header(tmp_path / "h.npz", {"descr": "<f4", "fortran_order": False, "shape": (2, 100000, 100000)})
    e = _refused(read_npz, p, p, match="74.5 GiB")
    assert e.where == "phases"
    e = _refused(read_npz, p, p, shapes={"phases": (2, 4, 4)},
                 match="has shape (2, 100000, 100000), expected (2, 4, 4)")
    q = _npz_with_header(tmp_path / "t.npz", {"descr": "<f8", "fortran_order": False, "shape": (100, 100)})
    _refused(read_npz, q, q, match="not a readable .npz")  # declares 80 kB, holds 64 bytes


@pytest.mark.parametrize("array,kinds,word", [
    (np.zeros(3, dtype="datetime64[s]"), "fiucb", "datetime64"),
    (np.array([1, "a"], dtype=object), "fiucb", "object"),
    (np.array(["ab"]), "fiucb", "<U2"),
    (np.zeros(3, dtype=np.complex64), "f", "complex64"),
    (np.zeros(3, dtype=np.int32), "f", "int32"),
])
def test_npz_dtype_refused_from_header(tmp_path, array, kinds, word):
    p = tmp_path / "d.npz"
    np.savez(p, a=array)
    e = _refused(read_npz, p, p, kinds=kinds, match=word)
    assert e.where == "a"


def test_npz_names(tmp_path):
    p = _npz(tmp_path / "n.npz", phases=np.zeros((2, 2)), extra=np.zeros(1))
    e = _refused(read_npz, p, p, shapes={"phases": (2, 2)}, match="is not an array this file may hold")
    assert e.where == "extra"
    assert set(read_npz(p, shapes={"phases": (2, 2), "extra": (1,)})) == {"phases", "extra"}
    dup = tmp_path / "dup.npz"
    with zipfile.ZipFile(dup, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        for _ in range(2):
            with z.open("phases.npy", "w") as f:
                np.lib.format.write_array(f, np.zeros(2))
    _refused(read_npz, dup, dup, match="appears twice")


def test_finite_array(tmp_path):
    a = np.ones((2, 2), dtype=np.float32)
    assert finite_array("p.npz", "phases", a) is not None
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[1, 1] = bad
        e = _refused(finite_array, "p.npz", "p.npz", "phases", b, match="1 non-finite value")
        assert e.where == "phases"
    _refused(finite_array, "p.npz", "p.npz", "phases", a.astype(complex), kinds="f", match="complex128")


# ------------------------------------------------------------------ random valid documents round-trip
_json_scalars = (st.none() | st.booleans() | st.integers(-(10 ** MAX_INT_DIGITS - 1), 10 ** MAX_INT_DIGITS - 1)
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
_json = st.recursive(_json_scalars, lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=25)


@SETTINGS
@given(doc=_json, indent=st.sampled_from([None, 1]), bom=st.booleans())
def test_random_json_round_trips(tmp_path, doc, indent, bom):
    p = tmp_path / "r.json"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + json.dumps(doc, indent=indent, ensure_ascii=False).encode())
    back = read_json(p)
    assert back == doc
    assert json.dumps(back, sort_keys=True) == json.dumps(doc, sort_keys=True)


_dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int8, np.int64, np.uint16, np.bool_, np.complex64])
_arrays = _dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)))


@SETTINGS
@given(arrays=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True), _arrays, min_size=1, max_size=3),
       compressed=st.booleans())
def test_random_npz_round_trips(tmp_path, arrays, compressed):
    p = tmp_path / "r.npz"
    (np.savez_compressed if compressed else np.savez)(p, **arrays)
    back = read_npz(p)
    assert set(back) == set(arrays)
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape
        np.testing.assert_array_equal(back[k], a)
    assert set(read_npz(p, shapes={k: a.shape for k, a in arrays.items()})) == set(arrays)
