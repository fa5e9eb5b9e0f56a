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


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line `vmr <command>: ...`, exit 2, like every other error (not argparse's usage block)."""

    def error(self, message: str):
        command = " ".join(self.prog.split()[:2])  # "vmr index build" reports as `vmr index`, like its errors
        self.exit(2, f"{command}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vmr", description="VideoMamba Retrieval: text-to-video search over your video library.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"app.commands.{module_name}")  # a missing module is a broken install
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None, description=" ".join(doc) or None,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's parser (plain parse_args would blame `vmr` itself)
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from retrieval.errors import VmrError

    try:
        return int(args._run(args) or 0)
    except (VmrError, OSError) as e:  # what the user can fix; OSError: a missing path, a full or read-only disk
        print(f"vmr {args.command}: {e}", file=sys.stderr)  # anything else is a bug and keeps its traceback
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
