"""The ``d2nn`` command: one entry point, one module per subcommand.

Each module in :mod:`d2nn.commands` defines ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable taking the parsed arguments and returning an exit
code. A module listed in :data:`COMMANDS` that cannot be imported is an error of the
installation, raised at once rather than leaving the command out.

Errors meant for the user -- every :class:`diffractive.errors.D2NNError` (the library's,
and :class:`d2nn.commands.UserError` for the command line's own) and the file-system
errors that mean a bad path -- are caught once, in :func:`main`, and printed as one line
``d2nn CMD: error: ...`` with exit status 2, as are bad options (argparse). Library
messages name parameters (``pass force=True``); :func:`main` words those that have a
flag of the command (``pass --force``).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from diffractive import __version__

COMMANDS = ["train", "simulate", "tolerance", "export", "evaluate", "measure_sim", "diagnose"]

#: library parameter -> the option of a command that sets it (used to word OutputExists)
_FLAGS = {"overwrite": "force", "force": "force", "resume": "resume"}

#: OSErrors that mean the user named a bad path (others -- a full disk, say -- keep their traceback)
_PATH_ERRORS = (FileExistsError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like the commands' own."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _load_command(name: str):
    try:
        module = importlib.import_module(f"d2nn.commands.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"d2nn.commands.{name}":
            raise ImportError(f"d2nn: command module d2nn.commands.{name} is missing (listed in d2nn.cli.COMMANDS): "
                              "the installation is incomplete") from e
        raise
    if not callable(getattr(module, "register", None)):
        raise ImportError(f"d2nn: d2nn.commands.{name} defines no register(subparsers)")
    return module


def build_parser() -> argparse.ArgumentParser:
    """The ``d2nn`` parser with one subparser per module in :data:`COMMANDS` (raises ImportError if one is missing)."""
    parser = _Parser(
        prog="d2nn",
        description="Terahertz diffractive deep neural networks: train a design, simulate it, export it "
                    "for 3D printing, and evaluate what the lab measured.")
    parser.add_argument("--version", action="version", version=f"d2nn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        _load_command(name).register(sub)
    return parser


def _message(e: BaseException, args) -> str:
    from diffractive.errors import OutputExists  # noqa: PLC0415

    if isinstance(e, OutputExists):
        return e.worded({p: f"--{flag}" for p, flag in _FLAGS.items() if hasattr(args, flag)})
    return str(e)


def main(argv=None) -> int:
    """Run ``d2nn`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success (and for ``--help``/``--version``), 2 for a bad option or a user error
    (printed as one line, see the module docstring), 130 when interrupted; otherwise what
    the command returns.
    """
    from diffractive.errors import D2NNError  # noqa: PLC0415

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad option already reported in one line
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (D2NNError, *_PATH_ERRORS) as e:
        print(f"d2nn {args.command}: error: {_message(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"d2nn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
