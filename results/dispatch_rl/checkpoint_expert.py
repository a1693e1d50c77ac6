"""Save the best validated state (or the last one) of a stopped `t2 train` run's checkpoint as an expert directory.

    .venv/bin/python results/dispatch_rl/checkpoint_expert.py runs/NAME [--last] --out DIR

A run stopped before its last step has no expert/; its checkpoint holds the best state so far and the current
one. The expert's metadata records which step it is and that it comes from a stopped run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--last", action="store_true", help="the checkpoint's current state, not its best")
    args = ap.parse_args()

    from transformer_squared.adapted import AdaptedModel
    from transformer_squared.svf import ZInit
    from transformer_squared.training import checkpoint
    from transformer_squared.training.policy import SVFPolicy

    state, info = checkpoint.load(Path(args.run) / "checkpoint")
    cfg = info["config"]
    step = state["step"] if args.last else state["best"]["step"]
    z = state["policy"] if args.last else state["best"]["state"]
    am = AdaptedModel.prepare(cfg["model"], cfg["targets"])
    policy = SVFPolicy(am, ZInit(parametrization=cfg["parametrization"]), seed=cfg["seed"])
    policy.load_state(z)
    with torch.no_grad():
        policy.save(Path(args.out), {"name": "dispatch", "task": "dispatch", "domain": "dispatch", "method": "svf",
                                     "objective": cfg["objective"], "parametrization": cfg["parametrization"],
                                     "training": {"config": cfg, "steps": state["step"], "stopped_run": True},
                                     "metrics": {"selected_step": step, "valid": state["valid"]}})
    print(f"{args.out}: step {step} of a run stopped at step {state['step']}")


if __name__ == "__main__":
    main()
