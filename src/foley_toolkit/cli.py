"""The ``foley-toolkit`` command. Each sub-command lives in ``foley_toolkit/commands/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` to the function that runs it."""

from __future__ import annotations

import argparse
import sys

# Sub-command modules, in the order `foley-toolkit --help` lists them.
COMMAND_MODULES: list[str] = [
    "make_synthetic",
    "eval_sync",
    "eval_codec",
    "generate",
    "convert",
    "assemble",
    "evaluate",
    "app",
]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="foley-toolkit", description="Kling-Foley video-to-audio toolkit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"foley_toolkit.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Bad input (a missing folder, an unknown option value, zero clips, ...): one line on stderr and exit code 2,
        # like argparse's own errors, never a traceback. Other exceptions are bugs and keep their traceback.
        print(f"foley-toolkit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
