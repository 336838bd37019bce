"""Subcommands of ``d2nn`` (see :mod:`d2nn.cli`); :mod:`.units` parses lengths and angles for all of them."""
from diffractive.errors import D2NNError


class UserError(D2NNError):
    """A problem with the user's command line, worded in its flags; printed as one line without a traceback."""
