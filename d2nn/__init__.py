"""d2nn: the command-line front end over ``diffractive``, ``fabrication`` and ``training``."""
from diffractive import __version__

__all__ = ["__version__"]
