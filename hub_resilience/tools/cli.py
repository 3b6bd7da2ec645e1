"""The ``hub-resilience`` command.

Each argparse subcommand lives in the module that does its job, which exposes
``register(subparsers)``; ``service`` and ``cull`` are the service process's traitlets
Applications (:mod:`hub_resilience.service.commands`), which take their own arguments.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from hub_resilience.service.commands import COMMANDS

#: Modules that provide an argparse subcommand, in the order ``--help`` shows them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "hub_resilience.tools.plan_cli",
    "hub_resilience.tools.check_config",
    "hub_resilience.tools.simulate",
    "hub_resilience.tools.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="hub-resilience",
        description="Keep a JupyterHub on Kubernetes standing when many users arrive at once.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for name, app in COMMANDS.items():
        # Listed for --help; the Application parses its own arguments (see main).
        subparsers.add_parser(name, help=str(app.description).split(". ")[0] + ".")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]].main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
