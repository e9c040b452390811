"""The app's command-line surface: the window's options and the `history` command.

Imports nothing from Qt or the engine runtime, so `main.py` can parse arguments cheaply.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.settings import DEVICES, PRECISIONS

COMMANDS = ("history",)  # sub-commands of the app, parsed without loading the engine's


def add_gui_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="Lyra model folder to load (default: the one in Settings)")
    parser.add_argument("--data-dir", type=Path,
                        help="folder for history and settings (default: the user data folder)")
    parser.add_argument("--precision", choices=PRECISIONS, help="model precision (default: nf4 on CUDA)")
    parser.add_argument("--device", choices=DEVICES, help="where the model runs (default: cuda when available)")
    parser.add_argument("--no-voice", action="store_true",
                        help="typed turns only: leave the microphone and speaker alone")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="longest reply, in tokens (default 512); end-to-end tests keep replies short")
    parser.add_argument("--self-test", action="store_true",
                        help="answer one spoken turn with a generated test model, headless; exit 0 when it works")
    # For benchmarks: print a marker line once the window is on screen.
    parser.add_argument("--print-shown", action="store_true", help=argparse.SUPPRESS)


def add_commands(commands: argparse._SubParsersAction) -> None:
    history = commands.add_parser("history", help="list the stored conversations with their turns")
    # SUPPRESS: `main.py --data-dir D history` and `main.py history --data-dir D` both work
    history.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                         help="folder holding the history (default: the user data folder)")
    history.add_argument("--json", action="store_true", help="print one JSON object")
    history.set_defaults(run=run_history)


def run_history(args: argparse.Namespace) -> int:
    from app.history import DB_NAME, HistoryStore, default_data_dir

    folder = args.data_dir or default_data_dir()
    if not (folder / DB_NAME).is_file():  # listing must not create an empty history
        listing = {"data_dir": str(folder), "conversations": []}
    else:
        store = HistoryStore.open(folder, recover=False)
        try:
            listing = store.as_json()
        finally:
            store.close()
    if args.json:
        print(json.dumps(listing, ensure_ascii=False))
        return 0
    for conversation in listing["conversations"]:
        print(f"{conversation['id']:>4}  {conversation['created']}  {conversation['title'] or '(untitled)'}")
        for turn in conversation["turns"]:
            extras = [label for label, key in (("image", "image_file"), ("audio", "audio_file")) if turn[key]]
            text = " ".join((turn["text"] or turn["transcript"] or "").split())
            print(f"        {turn['role']:<9} {text[:90]}{'  [' + ', '.join(extras) + ']' if extras else ''}")
    if not listing["conversations"]:
        print(f"no conversations in {folder}")
    return 0
