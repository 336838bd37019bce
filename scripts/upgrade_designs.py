#!/usr/bin/env python3
"""Rewrite design folders' design.json in the current schema (d2nn.design/2); phases.npz is not touched.

    python3 scripts/upgrade_designs.py designs/*/          # upgrade in place
    python3 scripts/upgrade_designs.py --check designs/*/  # only report which would change

Each design.json is read (an older schema is converted, see docs/design-format.md) and
written back with ``Design.to_json()``. Before replacing a file the script checks that the
new document reads back to the same design (same JSON) and leaves the folder's
phases.npz byte for byte as it was. Folders already in the current schema are left alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffractive._io import write_json_atomic  # noqa: E402
from diffractive.design import SCHEMA, Design, OldSchemaWarning, load_design  # noqa: E402


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upgrade(folder: Path, check_only: bool) -> str:
    """Upgrade one folder; returns what happened ("current", "would upgrade", "upgraded")."""
    jpath, npath = folder / "design.json", folder / "phases.npz"
    old_doc = json.loads(jpath.read_text())
    if old_doc.get("schema") == SCHEMA:
        return "current"
    npz_before = _digest(npath)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OldSchemaWarning)  # converting old files is the point here
        design = load_design(folder)
    new_doc = design.to_json()
    again = Design.from_json(json.loads(json.dumps(new_doc)), design.phases, design.amplitudes, source=str(jpath))
    if again.to_json() != new_doc:
        raise SystemExit(f"{jpath}: the {SCHEMA} document does not read back to the same design; not written")
    if check_only:
        return f"would upgrade {old_doc.get('schema')} -> {SCHEMA}"
    write_json_atomic(jpath, new_doc)
    if _digest(npath) != npz_before:
        raise SystemExit(f"{npath}: changed while upgrading design.json (it must not)")
    return f"upgraded {old_doc.get('schema')} -> {SCHEMA}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="design folders (holding design.json and phases.npz)")
    p.add_argument("--check", action="store_true", help="report only; write nothing")
    args = p.parse_args(argv)
    for folder in args.folders:
        folder = folder.parent if folder.name == "design.json" else folder
        print(f"{folder}: {upgrade(folder, args.check)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
