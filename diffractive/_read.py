"""Reading untrusted files: one layer every reader of a design, config, budget, manifest,
measurement or checkpoint goes through.

Every file a command reads is untrusted. The functions here turn what can go wrong
*below* the format -- a path that is a folder, a FIFO (which would hang ``open``) or
unreadable; a file far too large; gzip or zip bytes where text was expected; bytes that
are not UTF-8; JSON nested thousands deep or holding a 5000-digit integer; an ``.npz``
that is truncated, not a zip, fails its CRC, or whose header declares a 75 GiB array --
into one :class:`InputFileError` naming the file (and the member or line where one
applies). Each format's reader then checks its own fields and names them.

Limits are generous for real data and stated here, so that a refusal can say which
bound was crossed:

* :data:`MAX_TEXT_BYTES` -- 64 MiB for a text file (JSON, TOML, CSV);
* :data:`MAX_JSON_DEPTH` -- 64 levels of nested JSON lists/objects;
* :data:`MAX_INT_DIGITS` -- 30 digits for a JSON or TOML integer (2**64 has 20);
* :data:`MAX_ARRAY_BYTES` -- 4 GiB for one array of an ``.npz`` (a 10-layer stack of
  4000 x 4000 float64 phases is 1.3 GB).
"""
from __future__ import annotations

import json
import math
import os
import stat
import struct
import tomllib
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import D2NNError

MAX_TEXT_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 30
MAX_ARRAY_BYTES = 4 * 2**30

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


