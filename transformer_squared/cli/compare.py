"""`t2 compare RUN_A RUN_B`: two `t2 eval --out` directories, item by item (metrics.compare_runs).

    t2 compare runs/eval-base runs/eval-expert            # B − A, its 95% CI, exact McNemar p
    t2 compare runs/eval-base runs/eval-expert --json
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare two `t2 eval --out` runs on the same items (paired CI, exact McNemar)",
        description="Pair the items of two finished `t2 eval --out` directories by id and report both accuracies, "
                    "B − A with its 95% CI (Newcombe's paired hybrid score interval) and the exact McNemar "
                    "p-value (binomial on the discordant pairs). Runs of different tasks, splits, generation "
                    "budgets or items are refused.")
    p.add_argument("run_a", metavar="RUN_A", help="a `t2 eval --out` directory (the baseline)")
    p.add_argument("run_b", metavar="RUN_B", help="a `t2 eval --out` directory (compared with A)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a human summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..metrics import compare_runs, format_accuracy

    r = compare_runs(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(r))
        return 0
    t = r["table"]
    lo, hi = r["difference_ci95"]
    budget = "the task's default budget" if r["max_new_tokens"] is None else f"{r['max_new_tokens']} new tokens"
    print(f"{r['task']} [{r['split']}]: {r['n']} paired items, {budget}")
    print(f"  A {r['run_a']['dir']}: {format_accuracy(r['a'])}")
    print(f"  B {r['run_b']['dir']}: {format_accuracy(r['b'])}")
    print(f"  B - A: {100 * r['difference']:+.2f} points, 95% CI {100 * lo:+.1f} to {100 * hi:+.1f} "
          f"(Newcombe paired score interval)")
    print(f"  discordant: {t['only_a']} right only in A, {t['only_b']} right only in B; "
          f"exact McNemar p = {r['mcnemar_p']:.3g}")
    return 0
