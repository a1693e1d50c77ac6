"""`t2 train`: train an expert (SVF or LoRA; RL or next-token) — the options are TrainConfig's fields.

    t2 train --task arc-easy --method svf --objective rl --out runs/arc-svf
    torchrun --nproc_per_node 2 -m transformer_squared.cli.main train --task gsm8k --out runs/gsm8k
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import add_config_args, config_from_args, print_json, quiet


def register(sub) -> None:
    from ..training.config import TrainConfig

    p = sub.add_parser("train", help="train an expert: SVF or LoRA, REINFORCE or next-token prediction",
                       description="Train an expert. Defaults follow the paper where it fits a CPU: see "
                                   "transformer_squared/training/loop.py for every departure.")
    add_config_args(p, TrainConfig)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..fileio import check_writable_dir
    from ..training import TrainConfig

    config = config_from_args(TrainConfig, args)
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