class InputFileError(D2NNError):
    """A file a command reads is missing, unreadable or malformed.

    The message is one line: ``FILE: WHERE: PROBLEM`` (``WHERE`` -- a field, member, line
    or column -- only where one applies). ``path``, ``where`` and ``problem`` are kept.
    """

    def __init__(self, path, problem: str, where: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.where = where
        super().__init__(f"{self.path}: {where + ': ' if where else ''}{problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem, self.where))

    def __str__(self) -> str:
        return self.args[0]


def check_regular_file(path) -> Path:
    """``path`` as a Path if it names a readable regular file (symlinks followed); else InputFileError.

    Checked with ``stat`` before anything opens the file: a FIFO or a device would block
    or never end, a folder fails with a platform-dependent error.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(path, "no such file" if not os.path.islink(path) else "is a dangling symbolic link") from None
    except PermissionError:
        raise InputFileError(path, "permission denied") from None
    except OSError as e:
        raise InputFileError(path, f"cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(path, "is not a regular file (a FIFO, socket or device)")
    if not os.access(path, os.R_OK):
        raise InputFileError(path, "permission denied")
    return path


def read_bytes(path, *, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The contents of the regular file ``path``, refused if larger than ``max_bytes``."""
    path = check_regular_file(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise InputFileError(path, f"is {size:,} bytes, more than the {max_bytes:,} this reader accepts")
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except PermissionError:
        raise InputFileError(path, "permission denied") from None
    except OSError as e:
        raise InputFileError(path, f"cannot be read ({e.strerror or e})") from None


def decode_text(path, data: bytes) -> str:
    """``data`` (the bytes of ``path``) as UTF-8 text (a BOM is allowed), or InputFileError saying what it is."""
    if data.startswith(_GZIP_MAGIC):
        raise InputFileError(path, "is gzip-compressed; decompress it first (gunzip)")
    if data.startswith(_ZIP_MAGICS):
        raise InputFileError(path, "is a zip archive, not a text file")
    if data.startswith(_NPY_MAGIC):
        raise InputFileError(path, "is a NumPy .npy file, not a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputFileError(path, f"is not UTF-8 text (byte {e.start:,}, line {line}: "
                                   f"{data[e.start:e.start + 1]!r})") from None


def read_text(path, *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path`` (see :func:`decode_text`), refused above ``max_bytes``."""
    return decode_text(path, read_bytes(path, max_bytes=max_bytes))


class _Refused:
    """A JSON value :func:`parse_json` refuses, left in place until its field is found."""

    __slots__ = ("problem",)

    def __init__(self, problem: str):
        self.problem = problem


def _parse_int(refused: list):
    def parse(s: str):
        if len(s.lstrip("-")) > MAX_INT_DIGITS:
            refused.append(_Refused(f"holds an integer of {len(s.lstrip('-'))} digits "
                                    f"(at most {MAX_INT_DIGITS} are accepted)"))
            return refused[-1]
        return int(s)
    return parse


def _parse_float(refused: list):
    def parse(s: str):
        x = float(s)
        if not math.isfinite(x):
            refused.append(_Refused(f"holds the number {s[:40]}, which overflows a float (at most about 1.8e308)"))
            return refused[-1]
        return x
    return parse


def _refuse_constant(refused: list):
    def refuse(name: str):
        refused.append(_Refused(f"holds {name}, which is not JSON (write a finite number)"))
        return refused[-1]
    return refuse


def printable(text: str) -> str:
    """``text`` with every non-printable character (a newline in a JSON key) escaped, so that a
    message quoting it stays one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                                                   for c in text)


def _field_of(doc, target) -> str | None:
    """The path (``detectors[3].size_xy_m[0]``) of the object ``target`` in ``doc``, in document order."""
    todo = [(doc, "")]
    while todo:
        node, where = todo.pop()
        if node is target:
            return printable(where) or None
        if isinstance(node, dict):
            todo.extend(reversed([(v, f"{where}.{k}" if where and k else f"{where}[{json.dumps(k)}]" if where else k)
                                  for k, v in node.items()]))
        elif isinstance(node, list):
            todo.extend(reversed([(v, f"{where}[{i}]") for i, v in enumerate(node)]))
    return None


def _depth(obj) -> int:
    """Nesting depth of lists/dicts in ``obj``, without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            todo.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_json(path, text: str):
    """The JSON document ``text`` (read from ``path``), with the limits of this module.

    Refused: invalid JSON (the line and column are named), nesting deeper than
    :data:`MAX_JSON_DEPTH`, integers longer than :data:`MAX_INT_DIGITS`, and the
    non-standard constants ``NaN``/``Infinity`` and numbers that overflow a float
    (``1e999``), which Python's parser would accept as NaN or infinity; these last three
    name the field that holds them (``field 'detectors[3].size_xy_m[0]'``).
    """
    refused: list[_Refused] = []
    try:
        doc = json.loads(text, parse_int=_parse_int(refused), parse_float=_parse_float(refused),
                         parse_constant=_refuse_constant(refused))
    except json.JSONDecodeError as e:
        raise InputFileError(path, f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise InputFileError(path, f"nests lists/objects deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # e.g. a float literal Python cannot hold
        if isinstance(e, InputFileError):
            raise
        raise InputFileError(path, f"is not valid JSON ({e})") from None
    if _depth(doc) > MAX_JSON_DEPTH:
        raise InputFileError(path, f"nests lists/objects deeper than {MAX_JSON_DEPTH} levels")
    if refused:
        where = _field_of(doc, refused[0])
        raise InputFileError(path, refused[0].problem, where=None if where is None else f"field '{where}'")
    return doc


def read_json(path, *, max_bytes: int = MAX_TEXT_BYTES):
    """The JSON document in ``path`` (UTF-8), checked as :func:`parse_json` says."""
    return parse_json(path, read_text(path, max_bytes=max_bytes))


def parse_toml(path, text: str) -> dict:
    """The TOML document ``text`` (read from ``path``); integers longer than :data:`MAX_INT_DIGITS` refused."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputFileError(path, f"is not valid TOML ({e})") from None
    except RecursionError:
        raise InputFileError(path, f"nests tables/arrays deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # int too long for Python's conversion limit
        raise InputFileError(path, f"is not valid TOML ({e})") from None
    if _depth(doc) > MAX_JSON_DEPTH:
        raise InputFileError(path, f"nests tables/arrays deeper than {MAX_JSON_DEPTH} levels")
    _check_toml_ints(path, doc)
    return doc


def _check_toml_ints(path, doc) -> None:
    todo = [doc]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 10 ** MAX_INT_DIGITS:
            raise InputFileError(path, f"holds an integer of more than {MAX_INT_DIGITS} digits")


def read_toml(path, *, max_bytes: int = MAX_TEXT_BYTES) -> dict:
    """The TOML document in ``path`` (UTF-8), checked as :func:`parse_toml` says."""
    return parse_toml(path, read_text(path, max_bytes=max_bytes))


# -- .npz archives ----------------------------------------------------------------------

def _member_header(path, zf: zipfile.ZipFile, member: str):
    """(shape, dtype) declared by the .npy header of ``member``, read without loading the data."""
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            where = member[:-4] if member.endswith(".npy") else member
            raise InputFileError(path, f"is not a readable .npz archive (unsupported .npy version {version})",
                                 where=where)
    return shape, dtype


def read_npz(path, *, kinds: str = "fiucb", max_array_bytes: int = MAX_ARRAY_BYTES,
             max_bytes: int | None = None, shapes: dict | None = None) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` archive ``path``, as a dict name -> ndarray.

    Each member's ``.npy`` header is read first: an array whose declared size exceeds
    ``max_array_bytes``, or whose dtype kind is not in ``kinds`` (NumPy kind letters:
    ``f`` float, ``c`` complex, ``i``/``u`` integer, ``b`` bool; object arrays never),
    is refused before anything is allocated. ``shapes`` (name -> shape), when given, is
    what the archive may hold: a member not named there, or whose declared shape is not
    the one given, is refused from its header too (which members are *required* is the
    caller's to say). A member name that appears twice is refused. A file that is not a
    zip archive (a bare ``.npy`` is named as such), is truncated, or fails a CRC check,
    is refused naming the file and member. Pickled objects are never loaded.
    """
    path = check_regular_file(path)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InputFileError(path, f"is {size:,} bytes, more than the {max_bytes:,} this reader accepts")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise InputFileError(path, "is empty (expected a .npz archive)")
    if head.startswith(_NPY_MAGIC):
        raise InputFileError(path, "is a bare .npy array; expected a .npz archive (numpy.savez)")
    if not head.startswith(_ZIP_MAGICS):
        raise InputFileError(path, "is not a .npz archive (not a zip file)")
    out: dict[str, np.ndarray] = {}
    member = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = info.filename
                name = member[:-4] if member.endswith(".npy") else member
                if name in out:
                    raise InputFileError(path, "appears twice in the archive", where=name)
                if shapes is not None and name not in shapes:
                    raise InputFileError(path, "is not an array this file may hold (expected "
                                               f"{' and/or '.join(map(repr, shapes))})", where=name)
                shape, dtype = _member_header(path, zf, member)
                if shapes is not None and tuple(shape) != tuple(shapes[name]):
                    raise InputFileError(path, f"has shape {tuple(shape)}, expected {tuple(shapes[name])}", where=name)
                if dtype.hasobject or dtype.kind not in kinds:
                    raise InputFileError(path, f"has dtype {dtype} (expected {_kind_words(kinds)})", where=name)
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > max_array_bytes:
                    raise InputFileError(path, f"declares a {shape} {dtype} array of {nbytes / 2**30:.1f} GiB, "
                                               f"more than the {max_array_bytes / 2**30:.0f} GiB accepted", where=name)
                with zf.open(member) as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
                if arr.shape != tuple(shape):
                    raise InputFileError(path, "is truncated", where=name)
                out[name] = arr
    except InputFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, zlib.error,
            struct.error, OverflowError, NotImplementedError, RuntimeError, SyntaxError, TypeError) as e:
        where = member[:-4] if member and member.endswith(".npy") else member
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputFileError(path, f"is not a readable .npz archive ({why})", where=where) from None
    return out


def _kind_words(kinds: str) -> str:
    words = {"f": "float", "c": "complex", "i": "integer", "u": "unsigned integer", "b": "bool"}
    named = [words[k] for k in "fciub" if k in kinds]
    return ", ".join(named[:-1]) + (" or " if len(named) > 1 else "") + named[-1]


def finite_array(path, name: str, arr, *, kinds: str = "fiu") -> np.ndarray:
    """``arr`` if it is a numeric array (kind in ``kinds``) whose values are all finite; else InputFileError."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in kinds:
        raise InputFileError(path, f"has dtype {arr.dtype} (expected {_kind_words(kinds)})", where=name)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InputFileError(path, f"holds {bad} non-finite value(s) (NaN or infinity)", where=name)
    return arr
