"""Printing materials for export: look-up by name, user material files, command-line overrides.

:class:`Material` (complex refractive index ``n + i*kappa`` at the design wavelength), the
table :data:`MATERIALS` of materials whose values come with a source, and the Lin 2018
defaults live in the physics core (:mod:`diffractive.materials`) and are re-exported here.
A user material comes from the command line (``--n``/``--kappa``) or from a TOML file
(``--material-file``)::

    # my-resin.toml -- values at the design wavelength
    name = "MyResin"
    n = 1.65
    kappa = 0.02
    wavelength_m = 0.75e-3        # optional: warns if the design uses another wavelength
    source = "THz-TDS, our lab, 2025-03"   # optional

(the same keys may also sit in a ``[material]`` table).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from diffractive._validate import finite_real
from diffractive.errors import FabricationError, FieldError  # noqa: F401  (FabricationError re-exported)
from diffractive.heights import _real, _worded, check_index, check_kappa  # noqa: F401  (re-exported)
from diffractive.materials import LIN2018, MATERIALS, Dispersion, Material  # noqa: F401  (re-exported)


_ALIASES = {"veroblackplus": "VeroBlackPlus RGD875", "rgd875": "VeroBlackPlus RGD875",
            "vero": "VeroBlackPlus RGD875", "veroblackplus-rgd875": "VeroBlackPlus RGD875"}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def material_names() -> list[str]:
    """Names of the materials in the table :data:`MATERIALS`, sorted."""
    return sorted(MATERIALS)


def get_material(name: str) -> Material:
    """Look a material up by name (case, spaces and punctuation ignored; a few aliases)."""
    if not isinstance(name, str):
        raise FabricationError(f"material name must be a string, got {name!r}")
    by_key = {_key(k): v for k, v in MATERIALS.items()}
    by_key.update({_key(a): MATERIALS[t] for a, t in _ALIASES.items()})
    try:
        return by_key[_key(name)]
    except KeyError:
        raise FabricationError(f"unknown material {name!r}; known: {', '.join(material_names())} "
                               "(or give n and kappa, or a material file)") from None


def material_from_dict(doc: dict, source: str = "material") -> Material:
    """Build a :class:`Material` from a ``{name, n, kappa, ...}`` mapping (design.json, TOML).

    ``n`` (refractive index, > 1) and ``kappa`` (extinction coefficient, >= 0) at the design
    wavelength are required; ``wavelength_m`` (metres), ``source`` and ``assumption`` are
    optional. The argument ``source`` names the mapping in error messages.
    """
    if not isinstance(doc, dict):
        raise FabricationError(f"{source}: must be a table/object with name, n and kappa")
    missing = [k for k in ("n", "kappa") if k not in doc]
    if missing:
        raise FabricationError(f"{source}: missing {', '.join(missing)}")
    try:  # the values go to Material as they are: it checks their types (a name must be a string)
        dispersion = None if doc.get("dispersion") is None else Dispersion.from_json(doc["dispersion"])
        return Material(name=doc.get("name", "custom"), n=doc["n"], kappa=doc["kappa"],
                        wavelength_m=doc.get("wavelength_m"), source=doc.get("source", ""),
                        assumption=doc.get("assumption", ""), dispersion=dispersion)
    except FieldError as e:
        raise FabricationError(f"{source}: {_worded(e)}") from None


#: The keys a material file may hold (at top level or in a ``[material]`` table).
MATERIAL_FILE_KEYS = ("name", "n", "kappa", "wavelength_m", "source", "assumption")


def load_material_file(path) -> Material:
    """Read a user material from a TOML file (see the module docstring for the keys).

    Read through :func:`diffractive._read.read_toml`: a folder, a FIFO, gzip or non-UTF-8
    bytes and invalid TOML are refused in one line naming the file, as are unknown keys
    and values of the wrong type (naming the key).
    """
    from diffractive._read import InputFileError, read_toml  # noqa: PLC0415

    path = Path(path)
    try:
        doc = read_toml(path)
    except InputFileError as e:
        if e.problem == "no such file":
            raise FabricationError(f"{path}: material file not found") from None
        raise FabricationError(str(e)) from None
    if "material" in doc:
        if not isinstance(doc["material"], dict):
            raise FabricationError(f"{path}: 'material' must be a table ([material]) holding name, n and kappa")
        if len(doc) > 1:
            raise FabricationError(f"{path}: give the material's keys at top level or in [material], not both "
                                   f"(also at top level: {', '.join(sorted(k for k in doc if k != 'material'))})")
        doc = doc["material"]
    unknown = sorted(set(doc) - set(MATERIAL_FILE_KEYS))
    if unknown:
        raise FabricationError(f"{path}: unknown key {unknown[0]!r} (a material file holds "
                               f"{', '.join(MATERIAL_FILE_KEYS)})")
    doc.setdefault("name", path.stem)
    doc.setdefault("source", f"user file {path.name}")
    return material_from_dict(doc, source=str(path))


def resolve_material(design_material: Material | dict | None = None, *, name: str | None = None, n=None,
                     kappa=None, material_file=None) -> Material:
    """The material an export uses: a table entry, a TOML file or the design's, with overrides.

    ``design_material`` is a design's :class:`Material` (or a ``{name, n, kappa}`` mapping);
    ``None``: the Lin 2018 material.

    ``name`` and ``material_file`` (a TOML path) are exclusive. ``n``/``kappa`` (refractive
    index and extinction coefficient, dimensionless, at the design wavelength) override single values of
    whatever was chosen (then the name becomes ``"<name> (custom n/kappa)"``).
    """
    if name is not None and material_file is not None:
        raise FabricationError("give either a material name or a material file, not both")
    if material_file is not None:
        mat = load_material_file(material_file)
    elif name is not None:
        mat = get_material(name)
    elif isinstance(design_material, Material):
        mat = design_material
    elif design_material is not None:
        mat = material_from_dict(design_material, source="design.json field 'material'")
    else:
        mat = LIN2018.material
    if n is not None or kappa is not None:
        new_n = mat.n if n is None else check_index(n)
        new_k = mat.kappa if kappa is None else check_kappa(kappa)
        if n is not None and kappa is not None and name is None and material_file is None:
            mat = Material(name="custom", n=new_n, kappa=new_k, source="command line (--n, --kappa)")
        elif (new_n, new_k) != (mat.n, mat.kappa):
            nm = mat.name if mat.name.endswith("(custom n/kappa)") else f"{mat.name} (custom n/kappa)"
            mat = replace(mat, name=nm, n=new_n, kappa=new_k, source="command line", assumption="")
    return mat
