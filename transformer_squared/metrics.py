"""Accuracy with an honest error bar: the Wilson score interval (well-behaved at 0%, 100% and small n), and the
paired comparison of two runs on the same items (`t2 compare`): the difference with Newcombe's paired score
interval and the exact McNemar test."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from .errors import T2Error
from .fileio import read_jsonl

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `correct` successes out of `n` trials; (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= correct <= n:
        raise ValueError(f"correct={correct} must be between 0 and n={n}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0% and 100% the bound is exactly 0 or 1; say so rather than return 0.9999999999999999.
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return (lo, hi)


def accuracy_summary(correct: Sequence[bool]) -> dict:
    """{"n", "correct", "accuracy", "ci95": [lo, hi]} for a list of per-sample outcomes (accuracy 0.0 when n=0)."""
    n = len(correct)
    k = sum(1 for c in correct if c)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci95": [lo, hi]}


def format_accuracy(summary: dict) -> str:
    """"71.23% (939/1319, 95% CI 68.7-73.6)" for a summary from `accuracy_summary`."""
    lo, hi = summary["ci95"]
    return (f"{100 * summary['accuracy']:.2f}% ({summary['correct']}/{summary['n']}, "
            f"95% CI {100 * lo:.1f}-{100 * hi:.1f})")


# -- paired comparison of two runs on the same items ------------------------------------------------------------


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under H0 the b + c discordant pairs split Binomial(b + c, 1/2).

    p = min(1, 2 · P(X ≤ min(b, c))), X ~ Bin(b + c, 1/2), summed exactly with math.comb (integers until the one
    division, so no underflow at large counts); 1.0 when there are no discordant pairs. Hand-written because
    scipy is not a dependency and this is one line of arithmetic.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_difference_interval(both: int, only_a: int, only_b: int, neither: int,
                               z: float = Z95) -> tuple[float, float]:
    """95% CI for acc_B − acc_A from paired outcomes: Newcombe's hybrid score interval for paired proportions
    (Newcombe 1998, Stat. Med. 17:2635, method 10), which combines the two Wilson intervals with the phi
    correlation of the pairs (continuity-corrected phi, as specified there). Stays inside [−1, 1] and behaves at
    0 and 100%, where the Wald interval does not; deterministic, unlike a bootstrap.
    """
    n = both + only_a + only_b + neither
    if n == 0:
        return (-1.0, 1.0)
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = wilson_interval(both + only_a, n, z)
    lb, ub = wilson_interval(both + only_b, n, z)
    # phi over the 2x2 table (rows: A right/wrong, columns: B right/wrong), continuity-corrected towards 0
    denom = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    cross = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = cross / math.sqrt(denom) if denom > 0 else 0.0
    d = pb - pa
    lo = d - math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    hi = d + math.sqrt(max(0.0, (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2))
    return (max(-1.0, lo), min(1.0, hi))


def paired_comparison(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Accuracy of A and B on the same items (same order), B − A with its 95% CI (Newcombe's paired hybrid
    score interval) and the exact McNemar p-value. Returns a JSON-ready dict."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired outcomes need the same items: {len(correct_a)} vs {len(correct_b)}")
    pairs = list(zip(map(bool, correct_a), map(bool, correct_b)))
    both = sum(a and b for a, b in pairs)
    only_a = sum(a and not b for a, b in pairs)
    only_b = sum(b and not a for a, b in pairs)
    neither = len(pairs) - both - only_a - only_b
    n = len(pairs)
    lo, hi = paired_difference_interval(both, only_a, only_b, neither)
    return {"n": n, "a": accuracy_summary(correct_a), "b": accuracy_summary(correct_b),
            "difference": (only_b - only_a) / n if n else 0.0, "difference_ci95": [lo, hi],
            "ci_method": "Newcombe (1998) paired hybrid score interval (method 10)",
            "table": {"both": both, "only_a": only_a, "only_b": only_b, "neither": neither},
            "mcnemar_p": mcnemar_exact_p(only_a, only_b), "test": "exact McNemar (binomial on discordant pairs)"}


def _load_eval_run(directory) -> dict:
    """summary, config and {id: correct} of a finished `t2 eval --out DIR`, or a one-line T2Error."""
    d = Path(directory)
    if not d.is_dir():
        raise T2Error(f"{d}: no such directory; give two `t2 eval --out` directories")
    if not (d / "records.jsonl").is_file():
        raise T2Error(f"{d}: no records.jsonl; is it a `t2 eval --out` directory?")
    if not (d / "summary.json").is_file():
        raise T2Error(f"{d}: no summary.json, so the evaluation did not finish; complete it with the same "
                      f"`t2 eval ... --out {d} --resume`")
    try:
        summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise T2Error(f"{d / 'summary.json'}: unreadable ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("config", {}), dict):
        raise T2Error(f"{d / 'summary.json'}: not a `t2 eval` summary")
    correct: dict[str, bool] = {}
    for i, rec in enumerate(read_jsonl(d / "records.jsonl"), 1):
        if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("correct"), bool):
            raise T2Error(f"{d / 'records.jsonl'}:{i}: not a `t2 eval` record (needs id and correct)")
        if str(rec["id"]) in correct:
            raise T2Error(f"{d / 'records.jsonl'}: item {rec['id']!r} appears twice; re-run the evaluation")
        correct[str(rec["id"])] = rec["correct"]
    if len(correct) != summary.get("n", len(correct)):
        raise T2Error(f"{d}: records.jsonl has {len(correct)} items but summary.json says {summary.get('n')}; "
                      f"complete it with `t2 eval ... --out {d} --resume`")
    return {"dir": str(d), "summary": summary, "config": summary.get("config", {}), "correct": correct}


def compare_runs(run_a, run_b) -> dict:
    """Compare two finished `t2 eval --out` directories item by item (`t2 compare`).

    Refuses (T2Error, one line) runs of different tasks or splits, different generation budgets
    (max_new_tokens), or different items. Returns `paired_comparison`'s dict (B − A with Newcombe's paired 95%
    CI, exact McNemar p) plus what each run was: its directory, task, split and evaluation config.
    """
    a, b = _load_eval_run(run_a), _load_eval_run(run_b)
    for key, what in (("task", "tasks"), ("split", "splits")):
        if a["summary"].get(key) != b["summary"].get(key):
            raise T2Error(f"the runs are on different {what} ({a['summary'].get(key)} vs {b['summary'].get(key)}); "
                          f"compare two evaluations of the same task and split")
    budget_a, budget_b = a["config"].get("max_new_tokens"), b["config"].get("max_new_tokens")
    if budget_a != budget_b:
        def say(x):
            return "the task's default" if x is None else str(x)
        raise T2Error(f"the runs have different generation budgets (max_new_tokens {say(budget_a)} vs "
                      f"{say(budget_b)}); re-run one with the other's --max-new-tokens")
    only_a = sorted(set(a["correct"]) - set(b["correct"]))
    only_b = sorted(set(b["correct"]) - set(a["correct"]))
    if only_a or only_b:
        raise T2Error(f"the runs scored different items ({len(only_a)} only in A, {len(only_b)} only in B, e.g. "
                      f"{(only_a or only_b)[0]!r}); evaluate both with the same --split, --limit and --seed")
    ids = sorted(a["correct"])
    result = paired_comparison([a["correct"][i] for i in ids], [b["correct"][i] for i in ids])
    runs = {}
    for name, r in (("run_a", a), ("run_b", b)):
        runs[name] = {"dir": r["dir"], "config": r["config"]}
    return {"task": a["summary"].get("task"), "split": a["summary"].get("split"), "max_new_tokens": budget_a,
            **runs, **result}
