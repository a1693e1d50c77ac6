"""Seconds of one RL rollout, exact vs low precision (`t2 train --rollout-precision`), on the embedded model.

    OMP_NUM_THREADS=1 python bench/bench_rollout_precision.py [--precisions exact,fast] [--prompts 8]
        [--samples 4] [--new-tokens 64] [--rounds 3] [--task arc-easy] [--out bench/out/rollout_precision.json]

An SVF policy (MLP) on the model; each round, for each precision in turn: z takes a small random step (as after an
optimizer step, so the merged W' and the low-precision copies of the weights are rebuilt, which training pays
too), then one `next(rollouts(...))` of the training loop: P prompts × G samples at temperature 1, up to
`--new-tokens` tokens each, scored; a non-exact engine also returns the sampled tokens' log-probs, as in
training. Prints and saves per precision every round's wall and CPU seconds and tokens, their medians, the
per-token speedup over exact (the precisions sample different tokens and stop at different EOS) and the engine's
chosen kernel. Timings on a shared CPU are noisy: the CPU, threads and load average go with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on a busy shared CPU

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpuinfo import cpu_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", default="exact,fast")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--task", default="arc-easy")
    ap.add_argument("--model", default=None, help="default: the embedded model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/out/rollout_precision.json")
    args = ap.parse_args()

    import torch

    from transformer_squared.generation import Engine, SamplingParams
    from transformer_squared.models import DEFAULT_MODEL, load_model, set_quiet_transformers
    from transformer_squared.tasks import get_task
    from transformer_squared.training.config import TrainConfig
    from transformer_squared.training.distributed import Dist
    from transformer_squared.training.loop import make_policy
    from transformer_squared.training.rollout import DataOrder, rollouts

    set_quiet_transformers()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = load_model(args.model or DEFAULT_MODEL)
    policy = make_policy(TrainConfig(out="-"), lm, progress=False)
    task = get_task(args.task)
    train = task.load("train", os.environ.get("T2_DATA_DIR"))
    precisions = args.precisions.split(",")
    engines = {p: Engine(policy.generation_model, lm.tokenizer, max_batch_size=16, precision=p) for p in precisions}
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, stop=tuple(task.stop))
    gens = {p: rollouts(policy, e, lm.tokenizer, task, train, DataOrder(len(train), 0), batch_size=args.prompts,
                        samples_per_prompt=args.samples, params=params, wrong_reward=-1.0, seed=0, start_step=0,
                        d=Dist()) for p, e in engines.items()}
    runs: dict[str, list[dict]] = {p: [] for p in precisions}
    for r in range(args.rounds):
        for p in precisions:
            with torch.no_grad():
                for z in policy.parameters():
                    z.add_(torch.randn_like(z), alpha=1e-3)
            t, c = time.perf_counter(), time.process_time()
            batch = next(gens[p])
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            runs[p].append({"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), "tokens": batch.completion_tokens,
                            "ms_per_token": round(1000 * wall / batch.completion_tokens, 2),
                            "reward": float(batch.rewards.mean())})
            print(f"round {r} {p:>5}: {wall:.2f} s ({cpu:.2f} s CPU), {batch.completion_tokens} tokens", flush=True)
    result = {"cpu": cpu_name(), "threads": args.threads, "load_average_1m": os.getloadavg()[0],
              "model": lm.name, "task": args.task, "prompts": args.prompts, "samples": args.samples,
              "new_tokens": args.new_tokens, "precisions": {}}
    # Rollouts of different precisions sample different tokens (and stop at different EOS): per token is the
    # fair comparison; CPU seconds (one thread) count this process's own work, steadier than wall on a busy CPU.
    for p in precisions:
        summary = {k: statistics.median(x[k] for x in runs[p]) for k in ("seconds", "cpu_seconds", "ms_per_token")}
        summary["cpu_ms_per_token"] = statistics.median(1000 * x["cpu_seconds"] / x["tokens"] for x in runs[p])
        result["precisions"][p] = {**engines[p].precision_info, "median": summary, "rounds": runs[p]}
        print(f"{p:>5} ({engines[p].compute_precision}): median {summary['seconds']:.2f} s "
              f"({summary['cpu_seconds']:.2f} s CPU), {summary['ms_per_token']:.1f} ms/token "
              f"({summary['cpu_ms_per_token']:.1f} CPU)")
    if "exact" in runs:
        exact = result["precisions"]["exact"]["median"]
        for p in precisions:
            if p != "exact":
                mine = result["precisions"][p]["median"]
                result["precisions"][p]["speedup_per_token"] = round(exact["ms_per_token"] / mine["ms_per_token"], 2)
                result["precisions"][p]["speedup_cpu_per_token"] = round(
                    exact["cpu_ms_per_token"] / mine["cpu_ms_per_token"], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
