"""The `mpipipe` command: one subcommand per module in mpipipe/commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from mpipipe import __version__
from mpipipe.errors import UsageError

# Subcommand name -> module in mpipipe.commands providing register(subparsers).
SUBCOMMANDS = {
    "train": "train",
    "eval": "eval",
    "schedule": "schedule",
    "config": "config",
    "plan": "plan",
    "plot": "plot",
    "ckpt": "ckpt",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpipipe",
        description="MPI-native pipeline-parallel training (BitPipe, 1F1B, Chimera, zero-bubble).",
    )
    parser.add_argument("--version", action="version", version=f"mpipipe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        module = importlib.import_module(f"mpipipe.commands.{module_name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unexpected = parser.parse_known_args(argv)
    if unexpected:
        # One line, as for every other bad input; a command may say what was probably meant.
        explain = getattr(args, "explain_unexpected", None)
        message = explain(args, unexpected) if explain else ""
        print(f"mpipipe: error: unrecognized arguments: {' '.join(unexpected)}{message}",
              file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except UsageError as error:
        print(f"mpipipe: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
