"""`t2`: entry point. Each command lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from .._version import __version__
from ..errors import T2Error

# Command modules, in the order `t2 --help` lists them. Each defines register(subparsers) -> None and sets
# `func` on its parser via set_defaults(func=...); func(args) returns an exit code (or None for 0).
COMMANDS = [
    "models",
    "info",
    "expert",
    "generate",
    "eval",
    "score",
    "compare",
    "train",
    "adapt",
    "run",
    "chat",
    "serve",
]


# OSErrors that mean "the disk refused the write" rather than a bug: reported in one line, exit status 2.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2",
        description="Transformer²: SVF experts, RL training and two-pass self-adaptation for Hugging Face LMs.",
    )
    parser.add_argument("--version", action="version", version=f"transformer-squared {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name == f"{__package__}.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command != "train":  # t2 train has its own --device (TrainConfig)
            from .common import apply_device

            apply_device(args)
        code = args.func(args)
    except T2Error as e:
        print(f"t2 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRNOS and e.filename is None:
            raise  # not about a file the user named or a disk they can free: a bug, keep the traceback
        # A full disk, a quota, a read-only mount, a path that cannot be written: the user's to fix, wherever in
        # the library the write was.
        where = f"{e.filename}: " if e.filename else ""
        hint = ("; free some space or write elsewhere (files are written atomically: what was there before is "
                "intact)" if e.errno in DISK_ERRNOS else "; check the path")
        print(f"t2 {args.command}: error: {where}{e.strerror or e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t2 {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `t2 ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
