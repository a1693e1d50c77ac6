"""Base accuracy of a model on every benchmark task, on fixed seeded subsets, with 95% CIs.

Writes bench/out/accuracy.json and the markdown table results/base_accuracy.md. Subset sizes are per task
(`--limits task=N,...`; -1 = the whole test split); the subset is `t2 eval --limit N --seed 0`'s, so any row can be
re-run with the command printed beside it.

    python bench/bench_accuracy.py [--model smollm2-135m-instruct] [--limits arc-easy=200,gsm8k=32,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_LIMITS = "arc-easy=200,arc-challenge=200,gsm8k=32,math500=32,mbpp=32,humaneval=32"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limits", default=DEFAULT_LIMITS, help="task=N pairs (-1: the whole test split)")
    ap.add_argument("--max-new-tokens", type=int, default=384, help="cap on each task's own budget")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--data-dir", default=os.environ.get("T2_DATA_DIR", "../shared/data"))
    ap.add_argument("--out", default="bench/out/accuracy.json")
    ap.add_argument("--table", default="results/base_accuracy.md")
    args = ap.parse_args()

    from transformer_squared.evaluation import EvalConfig, evaluate
    from transformer_squared.fileio import atomic_write_json, atomic_write_text
    from transformer_squared.metrics import format_accuracy
    from transformer_squared.models import load_model, set_quiet_transformers
    from transformer_squared.tasks import get_task

    set_quiet_transformers()
    lm = load_model(args.model)
    rows = []
    for item in args.limits.split(","):
        name, _, n = item.partition("=")
        limit = None if int(n) < 0 else int(n)
        task = get_task(name)
        budget = min(task.max_new_tokens, args.max_new_tokens)
        cfg = EvalConfig(task=name, limit=limit, batch_size=args.batch_size, max_new_tokens=budget)
        t = time.perf_counter()
        summary, _ = evaluate(lm.model, lm.tokenizer, cfg, task=task, data_dir=args.data_dir, progress=True)
        summary["wall_seconds"] = round(time.perf_counter() - t, 1)
        summary["command"] = (f"t2 eval --model {args.model} --task {name}"
                              + (f" --limit {limit}" if limit else "") + f" --max-new-tokens {budget}")
        rows.append(summary)
        print(f"{name:<14} {format_accuracy(summary):<40} {summary['wall_seconds']:>7.1f} s", flush=True)

    result = {"model": args.model, "max_new_tokens_cap": args.max_new_tokens, "loadavg": os.getloadavg()[0],
              "tasks": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    lines = [f"# Base accuracy: {args.model}", "",
             f"Greedy decoding, each task's prompt format, answers capped at {args.max_new_tokens} new tokens; "
             "seeded subsets (`--limit N --seed 0`) where the full split did not fit the CPU time. "
             f"Produced by `python bench/bench_accuracy.py --limits {args.limits}`.", "",
             "| task | split | n | accuracy | 95% CI | seconds | command |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['task']} | {r['split']} | {r['n']} | {100 * r['accuracy']:.1f}% | "
                     f"{100 * lo:.1f}–{100 * hi:.1f} | {r['wall_seconds']} | `{r['command']}` |")
    atomic_write_text(args.table, "\n".join(lines) + "\n")
    print(f"wrote {args.out} and {args.table}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
