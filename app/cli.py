"""`vmr`: the one console command. Subcommands live in app/commands/<name>.py and import heavy deps lazily."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module under app.commands; kept as data so `vmr --help` imports nothing heavy.
COMMANDS = {
    "demo": "demo",
    "synth": "synth",
    "shards": "shards",
    "tokenizer": "tokenizer",
    "index": "index",
    "search": "search",
    "app": "serve",
    "eval": "evaluate",
    "convert": "convert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmr", description="VideoMamba Retrieval: text-to-video search over your video library.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"app.commands.{module_name}")
        except ModuleNotFoundError as e:
            if e.name != f"app.commands.{module_name}":
                raise
            continue  # command not built yet
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None, description=" ".join(doc) or None,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
