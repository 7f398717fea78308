"""`mpipipe config show CONFIG [--set section.key=value ...]`: print the resolved config."""

from __future__ import annotations

import argparse

from mpipipe.config.load import load_config
from mpipipe.config.show import format_config


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="inspect configuration files",
                                   description="Inspect mpipipe configuration files.")
    parser.set_defaults(func=lambda args: _print_help(parser))
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION")
    show = actions.add_parser(
        "show", help="print the resolved config as TOML, each key with its help",
        description="Print the config (defaults, then CONFIG, then --set overrides) as TOML "
                    "with each key's help as a comment. The output loads back as a config.",
    )
    add_config_arguments(show, required=False)
    show.set_defaults(func=show_config)


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True,
                         config_help: str = "TOML config file") -> None:
    """The CONFIG path and repeatable --set overrides (args.config, args.overrides), shared by
    every command that reads a config."""
    parser.add_argument("config", nargs=None if required else "?", metavar="CONFIG",
                        help=config_help + ("" if required else " (default: all defaults)"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one key, e.g. --set parallel.schedule=bitpipe (repeatable); "
                        "a schedule file here, --set parallel.schedule=mine.csv, is relative to "
                        "the current folder (in the config file, to the file's folder)")


def show_config(args: argparse.Namespace) -> int:
    print(format_config(load_config(args.config, args.overrides)), end="")
    return 0


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
