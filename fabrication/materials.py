"""Printing materials: complex refractive index ``n + i*kappa`` at the design wavelength.

The table holds materials whose values come with a source. A user material comes from
the command line (``--n``/``--kappa``) or from a TOML file (``--material-file``)::

    # my-resin.toml -- values at the design wavelength
    name = "MyResin"
    n = 1.65
    kappa = 0.02
    wavelength_m = 0.75e-3        # optional: warns if the design uses another wavelength
    source = "THz-TDS, our lab, 2025-03"   # optional

(the same keys may also sit in a ``[material]`` table).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path


from diffractive._validate import finite_real

from diffractive.design import DesignError


class FabricationError(DesignError):
    """Bad input to fabrication (material, heights, printer settings, STL files).

    A :class:`ValueError`; derived from :class:`diffractive.design.DesignError` so that
    every ``d2nn`` command (``export``, ``simulate --from-stl``) reports it as one line.
    """


@dataclass(frozen=True)
class Material:
    """A printing material at one wavelength: refractive index ``n`` and extinction ``kappa``.

    ``wavelength_m`` is where the values were measured (``None``: not stated);
    ``source`` says where they come from; ``assumption`` is set when a value is not
    verified against its source.
    """

    name: str
    n: float
    kappa: float
    wavelength_m: float | None = None
    source: str = ""
    assumption: str = ""
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise FabricationError(f"material name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "n", check_index(self.n))
        object.__setattr__(self, "kappa", check_kappa(self.kappa))
        if self.wavelength_m is not None:
            w = _real("material wavelength_m", self.wavelength_m)
            if w <= 0:
                raise FabricationError(f"material wavelength_m must be positive, got {w!r}")
            object.__setattr__(self, "wavelength_m", w)

    def to_json(self) -> dict:
        """The ``{name, n, kappa}`` record used in design.json (plus provenance keys)."""
        out = {"name": self.name, "n": self.n, "kappa": self.kappa}
        if self.wavelength_m is not None:
            out["wavelength_m"] = self.wavelength_m
        if self.source:
            out["source"] = self.source
        if self.assumption:
            out["assumption"] = self.assumption
        return out


def _real(name, value) -> float:
    try:
        return finite_real(name, value)
    except (TypeError, ValueError) as e:
        raise FabricationError(str(e)) from None


def check_index(n) -> float:
    """Return ``n`` as float if it is a finite refractive index > 1, else raise."""
    n = _real("refractive index n", n)
    if n <= 1:
        raise FabricationError(f"refractive index n must be greater than 1 (the material must slow the wave "
                               f"relative to air), got {n!r}")
    return n


def check_kappa(kappa) -> float:
    """Return ``kappa`` as float if it is a finite extinction coefficient >= 0, else raise."""
    kappa = _real("extinction coefficient kappa", kappa)
    if kappa < 0:
        raise FabricationError(f"extinction coefficient kappa must be >= 0 (a passive material absorbs), got {kappa!r}")
    return kappa


#: Lin et al., "All-optical machine learning using diffractive deep neural networks",
#: Science 361, 1004 (2018), doi:10.1126/science.aat8084: the layers were printed in
#: VeroBlackPlus RGD875 (Stratasys PolyJet) and the paper gives n = 1.7227 at 0.4 THz.
_LIN2018 = "Lin et al., Science 361, 1004 (2018), doi:10.1126/science.aat8084"
MATERIALS: dict[str, Material] = {
    "VeroBlackPlus RGD875": Material(
        name="VeroBlackPlus RGD875", n=1.7227, kappa=0.031, wavelength_m=0.75e-3,
        source=f"n: {_LIN2018} (0.4 THz)",
        assumption="kappa = 0.031 is the value commonly quoted from the supplementary material of Lin et al. "
                   "2018 at 0.4 THz; it could not be checked against the source text here. Measure it "
                   "(THz-TDS) for your resin and printer before relying on absorption numbers."),
}

_ALIASES = {"veroblackplus": "VeroBlackPlus RGD875", "rgd875": "VeroBlackPlus RGD875",
            "vero": "VeroBlackPlus RGD875", "veroblackplus-rgd875": "VeroBlackPlus RGD875"}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def material_names() -> list[str]:
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
                               "(or give --n/--kappa or --material-file)") from None


def material_from_dict(doc: dict, source: str = "material") -> Material:
    """Build a :class:`Material` from a ``{name, n, kappa, ...}`` mapping (design.json, TOML)."""
    if not isinstance(doc, dict):
        raise FabricationError(f"{source}: must be a table/object with name, n and kappa")
    missing = [k for k in ("n", "kappa") if k not in doc]
    if missing:
        raise FabricationError(f"{source}: missing {', '.join(missing)}")
    try:
        return Material(name=str(doc.get("name", "custom")), n=doc["n"], kappa=doc["kappa"],
                        wavelength_m=doc.get("wavelength_m"), source=str(doc.get("source", "")),
                        assumption=str(doc.get("assumption", "")))
    except FabricationError as e:
        raise FabricationError(f"{source}: {e}") from None


def load_material_file(path) -> Material:
    """Read a user material from a TOML file (see the module docstring for the keys)."""
    import tomllib  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FabricationError(f"{path}: material file not found")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FabricationError(f"{path}: not valid TOML ({e})") from None
    if "material" in doc and isinstance(doc["material"], dict):
        doc = doc["material"]
    doc.setdefault("name", path.stem)
    doc.setdefault("source", f"user file {path.name}")
    return material_from_dict(doc, source=str(path))


def resolve_material(design_material: dict | None = None, *, name: str | None = None, n=None, kappa=None,
                     material_file=None) -> Material:
    """The material an export uses: a table entry, a TOML file or the design's, with overrides.

    ``name`` and ``material_file`` are exclusive. ``n``/``kappa`` override single values of
    whatever was chosen (then the name becomes ``"<name> (custom n/kappa)"``).
    """
    if name is not None and material_file is not None:
        raise FabricationError("give either a material name or a material file, not both")
    if material_file is not None:
        mat = load_material_file(material_file)
    elif name is not None:
        mat = get_material(name)
    elif design_material is not None:
        mat = material_from_dict(design_material, source="design.json field 'material'")
    else:
        mat = MATERIALS["VeroBlackPlus RGD875"]
    if n is not None or kappa is not None:
        new_n = mat.n if n is None else check_index(n)
        new_k = mat.kappa if kappa is None else check_kappa(kappa)
        if n is not None and kappa is not None and name is None and material_file is None:
            mat = Material(name="custom", n=new_n, kappa=new_k, source="command line (--n, --kappa)")
        elif (new_n, new_k) != (mat.n, mat.kappa):
            nm = mat.name if mat.name.endswith("(custom n/kappa)") else f"{mat.name} (custom n/kappa)"
            mat = replace(mat, name=nm, n=new_n, kappa=new_k, source="command line", assumption="")
    return mat
