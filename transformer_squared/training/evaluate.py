"""Validation and test accuracy during training: greedy decoding of a fixed subset, scored by the task through
`evaluation.generate_and_score`, the path `t2 eval` takes (same prompts, decoding and scoring).

The examples are split across data-parallel ranks and the counts summed, so every rank gets the same summary
({n, correct, accuracy, ci95}, Wilson interval) and therefore picks the same best step.
"""

from __future__ import annotations

from typing import Sequence

from ..evaluation import generate_and_score, sampling_params
from ..generation import Engine
from ..metrics import accuracy_summary
from ..tasks import Example, Task
from .distributed import Dist, shard, sum_floats


def accuracy(policy, engine: Engine, tokenizer, task: Task, examples: Sequence[Example], *, max_new_tokens: int,
             d: Dist) -> dict:
    """Greedy accuracy of the current policy on `examples` (all ranks together)."""
    mine = shard(examples, d)
    correct = 0
    if mine:
        with policy.generating():
            scored = generate_and_score(engine, tokenizer, task, mine, sampling_params(task, max_new_tokens))
        correct = sum(bool(v.correct) for v in scored.verdicts)
    total, right = sum_floats([len(mine), correct], d)
    return accuracy_summary([True] * int(right) + [False] * (int(total) - int(right)))


def limit(examples: Sequence[Example], n: int) -> list[Example]:
    """The first `n` examples (-1: all; 0: none)."""
    return list(examples) if n < 0 else list(examples[:n])
