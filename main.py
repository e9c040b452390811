"""Omnivox entry point: the desktop app by default, sub-commands for headless use."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser(engine_commands: bool = True) -> argparse.ArgumentParser:
    from app.cli import add_commands as add_app_commands
    from app.cli import add_gui_options

    parser = argparse.ArgumentParser(prog="omnivox", description="A desktop voice assistant that sees.")
    add_gui_options(parser)
    commands = parser.add_subparsers(dest="command")
    if engine_commands:  # they import torch: skipped for the app's own commands
        from engine.cli import add_commands

        add_commands(commands)
    add_app_commands(commands)
    return parser


def build_gui_parser() -> argparse.ArgumentParser:
    """Only the window's options: parsing them must not load the engine's commands (and torch)."""
    from app.cli import add_gui_options

    parser = argparse.ArgumentParser(prog="omnivox", add_help=False)
    add_gui_options(parser)
    parser.set_defaults(run=run_gui)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    from app.cli import COMMANDS

    options, rest = build_gui_parser().parse_known_args(argv)
    if not rest:  # no sub-command: the window, or the installation check
        if options.self_test:
            options.run = run_self_test
        return options
    # a sub-command, -h, or a mistake the full parser explains
    return build_parser(engine_commands=rest[0] not in COMMANDS).parse_args(argv)


def run_gui(args: argparse.Namespace) -> int:
    from app.gui import run  # Qt loads here, never for a sub-command

    return run(args)


def run_self_test(args: argparse.Namespace) -> int:
    from engine.selftest import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    from engine.errors import OmnivoxError

    args = parse(sys.argv[1:] if argv is None else argv)
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
