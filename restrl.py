"""The `restrl` command line: one entry point, subcommands registered by the package that owns them.

Each owning module exposes ``register(subparsers)``, adds its subcommands with ``set_defaults(func=...)``
and imports its heavy dependencies (torch, vLLM) inside the handlers so that ``restrl --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module -> registers these top-level subcommands
COMMAND_MODULES = ("models.cli", "server.cli", "training.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restrl", description="Value-model-guided tree search for code generation.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package not built yet must not break the others
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
