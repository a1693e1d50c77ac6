"""Training cost of SVF vs LoRA at equal batch and sequence length, on the embedded default model.

    OMP_NUM_THREADS=1 python bench/bench_training.py [--prompts 8] [--new-tokens 64] [--steps 2] [--threads 1]
                                                     [--repeats 1] [--task arc-easy]

Each method runs in its own fresh process (so peak RSS is that method's alone), one after the other, `--repeats`
rounds alternating SVF and LoRA (on a shared CPU the fastest round is the least disturbed one): load the model,
attach the trainable policy (SVF on the MLP, or LoRA r16 on q,v), then
- rollout: greedy generation of `--new-tokens` for `--prompts` ARC-Easy training prompts through the policy's
  `generating()` view; at initialisation both policies are the base model, so both generate the same tokens;
- update: on those same sequences, with ±1 advantages, `--steps` timed optimizer steps (after one warm-up), each
  timed in parts: gradient pass (forward + backward), optimizer (gradient all-reduce / clip / AdamW), and for SVF
  the refresh of the merged W' that the next rollout would otherwise pay (forced here through `generating()`).
Prints a table and writes bench/out/training.json: per method the round with the fastest update, every round,
and the ratios SVF / LoRA of those fastest rounds (min) and of the medians over rounds.
Timings on a shared CPU are noisy: the CPU and the load average are recorded with them.
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

    t, c = time.perf_counter(), time.process_time()
    with policy.generating():
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=args["new_tokens"]))
    rollout_s, rollout_cpu = time.perf_counter() - t, time.process_time() - c
    completions = [o.token_ids for o in outs]
    advantages = torch.tensor([1.0 if i % 2 else -1.0 for i in range(len(prompts))])
    batch = Batch(examples, prompts, completions, advantages.clone(), advantages > 0, advantages)

    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    pad = lm.tokenizer.pad_token_id
    # Wall and CPU seconds of each part: on a shared CPU, wall time also counts the waits for a core, while this
    # process's CPU time (one torch thread) counts its own work only, so it is the steadier of the two.
    parts: dict[str, list[float]] = {"grad": [], "optimizer": [], "refresh": []}
    cpu: dict[str, list[float]] = {k: [] for k in parts}
    for step in range(args["steps"] + 1):
        marks = [(time.perf_counter(), time.process_time())]
        gradient_pass(policy, batch, cfg, float(len(prompts)), pad, torch.device("cpu"))
        marks.append((time.perf_counter(), time.process_time()))
        optimizer_step(policy, optimizer, scheduler, cfg, Dist())
        marks.append((time.perf_counter(), time.process_time()))
        if method == "svf":
            with policy.generating():  # count the W' recomposition that the next rollout would otherwise pay
                pass
        marks.append((time.perf_counter(), time.process_time()))
        if step:  # the first step warms up allocators and kernels
            for i, k in enumerate(parts):
                parts[k].append(marks[i + 1][0] - marks[i][0])
                cpu[k].append(marks[i + 1][1] - marks[i][1])
    times = [sum(p) for p in zip(*parts.values())]
    cpu_times = [sum(p) for p in zip(*cpu.values())]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({
        "method": method,
        "trainable_parameters": sum(p.numel() for p in policy.parameters()),
        "rollout_seconds": rollout_s,
        "update_seconds": sum(times) / len(times),
        "update_seconds_all": times,
        **{f"{k}_seconds": sum(v) / len(v) for k, v in parts.items()},
        "rollout_cpu_seconds": rollout_cpu,
        "update_cpu_seconds": sum(cpu_times) / len(cpu_times),
        "step_cpu_seconds": rollout_cpu + sum(cpu_times) / len(cpu_times),
        **{f"{k}_cpu_seconds": sum(v) / len(v) for k, v in cpu.items()},
        "code": str(Path(sys.modules["transformer_squared"].__file__).parent),
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
    p.add_argument("--repeats", type=int, default=1, help="rounds of (SVF, LoRA), alternating")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    import multiprocessing as mp
    import statistics

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cpuinfo import cpu_name

    ctx = mp.get_context("spawn")
    settings = {k: v for k, v in vars(a).items() if k != "out"}
    runs: dict[str, list[dict]] = {"svf": [], "lora": []}
    load_before = os.getloadavg()
    for _ in range(a.repeats):
        for method in ("svf", "lora"):
            q = ctx.Queue()
            proc = ctx.Process(target=measure, args=(method, settings, q))
            proc.start()
            r = q.get()
            proc.join()
            r["loadavg_1min"] = os.getloadavg()[0]
            runs[method].append(r)
            print(f"{method:5s} params {r['trainable_parameters']:>9,}  rollout {r['rollout_seconds']:6.1f} s  "
                  f"update {r['update_seconds']:6.2f} s (gradient pass {r['grad_seconds']:.2f}, optimizer "
                  f"{r['optimizer_seconds']:.3f}, W' refresh {r['refresh_seconds']:.2f})  "
                  f"step {r['step_seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB "
                  f"(+{r['training_rss_mb']:.0f} MB over the loaded model)  load {r['loadavg_1min']:.1f}\n"
                  f"      CPU seconds: rollout {r['rollout_cpu_seconds']:6.1f}  update {r['update_cpu_seconds']:6.2f} "
                  f"(gradient pass {r['grad_cpu_seconds']:.2f}, optimizer {r['optimizer_cpu_seconds']:.3f}, "
                  f"W' refresh {r['refresh_cpu_seconds']:.2f})  step {r['step_cpu_seconds']:6.1f}", flush=True)
    best = {m: min(rs, key=lambda r: r["update_seconds"]) for m, rs in runs.items()}
    svf, lora = best["svf"], best["lora"]

    def low(method: str, key: str) -> float:  # each figure's fastest round: the least disturbed one
        return min(r[key] for r in runs[method])

    def ratios(suffix: str) -> dict[str, float]:
        out = {f"{k}{suffix}": low("svf", f"{k}{suffix}") / low("lora", f"{k}{suffix}")
               for k in ("rollout", "update", "grad")}
        out[f"step{suffix}"] = ((low("svf", f"rollout{suffix}") + low("svf", f"update{suffix}"))
                                / (low("lora", f"rollout{suffix}") + low("lora", f"update{suffix}")))
        return out

    wall = {**ratios("_seconds"), **{k: low("svf", k) / low("lora", k) for k in ("peak_rss_mb", "training_rss_mb")}}
    cpu_ratio = ratios("_cpu_seconds")
    med = {k: statistics.median(r[k] for r in runs["svf"]) / statistics.median(r[k] for r in runs["lora"])
           for k in ("rollout_seconds", "update_seconds", "step_seconds")}
    print("svf / lora, wall (fastest rounds): " + ", ".join(f"{k} {v:.2f}" for k, v in wall.items()))
    print("svf / lora, CPU (fastest rounds):  " + ", ".join(f"{k} {v:.2f}" for k, v in cpu_ratio.items()))
    if a.repeats > 1:
        print("svf / lora, wall (medians):        " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    result = {"settings": settings, "svf": svf, "lora": lora, "ratio_svf_over_lora": wall,
              "ratio_svf_over_lora_median": med,
              "ratio_svf_over_lora_cpu": cpu_ratio, "runs": runs, "torch": torch.__version__, "cpu": cpu_name(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpus": os.cpu_count(),
              "loadavg_start": load_before, "loadavg_end": os.getloadavg(),
              "same_rollouts": all(r["completion_tokens"] == svf["completion_tokens"] for rs in runs.values()
                                   for r in rs)}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformer_squared.fileio import atomic_write_json

    atomic_write_json(a.out, result)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
