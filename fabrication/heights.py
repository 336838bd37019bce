"""Moved to :mod:`diffractive.heights` (the plate model is physics, used by the as-built model)."""
from diffractive.heights import *  # noqa: F401,F403
from diffractive.heights import base_steps, check_base, check_z_step, relief_levels  # noqa: F401
