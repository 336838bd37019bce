"""The ``d2nn`` command: one entry point, one module per subcommand.

Each module in :mod:`d2nn.commands` defines ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable taking the parsed arguments and returning an exit
code. Errors meant for the user are raised as :class:`d2nn.commands.UserError` (or the
library's ``ValueError`` subclasses) and printed as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from diffractive import __version__

COMMANDS = ["train", "simulate", "export", "evaluate", "measure_sim"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d2nn",
        description="Terahertz diffractive deep neural networks: train a design, simulate it, export it "
                    "for 3D printing, and evaluate what the lab measured.")
    parser.add_argument("--version", action="version", version=f"d2nn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"d2nn.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"d2nn.commands.{name}":
                continue  # not written yet
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    from d2nn.commands import UserError  # noqa: PLC0415
    from diffractive.design import DesignError  # noqa: PLC0415

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (UserError, DesignError, FileExistsError, FileNotFoundError) as e:
        print(f"d2nn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"d2nn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
