"""Omnivox entry point: the desktop app by default, sub-commands for headless use."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from engine.cli import add_commands

    parser = argparse.ArgumentParser(prog="omnivox", description="A desktop voice assistant that sees.")
    commands = parser.add_subparsers(dest="command")
    add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.errors import OmnivoxError

    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        return args.run(args)
    except OmnivoxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: still one line for the user, details on request
        if os.environ.get("OMNIVOX_DEBUG"):
            raise
        print(f"error: internal failure ({type(err).__name__}: {err}); rerun with OMNIVOX_DEBUG=1 "
              "for details and please report it.", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
