"""Sub-commands of ``python -m vlmir``. Each module here exposes ``add_parser(subparsers)``, which registers its
sub-command and sets ``func`` (``func(args) -> int`` exit code). Modules are imported only to build the parser;
the heavy imports (torch models) happen inside ``func``."""

from __future__ import annotations

import argparse
import importlib
import sys

# module name -> sub-commands it provides (kept explicit so --help lists them in this order)
COMMAND_MODULES = ("infer", "degrade", "convert", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlmir", description="vision-language guided image restoration")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"vlmir.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"vlmir.commands.{mod}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
