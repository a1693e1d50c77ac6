"""`t2 train`: train an expert (SVF or LoRA; RL or next-token) — the options are TrainConfig's fields.

    t2 train --task arc-easy --method svf --objective rl --out runs/arc-svf
    torchrun --nproc_per_node 2 -m transformer_squared.cli.main train --task gsm8k --out runs/gsm8k
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from pathlib import Path

from .common import print_json, quiet


def _type(f: dataclasses.Field):
    hint = typing.get_type_hints(_config_cls())[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _config_cls():
    from ..training.config import TrainConfig

    return TrainConfig


def register(sub) -> None:
    p = sub.add_parser("train", help="train an expert: SVF or LoRA, REINFORCE or next-token prediction",
                       description="Train an expert. Defaults follow the paper where it fits a CPU: see "
                                   "transformer_squared/training/loop.py for every departure.")
    for f in dataclasses.fields(_config_cls()):
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _type(f)
        help_ = f.metadata["help"].replace("%", "%%")  # argparse %-formats help: "50%" must stay text
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            continue
        if "default" not in help_ and not f.metadata.get("required"):
            help_ = f"{help_} (default: {f.default})"
        p.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                       required=f.metadata.get("required", False), help=help_)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..fileio import check_writable_dir
    from ..training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    # Before the task, the data and the model load: a bad --out is refused at once, not after minutes of
    # loading (a resumed run's directory must exist already, and loop.py says so when it does not).
    if not config.resume or Path(config.out).is_dir():
        check_writable_dir(config.out, "--out")
    from ..training import train  # torch and the training stack: only now

    quiet()
    result = train(config)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # data-parallel workers: rank 0 reports
    if args.json:
        print_json(result.to_dict())
        return 0
    if result.test is not None:
        from ..metrics import format_accuracy

        score = f"; test ({config.test_split}) {format_accuracy(result.test)}"
    else:
        score = ""
    best = f", best validation step {result.best_step}" if result.best_step is not None else ""
    print(f"trained {result.steps} steps in {result.seconds:.1f} s{best}{score}; expert: {result.expert}")
    return 0
