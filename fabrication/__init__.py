"""Fabrication: phase maps -> printed heights -> watertight STL files, a holder, and back.

* :mod:`fabrication.materials` - printing materials (n, kappa), the sourced table, TOML files;
* phase <-> height <-> transmission (NumPy, CuPy, torch arrays) is physics: :mod:`diffractive.heights`;
  the sign convention is written down in its docstring and in docs/fabrication.md;
* :mod:`fabrication.mesh` - NumPy height-field mesher and binary STL I/O;
* :mod:`fabrication.plate` - a layer's frame, alignment holes, notch and engraved label;
* :mod:`fabrication.holder` - the slotted holder that spaces the plates (manifold3d);
* :mod:`fabrication.validate` - mesh checks and printability warnings;
* :mod:`fabrication.export` - ``export_design`` (what ``d2nn export`` runs);
* :mod:`fabrication.roundtrip` - STL -> heights -> transmissions (``d2nn simulate --from-stl``).

Torch is never imported at module level.
"""
from diffractive.heights import (height_to_phase, height_to_transmission, phase_period_m, phase_to_height, phase_to_steps,
                      phase_to_transmission)
from .materials import MATERIALS, FabricationError, Material, get_material, load_material_file, resolve_material

__all__ = ["FabricationError", "MATERIALS", "Material", "get_material", "load_material_file", "resolve_material",
           "phase_period_m", "phase_to_height", "phase_to_steps", "height_to_phase", "height_to_transmission",
           "phase_to_transmission"]
