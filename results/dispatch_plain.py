"""Dispatch on prompts users write (issue #12, item 6): does pass 1 send a plainly worded prompt to its expert?

The prompts in results/data/plain_prompts.jsonl were written by hand for this check (none comes from a benchmark
split, so none was seen in training): 20 per domain (math, code, reasoning) and 20 that belong to no expert
(`others`, which should stay on the base model), typed as a chat user would, without a system prompt or a
benchmark's answer-format instructions. Each strategy's pass 1 runs on all of them; the report is the share sent
to the right place, per domain and overall, with the confusion matrix. `--template-per-domain N` adds, as a
regression check, N templated prompts per domain from the dispatch task's test split (the benchmarks' own
format, never used for fitting), reported separately.

    python results/dispatch_plain.py --experts experts --strategies router,classifier,prompt \
        --out results/dispatch_plain.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from transformer_squared.adaptation.model import SelfAdaptiveModel
from transformer_squared.fileio import atomic_write_json
from transformer_squared.metrics import wilson_interval
from transformer_squared.models import DEFAULT_MODEL
from transformer_squared.adaptation.dispatch import dispatch_task

HERE = Path(__file__).resolve().parent


def load_prompts(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def template_prompts(experts: str, per_domain: int, data_dir=None) -> list[dict]:
    """`per_domain` templated prompts per domain from the dispatch task's test split (seeded)."""
    examples = dispatch_task(experts=experts, per_domain=per_domain, seed=0).load("test", data_dir)
    return [{"id": ex.id, "domain": ex.answer, "prompt": ex.prompt} for ex in examples]


def summarize(prompts: list[dict], labels: list[str]) -> dict:
    """Accuracy of `labels` against the prompts' domains: overall with its Wilson CI, per domain, confusion."""
    rows, per_domain, confusion = [], defaultdict(list), defaultdict(Counter)
    for p, label in zip(prompts, labels):
        ok = label == p["domain"]
        rows.append({"id": p["id"], "domain": p["domain"], "label": label, "correct": ok})
        per_domain[p["domain"]].append(ok)
        confusion[p["domain"]][label] += 1
    n, k = len(rows), sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n, "ci95": [lo, hi],
            "per_domain": {d: {"n": len(v), "correct": sum(v), "accuracy": sum(v) / len(v)}
                           for d, v in sorted(per_domain.items())},
            "confusion": {d: dict(c) for d, c in sorted(confusion.items())}, "rows": rows}


def measure(experts: str, model: str, strategy: str, prompts: list[dict], templated: list[dict]) -> dict:
    """Pass 1 of `strategy` on the plain prompts (and the templated ones, if any)."""
    sam = SelfAdaptiveModel.from_dir(experts, model=model, strategy=strategy)
    choices, seconds = sam.choose([p["prompt"] for p in prompts])
    out = {"strategy": strategy, "seconds": seconds, **summarize(prompts, [c.label for c in choices])}
    if templated:
        choices, _ = sam.choose([p["prompt"] for p in templated])
        out["template"] = summarize(templated, [c.label for c in choices])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", default="experts")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--strategies", default="router,classifier,prompt")
    ap.add_argument("--prompts", default=str(HERE / "data" / "plain_prompts.jsonl"))
    ap.add_argument("--out", default=str(HERE / "dispatch_plain.json"))
    ap.add_argument("--template-per-domain", type=int, default=0,
                    help="also N templated test-split prompts per domain (a regression check)")
    args = ap.parse_args(argv)
    prompts = load_prompts(Path(args.prompts))
    templated = template_prompts(args.experts, args.template_per_domain) if args.template_per_domain else []
    report = {"command": "python " + " ".join(["results/dispatch_plain.py", *(argv if argv is not None else sys.argv[1:])]),
              "experts": args.experts, "model": args.model, "cpu": platform.processor() or platform.machine(),
              "prompts": args.prompts, "n": len(prompts), "strategies": {}}
    for s in args.strategies.split(","):
        t0 = time.perf_counter()
        r = measure(args.experts, args.model, s, prompts, templated)
        report["strategies"][s] = r
        per = ", ".join(f"{d} {v['correct']}/{v['n']}" for d, v in r["per_domain"].items())
        print(f"{s:11s} {r['accuracy']:.1%} ({r['correct']}/{r['n']}, 95% CI {r['ci95'][0]:.1%}-{r['ci95'][1]:.1%})"
              f"  [{per}]  pass 1 {r['seconds']:.1f} s, total {time.perf_counter() - t0:.0f} s"
              + (f"; templated {r['template']['correct']}/{r['template']['n']}" if templated else ""), flush=True)
    atomic_write_json(args.out, report)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
