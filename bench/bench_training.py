"""Training cost of SVF vs LoRA at equal batch and sequence length, on the embedded default model.

    python bench/bench_training.py [--prompts 8] [--new-tokens 64] [--steps 2] [--threads 1] [--task arc-easy]

Each method runs in its own fresh process (so peak RSS is that method's alone), one after the other:
load the model, attach the trainable policy (SVF on the MLP, or LoRA r16 on q,v), then
- rollout: greedy generation of `--new-tokens` for `--prompts` ARC-Easy training prompts through the policy's
  `generating()` view; at initialisation both policies are the base model, so both generate the same tokens;
- update: on those same sequences, with ±1 advantages, `--steps` timed optimizer steps (after one warm-up):
  gradient pass (forward + backward), gradient all-reduce / clip / AdamW, and refreshing the merged weights
  (SVF's W' recomposition happens at the next use of the weights, so it is forced here to count it).
Prints a table and writes bench/out/training.json with the ratios SVF / LoRA.
Timings on a shared CPU are noisy: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on a busy shared CPU

OUT = Path(__file__).resolve().parent / "out" / "training.json"


def measure(method: str, args: dict, queue) -> None:
    """Child process: time one method, report a dict through `queue`."""
    import resource

    import torch

    from transformer_squared.generation import Engine, SamplingParams
    from transformer_squared.models import load_model, set_quiet_transformers
    from transformer_squared.tasks import get_task
    from transformer_squared.training.config import TrainConfig
    from transformer_squared.training.distributed import Dist
    from transformer_squared.training.loop import gradient_pass, make_policy, optimizer_step
    from transformer_squared.tasks import prompt_ids
    from transformer_squared.training.rollout import Batch

    set_quiet_transformers()
    torch.set_num_threads(args["threads"])
    lm = load_model(args["model"])
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = TrainConfig(out="-", method=method, objective="rl", batch_size=args["prompts"],
                      max_new_tokens=args["new_tokens"], micro_batch_tokens=args["micro_batch_tokens"]).resolved()
    policy = make_policy(cfg, lm, progress=False)
    task = get_task(args["task"])
    examples = task.load("train", args["data_dir"])[: args["prompts"]]
    prompts = [prompt_ids(task, lm.tokenizer, e) for e in examples]
    engine = Engine(policy.generation_model, lm.tokenizer, max_batch_size=args["prompts"])

    t = time.perf_counter()
    with policy.generating():
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=args["new_tokens"]))
    rollout_s = time.perf_counter() - t
    completions = [o.token_ids for o in outs]
    advantages = torch.tensor([1.0 if i % 2 else -1.0 for i in range(len(prompts))])
    batch = Batch(examples, prompts, completions, advantages.clone(), advantages > 0, advantages)

    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    pad = lm.tokenizer.pad_token_id
    times = []
    for step in range(args["steps"] + 1):
        t = time.perf_counter()
        gradient_pass(policy, batch, cfg, float(len(prompts)), pad, torch.device("cpu"))
        optimizer_step(policy, optimizer, scheduler, cfg, Dist())
        if method == "svf":
            with policy.generating():  # count the W' recomposition that the next rollout would otherwise pay
                pass
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({
        "method": method,
        "trainable_parameters": sum(p.numel() for p in policy.parameters()),
        "rollout_seconds": rollout_s,
        "update_seconds": sum(times) / len(times),
        "update_seconds_all": times,
        "step_seconds": rollout_s + sum(times) / len(times),
        "sequence_tokens": sum(len(p) + len(c) for p, c in zip(prompts, completions)),
        "completion_tokens": sum(len(c) for c in completions),
        "peak_rss_mb": peak,
        "rss_after_load_mb": rss_loaded,
        "training_rss_mb": peak - rss_loaded,
    })


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--task", default="arc-easy")
    p.add_argument("--data-dir", default=os.environ.get("T2_DATA_DIR") or
                   str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--micro-batch-tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in both runs (default 1: stable on a shared CPU, and the same for both)")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    import multiprocessing as mp

    import torch

    ctx = mp.get_context("spawn")
    settings = {k: v for k, v in vars(a).items() if k != "out"}
    rows = {}
    load_before = os.getloadavg()
    for method in ("svf", "lora"):
        q = ctx.Queue()
        proc = ctx.Process(target=measure, args=(method, settings, q))
        proc.start()
        rows[method] = q.get()
        proc.join()
        r = rows[method]
        print(f"{method:5s} params {r['trainable_parameters']:>9,}  rollout {r['rollout_seconds']:6.1f} s  "
              f"update {r['update_seconds']:6.1f} s  step {r['step_seconds']:6.1f} s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB (+{r['training_rss_mb']:.0f} MB over the loaded model)",
              flush=True)
    svf, lora = rows["svf"], rows["lora"]
    ratios = {k: svf[k] / lora[k] for k in ("rollout_seconds", "update_seconds", "step_seconds", "peak_rss_mb",
                                           "training_rss_mb") if lora[k]}
    print("svf / lora: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    result = {"settings": settings, "svf": svf, "lora": lora, "ratio_svf_over_lora": ratios,
              "torch": torch.__version__,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpus": os.cpu_count(),
              "loadavg_start": load_before, "loadavg_end": os.getloadavg(),
              "same_rollouts": svf["completion_tokens"] == lora["completion_tokens"]}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformer_squared.fileio import atomic_write_json

    atomic_write_json(a.out, result)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
