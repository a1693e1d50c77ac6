"""Arguments and helpers shared by the commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

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
