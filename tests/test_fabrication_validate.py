"""fabrication.validate: real mesh tools read an exported layer (slow; skipped with a message
when the tools are absent).

``admesh`` (Debian package admesh, installed by scripts/setup.sh) and ``prusa-slicer
--info`` (optional: apt-get install prusa-slicer, ~100 MB) both exit 0 even on broken
meshes, so their output is parsed; a deliberately broken file checks the parsers.
"""
import shutil
import subprocess

import numpy as np
import pytest

from diffractive.design import make_design
from fabrication.export import export_design
from fabrication.mesh import read_stl_triangles, write_stl
from fabrication.validate import parse_admesh, parse_prusa_info

pytestmark = pytest.mark.slow
PRUSA = shutil.which("prusa-slicer") or shutil.which("PrusaSlicer")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slow")
    d = make_design(layer_shape=(30, 26), n_layers=2, spacing_m=10e-3, seed=9)
    res = export_design(d, tmp / "stl")
    tri = read_stl_triangles(tmp / "stl" / "layer_01.stl")[1:]           # drop one facet: a hole
    write_stl(tmp / "broken.stl", tri.reshape(-1, 3), np.arange(3 * len(tri)).reshape(-1, 3))
    return tmp / "stl", tmp / "broken.stl", res.manifest


def _run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p.stdout + p.stderr


@pytest.mark.skipif(shutil.which("admesh") is None, reason="admesh not installed (apt-get install admesh)")
def test_admesh_finds_nothing_to_repair(files):
    out, broken, man = files
    for name in ("layer_01.stl", "layer_02.stl", "holder.stl"):
        r = parse_admesh(_run(["admesh", str(out / name)]))
        assert r["ok"], (name, r)
        assert r["parts"] == 1 and r["disconnected_total"] == 0 and r["degenerate"] == 0
        if name.startswith("layer"):
            e = next(e for e in man["layers"] if e["file"] == name)
            assert r["facets"] == e["faces"]
            assert r["volume"] == pytest.approx(e["height_field_volume_mm3"], rel=1e-3)
    bad = parse_admesh(_run(["admesh", str(broken)]))
    assert not bad["ok"] and bad["disconnected_total"] > 0


@pytest.mark.skipif(PRUSA is None, reason="prusa-slicer not installed (optional: apt-get install prusa-slicer)")
def test_prusa_slicer_reports_manifold(files):
    out, broken, man = files
    for name in ("layer_01.stl", "holder.stl"):
        r = parse_prusa_info(_run([PRUSA, "--info", str(out / name)]))
        assert r["ok"] and r["manifold"] == "yes" and r["number_of_parts"] == "1", (name, r)
    e = man["layers"][0]
    r = parse_prusa_info(_run([PRUSA, "--info", str(out / "layer_01.stl")]))
    assert int(r["number_of_facets"]) == e["faces"]
    assert float(r["volume"]) == pytest.approx(e["height_field_volume_mm3"], rel=1e-3)
    bad = parse_prusa_info(_run([PRUSA, "--info", str(broken)]))
    assert bad["manifold"] == "no" and not bad["ok"]
