"""Arguments and helpers shared by the commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from typing import Any, Iterable, Mapping

from ..models import DEFAULT_MODEL


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"alias, .gguf file, local HF directory or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or auto (default: $T2_DEVICE, else cpu)")


def apply_device(args) -> None:
    """Make --device the default device of every model this command loads (models.resolve_device)."""
    device = getattr(args, "device", None)
    if device is not None:
        from ..models import resolve_device

        resolve_device(device)  # fail now with a one-line error, before any loading
        os.environ["T2_DEVICE"] = device


def add_targets_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", default="mlp",
                   help="matrices to adapt: mlp (paper default), attn (q,v), all, or patterns like '*.q_proj'")


def add_data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="benchmark data directory (layout of shared/data); default $T2_DATA_DIR, else the hub")


def _converter(hint):
    """argparse's `type` for a field's annotation: int, float, str, or `str | int` (a number when it reads as one)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) > 1:
        if set(args) == {str, int}:
            return lambda v: int(v) if v.lstrip("-").isdigit() else v
        raise TypeError(f"no command-line form for the annotation {hint}")
    return args[0] if args else hint


def add_config_args(p, cls, *, exclude: Iterable[str] = (), flags: Mapping[str, str] | None = None,
                    choices: Mapping[str, Iterable[str]] | None = None) -> None:
    """One option per field of the dataclass `cls` (the config a command runs with), so a config field and its
    flag cannot drift apart: --field-name (or `flags[name]`), the field's type, default and metadata["help"],
    booleans as --x/--no-x, a field without a default required. Fields with metadata cli=False, nested dataclasses
    and `exclude` are left to the command; choices come from metadata["choices"] or `choices`."""
    hints = typing.get_type_hints(cls)
    flags, choices = dict(flags or {}), dict(choices or {})
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.metadata.get("cli", True) or dataclasses.is_dataclass(hints[f.name]):
            continue
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        kind = _converter(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if has_default else None)
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help: "50%" must stay text
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                           help=f"{help_} (default: {'on' if default else 'off'})".lstrip())
            continue
        required = f.metadata.get("required", not has_default)
        if not required and default is not None and "default" not in help_:
            help_ = f"{help_} (default: {default})".lstrip()
        p.add_argument(flag, dest=f.name, type=kind, default=default, required=required,
                       choices=f.metadata.get("choices", choices.get(f.name)), help=help_)


def config_from_args(cls, args, **overrides):
    """`cls` built from the parsed options `add_config_args` added (and `overrides`); validated by `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **overrides})


def quiet() -> None:
    """Keep the CLI's output to what the user asked for."""
    from ..models import set_quiet_transformers

    set_quiet_transformers()


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
