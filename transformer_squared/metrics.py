"""Accuracy with an honest error bar: the Wilson score interval (well-behaved at 0%, 100% and small n)."""

from __future__ import annotations

import math
from typing import Sequence

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
