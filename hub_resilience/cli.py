"""The ``hub-resilience`` command.

Each subcommand lives in the module that does its job; that module exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
arguments and returning an exit code). This file only lists those modules.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that provide a subcommand, in the order ``--help`` shows them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "hub_resilience.plan_cli",
    "hub_resilience.culler",
    "hub_resilience.service",
    "hub_resilience.simulate",
    "hub_resilience.demo",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
