"""Subcommands of ``d2nn`` (see :mod:`d2nn.cli`)."""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
