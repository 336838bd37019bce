"""Package boundaries (docs/architecture.md): which package may import which.

Each check imports modules in a fresh interpreter and looks at ``sys.modules``, so nothing
other tests imported can hide an import. Rules: the physics core (diffractive/ outside
diffractive/measured) never imports the measured-data package; diffractive never imports
torch, training, fabrication or d2nn; fabrication never imports torch or training at
module level; training/datasets.py never imports torch (simulate, evaluate and
measure-sim load data without it); only d2nn parses command lines.
"""
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import diffractive
import fabrication

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted(m.name for m in pkgutil.iter_modules(diffractive.__path__, "diffractive.")
              if m.name != "diffractive.measured")
MEASURED = sorted(m.name for m in pkgutil.iter_modules([str(ROOT / "diffractive" / "measured")], "diffractive.measured."))
FABRICATION = sorted(m.name for m in pkgutil.iter_modules(fabrication.__path__, "fabrication."))


def loaded_after_import(modules) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}:\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(res.stdout)


def offending(loaded, forbidden) -> list[str]:
    return [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_the_modules_are_found():
    assert {"diffractive.propagation", "diffractive.stack", "diffractive.design", "diffractive.simulate"} <= set(CORE)
    assert "diffractive.measured.synthetic" in MEASURED and "fabrication.export" in FABRICATION
    assert not (ROOT / "diffractive" / "labsim.py").exists()  # moved to diffractive/measured/synthetic.py


@pytest.mark.parametrize("modules,forbidden", [
    (CORE, ("diffractive.measured", "torch", "training", "fabrication", "d2nn")),
    (MEASURED, ("torch", "training", "fabrication", "d2nn")),
    (FABRICATION, ("torch", "training", "d2nn")),
    (["training.datasets"], ("torch", "fabrication", "d2nn")),
], ids=["core", "measured", "fabrication", "datasets"])
def test_imports_point_one_way(modules, forbidden):
    assert offending(loaded_after_import(modules), forbidden) == []


def test_only_the_command_line_parses_command_lines():
    # argparse itself is loaded by NumPy, so this is checked in the sources
    for pkg in ("diffractive", "fabrication", "training"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text()
            assert "import argparse" not in text and "sys.argv" not in text, path
