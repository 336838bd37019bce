"""Atomic file writes: a temporary file in the same folder, fsync, then a rename.

A reader never sees a half-written file, and a failed write leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import OutputExists


def atomic_write(path, write) -> Path:
    """Call ``write(f)`` on a temporary binary file and rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes files private; these are ordinary files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes, *, overwrite=True) -> Path:
    """Write ``data`` to ``path`` atomically; refuse an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(path, "exists", {"overwrite": "replace it"})
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder")
    return atomic_write(path, lambda f: f.write(data))


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def refuse_overwriting_inputs(out, inputs, *, option: str = "out") -> None:
    """Raise if writing to ``out`` could delete or replace one of ``inputs``.

    ``out`` (a file or a folder a command writes into, possibly clearing it) is refused
    when it resolves -- symbolic links followed -- to one of ``inputs`` or to a folder
    that holds one of them: ``d2nn evaluate --report DESIGN --force`` must not clear the
    design it is reading, whatever ``--force`` says. ``option`` names the parameter in
    the message.
    """
    from .errors import D2NNError  # noqa: PLC0415

    target = Path(out).resolve()
    for item in inputs:
        if item is None:
            continue
        src = Path(item).resolve()
        if src == target or target in src.parents:
            what = "is" if src == target else "holds"
            raise D2NNError(f"{option} {out} {what} an input of this command ({item}); "
                            f"write to another {'file' if src == target else 'folder'}")
